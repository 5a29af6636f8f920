//! `adaptkit`: the command-line face of the runtime (`adaptkit::runtime`). It parses arguments,
//! calls the runtime, and prints: progress bars and human lines on stderr/stdout, and with
//! `--json` exactly one JSON object (a runtime report, serialized) as the last stdout line.
//! Errors are one line on stderr and exit code 2 (130 when interrupted).

mod args;
mod bench;
mod commands;
mod fetch;
mod flower;
mod interrupt;
mod method;
mod patch;
mod personalize;
mod plot;
mod progress;
mod sync;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "adaptkit", version, about = "Run and adapt small quantized language models on the device")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a model into the cache: the demo model (SmolLM2-135M-Instruct, GGUF Q4_1) or --model gemma3-270m.
    Fetch {
        /// Directory to cache it in (default: $ADAPTKIT_HOME/models or ~/.cache/adaptkit/models).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Which model: smollm2-135m (the demo model, default) or gemma3-270m (Gemma 3 270M,
        /// GGUF Q4_K_M, under the Gemma terms, installed beside it).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(fetch::MODELS))]
        model: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Show a model's architecture, parameter count and tensor types.
    Info(commands::InfoArgs),
    /// Generate text from a prompt.
    Generate(commands::GenerateArgs),
    /// Perplexity of a text file.
    Eval(commands::EvalArgs),
    /// Measure prefill and decode speed and peak memory.
    Bench(bench::BenchArgs),
    /// Merge adapters (LoRA, DoRA, (IA)³, PEQA, LoFiT) into the model's weights and write a GGUF.
    Merge(commands::MergeArgs),
    /// Fine-tune an adapter (LoRA, DoRA, (IA)³, prompt, prefix, DePT, PEQA, LoFiT) and save it.
    Train(Box<train::TrainArgs>),
    /// The adaptation methods: their options and defaults, learning rates, and what they do.
    Methods {
        #[command(flatten)]
        out: Output,
    },
    /// Adapter patches (.akp): compress (ComPEFT), inspect, apply, port (PortLLM), merge, sign,
    /// verify, keygen.
    Patch {
        #[command(subcommand)]
        command: patch::PatchCommand,
    },
    /// Generate an adapter from a context (notes, messages, a document) in one pass of the
    /// model, with no training; --state keeps the context so later text extends it.
    Personalize(personalize::PersonalizeArgs),
    /// Train the generator `personalize` uses, on a corpus of text files.
    TrainGenerator(Box<personalize::TrainGeneratorArgs>),
    /// Join a Flower federation: this device as a node of a SuperLink, training the adapters it
    /// is sent on --data and returning the updates.
    FlowerNode(flower::NodeArgs),
    /// Write the first adapter a Flower ServerApp starts from, and print the run config that
    /// names it and this model's base.
    FlowerInit(flower::InitArgs),
    /// Run the sync server: federated tasks and rounds, the signed patch registry.
    Serve(sync::ServeArgs),
    /// Federated adaptation from this device: enrol, pull, push, status; and the operator's
    /// task commands.
    Sync {
        #[command(subcommand)]
        command: sync::SyncCommand,
    },
}

/// Options every verb shares.
#[derive(Args, Clone, Copy)]
pub struct Output {
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

/// A one-line message for stderr and the exit code: 2, or 130 for an interruption (Ctrl-C).
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub fn msg(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 2 }
    }

    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Self::msg(format!("{}: {error}", path.display()))
    }

    pub fn interrupted(message: impl Into<String>) -> Self {
        Self { message: message.into(), code: 130 }
    }
}

impl From<adaptkit::Error> for CliError {
    /// The library names a bad option by its field; here that is the flag (`top_p` is
    /// `--top-p`) when there is one.
    fn from(error: adaptkit::Error) -> Self {
        match error {
            adaptkit::Error::InvalidOption { field, value, message } if is_flag(&field) => {
                Self::msg(format!("{} {value}: {message}", flag(&field)))
            }
            adaptkit::Error::OptionNotTaken { option, method, takes } => {
                let takes: Vec<String> = takes.iter().map(|t| flag(t)).collect();
                let takes = if takes.is_empty() { "no options of its own".into() } else { takes.join(", ") };
                Self::msg(format!("{} does not apply to --method {method} (it takes {takes})", flag(&option)))
            }
            other => Self::msg(other.to_string()),
        }
    }
}

/// The flag of a field: `top_p` is `--top-p`.
fn flag(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// Whether `--field` (underscores as dashes) is a flag of some verb.
fn is_flag(field: &str) -> bool {
    fn has(command: &clap::Command, long: &str) -> bool {
        command
            .get_arguments()
            .any(|a| a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|al| al.contains(&long)))
            || command.get_subcommands().any(|c| has(c, long))
    }
    has(&Cli::command(), &flag(field)[2..])
}

fn main() -> ExitCode {
    // A GPU failure comes back as a one-line error; the runtime's panic message behind it is
    // printed only when a backtrace is asked for.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !adaptkit::device::panic_becomes_error() {
                report(info);
            }
        }));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value is one line, like every other error (clap adds a hint on more lines).
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            let rendered = e.to_string();
            eprintln!("{}", rendered.lines().next().unwrap_or("error: invalid value"));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Fetch { dir, model, out } => commands::fetch(dir, model, out),
        Command::Info(args) => commands::info(args),
        Command::Generate(args) => commands::generate(args),
        Command::Eval(args) => commands::eval(args),
        Command::Bench(args) => bench::run(args),
        Command::Merge(args) => commands::merge(args),
        Command::Train(args) => train::run(*args),
        Command::Methods { out } => method::list(out),
        Command::Patch { command } => patch::run(command),
        Command::FlowerNode(args) => flower::node(args),
        Command::FlowerInit(args) => flower::init(args),
        Command::Personalize(args) => personalize::personalize(args),
        Command::TrainGenerator(args) => personalize::train_generator(*args),
        Command::Serve(args) => sync::serve(args),
        Command::Sync { command } => sync::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError { message, code }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Prints the verb's result: the report as the JSON object of the last stdout line, or `human`
/// for people. `extra` adds the fields only the CLI knows (the output path).
pub fn emit<T: serde::Serialize>(
    out: Output,
    report: &T,
    extra: &[(&str, serde_json::Value)],
    human: impl FnOnce(),
) {
    if out.json {
        let mut json = serde_json::to_value(report).unwrap_or_default();
        if let Some(object) = json.as_object_mut() {
            for (key, value) in extra {
                object.insert((*key).to_string(), value.clone());
            }
        }
        say(format_args!("{json}\n"));
    } else {
        human();
    }
}

/// Writes to stdout; a closed pipe (`adaptkit generate … | head`) is not an error worth a panic.
pub fn say(text: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_fmt(text).and_then(|()| stdout.flush());
}
