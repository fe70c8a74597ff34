//! `ftu-train ensemble` from the command line: finished runs of other architectures and an
//! organ-specific run blended on their out-of-fold maps; the choices are checked against what the
//! runs themselves found, and runs that do not line up are refused by name.

mod common;

use common::{fails, ok, strs, synth, tiny, with};
use std::path::Path;

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn runs_blend_into_an_ensemble_chosen_on_their_out_of_fold_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 10, 5);
    let run = |name: &str, extra: &[(&str, &str)]| {
        let out = dir.path().join(name);
        let args = extra.iter().fold(tiny(&data, &out, 1), |a, (f, v)| with(a, f, v));
        ok(&strs(&args));
        out
    };
    let unet = run("unet", &[]);
    let fpn = run("fpn", &[("--arch", "fpn-resnet18"), ("--decoder-channels", "16,8")]);
    let lung = run("lung", &[("--organs", "lung,kidney")]);
    // The organ-specific run trained and validated on its organs only, each slide in the fold
    // it has in the full runs.
    let folds = |run: &Path| std::fs::read_to_string(run.join("folds.csv")).unwrap();
    let kept: Vec<String> = folds(&unet)
        .lines()
        .filter(|l| l.starts_with("id") || l.contains(",lung,") || l.contains(",kidney,"))
        .map(String::from)
        .collect();
    assert_eq!(folds(&lung).lines().collect::<Vec<_>>(), kept);
    let lung_manifest = std::fs::read_to_string(lung.join("manifest.toml")).unwrap();
    assert!(
        lung_manifest.contains("organs = [") && lung_manifest.contains("\"lung\""),
        "{lung_manifest}"
    );

    // One run alone reproduces that run's thresholds.
    let one = dir.path().join("one");
    ok(&[
        "ensemble",
        "--runs",
        unet.to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
        "--no-postprocess",
    ]);
    let own = json(&unet.join("thresholds.json"));
    let got = json(&one.join("ensemble.json"));
    assert_eq!(got["chosen"]["thresholds"]["default"], own["default"], "{got}");
    assert_eq!(got["chosen"]["thresholds"]["per_organ"], own["per_organ"]);

    // Three runs: every candidate scored, the chosen one never below the best single run.
    let all = dir.path().join("all");
    let o = common::ftu_train(&[
        "ensemble",
        "--runs",
        unet.to_str().unwrap(),
        fpn.to_str().unwrap(),
        lung.to_str().unwrap(),
        "--out",
        all.to_str().unwrap(),
        "--weight-step",
        "0.25",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("unet alone") && stdout.contains("chosen") && stdout.contains("ftu-infer predict --manifest"),
        "{stdout}"
    );
    let e = json(&all.join("ensemble.json"));
    let candidates = e["candidates"].as_array().unwrap();
    assert_eq!(
        candidates.len(),
        15 + 1,
        "C(6, 2) weightings at steps of 1/4 and equal thirds"
    );
    let best_single = candidates
        .iter()
        .filter(|c| c["covers"].as_bool().unwrap())
        .filter(|c| c["weights"].as_array().unwrap().iter().any(|w| w.as_f64() == Some(1.0)))
        .map(|c| c["mean_dice"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let chosen = e["chosen"]["mean_dice"].as_f64().unwrap();
    assert!(
        chosen >= best_single,
        "chosen {chosen} below the best single run's {best_single}"
    );
    let top = candidates
        .iter()
        .filter(|c| c["covers"].as_bool().unwrap())
        .map(|c| c["mean_dice"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert!(
        (chosen - top).abs() < 1e-9,
        "the chosen weighting is the best covering one"
    );
    // The lung/kidney run alone does not cover prostate, spleen, large intestine: scored on its
    // organs only, never chosen alone.
    let lung_alone = candidates
        .iter()
        .find(|c| c["weights"].as_array().unwrap()[2].as_f64() == Some(1.0))
        .unwrap();
    assert_eq!(lung_alone["covers"], false);
    let organs: Vec<&String> = lung_alone["organ_dice"].as_object().unwrap().keys().collect();
    assert!(organs.iter().all(|o| *o == "lung" || *o == "kidney"), "{organs:?}");
    // Postprocessing kept only where it raised Dice.
    for (organ, p) in e["postprocess"].as_object().unwrap() {
        let (before, after) = (p["dice_before"].as_f64().unwrap(), p["dice_after"].as_f64().unwrap());
        let identity = p["min_area_um2"].is_null() && p["max_hole_um2"].is_null() && p["dilate_px"] == 0;
        assert!(after >= before, "{organ}");
        assert!(identity || after > before, "{organ}: a spec kept without a gain");
    }
    // The manifest: a group per run with weight, models copied into the ensemble, the
    // organ-specific run's models serving its organs.
    let manifest = ftu_formats::manifest::Manifest::load(&all.join("manifest.toml")).unwrap();
    let weights = e["chosen"]["weights"].as_array().unwrap();
    let used = weights.iter().filter(|w| w.as_f64().unwrap() > 0.0).count();
    assert_eq!(manifest.groups.len(), used);
    for g in &manifest.groups {
        for m in &g.models {
            assert!(m.path.starts_with(all.join("models")), "{}", m.path.display());
            assert!(m.path.exists());
        }
    }
    if weights[2].as_f64().unwrap() > 0.0 {
        let lung_group = manifest.groups.iter().find(|g| g.models[0].organs.is_some()).unwrap();
        assert_eq!(
            lung_group.models[0].organs,
            Some(vec![ftu_formats::Organ::Kidney, ftu_formats::Organ::Lung])
        );
    }
    let oof = std::fs::read_to_string(all.join("oof.csv")).unwrap();
    assert_eq!(oof.lines().count(), 1 + 10, "a row per labelled slide");

    // A second time into the same folder: refused without --overwrite.
    let again = fails(&[
        "ensemble",
        "--runs",
        unet.to_str().unwrap(),
        "--out",
        all.to_str().unwrap(),
    ]);
    assert!(
        again.contains("holds an ensemble already") && again.contains("--overwrite"),
        "{again}"
    );
}

#[test]
fn runs_that_do_not_line_up_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 6, 6);
    let a = dir.path().join("a");
    ok(&strs(&tiny(&data, &a, 1)));
    // Other folds (another seed): refused, naming the slide and both runs.
    let b = dir.path().join("b");
    ok(&strs(&with(tiny(&data, &b, 1), "--seed", "11")));
    let out = dir.path().join("ens");
    let e = fails(&[
        "ensemble",
        "--runs",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("runs a and b") && e.contains("slide") && e.contains("fold"),
        "{e}"
    );
    // An unfinished run: refused, naming the fold.
    let c = dir.path().join("c");
    ok(&strs(&with(tiny(&data, &c, 1), "--fold", "1")));
    let e = fails(&[
        "ensemble",
        "--runs",
        a.to_str().unwrap(),
        c.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        e.contains("fold 0 has not finished") && e.contains(c.to_str().unwrap()),
        "{e}"
    );
    assert!(!out.join("manifest.toml").exists());
}
