//! An adapter of any method as the runtime hands it out: loaded (from a PEFT directory, a store,
//! PEFT bytes or an `.akp` patch) or trained, with what is known about it, ready to attach to
//! its model, save, or turn into a patch. Cheap to clone (the tensors are shared).

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;
use serde::Serialize;
use serde_json::Value;

use crate::adapt::{self, Method, MethodKind};
use crate::bytes::SharedBytes;
use crate::error::Error;
use crate::format::peft::{PeftDir, CONFIG_FILE, WEIGHTS_FILE};
use crate::format::safetensors::{safetensors_to_bytes, SafetensorsFile};
use crate::model::{Decoder, DecoderConfig};
use crate::patch::{DenseType, Fingerprint, Patch, Values, TRAINING_FILE};
use crate::store::{FileStore, Store};

/// Where an adapter comes from.
#[derive(Clone)]
pub enum AdapterSource {
    /// A PEFT directory (`adapter_config.json` + `adapter_model.safetensors`) or an `.akp` patch.
    Path(PathBuf),
    /// A PEFT adapter's files, as bytes.
    Peft(PeftFiles),
    /// An `.akp` patch's bytes; `label` names it in messages.
    Patch { bytes: Vec<u8>, label: String },
    /// A PEFT adapter saved in a store ([`Adapter::save`]).
    Store(Arc<dyn Store>),
}

/// A PEFT adapter's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeftFiles {
    /// `adapter_config.json`.
    pub config_json: Vec<u8>,
    /// `adapter_model.safetensors`.
    pub safetensors: Vec<u8>,
    /// `training.json` (what the adapter was trained on), when known.
    pub training_json: Option<Vec<u8>>,
}

impl PeftFiles {
    /// Reads the files from `store`, naming the first one missing.
    pub fn read(store: &dyn Store) -> Result<Self, Error> {
        let required = |key: &str| {
            store.read(key)?.ok_or_else(|| Error::Adapter {
                path: store.locate(key),
                message: "missing: not a saved adapter".into(),
            })
        };
        Ok(Self {
            config_json: required(CONFIG_FILE)?,
            safetensors: required(WEIGHTS_FILE)?,
            training_json: store.read(TRAINING_FILE)?,
        })
    }

    /// The adapter as a PEFT directory in memory; `label` names it in errors.
    pub(crate) fn to_peft(&self, label: &str) -> Result<PeftDir, Error> {
        let bad = |message: String| Error::Adapter { path: label.to_string(), message };
        let config = serde_json::from_slice(&self.config_json)
            .map_err(|e| bad(format!("{CONFIG_FILE} is not JSON: {e}")))?;
        let tensors = SafetensorsFile::from_bytes(SharedBytes::from_vec(self.safetensors.clone()))
            .map_err(|e| bad(format!("{WEIGHTS_FILE}: {e}")))?;
        Ok(PeftDir { config, tensors, path: PathBuf::from(label) })
    }

    /// `training.json`, parsed.
    pub(crate) fn training(&self, label: &str) -> Result<Option<Value>, Error> {
        self.training_json
            .as_deref()
            .map(|bytes| {
                serde_json::from_slice(bytes).map_err(|e| Error::Adapter {
                    path: label.to_string(),
                    message: format!("{TRAINING_FILE} is not JSON: {e}"),
                })
            })
            .transpose()
    }
}

/// What is known about an adapter.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterInfo {
    pub method: MethodKind,
    /// Where it came from (a path, a store location, "trained").
    pub label: String,
    pub trainable_parameters: usize,
    /// Its own scale (a ported patch's λ): attached at `s`, it acts at `s` times this.
    pub scale: f32,
    /// What it was trained on (`training.json`).
    pub training: Option<Value>,
    /// The public key (hex) that signed the patch it came from.
    pub signer: Option<String>,
    /// The fingerprint id of the base the patch it came from was made for.
    pub base: Option<String>,
}

#[derive(Clone)]
pub struct Adapter {
    method: Arc<dyn Method>,
    /// The model it was made for (q/k row order and widths when saving).
    model: DecoderConfig,
    /// Where its tensors live: the device of the model it was loaded or trained for.
    device: Device,
    info: AdapterInfo,
}

