//! Adapters in the page: loaded from PEFT files or a patch's bytes, or trained; their PEFT files
//! as bytes (what Hugging Face PEFT and the CLI load).

use adaptkit::patch::keys::parse_public_key;
use adaptkit::runtime::{self, AdapterSource, LoadOptions, PeftFiles};
use wasm_bindgen::prelude::*;

use crate::error::{invalid, json, to_js};
use crate::model::Model;
use crate::storage::Storage;

#[wasm_bindgen]
pub struct Adapter {
    pub(crate) adapter: runtime::Adapter,
}

#[wasm_bindgen]
impl Adapter {
    /// What it is, as JSON (`AdapterInfo`: method, label, trainable_parameters, scale, training,
    /// signer, base).
    pub fn info(&self) -> String {
        json(&self.adapter.info())
    }

    /// Its PEFT files: `{config, safetensors, training}` (`adapter_config.json`,
    /// `adapter_model.safetensors`, and `training.json` or `undefined`).
    #[wasm_bindgen(js_name = peftFiles)]
    pub async fn peft_files(&self) -> Result<js_sys::Object, JsValue> {
        let files = self.files().await?;
        let object = js_sys::Object::new();
        let bytes = |b: &[u8]| JsValue::from(js_sys::Uint8Array::from(b));
        js_sys::Reflect::set(&object, &"config".into(), &bytes(&files.config_json))?;
        js_sys::Reflect::set(&object, &"safetensors".into(), &bytes(&files.safetensors))?;
        let training = files.training_json.as_deref().map_or(JsValue::UNDEFINED, bytes);
        js_sys::Reflect::set(&object, &"training".into(), &training)?;
        Ok(object)
    }

    /// Saves it into `storage` as PEFT files (the config last: a storage with a config holds a
    /// whole adapter).
    pub async fn save(&self, storage: &Storage) -> Result<(), JsValue> {
        self.exportable().await?.save(storage.store.as_ref()).map_err(to_js)
    }
}

impl Adapter {
    /// The adapter to export from: on WebGPU a copy on the host, since exporting reads every
    /// value and the browser cannot block on a GPU read-back; on the CPU one as it is.
    pub(crate) async fn exportable(&self) -> Result<runtime::Adapter, JsValue> {
        self.adapter.on_host().await.map_err(to_js)
    }

    pub(crate) async fn files(&self) -> Result<PeftFiles, JsValue> {
        self.exportable().await?.peft_files().map_err(to_js)
    }
}

/// Public key files' texts as keys, naming the one that is not a key.
pub(crate) fn trusted(keys: &[String]) -> Result<Vec<[u8; 32]>, JsValue> {
    keys.iter()
        .enumerate()
        .map(|(i, text)| parse_public_key(text).map_err(|e| invalid(&format!("trusted_keys[{i}]"), &e)))
        .collect()
}

#[wasm_bindgen]
impl Model {
    /// Loads a PEFT adapter's files made for this model.
    #[wasm_bindgen(js_name = loadPeft)]
    pub fn load_peft(
        &self,
        config_json: Vec<u8>,
        safetensors: Vec<u8>,
        training_json: Option<Vec<u8>>,
    ) -> Result<Adapter, JsValue> {
        self.load(
            AdapterSource::Peft(PeftFiles { config_json, safetensors, training_json }),
            LoadOptions::default(),
        )
    }

    /// Loads an `.akp` patch (`label` names it in messages): with `trusted_keys` (public key
    /// files' texts) only a patch signed by one of them loads; `allow_port` accepts a patch made
    /// for another base of the same architecture.
    #[wasm_bindgen(js_name = loadPatch)]
    pub fn load_patch(
        &self,
        bytes: Vec<u8>,
        label: String,
        trusted_keys: Vec<String>,
        allow_port: bool,
    ) -> Result<Adapter, JsValue> {
        let options = LoadOptions { trusted_keys: trusted(&trusted_keys)?, allow_port };
        self.load(AdapterSource::Patch { bytes, label }, options)
    }

    /// Loads the adapter saved in `storage`.
    #[wasm_bindgen(js_name = loadStored)]
    pub fn load_stored(&self, storage: &Storage) -> Result<Adapter, JsValue> {
        self.load(AdapterSource::Store(storage.store.clone()), LoadOptions::default())
    }

    fn load(&self, source: AdapterSource, options: LoadOptions) -> Result<Adapter, JsValue> {
        let adapter = self.open_model()?.load_adapter(source, &options).map_err(to_js)?;
        Ok(Adapter { adapter })
    }

    /// Attaches `adapter` at `scale` (0 = off, 1 = as trained); returns the id `detach` takes.
    pub fn attach(&self, adapter: &Adapter, scale: f32) -> Result<u32, JsValue> {
        let id = self.open_model()?.attach(&adapter.adapter, scale).map_err(to_js)?;
        Ok(u32::try_from(id).unwrap_or(u32::MAX))
    }

    pub fn detach(&self, id: u32) -> Result<(), JsValue> {
        self.open_model()?.detach(u64::from(id)).map_err(to_js)
    }

    #[wasm_bindgen(js_name = detachAll)]
    pub fn detach_all(&self) -> Result<(), JsValue> {
        self.open_model()?.detach_all();
        Ok(())
    }

    #[wasm_bindgen(js_name = setScale)]
    pub fn set_scale(&self, id: u32, scale: f32) -> Result<(), JsValue> {
        self.open_model()?.set_scale(u64::from(id), scale).map_err(to_js)
    }
}
