//! [`Model`]: open a model (a path or bytes), what it is, generate and chat with streamed
//! tokens, perplexity, and the adapters attached to it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use adaptkit::device::DeviceChoice;
use adaptkit::generate::SamplingParams;
use adaptkit::runtime::{self, ModelSource};
use adaptkit::tokenizer::Message;

use crate::adapter::{Adapter, AdapterInfo, AdapterSource, LoadOptions};
use crate::error::{count, to_u32, AdaptError};
use crate::storage::Storage;
use crate::worker::{guarded, on_worker, token_of, CancelToken};

#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A GPU (Vulkan, Metal); an error when there is none.
    Gpu,
    /// A hardware GPU when there is one, else the CPU.
    Auto,
}

/// How to open a model.
#[derive(uniffi::Record, Clone)]
pub struct OpenOptions {
    /// Worker threads; 0 = one per core.
    #[uniffi(default = 0)]
    pub threads: u32,
    pub device: Device,
    /// Open for training adapters (costs nothing until a run starts).
    #[uniffi(default = true)]
    pub trainable: bool,
    /// Where fingerprints are cached across launches (the app's cache directory).
    #[uniffi(default = None)]
    pub cache: Option<Arc<Storage>>,
}

impl OpenOptions {
    fn runtime(&self) -> runtime::OpenOptions {
        runtime::OpenOptions {
            threads: count(self.threads),
            device: match self.device {
                Device::Cpu => DeviceChoice::Cpu,
                Device::Gpu => DeviceChoice::Gpu,
                Device::Auto => DeviceChoice::Auto,
            },
            trainable: self.trainable,
            cache: self.cache.as_ref().map(|s| Arc::clone(&s.store)),
            integer_activations: false,
            bf16_products: false,
        }
    }
}

/// What a model is.
#[derive(uniffi::Record, Clone, Debug)]
pub struct ModelInfo {
    pub model: String,
    /// `gguf` or `safetensors`.
    pub format: String,
    pub architecture: String,
    pub name: Option<String>,
    pub parameters: u64,
    pub layers: u32,
    pub d_model: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub ffn_dim: u32,
    pub vocab_size: u32,
    pub context_len: u32,
    pub tensor_types: HashMap<String, u32>,
    /// `cpu`, or the GPU adapter's name.
    pub device: String,
    /// Why `Auto` chose the CPU, when it did.
    pub device_fallback: Option<String>,
    pub threads: u32,
    pub trainable: bool,
}

impl From<runtime::ModelInfo> for ModelInfo {
    fn from(i: runtime::ModelInfo) -> Self {
        Self {
            model: i.model,
            format: i.format.into(),
            architecture: i.architecture,
            name: i.name,
            parameters: i.parameters,
            layers: to_u32(i.layers),
            d_model: to_u32(i.d_model),
            heads: to_u32(i.heads),
            kv_heads: to_u32(i.kv_heads),
            head_dim: to_u32(i.head_dim),
            ffn_dim: to_u32(i.ffn_dim),
            vocab_size: to_u32(i.vocab_size),
            context_len: to_u32(i.context_len),
            tensor_types: i.tensor_types.into_iter().map(|(k, v)| (k, to_u32(v))).collect(),
            device: i.device,
            device_fallback: i.device_fallback,
            threads: to_u32(i.threads),
            trainable: i.trainable,
        }
    }
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

#[derive(uniffi::Enum, Clone, Debug)]
pub enum Prompt {
    /// Plain text, continued.
    Text { text: String },
    /// A conversation, through the model's chat template.
    Chat { messages: Vec<ChatMessage> },
    /// Token ids as they are (a prompt tokenized elsewhere).
    Tokens { ids: Vec<u32> },
}

impl Prompt {
    fn runtime(&self) -> runtime::Prompt {
        match self {
            Self::Text { text } => runtime::Prompt::Text(text.clone()),
            Self::Chat { messages } => {
                runtime::Prompt::Chat(messages.iter().map(|m| Message::new(&m.role, &m.content)).collect())
            }
            Self::Tokens { ids } => runtime::Prompt::Tokens(ids.clone()),
        }
    }
}

/// Sampling and stopping. The defaults are the runtime's (temperature 0 is greedy).
#[derive(uniffi::Record, Clone, Debug)]
pub struct GenerateOptions {
    #[uniffi(default = 256)]
    pub max_tokens: u32,
    #[uniffi(default = 0.7)]
    pub temperature: f32,
    #[uniffi(default = 40)]
    pub top_k: u32,
    #[uniffi(default = 0.95)]
    pub top_p: f32,
    #[uniffi(default = 0.05)]
    pub min_p: f32,
    #[uniffi(default = 1.0)]
    pub repetition_penalty: f32,
    #[uniffi(default = 64)]
    pub repeat_last_n: u32,
    #[uniffi(default = 0)]
    pub seed: u64,
    #[uniffi(default = [])]
    pub stop_strings: Vec<String>,
    #[uniffi(default = true)]
    pub stop_at_eos: bool,
}

impl GenerateOptions {
    fn runtime(&self) -> runtime::GenerateOptions {
        runtime::GenerateOptions {
            max_tokens: count(self.max_tokens),
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: count(self.top_k),
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                repeat_last_n: count(self.repeat_last_n),
                seed: self.seed,
            },
            stop_strings: self.stop_strings.clone(),
            stop_at_eos: self.stop_at_eos,
        }
    }
}

