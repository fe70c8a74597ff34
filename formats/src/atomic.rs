//! Output files are written beside their target as `name.tmp`, then renamed, so a crash or a bad
//! input never leaves a half-written submission or image behind.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {cause}")]
pub struct WriteError {
    pub path: PathBuf,
    pub cause: io::Error,
}

/// `dir/name.ext` → `dir/name.ext.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes through `body` into a temp file beside `path` and renames it over `path` on success;
/// on failure the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> Result<(), WriteError> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        body(&mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|cause| {
        let _ = std::fs::remove_file(&tmp);
        WriteError {
            path: path.to_owned(),
            cause,
        }
    })
}

/// A file written as a stream, atomically: bytes go to the temp file beside `path`, and
/// [`AtomicFile::commit`] renames it over `path`; dropped without a commit (an error, a panic)
/// the temp file is removed and `path` is untouched. For outputs produced piece by piece that
/// should not be held in memory (a submission of thousands of rows).
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile, WriteError> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(|cause| WriteError {
            path: path.to_owned(),
            cause,
        })?;
        Ok(AtomicFile {
            path: path.to_owned(),
            tmp,
            file: Some(BufWriter::new(file)),
        })
    }

    /// The file it will become.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the temp file over the path.
    pub fn commit(mut self) -> Result<(), WriteError> {
        let file = self.file.take().expect("committed once");
        let result = (|| {
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)
        })();
        result.map_err(|cause| WriteError {
            path: self.path.clone(),
            cause,
        })
    }
}

impl io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_file_appears_whole_on_commit_and_not_at_all_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub.csv");
        std::fs::write(&path, "old").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new ").unwrap();
        f.write_all(b"rows").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old", "not before the commit");
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new rows");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new rows");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub.csv");
        write_atomic(&path, |w| w.write_all(b"old")).unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("sub.csv") && err.to_string().contains("boom"));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!tmp_path(&path).exists());
    }
}
