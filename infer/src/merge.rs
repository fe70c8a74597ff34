//! `ftu-infer merge`: shard submissions from an array job put back together in test.csv's order.
//! Every id must come from exactly one shard; a missing, doubled or unknown id is an error, so
//! a lost shard never yields a short submission.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ftu_formats::schema::{self, CsvError, SubmissionRow};

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error("id {id} is in both {first} and {second}")]
    Duplicate {
        id: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{path} has id {id}, which {test} does not list")]
    Unknown { id: String, path: PathBuf, test: PathBuf },
    #[error("{count} ids of {test} are in no shard (first: {}); did a shard fail?", .missing.join(", "))]
    Missing {
        count: usize,
        missing: Vec<String>,
        test: PathBuf,
    },
}

/// The shards' rows in the order of `test_csv`.
pub fn merge(test_csv: &Path, shards: &[PathBuf]) -> Result<Vec<SubmissionRow>, MergeError> {
    let test = schema::read_test(test_csv)?;
    let mut found: HashMap<String, (SubmissionRow, usize)> = HashMap::new();
    for (k, path) in shards.iter().enumerate() {
        for row in schema::read_submission(path)? {
            if !test.iter().any(|t| t.id == row.id) {
                return Err(MergeError::Unknown {
                    id: row.id,
                    path: path.clone(),
                    test: test_csv.to_owned(),
                });
            }
            if let Some((_, first)) = found.get(&row.id) {
                return Err(MergeError::Duplicate {
                    id: row.id,
                    first: shards[*first].clone(),
                    second: path.clone(),
                });
            }
            found.insert(row.id.clone(), (row, k));
        }
    }
    let missing: Vec<String> = test
        .iter()
        .filter(|t| !found.contains_key(&t.id))
        .map(|t| t.id.clone())
        .collect();
    if !missing.is_empty() {
        return Err(MergeError::Missing {
            count: missing.len(),
            missing: missing.into_iter().take(5).collect(),
            test: test_csv.to_owned(),
        });
    }
    Ok(test
        .iter()
        .map(|t| found.remove(&t.id).expect("checked above").0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn shards_merge_in_test_order_and_gaps_or_doubles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let test = write(
            d,
            "test.csv",
            "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n\
             7,kidney,HPA,10,10,0.4,4\n3,lung,HPA,10,10,0.4,4\n5,spleen,HPA,10,10,0.4,4\n",
        );
        let a = write(d, "a.csv", "id,rle\n7,1 2\n5,\n");
        let b = write(d, "b.csv", "id,rle\n3,4 5\n");
        let rows = merge(&test, &[b.clone(), a.clone()]).unwrap();
        let ids: Vec<_> = rows.iter().map(|r| (r.id.as_str(), r.rle.as_str())).collect();
        assert_eq!(ids, [("7", "1 2"), ("3", "4 5"), ("5", "")]);
        let err = merge(&test, std::slice::from_ref(&a)).unwrap_err().to_string();
        assert!(err.contains("1 ids") && err.contains("first: 3"), "{err}");
        let err = merge(&test, &[a.clone(), b.clone(), a.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("id 7 is in both"), "{err}");
        let c = write(d, "c.csv", "id,rle\n9,1 1\n");
        let err = merge(&test, &[a, b, c]).unwrap_err().to_string();
        assert!(err.contains("id 9"), "{err}");
    }
}