/// What generation streams. All `Token` and `Tail` texts together are the report's text.
#[derive(uniffi::Enum, Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    /// The prompt went through the model; decoding starts.
    Prefilled {
        prompt_tokens: u32,
    },
    /// A token and the text it makes final (empty while a character is incomplete).
    Token {
        id: u32,
        text: String,
    },
    /// Text held back until the end.
    Tail {
        text: String,
    },
    Warning {
        message: String,
    },
}

#[uniffi::export(with_foreign)]
pub trait GenerationListener: Send + Sync {
    fn on_event(&self, event: GenerationEvent);
}

#[derive(uniffi::Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    EndOfGeneration,
    StopString,
    MaxTokens,
    /// The context is full; the text so far is kept.
    ContextFull,
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct GenerationReport {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: u32,
    pub stop: StopReason,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct PerplexityReport {
    pub perplexity: f64,
    pub tokens: u32,
    pub windows: u32,
    pub seq: u32,
}

#[derive(uniffi::Record, Clone)]
pub struct AttachedAdapter {
    /// What [`Model::detach`] and [`Model::set_scale`] take.
    pub id: u64,
    pub scale: f32,
    pub info: AdapterInfo,
}

/// A model, open for generating and (when `trainable`) training. Thread-safe: calls may
/// overlap; adapters attached or detached apply to calls that start afterwards.
#[derive(uniffi::Object)]
pub struct Model {
    inner: RwLock<Option<Arc<runtime::Model>>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("released", &self.is_released()).finish()
    }
}

impl Model {
    fn wrap(model: runtime::Model) -> Arc<Self> {
        Arc::new(Self { inner: RwLock::new(Some(Arc::new(model))) })
    }

    /// The open model, or [`AdaptError::Closed`].
    pub(crate) fn open_model(&self) -> Result<Arc<runtime::Model>, AdaptError> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(AdaptError::Closed)
    }
}

#[uniffi::export]
impl Model {
    /// Opens a GGUF file or a Hugging Face model directory. The file is memory-mapped: the
    /// operating system pages the frozen weights in and out as memory allows.
    #[uniffi::constructor]
    pub async fn open(path: String, options: OpenOptions) -> Result<Arc<Self>, AdaptError> {
        let options = options.runtime();
        let path = std::path::PathBuf::from(path);
        on_worker(Default::default(), move || Ok(Self::wrap(runtime::Model::open_path(&path, &options)?)))
            .await
    }

    /// Opens a GGUF file's bytes (an asset, a download kept in memory).
    #[uniffi::constructor]
    pub async fn open_bytes(gguf: Vec<u8>, options: OpenOptions) -> Result<Arc<Self>, AdaptError> {
        let options = options.runtime();
        on_worker(Default::default(), move || {
            Ok(Self::wrap(runtime::Model::open(ModelSource::Gguf(gguf), &options)?))
        })
        .await
    }

    pub fn info(&self) -> Result<ModelInfo, AdaptError> {
        guarded(|| Ok(self.open_model()?.info().into()))
    }

    /// The base's fingerprint id (hex), what patches are made for.
    pub async fn fingerprint(&self) -> Result<String, AdaptError> {
        let model = self.open_model()?;
        on_worker(Default::default(), move || Ok(model.fingerprint()?.id)).await
    }

