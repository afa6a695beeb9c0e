//! Files and directories only tailpass may read: directories 0700, files 0600.
//!
//! Permissions wider than that are narrowed, with a warning, rather than refused: a restored
//! backup or a `git clone` of the repository's `keys/` directory should not stop the server,
//! but neither should it keep running world-readable.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;

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
}
