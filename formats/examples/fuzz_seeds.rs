//! Writes the fuzz targets' seed corpus (`fuzz/seeds/<target>/`): small valid inputs of every
//! kind each parser takes, made by ftu's own writers, so coverage-guided fuzzing starts from
//! every TIFF layout and codec, PNG and JPEG, each CSV schema, manifests and RLE strings.
//!
//! `cargo run -p ftu-formats --example fuzz_seeds -- fuzz/seeds`

use std::path::{Path, PathBuf};

use ftu_formats::mask::image::{write_grey_png, write_mask_png, write_mask_tiff, write_rgb_png};
use ftu_formats::mask::runs::RunMask;
use ftu_formats::mask::Mask;
use ftu_formats::slide::write::{
    write_tiff_image, write_tiff_pages_with, Chunking, Compression, Samples, TiffMeta, TiffSpec,
};
use image::ImageEncoder;

const W: usize = 20;
const H: usize = 13;

fn pattern(samples: Samples, width: usize, height: usize) -> Vec<u8> {
    let bytes = samples.bytes_per_pixel();
    (0..width * height * bytes)
        .map(|i| ((i * 7 + i / bytes * 13) % 251) as u8)
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn tiffs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let samples = [
        Samples::Rgb8,
        Samples::Grey8,
        Samples::Rgba8,
        Samples::Grey16,
        Samples::Rgb16,
    ];
    let chunkings = [Chunking::Strips { rows: 5 }, Chunking::Tiles { size: 16 }];
    let codecs = [
        ("raw", Compression::None),
        ("lzw", Compression::Lzw),
        ("deflate", Compression::Deflate),
        ("jpeg", Compression::Jpeg { quality: 80 }),
    ];
    for (s, samples) in samples.into_iter().enumerate() {
        for (c, chunking) in chunkings.into_iter().enumerate() {
            for (codec, compression) in codecs {
                let jpeg = matches!(compression, Compression::Jpeg { .. });
                if jpeg && !matches!(samples, Samples::Rgb8 | Samples::Grey8) {
                    continue;
                }
                // BigTIFF for one chunking of each sample layout, so both containers are seeded.
                let bigtiff = (s + c) % 2 == 1;
                let chunks = if c == 0 { "strips" } else { "tiles" };
                let name = format!("{samples:?}-{chunks}-{codec}{}.tif", if bigtiff { "-big" } else { "" });
                let spec = TiffSpec {
                    width: W as u32,
                    height: H as u32,
                    samples,
                    chunking,
                    compression,
                    bigtiff,
                };
                let path = dir.join(name.to_lowercase());
                write_tiff_image(&path, &spec, &pattern(samples, W, H)).expect("write a seed TIFF");
                out.push(path);
            }
        }
    }
    out
}

/// PackBits and the horizontal predictor (8- and 16-bit), which ftu's writer does not make:
/// the tiff crate's.
fn crate_tiffs(dir: &Path) {
    use tiff::encoder::{colortype, Compression, TiffEncoder};
    use tiff::tags::Predictor;
    let data = pattern(Samples::Rgb8, W, H);
    fn encoder(
        bytes: &mut Vec<u8>,
        compression: Compression,
        predictor: Predictor,
    ) -> TiffEncoder<std::io::Cursor<&mut Vec<u8>>> {
        TiffEncoder::new(std::io::Cursor::new(bytes))
            .expect("encoder")
            .with_compression(compression)
            .with_predictor(predictor)
    }
    let mut bytes = Vec::new();
    encoder(&mut bytes, Compression::Packbits, Predictor::None)
        .write_image::<colortype::RGB8>(W as u32, H as u32, &data)
        .expect("packbits");
    write(dir, "rgb8-strips-packbits.tif", &bytes);
    let mut bytes = Vec::new();
    encoder(&mut bytes, Compression::Lzw, Predictor::Horizontal)
        .write_image::<colortype::RGB8>(W as u32, H as u32, &data)
        .expect("predictor");
    write(dir, "rgb8-strips-lzw-predictor.tif", &bytes);
    let wide: Vec<u16> = data.iter().map(|&v| v as u16 * 257).collect();
    let mut bytes = Vec::new();
    encoder(
        &mut bytes,
        Compression::Deflate(Default::default()),
        Predictor::Horizontal,
    )
    .write_image::<colortype::RGB16>(W as u32, H as u32, &wide)
    .expect("predictor");
    write(dir, "rgb16-strips-deflate-predictor.tif", &bytes);
}

fn pngs_and_jpegs(dir: &Path) {
    let rgb = pattern(Samples::Rgb8, W, H);
    write_rgb_png(&dir.join("rgb.png"), W, H, &rgb).expect("png");
    write_grey_png(&dir.join("grey.png"), W, H, &pattern(Samples::Grey8, W, H)).expect("png");
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .write_image(&rgb, W as u32, H as u32, image::ExtendedColorType::Rgb8)
        .expect("jpeg");
    write(dir, "rgb.jpg", &jpeg);
}

fn mask() -> Mask {
    let data = (0..W * H).map(|i| ((i % W) * (i / W) % 5 == 0) as u8).collect();
    Mask::from_row_major(H, W, data).expect("sizes match")
}

