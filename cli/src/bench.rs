//! `adaptkit bench`: prefill and decode speed (batch 1) and peak memory of a model, as the median
//! of several runs after a warm-up. Compare with peers through `scripts/bench.sh`.

use adaptkit::generate::{GenerateOptions, SamplingParams};
use adaptkit::model::NoAdapters;
use clap::Args;
use serde_json::json;

use crate::commands::{load_engine, run_timed};
use crate::memory::peak_rss_mb;
use crate::{emit, say, CliError, ModelArgs, Output};

/// Varied prose so the prompt tokenizes like real text; repeated to the requested length.
const BENCH_TEXT: &str = "The harbour town woke slowly. Fishing boats came in under a grey sky, \
and the market filled with the smell of salt, bread and coffee. A child counted gulls on the \
sea wall while her grandfather mended a net, telling her how the storm of 1987 had carried \
away the old lighthouse keeper's cottage. ";

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
    #[command(flatten)]
    out: Output,
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.prompt_tokens == 0 || args.gen_tokens < 2 || args.repeats == 0 {
        return Err(CliError::msg("bench needs --prompt-tokens >= 1, --gen-tokens >= 2, --repeats >= 1"));
    }
    let engine = load_engine(&args.model)?;
    let tokenizer = engine.tokenizer();
    let mut ids = Vec::new();
    while ids.len() < args.prompt_tokens {
        ids.extend(tokenizer.encode(BENCH_TEXT, false).map_err(adaptkit::Error::from)?);
    }
    ids.truncate(args.prompt_tokens);
    let options = GenerateOptions {
        max_tokens: args.gen_tokens,
        sampling: SamplingParams::greedy(),
        stop_strings: Vec::new(),
        stop_at_eos: false,
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=args.repeats {
        let timed = run_timed(&engine, &ids, &options, &NoAdapters, |_| {})?;
        eprintln!(
            "{} prefill {:.1} tok/s, decode {:.1} tok/s",
            if run == 0 { "warm-up".to_string() } else { format!("run {run}") },
            timed.prefill_tok_s,
            timed.decode_tok_s
        );
        if run > 0 {
            prefill.push(timed.prefill_tok_s);
            decode.push(timed.decode_tok_s);
        }
    }
    let report = json!({
        "model": engine.source().display().to_string(),
        "threads": engine.threads(),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "prefill_tok_s": median(&mut prefill),
        "decode_tok_s": median(&mut decode),
        "peak_rss_mb": peak_rss_mb(),
    });
    emit(args.out, report.clone(), || say(format_args!("{report}\n")));
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
