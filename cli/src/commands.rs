//! The verbs that load a model: `fetch`, `info`, `generate`, `eval`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use adaptkit::adapt::merge::{export_merged, MergedType};
use adaptkit::adapt::AdapterSet;
use adaptkit::control::CancelToken;
use adaptkit::engine::{Engine, Prompt};
use adaptkit::format::gguf::GgufFile;
use adaptkit::generate::{GenerateOptions, GenerationEvent, SamplingParams};
use adaptkit::model::{Adapters, LlamaConfig};
use adaptkit::patch::{load_adapter, AttachOptions};
use adaptkit::quant::GgmlType;
use adaptkit::tokenizer::Message;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::{emit, fetch, say, CliError, ModelArgs, Output};

pub fn fetch(dir: Option<PathBuf>, out: Output) -> Result<(), CliError> {
    let fetched = fetch::fetch(&dir.unwrap_or_else(fetch::default_dir))?;
    let path = fetched.path.display().to_string();
    emit(out, json!({"model": path, "sha256": fetched.sha256, "downloaded": fetched.downloaded}), || {
        say(format_args!("{path}\n"))
    });
    Ok(())
}

/// The model to use: the given path, or the fetched demo model.
pub fn resolve_model(model: Option<PathBuf>) -> Result<PathBuf, CliError> {
    let path = match model {
        Some(path) => path,
        None => {
            let path = fetch::default_model();
            if !path.is_file() {
                return Err(CliError::msg(format!(
                    "no --model given and the demo model is not at {}; run `adaptkit fetch` first",
                    path.display()
                )));
            }
            path
        }
    };
    if !path.exists() {
        return Err(CliError::msg(format!("{}: no such file or directory", path.display())));
    }
    Ok(path)
}

/// `--adapter PATH[:SCALE]`, repeatable: saved adapters (PEFT directories of any method) and
/// patches (`.akp`) acting together.
#[derive(Args, Clone)]
pub struct AdapterArgs {
    /// A saved adapter directory (any method) or patch file (.akp), optionally with a scale
    /// (`dir:0.5`); repeatable.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
    /// Patches must be signed by one of these Ed25519 public keys (repeatable).
    #[arg(long = "trusted-key", value_name = "KEY.pub")]
    trusted_keys: Vec<PathBuf>,
    /// Attach patches made for another base of the same architecture as they are (PortLLM).
    #[arg(long)]
    port: bool,
}

impl AdapterArgs {
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// Every adapter, checked (patches: signature when keys are trusted, base model) before
    /// any is attached.
    pub fn load(&self, engine: &Engine) -> Result<AdapterSet, CliError> {
        let trusted = crate::patch::read_trusted_keys(&self.trusted_keys)?;
        let options = AttachOptions { trusted_keys: &trusted, allow_port: self.port };
        let mut model_fingerprint = None;
        let mut fingerprint = || -> Result<_, adaptkit::Error> {
            if model_fingerprint.is_none() {
                model_fingerprint = Some(crate::patch::fingerprint(engine)?);
            }
            Ok(model_fingerprint.clone().expect("set above"))
        };
        let mut set = AdapterSet::new();
        for spec in &self.adapters {
            let (path, scale) = crate::patch::split_weight(spec)?;
            let (adapter, own_scale) =
                load_adapter(Path::new(path), engine.model(), &mut fingerprint, &options)?;
            set.push(adapter, scale * own_scale);
        }
        Ok(set)
    }
}

pub fn load_engine(args: &ModelArgs) -> Result<Engine, CliError> {
    let path = resolve_model(args.model.clone())?;
    open_engine(&path, args, false)
}

/// Loads the model on the device `args` asks for, and says on stderr where it runs.
pub fn open_engine(path: &Path, args: &ModelArgs, trainable: bool) -> Result<Engine, CliError> {
    let engine = Engine::load(path, &args.engine_options(trainable))?;
    let compute = engine.compute_device();
    if let Some(reason) = &compute.fallback {
        eprintln!("device: cpu (auto: {reason})");
    } else if compute.gpu {
        eprintln!("device: {}", compute.name);
    }
    Ok(engine)
}

