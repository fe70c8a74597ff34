#!/usr/bin/env python3
"""Scanner-style slide files for ftu's tests, written with tifffile + imagecodecs (PyPI):

  aperio.svs     Aperio SVS: JPEG 2000 tiles (compression 33005), an `Aperio Image Library`
                 description with MPP and AppMag, a 4x pyramid level, a thumbnail, label and
                 macro images - what ftu's own reader cannot decode and OpenSlide can.
  aperio-jpeg.svs  the same with JPEG tiles (compression 7, as most SVS files): both readers.
  ome.ome.tif    OME-TIFF: tiled deflate, OME-XML with PhysicalSizeX in nm, SubIFD pyramid.
  generic.tif    a generic pyramidal TIFF: tiled deflate pages at 1x and 4x, resolution tags in
                 pixels per centimetre - both ftu and OpenSlide read it.
  truth.csv      id,rle of the FTU discs (the competition's column-major RLE), and
  pixels.npy     the level-0 RGB pixels every file holds (JPEG 2000 is lossless here).

The slide is glass with two round tissue islands holding darker FTU discs, the colours of
infer's tiled tests (a model that marks low green finds the discs).

  python3 scripts/scanner-slides.py OUT_DIR [--width 1536 --height 1024]
"""
import argparse
import os

import numpy as np
import tifffile

GLASS = (242, 240, 243)
TISSUE = (225, 130, 175)
FTU = (110, 40, 140)


def slide(width, height):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GLASS
    islands = [(0.3 * width, 0.4 * height, 0.25 * height), (0.7 * width, 0.6 * height, 0.3 * height)]
    ftus = [(0.28 * width, 0.38 * height, 40.0), (0.35 * width, 0.5 * height, 25.0),
            (0.7 * width, 0.6 * height, 55.0), (0.78 * width, 0.5 * height, 30.0)]
    inside = lambda c: (x - c[0]) ** 2 + (y - c[1]) ** 2 <= c[2] ** 2
    tissue = np.zeros((height, width), bool)
    for c in islands:
        tissue |= inside(c)
    mask = np.zeros((height, width), bool)
    for c in ftus:
        mask |= inside(c)
    img[tissue] = TISSUE
    img[mask] = FTU
    return img, mask


def rle(mask):
    flat = np.concatenate([[0], mask.T.flatten().astype(np.int8), [0]])
    runs = np.where(flat[1:] != flat[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(v) for v in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--height", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    img, mask = slide(a.width, a.height)
    level = np.ascontiguousarray(img[2::4, 2::4])  # each 4x pixel is the slide's at its centre
    np.save(os.path.join(a.out, "pixels.npy"), img)

    # Aperio SVS: tiled JPEG 2000 level 0, a stripped thumbnail second, the 4x level, then label
    # and macro images (OpenSlide's layout for Aperio).
    desc = (f"Aperio Image Library v12.0.15 \r\n{a.width}x{a.height} [0,0 {a.width}x{a.height}] "
            f"(256x256) J2K/KDU Q=70|AppMag = 20|StripeWidth = 1000|ScanScope ID = FTU1|"
            f"MPP = 0.4990|Filename = aperio")
    with tifffile.TiffWriter(os.path.join(a.out, "aperio.svs")) as tif:
        tif.write(img, tile=(256, 256), compression=33005, photometric="rgb", description=desc,
                  metadata=None)
        tif.write(np.ascontiguousarray(img[::8, ::8]), photometric="rgb", description=desc,
                  metadata=None)
        tif.write(level, tile=(256, 256), compression=33005, photometric="rgb", description=desc,
                  metadata=None)
        tif.write(np.full((70, 100, 3), 200, np.uint8), subfiletype=1, photometric="rgb",
                  description="Aperio Image Library v12.0.15\r\nlabel 100x70", metadata=None)
        tif.write(np.full((80, 240, 3), 180, np.uint8), subfiletype=9, photometric="rgb",
                  description="Aperio Image Library v12.0.15\r\nmacro 240x80", metadata=None)

    # An Aperio SVS with JPEG tiles (lossy: the readers' decoders may differ by a level or two).
    with tifffile.TiffWriter(os.path.join(a.out, "aperio-jpeg.svs")) as tif:
        tif.write(img, tile=(256, 256), compression="jpeg", compressionargs={"level": 95}, photometric="rgb",
                  description=desc.replace("J2K/KDU", "JPEG/RGB"), metadata=None)
        tif.write(np.ascontiguousarray(img[::8, ::8]), photometric="rgb", description=desc,
                  metadata=None)
        tif.write(level, tile=(256, 256), compression="jpeg", compressionargs={"level": 95}, photometric="rgb",
                  description=desc, metadata=None)

    # OME-TIFF with a SubIFD pyramid.
    with tifffile.TiffWriter(os.path.join(a.out, "ome.ome.tif"), ome=True) as tif:
        tif.write(img, subifds=1, tile=(256, 256), compression="zlib", photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 500.0, "PhysicalSizeXUnit": "nm",
                            "PhysicalSizeY": 500.0, "PhysicalSizeYUnit": "nm"})
        tif.write(level, subfiletype=1, tile=(256, 256), compression="zlib", photometric="rgb")

    # A generic pyramidal TIFF with resolution tags (pixels per cm).
    per_cm = 10_000.0 / 0.25
    with tifffile.TiffWriter(os.path.join(a.out, "generic.tif")) as tif:
        tif.write(img, tile=(256, 256), compression="zlib", photometric="rgb",
                  resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", metadata=None)
        tif.write(level, tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=1,
                  resolution=(per_cm / 4, per_cm / 4), resolutionunit="CENTIMETER", metadata=None)

    with open(os.path.join(a.out, "truth.csv"), "w") as f:
        f.write("id,rle\n")
        for sid in ("aperio", "aperio-jpeg", "ome", "generic"):
            f.write(f"{sid},{rle(mask)}\n")


if __name__ == "__main__":
    main()
