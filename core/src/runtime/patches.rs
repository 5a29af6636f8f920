//! The patch verbs: make a patch of an adapter and code it with ComPEFT (at a density, the
//! smallest one that keeps the adapter's gain on held-out text, or dense), inspect, port to an
//! updated base (PortLLM), merge several, sign, verify, and make signing keys.

use core::str::FromStr;

use serde::Serialize;
use serde_json::{json, Value};

use super::adapter::AdapterSource;
use super::model::Model;
use crate::adapt::{AdapterSet, MethodKind};
use crate::control::CancelToken;
use crate::error::Error;
use crate::format::patch_file::{hex, require_signer, Encoding};
use crate::patch::compress::{self, Budget, Scores, TensorReport, Trial};
use crate::patch::keys::{self, SigningKey};
use crate::patch::port::{self, Drift};
pub use crate::patch::DenseType;
use crate::patch::{merge, AttachOptions, Patch};

/// How much of each tensor's change a patch keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Density {
    /// The top fraction, in (0, 1].
    Fraction(f64),
    /// The smallest density that keeps the adapter's gain on held-out text.
    Auto,
    /// Every value, stored dense.
    Dense,
}

impl FromStr for Density {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "auto" => Ok(Self::Auto),
            "dense" => Ok(Self::Dense),
            _ => match s.parse::<f64>() {
                Ok(d) if d > 0.0 && d <= 1.0 => Ok(Self::Fraction(d)),
                _ => Err(Error::option("density", s, "a fraction in (0, 1], auto or dense")),
            },
        }
    }
}

impl FromStr for DenseType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            other => Err(Error::option("dtype", other, "f16 or f32")),
        }
    }
}

/// How to compress.
#[derive(Clone, Debug)]
pub struct CompressOptions {
    pub density: Density,
    /// How tensors kept dense are stored.
    pub dense_type: DenseType,
    /// Held-out text that `auto` scores densities on.
    pub eval_text: Option<String>,
    /// General text whose perplexity may rise at most `max_general_rise` over the dense
    /// adapter's (a sparse patch at a large scale can forget more).
    pub general_text: Option<String>,
    /// Window length of the scoring.
    pub seq: usize,
    /// For `auto`: the fraction of the adapter's held-out log-perplexity gain to keep.
    pub keep_gain: f64,
    pub max_general_rise: f64,
}

impl Default for CompressOptions {
    fn default() -> Self {
        Self {
            density: Density::Fraction(0.1),
            dense_type: DenseType::F16,
            eval_text: None,
            general_text: None,
            seq: 128,
            keep_gain: 0.95,
            max_general_rise: 0.05,
        }
    }
}

/// What `auto` measured.
#[derive(Clone, Debug, Serialize)]
pub struct AutoReport {
    pub base_perplexity: f64,
    pub dense_perplexity: f64,
    pub base_general: Option<f64>,
    pub dense_general: Option<f64>,
    pub trials: Vec<Trial>,
}

/// What a compression made.
#[derive(Clone, Debug, Serialize)]
pub struct CompressReport {
    pub method: MethodKind,
    /// The base model's fingerprint id.
    pub base: String,
    pub density: Value,
    pub compression: Option<Value>,
    /// The whole file.
    pub bytes: usize,
    pub payload_bytes: usize,
    pub f16_bytes: usize,
    pub ratio_vs_f16: f64,
    pub signed: bool,
    pub auto: Option<AutoReport>,
    /// Per coded tensor: σ, the fitted α, values kept, bits, a LoRA pair's cosine.
    pub tensors: Option<Vec<TensorReport>>,
}

/// A patch and its file's bytes.
pub struct Compressed {
    pub patch: Patch,
    pub bytes: Vec<u8>,
    pub report: CompressReport,
}

/// The patch an adapter source makes for `model`: a patch file as it is (its base checked
/// against the model's), any other adapter loaded (checked against the model) and made into a
/// patch with `dense` tensors.
pub fn patch_of(model: &Model, source: AdapterSource, dense: DenseType) -> Result<Patch, Error> {
    let base = model.fingerprint()?;
    let (bytes, label) = match source {
        AdapterSource::Patch { bytes, label } => (bytes, label),
        AdapterSource::Path(path) if path.is_file() => {
            let patch = Patch::read(&path)?;
            patch.check_base(&base, false, &path.display().to_string())?;
            return Ok(patch);
        }
        other => return model.load_adapter(other, &AttachOptions::default())?.to_patch(base, dense),
    };
    let patch = Patch::from_bytes(&bytes, &label)?;
    patch.check_base(&base, false, &label)?;
    Ok(patch)
}

