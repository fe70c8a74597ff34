//! Reading a whole slide into RGB8: TIFFs through the chunked reader ([`super::tiff`]), PNG and
//! JPEG with `image`. The pixel-count guard rejects oversized headers before anything is
//! allocated.

use std::io::{BufRead, Cursor, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use super::error::{check_size, guarded, SlideError, SlideErrorKind, SlideLimits};
use super::jpeg;
use super::openslide::{self, OpenSlide};
use super::rgb::RgbImage;
use super::sniff::{sniff, sniff_file, Format};
use super::tiff::{is_unsupported_codec, TiffRegions};

/// Reads a slide from a file into RGB8 (a TIFF's first page).
pub fn read_slide(path: &Path, limits: SlideLimits) -> Result<RgbImage, SlideError> {
    let (magic, format) = sniff_file(path).map_err(|e| SlideErrorKind::Io(e).at(path))?;
    match format {
        Some(Format::Tiff) => match TiffRegions::open(path, 0) {
            Ok(mut t) => t.whole(limits),
            // A codec ftu lacks (JPEG 2000 SVS): OpenSlide, when installed.
            Err(e) if is_unsupported_codec(&e) => read_with_openslide(path, limits, e),
            Err(e) => Err(e),
        },
        Some(Format::Png | Format::Jpeg) => {
            let file = std::fs::File::open(path).map_err(|e| SlideErrorKind::Io(e).at(path))?;
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            guarded(|| read_other(reader, limits)).map_err(|kind| kind.at(path))
        }
        // Not a TIFF, PNG or JPEG: a scanner format OpenSlide may know (MRXS, …).
        None if openslide::vendor(path).is_some() => {
            read_with_openslide(path, limits, SlideErrorKind::UnknownFormat { magic }.at(path))
        }
        None => Err(SlideErrorKind::UnknownFormat { magic }.at(path)),
    }
}

/// The whole slide through OpenSlide (within `limits`), or `ftu_error` with OpenSlide's reason.
fn read_with_openslide(path: &Path, limits: SlideLimits, ftu_error: SlideError) -> Result<RgbImage, SlideError> {
    let o = OpenSlide::open(path).map_err(|e| {
        SlideErrorKind::NoReader {
            ftu: Box::new(ftu_error.kind),
            openslide: Box::new(e.kind),
        }
        .at(path)
    })?;
    check_size(o.width as u64, o.height as u64, limits).map_err(|kind| kind.at(path))?;
    o.region(0, 0, o.width, o.height)
}

/// Reads a slide held in memory; `name` is used in errors.
pub fn decode_slide(bytes: &[u8], name: &Path, limits: SlideLimits) -> Result<RgbImage, SlideError> {
    match sniff(bytes) {
        Some(Format::Tiff) => TiffRegions::from_bytes(Arc::from(bytes), name, 0)?.whole(limits),
        Some(Format::Png | Format::Jpeg) => {
            guarded(|| read_other(Cursor::new(bytes), limits)).map_err(|kind| kind.at(name))
        }
        None => Err(SlideErrorKind::UnknownFormat {
            magic: bytes[..bytes.len().min(8)].to_vec(),
        }
        .at(name)),
    }
}

fn read_other<R: BufRead + Seek>(mut reader: R, limits: SlideLimits) -> Result<RgbImage, SlideErrorKind> {
    // A JPEG decoder allocates for whole MCUs: a frame one row tall with 4× vertical sampling
    // is 32 rows of work. Its frame header is read first and the padded area checked.
    if reader.fill_buf()?.starts_with(&[0xFF, 0xD8]) {
        let start = reader.stream_position()?;
        let frame = jpeg::frame(&mut reader).map_err(SlideErrorKind::CorruptJpeg)?;
        reader.seek(SeekFrom::Start(start))?;
        if let Some(frame) = frame {
            frame.check(limits)?;
        }
    }
    let mut reader = image::ImageReader::new(reader).with_guessed_format()?;
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8));
    reader.limits(image_limits);
    // Decoding checks the header's dimensions against the allocation limit before allocating,
    // but the pixel guard is ours to keep: read the header first.
    let decoder = reader.into_decoder()?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    check_size(width as u64, height as u64, limits)?;
    let image = image::DynamicImage::from_decoder(decoder)?.into_rgb8();
    Ok(RgbImage {
        width: width as usize,
        height: height as usize,
        data: image.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::write::{write_tiff_image, Chunking, Compression, Samples, TiffSpec};
    use proptest::prelude::*;
    use std::path::Path;
    use tiff::encoder::{colortype, TiffEncoder};
    use tiff::tags::Tag;

    const W: usize = 70;
    const H: usize = 45;

    /// A pattern where every channel of every pixel differs, so a transposed, shifted or
    /// channel-swapped read cannot pass.
    fn pattern() -> Vec<u8> {
        (0..H)
            .flat_map(|y| (0..W).flat_map(move |x| [(x * 3) as u8, (y * 5) as u8, (x * 7 + y * 11) as u8]))
            .collect()
    }

    fn spec(samples: Samples, chunking: Chunking, compression: Compression, bigtiff: bool) -> TiffSpec {
        TiffSpec {
            width: W as u32,
            height: H as u32,
            samples,
            chunking,
            compression,
            bigtiff,
        }
    }

    fn read(path: &Path) -> RgbImage {
        read_slide(path, SlideLimits::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rgb8_in_every_layout_and_lossless_compression() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let mut n = 0;
        for chunking in [
            Chunking::Strips { rows: 8 },
            Chunking::Strips { rows: 1000 },
            Chunking::Tiles { size: 32 },
        ] {
            for compression in [Compression::None, Compression::Lzw, Compression::Deflate] {
                for bigtiff in [false, true] {
                    let p = dir.path().join(format!("{n}.tiff"));
                    n += 1;
                    write_tiff_image(&p, &spec(Samples::Rgb8, chunking, compression, bigtiff), &rgb).unwrap();
                    let img = read(&p);
                    assert_eq!(
                        (img.width, img.height),
                        (W, H),
                        "{chunking:?} {compression:?} big={bigtiff}"
                    );
                    assert_eq!(img.data, rgb, "{chunking:?} {compression:?} big={bigtiff}");
                }
            }
        }
    }

    #[test]
    fn packbits_and_predictor_through_the_crates_own_encoder() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let p = dir.path().join("packbits.tiff");
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(tiff::encoder::Compression::Packbits);
        e.write_image::<colortype::RGB8>(W as u32, H as u32, &rgb).unwrap();
        drop(e);
        assert_eq!(read(&p).data, rgb);

        let p = dir.path().join("predictor.tiff");
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(tiff::encoder::Compression::Lzw)
            .with_predictor(tiff::tags::Predictor::Horizontal);
        e.write_image::<colortype::RGB8>(W as u32, H as u32, &rgb).unwrap();
        drop(e);
        assert_eq!(read(&p).data, rgb);

        let p = dir.path().join("predictor16.tiff");
        let rgb16: Vec<u16> = rgb.iter().map(|&v| v as u16 * 257).collect();
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap())
            .unwrap()
            .with_compression(tiff::encoder::Compression::Lzw)
            .with_predictor(tiff::tags::Predictor::Horizontal);
        e.write_image::<colortype::RGB16>(W as u32, H as u32, &rgb16).unwrap();
        drop(e);
        assert_eq!(read(&p).data, rgb);
    }

    #[test]
    fn sixteen_bit_grey_and_rgba_become_rgb8() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let tiles = Chunking::Tiles { size: 16 };

        let rgb16: Vec<u8> = rgb.iter().flat_map(|&v| (v as u16 * 257).to_ne_bytes()).collect();
        let p = dir.path().join("rgb16.tiff");
        write_tiff_image(&p, &spec(Samples::Rgb16, tiles, Compression::Lzw, false), &rgb16).unwrap();
        assert_eq!(read(&p).data, rgb);

        let grey: Vec<u8> = rgb.chunks(3).map(|p| p[2]).collect();
        let expected: Vec<u8> = grey.iter().flat_map(|&g| [g; 3]).collect();
        let p = dir.path().join("grey8.tiff");
        write_tiff_image(
            &p,
            &spec(
                Samples::Grey8,
                Chunking::Strips { rows: 7 },
                Compression::Deflate,
                false,
            ),
            &grey,
        )
        .unwrap();
        assert_eq!(read(&p).data, expected);

        let grey16: Vec<u8> = grey.iter().flat_map(|&v| (v as u16 * 257).to_ne_bytes()).collect();
        let p = dir.path().join("grey16.tiff");
        write_tiff_image(&p, &spec(Samples::Grey16, tiles, Compression::None, true), &grey16).unwrap();
        assert_eq!(read(&p).data, expected);

        let rgba: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 128]).collect();
        let p = dir.path().join("rgba.tiff");
        write_tiff_image(&p, &spec(Samples::Rgba8, tiles, Compression::None, false), &rgba).unwrap();
        assert_eq!(read(&p).data, rgb);
    }

    #[test]
    fn jpeg_tiles_decode_close_to_the_original() {
        let dir = tempfile::tempdir().unwrap();
        // A smooth image, as JPEG is meant for; the tolerance is JPEG's loss, not a colour swap.
        let smooth: Vec<u8> = (0..H)
            .flat_map(|y| (0..W).flat_map(move |x| [(150 + x) as u8, (60 + y) as u8, (200 - x) as u8]))
            .collect();
        for chunking in [Chunking::Tiles { size: 32 }, Chunking::Strips { rows: 16 }] {
            let p = dir.path().join("jpeg.tiff");
            write_tiff_image(
                &p,
                &spec(Samples::Rgb8, chunking, Compression::Jpeg { quality: 95 }, false),
                &smooth,
            )
            .unwrap();
            let img = read(&p);
            let mean_err = img
                .data
                .iter()
                .zip(&smooth)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>()
                / smooth.len() as f64;
            assert!(mean_err < 2.0, "{chunking:?}: mean abs error {mean_err}");
        }
    }

    #[test]
    fn first_page_of_a_multi_page_file() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let p = dir.path().join("pages.tiff");
        let mut e = TiffEncoder::new(std::fs::File::create(&p).unwrap()).unwrap();
        e.write_image::<colortype::RGB8>(W as u32, H as u32, &rgb).unwrap();
        e.write_image::<colortype::RGB8>(10, 10, &[7u8; 300]).unwrap();
        drop(e);
        let img = read(&p);
        assert_eq!((img.width, img.height, img.data), (W, H, rgb));
    }

    #[test]
    fn png_and_jpeg_through_image() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        let p = dir.path().join("a.png");
        crate::mask::image::write_rgb_png(&p, W, H, &rgb).unwrap();
        assert_eq!(read(&p).data, rgb);
        let p = dir.path().join("a.jpg");
        image::RgbImage::from_raw(W as u32, H as u32, vec![120; W * H * 3])
            .unwrap()
            .save(&p)
            .unwrap();
        let img = read(&p);
        assert_eq!((img.width, img.height), (W, H));
        assert!(img.data.iter().all(|&v| v.abs_diff(120) <= 2));
    }

    /// A TIFF whose header claims `w × h` RGB8 but holds ten bytes of data.
    fn bomb_tiff(w: u32, h: u32) -> Vec<u8> {
        bomb_tiff_with(w, h, 10, 1)
    }

    /// `w × h` RGB8 in one strip of `compression`, whose byte count says `count` (ten are there).
    fn bomb_tiff_with(w: u32, h: u32, count: u32, compression: u16) -> Vec<u8> {
        let mut bytes = std::io::Cursor::new(Vec::new());
        let mut e = TiffEncoder::new(&mut bytes).unwrap();
        let mut dir = e.image_directory().unwrap();
        let data = dir.write_data(&[0u8; 10][..]).unwrap();
        dir.write_tag(Tag::ImageWidth, w).unwrap();
        dir.write_tag(Tag::ImageLength, h).unwrap();
        dir.write_tag(Tag::BitsPerSample, &[8u16, 8, 8][..]).unwrap();
        dir.write_tag(Tag::SamplesPerPixel, 3u16).unwrap();
        dir.write_tag(Tag::PhotometricInterpretation, 2u16).unwrap();
        dir.write_tag(Tag::RowsPerStrip, h).unwrap();
        dir.write_tag(Tag::StripOffsets, data as u32).unwrap();
        dir.write_tag(Tag::StripByteCounts, count).unwrap();
        dir.write_tag(Tag::Compression, compression).unwrap();
        dir.finish().unwrap();
        drop(e);
        bytes.into_inner()
    }

    /// A PNG whose header claims `w × h` followed by a few bytes of pixel data.
    fn bomb_png(w: u32, h: u32) -> Vec<u8> {
        fn chunk(png: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
            png.extend((body.len() as u32).to_be_bytes());
            let mut crc = flate2::Crc::new();
            crc.update(kind);
            crc.update(body);
            png.extend(kind);
            png.extend(body);
            png.extend(crc.sum().to_be_bytes());
        }
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    #[test]
    fn size_guard_rejects_bomb_headers_before_allocating() {
        let name = Path::new("bomb.tiff");
        let e = decode_slide(&bomb_tiff(100_000, 100_000), name, SlideLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                SlideError {
                    kind: SlideErrorKind::TooLarge {
                        pixels: 10_000_000_000,
                        ..
                    },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("bomb.tiff"));
        let e = decode_slide(&bomb_png(60_000, 60_000), Path::new("bomb.png"), SlideLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                SlideError {
                    kind: SlideErrorKind::TooLarge { .. },
                    ..
                }
            ),
            "{e}"
        );
        // The limit is configurable both ways.
        let small = SlideLimits { max_pixels: 100 };
        let e = decode_slide(&bomb_tiff(20, 20), name, small).unwrap_err();
        assert!(
            matches!(
                e,
                SlideError {
                    kind: SlideErrorKind::TooLarge { .. },
                    ..
                }
            ),
            "{e}"
        );
        // Within the limit, a header that lies about its data is a decode error, not a panic.
        let e = decode_slide(&bomb_tiff(200, 200), name, SlideLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                SlideError {
                    kind: SlideErrorKind::Tiff(_) | SlideErrorKind::Corrupt(_),
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_chunk_said_to_reach_past_the_file_is_refused_before_allocating() {
        // 4 GiB claimed by a file of a few hundred bytes, uncompressed and LZW.
        for compression in [1u16, 5] {
            let bytes = bomb_tiff_with(64, 64, u32::MAX, compression);
            let e = decode_slide(&bytes, Path::new("counts.tiff"), SlideLimits::default()).unwrap_err();
            assert!(matches!(e.kind, SlideErrorKind::Corrupt(_)), "{e}");
            let message = e.to_string();
            assert!(
                message.starts_with("counts.tiff: ") && message.contains("past the end of the file"),
                "{message}"
            );
        }
    }

    #[test]
    fn truncated_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = pattern();
        for (name, chunking, compression) in [
            ("lzw.tiff", Chunking::Strips { rows: 8 }, Compression::Lzw),
            ("tiles.tiff", Chunking::Tiles { size: 16 }, Compression::None),
            ("deflate.tiff", Chunking::Tiles { size: 16 }, Compression::Deflate),
        ] {
            let p = dir.path().join(name);
            write_tiff_image(&p, &spec(Samples::Rgb8, chunking, compression, false), &rgb).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            // Cut inside the pixel data, inside the IFD at the end, and inside the header.
            for cut in [bytes.len() / 2, bytes.len() - 20, 6] {
                let e = decode_slide(&bytes[..cut], Path::new(name), SlideLimits::default())
                    .expect_err(&format!("{name} cut at {cut} decoded"));
                assert!(e.to_string().contains(name), "{e}");
                assert!(
                    !matches!(
                        e,
                        SlideError {
                            kind: SlideErrorKind::DecoderPanic { .. },
                            ..
                        }
                    ),
                    "{name} cut at {cut}: {e}"
                );
            }
        }
        let p = dir.path().join("text.tiff");
        std::fs::write(&p, "not an image").unwrap();
        assert!(matches!(
            read_slide(&p, SlideLimits::default()),
            Err(SlideError {
                kind: SlideErrorKind::UnknownFormat { .. },
                ..
            })
        ));
        assert!(matches!(
            read_slide(&dir.path().join("absent.tiff"), SlideLimits::default()),
            Err(SlideError {
                kind: SlideErrorKind::Io(_),
                ..
            })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Corrupt bytes anywhere: the reader returns an image of the stated size or an error,
        /// and no panic escapes.
        #[test]
        fn corrupt_tiffs_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), tiled in any::<bool>()) {
            let rgb = pattern();
            let chunking = if tiled { Chunking::Tiles { size: 16 } } else { Chunking::Strips { rows: 8 } };
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("c.tiff");
            write_tiff_image(&p, &spec(Samples::Rgb8, chunking, Compression::Lzw, false), &rgb).unwrap();
            let mut bytes = std::fs::read(&p).unwrap();
            let n = bytes.len();
            for (at, v) in flips {
                bytes[at % n] ^= v | 1;
            }
            if let Ok(img) = decode_slide(&bytes, Path::new("c.tiff"), SlideLimits { max_pixels: 1 << 20 }) {
                prop_assert_eq!(img.data.len(), img.width * img.height * 3);
            }
        }
    }
}
