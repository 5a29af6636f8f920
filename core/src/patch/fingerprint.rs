//! What identifies a base model: its architecture and shapes, a SHA-256 of its weights and one
//! of its vocabulary, and the Frobenius norm of every projection (so a patch can tell, without
//! the old base at hand, how far a new base moved). It is computed from the bytes the engine
//! loaded, never by reading the file again. Hashing a model reads all of it, so the result can
//! be cached in a [`Store`], keyed by the loaded files' stamps (path, size, modification and
//! change times, inode) and a sample of their tensor bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, ModelFiles};
use crate::error::Error;
use crate::format::patch_file::hex;
use crate::format::FileStamp;
use crate::model::{Decoder, Projection};
use crate::store::Store;
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
    /// Only when it is not `d_model / heads` (so that fingerprints of other models, and the
    /// patches made for them before this field existed, keep their ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
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
    /// Fingerprints the model `engine` loaded.
    pub fn of(engine: &Engine) -> Result<Self, Error> {
        Self::compute(engine.files(), engine.model(), Some(engine.tokenizer()))
    }

    /// Fingerprints the model read from `files` and loaded as `model` with `tokenizer` (`None`
    /// for a model without one: its vocabulary hash is that of an empty vocabulary).
    pub fn compute(
        files: &ModelFiles,
        model: &Decoder,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Self, Error> {
        let config = model.config();
        let weights_sha256 = hex(&weights_digest(files)?);
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
            head_dim: (config.n_heads * config.head_dim != config.d_model).then_some(config.head_dim),
            ffn_dim: config.ffn_dim,
            vocab_size: config.vocab_size,
            weights_sha256,
            tokenizer_sha256: hex(&vocab.finalize()),
            projection_norms,
        };
        fingerprint.id = hex(&Sha256::digest(serde_json::to_vec(&fingerprint).unwrap_or_default()));
        Ok(fingerprint)
    }

    /// The dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.d_model / self.heads.max(1))
    }

    /// `(out, in)` of a projection's weight in a model of these shapes.
    pub fn projection_shape(&self, projection: Projection) -> (usize, usize) {
        let (d, attention, kv) =
            (self.d_model, self.heads * self.head_dim(), self.kv_heads * self.head_dim());
        match projection {
            Projection::Q => (attention, d),
            Projection::K | Projection::V => (kv, d),
            Projection::O => (d, attention),
            Projection::Gate | Projection::Up => (self.ffn_dim, d),
            Projection::Down => (d, self.ffn_dim),
        }
    }

    /// The first 12 hex digits of the id, for messages.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// Whether a patch made for `self` has the shapes and vocabulary of `other` (so it can be
    /// ported there, though the weights differ).
    pub fn same_shapes(&self, other: &Self) -> Result<(), String> {
        let shape = |f: &Self| {
            (f.architecture.clone(), f.layers, f.d_model, f.heads, f.kv_heads, f.head_dim(), f.ffn_dim)
        };
        let describe = |f: &Self| {
            format!(
                "{} with {} layers, d_model {}, {} heads ({} kv) of {}, ffn {}",
                f.architecture,
                f.layers,
                f.d_model,
                f.heads,
                f.kv_heads,
                f.head_dim(),
                f.ffn_dim
            )
        };
        if shape(self) != shape(other) {
            return Err(format!("the architecture differs: {} vs {}", describe(self), describe(other)));
        }
        if (self.vocab_size, &self.tokenizer_sha256) != (other.vocab_size, &other.tokenizer_sha256) {
            return Err("the tokenizer differs (token ids would mean other things)".into());
        }
        Ok(())
    }
}

/// What [`for_each_tensor`] calls: `(name, type, shape, bytes)`.
type TensorVisitor<'a> = dyn FnMut(&str, &str, &[u64], &[u8]) + 'a;

