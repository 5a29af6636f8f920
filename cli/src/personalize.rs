//! `adaptkit personalize`: an adapter generated from a context in one pass of the model (the
//! generator fetched with the model, or `--generator`); `--state` keeps the context's running
//! state so later text extends it. `adaptkit train-generator`: trains a generator on a corpus.

use std::io::Write;
use std::path::{Path, PathBuf};

use adaptkit::adapt::generative::GeneratorConfig;
use adaptkit::model::Projection;
use adaptkit::runtime::personalize::save_generator;
use adaptkit::runtime::{CancelToken, Context, GeneratorSource};
use adaptkit::store::FileStore;
use adaptkit::train::generator::GeneratorTrainOptions;
use clap::Args;
use serde_json::json;

use crate::args::{read_bytes, read_text, ModelArgs};
use crate::{emit, fetch, interrupt, progress, say, CliError, Output};

#[derive(Args)]
pub struct PersonalizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The generator (default: the one `adaptkit fetch` installed for the demo model).
    #[arg(long)]
    generator: Option<PathBuf>,
    /// Text files to read, in order (notes, messages, a document).
    #[arg(long = "context", required = true)]
    contexts: Vec<PathBuf>,
    /// The context's running state: read first when it exists, written back after, so text
    /// given later extends the same context.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Directory for the generated adapter (a PEFT LoRA).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    output: Output,
}

pub fn personalize(args: PersonalizeArgs) -> Result<(), CliError> {
    let generator_path = args.generator.clone().unwrap_or_else(fetch::default_generator);
    if !generator_path.is_file() {
        return Err(CliError::msg(format!(
            "no generator at {}; run `adaptkit fetch` or give --generator",
            generator_path.display()
        )));
    }
    let texts: Vec<String> = args.contexts.iter().map(|p| read_text(p)).collect::<Result<_, _>>()?;
    let model = args.model.open(false)?;
    let generator = model.load_generator(GeneratorSource::Path(generator_path))?;
    let mut context = match &args.state {
        Some(path) if path.exists() => {
            Context::from_bytes(read_bytes(path)?, &path.display().to_string(), &generator)?
        }
        _ => generator.context(),
    };
    let cancel = CancelToken::new();
    interrupt::cancel_on_ctrl_c(&cancel);
    let mut reports = Vec::new();
    for (text, path) in texts.iter().zip(&args.contexts) {
        let report = model.read_context(&generator, &mut context, text, &cancel).map_err(|e| match e {
            adaptkit::Error::Cancelled => CliError::interrupted("interrupted: nothing written"),
            other => CliError::msg(format!("{}: {other}", path.display())),
        })?;
        reports.push(report);
    }
    let adapter = model.generated_adapter(&generator, &context)?;
    adapter.save_dir(&args.out)?;
    if let Some(path) = &args.state {
        let bytes = context.to_bytes()?;
        adaptkit::format::write_atomic(path, |w| w.write_all(&bytes)).map_err(|e| CliError::io(path, e))?;
    }
    let read: usize = reports.iter().map(|r| r.tokens).sum();
    let encode_ms: f64 = reports.iter().map(|r| r.encode_ms).sum();
    let report = json!({
        "tokens": read,
        "total_tokens": context.tokens(),
        "encode_ms": encode_ms,
        "adapter": adapter.info(),
        "generator": generator.info().id,
    });
    emit(args.output, &report, &[("out", json!(args.out))], || {
        say(format_args!(
            "read {read} context tokens ({} in the context) in {:.1} s; generated a rank-{} LoRA on {}; saved to {}\n",
            context.tokens(),
            encode_ms / 1e3,
            generator.info().config.r2,
            Projection::list(&generator.info().config.targets),
            args.out.display()
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct TrainGeneratorArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Directory of the corpus: every `.txt` file under it is a document.
    #[arg(long)]
    corpus: PathBuf,
    /// Every this many documents (in name order) one is held out for evaluation.
    #[arg(long, default_value_t = 20)]
    hold_out_every: usize,
    /// The generator file to write.
    #[arg(long)]
    out: PathBuf,
    /// Checkpoints here (resumed from when one is there).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Step records (JSON lines) written here as the run goes.
    #[arg(long)]
    log: Option<PathBuf>,
    /// `R₁ = R₂`: the width of the generator's state and the rank of the generated LoRA.
    #[arg(long, default_value_t = GeneratorConfig::default().r2)]
    rank: usize,
    #[arg(long, default_value_t = GeneratorConfig::default().alpha)]
    alpha: f32,
    /// Projections to generate updates for (short names, comma-separated).
    #[arg(long, default_value = "o", value_delimiter = ',', value_parser = crate::args::parse::<Projection>)]
    targets: Vec<Projection>,
    /// Context tokens per pass of the model, on the device and in training (each chunk of a
    /// training document is one such window, so both see the same block inputs).
    #[arg(long, default_value_t = GeneratorConfig::default().window)]
    window: usize,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().documents)]
    documents: usize,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().chunks)]
    chunks: usize,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().lr)]
    lr: f32,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().warmup)]
    warmup: usize,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().eval_every)]
    eval_every: usize,
    #[arg(long, default_value_t = GeneratorTrainOptions::default().eval_samples)]
    eval_samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A description of the corpus kept in the generator's training record.
    #[arg(long, default_value = "")]
    corpus_name: String,
    #[command(flatten)]
    output: Output,
}

