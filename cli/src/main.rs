//! `adaptkit`: the command-line face of the runtime. Every verb takes `--json` and then prints
//! exactly one JSON object as its last stdout line; progress goes to stderr. Errors are one line
//! on stderr and exit code 2 (130 when interrupted).

mod bench;
mod commands;
mod fetch;
mod interrupt;
mod memory;
mod method;
mod patch;
mod plot;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use adaptkit::device::DeviceChoice;
use adaptkit::engine::EngineOptions;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "adaptkit", version, about = "Run and adapt small quantized language models on the device")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download the demo model (SmolLM2-135M-Instruct, GGUF Q4_1) into the cache.
    Fetch {
        /// Directory to cache it in (default: $ADAPTKIT_HOME/models or ~/.cache/adaptkit/models).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        out: Output,
    },
    /// Show a model's architecture, parameter count and tensor types.
    Info {
        /// GGUF file or Hugging Face model directory (default: the fetched demo model).
        model: Option<PathBuf>,
        #[command(flatten)]
        out: Output,
    },
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
    /// Adapter patches (.akp): compress (ComPEFT), inspect, apply, port (PortLLM), merge, sign,
    /// verify, keygen.
    Patch {
        #[command(subcommand)]
        command: patch::PatchCommand,
    },
}

/// Options every verb shares.
#[derive(Args, Clone, Copy)]
pub struct Output {
    /// Print one JSON object as the last stdout line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face model directory (default: the fetched demo model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where the model runs: cpu, gpu (Vulkan/Metal/DX12, software GPUs included) or auto (a
    /// hardware GPU when there is one, else the CPU, saying why).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceChoice,
}

fn parse_device(s: &str) -> Result<DeviceChoice, String> {
    s.parse().map_err(|e: adaptkit::Error| e.to_string())
}

impl ModelArgs {
    pub fn engine_options(&self, trainable: bool) -> EngineOptions {
        EngineOptions { threads: self.threads, trainable, device: self.device }
    }
}

/// A failure the user can act on: printed as one line, exit code 2.
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
    fn from(error: adaptkit::Error) -> Self {
        Self::msg(error.to_string())
    }
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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch { dir, out } => commands::fetch(dir, out),
        Command::Info { model, out } => commands::info(model, out),
        Command::Generate(args) => commands::generate(args),
        Command::Eval(args) => commands::eval(args),
        Command::Bench(args) => bench::run(args),
        Command::Merge(args) => commands::merge(args),
        Command::Train(args) => train::run(*args),
        Command::Patch { command } => patch::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError { message, code }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Prints the verb's result: the JSON object as the last stdout line, or `human` for people.
pub fn emit(out: Output, json: serde_json::Value, human: impl FnOnce()) {
    if out.json {
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
