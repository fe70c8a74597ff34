//! `predict --slides`: slide files with no test.csv, their ids, sizes and pixel sizes from the
//! files or a `--slides-meta` CSV.

use super::*;

/// Scanner-style files with no test.csv: an Aperio-style SVS header (MPP), an OME-TIFF
/// (PhysicalSizeX in nm) with a pyramid level, and a TIFF with only resolution tags, in one
/// folder. `predict --slides DIR --organ kidney` takes ids from the names, sizes and µm per pixel
/// from the files, and writes id,organ,pixel_size,height,width,rle with the known masks, and
/// GeoJSON and mask TIFFs; a file that states no pixel size is an error naming it, unless
/// `--pixel-size` gives one. `inspect` shows what the file says.
#[test]
fn predict_takes_slide_files_without_test_csv() {
    use ftu_formats::slide::write::{write_tiff_pages_with, TiffMeta};
    use ftu_infer::slides::SlideResultRow;
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let scanner = f.path("scanner");
    std::fs::create_dir(&scanner).unwrap();
    let img = gradient_slide(0);
    let page = |side: usize| TiffSpec {
        width: side as u32,
        height: side as u32,
        samples: Samples::Rgb8,
        chunking: Chunking::Tiles { size: 16 },
        compression: Compression::Deflate,
        bigtiff: false,
    };
    let write = |name: &str, meta: TiffMeta, pyramid: bool| {
        let mut pages = vec![page(SIDE)];
        if pyramid {
            pages.push(page(SIDE / 4));
        }
        write_tiff_pages_with(&scanner.join(name), &pages, &meta, |p, r, buf| {
            let step = if p == 0 { 1 } else { 4 };
            for y in r.y as usize..(r.y + r.height) as usize {
                for x in r.x as usize..(r.x + r.width) as usize {
                    buf.extend_from_slice(&img.pixel(x * step, y * step));
                }
            }
            Ok(())
        })
        .unwrap();
    };
    write(
        "a.svs",
        TiffMeta {
            description: Some("Aperio Image Library v12|AppMag = 40|MPP = 0.2502".into()),
            pixel_size: None,
        },
        true,
    );
    write(
        "b.ome.tif",
        TiffMeta {
            description: Some(
                r#"<OME><Image><Pixels PhysicalSizeX="500" PhysicalSizeXUnit="nm"/></Image></OME>"#.into(),
            ),
            pixel_size: None,
        },
        true,
    );
    write(
        "c.tif",
        TiffMeta {
            description: None,
            pixel_size: Some(0.8),
        },
        false,
    );
    let manifest = f.manifest("");
    let out = f.path("slides.csv");
    let geojson = f.path("gj");
    let masks = f.path("masks");
    let predict = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            "--manifest",
            manifest.to_str().unwrap(),
            "--slides",
            scanner.to_str().unwrap(),
            "--organ",
            "kidney",
            "--out",
            out.to_str().unwrap(),
            "--geojson",
            geojson.to_str().unwrap(),
            "--masks",
            masks.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ftu_infer(&args)
    };
    let o = predict(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("b: 64×64, kidney, 0.5 µm/pixel (OME-XML PhysicalSizeX)"),
        "{}",
        text(&o)
    );
    let rows: Vec<SlideResultRow> = csv::Reader::from_path(&out)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<(&str, f64)> = rows.iter().map(|r| (r.id.as_str(), r.pixel_size)).collect();
    assert_eq!(got[..2], [("a", 0.2502), ("b", 0.5)]);
    assert_eq!(got[2].0, "c");
    assert!((got[2].1 - 0.8).abs() < 1e-6, "{}", got[2].1);
    for r in &rows {
        assert_eq!((r.organ, r.height, r.width), (Organ::Kidney, SIDE as u32, SIDE as u32));
        assert_eq!(
            rle::decode(&r.rle, SIDE, SIDE).unwrap(),
            expected_mask(0.5),
            "slide {}",
            r.id
        );
        assert!(geojson.join(format!("{}.geojson", r.id)).is_file() && masks.join(format!("{}.tiff", r.id)).is_file());
    }

    // No pixel size in the file: named, with the way out; given, it runs.
    std::fs::copy(f.path("test_images/1.tiff"), scanner.join("d.tiff")).unwrap();
    let o = predict(&[]);
    let err = failure(&o);
    assert!(err.contains("d.tiff") && err.contains("--pixel-size"), "{}", text(&o));
    let o = predict(&["--pixel-size", "0.4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ftu_infer(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--slides",
        scanner.to_str().unwrap(),
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--organ"),
        "{}",
        text(&o)
    );

    let o = ftu_infer(&["inspect", scanner.join("a.svs").to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    for want in [
        "64×64 pixels",
        "pixel size: 0.2502 µm (aperio)",
        "objective power: 40×",
        "16×16, downsample 4.00",
    ] {
        assert!(shown.contains(want), "{want:?} in {shown}");
    }
}

#[test]
fn slides_take_a_meta_csv_and_list_the_files_that_are_not_slides() {
    use ftu_formats::slide::write::{write_tiff_pages_with, TiffMeta};
    use ftu_infer::slides::SlideResultRow;
    let f = Folder::new(&[("1", Organ::Kidney, DataSource::Hpa)]);
    let dir = f.path("scans");
    std::fs::create_dir(&dir).unwrap();
    let img = gradient_slide(0);
    for (name, um) in [("a.tif", Some(0.5)), ("b.tif", None)] {
        let spec = TiffSpec {
            width: SIDE as u32,
            height: SIDE as u32,
            samples: Samples::Rgb8,
            chunking: Chunking::Strips { rows: 16 },
            compression: Compression::Lzw,
            bigtiff: false,
        };
        let meta = TiffMeta {
            description: None,
            pixel_size: um,
        };
        write_tiff_pages_with(&dir.join(name), &[spec], &meta, |_, r, buf| {
            let start = r.y as usize * SIDE * 3;
            buf.extend_from_slice(&img.data[start..start + r.height as usize * SIDE * 3]);
            Ok(())
        })
        .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a slide").unwrap();
    let meta = f.path("meta.csv");
    std::fs::write(&meta, "id,organ,pixel_size\nb,lung,0.75\n").unwrap();
    let out = f.path("slides.csv");
    let manifest = f.manifest("");
    let o = ftu_infer(&[
        "predict",
        "--manifest",
        manifest.to_str().unwrap(),
        "--slides",
        dir.to_str().unwrap(),
        "--slides-meta",
        meta.to_str().unwrap(),
        "--organ",
        "spleen",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("not a slide, left out:") && stdout.contains("notes.txt"),
        "{stdout}"
    );
    assert!(
        stdout.contains("b: 64×64, lung, 0.75 µm/pixel (--slides-meta)"),
        "{stdout}"
    );
    let rows: Vec<SlideResultRow> = csv::Reader::from_path(&out)
        .unwrap()
        .deserialize()
        .map(|r| r.unwrap())
        .collect();
    let got: Vec<(&str, Organ)> = rows.iter().map(|r| (r.id.as_str(), r.organ)).collect();
    assert_eq!(got, [("a", Organ::Spleen), ("b", Organ::Lung)]);
    assert!((rows[0].pixel_size - 0.5).abs() < 1e-6 && rows[1].pixel_size == 0.75);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("slides.report.json")).unwrap()).unwrap();
    assert!(
        report["not_slides"][0].as_str().unwrap().ends_with("notes.txt"),
        "{report}"
    );
}
