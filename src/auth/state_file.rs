//! Crash-safe state file I/O (SPEC §6): write a temporary file in the same
//! directory, fsync it, rename it over the old one, fsync the directory. A
//! crash at any moment leaves the old or the new file, never a torn one.

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

/// Atomically replaces `path` with `contents`.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
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
}
