//! What identifies a base model: its architecture and shapes, a SHA-256 of its weights and one
//! of its vocabulary, and the Frobenius norm of every projection (so a patch can tell, without
//! the old base at hand, how far a new base moved). Hashing a model reads all of it, so the
//! result is cached on disk, keyed by the file's path, size and modification time.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::format::gguf::GgufFile;
use crate::format::patch_file::hex;
use crate::format::safetensors::SafetensorsFile;
use crate::model::{Llama, Projection};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 over everything below: equal ids mean the same model.
    pub id: String,
    pub architecture: String,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// SHA-256 of every weight tensor's name, type, shape and bytes, in name order.
    pub weights_sha256: String,
    /// SHA-256 of the vocabulary (every token's text, in id order).
    pub tokenizer_sha256: String,
    /// `‖W‖_F` of each projection, `[layer][q, k, v, o, gate, up, down]`.
    pub projection_norms: Vec<[f32; 7]>,
}

impl Fingerprint {
    /// Fingerprints the model in `source` (a GGUF file or a Hugging Face directory), loaded as
    /// `model` with `tokenizer` (`None` for a model without one: its vocabulary hash is that of
    /// an empty vocabulary).
    pub fn compute(source: &Path, model: &Llama, tokenizer: Option<&Tokenizer>) -> Result<Self, Error> {
        let config = model.config();
        let weights_sha256 = hex(&weights_digest(source)?);
        let mut vocab = Sha256::new();
        let vocab_size = tokenizer.map_or(0, |t| t.vocab_size() as u32);
        for id in 0..vocab_size {
            let text = tokenizer.and_then(|t| t.token_text(id)).unwrap_or_default();
            vocab.update((text.len() as u64).to_le_bytes());
            vocab.update(text.as_bytes());
        }
        let projection_norms = model
            .blocks()
            .iter()
            .map(|block| {
                Projection::ALL.map(|p| {
                    let w = block.linear(p).weight().dequantize();
                    w.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32
                })
            })
            .collect();
        let mut fingerprint = Self {
            id: String::new(),
            architecture: config.architecture.clone(),
            layers: config.n_layers,
            d_model: config.d_model,
            heads: config.n_heads,
            kv_heads: config.n_kv_heads,
            ffn_dim: config.ffn_dim,
            vocab_size: config.vocab_size,
            weights_sha256,
            tokenizer_sha256: hex(&vocab.finalize()),
            projection_norms,
        };
        fingerprint.id = hex(&Sha256::digest(serde_json::to_vec(&fingerprint).unwrap_or_default()));
        Ok(fingerprint)
    }

    /// The first 12 hex digits of the id, for messages.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// Whether a patch made for `self` has the shapes and vocabulary of `other` (so it can be
    /// ported there, though the weights differ).
    pub fn same_shapes(&self, other: &Self) -> Result<(), String> {
        let mine = (&self.architecture, self.layers, self.d_model, self.heads, self.kv_heads, self.ffn_dim);
        let theirs =
            (&other.architecture, other.layers, other.d_model, other.heads, other.kv_heads, other.ffn_dim);
        if mine != theirs {
            return Err(format!(
                "the architecture differs: {} with {} layers, d_model {}, {} heads ({} kv), ffn {} vs {} with {} layers, d_model {}, {} heads ({} kv), ffn {}",
                mine.0, mine.1, mine.2, mine.3, mine.4, mine.5, theirs.0, theirs.1, theirs.2, theirs.3, theirs.4, theirs.5
            ));
        }
        if (self.vocab_size, &self.tokenizer_sha256) != (other.vocab_size, &other.tokenizer_sha256) {
            return Err("the tokenizer differs (token ids would mean other things)".into());
        }
        Ok(())
    }
}

/// SHA-256 of the weights in `source`, tensor by tensor in name order.
fn weights_digest(source: &Path) -> Result<[u8; 32], Error> {
    let mut hasher = Sha256::new();
    let mut add = |name: &str, ty: &str, shape: &[u64], bytes: &[u8]| {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(ty.as_bytes());
        for d in shape {
            hasher.update(d.to_le_bytes());
        }
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    if source.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(source)
            .map_err(|e| Error::Io { path: source.to_path_buf(), source: e })?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        for file in files {
            let st = SafetensorsFile::open(&file)?;
            let mut tensors: Vec<_> = st.tensors().iter().collect();
            tensors.sort_by(|a, b| a.name.cmp(&b.name));
            for t in tensors {
                let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
                add(&t.name, &format!("{:?}", t.dtype), &shape, &st.tensor_data(&t.name)?);
            }
        }
    } else {
        let gguf = GgufFile::open(source)?;
        let mut tensors: Vec<_> = gguf.tensors().iter().collect();
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for t in tensors {
            add(&t.name, t.ty.name(), &t.dims, &gguf.tensor_data(t));
        }
    }
    Ok(hasher.finalize().into())
}

/// Fingerprints already computed, one small JSON file each in a directory, valid while the
/// model file keeps its size and modification time.
pub struct FingerprintCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    source: String,
    size: u64,
    modified_ns: u128,
    fingerprint: Fingerprint,
}

impl FingerprintCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The fingerprint of `source`, from the cache when it is still valid; computed (with
    /// `model` and `tokenizer`, which must be `source` loaded) and stored otherwise. A cache that
    /// cannot be written is skipped, not an error.
    pub fn get(
        &self,
        source: &Path,
        model: &Llama,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Fingerprint, Error> {
        let canonical =
            source.canonicalize().map_err(|e| Error::Io { path: source.to_path_buf(), source: e })?;
        let (size, modified_ns) = stamp(&canonical);
        let key = hex(&Sha256::digest(canonical.to_string_lossy().as_bytes()));
        let file = self.dir.join(format!("{}.json", &key[..32]));
        if let Some(entry) = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok())
            .filter(|e| (e.size, e.modified_ns) == (size, modified_ns))
        {
            return Ok(entry.fingerprint);
        }
        let fingerprint = Fingerprint::compute(&canonical, model, tokenizer)?;
        let entry = CacheEntry {
            source: canonical.display().to_string(),
            size,
            modified_ns,
            fingerprint: fingerprint.clone(),
        };
        if std::fs::create_dir_all(&self.dir).is_ok() {
            let text = serde_json::to_vec(&entry).unwrap_or_default();
            // Best effort: a read-only cache only costs a recomputation next time.
            let _ = crate::format::write_atomic(&file, |w| w.write_all(&text));
        }
        Ok(fingerprint)
    }
}

/// Size and modification time of a file, or of the newest file in a directory.
fn stamp(path: &Path) -> (u64, u128) {
    let of = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            let modified = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
            (m.len(), modified.map_or(0, |d| d.as_nanos()))
        })
    };
    if path.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().and_then(|e| of(&e.path())))
            .fold((0, 0), |(size, newest), (s, m)| (size + s, newest.max(m)))
    } else {
        of(path).unwrap_or((0, 0))
    }
}
