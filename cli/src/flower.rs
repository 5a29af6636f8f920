//! `adaptkit flower-node`: this device as a node of a Flower federation (a SuperLink's Fleet
//! API), and `adaptkit flower-init`: the first adapter a Flower ServerApp starts from.

use std::path::PathBuf;

use adaptkit::control::CancelToken;
use adaptkit::flower::{self, NodeData, NodeEvent, NodeOptions};
use adaptkit::runtime::train::{Dataset, TrainingData};
use adaptkit::runtime::TrainConfig;
use clap::Args;
use serde_json::json;

use crate::args::ModelArgs;
use crate::method::MethodArgs;
use crate::train::Progress;
use crate::{emit, fetch, interrupt, say, CliError, Output};

#[derive(Args)]
pub struct NodeArgs {
    /// The SuperLink: http://HOST:PORT (its Fleet API; flwr 1.42 serves it on the SuperLink's one port).
    #[arg(long)]
    superlink: String,
    /// This device's training data (.txt or .jsonl).
    #[arg(long)]
    data: PathBuf,
    /// Held-out text for `evaluate` messages and the training runs' evaluation.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Where the node keeps its key (node.key), checkpoints and, with --record, what it sent
    /// [default: $ADAPTKIT_HOME/flower-node].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds between heartbeats (10-1800): the SuperLink drops a node silent for twice this.
    #[arg(long, default_value_t = 30.0)]
    heartbeat: f64,
    /// Stop after answering this many messages (default: until Ctrl-C).
    #[arg(long)]
    max_messages: Option<usize>,
    /// Keep every update sent, as a PEFT directory per round with its metrics, under DIR/sent.
    #[arg(long)]
    record: bool,
    /// The largest message accepted, in MiB (all its objects together); a larger one is dropped.
    #[arg(long, default_value_t = 1024)]
    max_message_mb: u64,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    out: Output,
}

pub fn node(args: NodeArgs) -> Result<(), CliError> {
    let model = args.model.open(true)?;
    let data = NodeData {
        train: TrainingData { train: Dataset::read(&args.data)?, eval: None, general: None },
        held_out: args.eval.as_deref().map(crate::args::read_text).transpose()?,
    };
    let mut options =
        NodeOptions::new(&args.superlink, &args.dir.unwrap_or_else(|| fetch::home().join("flower-node")));
    options.heartbeat_interval = args.heartbeat;
    options.record = args.record;
    options.max_message_bytes = args.max_message_mb << 20;
    let cancel = CancelToken::new();
    interrupt::cancel_on_ctrl_c(&cancel);
    let mut progress = Progress::default();
    let human = !args.out.json;
    let session =
        flower::join(options, &model, &data, args.max_messages, &cancel, &mut |event| match event {
            NodeEvent::Online { node_id } => eprintln!("flower: node {node_id} online at {}", args.superlink),
            NodeEvent::Received { run, kind, round, bytes } => eprintln!(
                "flower: run {run}: {kind} (round {}), {:.1} MB",
                round.map_or("-".into(), |r| r.to_string()),
                bytes as f64 / 1e6
            ),
            NodeEvent::Training(e) => {
                if human {
                    progress.on(e)
                }
            }
            NodeEvent::Replied(reply) => {
                std::mem::take(&mut progress).finish();
                let metrics: Vec<String> = reply.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                let coded = if reply.dense_bytes > reply.bytes && reply.bytes > 0 {
                    format!(" ({:.1}x smaller than dense)", reply.dense_bytes as f64 / reply.bytes as f64)
                } else {
                    String::new()
                };
                match &reply.error {
                    Some(e) => {
                        eprintln!("flower: run {}: {} answered with an error: {e}", reply.run, reply.kind)
                    }
                    None => eprintln!(
                        "flower: run {}: {} -> {}: {}; sent {:.2} MB{coded}",
                        reply.run,
                        reply.kind,
                        reply.outcome,
                        metrics.join(", "),
                        reply.bytes as f64 / 1e6
                    ),
                }
            }
            NodeEvent::Problem(line) => eprintln!("flower: {line}"),
        });
    let session = session?;
    emit(args.out, &session, &[], || {
        say(format_args!("node {}: answered {} messages\n", session.node_id, session.replies.len()))
    });
    Ok(())
}

#[derive(Args)]
pub struct InitArgs {
    /// Where to write the adapter (a PEFT directory) the ServerApp starts from.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    method: MethodArgs,
    /// Seed of the adapter's random start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    output: Output,
}

/// A new adapter for the model and the base id the ServerApp sends with it.
pub fn init(args: InitArgs) -> Result<(), CliError> {
    let model = args.model.open(false)?;
    let config = TrainConfig {
        method: args.method.method,
        options: args.method.options(),
        seed: args.seed,
        ..TrainConfig::default()
    };
    let adapter = model.new_adapter(&config)?;
    adapter.save_dir(&args.out)?;
    let base = model.fingerprint()?;
    let report = json!({ "adapter": args.out.display().to_string(), "base": base.id, "method": adapter.method().name() });
    emit(args.output, &report, &[], || {
        say(format_args!(
            "{} adapter in {}; the ServerApp's run config: initial-adapter=\"{}\" base=\"{}\"\n",
            adapter.method(),
            args.out.display(),
            args.out.display(),
            base.id
        ))
    });
    Ok(())
}
