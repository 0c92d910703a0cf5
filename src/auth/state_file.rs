//! Crash-safe state file I/O (SPEC §6): write a temporary file in the same
//! directory, fsync it, rename it over the old one, fsync the directory. A
//! crash at any moment leaves the old or the new file, never a torn one.
//! The temporary file has a random name and is created exclusively without
//! following symlinks, so nothing planted in the directory is written
//! through.

use super::sessions::Sessions;
use std::io::Write;
use std::path::Path;

/// Reads the state file: `Ok(None)` when it does not exist yet; an error
/// (naming the problem) when it exists but cannot be read or parsed. The
/// file is never modified here.
pub fn load(path: &Path) -> Result<Option<Sessions>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Sessions::from_json(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot be read: {}", e.kind())),
    }
}

/// 16 random hex digits: the temp file's name cannot be guessed in
/// advance, so nobody can plant something there.
fn random_suffix() -> std::io::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|_| std::io::Error::other("no randomness from the OS"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Creates `tmp` exclusively (never an existing file, never through a
/// symlink: `O_EXCL`, and `O_NOFOLLOW` on Linux), mode 0600, and writes and
/// syncs `contents`.
fn write_new(tmp: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    #[cfg(target_os = "linux")]
    let no_follow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    #[cfg(not(target_os = "linux"))]
    let no_follow = 0;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(no_follow)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Atomically replaces `path` with `contents`.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", random_suffix()?));
    let written = write_new(&tmp, contents);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec6_atomic_write_and_load() {
        let dir = std::env::temp_dir().join(format!("tessera-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        assert_eq!(load(&p).unwrap(), None);
        let mut s = Sessions::default();
        s.login("a", 0, 60, 100, [1; 16], [2; 32]);
        write_atomic(&p, s.to_json().as_bytes()).unwrap();
        assert_eq!(load(&p).unwrap(), Some(s));
        std::fs::write(&p, "garbage").unwrap();
        assert!(load(&p).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "garbage");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_temp_file_is_created_exclusively_and_never_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("tessera-state-excl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_new(&link, b"x").is_err(), "a symlink is not followed");
        assert!(write_new(&victim, b"x").is_err(), "an existing file is not reused");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let a = random_suffix().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_suffix().unwrap());
        write_atomic(&dir.join("state.json"), b"{}").unwrap();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok).collect();
        assert_eq!(left.len(), 3, "no temp file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
