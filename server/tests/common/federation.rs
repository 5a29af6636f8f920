//! Helpers for tests that talk to a sync server over HTTP (server/tests and cli/tests): the
//! API as blocking calls, and synthetic LoRA adapters and updates, so no model is needed.
#![allow(dead_code)]

use std::time::Duration;

use adaptkit::federated::api::{Enrolled, NewTask, PatchView, RoundView, TaskCreated, UploadReceipt};
use adaptkit::federated::{update, Rule, TaskSpec, TrainingSettings};
use adaptkit::patch::{DenseType, Fingerprint, Patch, Values};
use adaptkit::sync::client::Response;
use adaptkit::sync::Client;
use adaptkit::Error;
use serde_json::{json, Value};

/// A server's API with the operator's token.
pub struct Api {
    pub client: Client,
    pub operator: String,
}

impl Api {
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&[u8], &str)>,
    ) -> Result<Response, Error> {
        self.client.request(method, path, token, body)
    }

    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> T {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let r =
            self.call(method, path, Some(token), bytes.as_deref().map(|b| (b, "application/json"))).unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn create_task(&self, spec: TaskSpec) -> TaskCreated {
        self.json(
            "POST",
            "/v1/tasks",
            &self.operator.clone(),
            Some(serde_json::to_value(NewTask { spec }).unwrap()),
        )
    }

    pub fn publish(&self, task: &str, patch: &Patch) -> Result<PatchView, Error> {
        let r = self.call(
            "POST",
            &format!("/v1/tasks/{task}/patches"),
            Some(&self.operator),
            Some((&patch.to_bytes(None), "application/octet-stream")),
        )?;
        Ok(serde_json::from_slice(&r.body).unwrap())
    }

    pub fn enrol(&self, created: &TaskCreated) -> Enrolled {
        let body = serde_json::to_vec(&json!({"name": "test device"})).unwrap();
        let r = self
            .call(
                "POST",
                &format!("/v1/tasks/{}/devices", created.task),
                Some(&created.enrol_token),
                Some((&body, "application/json")),
            )
            .unwrap();
        serde_json::from_slice(&r.body).unwrap()
    }

    pub fn global(&self, task: &str, token: &str, base: &str) -> (Patch, u64, String) {
        let r = self.call("GET", &format!("/v1/tasks/{task}/global?base={base}"), Some(token), None).unwrap();
        (Patch::from_bytes(&r.body, "global").unwrap(), r.round.unwrap(), r.etag.unwrap())
    }

    pub fn upload(&self, task: &str, round: u64, token: &str, bytes: &[u8]) -> Result<UploadReceipt, Error> {
        let r = self.call(
            "PUT",
            &format!("/v1/tasks/{task}/rounds/{round}/update"),
            Some(token),
            Some((bytes, "application/octet-stream")),
        )?;
        Ok(serde_json::from_slice(&r.body).unwrap())
    }

    pub fn round(&self, task: &str, round: u64) -> RoundView {
        self.json("GET", &format!("/v1/tasks/{task}/rounds/{round}"), &self.operator.clone(), None)
    }

    /// Waits until round `round` is closed.
    pub fn closed(&self, task: &str, round: u64) -> RoundView {
        for _ in 0..100 {
            let view = self.round(task, round);
            if view.status == "closed" {
                return view;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("round {round} of {task} did not close");
    }
}

/// The synthetic model's size: layers, width, and the adapters' rank.
#[derive(Clone, Copy)]
pub struct Size {
    pub layers: usize,
    pub d: usize,
    pub rank: usize,
}

pub const SMALL: Size = Size { layers: 2, d: 16, rank: 4 };

pub fn fingerprint(id: &str, norm: f32) -> Fingerprint {
    fingerprint_of(id, norm, SMALL)
}

pub fn fingerprint_of(id: &str, norm: f32, size: Size) -> Fingerprint {
    let Size { layers, d, .. } = size;
    Fingerprint {
        id: id.repeat(64 / id.len()),
        architecture: "llama".into(),
        layers,
        d_model: d,
        heads: 2,
        kv_heads: 2,
        head_dim: None,
        ffn_dim: 2 * d,
        vocab_size: 50,
        weights_sha256: id.into(),
        tokenizer_sha256: "t".into(),
        projection_norms: vec![[norm; 7]; layers],
    }
}

/// [`lora_of`] the small size.
pub fn lora(seed: u64, freeze_a: bool) -> (Value, Vec<Values>) {
    lora_of(seed, freeze_a, SMALL)
}

/// A LoRA of `size` on q and v of every layer: `A` from `seed`, `B` zero.
pub fn lora_of(seed: u64, freeze_a: bool, size: Size) -> (Value, Vec<Values>) {
    let Size { layers, d, rank } = size;
    let mut config = json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 8.0,
        "target_modules": ["q_proj", "v_proj"], "bias": "none"});
    if freeze_a {
        config["adaptkit_freeze_a"] = json!(true);
    }
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let mut tensors = Vec::new();
    for layer in 0..layers {
        for proj in ["q_proj", "v_proj"] {
            let name =
                |w: &str| format!("base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{w}.weight");
            tensors.push(Values {
                name: name("A"),
                shape: vec![rank, d],
                values: (0..rank * d).map(|_| next()).collect(),
            });
            tensors.push(Values { name: name("B"), shape: vec![d, rank], values: vec![0.0; d * rank] });
        }
    }
    (config, tensors)
}

pub fn spec(rule: Rule, min: usize, max: usize) -> TaskSpec {
    TaskSpec {
        name: "test".into(),
        rule,
        min_clients: min,
        max_clients: max,
        round_seconds: 3600,
        max_rounds: None,
        privacy: None,
        secure_aggregation: false,
        training: TrainingSettings { steps: 10, batch: 2, seq: 16, lr: None, density: None },
    }
}

/// A device's update: `delta` times a pattern on every sent tensor, as a patch for `base`.
pub fn make_update(
    global: &Patch,
    rule: Rule,
    round: u64,
    digest: &str,
    scale: f32,
    tokens: u64,
) -> (Patch, Vec<Values>) {
    let values = global.values().unwrap();
    let trained: Vec<Values> = values
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if update::is_sent(rule, &v.name) {
                v.values
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x += scale * ((i % 7) as f32 - 3.0) / 10.0);
            }
            v
        })
        .collect();
    let delta = update::delta(rule, &values, &trained).unwrap();
    let training = json!({"round": round, "global": digest, "tokens": tokens});
    let patch =
        Patch::new(global.config.clone(), &delta, global.base.clone(), DenseType::F32, Some(training))
            .unwrap();
    (patch, trained)
}

pub fn code(e: Error) -> (u16, String) {
    match e {
        Error::Sync { status, code, .. } => (status.unwrap_or(0), code.unwrap_or_default()),
        other => panic!("not a server refusal: {other}"),
    }
}

pub fn setup(server: &Api, rule: Rule, min: usize, max: usize) -> (TaskCreated, Fingerprint) {
    let created = server.create_task(spec(rule, min, max));
    let base = fingerprint("ab", 1.0);
    let (config, tensors) = lora(7, rule == Rule::Ffa);
    let patch = Patch::new(config, &tensors, base.clone(), DenseType::F32, None).unwrap();
    server.publish(&created.task, &patch).unwrap();
    (created, base)
}
