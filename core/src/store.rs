//! Where the runtime keeps what it writes (training checkpoints, adapters, the fingerprint
//! cache): a store of byte blobs under relative keys (`checkpoint.safetensors`,
//! `fingerprints/ab12….json`), chosen by the caller. [`FileStore`] is a directory, the native
//! default, whose writes are atomic (temp file, fsync, rename: a crash leaves the old blob or
//! the new one, never half of one). [`MemoryStore`] keeps everything in memory and works where
//! there is no file system (wasm32), or for tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Error;

pub trait Store: Send + Sync {
    /// The blob under `key`; `None` when there is none.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Replaces the blob under `key`, all at once.
    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), Error>;
    /// Removes the blob under `key`, if any.
    fn remove(&self, key: &str) -> Result<(), Error>;
    /// Where `key` lives, for messages (a path for a [`FileStore`]).
    fn locate(&self, key: &str) -> String;

    fn exists(&self, key: &str) -> Result<bool, Error> {
        Ok(self.read(key)?.is_some())
    }

    /// Removes what writes cut short by a crash left behind (a [`FileStore`]'s temp files at
    /// its top level); a run that owns the store calls it as it starts.
    fn sweep(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Refuses keys that could leave the store: empty, absolute, or with empty, `.` or `..`
/// components, backslashes or NUL bytes. Components are separated by `/`.
pub fn check_key(key: &str) -> Result<(), Error> {
    let bad = key.is_empty()
        || key.contains(['\\', '\0'])
        || key.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Error::option(
            "key",
            key,
            "a store key is a relative path of plain names separated by '/'",
        ));
    }
    Ok(())
}

/// A directory: key `a/b.json` is the file `ROOT/a/b.json`.
#[derive(Clone, Debug)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, Error> {
        check_key(key)?;
        Ok(key.split('/').fold(self.root.clone(), |path, part| path.join(part)))
    }
}

impl Store for FileStore {
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        crate::format::write_atomic(&path, |w| w.write_all(bytes))
            .map_err(|source| Error::Io { path, source })
    }

    fn remove(&self, key: &str) -> Result<(), Error> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    fn locate(&self, key: &str) -> String {
        self.path(key).map_or_else(|_| key.to_string(), |p| p.display().to_string())
    }

    fn sweep(&self) -> Result<(), Error> {
        let entries = match std::fs::read_dir(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other.map_err(|source| Error::Io { path: self.root.clone(), source })?,
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(crate::format::is_atomic_temp) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|source| Error::Io { path, source })?;
            }
        }
        Ok(())
    }
}

/// Blobs in memory, shared by clones of a handle to it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    blobs: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key, in order.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A writer cannot leave a half-changed map behind: inserts and removes are single calls.
        self.blobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        check_key(key)?;
        Ok(self.lock().get(key).cloned())
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        check_key(key)?;
        self.lock().insert(key.to_string(), bytes.to_vec());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), Error> {
        check_key(key)?;
        self.lock().remove(key);
        Ok(())
    }

    fn locate(&self, key: &str) -> String {
        format!("memory:{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(store: &dyn Store) {
        assert_eq!(store.read("a/b.json").unwrap(), None);
        store.write("a/b.json", b"one").unwrap();
        store.write("a/b.json", b"two").unwrap();
        assert_eq!(store.read("a/b.json").unwrap().as_deref(), Some(&b"two"[..]));
        assert!(store.exists("a/b.json").unwrap());
        store.remove("a/b.json").unwrap();
        store.remove("a/b.json").unwrap();
        assert_eq!(store.read("a/b.json").unwrap(), None);
        for key in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b"] {
            let err = store.write(key, b"x").unwrap_err();
            assert!(matches!(&err, Error::InvalidOption { field, .. } if field == "key"), "{key}: {err}");
        }
    }

    #[test]
    fn stores_keep_blobs_under_safe_keys() {
        round_trip(&MemoryStore::new());
        let dir = std::env::temp_dir().join(format!("adaptkit-store-{}", std::process::id()));
        round_trip(&FileStore::new(&dir));
        // Only the directories the keys made are left: no temp files.
        assert_eq!(std::fs::read_dir(dir.join("a")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sweep_removes_the_temp_files_of_interrupted_writes_only() {
        let dir = std::env::temp_dir().join(format!("adaptkit-sweep-{}", std::process::id()));
        let store = FileStore::new(&dir);
        store.sweep().unwrap(); // no directory yet
        store.write("checkpoint.safetensors", b"good").unwrap();
        let kept = [".keep", "notes.tmp", ".x.tmp", ".a.b.tmp", "checkpoint.safetensors"];
        for name in
            [".checkpoint.safetensors.0.tmp", ".adapter_model.safetensors.12.tmp"].iter().chain(&kept[..4])
        {
            std::fs::write(dir.join(name), b"half").unwrap();
        }
        store.sweep().unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut kept = kept.map(String::from).to_vec();
        kept.sort();
        assert_eq!(left, kept);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
