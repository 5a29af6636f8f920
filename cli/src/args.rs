//! Arguments several verbs share: which model and where it runs, the adapters to attach, and
//! reading the small files flags name (keys, texts).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adaptkit::device::DeviceChoice;
use adaptkit::patch::keys;
use adaptkit::runtime::patches::split_weight;
use adaptkit::runtime::{AdapterSource, LoadOptions, Model, OpenOptions};
use adaptkit::store::FileStore;
use clap::Args;

use crate::{fetch, CliError};

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
    #[arg(long, default_value = "cpu", value_parser = parse::<DeviceChoice>)]
    pub device: DeviceChoice,
    /// Decode on integer (i8) activations where the CPU has kernels for them, as llama.cpp
    /// does: about 1.2x faster decode (x86 with AVX-512 VNNI), at about 1-2% higher perplexity than
    /// f32 activations.
    #[arg(long)]
    pub int8_activations: bool,
    /// Prefill and training on the CPU's bf16 tile unit where it has one (Intel AMX on Linux):
    /// weights and activations rounded to bf16, sums in f32, as PyTorch's bf16 autocast. Several
    /// times faster products there; the f32 products stay the default and the reference.
    #[arg(long)]
    pub bf16_products: bool,
}

/// A flag's value parsed by the library (clap's message names the flag and the value).
pub fn parse<T: std::str::FromStr<Err = adaptkit::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: adaptkit::Error| match e {
        adaptkit::Error::InvalidOption { message, .. } => message,
        other => other.to_string(),
    })
}

impl ModelArgs {
    /// The model file or directory: the one given, or the fetched demo model.
    pub fn path(&self) -> Result<PathBuf, CliError> {
        let path = match &self.model {
            Some(path) => path.clone(),
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

    pub fn open_options(&self, trainable: bool) -> OpenOptions {
        OpenOptions {
            threads: self.threads,
            device: self.device,
            trainable,
            cache: Some(Arc::new(FileStore::new(fetch::home()))),
            integer_activations: self.int8_activations,
            bf16_products: self.bf16_products,
        }
    }

    /// Opens the model (for training when `trainable`) and says on stderr where it runs.
    pub fn open(&self, trainable: bool) -> Result<Model, CliError> {
        self.open_path(&self.path()?, trainable)
    }

    /// [`open`](Self::open) of another model file with the same device and threads.
    pub fn open_path(&self, path: &Path, trainable: bool) -> Result<Model, CliError> {
        let model = Model::open_path(path, &self.open_options(trainable))?;
        let info = model.info();
        if let Some(reason) = &info.device_fallback {
            eprintln!("device: cpu (auto: {reason})");
        } else if info.device != "cpu" {
            eprintln!("device: {}", info.device);
        }
        Ok(model)
    }
}

/// `--adapter PATH[:SCALE]`, repeatable: saved adapters (PEFT directories of any method) and
/// patches (`.akp`) acting together.
#[derive(Args, Clone)]
pub struct AdapterArgs {
    /// A saved adapter directory (any method) or patch file (.akp), optionally with a scale
    /// (`dir:0.5`); repeatable.
    #[arg(long = "adapter", value_name = "PATH[:SCALE]")]
    pub adapters: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// What a patch must satisfy to be used.
#[derive(Args, Clone)]
pub struct TrustArgs {
    /// Adapters must be patches signed by one of these Ed25519 public keys (repeatable).
    #[arg(long = "trusted-key", value_name = "KEY.pub")]
    pub trusted_keys: Vec<PathBuf>,
    /// Attach patches made for another base of the same architecture as they are (PortLLM).
    #[arg(long)]
    pub port: bool,
}

impl TrustArgs {
    pub fn load_options(&self) -> Result<LoadOptions, CliError> {
        Ok(LoadOptions { trusted_keys: read_trusted_keys(&self.trusted_keys)?, allow_port: self.port })
    }
}

impl AdapterArgs {
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }

    /// Loads every adapter (each checked before any is attached), then attaches them in order.
    pub fn attach(&self, model: &Model) -> Result<(), CliError> {
        let options = self.trust.load_options()?;
        let mut loaded = Vec::new();
        for spec in &self.adapters {
            let (path, scale) = split_weight(spec)?;
            loaded.push((model.load_adapter(AdapterSource::Path(path.into()), &options)?, scale));
        }
        for (adapter, scale) in &loaded {
            model.attach(adapter, *scale)?;
        }
        Ok(())
    }
}

pub fn read_text(path: &Path) -> Result<String, CliError> {
    Ok(adaptkit::format::read_text(path)?)
}

pub fn read_bytes(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::io(path, e))
}

pub fn read_trusted_keys(paths: &[PathBuf]) -> Result<Vec<[u8; 32]>, CliError> {
    paths
        .iter()
        .map(|p| {
            keys::parse_public_key(&read_text(p)?).map_err(|m| CliError::msg(format!("{}: {m}", p.display())))
        })
        .collect()
}

pub fn read_secret_key(path: &Path) -> Result<keys::SigningKey, CliError> {
    keys::parse_secret_key(&read_text(path)?).map_err(|m| CliError::msg(format!("{}: {m}", path.display())))
}
