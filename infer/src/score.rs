//! Scoring a submission against the truth: rows matched by id, sizes and organs from the truth
//! (a train.csv) or from a metadata file (test.csv), Dice per image and per organ.

use ftu_formats::dice::{dice_runs, ImageScore, Scores};
use ftu_formats::mask::rle::{self, RleError};
use ftu_formats::schema::{self, CsvError, SubmissionRow, TestRow};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("{truth} has only id,rle: pass --meta test.csv for the image sizes and organs")]
    NeedMeta { truth: PathBuf },
    #[error("id `{id}` of {truth} is not in the metadata file {meta}")]
    NoMeta { id: String, truth: PathBuf, meta: PathBuf },
    #[error("{count} id(s) only in {present} and not in {absent}: {}", .ids.join(", "))]
    OneSided {
        present: PathBuf,
        absent: PathBuf,
        count: usize,
        ids: Vec<String>,
    },
    #[error("{path}, id `{id}`: {cause}")]
    Rle { path: PathBuf, id: String, cause: RleError },
}

/// One truth image: its metadata and ground-truth RLE.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthRow {
    pub meta: TestRow,
    pub rle: String,
}

/// Reads the truth from a train.csv, or from an id,rle file with sizes from `meta` (a test.csv).
/// When both carry sizes, `meta` wins.
pub fn read_truth(truth: &Path, meta: Option<&Path>) -> Result<Vec<TruthRow>, ScoreError> {
    let header = schema::read_header(truth)?;
    let is_train = header.iter().any(|h| h == "img_height");
    let pairs: Vec<(Option<TestRow>, SubmissionRow)> = if is_train {
        schema::read_train(truth)?
            .into_iter()
            .map(|r| (Some(r.meta()), SubmissionRow { id: r.id, rle: r.rle }))
            .collect()
    } else {
        schema::read_submission(truth)?.into_iter().map(|r| (None, r)).collect()
    };
    let Some(meta_path) = meta else {
        if !is_train {
            return Err(ScoreError::NeedMeta {
                truth: truth.to_owned(),
            });
        }
        return Ok(pairs
            .into_iter()
            .map(|(m, r)| TruthRow {
                meta: m.expect("train rows carry metadata"),
                rle: r.rle,
            })
            .collect());
    };
    let mut by_id: HashMap<String, TestRow> = schema::read_test(meta_path)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    pairs
        .into_iter()
        .map(|(_, r)| match by_id.remove(&r.id) {
            Some(meta) => Ok(TruthRow { meta, rle: r.rle }),
            None => Err(ScoreError::NoMeta {
                id: r.id,
                truth: truth.to_owned(),
                meta: meta_path.to_owned(),
            }),
        })
        .collect()
}

/// Dice for every truth image against the prediction with the same id. Every id must be on
/// both sides; RLE strings of both sides are validated against the image size.
pub fn score(
    truth: &[TruthRow],
    truth_path: &Path,
    preds: &[SubmissionRow],
    pred_path: &Path,
) -> Result<Scores, ScoreError> {
    let pred_by_id: HashMap<&str, &str> = preds.iter().map(|p| (p.id.as_str(), p.rle.as_str())).collect();
    let truth_ids: HashSet<&str> = truth.iter().map(|t| t.meta.id.as_str()).collect();
    let one_sided = |present: &Path, absent: &Path, ids: Vec<&str>| ScoreError::OneSided {
        present: present.to_owned(),
        absent: absent.to_owned(),
        count: ids.len(),
        ids: ids.iter().take(10).map(|s| s.to_string()).collect(),
    };
    let missing: Vec<&str> = truth
        .iter()
        .map(|t| t.meta.id.as_str())
        .filter(|id| !pred_by_id.contains_key(id))
        .collect();
    if !missing.is_empty() {
        return Err(one_sided(truth_path, pred_path, missing));
    }
    let extra: Vec<&str> = preds
        .iter()
        .map(|p| p.id.as_str())
        .filter(|id| !truth_ids.contains(id))
        .collect();
    if !extra.is_empty() {
        return Err(one_sided(pred_path, truth_path, extra));
    }
    let mut images = Vec::with_capacity(truth.len());
    for t in truth {
        let total = t.meta.img_height as usize * t.meta.img_width as usize;
        let rle_err = |path: &Path| {
            let id = t.meta.id.clone();
            let path = path.to_owned();
            move |cause| ScoreError::Rle { path, id, cause }
        };
        let truth_runs = rle::parse(&t.rle, total).map_err(rle_err(truth_path))?;
        let pred_runs = rle::parse(pred_by_id[t.meta.id.as_str()], total).map_err(rle_err(pred_path))?;
        images.push(ImageScore {
            id: t.meta.id.clone(),
            organ: t.meta.organ,
            dice: dice_runs(&pred_runs, &truth_runs),
        });
    }
    Ok(Scores { images })
}

