"""The usual Python pipeline of the competition, as the baseline for ftu-infer's benchmark.

What competitors' inference notebooks did, slide by slide: tifffile reads the slide, OpenCV
resizes it (INTER_AREA), NumPy normalises and stacks the TTA flips into one batch, onnxruntime runs
each model, flips are undone, sigmoid, models and groups averaged, OpenCV resizes the map back
(INTER_LINEAR), per-organ threshold, NumPy run-length encoding. It reads the same manifest as
ftu-infer (the subset the benchmark uses: groups, models with named norms and outputs by name or
index, flips TTA, thresholds). Grey, RGBA and 16-bit slides become 8-bit RGB as ftu reads them.
It prints its bare `session.run` time beside its wall time, and the providers its sessions got.

    python python_pipeline.py --manifest M --data DIR --out submission.csv [--device cpu|cuda]
"""
import argparse
import csv
import os
import time
import tomllib

import cv2
import numpy as np
import onnxruntime as ort
import tifffile

NORMS = {
    "imagenet": (np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255),
    "unit": (np.zeros(3), np.full(3, 255.0)),
    "pm1": (np.full(3, 127.0), np.full(3, 127.0)),
}


def rle_encode(mask):
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def to_rgb8(img):
    """Grey, grey+alpha, RGBA and 16-bit slides to 8-bit RGB, rounded as ftu's reader does."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] in (1, 2):
        img = np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def tta_batch(x, mode):
    """x: 3xHxW -> list of transformed copies (identity, hflip, vflip, both)."""
    variants = [x]
    if mode in ("hflip", "flips"):
        variants.append(x[:, :, ::-1])
    if mode == "flips":
        variants += [x[:, ::-1, :], x[:, ::-1, ::-1]]
    return variants


def untta(maps, mode):
    out = [maps[0]]
    if mode in ("hflip", "flips"):
        out.append(maps[1][:, ::-1])
    if mode == "flips":
        out += [maps[2][::-1, :], maps[3][::-1, ::-1]]
    return np.mean(out, axis=0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--manifest", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    with open(a.manifest, "rb") as f:
        manifest = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(a.manifest))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if a.device == "cuda" else ["CPUExecutionProvider"]
    mode = manifest.get("tta", {}).get("mode", "none")
    thresholds = manifest.get("thresholds", {})
    groups = []
    for g in manifest["group"]:
        models = []
        for m in g["model"]:
            sess = ort.InferenceSession(os.path.join(base, m["path"]), providers=providers)
            mean, std = NORMS[m["norm"]]
            names = [o.name for o in sess.get_outputs()]
            output = m.get("output", 0)
            output = names[output] if isinstance(output, int) else output
            models.append((sess, output, mean.astype(np.float32), std.astype(np.float32), m.get("weight", 1.0)))
        groups.append((g["size"], g.get("weight", 1.0), models))
    # onnxruntime falls back to the CPU silently when the CUDA provider cannot load: say which ran.
    print(f"python providers: {', '.join(groups[0][2][0][0].get_providers())}")

    start = time.perf_counter()
    rows = list(csv.DictReader(open(os.path.join(a.data, "test.csv"))))
    out = []
    session_time = 0.0
    for row in rows:
        img = to_rgb8(tifffile.imread(os.path.join(a.data, "test_images", row["id"] + ".tiff")))
        h, w = img.shape[:2]
        total = np.zeros((h, w), np.float32)
        gsum = 0.0
        for size, gweight, models in groups:
            small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
            acc = np.zeros((size, size), np.float32)
            msum = 0.0
            for sess, output, mean, std, mweight in models:
                x = ((small - mean) / std).transpose(2, 0, 1)
                batch = np.ascontiguousarray(np.stack(tta_batch(x, mode)), dtype=np.float32)
                t0 = time.perf_counter()
                logits = sess.run([output], {sess.get_inputs()[0].name: batch})[0][:, 0]
                session_time += time.perf_counter() - t0
                prob = 1.0 / (1.0 + np.exp(-logits))
                acc += mweight * untta(list(prob), mode)
                msum += mweight
            total += gweight * cv2.resize(acc / msum, (w, h), interpolation=cv2.INTER_LINEAR)
            gsum += gweight
        total /= gsum
        t = thresholds.get("hubmap" if row["data_source"].lower() == "hubmap" else "hpa", {}).get(row["organ"])
        if t is None:
            t = thresholds.get(row["organ"], thresholds.get("default", 0.5))
        out.append((row["id"], rle_encode((total > t).astype(np.uint8))))
    wall = time.perf_counter() - start
    with open(a.out, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "rle"])
        wr.writerows(out)
    print(f"python pipeline: {len(rows)} slides in {wall:.2f} s, {len(rows) / wall:.3f} slides/s")
    print(f"python session.run: {session_time:.2f} s")


if __name__ == "__main__":
    main()