    /// Generates from `prompt` with the attached adapters, streaming to `listener`.
    pub async fn generate(
        &self,
        prompt: Prompt,
        options: GenerateOptions,
        listener: Option<Arc<dyn GenerationListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<GenerationReport, AdaptError> {
        let model = self.open_model()?;
        let request = runtime::GenerateRequest { prompt: prompt.runtime(), options: options.runtime() };
        let token = token_of(&cancel);
        on_worker(token.clone(), move || {
            let report = model.generate(&request, &token, &mut |event| {
                if let Some(listener) = &listener {
                    listener.on_event(event.into());
                }
            })?;
            Ok(GenerationReport {
                text: report.text,
                tokens: report.tokens,
                prompt_tokens: to_u32(report.prompt_tokens),
                stop: match report.stop {
                    adaptkit::generate::StopReason::EndOfGeneration => StopReason::EndOfGeneration,
                    adaptkit::generate::StopReason::StopString => StopReason::StopString,
                    adaptkit::generate::StopReason::MaxTokens => StopReason::MaxTokens,
                    adaptkit::generate::StopReason::ContextFull => StopReason::ContextFull,
                },
                prefill_tok_s: report.prefill_tok_s,
                decode_tok_s: report.decode_tok_s,
                prefill_ms: report.prefill_ms,
                decode_ms: report.decode_ms,
            })
        })
        .await
    }

    /// Perplexity of `text` with the attached adapters, in windows of `seq` tokens.
    pub async fn perplexity(
        &self,
        text: String,
        seq: u32,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<PerplexityReport, AdaptError> {
        let model = self.open_model()?;
        let token = token_of(&cancel);
        on_worker(token.clone(), move || {
            let p = model.perplexity(&text, count(seq), &token, &mut |_, _| {})?;
            Ok(PerplexityReport {
                perplexity: p.perplexity,
                tokens: to_u32(p.tokens),
                windows: to_u32(p.windows),
                seq: to_u32(p.seq),
            })
        })
        .await
    }

    /// Loads an adapter made for this model (checked: a patch's signature when keys are
    /// trusted, and its base). Nothing about the model changes until [`Self::attach`].
    pub async fn load_adapter(
        &self,
        source: AdapterSource,
        options: LoadOptions,
    ) -> Result<Arc<Adapter>, AdaptError> {
        let model = self.open_model()?;
        on_worker(Default::default(), move || {
            let options = options.runtime()?;
            Ok(Adapter::wrap(model.load_adapter(source.runtime(), &options)?))
        })
        .await
    }

    /// Attaches `adapter` at `scale` (0 = off, 1 = as trained) and returns its id.
    pub fn attach(&self, adapter: Arc<Adapter>, scale: f32) -> Result<u64, AdaptError> {
        guarded(|| Ok(self.open_model()?.attach(&adapter.adapter, scale)?))
    }

    pub fn detach(&self, id: u64) -> Result<(), AdaptError> {
        guarded(|| Ok(self.open_model()?.detach(id)?))
    }

    pub fn detach_all(&self) -> Result<(), AdaptError> {
        guarded(|| {
            self.open_model()?.detach_all();
            Ok(())
        })
    }

    pub fn set_scale(&self, id: u64, scale: f32) -> Result<(), AdaptError> {
        guarded(|| Ok(self.open_model()?.set_scale(id, scale)?))
    }

    pub fn attached(&self) -> Result<Vec<AttachedAdapter>, AdaptError> {
        guarded(|| {
            Ok(self
                .open_model()?
                .attached()
                .into_iter()
                .map(|a| AttachedAdapter { id: a.id, scale: a.scale, info: a.adapter.info().into() })
                .collect())
        })
    }

    /// Frees the model's memory now (calls in flight finish first); every later call is
    /// [`AdaptError::Closed`]. Kotlin's `close()` and Swift's `deinit` free the handle itself.
    pub fn release(&self) {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn is_released(&self) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}

impl From<adaptkit::generate::GenerationEvent<'_>> for GenerationEvent {
    fn from(event: adaptkit::generate::GenerationEvent<'_>) -> Self {
        use adaptkit::generate::GenerationEvent as E;
        match event {
            E::Prefilled { prompt_tokens } => Self::Prefilled { prompt_tokens: to_u32(prompt_tokens) },
            E::Token { id, text } => Self::Token { id, text: text.into() },
            E::Tail { text } => Self::Tail { text: text.into() },
            E::Warning { text } => Self::Warning { message: text.into() },
        }
    }
}