/// Reads both files and scores them.
pub fn score_files(truth: &Path, pred: &Path, meta: Option<&Path>) -> Result<Scores, ScoreError> {
    let truth_rows = read_truth(truth, meta)?;
    let preds = schema::read_submission(pred)?;
    score(&truth_rows, truth, &preds, pred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::organ::Organ;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const META: &str = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n\
        a,kidney,HPA,4,4,0.4,4\nb,lung,Hubmap,4,4,0.7562,4\nc,kidney,HPA,2,2,0.4,4\n";

    #[test]
    fn truth_against_itself_is_one_and_against_empty_is_zero() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let meta = write(d, "test.csv", META);
        let truth = write(d, "truth.csv", "id,rle\na,1 4\nb,3 6\nc,\n");
        let s = score_files(&truth, &truth, Some(&meta)).unwrap();
        assert_eq!(s.mean(), 1.0);
        let empty = write(d, "empty.csv", "id,rle\nc,\nb,\na,\n");
        let s = score_files(&truth, &empty, Some(&meta)).unwrap();
        let by_id: HashMap<_, _> = s.images.iter().map(|i| (i.id.as_str(), i.dice)).collect();
        assert_eq!(
            (by_id["a"], by_id["b"], by_id["c"]),
            (0.0, 0.0, 1.0),
            "both empty scores 1"
        );
        let per = s.per_organ();
        assert_eq!((per[0].organ, per[0].count, per[0].dice), (Organ::Kidney, 2, 0.5));
    }

    #[test]
    fn sizes_come_from_a_train_file() {
        let dir = tempfile::tempdir().unwrap();
        let truth = write(
            dir.path(),
            "train.csv",
            "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex\n\
            a,spleen,HPA,3,3,0.4,4,1 4,,\n",
        );
        let pred = write(dir.path(), "p.csv", "id,rle\na,3 2\n");
        let s = score_files(&truth, &pred, None).unwrap();
        assert_eq!(s.images[0].dice, 2.0 * 2.0 / 6.0);
        let big = write(dir.path(), "big.csv", "id,rle\na,9 2\n");
        let e = score_files(&truth, &big, None).unwrap_err().to_string();
        assert!(e.contains("big.csv") && e.contains("`a`") && e.contains("past"), "{e}");
    }

    #[test]
    fn one_sided_ids_and_missing_meta_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let meta = write(d, "test.csv", META);
        let truth = write(d, "truth.csv", "id,rle\na,1 4\nb,\n");
        let fewer = write(d, "fewer.csv", "id,rle\na,\n");
        let e = score_files(&truth, &fewer, Some(&meta)).unwrap_err().to_string();
        assert!(
            e.contains("only in") && e.contains("truth.csv") && e.contains('b'),
            "{e}"
        );
        let more = write(d, "more.csv", "id,rle\na,\nb,\nzz,\n");
        let e = score_files(&truth, &more, Some(&meta)).unwrap_err().to_string();
        assert!(
            e.contains("only in") && e.contains("more.csv") && e.contains("zz"),
            "{e}"
        );
        assert!(matches!(
            score_files(&truth, &truth, None),
            Err(ScoreError::NeedMeta { .. })
        ));
        let stranger = write(d, "stranger.csv", "id,rle\nq,\n");
        assert!(matches!(
            score_files(&stranger, &stranger, Some(&meta)),
            Err(ScoreError::NoMeta { .. })
        ));
    }
}
