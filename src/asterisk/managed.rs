//! The one file asterisk-gitops owns on the Asterisk side: the managed pjsip
//! file, included from the operator's pjsip.conf.
//!
//! Architecture invariant: writes are atomic (a temporary file in the same
//! directory, fsync, rename, fsync of the directory), and the file being
//! replaced is kept as `<file>.previous` for rollback. A reader — Asterisk —
//! sees the old file or the new one, never a mix, even if the daemon is
//! killed mid-write.
//!
//! The managed file can hold passwords (`passwordEnv`, `passwordFile`,
//! `password`): it, its `.previous` and every temporary are created 0640
//! (owner read-write, group read, nobody else), in the configured group so
//! that Asterisk can read them, before a byte is written.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The managed file's mode: the daemon writes, the group (Asterisk) reads.
pub const MANAGED_FILE_MODE: u32 = 0o640;

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// fsynced and renamed over the target; the file is created 0640 in the
/// daemon's own group.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_as(path, bytes, MANAGED_FILE_MODE, None)
}

/// [`write_atomic`] with the file's mode and group (`None`: the daemon's).
/// The temporary file has that mode and group from its creation on, so
/// the content is never readable by anyone else, not even for a moment.
pub fn write_atomic_as(path: &Path, bytes: &[u8], mode: u32, group: Option<u32>) -> std::io::Result<()> {
    write_atomic_synced(path, bytes, mode, group, true)
}

/// [`write_atomic_as`]; with `durable` false the bytes and the rename are
/// not flushed to the disk before it returns: a crash leaves the old file
/// or the new one (the rename is atomic), though after a power cut the new
/// one may be lost. For the ari target's record, rewritten on every change
/// (6 MB at 10k extensions, whose flush took 40–200 ms on a loaded
/// machine), which the next run can always rebuild by pushing again.
pub fn write_atomic_synced(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    group: Option<u32>,
    durable: bool,
) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "output".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // A temporary a killed writer left behind (same pid after a reboot) goes first.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        if group.is_some() {
            std::os::unix::fs::fchown(&f, None, group)?;
        }
        // The umask may have taken bits away; never adds any.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)?;
        if durable && let Ok(d) = std::fs::File::open(&dir) {
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

/// A group name or a numeric gid, as a gid (`config` resolves `managedFileGroup`).
pub use crate::config::{GroupError, group_id};

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
    /// The group the file is written in (`None`: the daemon's).
    group: Option<u32>,
}

impl ManagedFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ManagedFile { path: path.into(), group: None }
    }

    /// Writes the file (and `.previous`) in this group, mode 0640.
    pub fn with_group(mut self, gid: Option<u32>) -> Self {
        self.group = gid;
        self
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic_as(path, bytes, MANAGED_FILE_MODE, self.group)
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
            self.write_file(&self.previous_path(), current.as_bytes())?;
        }
        self.write_file(&self.path, text.as_bytes())
    }

    /// Puts `.previous` back in place. Returns false when there is none (the
    /// managed file did not exist before the last write), in which case the
    /// file is emptied of sections rather than left with the rejected config.
    pub fn restore_previous(&self) -> std::io::Result<bool> {
        match read_optional(&self.previous_path())? {
            Some(previous) => {
                self.write_file(&self.path, previous.as_bytes())?;
                Ok(true)
            }
            None => {
                self.write_file(&self.path, b"; Managed by asterisk-gitops: nothing applied yet.\n")?;
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

/// The reconciler's port for the file it writes.
impl crate::reconcile::ConfigFile for ManagedFile {
    fn path(&self) -> &Path {
        ManagedFile::path(self)
    }
    fn read(&self) -> std::io::Result<Option<String>> {
        ManagedFile::read(self)
    }
    fn write(&self, text: &str) -> std::io::Result<()> {
        ManagedFile::write(self, text)
    }
    fn restore_previous(&self) -> std::io::Result<bool> {
        ManagedFile::restore_previous(self)
    }
    fn replace(&self, text: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(parent_dir(&self.path))?;
        write_atomic_synced(&self.path, text.as_bytes(), MANAGED_FILE_MODE, self.group, false)
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
    fn the_file_and_its_previous_are_0640_in_the_configured_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let gid = std::fs::metadata(dir.path()).expect("stat").gid();
        let m = ManagedFile::new(dir.path().join("pjsip_gitops.conf")).with_group(Some(gid));
        m.write("password = one\n").expect("write");
        m.write("password = two\n").expect("write");
        for p in [m.path().to_path_buf(), m.previous_path()] {
            let meta = std::fs::metadata(&p).expect("stat");
            assert_eq!(meta.mode() & 0o777, 0o640, "{}", p.display());
            assert_eq!(meta.gid(), gid, "{}", p.display());
        }
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        assert_eq!(group_id("0").ok(), Some(0));
        assert_eq!(group_id("root").ok(), Some(0));
        assert!(group_id("no-such-group-here").expect_err("unknown").to_string().contains("no-such-group-here"));
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
