//! Output files are written beside their target as a temp file, then renamed, so a crash or a bad
//! input never leaves a half-written submission or image behind. Each writer's temp file has a
//! name of its own (`name.PID.N.tmp`), so processes that write the same file at once (fold jobs
//! of one run on a shared filesystem) never write into each other's.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {cause}")]
pub struct WriteError {
    pub path: PathBuf,
    pub cause: io::Error,
}

/// `dir/name.ext` → `dir/name.ext.tmp`: the temp name of an output only one process writes.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// `dir/name.ext` → `dir/name.ext.PID.N.tmp`, unique to this process and call.
pub fn unique_tmp_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Whether `name` is a temp file of [`write_atomic`], [`AtomicFile`] or [`tmp_path`].
pub fn is_tmp_name(name: &str) -> bool {
    name.ends_with(".tmp")
}

/// Writes `bytes` to `path` only if nothing is there yet, atomically even against other
/// processes doing the same (a temp file hard-linked to `path`, which fails when `path` exists):
/// `Ok(true)` when this call created it, `Ok(false)` when the file was already there (untouched).
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<bool, WriteError> {
    let tmp = unique_tmp_path(path);
    let error = |cause| WriteError {
        path: path.to_owned(),
        cause,
    };
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(cause) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(error(cause));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(cause) => Err(error(cause)),
    }
}

/// Writes through `body` into a temp file beside `path` and renames it over `path` on success;
/// on failure the temp file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, body: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> Result<(), WriteError> {
    let tmp = unique_tmp_path(path);
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
        let tmp = unique_tmp_path(path);
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
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    /// Writers of one file at once (threads here; processes on a shared filesystem alike) each
    /// write through a temp file of their own: every write lands whole, none fails.
    #[test]
    fn concurrent_writers_of_one_file_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::thread::scope(|s| {
            for i in 0..8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, |w| w.write_all(format!("writer {i}\n").repeat(100).as_bytes())).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap().to_string();
        assert!(
            text.lines().all(|l| l == first) && text.lines().count() == 100,
            "one writer's whole file"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn create_new_writes_once_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let created: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || create_new(path, format!("writer {i}").as_bytes()).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            created.iter().filter(|&&c| c).count(),
            1,
            "exactly one writer creates it"
        );
        let winner = created.iter().position(|&c| c).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("writer {winner}"));
        assert!(!create_new(&path, b"later").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }
}
