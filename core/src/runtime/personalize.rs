//! GenerativeAdapter on the device ([`crate::adapt::generative`]): load a trained generator,
//! read a context (all at once, or a piece at a time as the user writes), and take the adapter
//! it generates — a LoRA like any trained one, so it attaches, merges, saves as PEFT and
//! compresses into a patch. Training a generator ([`Model::train_generator`]) is done once per
//! base model, off the device.
//!
//! A generator file is one safetensors file: the generator's tensors in f16 and, in its
//! metadata (`adaptkit_generator`), its shape, the fingerprint of the base it was trained on and
//! its training record. A context state (`Context::to_bytes`) is a safetensors file of the
//! running sums, tied to the generator that made them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use web_time::Instant;

use super::adapter::Adapter;
use super::model::Model;
use crate::adapt::generative::{self, ContextState, GeneratorConfig};
use crate::adapt::Method;
use crate::bytes::SharedBytes;
use crate::control::CancelToken;
use crate::device::wait;
use crate::error::Error;
use crate::format::patch_file::hex;
use crate::format::peft::PeftDir;
use crate::format::safetensors::{safetensors_to_bytes, Dtype, SafetensorsFile};
use crate::store::Store;
use crate::train::generator::{fit_generator, GeneratorStep, GeneratorTrainOptions, GeneratorTrainReport};
use crate::train::Checkpointing;

/// The most context tokens one state takes in: the state's size does not grow, but its f32 sums
/// lose the early text's weight beyond this (and encoding it takes an hour on a phone).
pub const MAX_CONTEXT_TOKENS: usize = 1 << 20;

const METADATA_KEY: &str = "adaptkit_generator";
const CONTEXT_KEY: &str = "adaptkit_context";

/// Where a generator comes from.
pub enum GeneratorSource {
    Path(PathBuf),
    Bytes { bytes: Vec<u8>, label: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct GeneratorInfo {
    pub label: String,
    /// SHA-256 of the generator file: context states name the generator that made them.
    pub id: String,
    pub config: GeneratorConfig,
    /// The fingerprint id of the base model it was trained on.
    pub base: String,
    pub parameters: usize,
    /// How it was trained (corpus, steps, losses), as recorded when it was saved.
    pub training: Option<Value>,
}

/// A trained generator, loaded for one model.
#[derive(Clone)]
pub struct Generator {
    inner: Arc<generative::Generator>,
    info: GeneratorInfo,
}

impl Generator {
    pub fn info(&self) -> &GeneratorInfo {
        &self.info
    }

    /// An empty context for this generator.
    pub fn context(&self) -> Context {
        Context { state: self.inner.empty_state(), generator: self.info.id.clone() }
    }
}

/// A context read so far: the generator's running state (a fixed size, whatever the length).
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    state: ContextState,
    /// The id of the generator that made it.
    generator: String,
}

impl Context {
    /// Context tokens read so far.
    pub fn tokens(&self) -> usize {
        self.state.tokens
    }

    /// The state as bytes (safetensors, f32 sums), to continue it in another session.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .state
            .sums
            .iter()
            .map(|(&(layer, p), sum)| {
                let bytes = sum.iter().flat_map(|v| v.to_le_bytes()).collect();
                (format!("layers.{layer}.{}", p.hf_name()), Dtype::F32, vec![sum.len()], bytes)
            })
            .collect();
        let meta = json!({ "tokens": self.state.tokens, "generator": self.generator }).to_string();
        Ok(safetensors_to_bytes(&tensors, &[(CONTEXT_KEY, &meta)])?)
    }

    /// A state [`to_bytes`](Self::to_bytes) wrote, which must be `generator`'s (`label` names it
    /// in errors).
    pub fn from_bytes(bytes: Vec<u8>, label: &str, generator: &Generator) -> Result<Self, Error> {
        let bad = |message: String| Error::Adapter { path: label.to_string(), message };
        let file =
            SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)).map_err(|e| bad(e.to_string()))?;
        let meta = file
            .metadata()
            .iter()
            .find(|(k, _)| k == CONTEXT_KEY)
            .and_then(|(_, v)| serde_json::from_str::<Value>(v).ok())
            .ok_or_else(|| bad("not an adaptkit context state".into()))?;
        if meta["generator"].as_str() != Some(generator.info.id.as_str()) {
            return Err(bad(format!(
                "the state was made by generator {}, not by {} ({})",
                meta["generator"].as_str().unwrap_or("?"),
                generator.info.id,
                generator.info.label
            )));
        }
        let mut context = generator.context();
        context.state.tokens = meta["tokens"]
            .as_u64()
            .and_then(|t| usize::try_from(t).ok())
            .filter(|&t| t <= MAX_CONTEXT_TOKENS)
            .ok_or_else(|| bad(format!("field 'tokens' is missing or over {MAX_CONTEXT_TOKENS}")))?;
        for (&(layer, p), sum) in context.state.sums.iter_mut() {
            let name = format!("layers.{layer}.{}", p.hf_name());
            let values = file.tensor_f32(&name).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
            if values.len() != sum.len() || values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("tensor '{name}' does not fit the generator or is not finite")));
            }
            *sum = values;
        }
        Ok(context)
    }
}

