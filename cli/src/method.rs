//! `train --method` and its options as flags (the library's `MethodOptions`, one flag per
//! field), and `adaptkit methods`, the registry as a table.

use adaptkit::adapt::registry::METHODS;
use adaptkit::adapt::{LoraInit, MethodKind, MethodOptions};
use adaptkit::model::Projection;
use clap::Args;
use serde_json::json;

use crate::args::parse;
use crate::{emit, say, CliError, Output};

/// Which options apply to which method, and their defaults: `adaptkit methods`.
#[derive(Args)]
pub struct MethodArgs {
    /// Adaptation method: lora, dora, ia3, prompt, prefix, dept, peqa or lofit (`adaptkit methods`).
    #[arg(long, default_value = "lora", value_parser = parse::<MethodKind>)]
    pub method: MethodKind,
    /// Rank (lora, dora, dept) [default: 8].
    #[arg(long)]
    rank: Option<usize>,
    /// Alpha: the update is scaled by alpha/rank (lora, dora; rsLoRA and DePT: alpha/sqrt(rank))
    /// [default: 16; dept: 8].
    #[arg(long)]
    alpha: Option<f32>,
    /// Dropout on the adapter's input during training (lora, dora) [default: 0].
    #[arg(long)]
    dropout: Option<f32>,
    /// Scale by alpha/sqrt(rank) instead of alpha/rank (lora, dora).
    #[arg(long)]
    rslora: bool,
    /// How A and B start (lora): `kaiming` (PEFT's default: the model starts unchanged) or
    /// `pissa` (principal singular components, trained against the residual base; saved as a
    /// LoRA of twice the rank for the original base) [default: kaiming].
    #[arg(long, value_parser = parse::<LoraInit>)]
    init: Option<LoraInit>,
    /// Train B only, keeping A at its start (lora; FFA-LoRA: adapters that share A then
    /// average exactly, as federated rounds do).
    #[arg(long)]
    freeze_a: bool,
    /// Projections to adapt, comma-separated (lora, dora, ia3, peqa) [default:
    /// q,k,v,o,gate,up,down; ia3: k,v,down].
    #[arg(long, value_parser = parse_targets)]
    targets: Option<Targets>,
    /// Soft-prompt length in virtual tokens (prompt [default: 20], prefix [10], dept [10]).
    #[arg(long)]
    virtual_tokens: Option<usize>,
    /// Start the soft prompt from the embeddings of this text, repeated to its length
    /// (prompt, dept) [default: embeddings of random vocabulary tokens].
    #[arg(long)]
    prompt_init: Option<String>,
    /// Input positions DePT's embedding update covers (dept) [default: --seq].
    #[arg(long)]
    max_len: Option<usize>,
    /// Learning rate of DePT's low-rank embedding update (dept) [default: --lr / 30].
    #[arg(long)]
    embedding_lr: Option<f32>,
    /// Attention heads to keep after the selection stage (lofit) [default: 16].
    #[arg(long)]
    heads: Option<usize>,
    /// Steps of the head-selection stage (lofit) [default: 20].
    #[arg(long)]
    select_steps: Option<usize>,
    /// L1 weight of the head-selection stage (lofit) [default: 5e-4].
    #[arg(long)]
    l1: Option<f32>,
}

/// A parsed `--targets` list (a newtype, so clap takes it as one value).
#[derive(Clone)]
pub struct Targets(Vec<Projection>);

fn parse_targets(list: &str) -> Result<Targets, String> {
    list.split(',')
        .map(|t| t.trim().parse::<Projection>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()
        .map(Targets)
}

impl MethodArgs {
    pub fn options(&self) -> MethodOptions {
        MethodOptions {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            rslora: self.rslora.then_some(true),
            init: self.init,
            freeze_a: self.freeze_a.then_some(true),
            targets: self.targets.as_ref().map(|t| t.0.clone()),
            virtual_tokens: self.virtual_tokens,
            prompt_init: self.prompt_init.clone(),
            max_len: self.max_len,
            embedding_lr: self.embedding_lr,
            heads: self.heads,
            select_steps: self.select_steps,
            l1: self.l1,
        }
    }
}

/// `adaptkit methods`: every registered method with its options and defaults.
pub fn list(out: Output) -> Result<(), CliError> {
    let methods: Vec<_> = METHODS
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "peft_type": m.peft_type,
                "summary": m.summary,
                "default_lr": m.default_lr,
                "mergeable": m.mergeable,
                "scalable": m.scalable,
                "compressed": m.coding != adaptkit::adapt::registry::Coding::Dense,
                "two_stage": m.stage.is_some(),
                "options": m.options.iter().map(|o| (o.option.name().to_string(), json!(o.default))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    emit(out, &json!({ "methods": methods }), &[], || {
        for m in METHODS {
            let options: Vec<String> = m
                .options
                .iter()
                .map(|o| format!("--{} {}", o.option.name().replace('_', "-"), o.default))
                .collect();
            say(format_args!(
                "{:<7} {} (lr {:e}{}): {}\n        {}\n",
                m.name,
                m.peft_type,
                m.default_lr,
                if m.mergeable { ", merges" } else { "" },
                m.summary,
                if options.is_empty() { "no options of its own".to_string() } else { options.join("  ") }
            ));
        }
    });
    Ok(())
}
