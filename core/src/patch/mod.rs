//! Adapter patches: what leaves the device. A [`Patch`] is a saved adapter (its PEFT config and
//! tensors) tied to the base model it was made for, with its training metadata, stored in one
//! checked (optionally signed) `.akp` file. `compress` codes its tensors with ComPEFT, `port`
//! moves it to an updated base (PortLLM), `merge` combines several into one. This module works
//! on adapter tensors only; moving patches is `sync`'s business.

pub mod codec;
pub mod compeft;
#[cfg(feature = "std")]
pub mod compress;
#[cfg(feature = "std")]
pub mod fingerprint;
#[cfg(feature = "std")]
pub mod keys;
#[cfg(feature = "std")]
pub mod merge;
#[cfg(feature = "std")]
pub mod port;

#[cfg(feature = "std")]
pub use self::std_only::*;

#[cfg(feature = "std")]
mod std_only {
    use std::path::Path;

    use ed25519_dalek::SigningKey;
    use half::f16;
    use serde_json::{json, Value};

    pub use super::compeft::Values;
    pub use super::fingerprint::{Fingerprint, FingerprintCache};
    use crate::adapt::{self, Method, MethodKind, Saved};
    use crate::bytes::SharedBytes;
    use crate::error::Error;
    use crate::format::patch_file::{hex, require_signer, Encoding, PatchFile, StoredTensor};
    use crate::format::peft::PeftDir;
    use crate::format::safetensors::{safetensors_to_bytes, Dtype, SafetensorsFile};
    use crate::model::Decoder;

    /// Where `train` records what the adapter was trained on; a patch made from the directory
    /// carries it.
    pub const TRAINING_FILE: &str = "training.json";
    /// Patches larger than this are refused before they are read (a LoRA of every projection of
    /// a 1B model at rank 64 is ~100 MB in f32).
    pub const MAX_PATCH_BYTES: u64 = 1 << 30;

