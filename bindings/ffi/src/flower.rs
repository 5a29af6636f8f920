//! The Flower node for Kotlin and Swift: [`Model::join_flower`] joins a SuperLink and answers
//! its messages until cancelled (or `max_messages`), as `adaptkit flower-node` does.

use std::sync::Arc;

use adaptkit::flower;

use crate::error::AdaptError;
use crate::model::Model;
use crate::train::{TrainEvent, TrainingData};
use crate::worker::{on_worker, token_of, CancelToken};

#[derive(uniffi::Record, Clone, Debug)]
pub struct FlowerOptions {
    /// `http://host:port` (or `https://`) of the SuperLink.
    pub superlink: String,
    /// Where the node keeps its key, checkpoints and, with `record`, what it sent (an app's
    /// files directory).
    pub directory: String,
    /// Seconds between heartbeats (10-1800): the SuperLink drops a node silent for twice this.
    #[uniffi(default = 30.0)]
    pub heartbeat_interval_s: f64,
    /// Return after answering this many messages (default: until cancelled).
    #[uniffi(default = None)]
    pub max_messages: Option<u32>,
    /// Keep every update sent (a PEFT directory per round) under `directory/sent`.
    #[uniffi(default = false)]
    pub record: bool,
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct FlowerMetric {
    pub name: String,
    pub value: f64,
}

/// One answered message.
#[derive(uniffi::Record, Clone, Debug)]
pub struct FlowerReply {
    pub run: u64,
    /// `train` or `evaluate` (or what the SuperLink sent).
    pub kind: String,
    pub round: Option<u64>,
    /// `update`, `evaluation` or `error`.
    pub outcome: String,
    pub error: Option<String>,
    pub metrics: Vec<FlowerMetric>,
    /// Bytes sent, and what the update would have been uncoded.
    pub bytes: u64,
    pub dense_bytes: u64,
}

impl From<&flower::Reply> for FlowerReply {
    fn from(r: &flower::Reply) -> Self {
        Self {
            run: r.run,
            kind: r.kind.clone(),
            round: r.round,
            outcome: r.outcome.into(),
            error: r.error.clone(),
            metrics: r
                .metrics
                .iter()
                .map(|(name, value)| FlowerMetric { name: name.clone(), value: *value })
                .collect(),
            bytes: r.bytes,
            dense_bytes: r.dense_bytes,
        }
    }
}

#[derive(uniffi::Enum, Clone, Debug)]
pub enum FlowerEvent {
    Online {
        node_id: u64,
    },
    Received {
        run: u64,
        kind: String,
        round: Option<u64>,
        bytes: u64,
    },
    Training {
        event: TrainEvent,
    },
    Replied {
        reply: FlowerReply,
    },
    /// Something the node survived (a dropped message, a SuperLink that was away).
    Problem {
        message: String,
    },
}

#[uniffi::export(with_foreign)]
pub trait FlowerListener: Send + Sync {
    fn on_event(&self, event: FlowerEvent);
}

#[uniffi::export]
impl Model {
    /// Joins a Flower federation as a node: trains the adapters it is sent on `data` (held out:
    /// `data.eval_text`, also what `evaluate` messages are answered on) and returns the updates.
    /// Runs until `cancel` (or the awaiting coroutine or task is cancelled) or `max_messages`.
    pub async fn join_flower(
        &self,
        options: FlowerOptions,
        data: TrainingData,
        listener: Option<Arc<dyn FlowerListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Vec<FlowerReply>, AdaptError> {
        let model = self.open_model()?;
        let token = token_of(&cancel);
        on_worker(token.clone(), move || {
            let mut node_options =
                flower::NodeOptions::new(&options.superlink, std::path::Path::new(&options.directory));
            node_options.heartbeat_interval = options.heartbeat_interval_s;
            node_options.record = options.record;
            let node_data = flower::NodeData { train: data.runtime(), held_out: data.eval_text.clone() };
            let emit = |event: FlowerEvent| {
                if let Some(listener) = &listener {
                    listener.on_event(event);
                }
            };
            let session = flower::join(
                node_options,
                &model,
                &node_data,
                options.max_messages.map(|m| m as usize),
                &token,
                &mut |event| match event {
                    flower::NodeEvent::Online { node_id } => emit(FlowerEvent::Online { node_id }),
                    flower::NodeEvent::Received { run, kind, round, bytes } => {
                        emit(FlowerEvent::Received { run, kind: kind.into(), round, bytes })
                    }
                    flower::NodeEvent::Training(e) => {
                        if let Some(event) = TrainEvent::of(e) {
                            emit(FlowerEvent::Training { event })
                        }
                    }
                    flower::NodeEvent::Replied(r) => emit(FlowerEvent::Replied { reply: r.into() }),
                    flower::NodeEvent::Problem(m) => emit(FlowerEvent::Problem { message: m.into() }),
                },
            );
            Ok(session?.replies.iter().map(FlowerReply::from).collect())
        })
        .await
    }
}
