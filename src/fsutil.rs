//! File-system helpers for crash-safe saving.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Atomically puts the complete directory `src` at `dst`, replacing any existing `dst`.
///
/// On Linux an existing `dst` is swapped with `src` in one `renameat2(RENAME_EXCHANGE)` call,
/// so at every instant `dst` names either the whole old or the whole new directory; the old
/// one is then deleted. Elsewhere (or on file systems without the exchange flag) the old
/// directory is first renamed aside, which leaves a short window where `dst` is absent but the
/// old copy is still whole under a fresh hidden name beside it.
pub fn replace_dir(src: &Path, dst: &Path) -> Result<()> {
    if !dst.exists() {
        return std::fs::rename(src, dst).map_err(|e| Error::io(dst, e));
    }
    if exchange(src, dst).is_ok() {
        // `src` now holds the old directory.
        let _ = std::fs::remove_dir_all(src);
        return Ok(());
    }
    let aside = fresh_sibling_path(dst, "old");
    std::fs::rename(dst, &aside).map_err(|e| Error::io(dst, e))?;
    if let Err(e) = std::fs::rename(src, dst) {
        let _ = std::fs::rename(&aside, dst);
        return Err(Error::io(dst, e));
    }
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

/// A name beside `path` that nothing uses yet: `.<name>.<tag>-<pid>-<n>`.
fn fresh_sibling_path(path: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let candidate = parent.join(format!(".{base}.{tag}-{}-{n}", std::process::id()));
        if std::fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
    }
}

/// Writes `bytes` to a new file at `path` and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Replaces the file `path` with `bytes` atomically: they are written and synced to a fresh
/// hidden file beside it, which is then renamed over `path`, so a reader (or a crash) sees the
/// whole old file or the whole new one. The temporary file is removed on failure.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = fresh_sibling_path(path, "tmp");
    let written = write_synced(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates a new, empty directory beside `path` (for a save to fill before it replaces
/// `path`). Never reuses or deletes anything already there.
pub fn fresh_sibling_dir(path: &Path, tag: &str) -> Result<PathBuf> {
    loop {
        let dir = fresh_sibling_path(path, tag);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no atomic exchange"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_write_replaces_whole_and_leaves_nothing_behind() {
        let root = std::env::temp_dir().join(format!("rk-fsutil-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let f = root.join("config.json");
        std::fs::write(&f, "old").unwrap();
        write_file_atomic(&f, b"new").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        // A rename onto a directory fails: the temporary file is removed, the target kept.
        let d = root.join("dir");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keep"), "x").unwrap();
        assert!(write_file_atomic(&d, b"y").is_err());
        let mut names: Vec<_> =
            std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["config.json", "dir"]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn replaces_existing_directory() {
        let root = std::env::temp_dir().join(format!("rk-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (src, dst) = (root.join("new"), root.join("ckpt"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("f"), "new").unwrap();
        std::fs::write(dst.join("f"), "old").unwrap();
        replace_dir(&src, &dst).unwrap();
        assert_eq!(std::fs::read_to_string(dst.join("f")).unwrap(), "new");
        assert!(!src.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