/// What reading a context took.
#[derive(Clone, Debug, Serialize)]
pub struct ContextReport {
    /// Tokens this call read.
    pub tokens: usize,
    /// Tokens of the whole context so far.
    pub total_tokens: usize,
    /// Passes of the base model (one per window of the generator's window size).
    pub windows: usize,
    pub encode_ms: f64,
    /// Time to form the adapter from the state.
    pub generate_ms: f64,
}

impl Model {
    /// Loads a generator trained for this model: its file is checked whole (every shape, every
    /// value finite) and its base must be this model's fingerprint.
    pub fn load_generator(&self, source: GeneratorSource) -> Result<Generator, Error> {
        let (bytes, label) = match source {
            GeneratorSource::Path(path) => {
                let bytes =
                    std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
                (bytes, path.display().to_string())
            }
            GeneratorSource::Bytes { bytes, label } => (bytes, label),
        };
        let bad = |message: String| Error::Adapter { path: label.clone(), message };
        let id = hex(&Sha256::digest(&bytes));
        let file =
            SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)).map_err(|e| bad(e.to_string()))?;
        let meta: Value = file
            .metadata()
            .iter()
            .find(|(k, _)| k == METADATA_KEY)
            .and_then(|(_, v)| serde_json::from_str(v).ok())
            .ok_or_else(|| bad(format!("not an adaptkit generator (no '{METADATA_KEY}' metadata)")))?;
        let base = meta["base"].as_str().ok_or_else(|| bad("field 'base' is missing".into()))?.to_string();
        let model_base = self.fingerprint()?.id;
        if base != model_base {
            return Err(bad(format!(
                "the generator was trained for base model {base}, and this model is {model_base}"
            )));
        }
        let peft = PeftDir {
            config: json!({ "peft_type": generative::SPEC.peft_type, "generator": meta["generator"] }),
            tensors: file,
            path: PathBuf::from(&label),
        };
        let inner = generative::Generator::from_peft(&peft, self.engine().model())?;
        let info = GeneratorInfo {
            label,
            id,
            config: inner.config().clone(),
            base,
            parameters: crate::adapt::parameter_count(&inner),
            training: meta.get("training").cloned().filter(|t| !t.is_null()),
        };
        Ok(Generator { inner: Arc::new(inner), info })
    }

    /// Reads `text` into `context` (after what it holds). On error the context is unchanged.
    pub fn read_context(
        &self,
        generator: &Generator,
        context: &mut Context,
        text: &str,
        cancel: &CancelToken,
    ) -> Result<ContextReport, Error> {
        if context.generator != generator.info.id {
            return Err(Error::InvalidArgument("the context was made by another generator".into()));
        }
        let tokens = self.tokenize(text, false)?;
        if tokens.is_empty() {
            return Err(Error::option("context", "", "the context is empty: give it some text"));
        }
        let total = context.state.tokens.saturating_add(tokens.len());
        if total > MAX_CONTEXT_TOKENS {
            return Err(Error::option(
                "context",
                format!("{total} tokens"),
                format!("a context holds at most {MAX_CONTEXT_TOKENS} tokens"),
            ));
        }
        let start = Instant::now();
        let model = self.engine().model();
        self.engine().run(|_| wait(generator.inner.encode(model, &tokens, &mut context.state, cancel)))?;
        Ok(ContextReport {
            tokens: tokens.len(),
            total_tokens: context.state.tokens,
            windows: tokens.len().div_ceil(generator.info.config.window),
            encode_ms: start.elapsed().as_secs_f64() * 1e3,
            generate_ms: 0.0,
        })
    }

    /// The adapter `generator` makes from `context`: a LoRA on the generator's targets.
    pub fn generated_adapter(&self, generator: &Generator, context: &Context) -> Result<Adapter, Error> {
        if context.generator != generator.info.id {
            return Err(Error::InvalidArgument("the context was made by another generator".into()));
        }
        if context.state.tokens == 0 {
            return Err(Error::option("context", "", "the context is empty: read some text into it first"));
        }
        let model = self.engine().model();
        let lora = self.engine().run(|_| generator.inner.generate(&context.state, model))?;
        let training = json!({
            "generator": generator.info.id,
            "generator_label": generator.info.label,
            "context_tokens": context.state.tokens,
        });
        Ok(self.adapter(
            &lora,
            format!("generated from {} context tokens", context.state.tokens),
            Some(training),
        ))
    }

    /// [`read_context`](Self::read_context) of `text` into a new context, then
    /// [`generated_adapter`](Self::generated_adapter): personalization in one call.
    pub fn personalize(
        &self,
        generator: &Generator,
        text: &str,
        cancel: &CancelToken,
    ) -> Result<(Adapter, Context, ContextReport), Error> {
        let mut context = generator.context();
        let mut report = self.read_context(generator, &mut context, text, cancel)?;
        let start = Instant::now();
        let adapter = self.generated_adapter(generator, &context)?;
        report.generate_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok((adapter, context, report))
    }

    /// Trains a generator for this model (opened `trainable`) on `documents`, every
    /// `hold_out_every`-th of them (in the order given) held out for evaluation, with checkpoints
    /// in `store` (resumed from when one is there). Returns the generator's file bytes (f16, with
    /// `record` and the document counts as its training record) and the report.
    #[allow(clippy::too_many_arguments)]
    pub fn train_generator(
        &self,
        config: &GeneratorConfig,
        documents: &[String],
        hold_out_every: usize,
        options: &GeneratorTrainOptions,
        store: Option<&dyn Store>,
        record: Value,
        cancel: &CancelToken,
        on_step: &mut (dyn FnMut(&GeneratorStep) + Send),
    ) -> Result<(Vec<u8>, GeneratorTrainReport), Error> {
        let tokenize = |docs: &[String]| -> Result<Vec<Vec<u32>>, Error> {
            docs.iter().map(|d| self.tokenize(d, false)).collect()
        };
        if !self.engine().model().device().is_autodiff() {
            return Err(Error::InvalidArgument(
                "the model was opened for inference: open it with `trainable` to train a generator".into(),
            ));
        }
        if hold_out_every < 2 {
            return Err(Error::option("hold_out_every", hold_out_every, "must be at least 2"));
        }
        let (held_out, documents): (Vec<(usize, &String)>, Vec<(usize, &String)>) =
            documents.iter().enumerate().partition(|(i, _)| i % hold_out_every == hold_out_every - 1);
        if held_out.is_empty() {
            return Err(Error::option(
                "hold_out_every",
                hold_out_every,
                format!("holds out none of the {} documents", documents.len()),
            ));
        }
        let texts =
            |docs: Vec<(usize, &String)>| docs.into_iter().map(|(_, d)| d.clone()).collect::<Vec<_>>();
        let mut record = match record {
            Value::Object(fields) => fields,
            Value::Null => Default::default(),
            other => [("note".to_string(), other)].into_iter().collect(),
        };
        record.insert("documents".into(), documents.len().into());
        record.insert("held_out_documents".into(), held_out.len().into());
        let record = Value::Object(record);
        let (documents, held_out) = (tokenize(&texts(documents))?, tokenize(&texts(held_out))?);
        let base = self.fingerprint()?.id;
        // A run resumes only with the settings it was started with (the step count aside, which
        // only stretches the schedule).
        let settings = json!({
            "generator": config,
            "options": GeneratorTrainOptions { steps: 0, ..options.clone() },
            "documents": documents.len(),
        });
        if let Some(store) = store {
            // What a run killed mid-write left in the store is not needed to resume it.
            store.sweep()?;
        }
        let engine = self.engine();
        engine.run(|engine| {
            let model = engine.model();
            let mut generator = generative::Generator::new(config.clone(), model, options.seed)?;
            for (_, p) in generator.parameters_mut() {
                *p = p.clone().require_grad();
            }
            let key = crate::train::checkpoint::KEY;
            let resume = match store.map(|s| Ok::<_, Error>((s.read(key)?, s.locate(key)))).transpose()? {
                Some((Some(bytes), label)) => {
                    Some(crate::train::checkpoint::load(bytes, &label, &mut generator, &settings)?)
                }
                _ => None,
            };
            let checkpointing = Checkpointing { resume, save: store.map(|s| (s, key, 25)), settings };
            let report = wait(fit_generator(
                model,
                &mut generator,
                &documents,
                &held_out,
                options,
                checkpointing,
                cancel,
                on_step,
            ))?;
            let record = json!({ "options": options, "report": report, "run": record });
            Ok((generator_bytes(&generator, &base, &record)?, report))
        })
    }
}

/// A generator's file: f16 tensors, and its shape, base and record in the metadata.
fn generator_bytes(generator: &generative::Generator, base: &str, record: &Value) -> Result<Vec<u8>, Error> {
    let mut tensors = Vec::new();
    for (name, t) in generator.parameters() {
        let values = crate::model::linear::host_f32(t.clone())?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        tensors.push((name, Dtype::F16, t.dims().to_vec(), bytes));
    }
    let meta = json!({ "generator": generator.config(), "base": base, "training": record }).to_string();
    Ok(safetensors_to_bytes(&tensors, &[(METADATA_KEY, &meta)])?)
}

/// Writes generator bytes to `path` whole (temp file, fsync, rename).
pub fn save_generator(bytes: &[u8], path: &Path) -> Result<(), Error> {
    crate::format::write_atomic(path, |w| w.write_all(bytes))
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })
}
