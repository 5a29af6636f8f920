//! Where checkpoints, adapters and the fingerprint cache live: a directory (the app's files
//! directory; keys are plain names, so nothing is written outside it) or memory.

use std::sync::Arc;

use adaptkit::runtime::{FileStore, MemoryStore, Store};

use crate::error::AdaptError;
use crate::worker::guarded;

#[derive(uniffi::Object)]
pub struct Storage {
    pub(crate) store: Arc<dyn Store>,
}

#[uniffi::export]
impl Storage {
    /// Blobs as files in `path` (created when first written).
    #[uniffi::constructor]
    pub fn directory(path: String) -> Result<Arc<Self>, AdaptError> {
        if path.is_empty() {
            return Err(AdaptError::InvalidArgument("storage directory: the path is empty".into()));
        }
        Ok(Arc::new(Self { store: Arc::new(FileStore::new(path)) }))
    }

    /// Blobs in memory, gone with the object.
    #[uniffi::constructor]
    pub fn memory() -> Arc<Self> {
        Arc::new(Self { store: Arc::new(MemoryStore::new()) })
    }

    pub fn read(&self, key: String) -> Result<Option<Vec<u8>>, AdaptError> {
        guarded(|| Ok(self.store.read(&key)?))
    }

    /// Writes `bytes` under `key`, whole or not at all.
    pub fn write(&self, key: String, bytes: Vec<u8>) -> Result<(), AdaptError> {
        guarded(|| Ok(self.store.write(&key, &bytes)?))
    }

    pub fn remove(&self, key: String) -> Result<(), AdaptError> {
        guarded(|| Ok(self.store.remove(&key)?))
    }

    pub fn exists(&self, key: String) -> Result<bool, AdaptError> {
        guarded(|| Ok(self.store.exists(&key)?))
    }

    /// Where `key` lives, for messages (a path, or `memory:key`).
    pub fn locate(&self, key: String) -> String {
        self.store.locate(&key)
    }
}
