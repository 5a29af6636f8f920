//! The node's life on a SuperLink: register its key, activate, heartbeat from a thread of its
//! own (training takes minutes; a node silent for twice its interval is dropped from the round),
//! pull one message at a time with every object checked against its id, answer `train` by
//! training the received adapter on this device's data, `evaluate` with the held-out loss, and
//! anything it cannot do (another base, another message type, bad records) with an error reply
//! that says why — never with an update trained on the wrong base.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::fleet::Fleet;
use super::identity::NodeKey;
use super::objects::{self, Body, RecordDict};
use super::proto;
use super::records::{self, Instruction, Metric, ARRAYS, METRICS};
use crate::adapt::AdapterSet;
use crate::control::CancelToken;
use crate::error::Error;
use crate::http::Retry;
use crate::patch::compress::compress;
use crate::patch::{DenseType, Patch, Values};
use crate::runtime::{
    AdapterSource, Dataset, FileStore, LoadOptions, Model, TrainConfig, TrainEvent, TrainingData,
};
use crate::train::data::Format;

/// Flower's error codes a node sends (`flwr.common.constant.ErrorCode`).
const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;

/// How a node connects and behaves.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// `http://host:port` of the SuperLink.
    pub superlink: String,
    /// Where the node keeps its key (`node.key`), checkpoints and, with `record`, what it sent.
    pub dir: PathBuf,
    /// Seconds between heartbeats the SuperLink is promised (10-1800; it drops the node after
    /// twice this without one).
    pub heartbeat_interval: f64,
    /// How long to wait before asking again when there is no message.
    pub poll: Duration,
    pub retry: Retry,
    /// Keep every update sent (a PEFT directory per round, with its metrics) under `dir/sent`.
    pub record: bool,
    /// The largest message accepted, in bytes (all its objects together).
    pub max_message_bytes: u64,
}

impl NodeOptions {
    pub fn new(superlink: &str, dir: &Path) -> Self {
        Self {
            superlink: superlink.to_string(),
            dir: dir.to_path_buf(),
            heartbeat_interval: 30.0,
            poll: Duration::from_millis(500),
            retry: Retry {
                attempts: 30,
                first_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(20),
            },
            record: false,
            max_message_bytes: 1 << 30,
        }
    }
}

/// What the node's data is: the text it trains on and the held-out text it evaluates on.
pub struct NodeData {
    pub train: TrainingData,
    /// Held-out text for `evaluate` (and the training run's evaluation).
    pub held_out: Option<String>,
}

