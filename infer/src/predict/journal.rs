//! The journal of a `predict` run: one line per finished slide beside the output
//! (`sub.csv` → `sub.journal.csv`), each appended and synced before the next slide starts, so a run that is
//! killed or fails can be resumed with `--continue` and only its unfinished slides are predicted.
//! A line cut short by a kill is not a finished slide. The journal is removed once the output is
//! written.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ftu_formats::atomic::WriteError;
use ftu_formats::schema::TestRow;
use ftu_formats::{DataSource, Organ};
use serde::{Deserialize, Serialize};

/// The first line's start; the run's fingerprint follows it.
const MAGIC: &str = "# ftu-infer predict journal v1, run ";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    #[error(
        "{path} was written by a run with another manifest, models or options; \
         run without --continue to start over (it is then replaced), or remove it"
    )]
    OtherRun { path: PathBuf },
    #[error("{path}, line {line}: {message}; remove the file to start over")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One finished slide as the journal holds it: what the slide was taken to be (a row is reused
/// only for the same metadata) and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    id: String,
    organ: Organ,
    data_source: DataSource,
    pixel_size: f64,
    height: u32,
    width: u32,
    /// The mask's foreground fraction, for the report.
    fraction: f64,
    rle: String,
}

impl Line {
    fn matches(&self, row: &TestRow) -> bool {
        (self.organ, self.data_source, self.height, self.width)
            == (row.organ, row.data_source, row.img_height, row.img_width)
            && self.pixel_size.to_bits() == row.pixel_size.to_bits()
    }
}

/// A finished slide's line: where it is in the file.
#[derive(Debug, Clone)]
struct Entry {
    line: Line,
    offset: u64,
}

/// An open journal: the slides finished (by earlier runs when continuing, and by this one).
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
    /// Where the next line goes (the end of the last complete line).
    end: u64,
}

/// `dir/sub.csv` → `dir/sub.journal.csv`.
pub fn path_for(out: &Path) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("submission");
    out.with_file_name(format!("{stem}.journal.csv"))
}

/// The slides an earlier run's journal at `path` finished, by id, for `fingerprint`'s run, or
/// none when there is no journal. Used before the engine loads, to read only the other slides.
pub fn finished(path: &Path, fingerprint: &str) -> Result<HashMap<String, TestRowKey>, JournalError> {
    let Some((text, _)) = read_complete(path)? else {
        return Ok(HashMap::new());
    };
    let (entries, _) = parse(path, &text, Some(fingerprint))?;
    Ok(entries.into_iter().map(|(id, e)| (id, TestRowKey(e.line))).collect())
}

/// What a journal line says a slide was; [`TestRowKey::matches`] a row of this run.
#[derive(Debug, Clone)]
pub struct TestRowKey(Line);

impl TestRowKey {
    pub fn matches(&self, row: &TestRow) -> bool {
        self.0.matches(row)
    }
}

impl Journal {
    /// Opens the journal beside `out` for the run `fingerprint` names. Continuing, the finished
    /// slides of an earlier run are kept (a journal of another run is an error) and a line cut
    /// short is dropped; otherwise any journal there is replaced by an empty one. The second
    /// value is how many finished slides a replaced journal held.
    pub fn open(out: &Path, fingerprint: &str, resume: bool) -> Result<(Journal, usize), JournalError> {
        let path = path_for(out);
        let io_err = |cause| JournalError::Io {
            path: path.clone(),
            cause,
        };
        // The output's folder may not exist yet (pseudo-labels go into a folder of their own).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let previous = read_complete(&path)?;
        let (entries, end, replaced) = match previous {
            Some((text, _)) if resume => {
                let (entries, end) = parse(&path, &text, Some(fingerprint))?;
                (entries, end, 0)
            }
            other => {
                let replaced = other
                    .and_then(|(text, _)| parse(&path, &text, None).ok())
                    .map_or(0, |(e, _)| e.len());
                let header = format!("{MAGIC}{fingerprint}\n");
                let mut f = File::create(&path).map_err(io_err)?;
                f.write_all(header.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io_err)?;
                (HashMap::new(), header.len() as u64, replaced)
            }
        };
        let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err)?;
        // A line a kill cut short goes: the next one starts where the last whole one ended.
        file.set_len(end)
            .and_then(|()| file.seek(SeekFrom::Start(end)).map(drop))
            .map_err(io_err)?;
        Ok((
            Journal {
                path,
                file,
                entries,
                end,
            },
            replaced,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finished slides in the journal.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The foreground fraction of `row`'s slide when the journal holds it finished with the same
    /// metadata (organ, source, pixel size, size).
    pub fn finished(&self, row: &TestRow) -> Option<f64> {
        self.entries
            .get(&row.id)
            .filter(|e| e.line.matches(row))
            .map(|e| e.line.fraction)
    }

    /// Records `row`'s slide as finished with this mask; on disk (synced) when this returns.
    pub fn append(&mut self, row: &TestRow, fraction: f64, rle: String) -> Result<(), WriteError> {
        let line = Line {
            id: row.id.clone(),
            organ: row.organ,
            data_source: row.data_source,
            pixel_size: row.pixel_size,
            height: row.img_height,
            width: row.img_width,
            fraction,
            rle,
        };
        let bytes = encode(&line);
        let write_err = |cause| WriteError {
            path: self.path.clone(),
            cause,
        };
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(write_err)?;
        self.entries.insert(row.id.clone(), Entry { line, offset: self.end });
        self.end += bytes.len() as u64;
        Ok(())
    }

    /// The RLE the journal holds for `id` (read back from the file: whole-slide masks are not
    /// kept in memory).
    pub fn rle(&mut self, id: &str) -> Result<Option<String>, JournalError> {
        let Some(offset) = self.entries.get(id).map(|e| e.offset) else {
            return Ok(None);
        };
        let path = self.path.clone();
        let io_err = |cause| JournalError::Io {
            path: path.clone(),
            cause,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(io::BufReader::new(&mut self.file));
        let line: Line = reader
            .deserialize()
            .next()
            .ok_or_else(|| io_err(io::ErrorKind::UnexpectedEof.into()))?
            .map_err(|e| JournalError::Corrupt {
                path: path.clone(),
                line: 0,
                message: e.to_string(),
            })?;
        drop(reader);
        self.file.seek(SeekFrom::Start(self.end)).map_err(io_err)?;
        Ok(Some(line.rle))
    }

    /// Removes the journal file when it holds no finished slide.
    pub fn discard_if_empty(&mut self) {
        if self.entries.is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Removes the journal: the output it led to is written.
    pub fn remove(self) -> Result<(), WriteError> {
        drop(self.file);
        std::fs::remove_file(&self.path).map_err(|cause| WriteError { path: self.path, cause })
    }
}

fn encode(line: &Line) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    w.serialize(line).expect("a journal line serialises");
    w.into_inner().expect("writing to memory")
}

/// The journal's text up to its last complete line, or `None` when there is no journal.
fn read_complete(path: &Path) -> Result<Option<(String, u64)>, JournalError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(|cause| JournalError::Io {
            path: path.to_path_buf(),
            cause,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                cause,
            })
        }
    };
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(end);
    let text = String::from_utf8(bytes).map_err(|_| JournalError::Corrupt {
        path: path.to_path_buf(),
        line: 0,
        message: "not UTF-8 text".into(),
    })?;
    Ok(Some((text, end as u64)))
}

