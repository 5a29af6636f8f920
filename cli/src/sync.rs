//! `adaptkit serve` (the sync server) and `adaptkit sync`: a device's side of federated
//! adaptation (enrol, pull, push, status) and the operator's (task create, base, close).

use std::path::PathBuf;
use std::sync::Arc;

use adaptkit::control::CancelToken;
use adaptkit::federated::{Privacy, Rule, TaskSpec, TrainingSettings};
use adaptkit::runtime::train::{Dataset, TrainingData};
use adaptkit::runtime::AdapterSource;
use adaptkit::sync::{Client, Device, FirstAdapter, Operator, Retry};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::args::{read_trusted_keys, ModelArgs};
use crate::method::MethodArgs;
use crate::train::Progress;
use crate::{emit, fetch, interrupt, say, CliError, Output};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the one taken is printed).
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: String,
    /// Where the server keeps its state when --db, --blobs, --key are not given:
    /// server.db (SQLite), blobs/, server.key, operator.token [default: $ADAPTKIT_HOME/server].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Database: sqlite://FILE or postgres://USER@HOST/DB [default: SQLite in --dir].
    #[arg(long)]
    db: Option<String>,
    /// Blob store: a directory or s3://BUCKET/PREFIX (credentials and endpoint from AWS_*)
    /// [default: --dir/blobs].
    #[arg(long)]
    blobs: Option<String>,
    /// The patch-signing key file (created if missing) [default: --dir/server.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// The operator token file (created if missing; $ADAPTKIT_OPERATOR_TOKEN wins)
    /// [default: --dir/operator.token].
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// The largest upload, in MiB.
    #[arg(long, default_value_t = 256)]
    max_upload_mb: usize,
    /// Requests a second per token (bursts of twice that); 0: no limit.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Seconds before a round claimed by a process that died is taken over.
    #[arg(long, default_value_t = 60)]
    lease_seconds: u64,
    /// Crash tests: pause this long between aggregating a round and publishing it.
    #[arg(long, default_value_t = 0, hide = true)]
    fault_aggregation_delay_ms: u64,
    #[command(flatten)]
    out: Output,
}

pub fn serve(args: ServeArgs) -> Result<(), CliError> {
    let dir = args.dir.clone().unwrap_or_else(|| fetch::home().join("server"));
    std::fs::create_dir_all(&dir).map_err(|e| CliError::io(&dir, e))?;
    let mut config = adaptkit_server::Config::in_dir(&dir);
    if let Some(db) = args.db {
        config.db = db;
    }
    if let Some(blobs) = args.blobs {
        config.blobs = blobs;
    }
    if let Some(key) = args.key {
        config.key_file = key;
    }
    if let Some(file) = args.operator_token_file {
        config.operator_token_file = file;
    }
    config.operator_token = std::env::var("ADAPTKIT_OPERATOR_TOKEN").ok().filter(|t| !t.is_empty());
    config.limits.max_upload = args.max_upload_mb << 20;
    config.limits.rate = args.rate;
    config.limits.aggregation_lease = std::time::Duration::from_secs(args.lease_seconds);
    config.limits.aggregation_delay = std::time::Duration::from_millis(args.fault_aggregation_delay_ms);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| CliError::msg(format!("starting the server: {e}")))?;
    runtime.block_on(async {
        let state = Arc::new(adaptkit_server::AppState::open(&config).await.map_err(CliError::msg)?);
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| CliError::msg(format!("--listen {}: {e}", args.listen)))?;
        let address = listener.local_addr().map_err(|e| CliError::msg(e.to_string()))?;
        let token_file = config.operator_token_file.display().to_string();
        let info = json!({
            "listen": address.to_string(),
            "url": format!("http://{address}"),
            "public_key": state.public_key(),
            "operator_token_file": token_file,
            "db": if config.db.starts_with("postgres") { "postgres" } else { "sqlite" },
        });
        emit(args.out, &info, &[], || {
            say(format_args!(
                "adaptkit sync server on http://{address} (key {}); operator token in {token_file}\n",
                &state.public_key()[..16]
            ))
        });
        adaptkit_server::serve(listener, state).await.map_err(|e| CliError::msg(format!("serving: {e}")))
    })
}

#[derive(Subcommand)]
pub enum SyncCommand {
    /// Enrol this device in a federated task (with the task's enrolment token).
    Enrol(EnrolArgs),
    /// Download the task's shared adapter for this model (its signature checked).
    Pull(PullArgs),
    /// Train the shared adapter on local data with the task's settings and upload the update
    /// (clipped and noised here when the task is private); updates the server cannot take now
    /// wait in a queue that the next push or `sync status --flush` sends.
    Push(PushArgs),
    /// The enrolment, the task, its open round and the queued updates.
    Status(StatusArgs),
    /// Operator: create a task, register an updated base, close a round.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
}

