//! Training checkpoints: the adapter, the optimizer's moments and the run's position, in one
//! safetensors blob (state in its metadata) that the run's [`Store`](crate::store::Store)
//! writes whole, so a run killed at any moment leaves either the previous checkpoint or the new
//! one, never half of one.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};

use super::{AdamW, TrainState};
use crate::adapt::Method;
use crate::bytes::SharedBytes;
use crate::error::Error;
use crate::format::safetensors::{safetensors_to_bytes, Dtype, SafetensorsFile};
use crate::model::linear::read_f32;

/// The store key of a run's checkpoint.
pub const KEY: &str = "checkpoint.safetensors";

/// The checkpoint of `adapter` at `state` (async: the tensors are read back from the device).
pub async fn to_bytes(adapter: &dyn Method, state: &TrainState) -> Result<Vec<u8>, Error> {
    let mut named: Vec<(String, &Tensor<2>)> =
        adapter.parameters().into_iter().map(|(name, param)| (format!("adapter/{name}"), param)).collect();
    for (name, (m, v)) in &state.optimizer.moments {
        named.push((format!("m/{name}"), m));
        named.push((format!("v/{name}"), v));
    }
    let mut tensors = Vec::with_capacity(named.len());
    for (name, t) in named {
        let bytes = read_f32(t.clone()).await?.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        tensors.push((name, Dtype::F32, t.dims().to_vec(), bytes));
    }
    let position = serde_json::json!({
        "step": state.step,
        "epoch": state.epoch,
        "next": state.next,
        "order": state.order,
        "optimizer_steps": state.optimizer.steps,
        "weight_decay": state.optimizer.weight_decay,
        "planned_steps": state.planned_steps,
        "method": adapter.kind().name(),
    })
    .to_string();
    Ok(safetensors_to_bytes(&tensors, &[("adaptkit_train_state", &position)])?)
}

/// Restores `adapter` (made with the same configuration) from the checkpoint `bytes` (`label`
/// names it in errors) and returns the run's state.
pub fn load(bytes: Vec<u8>, label: &str, adapter: &mut dyn Method) -> Result<TrainState, Error> {
    let bad = |message: String| Error::Adapter { path: label.to_string(), message };
    let file = SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)).map_err(|e| bad(e.to_string()))?;
    let position = file
        .metadata()
        .iter()
        .find(|(k, _)| k == "adaptkit_train_state")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| bad("not an adaptkit training checkpoint".into()))?;
    let position: serde_json::Value = serde_json::from_str(&position).map_err(|e| bad(e.to_string()))?;
    // Checkpoints from before methods were recorded are LoRA's.
    let method = position["method"].as_str().unwrap_or("lora");
    if method != adapter.kind().name() {
        return Err(bad(format!(
            "the checkpoint is of a {method} run; this run trains {}",
            adapter.kind().name()
        )));
    }
    let number =
        |key: &str| position[key].as_u64().ok_or_else(|| bad(format!("state field '{key}' is missing")));
    let tensor = |name: &str, like: &Tensor<2>| -> Result<Tensor<2>, Error> {
        let values =
            file.tensor_f32(name).map_err(|_| bad(format!("no tensor '{name}': another adapter shape?")))?;
        if values.len() != like.dims().iter().product::<usize>() {
            return Err(bad(format!("tensor '{name}' does not fit this adapter")));
        }
        Ok(Tensor::from_data(TensorData::new(values, like.dims()), &like.device()))
    };
    let mut optimizer = AdamW::new(position["weight_decay"].as_f64().unwrap_or(0.0) as f32);
    optimizer.steps = number("optimizer_steps")? as i32;
    let mut moments = BTreeMap::new();
    for (name, param) in adapter.parameters_mut() {
        let value = tensor(&format!("adapter/{name}"), param)?;
        if file.tensor(&format!("m/{name}")).is_some() {
            let inner = value.clone().inner();
            let (m, v) = (tensor(&format!("m/{name}"), &inner)?, tensor(&format!("v/{name}"), &inner)?);
            moments.insert(name.clone(), (m.inner(), v.inner()));
        }
        *param = value.require_grad();
    }
    optimizer.moments = moments;
    let order = position["order"]
        .as_array()
        .ok_or_else(|| bad("state field 'order' is missing".into()))?
        .iter()
        .map(|v| v.as_u64().map(|i| i as usize).ok_or_else(|| bad("bad window index".into())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrainState {
        step: number("step")? as usize,
        epoch: number("epoch")?,
        next: number("next")? as usize,
        order,
        optimizer,
        planned_steps: position["planned_steps"].as_u64().unwrap_or(0) as usize,
    })
}