fn masks(dir: &Path) {
    let mask = mask();
    write_mask_png(&dir.join("mask.png"), &mask).expect("png");
    write_mask_tiff(&dir.join("mask.tif"), &RunMask::from_mask(&mask), None).expect("tiff");
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .write_image(&mask.to_grey(), W as u32, H as u32, image::ExtendedColorType::L8)
        .expect("jpeg");
    write(dir, "mask.jpg", &jpeg);
}

/// Scanner-style metadata, and a two-level pyramid.
fn metas(dir: &Path) {
    let descriptions = [
        ("aperio", "Aperio Image Library v12.0.5\r\n20x13 -> 20x13 JPEG/RGB Q=70|AppMag = 20|MPP = 0.4990|Filename = slide"),
        ("ome", "<?xml version=\"1.0\"?><OME><Instrument><Objective NominalMagnification=\"40\"/></Instrument><Image><Pixels PhysicalSizeX=\"0.25\" SizeX=\"20\" SizeY=\"13\"/></Image></OME>"),
    ];
    let spec = |width: u32, height: u32| TiffSpec {
        width,
        height,
        samples: Samples::Rgb8,
        chunking: Chunking::Tiles { size: 16 },
        compression: Compression::Deflate,
        bigtiff: false,
    };
    for (name, description) in descriptions {
        let meta = TiffMeta {
            description: Some(description.into()),
            pixel_size: None,
        };
        write_pyramid(&dir.join(format!("{name}.tif")), &[spec(W as u32, H as u32)], &meta);
    }
    let meta = TiffMeta {
        description: None,
        pixel_size: Some(0.5),
    };
    write_pyramid(
        &dir.join("pyramid-resolution.tif"),
        &[spec(40, 26), spec(20, 13)],
        &meta,
    );
}

fn write_pyramid(path: &Path, pages: &[TiffSpec], meta: &TiffMeta) {
    write_tiff_pages_with(path, pages, meta, |_, rect, buf| {
        buf.extend((0..rect.width * rect.height * 3).map(|i| (i % 253) as u8));
        Ok(())
    })
    .expect("write a pyramid");
}

fn texts(dir: &Path, seeds: &[(&str, &[u8])]) {
    for (name, bytes) in seeds {
        write(dir, name, bytes);
    }
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/seeds".into()));
    let dir = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).expect("seed folder");
        d
    };
    let (slide, region, mask_dir, meta) = (dir("slide"), dir("tiff_region"), dir("mask"), dir("meta"));
    for path in tiffs(&slide) {
        let name = path.file_name().expect("a file");
        std::fs::copy(&path, region.join(name)).expect("copy");
    }
    crate_tiffs(&slide);
    crate_tiffs(&region);
    pngs_and_jpegs(&slide);
    masks(&mask_dir);
    metas(&meta);
    std::fs::copy(slide.join("rgb.png"), meta.join("rgb.png")).expect("copy");

    // RLE: two bytes give the mask's height − 1 and width − 1, the rest is the string.
    texts(
        &dir("rle"),
        &[
            ("runs", b"\x09\x09 1 3 10 5 50 2 99 1"),
            ("empty", b"\x0f\x1f"),
            ("adjacent", b"\x03\x03 1 2 3 2"),
            ("whole", b"\x00\x00 1 1"),
        ],
    );
    // CSV: the first byte chooses the schema (0 train, 1 test, 2 submission, 3 pseudo).
    texts(
        &dir("csv"),
        &[
            ("train", b"\x00id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex\n10044,prostate,HPA,3000,3000,0.4,4,1 3 10 5,76.0,Male\n10274,lung,Hubmap,2500,2500,0.7562,5,5 2,,\n"),
            ("test", b"\x01id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n10078,spleen,Hubmap,2023,2023,0.4945,4\n"),
            ("submission", b"\x02id,rle\n10078,1 3 10 5\n10079,\n"),
            ("pseudo", b"\x03id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,image,label\nu1,kidney,HPA,64,64,0.4,4,images/u1.tiff,labels/u1.png\n"),
            ("quoted", b"\x02id,rle\n\"a,b\",\"1 2\"\n"),
        ],
    );
    texts(
        &dir("manifest"),
        &[
            ("one-group", b"[tta]\nmode = \"flips\"\n\n[thresholds]\ndefault = 0.45\nkidney = 0.4\n\n[[group]]\nsize = 128\nweight = 1.0\n\n[[group.model]]\npath = \"fold0/model.onnx\"\nweight = 1.0\nnorm = \"imagenet\"\noutput = \"logits\"\nactivation = \"sigmoid\"\n"),
            ("two-groups", b"[[group]]\nsize = 256\n[[group.model]]\npath = \"a.onnx\"\nnorm = \"pm1\"\noutput = 0\nchannel = 1\norgans = [\"kidney\", \"lung\"]\n\n[[group]]\nsize = 512\nweight = 2\n[[group.model]]\npath = \"b.onnx\"\n"),
            ("tiled", b"target_pixel_size = 0.5\nreference_size = 3000\n[tta]\nmode = \"d4\"\nscales = [1.0, 1.25]\n[[group]]\nsize = 256\ntile = { overlap = 0.25 }\n[[group.model]]\npath = \"a.onnx\"\n"),
        ],
    );
    println!("seeds written under {}", root.display());
}
