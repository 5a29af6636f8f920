//! The operator's side of a sync server: create a task with its first shared adapter, register
//! an updated base, close a round. Every face that administers tasks calls these.

use serde::de::DeserializeOwned;

use super::client::{sync_error, to_json, Client, Response};
use crate::error::Error;
use crate::federated::api::{BaseRegistered, NewTask, PatchView, RoundView, TaskCreated};
use crate::federated::{Rule, TaskSpec};
use crate::patch::DenseType;
use crate::runtime::{Adapter, MethodKind, MethodOptions, Model, TrainConfig};

/// A task's first shared adapter.
pub enum FirstAdapter {
    /// One the operator has (loaded for the task's base).
    Given(Adapter),
    /// A new one of `method` (under FFA-LoRA its `A` is frozen), its random start from `seed`.
    New { method: MethodKind, options: MethodOptions, seed: u64 },
}

pub struct Operator {
    pub client: Client,
    pub token: String,
}

impl Operator {
    fn json<T: DeserializeOwned>(&self, response: Response) -> Result<T, Error> {
        serde_json::from_slice(&response.body).map_err(|e| {
            sync_error(self.client.server(), Some(response.status), format!("unexpected answer: {e}"))
        })
    }

    /// Creates a task on `model`'s base and publishes its first adapter: round 1 opens.
    pub fn create_task(
        &self,
        model: &Model,
        spec: TaskSpec,
        first: FirstAdapter,
    ) -> Result<(TaskCreated, PatchView), Error> {
        spec.check().map_err(Error::InvalidArgument)?;
        let adapter = match first {
            FirstAdapter::Given(adapter) => adapter,
            FirstAdapter::New { method, mut options, seed } => {
                if spec.rule == Rule::Ffa {
                    options.freeze_a = Some(true);
                }
                model.new_adapter(&TrainConfig { method, options, seed, ..TrainConfig::default() })?
            }
        };
        let patch = adapter.to_patch(model.fingerprint()?, DenseType::F16)?;
        let body = to_json(&NewTask { spec });
        let created: TaskCreated = self.json(self.client.request(
            "POST",
            "/v1/tasks",
            Some(&self.token),
            Some((&body, "application/json")),
        )?)?;
        let path = format!("/v1/tasks/{}/patches", created.task);
        let bytes = patch.to_bytes(None);
        let published = self.json(self.client.request(
            "POST",
            &path,
            Some(&self.token),
            Some((&bytes, "application/octet-stream")),
        )?)?;
        Ok((created, published))
    }

    /// Registers `model` as an updated base of `task`: the shared adapter is ported to it.
    pub fn register_base(&self, task: &str, model: &Model) -> Result<BaseRegistered, Error> {
        let body = to_json(&model.fingerprint()?);
        let path = format!("/v1/tasks/{task}/bases");
        self.json(self.client.request("POST", &path, Some(&self.token), Some((&body, "application/json")))?)
    }

    /// Closes `round` now (it needs its minimum of updates).
    pub fn close_round(&self, task: &str, round: u64) -> Result<RoundView, Error> {
        let path = format!("/v1/tasks/{task}/rounds/{round}/close");
        self.json(self.client.request("POST", &path, Some(&self.token), None)?)
    }
}