/// Calls `add(name, type, shape, bytes)` for every weight tensor of `files`: a GGUF's in name
/// order; a Hugging Face model's shard by shard, each in name order.
fn for_each_tensor(files: &ModelFiles, add: &mut TensorVisitor) -> Result<(), Error> {
    match files {
        ModelFiles::Gguf(gguf) => {
            let mut tensors: Vec<_> = gguf.tensors().iter().collect();
            tensors.sort_by(|a, b| a.name.cmp(&b.name));
            for t in tensors {
                add(&t.name, t.ty.name(), &t.dims, &gguf.tensor_data(t));
            }
        }
        ModelFiles::HuggingFace(shards) => {
            for st in shards {
                let mut tensors: Vec<_> = st.tensors().iter().collect();
                tensors.sort_by(|a, b| a.name.cmp(&b.name));
                for t in tensors {
                    let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
                    add(&t.name, &format!("{:?}", t.dtype), &shape, &st.tensor_data(&t.name)?);
                }
            }
        }
    }
    Ok(())
}

/// SHA-256 of every weight tensor's name, type, shape and bytes.
fn weights_digest(files: &ModelFiles) -> Result<[u8; 32], Error> {
    let mut hasher = Sha256::new();
    for_each_tensor(files, &mut |name, ty, shape, bytes| {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(ty.as_bytes());
        for d in shape {
            hasher.update(d.to_le_bytes());
        }
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    })?;
    Ok(hasher.finalize().into())
}

/// SHA-256 of every tensor's name, type and shape and of 8 evenly spaced 64-byte samples of its
/// bytes: cheap (it reads a few pages of a model), and different for another version of a model
/// even where every file stamp were the same.
fn sample_digest(files: &ModelFiles) -> Result<String, Error> {
    const SAMPLES: usize = 8;
    const SAMPLE: usize = 64;
    let mut hasher = Sha256::new();
    for_each_tensor(files, &mut |name, ty, shape, bytes| {
        hasher.update(name.as_bytes());
        hasher.update(ty.as_bytes());
        for d in shape {
            hasher.update(d.to_le_bytes());
        }
        let stride = bytes.len() / SAMPLES;
        for i in 0..SAMPLES {
            let start = (i * stride).min(bytes.len());
            hasher.update(&bytes[start..(start + SAMPLE).min(bytes.len())]);
        }
    })?;
    Ok(hex(&hasher.finalize()))
}

/// Fingerprints already computed, one small JSON blob per model path in a [`Store`]
/// (`fingerprints/<hash of the paths>.json`), valid while the loaded files keep their stamps and
/// sampled bytes. Models loaded from bytes have no stamps and are not cached.
pub struct FingerprintCache<'a> {
    store: &'a dyn Store,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    stamps: Vec<FileStamp>,
    sample_sha256: String,
    fingerprint: Fingerprint,
}

impl<'a> FingerprintCache<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self { store }
    }

    /// The fingerprint of the model `engine` loaded: from the cache while it is still valid,
    /// computed and stored otherwise. A cache that cannot be read or written is skipped, not an
    /// error.
    pub fn get(&self, engine: &Engine) -> Result<Fingerprint, Error> {
        let stamps = &engine.origin().stamps;
        if stamps.is_empty() {
            return Fingerprint::of(engine);
        }
        let paths: Vec<&str> = stamps.iter().map(|s| s.path.as_str()).collect();
        let key = format!("fingerprints/{}.json", &hex(&Sha256::digest(paths.join("\n").as_bytes()))[..32]);
        let sample_sha256 = sample_digest(engine.files())?;
        let cached = self
            .store
            .read(&key)
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<CacheEntry>(&bytes).ok());
        if let Some(entry) = cached.filter(|e| &e.stamps == stamps && e.sample_sha256 == sample_sha256) {
            return Ok(entry.fingerprint);
        }
        let fingerprint = Fingerprint::of(engine)?;
        let entry = CacheEntry { stamps: stamps.clone(), sample_sha256, fingerprint: fingerprint.clone() };
        // Best effort: a read-only cache only costs a recomputation next time.
        let _ = self.store.write(&key, &serde_json::to_vec(&entry).unwrap_or_default());
        Ok(fingerprint)
    }
}
