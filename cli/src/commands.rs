//! The verbs that use a model as it is: `fetch`, `info`, `generate`, `eval`, `merge`.

use std::path::PathBuf;

use adaptkit::control::CancelToken;
use adaptkit::generate::{GenerateOptions, GenerationEvent, SamplingParams};
use adaptkit::runtime::memory::peak_rss_mb;
use adaptkit::runtime::{GenerateRequest, Prompt};
use adaptkit::tokenizer::Message;
use clap::Args;
use serde_json::json;

use crate::args::{parse, read_text, AdapterArgs, ModelArgs};
use crate::{emit, fetch, progress, say, CliError, Output};

pub fn fetch(dir: Option<PathBuf>, model: Option<String>, out: Output) -> Result<(), CliError> {
    let dir = dir.unwrap_or_else(fetch::default_dir);
    let model = model.as_deref().unwrap_or(fetch::MODELS[0]);
    let fetched = fetch::fetch(&dir, model)?;
    let path = fetched.path.display().to_string();
    // The model is what `fetch` is for; a missing generator only disables `personalize`. Only
    // the demo model has one.
    let generator = (model == fetch::MODELS[0])
        .then(|| {
            fetch::install_generator(&dir)
                .map_err(|e| eprintln!("warning: generator not installed: {}", e.message))
                .ok()
                .map(|p| p.display().to_string())
        })
        .flatten();
    let report = json!({"model": path, "sha256": fetched.sha256, "downloaded": fetched.downloaded, "generator": generator});
    emit(out, &report, &[], || say(format_args!("{path}\n")));
    Ok(())
}

#[derive(Args)]
pub struct InfoArgs {
    /// GGUF file or Hugging Face model directory (default: the fetched demo model).
    model: Option<PathBuf>,
    #[command(flatten)]
    out: Output,
}

pub fn info(args: InfoArgs) -> Result<(), CliError> {
    let model = ModelArgs {
        model: args.model,
        threads: 0,
        device: Default::default(),
        int8_activations: false,
        bf16_products: false,
    }
    .open(false)?;
    let info = model.info();
    emit(args.out, &info, &[], || {
        let types: Vec<String> = info.tensor_types.iter().map(|(ty, n)| format!("{n} {ty}")).collect();
        say(format_args!(
            "{}: {}, {:.1}M parameters, {} layers, width {}, {} heads ({} kv), context {}, vocab {}; tensors: {}\n",
            info.model,
            info.architecture,
            info.parameters as f64 / 1e6,
            info.layers,
            info.d_model,
            info.heads,
            info.kv_heads,
            info.context_len,
            info.vocab_size,
            types.join(", ")
        ));
    });
    Ok(())
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[command(flatten)]
    adapters: AdapterArgs,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    out: Output,
}

/// The sampling flags; their defaults are the library's ([`SamplingParams::default`]).
#[derive(Args)]
pub struct SamplingArgs {
    /// 0 = greedy [default: 0.7].
    #[arg(long)]
    temperature: Option<f32>,
    /// 0 = off [default: 40].
    #[arg(long)]
    top_k: Option<usize>,
    /// [default: 0.95].
    #[arg(long)]
    top_p: Option<f32>,
    /// 0 = off [default: 0.05].
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalize recently seen tokens; 1 = off [default: 1, as in transformers and llama.cpp].
    #[arg(long, visible_alias = "repetition-penalty")]
    repeat_penalty: Option<f32>,
    /// [default: 64].
    #[arg(long)]
    repeat_last_n: Option<usize>,
    /// [default: 0].
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        let d = SamplingParams::default();
        SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repeat_penalty.unwrap_or(d.repetition_penalty),
            repeat_last_n: self.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed: self.seed.unwrap_or(d.seed),
        }
    }
}

pub fn generate(args: GenerateArgs) -> Result<(), CliError> {
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: args.sampling.params(),
        stop_strings: args.stop,
        stop_at_eos: true,
    };
    // Bad options are refused before the model is loaded.
    options.check()?;
    let prompt = if args.chat {
        let system = args.system.iter().map(|s| Message::new("system", s));
        Prompt::Chat(system.chain([Message::new("user", &args.prompt)]).collect())
    } else {
        Prompt::Text(args.prompt)
    };
    let model = args.model.open(false)?;
    args.adapters.attach(&model)?;
    let json = args.out.json;
    let report =
        model.generate(
            &GenerateRequest { prompt, options },
            &CancelToken::new(),
            &mut |event| match event {
                GenerationEvent::Token { text, .. } | GenerationEvent::Tail { text } if !json => {
                    say(format_args!("{text}"))
                }
                GenerationEvent::Warning { text } => eprintln!("warning: {text}"),
                _ => {}
            },
        )?;
    if !json {
        say(format_args!("\n"));
    }
    eprintln!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, stop: {}]",
        report.prompt_tokens,
        report.prefill_tok_s,
        report.tokens.len(),
        report.decode_tok_s,
        report.stop.as_str()
    );
    emit(args.out, &report, &[], || {});
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text file to score.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    adapters: AdapterArgs,
    /// Window length in tokens.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// A text read before every window but not scored (a context given in the prompt).
    #[arg(long)]
    prefix: Option<PathBuf>,
    #[command(flatten)]
    out: Output,
}

pub fn eval(args: EvalArgs) -> Result<(), CliError> {
    let text = read_text(&args.data)?;
    let prefix = args.prefix.as_deref().map(read_text).transpose()?.unwrap_or_default();
    let model = args.model.open(false)?;
    args.adapters.attach(&model)?;
    let bar = progress::bar("eval", 0, "windows");
    let report =
        model.perplexity_after(&prefix, &text, args.seq, &CancelToken::new(), &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    emit(args.out, &report, &[], || {
        say(format_args!(
            "perplexity {:.4} over {} tokens ({} windows of {})\n",
            report.perplexity, report.tokens, report.windows, report.seq
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    adapters: AdapterArgs,
    /// The merged model (GGUF) to write.
    #[arg(long)]
    out: PathBuf,
    /// Block format of the merged matrices: `same` (the base's, requantized) or a type name
    /// (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K).
    #[arg(long = "type", default_value = "same", value_parser = parse::<adaptkit::adapt::merge::MergedType>)]
    merged_type: adaptkit::adapt::merge::MergedType,
    #[command(flatten)]
    out_format: Output,
}

pub fn merge(args: MergeArgs) -> Result<(), CliError> {
    if args.adapters.is_empty() {
        return Err(CliError::msg("merge needs at least one --adapter"));
    }
    let model = args.model.open(false)?;
    args.adapters.attach(&model)?;
    let report = model.export_merged_file(args.merged_type, &args.out)?;
    let out = args.out.display().to_string();
    emit(args.out_format, &report, &[("out", json!(out)), ("peak_rss_mb", json!(peak_rss_mb()))], || {
        say(format_args!(
            "{out}: {} tensors merged, {} copied\n",
            report.tensors_merged, report.tensors_copied
        ))
    });
    Ok(())
}
