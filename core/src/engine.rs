//! `Engine`: one loaded model with its tokenizer and its own worker pool. `Send + Sync`, no
//! global state; every long call takes a `CancelToken` and reports progress. The runtime API
//! ([`crate::runtime`]) builds on it; tests and tools use it directly.

use std::future::Future;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::bytes::SharedBytes;
use crate::control::CancelToken;
use crate::device::{guard, guard_async, wait, ComputeDevice, DeviceChoice};
use crate::error::Error;
use crate::format::gguf::GgufFile;
use crate::format::safetensors::SafetensorsFile;
use crate::format::{map_file_stamped, FileStamp};
use crate::generate::{self, GenerateOptions, Generation, GenerationEvent};
use crate::model::linear::read_f32;
use crate::model::{Adapters, Decoder, DecoderConfig};
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
    /// Decode on integer activations where the CPU has kernels for them (llama.cpp's way:
    /// about 1.2x faster decode here, at about 1-2% higher perplexity than the f32
    /// activations of the reference, which are the default).
    pub integer_activations: bool,
    /// Run prefill's and training's products on the CPU's bf16 tile unit where it has one (Intel
    /// AMX, Linux): weights and activations rounded to bf16, sums in f32, as PyTorch's bf16
    /// autocast; several times faster there. Off by default: the f32 products are the reference.
    pub bf16_products: bool,
}

/// Where a model comes from: a path (a GGUF file or a Hugging Face model directory), or its
/// bytes (a phone's asset, a browser's download).
#[derive(Clone, Debug)]
pub enum ModelSource {
    Path(PathBuf),
    /// A whole GGUF file.
    Gguf(Vec<u8>),
    /// A Hugging Face model: `config.json`, `tokenizer.json` (and optionally
    /// `tokenizer_config.json`, which names the special tokens and holds the chat template), and
    /// the `*.safetensors` shards in name order.
    HuggingFace {
        config_json: Vec<u8>,
        tokenizer_json: Vec<u8>,
        tokenizer_config_json: Option<Vec<u8>>,
        safetensors: Vec<Vec<u8>>,
    },
}

/// The files a model was read from, kept as they were loaded (mapped, not copied), so that what
/// identifies the model (its fingerprint) and what a merge copies are exactly what runs.
pub enum ModelFiles {
    Gguf(GgufFile),
    HuggingFace(Vec<SafetensorsFile>),
}

/// What the model was loaded from: a label for messages, and the stamps of the files read
/// (none for bytes).
#[derive(Clone, Debug)]
pub struct Origin {
    pub label: String,
    pub stamps: Vec<FileStamp>,
}

pub struct Engine {
    model: Decoder,
    tokenizer: Tokenizer,
    threads: Threads,
    files: ModelFiles,
    origin: Origin,
    compute: ComputeDevice,
}