pub fn info(model: Option<PathBuf>, out: Output) -> Result<(), CliError> {
    let path = resolve_model(model)?;
    if path.is_dir() {
        return Err(CliError::msg(format!(
            "{}: `info` reads GGUF files; for a Hugging Face directory see its config.json",
            path.display()
        )));
    }
    let gguf = GgufFile::open(&path).map_err(adaptkit::Error::from)?;
    let config = LlamaConfig::from_gguf(&gguf)?;
    let mut types = BTreeMap::<String, usize>::new();
    let mut parameters = 0u64;
    for t in gguf.tensors() {
        *types.entry(t.ty.name().to_string()).or_default() += 1;
        parameters += t.n_elements();
    }
    let report = json!({
        "model": path.display().to_string(),
        "gguf_version": gguf.version(),
        "architecture": config.architecture,
        "name": gguf.get("general.name").and_then(|v| v.as_str()),
        "parameters": parameters,
        "layers": config.n_layers,
        "d_model": config.d_model,
        "heads": config.n_heads,
        "kv_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "ffn_dim": config.ffn_dim,
        "vocab_size": config.vocab_size,
        "context_len": config.context_len,
        "rope_theta": config.rope_theta,
        "tied_embeddings": config.tied_embeddings,
        "tensors": gguf.tensors().len(),
        "tensor_types": types,
    });
    emit(out, report, || {
        let types: Vec<String> = types.iter().map(|(ty, n)| format!("{n} {ty}")).collect();
        say(format_args!(
            "{}: {}, {:.1}M parameters, {} layers, width {}, {} heads ({} kv), context {}, vocab {}; tensors: {}\n",
            path.display(),
            config.architecture,
            parameters as f64 / 1e6,
            config.n_layers,
            config.d_model,
            config.n_heads,
            config.n_kv_heads,
            config.context_len,
            config.vocab_size,
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

#[derive(Args)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.1)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

pub fn generate(args: GenerateArgs) -> Result<(), CliError> {
    let sampling = args.sampling.params();
    sampling.validate()?;
    let engine = load_engine(&args.model)?;
    let adapters = args.adapters.load(&engine)?;
    let messages: Vec<Message>;
    let prompt = if args.chat {
        if engine.tokenizer().chat_template_source().is_none() {
            eprintln!("warning: the model has no chat template; using ChatML");
        }
        messages = args
            .system
            .iter()
            .map(|s| Message::new("system", s))
            .chain([Message::new("user", &args.prompt)])
            .collect();
        Prompt::Chat(&messages)
    } else {
        Prompt::Text(&args.prompt)
    };
    let ids = engine.encode_prompt(&prompt)?;
    let options =
        GenerateOptions { max_tokens: args.max_tokens, sampling, stop_strings: args.stop, stop_at_eos: true };

    let timing = run_timed(&engine, &ids, &options, &adapters, |text| {
        if !args.out.json {
            say(format_args!("{text}"));
        }
    })?;
    let g = &timing.generation;
    if !args.out.json {
        say(format_args!("\n"));
    }
    eprintln!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, stop: {}]",
        g.prompt_tokens,
        timing.prefill_tok_s,
        g.tokens.len(),
        timing.decode_tok_s,
        g.stop.as_str()
    );
    emit(
        args.out,
        json!({
            "text": g.text,
            "tokens": g.tokens,
            "prompt_tokens": g.prompt_tokens,
            "prefill_tok_s": timing.prefill_tok_s,
            "decode_tok_s": timing.decode_tok_s,
            "stop": g.stop.as_str(),
        }),
        || {},
    );
    Ok(())
}

pub struct Timed {
    pub generation: adaptkit::generate::Generation,
    pub prefill_tok_s: f64,
    /// Tokens after the first, over the time from the first token to the last.
    pub decode_tok_s: f64,
}

/// Generates while timing the prefill and the decode steps from the engine's events.
pub fn run_timed(
    engine: &Engine,
    ids: &[u32],
    options: &GenerateOptions,
    adapters: &dyn Adapters,
    mut on_text: impl FnMut(&str) + Send,
) -> Result<Timed, CliError> {
    let start = Instant::now();
    let mut prefilled = None;
    let mut first_token = None;
    let mut last_token = start;
    let mut count = 0usize;
    let generation =
        engine.generate(ids, options, adapters, &CancelToken::new(), &mut |event| match event {
            GenerationEvent::Prefilled { .. } => prefilled = Some(Instant::now()),
            GenerationEvent::Token { text, .. } => {
                let now = Instant::now();
                first_token.get_or_insert(now);
                last_token = now;
                count += 1;
                on_text(text);
            }
            GenerationEvent::Tail { text } => on_text(text),
        })?;
    let prefill_secs = prefilled.map_or(0.0, |t| (t - start).as_secs_f64());
    let decode_secs = first_token.map_or(0.0, |t| (last_token - t).as_secs_f64());
    let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Ok(Timed {
        prefill_tok_s: rate(ids.len(), prefill_secs),
        decode_tok_s: rate(count.saturating_sub(1), decode_secs),
        generation,
    })
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
    #[command(flatten)]
    out: Output,
}

pub fn eval(args: EvalArgs) -> Result<(), CliError> {
    if args.seq < 2 {
        return Err(CliError::msg(format!(
            "--seq {} is too short: a window needs at least 2 tokens",
            args.seq
        )));
    }
    let text = std::fs::read_to_string(&args.data).map_err(|e| CliError::io(&args.data, e))?;
    let engine = load_engine(&args.model)?;
    let adapters = args.adapters.load(&engine)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} windows {elapsed}<{eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message("eval");
    let result = engine.perplexity(&text, args.seq, &adapters, &CancelToken::new(), &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    emit(
        args.out,
        json!({"perplexity": result.perplexity, "tokens": result.tokens, "windows": result.windows, "seq": args.seq}),
        || {
            say(format_args!(
                "perplexity {:.4} over {} tokens ({} windows of {})\n",
                result.perplexity, result.tokens, result.windows, args.seq
            ))
        },
    );
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
    #[arg(long = "type", default_value = "same")]
    merged_type: String,
    #[command(flatten)]
    out_format: Output,
}

/// `--type`: `same` or a block format we can write.
pub fn merged_type(name: &str) -> Result<MergedType, CliError> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "SAME" => MergedType::Same,
        upper => MergedType::Fixed(
            (0..64)
                .filter_map(GgmlType::from_id)
                .find(|ty| ty.name() == upper && adaptkit::quant::is_supported(*ty))
                .ok_or_else(|| CliError::msg(format!("--type {name}: not a block format we can write")))?,
        ),
    })
}

pub fn merge(args: MergeArgs) -> Result<(), CliError> {
    let merged_type = merged_type(&args.merged_type)?;
    if args.adapters.is_empty() {
        return Err(CliError::msg("merge needs at least one --adapter"));
    }
    let path = resolve_model(args.model.model.clone())?;
    if path.is_dir() {
        return Err(CliError::msg(format!("{}: merge reads GGUF models", path.display())));
    }
    let engine = load_engine(&args.model)?;
    let adapters = args.adapters.load(&engine)?;
    let base = GgufFile::open(&path).map_err(adaptkit::Error::from)?;
    let report = export_merged(&base, &adapters, merged_type, &args.out)?;
    let out = args.out.display().to_string();
    emit(
        args.out_format,
        json!({"out": out, "tensors_merged": report.tensors_merged, "tensors_copied": report.tensors_copied}),
        || {
            say(format_args!(
                "{out}: {} tensors merged, {} copied\n",
                report.tensors_merged, report.tensors_copied
            ))
        },
    );
    Ok(())
}
