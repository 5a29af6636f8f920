//! [`Model`]: one opened model with the adapters attached to it. `Send + Sync`: generation,
//! evaluation and training may run on several threads at once; attaching and detaching swap
//! the adapter list as a whole, so a running call keeps the list it started with.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;
use web_time::Instant;

use super::adapter::{Adapter, AdapterSource, PeftFiles};
use crate::adapt::merge::{export_merged, MergeReport, MergedType};
use crate::adapt::{self, AdapterSet};
use crate::control::CancelToken;
use crate::device::{wait, DeviceChoice};
use crate::engine::{Engine, EngineOptions, ModelFiles, ModelSource, Perplexity, Prompt};
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::generate::{self, GenerateOptions, GenerationEvent, StopReason};
use crate::model::linear::read_f32;
use crate::patch::{AttachOptions, Fingerprint, FingerprintCache, Patch};
use crate::store::{FileStore, Store};

/// How to open a model.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// CPU, GPU, or a hardware GPU when there is one.
    pub device: DeviceChoice,
    /// Put the model on an autodiff device, so that adapters can be trained on it.
    pub trainable: bool,
    /// Where fingerprints are cached across runs (`None`: computed once per opened model).
    pub cache: Option<Arc<dyn Store>>,
    /// Decode on integer activations (see [`EngineOptions::integer_activations`]).
    pub integer_activations: bool,
    /// Prefill and training on bf16 tiles (see [`EngineOptions::bf16_products`]).
    pub bf16_products: bool,
}

impl PerplexityReport {
    fn of(p: Perplexity, seq: usize) -> Self {
        Self { perplexity: p.perplexity, tokens: p.tokens, windows: p.windows, seq }
    }
}

impl OpenOptions {
    fn engine(&self) -> EngineOptions {
        EngineOptions {
            threads: self.threads,
            trainable: self.trainable,
            device: self.device,
            integer_activations: self.integer_activations,
            bf16_products: self.bf16_products,
        }
    }
}

/// One adapter attached to a model, by the id [`Model::attach`] gave it.
#[derive(Clone)]
pub struct AttachedAdapter {
    pub id: u64,
    pub adapter: Adapter,
    /// The scale it was attached at (its own patch scale multiplies this).
    pub scale: f32,
}

#[derive(Default)]
struct Attached {
    next_id: u64,
    list: Vec<AttachedAdapter>,
    /// The list as the model uses it, rebuilt on every change.
    set: Arc<AdapterSet>,
}

pub struct Model {
    engine: Engine,
    cache: Option<Arc<dyn Store>>,
    fingerprint: OnceLock<Fingerprint>,
    attached: RwLock<Attached>,
}

/// What a model is.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// Where it was loaded from.
    pub model: String,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    pub gguf_version: Option<u32>,
    pub architecture: String,
    pub name: Option<String>,
    pub parameters: u64,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_len: usize,
    pub rope_theta: f32,
    pub tied_embeddings: bool,
    pub tensors: usize,
    /// Tensors per type (`Q4_1`, `F32`, …).
    pub tensor_types: BTreeMap<String, usize>,
    /// Where it runs (`cpu`, or the GPU adapter's name).
    pub device: String,
    /// Why `auto` chose the CPU, when it did.
    pub device_fallback: Option<String>,
    pub threads: usize,
    pub trainable: bool,
}

/// A generation request: the prompt and the sampling and stopping options.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    #[serde(default)]
    pub options: GenerateOptions,
}

/// What a generation produced, with its own timings.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationReport {
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub prefill_tok_s: f64,
    /// Tokens after the first, over the time from the first token to the last.
    pub decode_tok_s: f64,
    pub stop: StopReason,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    /// Tokens whose next-token loss was counted.
    pub tokens: usize,
    pub windows: usize,
    /// The window length.
    pub seq: usize,
}

impl Model {
    pub fn open(source: ModelSource, options: &OpenOptions) -> Result<Self, Error> {
        Ok(Self::on(Engine::open(source, &options.engine())?, options))
    }

    /// [`open`](Self::open), opening a GPU without blocking: the only way to WebGPU in the
    /// browser, whose adapter and device come through promises.
    pub async fn open_async(source: ModelSource, options: &OpenOptions) -> Result<Self, Error> {
        Ok(Self::on(Engine::open_async(source, &options.engine()).await?, options))
    }

