//! A device enrolled in a federated task: its enrolment (server, task, its token, the server's
//! signing key) and an offline queue of updates, kept in one directory so that a restart loses
//! nothing. Each round the device pulls the shared adapter (checking the server's signature),
//! trains it on its own data with the task's settings, and pushes its update: clipped and noised
//! on the device when the task is private, queued on disk first, then uploaded with retries; an
//! update still queued is sent by the next `push` or `flush`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::{sync_error, Client, Retry};
use super::secure::{SecureOptions, SecureRound};
use crate::control::CancelToken;
use crate::error::Error;
use crate::federated::api::{RoundView, TaskView, UploadReceipt};
use crate::federated::prg::Prg;
use crate::federated::{privacy, update, TaskSpec};
use crate::format::patch_file::hex;
use crate::format::{write_atomic, write_private};
use crate::patch::keys::parse_public_hex;
use crate::patch::{compress::compress, DenseType, Patch};
use crate::runtime::{
    Adapter, AdapterSource, FileStore, LoadOptions, Model, Store, TrainConfig, TrainEvent, Trained,
    TrainingData,
};

const ENROLMENT: &str = "enrolment.json";
const QUEUE: &str = "queue";
const DECISIONS: &str = "rounds.json";

/// What a device keeps of its enrolment. The token is a secret: the file is readable by its
/// owner only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrolment {
    pub server: String,
    pub task: String,
    pub device: String,
    pub token: String,
    /// The server's patch-signing key (hex), pinned at enrolment.
    pub public_key: String,
}

/// The shared adapter of the open round.
pub struct Pulled {
    pub round: u64,
    pub digest: String,
    pub patch: Patch,
    pub adapter: Adapter,
    pub task: TaskView,
}

/// An update waiting in the queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queued {
    pub task: String,
    pub round: u64,
    pub bytes: u64,
    /// Its L2 norm before clipping (with privacy), for the device's own records.
    pub norm: f64,
    pub clipped: bool,
}

/// What happened to each queued update when the queue was flushed.
#[derive(Clone, Debug, Serialize)]
pub struct Flushed {
    pub round: u64,
    /// `sent`, `duplicate` (the server had it already), `stale` (its round closed first: it
    /// is dropped), `refused` (the server said why, in `message`; it is dropped), or `queued`
    /// (the server could not be reached or kept failing; it stays).
    pub outcome: &'static str,
    pub receipt: Option<UploadReceipt>,
    pub message: Option<String>,
}

/// What one round on this device did (`take_round`).
#[derive(Clone, Serialize)]
pub struct RoundReport {
    pub task: String,
    pub round: u64,
    /// `false` when a private task's sampling left this device out of the round.
    pub sampled: bool,
    pub steps: usize,
    pub train_loss: Option<f32>,
    pub eval_loss_before: Option<f32>,
    pub eval_loss: Option<f32>,
    pub tokens: usize,
    /// What became of this round's update (see [`Flushed::outcome`]).
    pub outcome: Option<&'static str>,
    /// Every queued update sent (or kept) on the way, this round's included.
    pub flushed: Vec<Flushed>,
    /// The adapter this device trained (its own, before aggregation).
    #[serde(skip)]
    pub adapter: Option<Adapter>,
}

pub struct Device {
    dir: PathBuf,
    enrolment: Enrolment,
    client: Client,
    /// How this device takes part in secure rounds.
    pub secure: SecureOptions,
}

impl Device {
    /// Enrols with `server`'s `task` using the operator's enrolment token and keeps the
    /// enrolment in `dir`. With `trusted_key`, the server must sign with that key; otherwise
    /// its key is pinned now (trust on first use).
    pub fn enrol(
        dir: &Path,
        server: &str,
        task: &str,
        enrol_token: &str,
        name: Option<String>,
        trusted_key: Option<[u8; 32]>,
        retry: Retry,
    ) -> Result<Self, Error> {
        let client = Client::new(server, retry);
        let info = client.server_info()?;
        if let Some(key) = trusted_key {
            if info.public_key != hex(&key) {
                return Err(sync_error(
                    client.server(),
                    None,
                    format!("the server signs with {}, not the trusted key {}", info.public_key, hex(&key)),
                ));
            }
        }
        let enrolled = client.enrol(task, enrol_token, name)?;
        if enrolled.public_key != info.public_key {
            return Err(sync_error(
                client.server(),
                None,
                "the server's key changed during enrolment".into(),
            ));
        }
        let enrolment = Enrolment {
            server: client.server().to_string(),
            task: enrolled.task,
            device: enrolled.device,
            token: enrolled.token,
            public_key: enrolled.public_key,
        };
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
        write_private(&dir.join(ENROLMENT), &serde_json::to_vec_pretty(&enrolment).unwrap_or_default())?;
        Ok(Self { dir: dir.to_path_buf(), enrolment, client, secure: SecureOptions::default() })
    }