impl Adapter {
    /// `method` (its parameters taken off any autodiff graph), made for `model`.
    pub(crate) fn new(method: &dyn Method, model: &Decoder, label: String, training: Option<Value>) -> Self {
        let info = AdapterInfo {
            method: method.kind(),
            label,
            trainable_parameters: adapt::parameter_count(method),
            scale: 1.0,
            training,
            signer: None,
            base: None,
        };
        let method = Arc::from(adapt::detached(method));
        Self { method, model: model.config().clone(), device: model.device().clone(), info }
    }

    /// Records the checked patch it came from: its own scale, signer and base.
    pub(crate) fn set_patch_origin(&mut self, patch: &Patch) {
        self.info.scale = patch.scale;
        self.info.signer = patch.signer_hex();
        self.info.base = Some(patch.base.id.clone());
    }

    /// Refuses a model other than one of the kind and on the device it was made for.
    pub(crate) fn check_model(&self, model: &Decoder) -> Result<(), Error> {
        if *model.config() != self.model || *model.device() != self.device {
            return Err(Error::Adapter {
                path: self.info.label.clone(),
                message: "it was loaded for another model (or device); load it for this one".into(),
            });
        }
        Ok(())
    }

    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    pub fn method(&self) -> MethodKind {
        self.info.method
    }

    /// This adapter with its tensors copied to the host, each read back without blocking.
    /// In the browser an adapter trained or loaded on the GPU is exported from this copy (its
    /// PEFT files, its patch), since a GPU's read-back must be awaited there; natively the
    /// exports read any device directly. The copy attaches to no model on a GPU.
    pub async fn on_host(&self) -> Result<Self, Error> {
        let method = adapt::to_host(self.method.as_ref()).await?;
        Ok(Self { method: Arc::from(method), device: Device::flex(), ..self.clone() })
    }

    pub(crate) fn shared(&self) -> Arc<dyn Method> {
        self.method.clone()
    }

    /// The adapter's PEFT files (`peft.PeftModel.from_pretrained` loads them, for the methods
    /// PEFT has).
    pub fn peft_files(&self) -> Result<PeftFiles, Error> {
        let (config, tensors) = self.method.to_peft(&self.model)?;
        let config_json = serde_json::to_vec_pretty(&config).unwrap_or_default();
        let safetensors = safetensors_to_bytes(&tensors, &[("format", "pt")])?;
        let training_json = self.info.training.as_ref().map(|t| serde_json::to_vec(t).unwrap_or_default());
        Ok(PeftFiles { config_json, safetensors, training_json })
    }

    /// Saves the adapter into `store` as a PEFT directory's files, each written whole (a
    /// [`FileStore`] renames finished temp files), the config last: a store with a config
    /// holds a complete adapter.
    pub fn save(&self, store: &dyn Store) -> Result<(), Error> {
        let files = self.peft_files()?;
        store.write(WEIGHTS_FILE, &files.safetensors)?;
        match &files.training_json {
            Some(training) => store.write(TRAINING_FILE, training)?,
            None => store.remove(TRAINING_FILE)?,
        }
        store.write(CONFIG_FILE, &files.config_json)
    }

    /// [`save`](Self::save) into the directory `dir` (created if needed).
    pub fn save_dir(&self, dir: &std::path::Path) -> Result<(), Error> {
        self.save(&FileStore::new(dir))
    }

    /// A patch of this adapter for the base `base` (the model's fingerprint), its tensors dense
    /// in `dense`, carrying its training record and its own scale.
    pub fn to_patch(&self, base: Fingerprint, dense: DenseType) -> Result<Patch, Error> {
        let (config, tensors) = self.method.to_peft(&self.model)?;
        let values: Vec<Values> = tensors
            .into_iter()
            .map(|(name, _, shape, bytes)| Values {
                name,
                shape,
                values: bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            })
            .collect();
        let mut patch = Patch::new(config, &values, base, dense, self.info.training.clone())?;
        patch.scale = self.info.scale;
        Ok(patch)
    }
}