    /// How dense tensors are stored.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DenseType {
        F16,
        F32,
    }

    #[derive(Clone, Debug, PartialEq)]
    pub struct Patch {
        pub method: MethodKind,
        /// The adapter's PEFT `adapter_config.json`.
        pub config: Value,
        /// The base model the patch was made for (or ported to).
        pub base: Fingerprint,
        /// Multiplies the adapter's change when it is attached (PortLLM's λ); 1 by default.
        pub scale: f32,
        pub training: Option<Value>,
        /// The codec's settings and per-tensor statistics, when the tensors are ComPEFT-coded.
        pub compression: Option<Value>,
        /// Where a ported patch came from, and the drift it was ported across.
        pub ported: Option<Value>,
        pub tensors: Vec<StoredTensor>,
        /// The public key that signed the file it was read from.
        pub signer: Option<[u8; 32]>,
    }

    /// An error about the patch at `path`.
    pub(crate) fn bad(path: &str, message: impl Into<String>) -> Error {
        Error::Patch { path: path.to_string(), message: message.into() }
    }

    impl Patch {
        /// A patch of the adapter whose PEFT config and tensors these are, made for `base`, with
        /// its tensors dense in `dense` and what it was trained on.
        pub fn new(
            config: Value,
            tensors: &[Values],
            base: Fingerprint,
            dense: DenseType,
            training: Option<Value>,
        ) -> Result<Self, Error> {
            let method = MethodKind::of_config(&config).map_err(|m| bad("adapter", m))?;
            Ok(Self {
                method,
                config,
                base,
                scale: 1.0,
                training,
                compression: None,
                ported: None,
                tensors: tensors.iter().map(|v| dense_tensor(v, dense)).collect(),
                signer: None,
            })
        }

        /// The adapter saved in `dir` (a PEFT directory of any method, with the
        /// `training.json` that `train` writes beside it, if any), made for `base`.
        pub fn from_adapter_dir(dir: &Path, base: Fingerprint, dense: DenseType) -> Result<Self, Error> {
            let peft = PeftDir::read(dir)?;
            let label = dir.display().to_string();
            let mut values = Vec::new();
            for t in peft.tensors.tensors() {
                values.push(Values {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    values: peft.tensors.tensor_f32(&t.name).map_err(|e| bad(&label, e.to_string()))?,
                });
            }
            let training = match std::fs::read(dir.join(TRAINING_FILE)) {
                Ok(bytes) => Some(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| bad(&label, format!("{TRAINING_FILE} is not JSON: {e}")))?,
                ),
                Err(_) => None,
            };
            Self::new(peft.config, &values, base, dense, training).map_err(|e| match e {
                Error::Patch { message, .. } => bad(&label, message),
                other => other,
            })
        }

        /// Every tensor decoded to f32, in stored order.
        pub fn values(&self) -> Result<Vec<Values>, Error> {
            self.tensors.iter().map(decode_tensor).collect()
        }

        /// The same patch with every tensor decoded and stored dense.
        pub fn to_dense(&self, dense: DenseType) -> Result<Self, Error> {
            let mut out = self.clone();
            out.tensors = self.values()?.iter().map(|v| dense_tensor(v, dense)).collect();
            out.compression = None;
            Ok(out)
        }

        /// The bytes the tensors take in the file.
        pub fn payload_bytes(&self) -> usize {
            self.tensors.iter().map(|t| t.bytes.len()).sum()
        }

        /// The adapter's tensors in f16, what the patch is compared with.
        pub fn f16_bytes(&self) -> usize {
            self.tensors.iter().map(|t| t.elements() * 2).sum()
        }

        /// The tensors decoded to f32, as a PEFT safetensors file lists them.
        fn peft_tensors(&self) -> Result<Vec<Saved>, Error> {
            Ok(self
                .values()?
                .into_iter()
                .map(|v| {
                    (v.name, Dtype::F32, v.shape, v.values.iter().flat_map(|x| x.to_le_bytes()).collect())
                })
                .collect())
        }

        /// The adapter as an in-memory PEFT directory (f32 tensors); `label` names it in errors.
        pub fn to_peft(&self, label: &Path) -> Result<PeftDir, Error> {
            let bytes = safetensors_to_bytes(&self.peft_tensors()?, &[("format", "pt")])?;
            Ok(PeftDir {
                config: self.config.clone(),
                tensors: SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes))?,
                path: label.to_path_buf(),
            })
        }

        /// Writes the adapter as a PEFT directory, for tools that read those.
        pub fn write_peft(&self, dir: &Path) -> Result<(), Error> {
            Ok(PeftDir::write(dir, &self.config, &self.peft_tensors()?)?)
        }

        /// The adapter, ready to attach to `model` at the patch's own scale. The caller checks
        /// the base first ([`Patch::check_base`]).
        pub fn to_method(&self, model: &Decoder, label: &Path) -> Result<Box<dyn Method>, Error> {
            adapt::from_peft(&self.to_peft(label)?, model)
        }

        /// Refuses a patch made for another base than `model` unless `allow_port`; even then the
        /// architecture and tokenizer must match.
        pub fn check_base(&self, model: &Fingerprint, allow_port: bool, label: &str) -> Result<(), Error> {
            if self.base.id == model.id {
                return Ok(());
            }
            self.base
                .same_shapes(model)
                .map_err(|m| bad(label, format!("cannot be used with this model: {m}")))?;
            if allow_port {
                return Ok(());
            }
            Err(Error::PatchBase {
                path: label.to_string(),
                patch: self.base.short_id().to_string(),
                model: model.short_id().to_string(),
            })
        }

        pub fn to_file(&self) -> PatchFile {
            PatchFile {
                metadata: json!({
                    "format": "adaptkit-patch",
                    "created_by": concat!("adaptkit ", env!("CARGO_PKG_VERSION")),
                    "method": self.method.name(),
                    "config": self.config,
                    "base": self.base,
                    "scale": self.scale,
                    "training": self.training,
                    "compression": self.compression,
                    "ported": self.ported,
                }),
                tensors: self.tensors.clone(),
                signer: None,
            }
        }

        /// Checks a parsed file's metadata and tensors; `label` names it in errors.
        pub fn from_file(file: PatchFile, label: &str) -> Result<Self, Error> {
            let meta = &file.metadata;
            let field = |key: &str| meta.get(key).filter(|v| !v.is_null());
            let method_name = field("method").and_then(Value::as_str).unwrap_or_default();
            let method: MethodKind = method_name.parse().map_err(|e: Error| bad(label, e.to_string()))?;
            let config = field("config").cloned().ok_or_else(|| bad(label, "metadata has no 'config'"))?;
            let from_config = MethodKind::of_config(&config).map_err(|m| bad(label, m))?;
            if from_config != method {
                return Err(bad(
                    label,
                    format!("says method '{method_name}' but its config is a {} adapter", from_config.name()),
                ));
            }
            let base: Fingerprint = serde_json::from_value(
                field("base").cloned().ok_or_else(|| bad(label, "metadata has no base-model fingerprint"))?,
            )
            .map_err(|e| bad(label, format!("base-model fingerprint: {e}")))?;
            // A scale that is there must be a number: `null` or a string is not 1.
            let scale = match meta.get("scale") {
                None => 1.0,
                Some(value) => value
                    .as_f64()
                    .ok_or_else(|| bad(label, format!("metadata field 'scale' is {value}, not a number")))?
                    as f32,
            };
            if !scale.is_finite() {
                return Err(bad(label, format!("metadata field 'scale' ({scale} as f32) is not finite")));
            }
            let patch = Self {
                method,
                config,
                base,
                scale,
                training: field("training").cloned(),
                compression: field("compression").cloned(),
                ported: field("ported").cloned(),
                tensors: file.tensors,
                signer: file.signer,
            };
            // Every ternary stream decodes (a writer's bug or a forged stream fails here).
            for t in &patch.tensors {
                if let Encoding::Ternary { .. } = t.encoding {
                    decode_tensor(t).map_err(|e| bad(label, e.to_string()))?;
                }
            }
            Ok(patch)
        }

        pub fn to_bytes(&self, key: Option<&SigningKey>) -> Vec<u8> {
            self.to_file().to_bytes(key)
        }

        /// Parses and checks a patch (layout, checksum, signature when present, tensors).
        pub fn from_bytes(bytes: &[u8], label: &str) -> Result<Self, Error> {
            let file = PatchFile::from_bytes(bytes).map_err(|e| bad(label, e.to_string()))?;
            Self::from_file(file, label)
        }

        /// Reads `path`, refusing a file over [`MAX_PATCH_BYTES`] before reading it.
        pub fn read(path: &Path) -> Result<Self, Error> {
            let io = |e| Error::Io { path: path.to_path_buf(), source: e };
            let size = std::fs::metadata(path).map_err(io)?.len();
            if size > MAX_PATCH_BYTES {
                return Err(bad(
                    &path.display().to_string(),
                    format!("{size} bytes is more than the {MAX_PATCH_BYTES} a patch may have"),
                ));
            }
            Self::from_bytes(&std::fs::read(path).map_err(io)?, &path.display().to_string())
        }

        /// Writes `path` atomically (temp file, fsync, rename), signed with `key` if given.
        pub fn write(&self, path: &Path, key: Option<&SigningKey>) -> Result<(), Error> {
            let bytes = self.to_bytes(key);
            crate::format::write_atomic(path, |w| w.write_all(&bytes))
                .map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
        }

        /// The signer's public key in hex.
        pub fn signer_hex(&self) -> Option<String> {
            self.signer.map(|k| hex(&k))
        }
    }

    pub(crate) fn dense_tensor(v: &Values, dense: DenseType) -> StoredTensor {
        let (encoding, bytes) = match dense {
            DenseType::F32 => (Encoding::F32, v.values.iter().flat_map(|x| x.to_le_bytes()).collect()),
            DenseType::F16 => {
                (Encoding::F16, v.values.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect())
            }
        };
        StoredTensor { name: v.name.clone(), shape: v.shape.clone(), encoding, bytes }
    }

    pub(crate) fn decode_tensor(t: &StoredTensor) -> Result<Values, Error> {
        let n = t.elements();
        let values = match t.encoding {
            Encoding::F32 => {
                t.bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Encoding::F16 => {
                t.bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Encoding::Ternary { scale, init, nonzeros, rice_bits } => {
                let ternary = super::codec::decode(&t.bytes, n, nonzeros as usize, rice_bits)
                    .map_err(|m| bad("patch", format!("tensor '{}': {m}", t.name)))?;
                let mut values = vec![init; n];
                for (&p, &neg) in ternary.positions.iter().zip(&ternary.negative) {
                    values[p as usize] = init + if neg { -scale } else { scale };
                }
                values
            }
        };
        Ok(Values { name: t.name.clone(), shape: t.shape.clone(), values })
    }

    /// What attaching a patch requires.
    #[derive(Clone, Debug, Default)]
    pub struct AttachOptions {
        /// When not empty, patches must be signed by one of these keys (and adapters that
        /// cannot be signed, PEFT directories, are refused).
        pub trusted_keys: Vec<[u8; 32]>,
        /// Accept a patch made for another base of the same architecture (PortLLM, λ = 1).
        pub allow_port: bool,
    }

    impl Patch {
        /// The adapter of this patch (`label` names it in errors) for `model`, after its
        /// signature (when keys are trusted) and its base (`fingerprint` is the model's) are
        /// checked. Nothing about the model changes, whatever fails.
        pub fn attach(
            &self,
            model: &Decoder,
            label: &str,
            fingerprint: &mut dyn FnMut() -> Result<Fingerprint, Error>,
            options: &AttachOptions,
        ) -> Result<Box<dyn Method>, Error> {
            if !options.trusted_keys.is_empty() {
                require_signer(self.signer, &options.trusted_keys).map_err(|e| bad(label, e.to_string()))?;
            }
            self.check_base(&fingerprint()?, options.allow_port, label)?;
            self.to_method(model, Path::new(label))
        }
    }
}
