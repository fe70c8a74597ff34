//! The CSV schemas (train.csv, test.csv, a submission, pseudo.csv): rows read and checked, and
//! what was read written back and read again unchanged.
#![no_main]
use std::fmt::Debug;

use ftu_formats::schema::{read_rows_from, PseudoRow, Record, SubmissionRow, TestRow, TrainRow};
use ftu_fuzz::{audited, budget, name};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;

fn round_trip<T: Record + Serialize + PartialEq + Debug>(bytes: &[u8]) {
    let Ok(rows) = read_rows_from::<T, _>(bytes, name()) else {
        return;
    };
    let mut ids: Vec<&str> = rows.iter().map(Record::id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), rows.len(), "ids are unique");
    for row in &rows {
        assert_eq!(row.check(), Ok(()), "{row:?}");
    }
    if rows.is_empty() {
        return;
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in &rows {
        writer.serialize(row).expect("rows serialise");
    }
    let written = writer.into_inner().expect("in memory");
    let again: Vec<T> = read_rows_from(written.as_slice(), name()).expect("its own rows read back");
    assert_eq!(again, rows);
}

fuzz_target!(|data: &[u8]| {
    let Some((&schema, bytes)) = data.split_first() else {
        return;
    };
    audited(budget(data.len(), 0), || match schema % 4 {
        0 => round_trip::<TrainRow>(bytes),
        1 => round_trip::<TestRow>(bytes),
        2 => round_trip::<SubmissionRow>(bytes),
        _ => round_trip::<PseudoRow>(bytes),
    })
});
