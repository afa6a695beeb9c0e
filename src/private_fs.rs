//! Files and directories only tailpass may read: directories 0700, files 0600.
//!
//! Permissions wider than that are narrowed, with a warning, rather than refused: a restored
//! backup or a `git clone` of the repository's `keys/` directory should not stop the server,
//! but neither should it keep running world-readable.

use std::fs::{self, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates `path` (and parents) with mode 0700 if missing; narrows it to 0700 if wider.
pub fn ensure_dir(path: &Path) -> io::Result<()> {
    if !path.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
    }
    tighten(path, 0o700)
}

/// Narrows `path`'s permissions to `mode` if they are wider.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::warn!(
            path = %path.display(),
            from = format_args!("{current:o}"),
            to = format_args!("{mode:o}"),
            "narrowing permissions"
        );
        fs::set_permissions(path, Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Replaces `dir/name` with `bytes` (mode 0600) through a temporary file of a name no other
/// writer uses and a rename, so that readers, and writers racing for the same file, see a
/// whole file, never a mix. Not synced: for files that need not survive a crash (a cache).
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{nanos}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_and_narrows() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o640)).unwrap();
        tighten(&file, 0o600).unwrap();
        assert_eq!(mode(&file), 0o600);
        // Narrower than asked is left alone.
        fs::set_permissions(&file, Permissions::from_mode(0o400)).unwrap();
        tighten(&file, 0o600).unwrap();
        assert_eq!(mode(&file), 0o400);
    }

    #[test]
    fn replace_writes_a_private_whole_file_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        replace(tmp.path(), "f", b"one").unwrap();
        replace(tmp.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(tmp.path().join("f")).unwrap(), b"two");
        assert_eq!(mode(&tmp.path().join("f")), 0o600);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
        assert!(replace(&tmp.path().join("missing"), "f", b"x").is_err());
    }
}