/// Any adapter `source` compressed for `model`: its patch ([`patch_of`], tensors kept dense in
/// the options' type), coded as `options` say and signed with `key` when given. What every face
/// calls to make a patch file.
pub fn compress_source(
    model: &Model,
    source: AdapterSource,
    options: &CompressOptions,
    key: Option<&SigningKey>,
    on_trial: &mut dyn FnMut(&Trial),
) -> Result<Compressed, Error> {
    let patch = patch_of(model, source, options.dense_type)?;
    compress(model, &patch, options, key, on_trial)
}

/// `source` coded as `options` say, signed with `key` when given. `on_trial` sees each density
/// `auto` tries.
pub fn compress(
    model: &Model,
    source: &Patch,
    options: &CompressOptions,
    key: Option<&SigningKey>,
    on_trial: &mut dyn FnMut(&Trial),
) -> Result<Compressed, Error> {
    if options.density == Density::Auto && options.eval_text.is_none() {
        return Err(Error::option("eval", "none", "density auto needs held-out text to score on"));
    }
    let mut auto = None;
    let mut tensors = None;
    let patch = match options.density {
        Density::Dense => source.to_dense(options.dense_type)?,
        Density::Fraction(d) => {
            let (coded, reports) = compress::compress(source, d)?;
            tensors = Some(reports);
            coded
        }
        Density::Auto => {
            let held_out = options.eval_text.as_deref().unwrap_or_default();
            let mut score = |candidate: Option<&Patch>| -> Result<Scores, Error> {
                let mut set = AdapterSet::new();
                if let Some(p) = candidate {
                    set.push(p.to_method(model.engine().model(), "candidate".as_ref())?, p.scale)?;
                }
                let perplexity = |text: &str| -> Result<f64, Error> {
                    Ok(model
                        .perplexity_with(text, options.seq, &set, &CancelToken::new(), &mut |_, _| {})?
                        .perplexity)
                };
                Ok(Scores {
                    held_out: perplexity(held_out)?,
                    general: options.general_text.as_deref().map(perplexity).transpose()?,
                })
            };
            let budget = Budget { keep_gain: options.keep_gain, max_general_rise: options.max_general_rise };
            let choice = compress::auto(source, budget, &mut score)?;
            for trial in &choice.trials {
                on_trial(trial);
            }
            auto = Some(AutoReport {
                base_perplexity: choice.base.held_out,
                dense_perplexity: choice.dense.held_out,
                base_general: choice.base.general,
                dense_general: choice.dense.general,
                trials: choice.trials,
            });
            choice.patch
        }
    };
    let bytes = patch.to_bytes(key);
    let report = CompressReport {
        method: patch.method,
        base: patch.base.id.clone(),
        density: patch.compression.as_ref().and_then(|c| c.get("density")).cloned().unwrap_or(Value::Null),
        compression: patch.compression.clone(),
        bytes: bytes.len(),
        payload_bytes: patch.payload_bytes(),
        f16_bytes: patch.f16_bytes(),
        ratio_vs_f16: patch.f16_bytes() as f64 / bytes.len() as f64,
        signed: key.is_some(),
        auto,
        tensors,
    };
    Ok(Compressed { patch, bytes, report })
}

/// One stored tensor as `inspect` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInspection {
    pub name: String,
    pub shape: Vec<usize>,
    pub encoding: &'static str,
    pub bytes: usize,
    #[serde(flatten)]
    pub ternary: Option<TernaryInspection>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TernaryInspection {
    pub scale: f32,
    pub init: f32,
    pub nonzeros: u64,
    pub density: f64,
    pub rice_bits: u8,
    pub bits_per_value: f64,
}

/// Everything a patch says about itself.
#[derive(Clone, Debug, Serialize)]
pub struct PatchInspection {
    pub bytes: usize,
    pub method: MethodKind,
    pub config: Value,
    pub base: Value,
    pub scale: f32,
    pub signed: bool,
    pub signer: Option<String>,
    pub training: Option<Value>,
    pub compression: Option<Value>,
    pub ported: Option<Value>,
    pub values: usize,
    pub payload_bytes: usize,
    pub f16_bytes: usize,
    pub ratio_vs_f16: f64,
    pub bits_per_value: f64,
    pub tensors: Vec<TensorInspection>,
}

