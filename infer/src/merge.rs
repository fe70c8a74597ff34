//! `ftu-infer merge`: shard outputs from an array job put back together: `predict --shard i/N`
//! submissions in test.csv's order, or `predict --slides` shards (`id,organ,…,rle`) in the order
//! of a given id list or by id. Every id must come from exactly one shard; against a list, a
//! missing, doubled or unknown id is an error, so a lost shard never yields a short output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ftu_formats::schema::{self, CsvError, Record, SubmissionRow};

use crate::slides::SlideResultRow;

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
    #[error("{path} has id {id}, which {list} does not list")]
    Unknown { id: String, path: PathBuf, list: PathBuf },
    #[error("{count} ids of {list} are in no shard (first: {}); did a shard fail?", .missing.join(", "))]
    Missing {
        count: usize,
        missing: Vec<String>,
        list: PathBuf,
    },
    #[error(
        "{first} is {} but {second} is {}; merge shards of one kind",
        kind_name(*.first_slides),
        kind_name(!*.first_slides)
    )]
    Mixed {
        first: PathBuf,
        first_slides: bool,
        second: PathBuf,
    },
    #[error("{path}: {message}")]
    Ids { path: PathBuf, message: String },
}

fn kind_name(slides: bool) -> &'static str {
    match slides {
        true => "a --slides output (id,organ,pixel_size,height,width,rle)",
        false => "a submission (id,rle)",
    }
}

impl Record for SlideResultRow {
    const COLUMNS: &'static [&'static str] = &["id", "organ", "pixel_size", "height", "width", "rle"];
    fn id(&self) -> &str {
        &self.id
    }
}

/// The order of the merged rows.
#[derive(Debug, Clone, Copy)]
pub enum Order<'a> {
    /// A test.csv's: every id it lists, each once.
    Test(&'a Path),
    /// A CSV's `id` column (a list of ids under the header `id`, or any CSV with one): every id
    /// it lists, each once.
    Ids(&'a Path),
    /// The shards' own ids, sorted (numerically when both are whole numbers).
    ById,
}

/// Merged rows, of the shards' kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    Submission(Vec<SubmissionRow>),
    Slides(Vec<SlideResultRow>),
}

