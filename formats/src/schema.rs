//! The competition's CSV files (train.csv, test.csv, submissions), read into typed rows and
//! validated at the boundary: every error names the file and line.

use crate::atomic::{write_atomic, WriteError};
use crate::organ::{DataSource, Organ};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Declares a row type of a slide CSV: `id` and the slide's metadata columns (test.csv's: organ,
/// data source, size, pixel size, thickness), written here once, then the type's own columns.
/// The fields are plain, so rows are built and read field by field, and serde sees them in the
/// order the file's columns take (no `flatten`, which would send csv through a map and lose the
/// numeric parsing and the column in errors).
macro_rules! slide_row {
    ($(#[$attr:meta])* pub struct $name:ident { $(pub $field:ident: $ty:ty,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            pub id: String,
            pub organ: Organ,
            pub data_source: DataSource,
            pub img_height: u32,
            pub img_width: u32,
            pub pixel_size: f64,
            pub tissue_thickness: f64,
            $(pub $field: $ty,)*
        }

        impl $name {
            /// The metadata columns' checks, which serde cannot express.
            fn check_meta(&self) -> Result<(), String> {
                check_meta(self.img_height, self.img_width, self.pixel_size, self.tissue_thickness)
            }
        }
    };
}

/// A `$row` with `$meta`'s id and metadata columns, and the given values for its own.
macro_rules! with_meta {
    ($row:ident, $meta:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let meta = $meta;
        $row {
            id: meta.id.clone(),
            organ: meta.organ,
            data_source: meta.data_source,
            img_height: meta.img_height,
            img_width: meta.img_width,
            pixel_size: meta.pixel_size,
            tissue_thickness: meta.tissue_thickness,
            $($field: $value,)*
        }
    }};
}

/// The required columns of a slide CSV: `id`, the metadata columns, then `$extra`.
macro_rules! slide_columns {
    ($($extra:literal),*) => {
        &[
            "id",
            "organ",
            "data_source",
            "img_height",
            "img_width",
            "pixel_size",
            "tissue_thickness",
            $($extra,)*
        ]
    };
}

slide_row! {
    /// What ftu knows about a slide before predicting: the columns of test.csv.
    pub struct TestRow {}
}

slide_row! {
    /// A row of train.csv: the slide's metadata, its ground-truth RLE and the donor's age and sex.
    pub struct TrainRow {
        pub rle: String,
        pub age: Option<f64>,
        pub sex: Option<String>,
    }
}

/// A row of a submission (or of a truth file in the same shape): id and RLE, empty for no mask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionRow {
    pub id: String,
    pub rle: String,
}

slide_row! {
    /// A row of pseudo.csv (written by `ftu-infer pseudo`): an unlabelled slide's metadata, its
    /// image, and its soft label, an 8-bit probability image (round(p·255)) at the slide's size.
    /// Relative paths are relative to the CSV's folder.
    pub struct PseudoRow {
        pub image: PathBuf,
        pub label: PathBuf,
    }
}

impl PseudoRow {
    pub fn new(meta: &TestRow, image: PathBuf, label: PathBuf) -> PseudoRow {
        with_meta!(PseudoRow, meta, { image: image, label: label })
    }

    /// The slide as a train.csv row without a mask (its label is the soft one).
    pub fn as_train_row(&self) -> TrainRow {
        with_meta!(TrainRow, self, { rle: String::new(), age: None, sex: None })
    }
}

impl TrainRow {
    pub fn meta(&self) -> TestRow {
        with_meta!(TestRow, self, {})
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read {path}: {cause}")]
    Open { path: PathBuf, cause: csv::Error },
    #[error("{path}: missing column `{column}` (the header has: {header})")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        header: String,
    },
    #[error("{path} line {line}: {message}")]
    Row { path: PathBuf, line: u64, message: String },
    #[error("{path} line {line}: duplicate id `{id}` (first on line {first_line})")]
    DuplicateId {
        path: PathBuf,
        line: u64,
        id: String,
        first_line: u64,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A CSV row type: its required columns and the checks serde cannot express.
pub trait Record: DeserializeOwned {
    const COLUMNS: &'static [&'static str];
    fn id(&self) -> &str;
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

fn check_meta(height: u32, width: u32, pixel_size: f64, thickness: f64) -> Result<(), String> {
    if height == 0 || width == 0 {
        return Err(format!(
            "img_height and img_width must be positive, got {height}×{width}"
        ));
    }
    if !(pixel_size.is_finite() && pixel_size > 0.0) {
        return Err(format!("pixel_size must be a positive number, got {pixel_size}"));
    }
    if !(thickness.is_finite() && thickness >= 0.0) {
        return Err(format!(
            "tissue_thickness must be a non-negative number, got {thickness}"
        ));
    }
    Ok(())
}

impl Record for TestRow {
    const COLUMNS: &'static [&'static str] = slide_columns!();
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self) -> Result<(), String> {
        self.check_meta()
    }
}

