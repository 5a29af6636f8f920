//! What an operator sets up for a federated task, and what its devices train with. The adapter
//! itself (method, rank, targets) is the task's first shared adapter; this is everything else.

use serde::{Deserialize, Serialize};

use super::{Privacy, Rule};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub rule: Rule,
    /// A round closes at its deadline only with at least this many updates (else it waits
    /// another period); with privacy, also the number of noise shares a sum is sure to hold.
    pub min_clients: usize,
    /// A round closes as soon as it has this many updates; later ones wait for the next.
    pub max_clients: usize,
    /// How long a round stays open.
    pub round_seconds: u64,
    /// The task finishes after this many rounds (none: it runs until stopped).
    pub max_rounds: Option<u64>,
    pub privacy: Option<Privacy>,
    /// The server sees only the sum of each round's updates (secure aggregation: pairwise
    /// masks, Shamir-shared so that devices may drop out after masking). Needs a linear rule;
    /// every update then weighs the same.
    pub secure_aggregation: bool,
    pub training: TrainingSettings,
}

/// The local training every device of a task runs each round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    pub steps: usize,
    pub batch: usize,
    pub seq: usize,
    /// The peak learning rate (none: the method's default).
    pub lr: Option<f32>,
    /// Upload the update ComPEFT-coded at this density (none: dense f16).
    pub density: Option<f64>,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            rule: Rule::FedAvg,
            min_clients: 2,
            max_clients: 100,
            round_seconds: 600,
            max_rounds: None,
            privacy: None,
            secure_aggregation: false,
            training: TrainingSettings::default(),
        }
    }
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self { steps: 20, batch: 4, seq: 128, lr: None, density: None }
    }
}

/// The longest task name, in bytes.
const MAX_NAME: usize = 200;

impl TaskSpec {
    /// Refuses settings out of range, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > MAX_NAME {
            return Err(format!("name: must be 1 to {MAX_NAME} bytes"));
        }
        if self.min_clients == 0 || self.max_clients < self.min_clients {
            return Err(format!(
                "min_clients = {}, max_clients = {}: need 1 ≤ min_clients ≤ max_clients",
                self.min_clients, self.max_clients
            ));
        }
        if self.round_seconds == 0 {
            return Err("round_seconds: must be at least 1".into());
        }
        if self.max_rounds == Some(0) {
            return Err("max_rounds: must be at least 1".into());
        }
        let t = &self.training;
        if t.steps == 0 || t.batch == 0 || t.seq < 2 {
            return Err(format!(
                "training: steps = {}, batch = {}, seq = {}: need steps, batch ≥ 1 and seq ≥ 2",
                t.steps, t.batch, t.seq
            ));
        }
        if let Some(lr) = t.lr.filter(|lr| !(*lr > 0.0 && lr.is_finite())) {
            return Err(format!("training.lr = {lr}: must be positive"));
        }
        if let Some(d) = t.density.filter(|d| !(*d > 0.0 && *d <= 1.0)) {
            return Err(format!("training.density = {d}: must be in (0, 1]"));
        }
        if self.secure_aggregation {
            if !self.rule.is_linear() {
                return Err(format!(
                    "secure aggregation needs a rule the server applies to the sum of the updates (ffa), not '{}'",
                    self.rule.name()
                ));
            }
            if self.min_clients < 2 || self.max_clients > 255 {
                return Err("secure aggregation needs 2 ≤ min_clients and max_clients ≤ 255".into());
            }
            if t.density.is_some() {
                return Err("secure aggregation sums dense updates; leave training.density unset".into());
            }
        }
        if let Some(privacy) = &self.privacy {
            privacy.check()?;
            if !self.rule.is_linear() {
                return Err(format!(
                    "privacy needs a rule the server applies to the sum of the updates (ffa), not '{}'",
                    self.rule.name()
                ));
            }
            if t.density.is_some() {
                return Err("privacy: noised updates are dense; leave training.density unset".into());
            }
        }
        Ok(())
    }
}