/// The entries of a journal's complete text written for `fingerprint` (any run's when `None`), and
/// where its text ends.
fn parse(path: &Path, text: &str, fingerprint: Option<&str>) -> Result<(HashMap<String, Entry>, u64), JournalError> {
    let Some(header_end) = text.find('\n') else {
        // Killed before its header was whole: an empty journal of any run.
        return Ok((HashMap::new(), 0));
    };
    let Some(written_for) = text[..header_end].strip_prefix(MAGIC) else {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            line: 1,
            message: "not a journal of ftu-infer predict".into(),
        });
    };
    if fingerprint.is_some_and(|f| f != written_for) {
        return Err(JournalError::OtherRun {
            path: path.to_path_buf(),
        });
    }
    let body = &text[header_end + 1..];
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(body.as_bytes());
    let mut entries = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        let offset = header_end as u64 + 1 + reader.position().byte();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line: Line = record.deserialize(None).map_err(|e| JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: record.position().map_or(0, |p| p.line() as usize + 1),
                    message: e.to_string(),
                })?;
                entries.insert(line.id.clone(), Entry { line, offset });
            }
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: e.position().map_or(0, |p| p.line() as usize + 1),
                    message: e.to_string(),
                })
            }
        }
    }
    Ok((entries, text.len() as u64))
}

/// FNV-1a over `parts`: a run's fingerprint, stable across builds and platforms.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, pixel_size: f64) -> TestRow {
        TestRow {
            id: id.into(),
            organ: Organ::Kidney,
            data_source: DataSource::Hpa,
            img_height: 10,
            img_width: 20,
            pixel_size,
            tissue_thickness: 4.0,
        }
    }

    #[test]
    fn finished_slides_survive_a_torn_last_line_and_are_reused_for_the_same_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub.csv");
        let (mut j, _) = Journal::open(&out, "run-a", false).unwrap();
        j.append(&row("1", 0.4), 0.25, "1 3".into()).unwrap();
        j.append(&row("2", 0.4), 0.0, String::new()).unwrap();
        drop(j);
        // A kill in the middle of the third line.
        let path = path_for(&out);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"3,kidney,HPA,0.4,10,20,0.5,\"4 ").unwrap();
        drop(f);

        let (mut j, replaced) = Journal::open(&out, "run-a", true).unwrap();
        assert_eq!((j.len(), replaced), (2, 0));
        assert_eq!(j.finished(&row("1", 0.4)), Some(0.25));
        assert_eq!(j.finished(&row("1", 0.5)), None, "another pixel size is another slide");
        assert_eq!(
            j.finished(&row("3", 0.4)),
            None,
            "the torn line is not a finished slide"
        );
        j.append(&row("3", 0.4), 0.5, "4 2".into()).unwrap();
        assert_eq!(j.rle("1").unwrap().as_deref(), Some("1 3"));
        assert_eq!(j.rle("3").unwrap().as_deref(), Some("4 2"));
        assert_eq!(j.rle("2").unwrap().as_deref(), Some(""));
        assert_eq!(j.rle("9").unwrap(), None);
        drop(j);
        assert_eq!(finished(&path, "run-a").unwrap().len(), 3);

        let err = Journal::open(&out, "run-b", true).err().unwrap().to_string();
        assert!(
            err.contains("sub.journal.csv") && err.contains("another manifest"),
            "{err}"
        );
        // Starting over replaces it, saying how many finished slides it held.
        let (j, replaced) = Journal::open(&out, "run-b", false).unwrap();
        assert_eq!((j.len(), replaced), (0, 3));
        j.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn fingerprints_tell_parts_apart() {
        assert_eq!(fingerprint([&b"ab"[..], b"c"]), fingerprint([&b"ab"[..], b"c"]));
        assert_ne!(fingerprint([&b"ab"[..], b"c"]), fingerprint([&b"a"[..], b"bc"]));
    }
}