impl Merged {
    pub fn len(&self) -> usize {
        match self {
            Merged::Submission(r) => r.len(),
            Merged::Slides(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the rows as CSV (temp file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), CsvError> {
        match self {
            Merged::Submission(r) => schema::write_rows(path, r),
            Merged::Slides(r) => schema::write_rows(path, r),
        }
    }
}

/// The shards' rows in test.csv's order (shards of `predict --data`).
pub fn merge(test_csv: &Path, shards: &[PathBuf]) -> Result<Vec<SubmissionRow>, MergeError> {
    merge_rows(Order::Test(test_csv), shards)
}

/// The shards' rows in `order`; shards written by `predict --slides` keep their columns.
pub fn merge_any(order: Order, shards: &[PathBuf]) -> Result<Merged, MergeError> {
    let mut kind: Option<(bool, &PathBuf)> = None;
    for path in shards {
        let slides = is_slides_output(path)?;
        match kind {
            None => kind = Some((slides, path)),
            Some((first_slides, first)) if first_slides != slides => {
                return Err(MergeError::Mixed {
                    first: first.clone(),
                    first_slides,
                    second: path.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(match kind {
        Some((true, _)) => Merged::Slides(merge_rows(order, shards)?),
        _ => Merged::Submission(merge_rows(order, shards)?),
    })
}

/// Whether a shard's header is that of `predict --slides` output.
fn is_slides_output(path: &Path) -> Result<bool, MergeError> {
    let mut reader = csv::Reader::from_path(path).map_err(|cause| CsvError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    let header = reader.headers().map_err(|cause| CsvError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(header.iter().any(|h| h.trim() == "organ"))
}

fn merge_rows<T: Record>(order: Order, shards: &[PathBuf]) -> Result<Vec<T>, MergeError> {
    let mut found: HashMap<String, (T, usize)> = HashMap::new();
    for (k, path) in shards.iter().enumerate() {
        for row in schema::read_rows::<T>(path)? {
            if let Some((_, first)) = found.get(row.id()) {
                return Err(MergeError::Duplicate {
                    id: row.id().to_string(),
                    first: shards[*first].clone(),
                    second: path.clone(),
                });
            }
            found.insert(row.id().to_string(), (row, k));
        }
    }
    let (ids, list) = match order {
        Order::Test(path) => (
            schema::read_test(path)?.into_iter().map(|t| t.id).collect::<Vec<_>>(),
            path,
        ),
        Order::Ids(path) => (read_ids(path)?, path),
        Order::ById => {
            let mut ids: Vec<String> = found.keys().cloned().collect();
            ids.sort_by(|a, b| id_order(a, b));
            return Ok(ids.iter().map(|id| found.remove(id).expect("an id found").0).collect());
        }
    };
    let listed: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    if let Some((id, (_, k))) = found.iter().find(|(id, _)| !listed.contains(id.as_str())) {
        return Err(MergeError::Unknown {
            id: id.clone(),
            path: shards[*k].clone(),
            list: list.to_owned(),
        });
    }
    let missing: Vec<String> = ids.iter().filter(|id| !found.contains_key(*id)).cloned().collect();
    if !missing.is_empty() {
        return Err(MergeError::Missing {
            count: missing.len(),
            missing: missing.into_iter().take(5).collect(),
            list: list.to_owned(),
        });
    }
    Ok(ids
        .iter()
        .map(|id| found.remove(id).expect("checked above").0)
        .collect())
}

/// Numbers as numbers (`9` before `10`), then anything else by its text.
fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// The `id` column of a CSV, in order; an id listed twice is an error.
fn read_ids(path: &Path) -> Result<Vec<String>, MergeError> {
    let err = |message: String| MergeError::Ids {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .map_err(|e| err(e.to_string()))?;
    let header = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let Some(at) = header.iter().position(|h| h == "id") else {
        return Err(err(format!(
            "expected a column `id` (the header has: {})",
            header.iter().collect::<Vec<_>>().join(",")
        )));
    };
    let mut ids = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| err(e.to_string()))?;
        let Some(id) = record.get(at).filter(|id| !id.is_empty()) else {
            return Err(err(format!("line {}: no id", i + 2)));
        };
        if !seen.insert(id.to_string()) {
            return Err(err(format!("line {}: id {id} is listed twice", i + 2)));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftu_formats::Organ;

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

    #[test]
    fn slides_shards_merge_by_id_or_by_a_list_keeping_their_columns() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let head = "id,organ,pixel_size,height,width,rle\n";
        let a = write(
            d,
            "a.csv",
            &format!("{head}10,lung,0.5,4,4,1 2\nscan-b,kidney,0.25,4,4,\n"),
        );
        let b = write(d, "b.csv", &format!("{head}9,spleen,0.5,4,4,3 1\n"));
        let Merged::Slides(rows) = merge_any(Order::ById, &[a.clone(), b.clone()]).unwrap() else {
            panic!("slides shards give slides rows")
        };
        let got: Vec<(&str, Organ, &str)> = rows.iter().map(|r| (r.id.as_str(), r.organ, r.rle.as_str())).collect();
        assert_eq!(
            got,
            [
                ("9", Organ::Spleen, "3 1"),
                ("10", Organ::Lung, "1 2"),
                ("scan-b", Organ::Kidney, "")
            ]
        );

        let ids = write(d, "ids.csv", "id\nscan-b\n9\n10\n");
        let merged = merge_any(Order::Ids(&ids), &[b.clone(), a.clone()]).unwrap();
        let Merged::Slides(rows) = &merged else { panic!() };
        let order: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(order, ["scan-b", "9", "10"]);
        let out = d.join("merged.csv");
        merged.write(&out).unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().starts_with(head));

        let short = write(d, "short.csv", "id\n9\n10\n");
        let err = merge_any(Order::Ids(&short), &[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("id scan-b") && err.contains("short.csv"), "{err}");
        let long = write(d, "long.csv", "id\n9\n10\nscan-b\n11\n");
        let err = merge_any(Order::Ids(&long), &[a.clone(), b.clone()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 ids of") && err.contains("first: 11"), "{err}");
        let sub = write(d, "sub.csv", "id,rle\n7,1 1\n");
        let err = merge_any(Order::ById, &[a, sub]).unwrap_err().to_string();
        assert!(err.contains("sub.csv is a submission"), "{err}");
    }
}