/// Reads and checks a patch file's `bytes` (`label` names it) and describes it.
pub fn inspect(bytes: &[u8], label: &str) -> Result<PatchInspection, Error> {
    let patch = Patch::from_bytes(bytes, label)?;
    let values: usize = patch.tensors.iter().map(|t| t.elements()).sum();
    let tensors = patch
        .tensors
        .iter()
        .map(|t| TensorInspection {
            name: t.name.clone(),
            shape: t.shape.clone(),
            encoding: t.encoding.name(),
            bytes: t.bytes.len(),
            ternary: match t.encoding {
                Encoding::Ternary { scale, init, nonzeros, rice_bits } => Some(TernaryInspection {
                    scale,
                    init,
                    nonzeros,
                    density: nonzeros as f64 / t.elements().max(1) as f64,
                    rice_bits,
                    bits_per_value: t.bytes.len() as f64 * 8.0 / t.elements().max(1) as f64,
                }),
                _ => None,
            },
        })
        .collect();
    let b = &patch.base;
    Ok(PatchInspection {
        bytes: bytes.len(),
        method: patch.method,
        config: patch.config.clone(),
        base: json!({
            "id": b.id,
            "architecture": b.architecture,
            "layers": b.layers,
            "d_model": b.d_model,
            "vocab_size": b.vocab_size,
            "weights_sha256": b.weights_sha256,
        }),
        scale: patch.scale,
        signed: patch.signer.is_some(),
        signer: patch.signer_hex(),
        training: patch.training.clone(),
        compression: patch.compression.clone(),
        ported: patch.ported.clone(),
        values,
        payload_bytes: patch.payload_bytes(),
        f16_bytes: patch.f16_bytes(),
        ratio_vs_f16: patch.f16_bytes() as f64 / bytes.len().max(1) as f64,
        bits_per_value: bytes.len() as f64 * 8.0 / values.max(1) as f64,
        tensors,
    })
}

/// How to port.
#[derive(Clone, Copy, Debug)]
pub struct PortOptions {
    /// Scale of the ported change (`θ' + λΔ`).
    pub lambda: f32,
    /// Refuse when any targeted weight moved more than this (relative Frobenius norm).
    pub max_drift: f64,
}

impl Default for PortOptions {
    fn default() -> Self {
        Self { lambda: 1.0, max_drift: 0.5 }
    }
}

/// What porting found and did.
#[derive(Clone, Debug, Serialize)]
pub struct PortReport {
    /// The fingerprint ids of the old and the new base.
    pub from: String,
    pub to: String,
    pub lambda: f32,
    /// The ported patch's own scale.
    pub scale: f32,
    /// Whether the drift was measured on the old weights (`from` given) or from norms.
    pub drift_exact: bool,
    pub max_drift: f64,
    pub mean_drift: f64,
    pub drift: Vec<Drift>,
    /// Per layer, the largest drift among its targeted weights.
    pub layers: Vec<(usize, f64)>,
}

/// `patch` moved to `model`, an updated base of the same architecture (PortLLM), after a drift
/// report: exact when the base it was made for is given as `from`, from the norms the patch
/// carries otherwise.
pub fn port(
    patch: &Patch,
    model: &Model,
    from: Option<&Model>,
    options: PortOptions,
) -> Result<(Patch, PortReport), Error> {
    let new_base = model.fingerprint()?;
    let targets = port::targets(patch, new_base.layers);
    patch
        .base
        .same_shapes(&new_base)
        .map_err(|m| Error::InvalidArgument(format!("cannot port this patch: {m}")))?;
    let drift = match from {
        Some(old) => {
            let old_base = old.fingerprint()?;
            if old_base.id != patch.base.id {
                return Err(Error::option(
                    "from",
                    old.engine().origin().label.clone(),
                    format!(
                        "is base {}, but the patch was made for {}",
                        old_base.short_id(),
                        patch.base.short_id()
                    ),
                ));
            }
            model.engine().run(|e| port::weight_drift(old.engine().model(), e.model(), &targets))?
        }
        None => port::norm_drift(&patch.base, &new_base, &targets),
    };
    if let Some(w) = drift
        .weights
        .iter()
        .filter(|w| w.relative > options.max_drift)
        .max_by(|a, b| a.relative.total_cmp(&b.relative))
    {
        return Err(Error::option(
            "max_drift",
            options.max_drift,
            format!(
                "layer {} {} moved by {:.3} (relative): this is not an update of the same model; retrain instead",
                w.layer, w.projection, w.relative
            ),
        ));
    }
    let ported = port::port(patch, &new_base, options.lambda, &drift)?;
    let mut layers: Vec<(usize, f64)> = Vec::new();
    for d in &drift.weights {
        match layers.last_mut() {
            Some((l, m)) if *l == d.layer => *m = m.max(d.relative),
            _ => layers.push((d.layer, d.relative)),
        }
    }
    let report = PortReport {
        from: patch.base.id.clone(),
        to: new_base.id.clone(),
        lambda: options.lambda,
        scale: ported.scale,
        drift_exact: drift.exact,
        max_drift: drift.max(),
        mean_drift: drift.mean(),
        drift: drift.weights,
        layers,
    };
    Ok((ported, report))
}

