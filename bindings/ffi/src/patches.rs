//! Patches through the bindings: compress an adapter into a signed ComPEFT patch (`.akp`
//! bytes), inspect, sign, verify, port to an updated base, merge, and keygen. Keys are the key
//! files' texts (`adaptkit patch keygen` writes the same).

use std::sync::Arc;

use adaptkit::patch::keys::{parse_secret_key, SigningKey};
use adaptkit::patch::{DenseType, Patch};
use adaptkit::runtime::patches::{self, Density};

use crate::adapter::{public_keys, AdapterSource};
use crate::error::{to_u32, AdaptError};
use crate::model::Model;
use crate::worker::{guarded, on_worker};

fn secret_key(text: &str) -> Result<SigningKey, AdaptError> {
    parse_secret_key(text).map_err(|e| AdaptError::InvalidArgument(format!("secret_key: {e}")))
}

fn dense_type(text: &str) -> Result<DenseType, AdaptError> {
    Ok(text.parse()?)
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct KeyPair {
    /// The secret key file's text: keep it in the app's private storage.
    pub secret: String,
    /// The public key file's text: what verifiers trust.
    pub public: String,
    pub public_hex: String,
}

/// A new Ed25519 signing key pair from the operating system's randomness.
#[uniffi::export]
pub fn keygen() -> Result<KeyPair, AdaptError> {
    guarded(|| {
        let keys = patches::keygen()?;
        Ok(KeyPair { secret: keys.secret, public: keys.public, public_hex: keys.public_hex })
    })
}

/// How to compress.
#[derive(uniffi::Record, Clone, Debug)]
pub struct CompressOptions {
    /// A fraction in (0, 1], `auto` (the smallest that keeps the gain on `eval_text`) or `dense`.
    #[uniffi(default = "0.1")]
    pub density: String,
    /// How tensors kept dense are stored: `f16` or `f32`.
    #[uniffi(default = "f16")]
    pub dense_type: String,
    /// Held-out text that `auto` scores densities on.
    #[uniffi(default = None)]
    pub eval_text: Option<String>,
    /// General text whose perplexity may rise at most 5% over the dense adapter's.
    #[uniffi(default = None)]
    pub general_text: Option<String>,
    /// Sign with this secret key file's text.
    #[uniffi(default = None)]
    pub secret_key: Option<String>,
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct CompressedPatch {
    /// The `.akp` file's bytes.
    pub bytes: Vec<u8>,
    /// The base model's fingerprint id.
    pub base: String,
    pub ratio_vs_f16: f64,
    pub signed: bool,
    /// The whole report as JSON (what `adaptkit patch compress --json` prints).
    pub json: String,
}

/// Compresses an adapter made for `model` (any source: a trained adapter saved in a storage, a
/// PEFT directory, a patch) into a patch.
#[uniffi::export]
pub async fn compress(
    model: Arc<Model>,
    source: AdapterSource,
    options: CompressOptions,
) -> Result<CompressedPatch, AdaptError> {
    let model = model.open_model()?;
    on_worker(Default::default(), move || {
        let runtime_options = patches::CompressOptions {
            density: options.density.parse::<Density>()?,
            dense_type: dense_type(&options.dense_type)?,
            eval_text: options.eval_text,
            general_text: options.general_text,
            ..Default::default()
        };
        let key = options.secret_key.as_deref().map(secret_key).transpose()?;
        let compressed =
            patches::compress_source(&model, source.runtime(), &runtime_options, key.as_ref(), &mut |_| {})?;
        Ok(CompressedPatch {
            base: compressed.report.base.clone(),
            ratio_vs_f16: compressed.report.ratio_vs_f16,
            signed: compressed.report.signed,
            json: serde_json::to_string(&compressed.report).unwrap_or_default(),
            bytes: compressed.bytes,
        })
    })
    .await
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct PatchInspection {
    pub method: String,
    pub bytes: u64,
    pub values: u64,
    pub scale: f32,
    pub signed: bool,
    pub signer: Option<String>,
    /// The fingerprint id of the base it was made for.
    pub base: String,
    pub ratio_vs_f16: f64,
    pub bits_per_value: f64,
    pub tensors: u32,
    /// Everything, as JSON (what `adaptkit patch inspect --json` prints).
    pub json: String,
}

/// Reads and checks a patch's bytes (`label` names it in messages) and describes it.
#[uniffi::export]
pub fn inspect(bytes: Vec<u8>, label: String) -> Result<PatchInspection, AdaptError> {
    guarded(|| {
        let i = patches::inspect(&bytes, &label)?;
        Ok(PatchInspection {
            method: i.method.name().into(),
            bytes: i.bytes as u64,
            values: i.values as u64,
            scale: i.scale,
            signed: i.signed,
            signer: i.signer.clone(),
            base: i.base.get("id").and_then(|v| v.as_str()).unwrap_or_default().into(),
            ratio_vs_f16: i.ratio_vs_f16,
            bits_per_value: i.bits_per_value,
            tensors: to_u32(i.tensors.len()),
            json: serde_json::to_string(&i).unwrap_or_default(),
        })
    })
}

/// The patch's bytes signed with `secret_key` (a key file's text); its contents unchanged.
#[uniffi::export]
pub fn sign(bytes: Vec<u8>, label: String, secret_key: String) -> Result<Vec<u8>, AdaptError> {
    guarded(|| Ok(patches::sign(&bytes, &label, &self::secret_key(&secret_key)?)?.0))
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct VerifyReport {
    pub signed: bool,
    /// The signer's public key (hex).
    pub signer: Option<String>,
    /// Whether the signer was checked against trusted keys.
    pub trusted: bool,
}

/// Checks a patch's integrity and signature, and that one of `trusted_keys` (public key
/// files' texts) signed it when any is given. A patch that fails is an error.
#[uniffi::export]
pub fn verify(bytes: Vec<u8>, label: String, trusted_keys: Vec<String>) -> Result<VerifyReport, AdaptError> {
    guarded(|| {
        let r = patches::verify(&bytes, &label, &public_keys(&trusted_keys)?)?;
        Ok(VerifyReport { signed: r.signed, signer: r.signer, trusted: r.trusted })
    })
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct PortOptions {
    /// Scale of the ported change.
    #[uniffi(default = 1.0)]
    pub lambda: f32,
    /// Refuse when a targeted weight moved more than this (relative Frobenius norm).
    #[uniffi(default = 0.5)]
    pub max_drift: f64,
    #[uniffi(default = None)]
    pub secret_key: Option<String>,
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct PortedPatch {
    pub bytes: Vec<u8>,
    pub from: String,
    pub to: String,
    pub max_drift: f64,
    pub json: String,
}

/// Moves a patch to `model`, an updated base of the same architecture (PortLLM), after
/// checking how far its weights drifted (exactly when `from`, the old base, is given).
#[uniffi::export]
pub async fn port(
    bytes: Vec<u8>,
    label: String,
    model: Arc<Model>,
    from: Option<Arc<Model>>,
    options: PortOptions,
) -> Result<PortedPatch, AdaptError> {
    let model = model.open_model()?;
    let from = from.map(|m| m.open_model()).transpose()?;
    on_worker(Default::default(), move || {
        let key = options.secret_key.as_deref().map(secret_key).transpose()?;
        let patch = Patch::from_bytes(&bytes, &label)?;
        let port_options = patches::PortOptions { lambda: options.lambda, max_drift: options.max_drift };
        let (ported, report) = patches::port(&patch, &model, from.as_deref(), port_options)?;
        Ok(PortedPatch {
            bytes: ported.to_bytes(key.as_ref()),
            from: report.from.clone(),
            to: report.to.clone(),
            max_drift: report.max_drift,
            json: serde_json::to_string(&report).unwrap_or_default(),
        })
    })
    .await
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct WeightedPatch {
    pub bytes: Vec<u8>,
    pub label: String,
    #[uniffi(default = 1.0)]
    pub weight: f32,
}

#[derive(uniffi::Record, Clone, Debug)]
pub struct MergedPatch {
    pub bytes: Vec<u8>,
    pub method: String,
    pub json: String,
}

/// The weighted sum of patches made for one base, as one dense patch (`dense_type`: `f16` or
/// `f32`), signed when `secret_key` is given.
#[uniffi::export]
pub fn merge(
    patches: Vec<WeightedPatch>,
    dense_type: String,
    secret_key: Option<String>,
) -> Result<MergedPatch, AdaptError> {
    guarded(|| {
        let key = secret_key.as_deref().map(self::secret_key).transpose()?;
        let weighted = patches
            .iter()
            .map(|p| Ok((Patch::from_bytes(&p.bytes, &p.label)?, p.weight)))
            .collect::<Result<Vec<_>, adaptkit::Error>>()?;
        let (merged, report) = patches::merge(&weighted, self::dense_type(&dense_type)?)?;
        Ok(MergedPatch {
            bytes: merged.to_bytes(key.as_ref()),
            method: report.method.name().into(),
            json: serde_json::to_string(&report).unwrap_or_default(),
        })
    })
}