impl Record for TrainRow {
    const COLUMNS: &'static [&'static str] = slide_columns!("rle");
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self) -> Result<(), String> {
        self.check_meta()?;
        let total = self.img_height as usize * self.img_width as usize;
        crate::mask::rle::parse(&self.rle, total)
            .map(drop)
            .map_err(|e| format!("rle: {e}"))
    }
}

impl Record for PseudoRow {
    const COLUMNS: &'static [&'static str] = slide_columns!("image", "label");
    fn id(&self) -> &str {
        &self.id
    }
    fn check(&self) -> Result<(), String> {
        self.check_meta()
    }
}

impl Record for SubmissionRow {
    const COLUMNS: &'static [&'static str] = &["id", "rle"];
    fn id(&self) -> &str {
        &self.id
    }
}

/// Reads every row of a CSV file, checking columns, each row's values and id uniqueness.
pub fn read_rows<T: Record>(path: &Path) -> Result<Vec<T>, CsvError> {
    let file = std::fs::File::open(path).map_err(|e| CsvError::Open {
        path: path.to_owned(),
        cause: e.into(),
    })?;
    read_rows_from(io::BufReader::new(file), path)
}

/// [`read_rows`] over any reader (bytes in memory, a pipe); `path` names it in errors.
pub fn read_rows_from<T: Record, R: io::Read>(input: R, path: &Path) -> Result<Vec<T>, CsvError> {
    let open_err = |cause| CsvError::Open {
        path: path.to_owned(),
        cause,
    };
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(input);
    let header = reader.headers().map_err(open_err)?.clone();
    for &column in T::COLUMNS {
        if !header.iter().any(|h| h == column) {
            let header = header.iter().collect::<Vec<_>>().join(",");
            return Err(CsvError::MissingColumn {
                path: path.to_owned(),
                column,
                header,
            });
        }
    }
    let mut rows = Vec::new();
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        let row_err = |message: String| CsvError::Row {
            path: path.to_owned(),
            line,
            message,
        };
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(row_err(csv_message(&e, &header))),
        }
        let row: T = record
            .deserialize(Some(&header))
            .map_err(|e| row_err(csv_message(&e, &header)))?;
        row.check().map_err(row_err)?;
        if let Some(&first_line) = first_line.get(row.id()) {
            return Err(CsvError::DuplicateId {
                path: path.to_owned(),
                line,
                id: row.id().to_string(),
                first_line,
            });
        }
        first_line.insert(row.id().to_string(), line);
        rows.push(row);
    }
    Ok(rows)
}

