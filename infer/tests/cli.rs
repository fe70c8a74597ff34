//! The ftu-infer binary on good and bad input: right output, clear errors, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{failure, ftu_infer, ftu_infer_command, ftu_infer_stdin};

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Fails cleanly (see [`failure`]), with the expected words on stderr.
fn fails_with(out: &Output, words: &[&str]) {
    let err = failure(out);
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}: {err}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn rle_decode_then_encode_round_trips_through_png() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("m.png");
    let png = png.to_str().unwrap();
    ok(&ftu_infer(&[
        "rle", "decode", "--height", "3", "--width", "2", "--out", png, "2 1 4 2",
    ]));
    assert_eq!(ok(&ftu_infer(&["rle", "encode", png])).trim(), "2 1 4 2");
    // From stdin, larger.
    ok(&ftu_infer_stdin(
        &["rle", "decode", "--height", "50", "--width", "40", "--out", png],
        "5 10 100 300 1999 2\n",
    ));
    assert_eq!(ok(&ftu_infer(&["rle", "encode", png])).trim(), "5 10 100 300 1999 2");
}

#[test]
fn rle_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("m.png");
    let png = png.to_str().unwrap();
    let decode = |rle: &str| ftu_infer(&["rle", "decode", "--height", "3", "--width", "2", "--out", png, rle]);
    fails_with(&decode("1 2 3"), &["even number", "3 tokens"]);
    fails_with(&decode("1 x"), &["token 2", "`x`"]);
    fails_with(&decode("1 0"), &["length 0"]);
    fails_with(&decode("0 1"), &["below 1"]);
    fails_with(&decode("6 2"), &["past"]);
    fails_with(&decode("4 1 1 1"), &["sorted"]);
    assert!(!png_exists(png), "no output is written for bad input");
    fails_with(
        &ftu_infer(&["rle", "decode", "--height", "0", "--width", "2", "--out", png, "1 1"]),
        &["positive"],
    );
    let junk = write(dir.path(), "junk.png", "not a png");
    fails_with(&ftu_infer(&["rle", "encode", &junk]), &["junk.png"]);
    fails_with(
        &ftu_infer(&["rle", "encode", "/nonexistent/m.png"]),
        &["/nonexistent/m.png"],
    );
}

fn png_exists(p: &str) -> bool {
    Path::new(p).exists()
}

const META: &str = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n\
    1,kidney,HPA,10,10,0.4,4\n2,lung,Hubmap,10,10,0.7562,4\n3,lung,HPA,10,10,0.4,4\n";

#[test]
fn score_prints_mean_and_per_organ_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let meta = write(d, "test.csv", META);
    let truth = write(d, "truth.csv", "id,rle\n1,1 20\n2,50 10\n3,1 100\n");
    let out = ok(&ftu_infer(&[
        "score", "--truth", &truth, "--pred", &truth, "--meta", &meta,
    ]));
    assert!(out.starts_with("mean dice 1.0000 over 3 images"), "{out}");
    let empty = write(d, "empty.csv", "id,rle\n3,\n2,\n1,\n");
    let out = ok(&ftu_infer(&[
        "score", "--truth", &truth, "--pred", &empty, "--meta", &meta,
    ]));
    assert!(out.starts_with("mean dice 0.0000"), "{out}");
    assert!(
        out.contains("kidney") && out.contains("lung") && out.contains("     2   0.0000"),
        "{out}"
    );
    // Half of image 1 right: dice 2·10/(20+10) for kidney; lung perfect.
    let half = write(d, "half.csv", "id,rle\n1,1 10\n2,50 10\n3,1 100\n");
    let out = ok(&ftu_infer(&[
        "score", "--truth", &truth, "--pred", &half, "--meta", &meta,
    ]));
    assert!(out.contains("kidney               1   0.6667"), "{out}");
}

#[test]
fn score_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let meta = write(d, "test.csv", META);
    let truth = write(d, "truth.csv", "id,rle\n1,1 20\n2,\n3,\n");
    let short = write(d, "short.csv", "id,rle\n1,\n2,\n");
    fails_with(
        &ftu_infer(&["score", "--truth", &truth, "--pred", &short, "--meta", &meta]),
        &["only in", "3"],
    );
    let bad = write(d, "bad.csv", "id,rle\n1,1 2 3\n2,\n3,\n");
    fails_with(
        &ftu_infer(&["score", "--truth", &truth, "--pred", &bad, "--meta", &meta]),
        &["bad.csv", "`1`", "even number"],
    );
    fails_with(&ftu_infer(&["score", "--truth", &truth, "--pred", &truth]), &["--meta"]);
    let organ = write(
        d,
        "organ.csv",
        "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n1,liver,HPA,10,10,0.4,4\n",
    );
    fails_with(
        &ftu_infer(&["score", "--truth", &truth, "--pred", &truth, "--meta", &organ]),
        &["organ.csv line 2", "`liver`"],
    );
}