/// What merging made.
#[derive(Clone, Debug, Serialize)]
pub struct MergeReport {
    pub method: MethodKind,
    pub patches: usize,
    pub config: Value,
}

/// The weighted sum of `patches`' changes, as one dense patch (see [`merge::combine`]).
pub fn merge(patches: &[(Patch, f32)], dense: DenseType) -> Result<(Patch, MergeReport), Error> {
    let merged = merge::combine(patches, dense)?;
    let report = MergeReport { method: merged.method, patches: patches.len(), config: merged.config.clone() };
    Ok((merged, report))
}

/// `path[:weight]` (or `path[:scale]`): the path and the number after its last colon, 1 when
/// there is none (a colon followed by something that is not a number belongs to the path).
pub fn split_weight(spec: &str) -> Result<(&str, f32), Error> {
    match spec.rsplit_once(':') {
        Some((path, w)) => match w.parse::<f32>() {
            Ok(w) if w.is_finite() => Ok((path, w)),
            Ok(w) => Err(Error::option("weight", w, format!("{spec}: must be finite"))),
            Err(_) => Ok((spec, 1.0)),
        },
        None => Ok((spec, 1.0)),
    }
}

/// A patch file's bytes signed with `key` (its contents unchanged).
pub fn sign(bytes: &[u8], label: &str, key: &SigningKey) -> Result<(Vec<u8>, String), Error> {
    let patch = Patch::from_bytes(bytes, label)?;
    Ok((patch.to_bytes(Some(key)), hex(key.verifying_key().as_bytes())))
}

/// What verifying found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub valid: bool,
    pub signed: bool,
    pub signer: Option<String>,
    /// Whether the signer was checked against trusted keys.
    pub trusted: bool,
}

/// Checks a patch's integrity and signature, and that a trusted key signed it when `trusted`
/// is not empty.
pub fn verify(bytes: &[u8], label: &str, trusted: &[[u8; 32]]) -> Result<VerifyReport, Error> {
    let patch = Patch::from_bytes(bytes, label)?;
    if !trusted.is_empty() {
        require_signer(patch.signer, trusted)
            .map_err(|e| Error::Patch { path: label.into(), message: e.to_string() })?;
    }
    Ok(VerifyReport {
        valid: true,
        signed: patch.signer.is_some(),
        signer: patch.signer_hex(),
        trusted: !trusted.is_empty(),
    })
}

/// A new signing key pair: the keys, and their key files' texts.
#[derive(Clone)]
pub struct KeyPair {
    pub signing_key: SigningKey,
    pub public_key: [u8; 32],
    /// The secret key file's text (keep it private).
    pub secret: String,
    pub public: String,
    pub public_hex: String,
}

/// A new Ed25519 key pair from the operating system's randomness (the browser's crypto on
/// wasm32).
pub fn keygen() -> Result<KeyPair, Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| Error::Backend(format!("no randomness from the system: {e}")))?;
    let key = keys::signing_key(seed);
    let public = key.verifying_key().to_bytes();
    Ok(KeyPair {
        secret: keys::secret_key_text(&key),
        public: keys::public_key_text(&public),
        public_hex: hex(&public),
        signing_key: key,
        public_key: public,
    })
}
