//! `Engine`: one loaded model with its tokenizer and its own worker pool. `Send + Sync`, no
//! global state; every long call takes a `CancelToken` and reports progress.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::control::CancelToken;
use crate::device::{guard, ComputeDevice, DeviceChoice};
use crate::error::Error;
use crate::format::gguf::GgufFile;
use crate::format::safetensors::SafetensorsFile;
use crate::generate::{self, GenerateOptions, Generation, GenerationEvent};
use crate::model::{Adapters, Llama, LlamaConfig};
use crate::parallel::Threads;
use crate::tokenizer::{Message, Tokenizer};

/// More workers than this only adds contention on any device we target.
pub const MAX_THREADS: usize = 256;

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// Run the model on an autodiff device, so that adapters can be trained on it.
    pub trainable: bool,
    /// CPU, GPU, or a hardware GPU when there is one.
    pub device: DeviceChoice,
}

pub struct Engine {
    model: Llama,
    tokenizer: Tokenizer,
    threads: Threads,
    source: PathBuf,
    compute: ComputeDevice,
}

/// What to generate from: raw text, or a conversation rendered with the model's chat template.
pub enum Prompt<'a> {
    Text(&'a str),
    Chat(&'a [Message]),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Tokens whose next-token loss was counted.
    pub tokens: usize,
    pub windows: usize,
}

impl Engine {
    /// Loads a GGUF file, or a Hugging Face model directory (`config.json`, `*.safetensors`,
    /// `tokenizer.json`).
    pub fn load(path: &Path, options: &EngineOptions) -> Result<Self, Error> {
        let compute = ComputeDevice::select(options.device)?;
        let device =
            if options.trainable { compute.device.clone().autodiff() } else { compute.device.clone() };
        let (model, tokenizer) = if path.is_dir() {
            load_hf_dir(path, &device)?
        } else {
            let gguf = GgufFile::open(path)?;
            (Llama::from_gguf(&gguf, &device)?, Tokenizer::from_gguf(&gguf)?)
        };
        if options.threads > MAX_THREADS {
            return Err(Error::InvalidArgument(format!(
                "{} threads is more than {MAX_THREADS}",
                options.threads
            )));
        }
        let threads =
            Threads::new(options.threads).map_err(|e| Error::Backend(format!("worker pool: {e}")))?;
        Ok(Self { model, tokenizer, threads, source: path.to_path_buf(), compute })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Runs `work` on the model, which it may change (e.g. PiSSA's residual weights), on this
    /// engine's threads.
    pub fn with_model_mut<R: Send>(&mut self, work: impl FnOnce(&mut Llama) -> R + Send) -> R {
        let Self { threads, model, .. } = self;
        threads.install(|| work(model))
    }

    /// The device the model runs on, and why `auto` chose the CPU when it did.
    pub fn compute_device(&self) -> &ComputeDevice {
        &self.compute
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// Runs `work` on this engine's worker pool (training, tools); a GPU failure inside it
    /// becomes [`Error::Device`].
    pub fn run<R: Send>(&self, work: impl FnOnce(&Self) -> Result<R, Error> + Send) -> Result<R, Error> {
        self.threads.install(|| guard(&self.compute, || work(self)))
    }

    /// Token ids of a prompt, with the chat template applied for conversations.
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, Error> {
        match prompt {
            Prompt::Text(text) => Ok(self.tokenizer.encode(text, true)?),
            // The rendered template already holds every special token it wants.
            Prompt::Chat(messages) => {
                let rendered = self.tokenizer.chat_template()?.render(messages, true)?;
                Ok(self.tokenizer.encode(&rendered, false)?)
            }
        }
    }

    /// Generates from `prompt` with `adapters` (e.g. an [`AdapterSet`](crate::adapt::AdapterSet),
    /// or [`NoAdapters`](crate::model::NoAdapters)).
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        adapters: &dyn Adapters,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(GenerationEvent) + Send),
    ) -> Result<Generation, Error> {
        self.run(|engine| {
            generate::generate(&engine.model, &engine.tokenizer, prompt, options, adapters, cancel, on_event)
        })
    }

    /// Runs `tokens` and returns the logits of the last position (for tests and tools).
    pub fn last_logits(&self, tokens: &[u32], adapters: &dyn Adapters) -> Result<Vec<f32>, Error> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens".into()));
        }
        self.run(|engine| {
            let mut cache = engine.model.new_cache(1);
            let hidden = engine.model.forward_adapted(tokens, 1, &mut cache, adapters)?;
            engine.model.logits(hidden, tokens.len() - 1..tokens.len())
        })
    }

    /// Perplexity of `text` as one token stream cut into non-overlapping windows of `window`
    /// tokens (the last partial window dropped): exp of the mean next-token loss over all
    /// predicted positions — what transformers' `model(ids, labels=ids).loss` averages per window.
    pub fn perplexity(
        &self,
        text: &str,
        window: usize,
        adapters: &dyn Adapters,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Perplexity, Error> {
        if window < 2 || window > self.model.config().context_len {
            return Err(Error::InvalidArgument(format!(
                "window of {window} tokens must be in 2..={}",
                self.model.config().context_len
            )));
        }
        let tokens = self.tokenizer.encode(text, true)?;
        let windows = tokens.len() / window;
        if windows == 0 {
            return Err(Error::InvalidArgument(format!(
                "the text has {} tokens, fewer than one window of {window}",
                tokens.len()
            )));
        }
        self.run(|engine| {
            let mut total_nll = 0.0f64;
            for (w, ids) in tokens.chunks_exact(window).enumerate() {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                total_nll += engine.window_nll(ids, adapters)?;
                on_progress(w + 1, windows);
            }
            let counted = windows * (window - 1);
            Ok(Perplexity { perplexity: (total_nll / counted as f64).exp(), tokens: counted, windows })
        })
    }

    /// Sum of next-token negative log-likelihoods over one window.
    fn window_nll(&self, ids: &[u32], adapters: &dyn Adapters) -> Result<f64, Error> {
        // Logits of a whole window would take len x vocab floats; score them in slices.
        const SLICE: usize = 64;
        let vocab = self.model.config().vocab_size;
        let mut cache = self.model.new_cache(1);
        let hidden = self.model.forward_adapted(ids, 1, &mut cache, adapters)?;
        let mut nll = 0.0;
        let predicted = ids.len() - 1;
        for start in (0..predicted).step_by(SLICE) {
            let end = (start + SLICE).min(predicted);
            let logits = self.model.logits(hidden.clone(), start..end)?;
            for (row, &target) in logits.chunks_exact(vocab).zip(&ids[start + 1..end + 1]) {
                nll += log_sum_exp(row) - row[target as usize] as f64;
            }
        }
        Ok(nll)
    }
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

fn load_hf_dir(dir: &Path, device: &Device) -> Result<(Llama, Tokenizer), Error> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let config_path = dir.join("config.json");
    let config_text = std::fs::read_to_string(&config_path).map_err(io(config_path.clone()))?;
    let json: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| Error::Config(format!("{}: {e}", config_path.display())))?;
    let config = LlamaConfig::from_hf_json(&json)?;
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir.to_path_buf()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(Error::Config(format!("{}: no *.safetensors files", dir.display())));
    }
    let files = shards.iter().map(SafetensorsFile::open).collect::<Result<Vec<_>, _>>()?;
    let model = Llama::from_safetensors(config, &files, device)?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
    Ok((model, tokenizer))
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_and_sync() {
        assert_send_sync::<super::Engine>();
    }
}
