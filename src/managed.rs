//! The one file asterisk-gitops owns on the Asterisk side: the managed pjsip
//! file, included from the operator's pjsip.conf.
//!
//! Architecture invariant: writes are atomic (a temporary file in the same
//! directory, fsync, rename, fsync of the directory), and the file being
//! replaced is kept as `<file>.previous` for rollback. A reader — Asterisk —
//! sees the old file or the new one, never a mix, even if the daemon is
//! killed mid-write.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsynced and renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Makes the rename itself durable; not every file system allows it.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The managed file and its rollback copy.
#[derive(Clone, Debug)]
pub struct ManagedFile {
    path: PathBuf,
}

impl ManagedFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ManagedFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<file>.previous`: what the last write replaced.
    pub fn previous_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".previous");
        PathBuf::from(p)
    }

    /// The file's content; `None` if it does not exist yet.
    pub fn read(&self) -> std::io::Result<Option<String>> {
        read_optional(&self.path)
    }

    /// Replaces the file with `text`, keeping what it held as `.previous`.
    /// Creates the directory if needed.
    pub fn write(&self, text: &str) -> std::io::Result<()> {
        let dir = parent_dir(&self.path);
        std::fs::create_dir_all(&dir)?;
        if let Some(current) = self.read()? {
            write_atomic(&self.previous_path(), current.as_bytes())?;
        }
        write_atomic(&self.path, text.as_bytes())
    }

    /// Puts `.previous` back in place. Returns false when there is none (the
    /// managed file did not exist before the last write), in which case the
    /// file is emptied of sections rather than left with the rejected config.
    pub fn restore_previous(&self) -> std::io::Result<bool> {
        match read_optional(&self.previous_path())? {
            Some(previous) => {
                write_atomic(&self.path, previous.as_bytes())?;
                Ok(true)
            }
            None => {
                write_atomic(&self.path, b"; Managed by asterisk-gitops: nothing applied yet.\n")?;
                Ok(false)
            }
        }
    }

    /// Removes temporary files a killed writer left behind (`.<name>.tmp.<pid>`).
    pub fn remove_stale_temporaries(&self) -> std::io::Result<usize> {
        let dir = parent_dir(&self.path);
        let Some(name) = self.path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Ok(0) };
        let prefixes = [format!(".{name}.tmp."), format!(".{name}.previous.tmp.")];
        let mut removed = 0;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| file.starts_with(p.as_str())) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_keeps_the_previous_file_and_restore_puts_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ManagedFile::new(dir.path().join("sub/pjsip_gitops.conf"));
        assert_eq!(m.read().expect("read"), None);
        m.write("one\n").expect("write");
        m.write("two\n").expect("write");
        assert_eq!(m.read().expect("read").as_deref(), Some("two\n"));
        assert_eq!(std::fs::read_to_string(m.previous_path()).expect("previous"), "one\n");
        assert!(m.restore_previous().expect("restore"));
        assert_eq!(m.read().expect("read").as_deref(), Some("one\n"));
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ManagedFile::new(dir.path().join("pjsip_gitops.conf"));
        std::fs::write(dir.path().join(".pjsip_gitops.conf.tmp.4242"), "half").expect("write");
        std::fs::write(dir.path().join("unrelated.tmp.1"), "keep").expect("write");
        assert_eq!(m.remove_stale_temporaries().expect("clean"), 1);
        assert!(dir.path().join("unrelated.tmp.1").exists());
    }
}