/// Every `.txt` file under `dir`, in path order.
fn corpus_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| CliError::io(&d, e))? {
            let path = entry.map_err(|e| CliError::io(&d, e))?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "txt") {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CliError::msg(format!("{}: no .txt files", dir.display())));
    }
    Ok(files)
}

pub fn train_generator(args: TrainGeneratorArgs) -> Result<(), CliError> {
    let files = corpus_files(&args.corpus)?;
    let documents: Vec<String> = files.iter().map(|path| read_text(path)).collect::<Result<_, _>>()?;
    let config = GeneratorConfig {
        r1: args.rank,
        r2: args.rank,
        alpha: args.alpha,
        targets: args.targets.clone(),
        window: args.window,
    };
    let options = GeneratorTrainOptions {
        steps: args.steps,
        documents: args.documents,
        chunks: args.chunks,
        chunk_len: args.window,
        lr: args.lr,
        warmup: args.warmup,
        eval_every: args.eval_every,
        eval_samples: args.eval_samples,
        seed: args.seed,
        ..GeneratorTrainOptions::default()
    };
    let model = args.model.open(true)?;
    let store = match &args.checkpoint_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
            Some(FileStore::new(dir))
        }
        None => None,
    };
    let mut log = match &args.log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| CliError::io(path, e))?,
        ),
        None => None,
    };
    let record = json!({
        "corpus": args.corpus_name,
        "model": args.model.path()?.file_name().map(|n| n.to_string_lossy().to_string()),
    });
    let cancel = CancelToken::new();
    interrupt::cancel_on_ctrl_c(&cancel);
    let bar = progress::bar("generator", args.steps as u64, "steps");
    let result = model.train_generator(
        &config,
        &documents,
        args.hold_out_every,
        &options,
        store.as_ref().map(|s| s as &dyn adaptkit::store::Store),
        record,
        &cancel,
        &mut |step| {
            bar.set_position(step.step as u64);
            bar.set_message(format!("loss {:.3}  lr {:.1e}  |g| {:.2}", step.loss, step.lr, step.grad_norm));
            if let Some(eval) = &step.eval {
                progress::println(
                    &bar,
                    &format!(
                        "step {}: held-out completion {:.3} (base {:.3}), reconstruction {:.3} (base {:.3})",
                        eval.step,
                        eval.completion,
                        eval.completion_base,
                        eval.reconstruction,
                        eval.reconstruction_base
                    ),
                );
            }
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{}", serde_json::to_string(step).unwrap_or_default());
            }
        },
    );
    bar.finish_and_clear();
    let (bytes, report) = result.map_err(|e| match e {
        adaptkit::Error::Cancelled => {
            CliError::interrupted("interrupted: checkpoint saved; run again to resume")
        }
        other => other.into(),
    })?;
    save_generator(&bytes, &args.out)?;
    emit(args.output, &report, &[("out", json!(args.out)), ("bytes", json!(bytes.len()))], || {
        let last = report.evaluations.last();
        say(format_args!(
            "trained {} steps ({} tokens); held-out completion {:.3} (base {:.3}), reconstruction {:.3} (base {:.3}); wrote {} ({:.1} MB)\n",
            report.steps,
            report.tokens,
            last.map_or(f32::NAN, |e| e.completion),
            last.map_or(f32::NAN, |e| e.completion_base),
            last.map_or(f32::NAN, |e| e.reconstruction),
            last.map_or(f32::NAN, |e| e.reconstruction_base),
            args.out.display(),
            bytes.len() as f64 / 1e6
        ))
    });
    Ok(())
}