/// What happened, for the caller's log.
pub enum NodeEvent<'a> {
    /// Activated on the SuperLink as `node_id`.
    Online {
        node_id: u64,
    },
    /// A message arrived.
    Received {
        run: u64,
        kind: &'a str,
        round: Option<u64>,
        bytes: u64,
    },
    Training(TrainEvent<'a>),
    /// A reply was stored on the SuperLink.
    Replied(&'a Reply),
    /// Something went wrong that the node survives (a dropped message, a refused reply, a
    /// SuperLink that was away): one line.
    Problem(&'a str),
}

/// What one handled message led to.
#[derive(Clone, Debug, Serialize)]
pub struct Reply {
    pub run: u64,
    pub kind: String,
    pub round: Option<u64>,
    /// `update`, `evaluation` or `error` (with `error` saying why).
    pub outcome: &'static str,
    pub error: Option<String>,
    pub metrics: Vec<(String, f64)>,
    /// Bytes of the reply's objects, and of the same reply's arrays uncoded (they differ when the
    /// update was ComPEFT-coded).
    pub bytes: u64,
    pub dense_bytes: u64,
}

/// What a node's session did: its id on the SuperLink and every message it answered.
#[derive(Clone, Debug, Serialize)]
pub struct Session {
    pub node_id: u64,
    pub replies: Vec<Reply>,
}

/// A node's whole session, as every face runs it: connect, answer messages until `cancel` or
/// `max_messages`, leave.
pub fn join(
    options: NodeOptions,
    model: &Model,
    data: &NodeData,
    max_messages: Option<usize>,
    cancel: &CancelToken,
    on_event: &mut (dyn FnMut(NodeEvent) + Send),
) -> Result<Session, Error> {
    let node = FlowerNode::connect(options)?;
    let replies = node.run(model, data, max_messages, cancel, on_event);
    let node_id = node.node_id();
    node.close();
    Ok(Session { node_id, replies: replies? })
}

pub struct FlowerNode {
    fleet: Arc<Fleet>,
    node_id: u64,
    options: NodeOptions,
    stop: Arc<AtomicBool>,
    heartbeat_trouble: Arc<Mutex<Option<Error>>>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

impl FlowerNode {
    /// Registers (first time) and activates the node, and starts its heartbeat.
    pub fn connect(options: NodeOptions) -> Result<Self, Error> {
        if !(10.0..=1800.0).contains(&options.heartbeat_interval) {
            return Err(Error::option(
                "heartbeat_interval",
                options.heartbeat_interval,
                "must be 10-1800 seconds",
            ));
        }
        let key = NodeKey::load_or_create(&options.dir.join("node.key"))?;
        let public_key = key.public_pem().to_vec();
        let fleet = Arc::new(Fleet::new(&options.superlink, key, options.retry));
        // Known already (412, code 23: a restart with the kept key), or registered by the
        // operator (code 2001: the SuperLink authenticates nodes): go on to activate.
        match fleet.call::<_, proto::RegisterNodeFleetResponse>(
            "register-node",
            &proto::RegisterNodeFleetRequest { public_key: public_key.clone() },
        ) {
            Ok(_) => {}
            Err(e) if matches!(e.sync_code(), Some("23") | Some("2001")) => {}
            Err(e) => return Err(e),
        }
        let node_id = activate(&fleet, &public_key, options.heartbeat_interval)?;
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat_trouble = Arc::new(Mutex::new(None));
        let heartbeat = {
            let (fleet, stop, trouble) = (fleet.clone(), stop.clone(), heartbeat_trouble.clone());
            let interval = options.heartbeat_interval;
            std::thread::Builder::new()
                .name("flower-heartbeat".into())
                .spawn(move || heartbeat_loop(&fleet, node_id, interval, &stop, &trouble))
                .map_err(|e| Error::InvalidArgument(format!("starting the heartbeat thread: {e}")))?
        };
        Ok(Self { fleet, node_id, options, stop, heartbeat_trouble, heartbeat: Some(heartbeat) })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Answers messages until `cancel` is set, `max_messages` have been answered, or the
    /// SuperLink no longer knows this node (an error). A failure with one message is reported
    /// and the node goes on.
    pub fn run(
        &self,
        model: &Model,
        data: &NodeData,
        max_messages: Option<usize>,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(NodeEvent) + Send),
    ) -> Result<Vec<Reply>, Error> {
        on_event(NodeEvent::Online { node_id: self.node_id });
        let mut replies = Vec::new();
        while !cancel.is_cancelled() && max_messages.is_none_or(|m| replies.len() < m) {
            if let Some(e) = self.heartbeat_trouble.lock().map(|mut t| t.take()).unwrap_or(None) {
                if e.sync_status() == Some(401) {
                    return Err(e);
                }
                on_event(NodeEvent::Problem(&format!("heartbeat: {e}")));
            }
            match self.handle_one(model, data, cancel, on_event) {
                Ok(Some(reply)) => {
                    on_event(NodeEvent::Replied(&reply));
                    replies.push(reply);
                }
                Ok(None) => sleep_unless_cancelled(self.options.poll, cancel),
                Err(Error::Cancelled) => break,
                // The SuperLink does not know this node (any more): nothing to retry.
                Err(e) if e.sync_status() == Some(401) => return Err(e),
                Err(e) => {
                    on_event(NodeEvent::Problem(&e.to_string()));
                    sleep_unless_cancelled(self.options.poll, cancel);
                }
            }
        }
        Ok(replies)
    }

    /// Pulls one message and answers it; `None` when there was none.
    pub fn handle_one(
        &self,
        model: &Model,
        data: &NodeData,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(NodeEvent) + Send),
    ) -> Result<Option<Reply>, Error> {
        let node = Some(proto::Node { node_id: self.node_id });
        let pulled: proto::PullMessagesResponse =
            self.fleet.call("pull-messages", &proto::PullMessagesRequest { node, message_ids: vec![] })?;
        let (Some(header), Some(tree)) = (pulled.messages_list.first(), pulled.message_object_trees.first())
        else {
            return Ok(None);
        };
        let instruction = header.metadata.clone().unwrap_or_default();
        let run = instruction.run_id;
        let (records, bytes) = match self.receive(&instruction, tree, cancel) {
            Ok(received) => received,
            Err(e) => {
                // Tell the ServerApp now rather than leave it waiting for its timeout (unless the
                // SuperLink refused the node or the run, or the node is stopping).
                if !matches!(e, Error::Cancelled) && !matches!(e.sync_status(), Some(401 | 403)) {
                    let reason = proto::Error { code: CLIENT_APP_RAISED_EXCEPTION, reason: e.to_string() };
                    let _ = self.push_reply(&instruction, &Body::Error(reason));
                }
                return Err(e);
            }
        };
        let kind = instruction.message_type.clone();
        let parsed = records::read_instruction(&records);
        let round = parsed.as_ref().ok().and_then(|i| i.round);
        on_event(NodeEvent::Received { run, kind: &kind, round, bytes });
        let answer =
            parsed.map_err(|m| Error::InvalidArgument(format!("the {kind} message: {m}"))).and_then(|i| {
                match kind.split('.').next() {
                    Some("train") => self.train(model, data, &i, run, cancel, on_event),
                    Some("evaluate") => evaluate(model, data, &i, cancel),
                    _ => Err(Error::InvalidArgument(format!(
                        "an adaptkit node answers train and evaluate messages, not '{kind}'"
                    ))),
                }
            });
        let (body, outcome, error, metrics, dense_bytes) = match answer {
            Ok(a) => (Body::Content(a.records), a.outcome, None, a.metrics, a.dense_bytes),
            Err(Error::Cancelled) => return Err(Error::Cancelled),
            Err(e) => {
                let reason = e.to_string();
                (
                    Body::Error(proto::Error { code: CLIENT_APP_RAISED_EXCEPTION, reason: reason.clone() }),
                    "error",
                    Some(reason),
                    Vec::new(),
                    0,
                )
            }
        };
        let sent = self.push_reply(&instruction, &body)?;
        Ok(Some(Reply { run, kind, round, outcome, error, metrics, bytes: sent, dense_bytes }))
    }

    /// The instruction's content: every object pulled and checked, receipt confirmed, inflated.
    fn receive(
        &self,
        instruction: &proto::Metadata,
        tree: &proto::ObjectTree,
        cancel: &CancelToken,
    ) -> Result<(RecordDict, u64), Error> {
        let run = instruction.run_id;
        if tree.object_id != instruction.message_id {
            return Err(self.dropped(
                run,
                format!("message {} came with the tree of {}", instruction.message_id, tree.object_id),
            ));
        }
        let objects = self.pull_objects(run, tree, cancel)?;
        let bytes = objects.values().map(|o| o.len() as u64).sum();
        self.fleet.call::<_, proto::ConfirmMessageReceivedResponse>(
            "confirm-message-received",
            &proto::ConfirmMessageReceivedRequest {
                node: Some(proto::Node { node_id: self.node_id }),
                run_id: run,
                message_object_id: instruction.message_id.clone(),
            },
        )?;
        let (_, body) =
            objects::inflate(&instruction.message_id, &objects).map_err(|m| self.dropped(run, m))?;
        match body {
            Body::Content(records) => Ok((records, bytes)),
            Body::Error(e) => {
                Err(self.dropped(run, format!("an instruction carrying error {}: {}", e.code, e.reason)))
            }
        }
    }

    fn dropped(&self, run: u64, message: String) -> Error {
        Error::InvalidArgument(format!("run {run}: a message was dropped: {message}"))
    }

    /// Every object of `tree`, each checked against its id; an object the sender has not
    /// uploaded yet is asked for again with back-off (up to 10 minutes).
    fn pull_objects(
        &self,
        run: u64,
        tree: &proto::ObjectTree,
        cancel: &CancelToken,
    ) -> Result<HashMap<String, Vec<u8>>, Error> {
        let mut objects = HashMap::new();
        let mut total = 0u64;
        for id in objects::post_order(tree) {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut wait = Duration::from_millis(200);
            let content = loop {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let r: proto::PullObjectResponse = self.fleet.call(
                    "pull-object",
                    &proto::PullObjectRequest {
                        node: Some(proto::Node { node_id: self.node_id }),
                        run_id: run,
                        object_id: id.clone(),
                    },
                )?;
                if !r.object_found {
                    return Err(self.dropped(run, format!("object {id} is unknown to the SuperLink")));
                }
                if r.object_available {
                    break r.object_content;
                }
                if Instant::now() > deadline {
                    return Err(self.dropped(run, format!("object {id} never became available")));
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            };
            if objects::object_id(&content) != id {
                return Err(self.dropped(run, format!("object {id} does not match its id")));
            }
            objects::head(&content).map_err(|m| self.dropped(run, format!("object {id}: {m}")))?;
            total += content.len() as u64;
            if total > self.options.max_message_bytes {
                return Err(self
                    .dropped(run, format!("the message exceeds {} bytes", self.options.max_message_bytes)));
            }
            objects.insert(id, content);
        }
        Ok(objects)
    }

    /// Pushes the reply to `instruction` and the objects the SuperLink asks for; the bytes sent.
    fn push_reply(&self, instruction: &proto::Metadata, body: &Body) -> Result<u64, Error> {
        let now = unix_seconds();
        let ttl = instruction.created_at + instruction.ttl - now;
        if ttl <= 0.0 {
            return Err(self
                .dropped(instruction.run_id, "its time to live ran out before the reply was ready".into()));
        }
        let metadata = proto::Metadata {
            run_id: instruction.run_id,
            message_id: String::new(),
            src_node_id: instruction.dst_node_id,
            dst_node_id: instruction.src_node_id,
            reply_to_message_id: instruction.message_id.clone(),
            group_id: instruction.group_id.clone(),
            ttl,
            message_type: instruction.message_type.clone(),
            created_at: now,
            src_task_id: instruction.dst_task_id,
            dst_task_id: instruction.src_task_id,
        };
        let (deflated, metadata) = objects::deflate(&metadata, body);
        let header = match body {
            // The header says which it is: empty content, or the error.
            Body::Content(_) => {
                proto::Message { metadata: Some(metadata), content: Some(Default::default()), error: None }
            }
            Body::Error(e) => {
                proto::Message { metadata: Some(metadata), content: None, error: Some(e.clone()) }
            }
        };
        let node = Some(proto::Node { node_id: self.node_id });
        let pushed: proto::PushMessagesResponse = self.fleet.call(
            "push-messages",
            &proto::PushMessagesRequest {
                node: node.clone(),
                messages_list: vec![header],
                message_object_trees: vec![deflated.tree.clone()],
                clientapp_runtime_list: vec![],
            },
        )?;
        if pushed.objects_to_push.is_empty() && !pushed.results.contains_key(&deflated.id) {
            return Err(self.dropped(
                instruction.run_id,
                "the SuperLink did not take the reply (expired or invalid)".into(),
            ));
        }
        let mut bytes = 0;
        for id in &pushed.objects_to_push {
            let content = deflated.objects.get(id).ok_or_else(|| {
                self.dropped(
                    instruction.run_id,
                    format!("the SuperLink asked for object {id}, which the reply does not have"),
                )
            })?;
            let stored: proto::PushObjectResponse = self.fleet.call(
                "push-object",
                &proto::PushObjectRequest {
                    node: node.clone(),
                    run_id: instruction.run_id,
                    object_id: id.clone(),
                    object_content: content.clone(),
                    session_id: pushed.session_id.clone(),
                },
            )?;
            if !stored.stored {
                return Err(self
                    .dropped(instruction.run_id, format!("the SuperLink refused object {id} of the reply")));
            }
            bytes += content.len() as u64;
        }
        Ok(bytes)
    }

    /// Trains the received adapter on this device's data and returns it (or it coded).
    fn train(
        &self,
        model: &Model,
        data: &NodeData,
        instruction: &Instruction,
        run: u64,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(NodeEvent) + Send),
    ) -> Result<Answer, Error> {
        let base = model.fingerprint()?;
        let global = global_patch(model, instruction)?;
        let adapter = model.load_adapter(
            AdapterSource::Patch {
                bytes: global.to_bytes(None),
                label: format!("run {run}: the global adapter"),
            },
            &LoadOptions::default(),
        )?;
        let round = instruction.round.unwrap_or(0);
        let defaults = TrainConfig::default();
        let config = TrainConfig {
            method: adapter.method(),
            steps: instruction.steps.unwrap_or(defaults.steps),
            batch: instruction.batch.unwrap_or(defaults.batch),
            seq: instruction.seq.unwrap_or(defaults.seq),
            lr: instruction.lr,
            // Each round's run is its own: another seed per round and node.
            seed: round ^ self.node_id,
            ..defaults
        };
        let mut training = data.train.clone();
        if let Some(text) = &data.held_out {
            training.eval = Some(Dataset::new("held-out", text.clone(), Format::Text));
        }
        let checkpoints = self.options.dir.join("checkpoints").join(format!("run-{run}-round-{round}"));
        let trained = model.train_from(
            &adapter,
            &training,
            &config,
            &FileStore::new(&checkpoints),
            cancel,
            &mut |e| on_event(NodeEvent::Training(e)),
        )?;
        let _ = std::fs::remove_dir_all(&checkpoints);
        let mine = trained.adapter.to_patch(base.clone(), DenseType::F32)?;
        let tensors = mine.values()?;
        let dense_record = records::arrays(&tensors);
        let dense_bytes = record_bytes(&dense_record);
        let (arrays, sent_tensors) = match instruction.density {
            Some(density) => {
                let coded = compress(&mine, density)?.0.values()?;
                (records::coded_arrays(&coded), coded)
            }
            None => (dense_record, tensors),
        };
        let r = &trained.report;
        let mut metrics = vec![
            ("num-examples", Metric::Int(r.train_windows as i64)),
            ("train-loss", Metric::Float(f64::from(r.train_loss))),
            ("tokens", Metric::Int(r.tokens as i64)),
            ("steps", Metric::Int(r.steps as i64)),
        ];
        if let (Some(before), Some(after)) = (r.eval_loss_before, r.eval_loss) {
            metrics.push(("eval-loss-before", Metric::Float(f64::from(before))));
            metrics.push(("eval-loss", Metric::Float(f64::from(after))));
        }
        let answer = Answer::new(
            vec![(ARRAYS.into(), arrays), (METRICS.into(), records::metrics(&metrics))],
            "update",
            &metrics,
            dense_bytes,
        );
        if self.options.record {
            self.record(model, run, round, &global, &sent_tensors, &answer)?;
        }
        Ok(answer)
    }

    /// Keeps what was sent: the adapter as the server will read it, and the metrics.
    fn record(
        &self,
        model: &Model,
        run: u64,
        round: u64,
        global: &Patch,
        tensors: &[Values],
        answer: &Answer,
    ) -> Result<(), Error> {
        let dir = self.options.dir.join("sent").join(format!("run-{run}")).join(format!("round-{round}"));
        let patch = Patch::new(global.config.clone(), tensors, global.base.clone(), DenseType::F32, None)?;
        let label = format!("the update of round {round}");
        model
            .load_adapter(
                AdapterSource::Patch { bytes: patch.to_bytes(None), label },
                &LoadOptions::default(),
            )?
            .save_dir(&dir)?;
        let json = serde_json::to_vec_pretty(&answer.metrics).unwrap_or_default();
        let path = dir.join("metrics.json");
        crate::format::write_atomic(&path, |w| w.write_all(&json))
            .map_err(|e| Error::Io { path: path.clone(), source: e })
    }

    /// Stops the heartbeat and tells the SuperLink the node is leaving (it stays registered,
    /// so the same key can come back).
    pub fn close(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
            let _ = self.fleet.call_quick::<_, proto::DeactivateNodeResponse>(
                "deactivate-node",
                &proto::DeactivateNodeRequest { node_id: self.node_id },
            );
        }
    }
}

impl Drop for FlowerNode {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// A reply's content and what it reports.
struct Answer {
    records: RecordDict,
    outcome: &'static str,
    metrics: Vec<(String, f64)>,
    dense_bytes: u64,
}

impl Answer {
    fn new(records: RecordDict, outcome: &'static str, metrics: &[(&str, Metric)], dense_bytes: u64) -> Self {
        let metrics = metrics
            .iter()
            .map(|(k, m)| {
                (
                    k.to_string(),
                    match *m {
                        Metric::Int(v) => v as f64,
                        Metric::Float(v) => v,
                    },
                )
            })
            .collect();
        Self { records, outcome, metrics, dense_bytes }
    }
}

fn record_bytes(record: &objects::Record) -> u64 {
    match record {
        objects::Record::Arrays(a) => a.iter().map(|(_, x)| x.data.len() as u64).sum(),
        _ => 0,
    }
}

/// The instruction's adapter as a patch for `model`, refused when it is for another base.
fn global_patch(model: &Model, instruction: &Instruction) -> Result<Patch, Error> {
    let base = model.fingerprint()?;
    if instruction.base != base.id {
        return Err(Error::InvalidArgument(format!(
            "the adapter is for base {}, this node runs {} ({}): not training it",
            instruction.base, base.id, base.architecture
        )));
    }
    Patch::new(instruction.adapter_config.clone(), &instruction.tensors, base, DenseType::F32, None)
}

/// The held-out loss of the instruction's adapter on this device's held-out text.
fn evaluate(
    model: &Model,
    data: &NodeData,
    instruction: &Instruction,
    cancel: &CancelToken,
) -> Result<Answer, Error> {
    let text = data.held_out.as_ref().ok_or_else(|| {
        Error::InvalidArgument("this node has no held-out text to evaluate on (give it one)".into())
    })?;
    let global = global_patch(model, instruction)?;
    let adapter = model.load_adapter(
        AdapterSource::Patch { bytes: global.to_bytes(None), label: "the global adapter".into() },
        &LoadOptions::default(),
    )?;
    let seq = instruction.seq.unwrap_or(TrainConfig::default().seq);
    // The global adapter alone: not whatever the app has attached to the model.
    let mut alone = AdapterSet::new();
    alone.push(adapter.shared(), adapter.info().scale)?;
    let report = model.perplexity_with(text, seq, &alone, cancel, &mut |_, _| {})?;
    let metrics = [
        ("num-examples", Metric::Int(report.tokens as i64)),
        ("eval-loss", Metric::Float(report.perplexity.ln())),
        ("eval-ppl", Metric::Float(report.perplexity)),
    ];
    Ok(Answer::new(vec![(METRICS.into(), records::metrics(&metrics))], "evaluation", &metrics, 0))
}

/// Activates the node; a node the SuperLink still sees online (a restart within twice the
/// heartbeat interval) is retried until it has timed out there.
fn activate(fleet: &Fleet, public_key: &[u8], interval: f64) -> Result<u64, Error> {
    let deadline = Instant::now() + Duration::from_secs_f64(2.0 * interval + 10.0);
    loop {
        let request =
            proto::ActivateNodeRequest { public_key: public_key.to_vec(), heartbeat_interval: interval };
        match fleet.call::<_, proto::ActivateNodeResponse>("activate-node", &request) {
            Ok(r) => return Ok(r.node_id),
            Err(e) if e.sync_code() == Some("2004") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

fn heartbeat_loop(
    fleet: &Fleet,
    node_id: u64,
    interval: f64,
    stop: &AtomicBool,
    trouble: &Mutex<Option<Error>>,
) {
    let request =
        proto::SendNodeHeartbeatRequest { node: Some(proto::Node { node_id }), heartbeat_interval: interval };
    // Well inside the interval, as Flower's node does (0.6-0.75 of it here).
    let mut spread = crate::federated::prg::Prg::from_os().ok();
    loop {
        let fraction =
            0.6 + 0.15 * spread.as_mut().map_or(0.5, |p| (p.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
        let until = Instant::now() + Duration::from_secs_f64(interval * fraction);
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) =
            fleet.call_quick::<_, proto::SendNodeHeartbeatResponse>("send-node-heartbeat", &request)
        {
            if let Ok(mut t) = trouble.lock() {
                *t = Some(e);
            }
        }
    }
}

fn sleep_unless_cancelled(duration: Duration, cancel: &CancelToken) {
    let until = Instant::now() + duration;
    while Instant::now() < until && !cancel.is_cancelled() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}