/// Sets entry `index` of a classic little-endian TIFF's TileByteCounts (tag 325, LONG) to `value`.
fn patch_tile_byte_count(bytes: &mut [u8], index: usize, value: u32) {
    assert_eq!(&bytes[..4], b"II*\0", "a classic little-endian TIFF");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
    let ifd = u32_at(bytes, 4);
    for e in 0..u16_at(bytes, ifd) {
        let entry = ifd + 2 + 12 * e;
        if u16_at(bytes, entry) == 325 {
            assert_eq!(u16_at(bytes, entry + 2), 4, "TileByteCounts as LONG");
            assert!(u32_at(bytes, entry + 4) > index, "enough tiles");
            let at = u32_at(bytes, entry + 8) + 4 * index;
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            return;
        }
    }
    panic!("no TileByteCounts");
}

/// The case found by byte-mutating slides: a 260×300 LZW-tiled TIFF whose fifth TileByteCounts
/// entry says 4294967217 bytes made `rle encode` allocate 4 GB, and abort under a 2 GiB
/// address-space limit. Now it is a clear error naming the file and the chunk, under that limit,
/// for ftu's own LZW decoder and for the tiff crate's JPEG alike.
#[test]
fn a_chunk_claiming_more_bytes_than_the_file_fails_cleanly_under_a_memory_limit() {
    use ftu_formats::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..260 * 300 * 3).map(|i| (i * 7 % 251) as u8).collect();
    for (name, compression) in [
        ("lzw.tiff", Compression::Lzw),
        ("jpeg.tiff", Compression::Jpeg { quality: 90 }),
    ] {
        let path = dir.path().join(name);
        let spec = TiffSpec {
            width: 260,
            height: 300,
            samples: Samples::Rgb8,
            chunking: Chunking::Tiles { size: 64 },
            compression,
            bigtiff: false,
        };
        write_tiff_image(&path, &spec, &pixels).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        patch_tile_byte_count(&mut bytes, 4, 4_294_967_217);
        std::fs::write(&path, &bytes).unwrap();
        let out = Command::new("sh")
            .args([
                "-c",
                "ulimit -v 2097152 && exec \"$0\" rle encode \"$1\"",
                env!("CARGO_BIN_EXE_ftu-infer"),
                path.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        fails_with(&out, &[name, "chunk 4", "runs past the end of the file"]);
    }
}

/// `ftu-infer ARGS` with RUST_BACKTRACE=1 in its environment, as a user's shell may have it.
fn ftu_infer_backtrace_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    ftu_infer_command(args)
        .env_remove("FTU_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Exit status 1; stderr ends with an `error: …` line and only `caused by: …` lines; no backtrace, no panic,
/// no Rust Debug form of a type.
fn reads_as_sentences(out: &Output) -> String {
    let err = failure(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // What the command said before failing (notes, progress) may come first; the report is the
    // rest: one `error: …` line, then only causes.
    let Some(start) = err.find("error: ").filter(|&i| i == 0 || err[..i].ends_with('\n')) else {
        panic!("no line starts with `error: `:\n{err}");
    };
    for line in err[start..].lines().skip(1) {
        assert!(
            line.starts_with("caused by: "),
            "a line that is no cause: {line:?} in\n{err}"
        );
    }
    assert!(!err.contains("Other(") && !err.contains("Some("), "a Debug form: {err}");
    err
}

#[test]
fn failing_commands_print_error_and_causes_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("m.png");
    let err = reads_as_sentences(&ftu_infer_backtrace_env(
        &[
            "rle",
            "decode",
            "--height",
            "3",
            "--width",
            "2",
            "--out",
            png.to_str().unwrap(),
            "1 2 3",
        ],
        &[],
    ));
    assert!(
        err.starts_with("error: decoding RLE for a 2×3 (width×height) mask\ncaused by: "),
        "{err}"
    );

    // No ONNX Runtime anywhere: no ORT_DYLIB_PATH file, no Python on PATH, no virtualenv.
    let model = dir.path().join("m.onnx");
    let sample = ftu_onnx::samples::pixel_linear([1.0, 0.0, 0.0], 0.0, Default::default(), "logits").unwrap();
    ftu_onnx::write(&sample, &model).unwrap();
    let model = model.to_str().unwrap().to_string();
    let out = ftu_infer_command(&["inspect", &model])
        .env_clear()
        .env("RUST_BACKTRACE", "1")
        .env("PATH", dir.path().join("empty"))
        .env("ORT_DYLIB_PATH", dir.path().join("libonnxruntime.so"))
        .output()
        .unwrap();
    let err = reads_as_sentences(&out);
    assert!(err.contains("ONNX Runtime library not found"), "{err}");

    let missing = dir.path().join("manifest.toml");
    let err = reads_as_sentences(&ftu_infer_backtrace_env(
        &["predict", "--manifest", missing.to_str().unwrap(), "--data", "."],
        &[],
    ));
    assert!(err.contains("manifest.toml"), "the manifest is not named: {err}");
}

#[test]
fn ftu_backtrace_asks_for_one_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("m.png");
    let out = ftu_infer_backtrace_env(
        &[
            "rle",
            "decode",
            "--height",
            "3",
            "--width",
            "2",
            "--out",
            png.to_str().unwrap(),
            "1 2 3",
        ],
        &[("FTU_BACKTRACE", "1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("\nbacktrace:\n") && err.contains(" 0: "),
        "{err}"
    );

    let out = ftu_infer_backtrace_env(&["predict", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
