//! Training in the page: any method, progress events to a JS callback (which cancels by
//! returning `true`), checkpoints in a [`Storage`], resume, and the memory plan.

use adaptkit::runtime::{self, TrainConfig, TrainEvent, TrainingData};
use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::prelude::*;

use crate::adapter::Adapter;
use crate::error::{bad_json, json, to_js};
use crate::listener::Listener;
use crate::model::Model;
use crate::storage::Storage;

/// What a run trains on, as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    text: String,
    #[serde(default = "default_name")]
    name: String,
    /// JSON lines rather than plain text.
    #[serde(default)]
    jsonl: bool,
    eval_text: Option<String>,
    general_text: Option<String>,
}

fn default_name() -> String {
    "notes.txt".into()
}

/// A trained adapter and its run's report.
#[wasm_bindgen]
pub struct Trained {
    adapter: Option<Adapter>,
    report: String,
}

#[wasm_bindgen]
impl Trained {
    /// The adapter (once: it moves to the caller).
    #[wasm_bindgen(js_name = takeAdapter)]
    pub fn take_adapter(&mut self) -> Option<Adapter> {
        self.adapter.take()
    }

    /// The `TrainingReport` as JSON (what `adaptkit train --json` prints).
    #[wasm_bindgen(getter)]
    pub fn report(&self) -> String {
        self.report.clone()
    }
}

fn config_of(config: &str) -> Result<TrainConfig, JsValue> {
    serde_json::from_str(config).map_err(|e| bad_json("train config", e))
}

#[wasm_bindgen]
impl Model {
    /// Trains an adapter on `data` (JSON: `{text, name?, jsonl?, eval_text?, general_text?}`)
    /// as `config` (JSON: the runtime's `TrainConfig`, every field optional). `on_event` gets
    /// `{"type": "plan" | "stage" | "step" | "checkpoint" | "warning", …}` and cancels by
    /// returning `true`; checkpoints go to `storage`, and `"resume": true` continues from them.
    pub async fn train(
        &self,
        data: String,
        config: String,
        storage: &Storage,
        on_event: Option<js_sys::Function>,
    ) -> Result<Trained, JsValue> {
        let model = self.open_model()?;
        let data: Data = serde_json::from_str(&data).map_err(|e| bad_json("training data", e))?;
        let data =
            TrainingData::of_texts(&data.name, data.text, data.jsonl, data.eval_text, data.general_text);
        let config = config_of(&config)?;
        let mut listener = Listener::new(on_event);
        let cancel = listener.cancel.clone();
        let result = model.train_async(&data, &config, storage.store.as_ref(), &cancel, &mut |event| {
            let event = match event {
                TrainEvent::Plan(plan) => json!({ "type": "plan", "plan": plan }),
                TrainEvent::Stage { name, steps } => json!({ "type": "stage", "name": name, "steps": steps }),
                TrainEvent::Step { step, tokens_per_s } => json!({
                    "type": "step", "step": step.step, "steps": step.steps, "loss": step.loss, "lr": step.lr,
                    "grad_norm": step.grad_norm, "tokens_per_s": tokens_per_s, "evaluation": step.eval,
                }),
                TrainEvent::Checkpoint { step, key } => json!({ "type": "checkpoint", "step": step, "key": key }),
                TrainEvent::Warning(message) => json!({ "type": "warning", "message": message }),
                // A stage's record is in the report, not streamed.
                TrainEvent::StageRecord { .. } => return,
            };
            listener.send(event);
        })
        .await;
        let trained: runtime::Trained = listener.finish(result)?;
        Ok(Trained { report: json(&trained.report), adapter: Some(Adapter { adapter: trained.adapter }) })
    }

    /// The memory plan a run of `config` would follow, as JSON (`MemoryPlan`).
    pub fn plan(&self, config: &str) -> Result<String, JsValue> {
        Ok(json(&self.open_model()?.plan(&config_of(config)?).map_err(to_js)?))
    }
}