#[derive(Args)]
pub struct DeviceDir {
    /// Where this device keeps its enrolment and queue [default: $ADAPTKIT_HOME/sync].
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl DeviceDir {
    fn path(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| fetch::home().join("sync"))
    }

    fn open(&self) -> Result<Device, CliError> {
        let dir = self.path();
        if !dir.join("enrolment.json").is_file() {
            return Err(CliError::msg(format!(
                "{}: not enrolled; run `adaptkit sync enrol` first",
                dir.display()
            )));
        }
        Ok(Device::open(&dir, Retry::default())?)
    }
}

#[derive(Args)]
pub struct EnrolArgs {
    /// The server's URL (http://host:port).
    #[arg(long)]
    server: String,
    #[arg(long)]
    task: String,
    /// The task's enrolment token.
    #[arg(long)]
    token: String,
    /// A label for the operator's listings.
    #[arg(long)]
    name: Option<String>,
    /// The server must sign with this public key (a key file); otherwise its key is pinned now.
    #[arg(long)]
    trusted_key: Option<PathBuf>,
    #[command(flatten)]
    dir: DeviceDir,
    #[command(flatten)]
    out: Output,
}

pub fn run(command: SyncCommand) -> Result<(), CliError> {
    match command {
        SyncCommand::Enrol(args) => enrol(args),
        SyncCommand::Pull(args) => pull(args),
        SyncCommand::Push(args) => push(args),
        SyncCommand::Status(args) => status(args),
        SyncCommand::Task { command } => task(command),
    }
}

