//! Patches in the page: compress an adapter into a ComPEFT patch (`.akp` bytes, signed when a
//! secret key is given), inspect, verify, keygen. Keys are key files' texts.

use adaptkit::patch::keys::parse_secret_key;
use adaptkit::runtime::patches::{self, CompressOptions};
use adaptkit::runtime::AdapterSource;
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::adapter::{trusted, Adapter};
use crate::error::{bad_json, invalid, json, to_js};
use crate::model::Model;

/// What `compress` takes, as JSON; every field optional.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CompressRequest {
    /// A fraction in (0, 1], `auto` or `dense` (default 0.1).
    density: Option<String>,
    /// `f16` (default) or `f32`.
    dense_type: Option<String>,
    eval_text: Option<String>,
    general_text: Option<String>,
    secret_key: Option<String>,
}

/// A compressed patch: the file's bytes and the report.
#[wasm_bindgen(getter_with_clone)]
pub struct CompressedPatch {
    pub bytes: Vec<u8>,
    /// The `CompressReport` as JSON (what `adaptkit patch compress --json` prints).
    pub report: String,
}

#[wasm_bindgen]
impl Model {
    /// `adapter` as a ComPEFT patch for this model, as `options` (JSON) say.
    pub async fn compress(&self, adapter: &Adapter, options: String) -> Result<CompressedPatch, JsValue> {
        let model = self.open_model()?;
        let request: CompressRequest =
            serde_json::from_str(&options).map_err(|e| bad_json("compress options", e))?;
        let defaults = CompressOptions::default();
        let options = CompressOptions {
            density: request
                .density
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(to_js)?
                .unwrap_or(defaults.density),
            dense_type: request
                .dense_type
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(to_js)?
                .unwrap_or(defaults.dense_type),
            eval_text: request.eval_text,
            general_text: request.general_text,
            ..defaults
        };
        let key = request
            .secret_key
            .as_deref()
            .map(parse_secret_key)
            .transpose()
            .map_err(|e| invalid("secret_key", &e))?;
        let files = adapter.files().await?;
        let compressed =
            patches::compress_source(model, AdapterSource::Peft(files), &options, key.as_ref(), &mut |_| {})
                .map_err(to_js)?;
        Ok(CompressedPatch { report: json(&compressed.report), bytes: compressed.bytes })
    }
}

/// What a patch holds, as JSON (`PatchInspection`).
#[wasm_bindgen]
pub fn inspect(bytes: &[u8], label: &str) -> Result<String, JsValue> {
    Ok(json(&patches::inspect(bytes, label).map_err(to_js)?))
}

/// Checks a patch's integrity and signature (and that one of `trusted_keys` signed it, when
/// given), as JSON (`VerifyReport`).
#[wasm_bindgen]
pub fn verify(bytes: &[u8], label: &str, trusted_keys: Vec<String>) -> Result<String, JsValue> {
    Ok(json(&patches::verify(bytes, label, &trusted(&trusted_keys)?).map_err(to_js)?))
}

/// A new Ed25519 key pair from the browser's crypto: `{secret, public, public_hex}` as JSON.
#[wasm_bindgen]
pub fn keygen() -> Result<String, JsValue> {
    let keys = patches::keygen().map_err(to_js)?;
    Ok(serde_json::json!({ "secret": keys.secret, "public": keys.public, "public_hex": keys.public_hex })
        .to_string())
}
