//! Patch and update bytes, content-addressed by SHA-256: on local disk by default
//! (`<dir>/sha256/ab/abcd…`, each written to a temporary file, synced and renamed, so a blob
//! is whole or absent), or in any S3-compatible object store (`s3://bucket/prefix`, credentials
//! and endpoint from the usual `AWS_*` variables). The database names blobs by digest, so
//! several server processes share one store; a blob read back is checked against its digest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use sha2::{Digest, Sha256};

#[derive(Clone)]
pub enum Blobs {
    Local(PathBuf),
    S3 { store: Arc<dyn ObjectStore>, prefix: String },
}

pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Blobs {
    /// `s3://bucket[/prefix]` or a directory (created if missing).
    pub fn open(spec: &str) -> Result<Self, String> {
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("--blobs {spec}: no bucket"));
            }
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| format!("--blobs {spec}: {e}"))?;
            return Ok(Self::S3 { store: Arc::new(store), prefix: prefix.trim_matches('/').to_string() });
        }
        let dir = PathBuf::from(spec);
        std::fs::create_dir_all(&dir).map_err(|e| format!("--blobs {spec}: {e}"))?;
        Ok(Self::Local(dir))
    }

    fn local_path(dir: &Path, digest: &str) -> PathBuf {
        dir.join("sha256").join(&digest[..2]).join(digest)
    }

    fn object_path(prefix: &str, digest: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(format!("sha256/{digest}"))
        } else {
            ObjectPath::from(format!("{prefix}/sha256/{digest}"))
        }
    }

    /// Stores `bytes` under their digest (which is returned); storing the same bytes again is
    /// a no-op.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<String, String> {
        let digest = digest(&bytes);
        match self {
            Self::Local(dir) => {
                let path = Self::local_path(dir, &digest);
                tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("writing blob {digest}: {e}"))?;
            }
            Self::S3 { store, prefix } => {
                store
                    .put(&Self::object_path(prefix, &digest), PutPayload::from(bytes))
                    .await
                    .map_err(|e| format!("storing blob {digest}: {e}"))?;
            }
        }
        Ok(digest)
    }

    /// The blob's bytes; `None` when there is none. A blob whose bytes do not match its digest
    /// is an error (a damaged disk or a tampered store).
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        let bytes = match self {
            Self::Local(dir) => match tokio::fs::read(Self::local_path(dir, digest)).await {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("reading blob {digest}: {e}")),
            },
            Self::S3 { store, prefix } => match store.get(&Self::object_path(prefix, digest)).await {
                Ok(r) => r.bytes().await.map_err(|e| format!("reading blob {digest}: {e}"))?.to_vec(),
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(format!("reading blob {digest}: {e}")),
            },
        };
        if self::digest(&bytes) != digest {
            return Err(format!("blob {digest} does not match its digest"));
        }
        Ok(Some(bytes))
    }

    pub async fn delete(&self, digest: &str) -> Result<(), String> {
        match self {
            Self::Local(dir) => match tokio::fs::remove_file(Self::local_path(dir, digest)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("deleting blob {digest}: {e}"))
                }
                _ => Ok(()),
            },
            Self::S3 { store, prefix } => match store.delete(&Self::object_path(prefix, digest)).await {
                Err(e) if !matches!(e, object_store::Error::NotFound { .. }) => {
                    Err(format!("deleting blob {digest}: {e}"))
                }
                _ => Ok(()),
            },
        }
    }
}

/// Writes `path` whole or not at all, durably (core's temp file, sync, rename, directory
/// sync). An existing file (the same content) is left alone.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("blob paths have a directory"))?;
    adaptkit::format::write_atomic(path, |w| w.write_all(bytes))
}