fn deserialize_message(e: &csv::DeserializeError, header: &csv::StringRecord) -> String {
    match e.field().and_then(|i| header.get(i as usize)) {
        Some(column) => format!("column `{column}`: {}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn csv_message(e: &csv::Error, header: &csv::StringRecord) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => deserialize_message(err, header),
        csv::ErrorKind::UnequalLengths { len, expected_len, .. } => {
            format!("{len} fields, expected {expected_len} as in the header")
        }
        _ => e.to_string(),
    }
}

/// Names the columns of a CSV file, for callers that accept more than one schema.
pub fn read_header(path: &Path) -> Result<Vec<String>, CsvError> {
    let open_err = |cause| CsvError::Open {
        path: path.to_owned(),
        cause,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(open_err)?;
    Ok(reader.headers().map_err(open_err)?.iter().map(str::to_string).collect())
}

/// Writes rows with a header, atomically (temp file, then rename).
pub fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), CsvError> {
    write_atomic(path, |w| {
        let mut writer = csv::Writer::from_writer(w);
        for row in rows {
            writer.serialize(row).map_err(io::Error::other)?;
        }
        writer.flush()
    })?;
    Ok(())
}

pub fn read_train(path: &Path) -> Result<Vec<TrainRow>, CsvError> {
    read_rows(path)
}

pub fn read_test(path: &Path) -> Result<Vec<TestRow>, CsvError> {
    read_rows(path)
}

pub fn read_submission(path: &Path) -> Result<Vec<SubmissionRow>, CsvError> {
    read_rows(path)
}

/// Reads a pseudo.csv; relative `image` and `label` paths come back joined to its folder.
pub fn read_pseudo(path: &Path) -> Result<Vec<PseudoRow>, CsvError> {
    let base = path.parent().unwrap_or(Path::new(""));
    let mut rows: Vec<PseudoRow> = read_rows(path)?;
    for r in &mut rows {
        r.image = base.join(&r.image);
        r.label = base.join(&r.label);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAIN_HEAD: &str = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex\n";

    /// The rows of `slide_rows_write_their_columns_…` as written: the column order and value
    /// formats of the competition's files.
    const TEST_CSV: &str = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n\
        10044,prostate,Hubmap,3000,2999,0.4,4.0\n";
    const TRAIN_CSV: &str = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,rle,age,sex\n\
        7,lung,HPA,10,12,0.7562,5.0,1 2 10 3,76.5,Male\n\
        10044,prostate,Hubmap,3000,2999,0.4,4.0,,,\n";
    const PSEUDO_CSV: &str = "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness,image,label\n\
        10044,prostate,Hubmap,3000,2999,0.4,4.0,img/10044.tiff,lab/10044.png\n";

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_a_kaggle_train_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            &dir,
            "train.csv",
            &format!(
                "{TRAIN_HEAD}10044,prostate,HPA,3000,3000,0.4,4,1 2 10 3,76.0,Male\n1168,lung,HPA,3000,3000,0.4,4,,,\n"
            ),
        );
        let rows = read_train(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].organ, Organ::Prostate);
        assert_eq!(rows[0].age, Some(76.0));
        assert_eq!(rows[1].rle, "");
        assert_eq!(rows[1].sex, None);
        assert_eq!(rows[0].meta().img_width, 3000);
    }

    #[test]
    fn bad_rows_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let bad_organ = file(
            &dir,
            "a.csv",
            &format!("{TRAIN_HEAD}1,kidney,HPA,3,3,0.4,4,,,\n2,heart,HPA,3,3,0.4,4,,,\n"),
        );
        let e = read_train(&bad_organ).unwrap_err().to_string();
        assert!(
            e.contains("a.csv line 3") && e.contains("organ") && e.contains("`heart`"),
            "{e}"
        );

        let bad_size = file(&dir, "b.csv", &format!("{TRAIN_HEAD}1,kidney,HPA,big,3,0.4,4,,,\n"));
        let e = read_train(&bad_size).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("img_height"), "{e}");

        let zero = file(&dir, "c.csv", &format!("{TRAIN_HEAD}1,kidney,HPA,0,3,0.4,4,,,\n"));
        assert!(read_train(&zero).unwrap_err().to_string().contains("must be positive"));

        let bad_rle = file(&dir, "d.csv", &format!("{TRAIN_HEAD}1,kidney,HPA,3,3,0.4,4,5 9,,\n"));
        let e = read_train(&bad_rle).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("rle") && e.contains("past"), "{e}");

        let dup = file(&dir, "e.csv", "id,rle\n7,\n8,1 1\n7,2 1\n");
        let e = read_submission(&dup).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("`7`") && e.contains("line 2"), "{e}");

        let missing = file(&dir, "f.csv", "id,organ\n1,kidney\n");
        let e = read_test(&missing).unwrap_err().to_string();
        assert!(e.contains("missing column `data_source`"), "{e}");

        let ragged = file(&dir, "g.csv", "id,rle\n1,1 1,extra\n");
        let e = read_submission(&ragged).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("3 fields"), "{e}");

        let bad_source = file(
            &dir,
            "h.csv",
            "id,organ,data_source,img_height,img_width,pixel_size,tissue_thickness\n1,kidney,GTEx,3,3,0.4,4\n",
        );
        assert!(read_test(&bad_source).unwrap_err().to_string().contains("`GTEx`"));
        assert!(read_test(&dir.path().join("none.csv"))
            .unwrap_err()
            .to_string()
            .contains("none.csv"));
    }

    #[test]
    fn submission_round_trips_with_empty_rle() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("submission.csv");
        let rows = vec![
            SubmissionRow {
                id: "1".into(),
                rle: "1 5 9 2".into(),
            },
            SubmissionRow {
                id: "2".into(),
                rle: String::new(),
            },
        ];
        write_rows(&p, &rows).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "id,rle\n1,1 5 9 2\n2,\n");
        assert_eq!(read_submission(&p).unwrap(), rows);
    }

    #[test]
    fn slide_rows_write_their_columns_in_file_order_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let test = TestRow {
            id: "10044".into(),
            organ: Organ::Prostate,
            data_source: DataSource::Hubmap,
            img_height: 3000,
            img_width: 2999,
            pixel_size: 0.4,
            tissue_thickness: 4.0,
        };
        let train = TrainRow {
            id: "7".into(),
            organ: Organ::Lung,
            data_source: DataSource::Hpa,
            img_height: 10,
            img_width: 12,
            pixel_size: 0.7562,
            tissue_thickness: 5.0,
            rle: "1 2 10 3".into(),
            age: Some(76.5),
            sex: Some("Male".into()),
        };
        let pseudo = PseudoRow::new(&test, "img/10044.tiff".into(), "lab/10044.png".into());
        let p = dir.path().join("test.csv");
        write_rows(&p, std::slice::from_ref(&test)).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), TEST_CSV);
        assert_eq!(read_test(&p).unwrap(), [test.clone()]);
        let p = dir.path().join("train.csv");
        write_rows(&p, &[train.clone(), pseudo.as_train_row()]).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), TRAIN_CSV);
        assert_eq!(read_train(&p).unwrap(), [train.clone(), pseudo.as_train_row()]);
        assert_eq!(train.meta().img_width, 12);
        let p = dir.path().join("pseudo.csv");
        write_rows(&p, std::slice::from_ref(&pseudo)).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), PSEUDO_CSV);
        assert_eq!(read_rows::<PseudoRow>(&p).unwrap(), [pseudo]);
    }
}