fn enrol(args: EnrolArgs) -> Result<(), CliError> {
    let trusted = match &args.trusted_key {
        Some(path) => Some(read_trusted_keys(std::slice::from_ref(path))?[0]),
        None => None,
    };
    let dir = args.dir.path();
    let device =
        Device::enrol(&dir, &args.server, &args.task, &args.token, args.name, trusted, Retry::default())?;
    let e = device.enrolment();
    let report = json!({ "task": e.task, "device": e.device, "server": e.server, "public_key": e.public_key, "dir": dir.display().to_string() });
    emit(args.out, &report, &[], || {
        say(format_args!(
            "enrolled in task {} as {} (server key {}…); state in {}\n",
            e.task,
            e.device,
            &e.public_key[..16],
            dir.display()
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Also write the shared adapter here as a PEFT directory.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    dir: DeviceDir,
    #[command(flatten)]
    out: Output,
}

fn pull(args: PullArgs) -> Result<(), CliError> {
    let device = args.dir.open()?;
    let model = args.model.open(false)?;
    let pulled = device.pull(&model)?;
    if let Some(out) = &args.out_dir {
        pulled.adapter.save_dir(out)?;
    }
    let report = json!({
        "task": pulled.task.task, "round": pulled.round, "digest": pulled.digest,
        "method": pulled.adapter.method().name(), "status": pulled.task.status,
    });
    emit(
        args.out,
        &report,
        &[("out", json!(args.out_dir.as_ref().map(|p| p.display().to_string())))],
        || {
            say(format_args!(
                "task {} round {}: shared adapter {} ({}), signature checked{}\n",
                pulled.task.task,
                pulled.round,
                &pulled.digest[..pulled.digest.len().min(16)],
                pulled.adapter.method(),
                args.out_dir.as_ref().map_or(String::new(), |p| format!("; saved in {}", p.display()))
            ))
        },
    );
    Ok(())
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// This device's training data (.txt or .jsonl).
    #[arg(long)]
    data: PathBuf,
    /// Held-out data to report the loss on (default: a slice of --data).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Also keep this device's own trained adapter here (a PEFT directory).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Train and push even when a private task's sampling leaves this device out of the round
    /// (it would then break the privacy accounting: for tests only).
    #[arg(long, hide = true)]
    ignore_sampling: bool,
    /// Secure rounds: stop after sending the masked input, as a device that goes offline
    /// would (the round completes without it: for tests and demonstrations).
    #[arg(long, hide = true)]
    drop_after_masking: bool,
    #[command(flatten)]
    dir: DeviceDir,
    #[command(flatten)]
    out: Output,
}

fn push(args: PushArgs) -> Result<(), CliError> {
    let mut device = args.dir.open()?;
    device.secure.drop_after_masking = args.drop_after_masking;
    let model = args.model.open(true)?;
    let data = TrainingData {
        train: Dataset::read(&args.data)?,
        eval: args.eval.as_deref().map(Dataset::read).transpose()?,
        general: None,
    };
    let cancel = CancelToken::new();
    interrupt::cancel_on_ctrl_c(&cancel);
    let mut progress = Progress::default();
    let report =
        device.take_round(&model, &data, args.ignore_sampling, &cancel, &mut |event| progress.on(event));
    progress.finish();
    let report = report?;
    let round = report.round;
    if !report.sampled {
        emit(args.out, &report, &[], || {
            say(format_args!("round {round}: this device was not sampled (privacy); nothing to train\n"))
        });
        return Ok(());
    }
    if let (Some(out), Some(adapter)) = (&args.out_dir, &report.adapter) {
        adapter.save_dir(out)?;
    }
    emit(args.out, &report, &[], || {
        let outcome = report.outcome.unwrap_or("queued");
        let eval = |l: Option<f32>| l.map_or("-".to_string(), |l| format!("{l:.3}"));
        say(format_args!(
            "round {round}: trained {} steps, held-out loss {} -> {}; update {outcome}\n",
            report.steps,
            eval(report.eval_loss_before),
            eval(report.eval_loss)
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    /// Send the queued updates first.
    #[arg(long)]
    flush: bool,
    #[command(flatten)]
    dir: DeviceDir,
    #[command(flatten)]
    out: Output,
}

fn status(args: StatusArgs) -> Result<(), CliError> {
    let device = args.dir.open()?;
    let flushed = if args.flush { device.flush()? } else { Vec::new() };
    let e = device.enrolment();
    // Offline is a status too: the queue is still worth showing.
    let (task, round) = match (device.task(), device.round()) {
        (Ok(t), Ok(r)) => (Some(t), Some(r)),
        (Ok(t), Err(_)) => (Some(t), None),
        (Err(err), _) => {
            eprintln!("warning: {err}");
            (None, None)
        }
    };
    let queued = device.queued()?;
    let report = json!({
        "server": e.server, "task": e.task, "device": e.device,
        "status": task.as_ref().map(|t| t.status.clone()),
        "epsilon": task.as_ref().and_then(|t| t.epsilon),
        "round": round, "queued": queued, "flushed": flushed,
    });
    emit(args.out, &report, &[], || {
        say(format_args!("device {} of task {} on {}\n", e.device, e.task, e.server));
        if let Some(t) = &task {
            let eps = t.epsilon.map_or(String::new(), |x| format!(", ε spent {x:.2}"));
            say(format_args!("task: {}, {} devices{eps}\n", t.status, t.devices));
        }
        if let Some(r) = &round {
            say(format_args!(
                "round {}: {}, {} of {}..{} updates\n",
                r.round, r.status, r.received, r.min_clients, r.max_clients
            ));
        }
        say(format_args!("queued updates: {}\n", queued.len()));
    });
    Ok(())
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a federated task and publish its first shared adapter (a new adapter of
    /// --method for --model, or --adapter): round 1 opens.
    Create(Box<CreateArgs>),
    /// Register an updated base model: the task's adapter is ported to it (PortLLM).
    Base(BaseArgs),
    /// Close a round now (it needs its minimum of updates).
    Close(CloseArgs),
}

#[derive(Args)]
pub struct OperatorArgs {
    /// The server's URL.
    #[arg(long)]
    server: String,
    /// The operator token file [default: $ADAPTKIT_HOME/server/operator.token].
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
}

impl OperatorArgs {
    fn token(&self) -> Result<String, CliError> {
        if let Ok(token) = std::env::var("ADAPTKIT_OPERATOR_TOKEN") {
            return Ok(token);
        }
        let path = self
            .operator_token_file
            .clone()
            .unwrap_or_else(|| fetch::home().join("server").join("operator.token"));
        std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|e| CliError::io(&path, e))
    }

    fn operator(&self) -> Result<Operator, CliError> {
        Ok(Operator { client: Client::new(&self.server, Retry::default()), token: self.token()? })
    }
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    operator: OperatorArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    name: String,
    /// fedavg (mean of B·A, re-factored to the rank), ffa (A frozen and shared: exact, and the
    /// rule that privacy needs) or fedit (A and B averaged apart; biased, for comparison).
    #[arg(long, default_value = "fedavg")]
    rule: Rule,
    #[arg(long, default_value_t = 2)]
    min_clients: usize,
    #[arg(long, default_value_t = 100)]
    max_clients: usize,
    /// How long a round stays open.
    #[arg(long, default_value_t = 600)]
    round_seconds: u64,
    #[arg(long)]
    max_rounds: Option<u64>,
    /// Local training each round: steps, windows per step, tokens per window, learning rate.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long)]
    lr: Option<f32>,
    /// Upload updates ComPEFT-coded at this density (default: dense f16).
    #[arg(long)]
    density: Option<f64>,
    /// Privacy: clip each update to this L2 norm (turns privacy on; needs --rule ffa).
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Privacy: the round's noise is this many times the clip norm.
    #[arg(long, default_value_t = 1.0)]
    noise_multiplier: f64,
    /// Privacy: the chance that a device takes part in a round.
    #[arg(long, default_value_t = 1.0)]
    sample_rate: f64,
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Privacy: the task stops before ε would pass this.
    #[arg(long, default_value_t = 8.0)]
    epsilon: f64,
    /// Secure aggregation: the server sees only each round's sum (needs --rule ffa; devices stay
    /// online through the round's phases).
    #[arg(long)]
    secure_aggregation: bool,
    /// The first shared adapter (a PEFT directory or .akp); default: a new one of --method.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    method: MethodArgs,
    /// Seed of the new adapter's A.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    out: Output,
}

fn task(command: TaskCommand) -> Result<(), CliError> {
    match command {
        TaskCommand::Create(args) => create(*args),
        TaskCommand::Base(args) => base(args),
        TaskCommand::Close(args) => close(args),
    }
}

fn create(args: CreateArgs) -> Result<(), CliError> {
    let privacy = args.clip_norm.map(|clip_norm| Privacy {
        clip_norm,
        noise_multiplier: args.noise_multiplier,
        sample_rate: args.sample_rate,
        delta: args.delta,
        epsilon_budget: args.epsilon,
    });
    let spec = TaskSpec {
        name: args.name.clone(),
        rule: args.rule,
        min_clients: args.min_clients,
        max_clients: args.max_clients,
        round_seconds: args.round_seconds,
        max_rounds: args.max_rounds,
        privacy,
        secure_aggregation: args.secure_aggregation,
        training: TrainingSettings {
            steps: args.steps,
            batch: args.batch,
            seq: args.seq,
            lr: args.lr,
            density: args.density,
        },
    };
    spec.check().map_err(CliError::msg)?;
    let model = args.model.open(false)?;
    let first = match &args.adapter {
        Some(path) => {
            FirstAdapter::Given(model.load_adapter(AdapterSource::Path(path.clone()), &Default::default())?)
        }
        None => {
            FirstAdapter::New { method: args.method.method, options: args.method.options(), seed: args.seed }
        }
    };
    let (created, published) = args.operator.operator()?.create_task(&model, spec, first)?;
    let report = json!({ "task": created.task, "enrol_token": created.enrol_token, "global": published.digest, "base": published.base });
    emit(args.out, &report, &[], || {
        say(format_args!(
            "task {} created; round 1 trains adapter {}; devices enrol with --task {} --token {}\n",
            created.task,
            &published.digest[..16],
            created.task,
            created.enrol_token
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct BaseArgs {
    #[command(flatten)]
    operator: OperatorArgs,
    #[arg(long)]
    task: String,
    /// The updated base model.
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    out: Output,
}

fn base(args: BaseArgs) -> Result<(), CliError> {
    let model = args.model.open(false)?;
    let registered = args.operator.operator()?.register_base(&args.task, &model)?;
    emit(args.out, &registered, &[], || {
        let drift = registered
            .drift
            .as_ref()
            .and_then(|d| d.get("weights"))
            .and_then(|w| w.as_array())
            .map_or(0, Vec::len);
        say(format_args!(
            "base {} registered; shared adapter ported{} ({drift} weights' drift measured)\n",
            &registered.base[..16],
            registered.ported.as_ref().map_or(String::new(), |p| format!(" as {}", &p.digest[..16]))
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct CloseArgs {
    #[command(flatten)]
    operator: OperatorArgs,
    #[arg(long)]
    task: String,
    #[arg(long)]
    round: u64,
    #[command(flatten)]
    out: Output,
}

fn close(args: CloseArgs) -> Result<(), CliError> {
    let round = args.operator.operator()?.close_round(&args.task, args.round)?;
    emit(args.out, &round, &[], || {
        say(format_args!("round {}: {} with {} updates\n", round.round, round.status, round.received))
    });
    Ok(())
}