    fn on(engine: Engine, options: &OpenOptions) -> Self {
        Self {
            engine,
            cache: options.cache.clone(),
            fingerprint: OnceLock::new(),
            attached: RwLock::default(),
        }
    }

    /// [`open`](Self::open) of a GGUF file or a Hugging Face model directory.
    pub fn open_path(path: &Path, options: &OpenOptions) -> Result<Self, Error> {
        Self::open(ModelSource::Path(path.to_path_buf()), options)
    }

    /// The engine underneath (the model, its tokenizer and worker pool), for tools and tests.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn info(&self) -> ModelInfo {
        let e = &self.engine;
        let c = e.model().config();
        let mut tensor_types = BTreeMap::<String, usize>::new();
        let mut parameters = 0u64;
        let mut count = |ty: String, elements: u64| {
            *tensor_types.entry(ty).or_default() += 1;
            parameters += elements;
        };
        let (format, gguf_version, name, tensors) = match e.files() {
            ModelFiles::Gguf(gguf) => {
                for t in gguf.tensors() {
                    count(t.ty.name().to_string(), t.n_elements());
                }
                let name = gguf.get("general.name").and_then(|v| v.as_str()).map(String::from);
                ("gguf", Some(gguf.version()), name, gguf.tensors().len())
            }
            ModelFiles::HuggingFace(shards) => {
                let all: Vec<_> = shards.iter().flat_map(|s| s.tensors()).collect();
                for t in &all {
                    count(format!("{:?}", t.dtype), t.n_elements() as u64);
                }
                ("safetensors", None, None, all.len())
            }
        };
        let compute = e.compute_device();
        ModelInfo {
            model: e.origin().label.clone(),
            format,
            gguf_version,
            architecture: c.architecture.clone(),
            name,
            parameters,
            layers: c.n_layers,
            d_model: c.d_model,
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            ffn_dim: c.ffn_dim,
            vocab_size: c.vocab_size,
            context_len: c.context_len,
            rope_theta: c.rope_theta,
            tied_embeddings: c.tied_embeddings,
            tensors,
            tensor_types,
            device: compute.name.clone(),
            device_fallback: compute.fallback.clone(),
            threads: e.threads(),
            trainable: e.model().device().is_autodiff(),
        }
    }

    /// What identifies the loaded model (of the bytes actually loaded), computed once and
    /// cached in the open options' store when there is one.
    pub fn fingerprint(&self) -> Result<Fingerprint, Error> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let computed = self.engine.run(|engine| match &self.cache {
            Some(store) => FingerprintCache::new(store.as_ref()).get(engine),
            None => Fingerprint::of(engine),
        })?;
        Ok(self.fingerprint.get_or_init(|| computed).clone())
    }

    /// Token ids of `text` (with the BOS/EOS the tokenizer adds when `add_special`).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<u32>, Error> {
        Ok(self.engine.tokenizer().encode(text, add_special)?)
    }

    /// The text of token ids.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, Error> {
        Ok(self.engine.tokenizer().decode(ids, false)?)
    }

    /// Generates from `request` with the attached adapters, streaming `on_event`. A chat prompt
    /// on a model without a chat template uses ChatML, and says so first with a
    /// [`GenerationEvent::Warning`].
    pub fn generate(
        &self,
        request: &GenerateRequest,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(GenerationEvent) + Send),
    ) -> Result<GenerationReport, Error> {
        let ids = self.request_ids(request, on_event)?;
        self.generate_ids(&ids, &request.options, cancel, on_event)
    }

    /// [`generate`](Self::generate), awaiting each token's read-back (the browser's GPU path).
    pub async fn generate_async(
        &self,
        request: &GenerateRequest,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(GenerationEvent) + Send),
    ) -> Result<GenerationReport, Error> {
        let ids = self.request_ids(request, on_event)?;
        self.engine.run_async(self.timed_generation(&ids, &request.options, cancel, on_event)).await
    }

    /// [`generate`](Self::generate) from token ids.
    pub fn generate_ids(
        &self,
        ids: &[u32],
        options: &GenerateOptions,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(GenerationEvent) + Send),
    ) -> Result<GenerationReport, Error> {
        self.engine.run(|_| wait(self.timed_generation(ids, options, cancel, on_event)))
    }

    /// The prompt's token ids, after checking the request's options.
    fn request_ids(
        &self,
        request: &GenerateRequest,
        on_event: &mut (dyn FnMut(GenerationEvent) + Send),
    ) -> Result<Vec<u32>, Error> {
        request.options.check()?;
        if matches!(request.prompt, Prompt::Chat(_))
            && self.engine.tokenizer().chat_template_source().is_none()
        {
            on_event(GenerationEvent::Warning { text: "the model has no chat template; using ChatML" });
        }
        self.engine.encode_prompt(&request.prompt)
    }

    async fn timed_generation(
        &self,
        ids: &[u32],
        options: &GenerateOptions,
        cancel: &CancelToken,
        on_event: &mut (dyn FnMut(GenerationEvent) + Send),
    ) -> Result<GenerationReport, Error> {
        let adapters = self.adapter_set();
        let start = Instant::now();
        let mut prefilled = None;
        let mut first_token = None;
        let mut last_token = start;
        let mut count = 0usize;
        let (model, tokenizer) = (self.engine.model(), self.engine.tokenizer());
        let generation =
            generate::generate(model, tokenizer, ids, options, adapters.as_ref(), cancel, &mut |event| {
                match &event {
                    GenerationEvent::Prefilled { .. } => prefilled = Some(Instant::now()),
                    GenerationEvent::Token { .. } => {
                        let now = Instant::now();
                        first_token.get_or_insert(now);
                        last_token = now;
                        count += 1;
                    }
                    _ => {}
                }
                on_event(event);
            })
            .await
            .map_err(|e| self.naming_attached(e))?;
        let prefill = prefilled.map_or(0.0, |t| (t - start).as_secs_f64());
        let decode = first_token.map_or(0.0, |t| (last_token - t).as_secs_f64());
        let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Ok(GenerationReport {
            prefill_tok_s: rate(ids.len(), prefill),
            decode_tok_s: rate(count.saturating_sub(1), decode),
            prefill_ms: prefill * 1e3,
            decode_ms: decode * 1e3,
            text: generation.text,
            tokens: generation.tokens,
            prompt_tokens: generation.prompt_tokens,
            stop: generation.stop,
        })
    }

    /// The logits of every position of `tokens` (`len x vocab`, row-major) with the attached
    /// adapters.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, Error> {
        self.engine.run(|_| wait(self.all_logits(tokens)))
    }

    /// [`logits`](Self::logits), awaiting the read-back (the browser's GPU path).
    pub async fn logits_async(&self, tokens: &[u32]) -> Result<Vec<f32>, Error> {
        self.engine.run_async(self.all_logits(tokens)).await
    }

    async fn all_logits(&self, tokens: &[u32]) -> Result<Vec<f32>, Error> {
        let adapters = self.adapter_set();
        let model = self.engine.model();
        let mut cache = model.new_cache(1);
        let hidden = model.forward_adapted(tokens, 1, &mut cache, adapters.as_ref())?;
        let logits = read_f32(model.device_logits(hidden, 0..tokens.len())?).await;
        crate::device::release_untracked_graphs(model.device());
        logits
    }

    /// Perplexity of `text` with the attached adapters, in windows of `seq` tokens (see
    /// [`Engine::perplexity`]).
    pub fn perplexity(
        &self,
        text: &str,
        seq: usize,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<PerplexityReport, Error> {
        self.perplexity_with(text, seq, &self.adapter_set(), cancel, on_progress)
    }

    /// [`perplexity`](Self::perplexity) of `text` with `prefix` read (not scored) before each
    /// window, e.g. a context given in the prompt (see [`Engine::perplexity_after`]).
    pub fn perplexity_after(
        &self,
        prefix: &str,
        text: &str,
        seq: usize,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<PerplexityReport, Error> {
        let adapters = self.adapter_set();
        self.perplexity_report(
            self.engine.perplexity_after(prefix, text, seq, adapters.as_ref(), cancel, on_progress),
            seq,
        )
    }

    /// [`perplexity`](Self::perplexity), awaiting the read-backs (the browser's GPU path).
    pub async fn perplexity_async(
        &self,
        text: &str,
        seq: usize,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<PerplexityReport, Error> {
        let adapters = self.adapter_set();
        self.perplexity_report(
            self.engine.perplexity_async(text, seq, adapters.as_ref(), cancel, on_progress).await,
            seq,
        )
    }

    pub(crate) fn perplexity_with(
        &self,
        text: &str,
        seq: usize,
        adapters: &AdapterSet,
        cancel: &CancelToken,
        on_progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<PerplexityReport, Error> {
        self.perplexity_report(self.engine.perplexity(text, seq, adapters, cancel, on_progress), seq)
    }

    fn perplexity_report(
        &self,
        perplexity: Result<crate::engine::Perplexity, Error>,
        seq: usize,
    ) -> Result<PerplexityReport, Error> {
        Ok(PerplexityReport::of(perplexity.map_err(|e| self.naming_attached(e))?, seq))
    }

    /// `error`, naming the attached adapters and their scales when it is an output they made
    /// non-finite.
    fn naming_attached(&self, error: Error) -> Error {
        let Error::NonFiniteOutput { what } = error else { return error };
        let attached: Vec<String> = self
            .attached()
            .iter()
            .map(|a| {
                format!(
                    "{} {} at scale {}",
                    a.adapter.method(),
                    a.adapter.info().label,
                    a.scale * a.adapter.info().scale
                )
            })
            .collect();
        match attached.is_empty() {
            true => Error::NonFiniteOutput { what },
            false => Error::NonFiniteOutput { what: format!("{what} (with {})", attached.join(", ")) },
        }
    }

    /// Loads an adapter made for this model. A patch is checked first: its signature (required
    /// when `options` trusts keys; sources that cannot be signed are then refused) and its base
    /// (this model's fingerprint, computed only when a patch needs it). Nothing about the model
    /// changes, whatever fails.
    pub fn load_adapter(&self, source: AdapterSource, options: &AttachOptions) -> Result<Adapter, Error> {
        match source {
            AdapterSource::Path(path) if path.is_dir() => {
                let label = path.display().to_string();
                refuse_unsigned(&label, options)?;
                let files = PeftFiles::read(&FileStore::new(&path))?;
                let method = adapt::load(&path, self.engine.model())?;
                Ok(self.adapter(method.as_ref(), label.clone(), files.training(&label)?))
            }
            AdapterSource::Path(path) => {
                if !path.exists() {
                    return Err(Error::Adapter {
                        path: path.display().to_string(),
                        message: "no such adapter directory or patch file".into(),
                    });
                }
                self.attach_patch(&Patch::read(&path)?, path.display().to_string(), options)
            }
            AdapterSource::Patch { bytes, label } => {
                self.attach_patch(&Patch::from_bytes(&bytes, &label)?, label, options)
            }
            AdapterSource::Peft(files) => self.adapter_from_files(&files, "PEFT bytes".into(), options),
            AdapterSource::Store(store) => {
                let label = store.locate(crate::format::peft::CONFIG_FILE);
                self.adapter_from_files(&PeftFiles::read(store.as_ref())?, label, options)
            }
        }
    }

    fn adapter_from_files(
        &self,
        files: &PeftFiles,
        label: String,
        options: &AttachOptions,
    ) -> Result<Adapter, Error> {
        refuse_unsigned(&label, options)?;
        let peft: PeftDir = files.to_peft(&label)?;
        let method = adapt::from_peft(&peft, self.engine.model())?;
        Ok(self.adapter(method.as_ref(), label.clone(), files.training(&label)?))
    }

    fn attach_patch(&self, patch: &Patch, label: String, options: &AttachOptions) -> Result<Adapter, Error> {
        let method = patch.attach(self.engine.model(), &label, &mut || self.fingerprint(), options)?;
        let mut adapter = self.adapter(method.as_ref(), label, patch.training.clone());
        adapter.set_patch_origin(patch);
        Ok(adapter)
    }

    /// `method`, made for this model, as an [`Adapter`].
    pub(crate) fn adapter(
        &self,
        method: &dyn adapt::Method,
        label: String,
        training: Option<serde_json::Value>,
    ) -> Adapter {
        Adapter::new(method, self.engine.model(), label, training)
    }

    /// Attaches `adapter` at `scale` (finite; 0 or 1 for a soft prompt) after those attached
    /// before, and returns its id. The adapter must have been loaded or trained for this model.
    pub fn attach(&self, adapter: &Adapter, scale: f32) -> Result<u64, Error> {
        adapter.check_model(self.engine.model())?;
        adapt::check_scale(adapter.method(), scale * adapter.info().scale)?;
        self.change(|attached| {
            let id = attached.next_id;
            attached.next_id += 1;
            attached.list.push(AttachedAdapter { id, adapter: adapter.clone(), scale });
            Ok(id)
        })
    }

    /// Detaches the adapter `id`.
    pub fn detach(&self, id: u64) -> Result<(), Error> {
        self.change(|attached| {
            let at = attached.list.iter().position(|a| a.id == id).ok_or_else(|| unknown(id))?;
            attached.list.remove(at);
            Ok(())
        })
    }

    /// Detaches every adapter.
    pub fn detach_all(&self) {
        let _ = self.change(|attached| {
            attached.list.clear();
            Ok(())
        });
    }

    /// Changes the scale of the adapter `id`.
    pub fn set_scale(&self, id: u64, scale: f32) -> Result<(), Error> {
        self.change(|attached| {
            let member = attached.list.iter_mut().find(|a| a.id == id).ok_or_else(|| unknown(id))?;
            adapt::check_scale(member.adapter.method(), scale * member.adapter.info().scale)?;
            member.scale = scale;
            Ok(())
        })
    }

    /// The attached adapters, in order.
    pub fn attached(&self) -> Vec<AttachedAdapter> {
        self.read_attached().list.clone()
    }

    /// Writes a GGUF of the model with the attached adapters merged into its weights (see
    /// [`export_merged`]): streamed into `out`, one tensor at a time.
    pub fn export_merged(
        &self,
        merged_type: MergedType,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<MergeReport, Error> {
        let ModelFiles::Gguf(base) = self.engine.files() else {
            return Err(Error::InvalidArgument(format!(
                "{}: merging writes GGUF and reads GGUF models, and this one is a Hugging Face directory",
                self.engine.origin().label
            )));
        };
        let adapters = self.adapter_set();
        if adapters.is_empty() {
            return Err(Error::InvalidArgument("no adapter is attached: nothing to merge".into()));
        }
        self.engine.run(|engine| export_merged(base, engine.model(), &adapters, merged_type, out))
    }

    /// [`export_merged`](Self::export_merged) into the file `path`, written atomically.
    pub fn export_merged_file(&self, merged_type: MergedType, path: &Path) -> Result<MergeReport, Error> {
        let mut outcome = None;
        let written = crate::format::write_atomic(path, |w| {
            let result = self.export_merged(merged_type, w);
            let failed = result.is_err();
            outcome = Some(result);
            if failed {
                // Makes the writer discard its temp file; the error that matters is `outcome`.
                return Err(std::io::Error::other("merge failed"));
            }
            Ok(())
        });
        match (outcome, written) {
            (Some(Err(Error::Write(source))), _) => Err(Error::Io { path: path.to_path_buf(), source }),
            (Some(Err(e)), _) => Err(e),
            (_, Err(source)) => Err(Error::Io { path: path.to_path_buf(), source }),
            (Some(Ok(report)), Ok(())) => Ok(report),
            (None, Ok(())) => Err(Error::InvalidArgument("the merge did not run".into())),
        }
    }

    /// The attached adapters as one set, for a call to use while others may change the list.
    pub(crate) fn adapter_set(&self) -> Arc<AdapterSet> {
        self.read_attached().set.clone()
    }

    fn read_attached(&self) -> std::sync::RwLockReadGuard<'_, Attached> {
        // A change is built apart and swapped in whole, so a panic cannot leave it half done.
        self.attached.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `edit` to a copy of the attached list and swaps it in only if it and the set it
    /// makes are valid: a failed change leaves the model as it was.
    fn change<R>(&self, edit: impl FnOnce(&mut Attached) -> Result<R, Error>) -> Result<R, Error> {
        let mut guard = self.attached.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = Attached { next_id: guard.next_id, list: guard.list.clone(), set: Arc::default() };
        let result = edit(&mut next)?;
        let mut set = AdapterSet::new();
        for member in &next.list {
            set.push(member.adapter.shared(), member.scale * member.adapter.info().scale)?;
        }
        next.set = Arc::new(set);
        *guard = next;
        Ok(result)
    }
}

/// Refuses an adapter that cannot carry a signature when `options` trusts keys.
fn refuse_unsigned(label: &str, options: &AttachOptions) -> Result<(), Error> {
    if options.trusted_keys.is_empty() {
        return Ok(());
    }
    Err(Error::Adapter {
        path: label.to_string(),
        message: "a PEFT adapter carries no signature, and trusted keys are required: sign it as a patch (`adaptkit patch compress … --sign KEY`)".into(),
    })
}

fn unknown(id: u64) -> Error {
    Error::option("adapter id", id, "no adapter with this id is attached")
}
