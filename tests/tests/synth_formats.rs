//! Synthetic data through the shared formats: every slide format synth writes reads back as the
//! image it rendered, the truth RLE decodes to the rendered mask, and scoring behaves.

use ftu_formats::mask::rle;
use ftu_formats::schema::{read_submission, read_test, read_train};
use ftu_formats::{read_slide, SlideLimits};
use ftu_infer::score;
use ftu_trainer::synth::{self, SlideFormat, SynthConfig};

#[test]
fn every_synth_format_reads_back_and_truth_matches_render() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        train: 12,
        test: 5,
        size: 200,
        seed: 11,
        mixed_formats: true,
    };
    synth::generate(dir.path(), &cfg, || {}).unwrap();
    let (train_plans, test_plans) = synth::plan(&cfg).unwrap();
    let train = read_train(&dir.path().join("train.csv")).unwrap();
    let test = read_test(&dir.path().join("test.csv")).unwrap();
    let truth = read_submission(&dir.path().join("truth.csv")).unwrap();
    assert_eq!((train.len(), test.len(), truth.len()), (12, 5, 5));

    let mut formats_seen = std::collections::HashSet::new();
    for (plan, folder, rle_text) in train_plans
        .iter()
        .map(|p| {
            (
                p,
                "train_images",
                train.iter().find(|r| r.id == p.id).unwrap().rle.clone(),
            )
        })
        .chain(test_plans.iter().map(|p| {
            (
                p,
                "test_images",
                truth.iter().find(|r| r.id == p.id).unwrap().rle.clone(),
            )
        }))
    {
        let (rendered, mask) = synth::render(plan);
        let slide = read_slide(
            &dir.path().join(folder).join(format!("{}.tiff", plan.id)),
            SlideLimits::default(),
        )
        .unwrap();
        assert_eq!((slide.width, slide.height), (plan.width as usize, plan.height as usize));
        if plan.format == SlideFormat::TiledJpeg {
            let err = slide
                .data
                .iter()
                .zip(&rendered.data)
                .map(|(&a, &b)| a.abs_diff(b) as f64)
                .sum::<f64>()
                / slide.data.len() as f64;
            assert!(err < 6.0, "{}: JPEG mean abs error {err}", plan.id);
        } else {
            assert!(
                slide.data == rendered.data,
                "{} ({:?}) differs from its render",
                plan.id,
                plan.format
            );
        }
        assert_eq!(rle::decode(&rle_text, slide.height, slide.width).unwrap(), mask);
        formats_seen.insert(format!("{:?}", plan.format));
    }
    assert_eq!(formats_seen.len(), 6, "all formats exercised: {formats_seen:?}");

    // The truth scores 1 against itself and 0 against the empty sample submission (every slide
    // has at least one FTU).
    let truth_path = dir.path().join("truth.csv");
    let meta = dir.path().join("test.csv");
    assert_eq!(
        score::score_files(&truth_path, &truth_path, Some(&meta))
            .unwrap()
            .mean(),
        1.0
    );
    let empty = score::score_files(&truth_path, &dir.path().join("sample_submission.csv"), Some(&meta)).unwrap();
    assert!(empty.images.iter().all(|s| s.dice == 0.0));
    let train_path = dir.path().join("train.csv");
    let train_as_pred: Vec<_> = train
        .iter()
        .map(|r| ftu_formats::schema::SubmissionRow {
            id: r.id.clone(),
            rle: r.rle.clone(),
        })
        .collect();
    let pred = dir.path().join("train_pred.csv");
    ftu_formats::schema::write_rows(&pred, &train_as_pred).unwrap();
    assert_eq!(score::score_files(&train_path, &pred, None).unwrap().mean(), 1.0);
}
