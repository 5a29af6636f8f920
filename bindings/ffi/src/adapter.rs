//! [`Adapter`]: a trained or loaded adapter of any method, where it comes from, and saving it
//! (a directory, a [`Storage`], or the PEFT files as bytes).

use std::sync::Arc;

use adaptkit::patch::keys::parse_public_key;
use adaptkit::runtime;

use crate::error::{to_u32, AdaptError};
use crate::storage::Storage;
use crate::worker::{guarded, on_worker};

/// A PEFT adapter's files as bytes (what Hugging Face PEFT reads and writes).
#[derive(uniffi::Record, Clone, Debug, PartialEq, Eq)]
pub struct PeftFiles {
    /// `adapter_config.json`.
    pub config_json: Vec<u8>,
    /// `adapter_model.safetensors`.
    pub safetensors: Vec<u8>,
    /// `training.json`, when known.
    pub training_json: Option<Vec<u8>>,
}

impl From<runtime::PeftFiles> for PeftFiles {
    fn from(f: runtime::PeftFiles) -> Self {
        Self { config_json: f.config_json, safetensors: f.safetensors, training_json: f.training_json }
    }
}

/// Where an adapter comes from.
#[derive(uniffi::Enum, Clone)]
pub enum AdapterSource {
    /// A PEFT directory or an `.akp` patch file.
    Path { path: String },
    /// A PEFT adapter saved in a storage ([`Adapter::save`]).
    Storage { storage: Arc<Storage> },
    /// A PEFT adapter's files.
    Peft { files: PeftFiles },
    /// An `.akp` patch's bytes; `label` names it in messages.
    Patch { bytes: Vec<u8>, label: String },
}

impl AdapterSource {
    pub(crate) fn runtime(self) -> runtime::AdapterSource {
        match self {
            Self::Path { path } => runtime::AdapterSource::Path(path.into()),
            Self::Storage { storage } => runtime::AdapterSource::Store(Arc::clone(&storage.store)),
            Self::Peft { files } => runtime::AdapterSource::Peft(runtime::PeftFiles {
                config_json: files.config_json,
                safetensors: files.safetensors,
                training_json: files.training_json,
            }),
            Self::Patch { bytes, label } => runtime::AdapterSource::Patch { bytes, label },
        }
    }
}

/// How to load adapters.
#[derive(uniffi::Record, Clone, Default)]
pub struct LoadOptions {
    /// Public key files' texts: when any is given, only patches signed by one of them load
    /// (and unsigned sources, PEFT directories, are refused).
    #[uniffi(default = [])]
    pub trusted_keys: Vec<String>,
    /// Accept a patch made for another base of the same architecture (PortLLM).
    #[uniffi(default = false)]
    pub allow_port: bool,
}

impl LoadOptions {
    pub(crate) fn runtime(&self) -> Result<runtime::LoadOptions, AdaptError> {
        Ok(runtime::LoadOptions {
            trusted_keys: public_keys(&self.trusted_keys)?,
            allow_port: self.allow_port,
        })
    }
}

/// Public key files' texts as keys, naming the one that is not a key.
pub(crate) fn public_keys(texts: &[String]) -> Result<Vec<[u8; 32]>, AdaptError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            parse_public_key(text).map_err(|e| AdaptError::InvalidArgument(format!("trusted_keys[{i}]: {e}")))
        })
        .collect()
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct AdapterInfo {
    /// `lora`, `dora`, `ia3`, `prompt`, `prefix`, `dept`, `peqa` or `lofit`.
    pub method: String,
    /// Where it came from (a path, a storage location, `trained`).
    pub label: String,
    pub trainable_parameters: u32,
    /// Its own scale (a ported patch's λ).
    pub scale: f32,
    /// What it was trained on (`training.json`), as JSON.
    pub training_json: Option<String>,
    /// The public key (hex) that signed the patch it came from.
    pub signer: Option<String>,
    /// The fingerprint id of the base the patch it came from was made for.
    pub base: Option<String>,
}

impl From<&runtime::AdapterInfo> for AdapterInfo {
    fn from(i: &runtime::AdapterInfo) -> Self {
        Self {
            method: i.method.name().into(),
            label: i.label.clone(),
            trainable_parameters: to_u32(i.trainable_parameters),
            scale: i.scale,
            training_json: i.training.as_ref().map(|v| v.to_string()),
            signer: i.signer.clone(),
            base: i.base.clone(),
        }
    }
}

#[derive(uniffi::Object)]
pub struct Adapter {
    pub(crate) adapter: runtime::Adapter,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Adapter").field(&self.info()).finish()
    }
}

impl Adapter {
    pub(crate) fn wrap(adapter: runtime::Adapter) -> Arc<Self> {
        Arc::new(Self { adapter })
    }
}

#[uniffi::export]
impl Adapter {
    pub fn info(&self) -> AdapterInfo {
        self.adapter.info().into()
    }

    /// Its PEFT files as bytes.
    pub fn peft_files(&self) -> Result<PeftFiles, AdaptError> {
        guarded(|| Ok(self.adapter.peft_files()?.into()))
    }

    /// Saves it into `storage` as a PEFT adapter, each file whole or not at all.
    pub async fn save(&self, storage: Arc<Storage>) -> Result<(), AdaptError> {
        let adapter = self.adapter.clone();
        on_worker(Default::default(), move || Ok(adapter.save(storage.store.as_ref())?)).await
    }

    /// Saves it as a PEFT directory at `path` (what Hugging Face PEFT loads).
    pub async fn save_directory(&self, path: String) -> Result<(), AdaptError> {
        let adapter = self.adapter.clone();
        on_worker(Default::default(), move || Ok(adapter.save_dir(std::path::Path::new(&path))?)).await
    }
}