/// What to generate from: raw text, a conversation rendered with the model's chat template, or
/// token ids as they are (a prompt tokenized elsewhere, as llama.cpp's server accepts).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Text(String),
    Chat(Vec<Message>),
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
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
        Self::open(ModelSource::Path(path.to_path_buf()), options)
    }

    /// Loads a model from a path or from bytes. The options are checked before anything is read.
    pub fn open(source: ModelSource, options: &EngineOptions) -> Result<Self, Error> {
        let threads = worker_pool(options)?;
        Self::open_on(source, options, threads, ComputeDevice::select(options.device)?)
    }

    /// [`open`](Self::open), opening a GPU without blocking: the way to WebGPU in the browser.
    pub async fn open_async(source: ModelSource, options: &EngineOptions) -> Result<Self, Error> {
        let threads = worker_pool(options)?;
        Self::open_on(source, options, threads, ComputeDevice::select_async(options.device).await?)
    }

    fn open_on(
        source: ModelSource,
        options: &EngineOptions,
        threads: Threads,
        compute: ComputeDevice,
    ) -> Result<Self, Error> {
        let device =
            if options.trainable { compute.device.clone().autodiff() } else { compute.device.clone() };
        let (model, tokenizer, files, origin) = match source {
            ModelSource::Path(path) if path.is_dir() => load_hf_dir(&path, &device)?,
            ModelSource::Path(path) => {
                let (bytes, stamp) = read(&path)?;
                let (model, tokenizer, files) = load_gguf(bytes, &device)?;
                (model, tokenizer, files, Origin { label: path.display().to_string(), stamps: vec![stamp] })
            }
            ModelSource::Gguf(bytes) => {
                let (model, tokenizer, files) = load_gguf(SharedBytes::from_vec(bytes), &device)?;
                (model, tokenizer, files, Origin { label: "GGUF bytes".into(), stamps: Vec::new() })
            }
            ModelSource::HuggingFace { config_json, tokenizer_json, tokenizer_config_json, safetensors } => {
                let shards = safetensors
                    .into_iter()
                    .map(|bytes| SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)))
                    .collect::<Result<Vec<_>, _>>()?;
                let tokenizer =
                    Tokenizer::from_json_bytes(&tokenizer_json, tokenizer_config_json.as_deref())?;
                let model = hf_model(&config_json, "config.json", &shards, &device)?;
                let origin = Origin { label: "Hugging Face model bytes".into(), stamps: Vec::new() };
                (model, tokenizer, ModelFiles::HuggingFace(shards), origin)
            }
        };
        let model = if options.integer_activations { model.with_integer_activations() } else { model };
        let model = if options.bf16_products { model.with_bf16_products() } else { model };
        Ok(Self { model, tokenizer, threads, files, origin, compute })
    }

    pub fn model(&self) -> &Decoder {
        &self.model
    }

    /// The device the model runs on, and why `auto` chose the CPU when it did.
    pub fn compute_device(&self) -> &ComputeDevice {
        &self.compute
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The files the model was read from, as loaded.
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn threads(&self) -> usize {
        self.threads.count()
    }

    /// Runs `work` on this engine's worker pool (training, tools); a GPU failure inside it
    /// becomes [`Error::Device`].
    pub fn run<R: Send>(&self, work: impl FnOnce(&Self) -> Result<R, Error> + Send) -> Result<R, Error> {
        self.threads.install(|| guard(&self.compute, || work(self)))
    }

    /// [`run`](Self::run) for async work, awaited where it is (the browser's one thread).
    pub async fn run_async<R>(&self, work: impl Future<Output = Result<R, Error>>) -> Result<R, Error> {
        guard_async(&self.compute, work).await
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
            Prompt::Tokens(ids) => {
                let vocab = self.model.config().vocab_size;
                match ids.iter().find(|&&id| id as usize >= vocab) {
                    Some(id) => Err(Error::option(
                        "prompt.tokens",
                        id,
                        format!("token ids are below the vocabulary size {vocab}"),
                    )),
                    None => Ok(ids.clone()),
                }
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
            wait(generate::generate(
                &engine.model,
                &engine.tokenizer,
                prompt,
                options,
                adapters,
                cancel,
                on_event,
            ))
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
            let logits = engine.model.logits(hidden, tokens.len() - 1..tokens.len());
            crate::device::release_untracked_graphs(engine.model.device());
            logits
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
        self.perplexity_after("", text, window, adapters, cancel, on_progress)
    }

    /// [`perplexity`](Self::perplexity) of `text` with `prefix` before every window: the model
    /// reads it but it is not scored (the same tokens are scored as without it), so the two
    /// compare how much the prefix, e.g. a context in the prompt, helps.
    pub fn perplexity_after(
        &self,
        prefix: &str,
        text: &str,
        window: usize,
        adapters: &dyn Adapters,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Perplexity, Error> {
        self.run(|engine| wait(engine.score(prefix, text, window, adapters, cancel, on_progress)))
    }

    /// [`perplexity`](Self::perplexity), awaiting the read-backs (the browser's GPU path).
    pub async fn perplexity_async(
        &self,
        text: &str,
        window: usize,
        adapters: &dyn Adapters,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Perplexity, Error> {
        self.run_async(self.score("", text, window, adapters, cancel, on_progress)).await
    }

    async fn score(
        &self,
        prefix: &str,
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
        let prefix = if prefix.is_empty() { Vec::new() } else { self.tokenizer.encode(prefix, true)? };
        let context = self.model.config().context_len;
        if prefix.len() + window > context {
            return Err(Error::ContextOverflow { tokens: prefix.len() + window, context });
        }
        let windows = tokens.len() / window;
        if windows == 0 {
            return Err(Error::InvalidArgument(format!(
                "the text has {} tokens, fewer than one window of {window}",
                tokens.len()
            )));
        }
        let mut total_nll = 0.0f64;
        for (w, ids) in tokens.chunks_exact(window).enumerate() {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let nll = self.window_nll(&prefix, ids, adapters).await?;
            if !nll.is_finite() {
                return Err(Error::NonFiniteOutput { what: format!("the loss of window {}", w + 1) });
            }
            total_nll += nll;
            crate::device::release_untracked_graphs(self.model.device());
            on_progress(w + 1, windows);
        }
        let counted = windows * (window - 1);
        Ok(Perplexity { perplexity: (total_nll / counted as f64).exp(), tokens: counted, windows })
    }

    /// Sum of next-token negative log-likelihoods over one window (its first token is not
    /// predicted), read after `prefix`.
    async fn window_nll(
        &self,
        prefix: &[u32],
        window: &[u32],
        adapters: &dyn Adapters,
    ) -> Result<f64, Error> {
        // Logits of a whole window would take len x vocab floats; score them in slices.
        const SLICE: usize = 64;
        let vocab = self.model.config().vocab_size;
        let mut cache = self.model.new_cache(1);
        let ids: Vec<u32> = prefix.iter().chain(window).copied().collect();
        let hidden = self.model.forward_adapted(&ids, 1, &mut cache, adapters)?;
        let mut nll = 0.0;
        let predicted = ids.len() - 1;
        for start in (prefix.len()..predicted).step_by(SLICE) {
            let end = (start + SLICE).min(predicted);
            let logits = read_f32(self.model.device_logits(hidden.clone(), start..end)?).await?;
            for (row, &target) in logits.chunks_exact(vocab).zip(&ids[start + 1..end + 1]) {
                nll += log_sum_exp(row) - row[target as usize] as f64;
            }
        }
        Ok(nll)
    }
}

/// The worker pool `options` ask for, checked before anything is loaded.
fn worker_pool(options: &EngineOptions) -> Result<Threads, Error> {
    if options.threads > MAX_THREADS {
        return Err(Error::option("threads", options.threads, format!("is more than {MAX_THREADS}")));
    }
    Threads::new(options.threads).map_err(|e| Error::Backend(format!("worker pool: {e}")))
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

fn read(path: &Path) -> Result<(SharedBytes, FileStamp), Error> {
    map_file_stamped(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn load_gguf(bytes: SharedBytes, device: &Device) -> Result<(Decoder, Tokenizer, ModelFiles), Error> {
    let gguf = GgufFile::from_bytes(bytes)?;
    let model = Decoder::from_gguf(&gguf, device)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    Ok((model, tokenizer, ModelFiles::Gguf(gguf)))
}

fn hf_model(
    config_json: &[u8],
    label: &str,
    shards: &[SafetensorsFile],
    device: &Device,
) -> Result<Decoder, Error> {
    let json: serde_json::Value =
        serde_json::from_slice(config_json).map_err(|e| Error::Config(format!("{label}: {e}")))?;
    if shards.is_empty() {
        return Err(Error::Config(format!("{label}: the model has no *.safetensors files")));
    }
    Decoder::from_safetensors(DecoderConfig::from_hf_json(&json)?, shards, device)
}

fn load_hf_dir(dir: &Path, device: &Device) -> Result<(Decoder, Tokenizer, ModelFiles, Origin), Error> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let mut stamps = Vec::new();
    let mut read_small = |name: &str| -> Result<Option<Vec<u8>>, Error> {
        let path = dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let (bytes, stamp) = read(&path)?;
        stamps.push(stamp);
        Ok(Some(bytes.to_vec()))
    };
    let config_path = dir.join("config.json");
    let config = read_small("config.json")?.ok_or_else(|| Error::Io {
        path: config_path.clone(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let tokenizer_json = read_small("tokenizer.json")?.ok_or_else(|| Error::Io {
        path: dir.join("tokenizer.json"),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let tokenizer =
        Tokenizer::from_json_bytes(&tokenizer_json, read_small("tokenizer_config.json")?.as_deref())?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir.to_path_buf()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    let mut shards = Vec::with_capacity(paths.len());
    for path in &paths {
        let (bytes, stamp) = read(path)?;
        stamps.push(stamp);
        shards.push(
            SafetensorsFile::from_bytes(bytes)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
        );
    }
    let model = hf_model(&config, &config_path.display().to_string(), &shards, device)?;
    let origin = Origin { label: dir.display().to_string(), stamps };
    Ok((model, tokenizer, ModelFiles::HuggingFace(shards), origin))
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_and_sync() {
        assert_send_sync::<super::Engine>();
    }
}
