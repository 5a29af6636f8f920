//! Training checkpoints: the adapter, the optimizer's moments and the run's position, in one
//! safetensors blob (state in its metadata) that the run's [`Store`](crate::store::Store)
//! writes whole, so a run killed at any moment leaves either the previous checkpoint or the new
//! one, never half of one.
//!
//! A checkpoint is sealed with the SHA-256 of the whole file (its own field zeroed while
//! hashing), so a damaged or edited one is refused rather than resumed into a degraded adapter;
//! and it carries the settings of its run (what shapes the adapter and the order of the data),
//! so a resume with other settings is refused naming the one that differs.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{AdamW, TrainState};
use crate::adapt::Method;
use crate::bytes::SharedBytes;
use crate::error::Error;
use crate::format::patch_file::hex;
use crate::format::safetensors::{safetensors_to_bytes, Dtype, SafetensorsFile};
use crate::model::linear::read_f32;

/// The store key of a run's checkpoint.
pub const KEY: &str = "checkpoint.safetensors";

/// The metadata field of the run's state.
const STATE: &str = "adaptkit_train_state";

/// The metadata field of the file's SHA-256.
const CHECKSUM: &str = "adaptkit_sha256";

/// The checksum's value while the file is hashed.
const UNSEALED: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The checkpoint of `adapter` at `state` in a run of `settings` (async: the tensors are read
/// back from the device).
pub async fn to_bytes(adapter: &dyn Method, state: &TrainState, settings: &Value) -> Result<Vec<u8>, Error> {
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
        "tokens": state.tokens,
        "train_loss": state.train_loss,
        "history": state.history,
        "method": adapter.kind().name(),
        "settings": settings,
    })
    .to_string();
    let mut bytes = safetensors_to_bytes(&tensors, &[(STATE, &position), (CHECKSUM, UNSEALED)])?;
    let at =
        checksum_at(&bytes, UNSEALED).ok_or_else(|| Error::Backend("checkpoint header not sealed".into()))?;
    let digest = hex(&Sha256::digest(&bytes));
    bytes[at..at + UNSEALED.len()].copy_from_slice(digest.as_bytes());
    Ok(bytes)
}

/// Where the checksum `value` sits in the header of safetensors `bytes`.
fn checksum_at(bytes: &[u8], value: &str) -> Option<usize> {
    let header_len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(header_len)?)?;
    let field = format!("\"{CHECKSUM}\":\"{value}\"");
    let start = header.windows(field.len()).position(|w| w == field.as_bytes())?;
    Some(8 + start + field.len() - 1 - value.len())
}

/// Restores `adapter` (made with the same configuration) from the checkpoint `bytes` (`label`
/// names it in errors) of a run of `settings`, and returns the run's state. Refused: a
/// checkpoint that fails its checksum, one of a run with other settings (naming the first that
/// differs), and one holding a value that is not finite.
pub fn load(
    bytes: Vec<u8>,
    label: &str,
    adapter: &mut dyn Method,
    settings: &Value,
) -> Result<TrainState, Error> {
    let bad = |message: String| Error::Adapter { path: label.to_string(), message };
    let mut sealed = bytes.clone();
    let file = SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)).map_err(|e| bad(e.to_string()))?;
    let field = |key: &str| file.metadata().iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let position = field(STATE).ok_or_else(|| bad("not an adaptkit training checkpoint".into()))?;
    let checksum = field(CHECKSUM).ok_or_else(|| {
        bad("the checkpoint has no checksum (written by an adaptkit before 0.2): it cannot be trusted; start the run again".into())
    })?;
    let at = checksum_at(&sealed, &checksum).filter(|_| checksum.len() == UNSEALED.len());
    let intact = at.is_some_and(|at| {
        sealed[at..at + UNSEALED.len()].copy_from_slice(UNSEALED.as_bytes());
        hex(&Sha256::digest(&sealed)) == checksum
    });
    if !intact {
        return Err(bad(
            "the checkpoint fails its checksum: the file is damaged or was edited; it was not resumed (start the run again, or resume from a copy)".into(),
        ));
    }
    let position: Value = serde_json::from_str(&position).map_err(|e| bad(e.to_string()))?;
    let method = position["method"].as_str().unwrap_or_default();
    if method != adapter.kind().name() {
        return Err(bad(format!(
            "the checkpoint is of a {method} run; this run trains {}",
            adapter.kind().name()
        )));
    }
    if let Some(difference) = first_difference("", &position["settings"], settings) {
        return Err(bad(format!(
            "the checkpoint's run was started with {difference}: resume with the same settings, or train into another directory"
        )));
    }
    let count = |key: &str| -> Result<u64, Error> {
        match &position[key] {
            Value::Null => Err(bad(format!("state field '{key}' is missing"))),
            value => {
                value.as_u64().ok_or_else(|| bad(format!("state field '{key}' is {value}, not a count")))
            }
        }
    };
    let tensor = |name: &str, like: &Tensor<2>| -> Result<Tensor<2>, Error> {
        if file.tensor(name).is_none() {
            return Err(bad(format!("no tensor '{name}': the checkpoint is of another adapter shape")));
        }
        let values = file.tensor_f32(name).map_err(|e| bad(e.to_string()))?;
        if values.len() != like.dims().iter().product::<usize>() {
            return Err(bad(format!("tensor '{name}' does not fit this adapter")));
        }
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("tensor '{name}' holds {} at index {at}", values[at])));
        }
        Ok(Tensor::from_data(TensorData::new(values, like.dims()), &like.device()))
    };
    let weight_decay = position["weight_decay"]
        .as_f64()
        .ok_or_else(|| bad("state field 'weight_decay' is missing".into()))?;
    let mut optimizer = AdamW::new(weight_decay as f32);
    optimizer.steps = i32::try_from(count("optimizer_steps")?)
        .map_err(|_| bad("state field 'optimizer_steps' is out of range".into()))?;
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
        .map(|v| {
            v.as_u64()
                .map(|i| i as usize)
                .ok_or_else(|| bad(format!("window index {v} in 'order' is not a count")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrainState {
        step: count("step")? as usize,
        epoch: count("epoch")?,
        next: count("next")? as usize,
        order,
        optimizer,
        planned_steps: count("planned_steps")? as usize,
        tokens: count("tokens")? as usize,
        train_loss: position["train_loss"].as_f64().map(|l| l as f32),
        history: position["history"].clone(),
    })
}

/// The first setting (by path) whose value in `saved` differs from `wanted`, as
/// "`name` = saved (this run: wanted)".
fn first_difference(path: &str, saved: &Value, wanted: &Value) -> Option<String> {
    if let (Value::Object(saved), Value::Object(wanted)) = (saved, wanted) {
        let keys: std::collections::BTreeSet<&String> = saved.keys().chain(wanted.keys()).collect();
        return keys.into_iter().find_map(|key| {
            let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            first_difference(
                &path,
                saved.get(key).unwrap_or(&Value::Null),
                wanted.get(key).unwrap_or(&Value::Null),
            )
        });
    }
    (saved != wanted).then(|| format!("{path} = {saved} (this run: {wanted})"))
}
