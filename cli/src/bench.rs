//! `adaptkit bench`: the runtime's benchmark (`adaptkit::runtime::bench`) with flags. Compare
//! with peers through `scripts/bench.sh`.

use adaptkit::runtime::bench::{self, BenchOptions};
use adaptkit::runtime::ModelSource;
use clap::Args;

use crate::args::ModelArgs;
use crate::{emit, say, CliError, Output};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Timed runs after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed LoRA training steps (r=8, all seven projections, batch 4 x --train-seq) after one
    /// warm-up step; 0 skips training.
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    /// Tokens per training sequence (the batch is 4 sequences).
    #[arg(long, default_value_t = 128)]
    train_seq: usize,
    /// Train with activation checkpointing (see `train --checkpoint-activations`).
    #[arg(long)]
    checkpoint_activations: bool,
    #[command(flatten)]
    out: Output,
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let options = BenchOptions {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        repeats: args.repeats,
        train_steps: args.train_steps,
        train_seq: args.train_seq,
        checkpoint_activations: args.checkpoint_activations,
    };
    let source = ModelSource::Path(args.model.path()?);
    let report =
        bench::bench(source, &args.model.open_options(false), &options, &mut |line| eprintln!("{line}"))?;
    emit(args.out, &report, &[], || {
        say(format_args!("{}\n", serde_json::to_string(&report).unwrap_or_default()))
    });
    Ok(())
}
