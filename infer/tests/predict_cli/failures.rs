//! Runs that fail: a model whose output is not finite, every slide bad with `--on-error skip`,
//! and a failed run resumed with `--continue`.

use super::*;

#[test]
fn a_model_that_outputs_nan_or_inf_fails_the_slide_instead_of_an_empty_or_full_mask() {
    for (bias, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "+Inf")] {
        let f = Folder::new(&[
            ("1", Organ::Kidney, DataSource::Hpa),
            ("2", Organ::Lung, DataSource::Hpa),
        ]);
        // Every output value is red·1 + bias: all NaN, or all +Inf (which would threshold to a
        // full mask).
        let model = samples::pixel_linear([1.0, 0.0, 0.0], bias, InputShape::default(), "logits").unwrap();
        ftu_onnx::write(&model, &f.path("red.onnx")).unwrap();
        let manifest = f.manifest("");
        let o = f.predict(&manifest, &[]);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let values = SIDE * SIDE;
        assert!(
            err.contains("slide 1")
                && err.contains("group[0].model[0]")
                && err.contains("red.onnx")
                && err.contains(&format!(
                    "{values} of {values} values of output `logits` are NaN or infinite"
                )),
            "{what}: {err}"
        );
        assert!(!f.path("sub.csv").exists(), "{what}: no submission");

        // Skipped, every slide fails: the run fails too, with the reasons in its report.
        let o = f.predict(&manifest, &["--on-error", "skip"]);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        assert!(!f.path("sub.csv").exists(), "{what}: no submission of empty masks");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.path("sub.report.json")).unwrap()).unwrap();
        let reasons: Vec<&str> = report["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons.len(), 2, "{what}");
        assert!(
            reasons.iter().all(|r| r.contains("NaN or infinite")),
            "{what}: {reasons:?}"
        );
    }
}

#[test]
fn on_error_skip_with_every_slide_bad_fails_and_writes_no_submission() {
    let f = Folder::new(&[
        ("1", Organ::Kidney, DataSource::Hpa),
        ("2", Organ::Lung, DataSource::Hpa),
    ]);
    std::fs::write(f.path("test_images/1.tiff"), b"II*\0 truncated").unwrap();
    std::fs::remove_file(f.path("test_images/2.tiff")).unwrap();
    let o = f.predict(&f.manifest(""), &["--on-error", "skip"]);
    assert!(!o.status.success(), "{}", text(&o));
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("2 rows, 0 predicted, 2 failed") && out.contains("failed 2: no image"),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("none of the 2 slides could be predicted") && err.contains("sub.report.json"),
        "{err}"
    );
    assert!(
        !f.path("sub.csv").exists(),
        "empty masks for every slide would read as no FTU"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("sub.report.json")).unwrap()).unwrap();
    assert_eq!(
        (report["predicted"].as_u64(), report["failed"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(!f.path("sub.journal.csv").exists());
}

#[test]
fn a_failed_run_resumes_with_continue_and_gives_the_unbroken_runs_submission() {
    let ids = [
        ("4", Organ::Kidney, DataSource::Hpa),
        ("8", Organ::Lung, DataSource::Hubmap),
        ("6", Organ::Spleen, DataSource::Hpa),
    ];
    let f = Folder::new(&ids);
    let manifest = f.manifest(THRESHOLDS);
    let o = f.predict(&manifest, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let unbroken = std::fs::read(f.path("sub.csv")).unwrap();
    assert!(!f.path("sub.journal.csv").exists(), "a finished run leaves no journal");
    std::fs::remove_file(f.path("sub.csv")).unwrap();

    // Slide 6 is unreadable: the run stops there, keeping 4 and 8.
    let good = std::fs::read(f.path("test_images/6.tiff")).unwrap();
    std::fs::write(f.path("test_images/6.tiff"), b"II*\0 truncated").unwrap();
    let o = f.predict(&manifest, &[]);
    let err = failure(&o);
    assert!(
        err.contains("the 2 slide(s) finished are kept") && err.contains("--continue"),
        "{err}"
    );
    assert!(!f.path("sub.csv").exists());
    std::fs::write(f.path("test_images/6.tiff"), &good).unwrap();
    // Slides 4 and 8 are not read again: unreadable now, they are still reused.
    std::fs::write(f.path("test_images/4.tiff"), b"gone").unwrap();
    let o = f.predict(&manifest, &["--continue"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("3 predicted (2 reused from the journal)"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(f.path("sub.csv")).unwrap(), unbroken);
    assert!(!f.path("sub.journal.csv").exists());

    // Another manifest's journal is not reused: refused with --continue, replaced without.
    std::fs::write(f.path("test_images/4.tiff"), &good).unwrap();
    std::fs::write(f.path("test_images/6.tiff"), b"II*\0 truncated").unwrap();
    assert!(!f.predict(&manifest, &[]).status.success());
    let other = f.path("other.toml");
    std::fs::copy(&manifest, &other).unwrap();
    std::fs::write(
        &other,
        std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("default = 0.5", "default = 0.4"),
    )
    .unwrap();
    let o = f.predict(&other, &["--continue"]);
    let err = failure(&o);
    assert!(
        err.contains("sub.journal.csv") && err.contains("another manifest"),
        "{err}"
    );
    let o = f.predict(&other, &["--on-error", "skip"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("held 2 finished slide(s) of an earlier run; starting over"),
        "{}",
        text(&o)
    );
}
