//! The model in the page: open from a GGUF file's bytes on the CPU or WebGPU, info, generate
//! and chat with streamed tokens, perplexity, fingerprint, release. Every call that reads the
//! device back is async: on WebGPU each read-back is awaited (the browser cannot block on one).

use adaptkit::device::DeviceChoice;
use adaptkit::generate::GenerationEvent;
use adaptkit::runtime::{self, GenerateRequest, ModelSource, OpenOptions};
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::error::{bad_json, closed, json, to_js};
use crate::listener::Listener;

#[wasm_bindgen]
pub struct Model {
    inner: Option<runtime::Model>,
}

impl Model {
    /// The open model, or a `ClosedError`.
    pub(crate) fn open_model(&self) -> Result<&runtime::Model, JsValue> {
        self.inner.as_ref().ok_or_else(closed)
    }
}

#[wasm_bindgen]
impl Model {
    /// Opens a GGUF file's bytes on `device`: `cpu`, `gpu` (WebGPU, an error without an
    /// adapter) or `auto` (a hardware WebGPU adapter, else the CPU, the reason in `info`'s
    /// `device_fallback`); `trainable`: ready to train adapters.
    pub async fn open(gguf: Vec<u8>, trainable: bool, device: String) -> Result<Model, JsValue> {
        let device: DeviceChoice = device.parse().map_err(to_js)?;
        let options = OpenOptions { threads: 1, trainable, device, ..Default::default() };
        let model = runtime::Model::open_async(ModelSource::Gguf(gguf), &options).await.map_err(to_js)?;
        Ok(Model { inner: Some(model) })
    }

    /// What the model is, as JSON (`ModelInfo`).
    pub fn info(&self) -> Result<String, JsValue> {
        Ok(json(&self.open_model()?.info()))
    }

    /// The base's fingerprint id (hex), what patches are made for.
    pub fn fingerprint(&self) -> Result<String, JsValue> {
        Ok(self.open_model()?.fingerprint().map_err(to_js)?.id)
    }

    /// Generates from `request` (JSON: `{"prompt": {"text": …} | {"chat": [{role, content}…]},
    /// "options": {max_tokens, temperature, …}}`) with the attached adapters. `on_event` gets
    /// `{"type": "prefilled" | "token" | "tail" | "warning", …}`; returns the
    /// `GenerationReport` as JSON.
    pub async fn generate(
        &self,
        request: String,
        on_event: Option<js_sys::Function>,
    ) -> Result<String, JsValue> {
        let model = self.open_model()?;
        let request: GenerateRequest =
            serde_json::from_str(&request).map_err(|e| bad_json("generate request", e))?;
        let mut listener = Listener::new(on_event);
        let cancel = listener.cancel.clone();
        let result = model
            .generate_async(&request, &cancel, &mut |event| {
                listener.send(match event {
                    GenerationEvent::Prefilled { prompt_tokens } => {
                        json!({ "type": "prefilled", "prompt_tokens": prompt_tokens })
                    }
                    GenerationEvent::Token { id, text } => json!({ "type": "token", "id": id, "text": text }),
                    GenerationEvent::Tail { text } => json!({ "type": "tail", "text": text }),
                    GenerationEvent::Warning { text } => json!({ "type": "warning", "message": text }),
                })
            })
            .await;
        Ok(json(&listener.finish(result)?))
    }

    /// Perplexity of `text` with the attached adapters in windows of `seq` tokens, as JSON
    /// (`PerplexityReport`).
    pub async fn perplexity(&self, text: String, seq: usize) -> Result<String, JsValue> {
        let model = self.open_model()?;
        let report =
            model.perplexity_async(&text, seq, &Default::default(), &mut |_, _| {}).await.map_err(to_js)?;
        Ok(json(&report))
    }

    /// The logits of every position of `tokens` (`len x vocab`, row-major) with the attached
    /// adapters.
    pub async fn logits(&self, tokens: Vec<u32>) -> Result<js_sys::Float32Array, JsValue> {
        let logits = self.open_model()?.logits_async(&tokens).await.map_err(to_js)?;
        Ok(js_sys::Float32Array::from(logits.as_slice()))
    }

    /// Frees the model's memory now; every later call is a `ClosedError`.
    pub fn release(&mut self) {
        self.inner = None;
    }

    #[wasm_bindgen(js_name = isReleased)]
    pub fn is_released(&self) -> bool {
        self.inner.is_none()
    }
}