    /// The device enrolled in `dir`.
    pub fn open(dir: &Path, retry: Retry) -> Result<Self, Error> {
        let path = dir.join(ENROLMENT);
        let bytes = std::fs::read(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
        let enrolment: Enrolment = serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidArgument(format!("{}: not an enrolment ({e}); enrol again", path.display()))
        })?;
        let client = Client::new(&enrolment.server, retry);
        Ok(Self { dir: dir.to_path_buf(), enrolment, client, secure: SecureOptions::default() })
    }

    pub fn enrolment(&self) -> &Enrolment {
        &self.enrolment
    }

    pub fn task(&self) -> Result<TaskView, Error> {
        self.client.task(&self.enrolment.token, &self.enrolment.task)
    }

    pub fn round(&self) -> Result<RoundView, Error> {
        self.client.current_round(&self.enrolment.token, &self.enrolment.task)
    }

    /// The open round's shared adapter for `model`'s base, its signature checked against the
    /// pinned key, loaded for `model`.
    pub fn pull(&self, model: &Model) -> Result<Pulled, Error> {
        let task = self.task()?;
        let base = model.fingerprint()?;
        let e = &self.enrolment;
        let response = self.client.global(&e.token, &e.task, &base.id)?;
        let key = parse_public_hex(&e.public_key).map_err(Error::InvalidArgument)?;
        let label = format!("{}/v1/tasks/{}/global", e.server, e.task);
        let options = LoadOptions { trusted_keys: vec![key], allow_port: false };
        let adapter = model.load_adapter(
            AdapterSource::Patch { bytes: response.body.clone(), label: label.clone() },
            &options,
        )?;
        let patch = Patch::from_bytes(&response.body, &label)?;
        let round =
            response.round.ok_or_else(|| sync_error(&label, None, "no round in the answer".into()))?;
        let digest = response.etag.unwrap_or_default();
        Ok(Pulled { round, digest, patch, adapter, task })
    }

    /// Whether this device takes part in `round`: always without privacy; with it, a coin of
    /// probability `sample_rate` (the accountant's Poisson sampling), tossed once per round and
    /// remembered, so asking again cannot change the answer.
    pub fn takes_part(&self, spec: &TaskSpec, round: u64) -> Result<bool, Error> {
        let Some(privacy) = &spec.privacy else { return Ok(true) };
        let path = self.dir.join(DECISIONS);
        let mut decisions: std::collections::BTreeMap<String, bool> =
            std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let key = format!("{}/{round}", self.enrolment.task);
        if let Some(&decided) = decisions.get(&key) {
            return Ok(decided);
        }
        let mut coin = Prg::from_os().map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
        let decided = ((coin.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < privacy.sample_rate;
        decisions.insert(key, decided);
        write_private(&path, &serde_json::to_vec(&decisions).unwrap_or_default())?;
        Ok(decided)
    }

    /// Trains the pulled adapter on `data` with the task's settings (checkpoints in `store`).
    pub fn train(
        &self,
        model: &Model,
        pulled: &Pulled,
        data: &TrainingData,
        store: &dyn Store,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(TrainEvent) + Send),
    ) -> Result<Trained, Error> {
        let t = &pulled.task.spec.training;
        let config = TrainConfig {
            method: pulled.adapter.method(),
            steps: t.steps,
            batch: t.batch,
            seq: t.seq,
            lr: t.lr,
            // Each round's run is its own: a fixed seed per round and device would repeat masks.
            seed: pulled.round ^ u64::from_le_bytes(sha_prefix(&self.enrolment.device)),
            ..TrainConfig::default()
        };
        model.train_from(&pulled.adapter, data, &config, store, cancel, on_event)
    }

    /// One round, whole: send what earlier runs queued, pull the shared adapter, toss the
    /// sampling coin (private tasks; `ignore_sampling` skips it, which breaks the accounting:
    /// tests only), train on `data` (checkpoints in this device's directory, removed after),
    /// and push the update.
    pub fn take_round(
        &self,
        model: &Model,
        data: &TrainingData,
        ignore_sampling: bool,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(TrainEvent) + Send),
    ) -> Result<RoundReport, Error> {
        let mut flushed = self.flush()?;
        let pulled = self.pull(model)?;
        let task = pulled.task.task.clone();
        if pulled.task.status != "running" {
            return Err(Error::InvalidArgument(format!(
                "task {task} is {}: there is no round to train for",
                pulled.task.status
            )));
        }
        let round = pulled.round;
        let mut report = RoundReport {
            task,
            round,
            sampled: false,
            steps: 0,
            train_loss: None,
            eval_loss_before: None,
            eval_loss: None,
            tokens: 0,
            outcome: None,
            flushed: Vec::new(),
            adapter: None,
        };
        if !ignore_sampling && !self.takes_part(&pulled.task.spec, round)? {
            report.flushed = flushed;
            return Ok(report);
        }
        let checkpoints = self.dir.join("checkpoints").join(format!("round-{round}"));
        let trained = self.train(model, &pulled, data, &FileStore::new(&checkpoints), cancel, on_event)?;
        flushed.extend(self.push(model, &pulled, &trained)?);
        let _ = std::fs::remove_dir_all(&checkpoints);
        let t = &trained.report;
        report.outcome = flushed.iter().find(|f| f.round == round).map(|f| f.outcome);
        report.sampled = true;
        report.steps = t.steps;
        report.train_loss = Some(t.train_loss);
        report.eval_loss_before = t.eval_loss_before;
        report.eval_loss = t.eval_loss;
        report.tokens = t.tokens;
        report.flushed = flushed;
        report.adapter = Some(trained.adapter);
        Ok(report)
    }

    /// Makes the update of `trained` against the pulled adapter (clipped and noised with
    /// privacy, ComPEFT-coded at the task's density), queues it, and flushes the queue.
    pub fn push(&self, model: &Model, pulled: &Pulled, trained: &Trained) -> Result<Vec<Flushed>, Error> {
        let spec = &pulled.task.spec;
        let base = model.fingerprint()?;
        let global = pulled.patch.values()?;
        let mine = trained.adapter.to_patch(base.clone(), DenseType::F32)?.values()?;
        let label = || format!("update of round {}", pulled.round);
        let mut delta = update::delta(spec.rule, &global, &mine)
            .map_err(|m| Error::Patch { path: label(), message: m })?;
        let mut norm = privacy::norm(&delta);
        let mut clipped = false;
        if let Some(p) = &spec.privacy {
            norm = privacy::clip(&mut delta, p.clip_norm);
            clipped = norm > p.clip_norm;
            let mut prg =
                Prg::from_os().map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
            privacy::add_noise(&mut delta, p.client_noise_std(spec.min_clients), &mut prg);
        }
        if spec.secure_aggregation {
            let values: Vec<f32> = delta.iter().flat_map(|v| v.values.iter().copied()).collect();
            let e = &self.enrolment;
            let round = SecureRound {
                client: &self.client,
                token: &e.token,
                task: &e.task,
                round: pulled.round,
                device: &e.device,
                max_devices: spec.max_clients,
            };
            let secrets = self.dir.join(format!("secagg-{}-{}.json", e.task, pulled.round));
            round.take_part(&values, &secrets, &self.secure)?;
            return Ok(vec![Flushed { round: pulled.round, outcome: "sent", receipt: None, message: None }]);
        }
        let training = json!({
            "round": pulled.round,
            "global": pulled.digest,
            "tokens": trained.report.tokens,
            "steps": trained.report.steps,
            "train_loss": trained.report.train_loss,
        });
        // Noised updates stay f32: f16 rounding is small next to the noise, but f32 is exact.
        let dense = if spec.privacy.is_some() { DenseType::F32 } else { DenseType::F16 };
        let mut patch = Patch::new(pulled.patch.config.clone(), &delta, base, dense, Some(training))?;
        if let Some(density) = spec.training.density {
            patch = compress(&patch, density)?.0;
        }
        self.send(pulled.round, &patch, norm, clipped)
    }

    /// Queues the update `patch` for `round` on disk, then sends the queue: an update the
    /// server cannot take now stays there for the next [`flush`](Self::flush), across restarts.
    /// `norm` (before clipping) and `clipped` are kept with it for the device's records.
    pub fn send(&self, round: u64, patch: &Patch, norm: f64, clipped: bool) -> Result<Vec<Flushed>, Error> {
        let bytes = patch.to_bytes(None);
        let queued =
            Queued { task: self.enrolment.task.clone(), round, bytes: bytes.len() as u64, norm, clipped };
        self.enqueue(&queued, &bytes)?;
        self.flush()
    }

    fn queue_dir(&self) -> PathBuf {
        self.dir.join(QUEUE)
    }

    fn enqueue(&self, queued: &Queued, bytes: &[u8]) -> Result<(), Error> {
        let dir = self.queue_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
        let stem = format!("{}-{:08}", queued.task, queued.round);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |e| Error::Io { path, source: e }
        };
        // The update first, then its record: a record always has its bytes.
        let body = dir.join(format!("{stem}.akp"));
        write_atomic(&body, |w| w.write_all(bytes)).map_err(io(&body))?;
        let record = dir.join(format!("{stem}.json"));
        let json = serde_json::to_vec(queued).unwrap_or_default();
        write_atomic(&record, |w| w.write_all(&json)).map_err(io(&record))
    }

    /// The updates waiting to be sent, oldest round first.
    pub fn queued(&self) -> Result<Vec<Queued>, Error> {
        let dir = self.queue_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
                let q: Queued = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::InvalidArgument(format!("{}: not a queued update ({e})", path.display()))
                })?;
                out.push(q);
            }
        }
        out.sort_by_key(|q| q.round);
        Ok(out)
    }

    /// Sends every queued update, oldest first; stops at the first one the server cannot be
    /// reached for (it and the rest stay queued).
    pub fn flush(&self) -> Result<Vec<Flushed>, Error> {
        let mut out = Vec::new();
        let mut unreachable = false;
        for q in self.queued()? {
            let stem = self.queue_dir().join(format!("{}-{:08}", q.task, q.round));
            if unreachable {
                out.push(Flushed { round: q.round, outcome: "queued", receipt: None, message: None });
                continue;
            }
            let body_path = stem.with_extension("akp");
            let bytes =
                std::fs::read(&body_path).map_err(|e| Error::Io { path: body_path.clone(), source: e })?;
            let (outcome, receipt, message) =
                match self.client.upload(&self.enrolment.token, &q.task, q.round, &bytes) {
                    Ok(r) => (if r.duplicate { "duplicate" } else { "sent" }, Some(r), None),
                    // A final refusal: retrying the same bytes can never succeed, so they go.
                    Err(e @ Error::Sync { status: Some(400..=499), .. }) => {
                        let stale = matches!(e.sync_code(), Some("round_closed") | Some("not_found"));
                        (if stale { "stale" } else { "refused" }, None, Some(e.to_string()))
                    }
                    // Unreachable, or failing after the retries: keep it for later.
                    Err(e @ Error::Sync { .. }) => {
                        unreachable = true;
                        ("queued", None, Some(e.to_string()))
                    }
                    Err(e) => return Err(e),
                };
            if outcome != "queued" {
                for ext in ["json", "akp"] {
                    let path = stem.with_extension(ext);
                    std::fs::remove_file(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
                }
            }
            out.push(Flushed { round: q.round, outcome, receipt, message });
        }
        Ok(out)
    }
}

/// The first 8 bytes of SHA-256 of `text`.
fn sha_prefix(text: &str) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..8].try_into().expect("8 bytes")
}
