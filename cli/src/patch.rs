//! `adaptkit patch …`: make, inspect, sign, verify, port, merge and apply adapter patches
//! (`.akp`, layout in docs/patch-format.md).

use std::io::Read;
use std::path::{Path, PathBuf};

use adaptkit::adapt::merge::export_merged;
use adaptkit::adapt::AdapterSet;
use adaptkit::control::CancelToken;
use adaptkit::engine::Engine;
use adaptkit::format::gguf::GgufFile;
use adaptkit::format::patch_file::Encoding;
use adaptkit::model::{Adapters, NoAdapters};
use adaptkit::patch::compress::{self, Budget, Scores};
use adaptkit::patch::keys::{self, SigningKey};
use adaptkit::patch::port::{self, DriftReport};
use adaptkit::patch::{merge, DenseType, Fingerprint, FingerprintCache, Patch};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::commands::{load_engine, merged_type, open_engine, resolve_model};
use crate::{emit, fetch, say, CliError, ModelArgs, Output};

#[derive(Subcommand)]
pub enum PatchCommand {
    /// Make a patch from a saved adapter (or recode a patch): ComPEFT-coded at --density, or dense.
    Compress(CompressArgs),
    /// Show a patch's base model, method, training metadata, coding and size.
    Inspect(InspectArgs),
    /// Attach a patch and write the merged model (GGUF) and/or the adapter as a PEFT directory.
    Apply(ApplyArgs),
    /// Move a patch to an updated base model of the same architecture (PortLLM), with a drift report.
    Port(PortArgs),
    /// Combine patches made for one base into one: the weighted sum of their changes.
    Merge(MergeArgs),
    /// Sign a patch with an Ed25519 secret key.
    Sign(SignArgs),
    /// Check a patch's integrity and signature (against trusted public keys if given).
    Verify(VerifyArgs),
    /// Make an Ed25519 key pair for signing patches: KEY (secret) and KEY.pub.
    Keygen(KeygenArgs),
}

pub fn run(command: PatchCommand) -> Result<(), CliError> {
    match command {
        PatchCommand::Compress(args) => compress_cmd(args),
        PatchCommand::Inspect(args) => inspect(args),
        PatchCommand::Apply(args) => apply(args),
        PatchCommand::Port(args) => port_cmd(args),
        PatchCommand::Merge(args) => merge_cmd(args),
        PatchCommand::Sign(args) => sign(args),
        PatchCommand::Verify(args) => verify(args),
        PatchCommand::Keygen(args) => keygen(args),
    }
}

/// The fingerprint of the engine's model, cached under `$ADAPTKIT_HOME/fingerprints`.
pub fn fingerprint(engine: &Engine) -> Result<Fingerprint, adaptkit::Error> {
    let cache = FingerprintCache::new(fetch::home().join("fingerprints"));
    engine.run(|e| cache.get(e.source(), e.model(), Some(e.tokenizer())))
}

fn read_patch(path: &Path) -> Result<Patch, CliError> {
    Ok(Patch::read(path)?)
}

fn read_text(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::io(path, e))
}

pub fn read_trusted_keys(paths: &[PathBuf]) -> Result<Vec<[u8; 32]>, CliError> {
    paths
        .iter()
        .map(|p| {
            keys::parse_public_key(&read_text(p)?).map_err(|m| CliError::msg(format!("{}: {m}", p.display())))
        })
        .collect()
}

fn read_secret_key(path: &Path) -> Result<SigningKey, CliError> {
    keys::parse_secret_key(&read_text(path)?).map_err(|m| CliError::msg(format!("{}: {m}", path.display())))
}

fn parse_dense(name: &str) -> Result<DenseType, String> {
    match name {
        "f16" => Ok(DenseType::F16),
        "f32" => Ok(DenseType::F32),
        other => Err(format!("'{other}' is not f16 or f32")),
    }
}

/// `--density`: a fraction in (0, 1], `auto`, or `dense`.
#[derive(Clone, Copy, Debug)]
enum Density {
    Fraction(f64),
    Auto,
    Dense,
}

fn parse_density(s: &str) -> Result<Density, String> {
    match s {
        "auto" => Ok(Density::Auto),
        "dense" => Ok(Density::Dense),
        _ => match s.parse::<f64>() {
            Ok(d) if d > 0.0 && d <= 1.0 => Ok(Density::Fraction(d)),
            _ => Err(format!("'{s}' is not a fraction in (0, 1], 'auto' or 'dense'")),
        },
    }
}

#[derive(Args)]
pub struct CompressArgs {
    /// A saved adapter directory (any method) or a patch to recode.
    adapter: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// The patch file to write.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of each task vector kept (ComPEFT top-k), `auto` (the smallest that keeps
    /// --keep-gain of the adapter's gain on --eval), or `dense`.
    #[arg(long, default_value = "0.1", value_parser = parse_density)]
    density: Density,
    /// Tensors stored dense: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = parse_dense)]
    dtype: DenseType,
    /// Held-out text for --density auto.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Window length for --eval.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// For --density auto: the fraction of the adapter's held-out log-perplexity gain over the
    /// base model to keep.
    #[arg(long, default_value_t = 0.95)]
    keep_gain: f64,
    /// For --density auto: general text whose perplexity may rise at most --max-general-rise
    /// over the dense adapter's (a sparse patch at a large scale can forget more).
    #[arg(long)]
    general_eval: Option<PathBuf>,
    #[arg(long, default_value_t = 0.05)]
    max_general_rise: f64,
    /// Sign the patch with this Ed25519 secret key file.
    #[arg(long)]
    sign: Option<PathBuf>,
    #[command(flatten)]
    out_format: Output,
}

fn compress_cmd(args: CompressArgs) -> Result<(), CliError> {
    let key = args.sign.as_deref().map(read_secret_key).transpose()?;
    let eval_text = match (&args.density, &args.eval) {
        (Density::Auto, None) => {
            return Err(CliError::msg("--density auto needs held-out text: --eval FILE"))
        }
        (_, Some(path)) => Some(read_text(path)?),
        _ => None,
    };
    let engine = load_engine(&args.model)?;
    let base = fingerprint(&engine)?;
    let source = if args.adapter.is_dir() {
        // Loading checks the adapter against this model before anything is written.
        adaptkit::adapt::load(&args.adapter, engine.model())?;
        Patch::from_adapter_dir(&args.adapter, base, args.dtype)?
    } else {
        let patch = read_patch(&args.adapter)?;
        patch.check_base(&base, false, &args.adapter.display().to_string())?;
        patch
    };
    let mut auto_report = Value::Null;
    // Per-tensor statistics of the coding (σ, fitted α, kept values, bits, a LoRA pair's cosine).
    let mut tensor_reports = Value::Null;
    let patch = match args.density {
        Density::Dense => source.to_dense(args.dtype)?,
        Density::Fraction(d) => {
            let (coded, reports) = compress::compress(&source, d)?;
            tensor_reports = serde_json::to_value(reports).unwrap_or(Value::Null);
            coded
        }
        Density::Auto => {
            let held_out = eval_text.as_deref().unwrap_or_default();
            let general = args.general_eval.as_deref().map(read_text).transpose()?;
            let label = args.adapter.clone();
            let mut score = |candidate: Option<&Patch>| -> Result<Scores, adaptkit::Error> {
                let mut set = AdapterSet::new();
                if let Some(p) = candidate {
                    set.push(p.to_method(engine.model(), &label)?, p.scale);
                }
                let adapters: &dyn Adapters = if set.is_empty() { &NoAdapters } else { &set };
                let ppl = |text: &str| -> Result<f64, adaptkit::Error> {
                    Ok(engine
                        .perplexity(text, args.seq, adapters, &CancelToken::new(), &mut |_, _| {})?
                        .perplexity)
                };
                Ok(Scores { held_out: ppl(held_out)?, general: general.as_deref().map(ppl).transpose()? })
            };
            let budget = Budget { keep_gain: args.keep_gain, max_general_rise: args.max_general_rise };
            let choice = compress::auto(&source, budget, &mut score)?;
            for t in &choice.trials {
                eprintln!(
                    "density {:.2}, alpha x{:.2}: held-out perplexity {:.3} (keeps {:.1}% of the gain){}, {} bytes{}",
                    t.density,
                    t.alpha_factor,
                    t.perplexity,
                    t.gain_kept * 100.0,
                    t.general.map_or(String::new(), |g| format!(", general {g:.3}")),
                    t.bytes,
                    if t.accepted { ": chosen" } else { "" }
                );
            }
            auto_report = json!({
                "base_perplexity": choice.base.held_out,
                "dense_perplexity": choice.dense.held_out,
                "base_general": choice.base.general,
                "dense_general": choice.dense.general,
                "trials": serde_json::to_value(&choice.trials).unwrap_or(Value::Null),
            });
            choice.patch
        }
    };
    patch.write(&args.out, key.as_ref())?;
    let bytes = std::fs::metadata(&args.out).map_err(|e| CliError::io(&args.out, e))?.len();
    let ratio = patch.f16_bytes() as f64 / bytes as f64;
    let out = args.out.display().to_string();
    let density = patch.compression.as_ref().and_then(|c| c.get("density")).cloned().unwrap_or(Value::Null);
    emit(
        args.out_format,
        json!({
            "out": out,
            "method": patch.method.name(),
            "base": patch.base.id,
            "density": density,
            "compression": patch.compression,
            "bytes": bytes,
            "payload_bytes": patch.payload_bytes(),
            "f16_bytes": patch.f16_bytes(),
            "ratio_vs_f16": ratio,
            "signed": key.is_some(),
            "auto": auto_report,
            "tensors": tensor_reports,
        }),
        || say(format_args!("{out}: {bytes} bytes, {ratio:.1}x smaller than the adapter in f16\n")),
    );
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    patch: PathBuf,
    #[command(flatten)]
    out: Output,
}

fn inspect(args: InspectArgs) -> Result<(), CliError> {
    let patch = read_patch(&args.patch)?;
    let bytes = std::fs::metadata(&args.patch).map_err(|e| CliError::io(&args.patch, e))?.len();
    let elements: usize = patch.tensors.iter().map(|t| t.elements()).sum();
    let tensors: Vec<Value> = patch
        .tensors
        .iter()
        .map(|t| {
            let mut entry = json!({"name": t.name, "shape": t.shape, "encoding": t.encoding.name(), "bytes": t.bytes.len()});
            if let Encoding::Ternary { scale, init, nonzeros, rice_bits } = t.encoding {
                entry["scale"] = json!(scale);
                entry["init"] = json!(init);
                entry["nonzeros"] = json!(nonzeros);
                entry["density"] = json!(nonzeros as f64 / t.elements().max(1) as f64);
                entry["rice_bits"] = json!(rice_bits);
                entry["bits_per_value"] = json!(t.bytes.len() as f64 * 8.0 / t.elements().max(1) as f64);
            }
            entry
        })
        .collect();
    let ratio = patch.f16_bytes() as f64 / bytes as f64;
    let report = json!({
        "patch": args.patch.display().to_string(),
        "bytes": bytes,
        "method": patch.method.name(),
        "config": patch.config,
        "base": {
            "id": patch.base.id,
            "architecture": patch.base.architecture,
            "layers": patch.base.layers,
            "d_model": patch.base.d_model,
            "vocab_size": patch.base.vocab_size,
            "weights_sha256": patch.base.weights_sha256,
        },
        "scale": patch.scale,
        "signed": patch.signer.is_some(),
        "signer": patch.signer_hex(),
        "training": patch.training,
        "compression": patch.compression,
        "ported": patch.ported,
        "values": elements,
        "payload_bytes": patch.payload_bytes(),
        "f16_bytes": patch.f16_bytes(),
        "ratio_vs_f16": ratio,
        "bits_per_value": bytes as f64 * 8.0 / elements.max(1) as f64,
        "tensors": tensors,
    });
    emit(args.out, report, || {
        let coded = patch.tensors.iter().filter(|t| matches!(t.encoding, Encoding::Ternary { .. })).count();
        say(format_args!(
            "{}: {} patch for base {} ({}), {} tensors ({} ComPEFT-coded), {} values in {} bytes ({:.2} bits/value, {:.1}x smaller than f16), scale {}{}{}\n",
            args.patch.display(),
            patch.method.name(),
            patch.base.short_id(),
            patch.base.architecture,
            patch.tensors.len(),
            coded,
            elements,
            bytes,
            bytes as f64 * 8.0 / elements.max(1) as f64,
            ratio,
            patch.scale,
            patch.signer_hex().map_or(String::new(), |k| format!(", signed by {k}")),
            patch.ported.as_ref().map_or(String::new(), |p| format!(", ported from {}", p["from"].as_str().unwrap_or("?"))),
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct ApplyArgs {
    patch: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Attach a patch made for another base of the same architecture as it is (PortLLM, λ = 1).
    #[arg(long)]
    port: bool,
    /// Require a signature by one of these public keys (repeatable).
    #[arg(long = "trusted-key")]
    trusted_keys: Vec<PathBuf>,
    /// Write the merged model here (GGUF).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Block format of the merged matrices (see `merge --type`).
    #[arg(long = "type", default_value = "F16")]
    merged_type: String,
    /// Write the adapter as a Hugging Face PEFT directory here.
    #[arg(long)]
    peft: Option<PathBuf>,
    #[command(flatten)]
    out_format: Output,
}

fn apply(args: ApplyArgs) -> Result<(), CliError> {
    if args.out.is_none() && args.peft.is_none() {
        return Err(CliError::msg(
            "say what to write: --out MERGED.gguf and/or --peft DIR (to use a patch unmerged, pass it to generate/eval --adapter)",
        ));
    }
    let merged_type = merged_type(&args.merged_type)?;
    let trusted = read_trusted_keys(&args.trusted_keys)?;
    let path = resolve_model(args.model.model.clone())?;
    if args.out.is_some() && path.is_dir() {
        return Err(CliError::msg(format!("{}: merging writes GGUF and reads GGUF models", path.display())));
    }
    let engine = load_engine(&args.model)?;
    let options = adaptkit::patch::AttachOptions { trusted_keys: &trusted, allow_port: args.port };
    let mut fp = || fingerprint(&engine);
    let patch = read_patch(&args.patch)?;
    let method = patch.attach(engine.model(), &args.patch, &mut fp, &options)?;
    let scale = patch.scale;
    let mut report =
        json!({"patch": args.patch.display().to_string(), "method": patch.method.name(), "scale": scale});
    if let Some(dir) = &args.peft {
        patch.write_peft(dir)?;
        report["peft"] = json!(dir.display().to_string());
    }
    if let Some(out) = &args.out {
        let mut set = AdapterSet::new();
        set.push(method, scale);
        let base = GgufFile::open(&path).map_err(adaptkit::Error::from)?;
        let merged = export_merged(&base, &set, merged_type, out)?;
        report["out"] = json!(out.display().to_string());
        report["tensors_merged"] = json!(merged.tensors_merged);
    }
    emit(args.out_format, report.clone(), || {
        say(format_args!(
            "applied {}: {}\n",
            args.patch.display(),
            serde_json::to_string(&report).unwrap_or_default()
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct PortArgs {
    patch: PathBuf,
    /// The updated base model to port to.
    #[command(flatten)]
    model: ModelArgs,
    /// The base the patch was made for, for an exact per-layer drift report (without it, drift
    /// is measured from the weight norms the patch carries).
    #[arg(long)]
    from: Option<PathBuf>,
    /// The ported patch to write.
    #[arg(long)]
    out: PathBuf,
    /// Scale of the ported change (θ' + λΔ).
    #[arg(long, default_value_t = 1.0)]
    lambda: f32,
    /// Refuse when any targeted weight moved more than this (relative Frobenius norm).
    #[arg(long, default_value_t = 0.5)]
    max_drift: f64,
    #[command(flatten)]
    out_format: Output,
}

fn port_cmd(args: PortArgs) -> Result<(), CliError> {
    let patch = read_patch(&args.patch)?;
    let engine = load_engine(&args.model)?;
    let new_base = fingerprint(&engine)?;
    let targets = port::targets(&patch, new_base.layers);
    patch
        .base
        .same_shapes(&new_base)
        .map_err(|m| CliError::msg(format!("cannot port {}: {m}", args.patch.display())))?;
    let drift: DriftReport = match &args.from {
        Some(old_path) => {
            let old = open_engine(old_path, &args.model, false)?;
            let old_fp = fingerprint(&old)?;
            if old_fp.id != patch.base.id {
                return Err(CliError::msg(format!(
                    "--from {} is base {}, but the patch was made for {}",
                    old_path.display(),
                    old_fp.short_id(),
                    patch.base.short_id()
                )));
            }
            engine.run(|e| port::weight_drift(old.model(), e.model(), &targets))?
        }
        None => port::norm_drift(&patch.base, &new_base, &targets),
    };
    let worst = drift.weights.iter().max_by(|a, b| a.relative.total_cmp(&b.relative));
    if let Some(w) = worst.filter(|w| w.relative > args.max_drift) {
        return Err(CliError::msg(format!(
            "layer {} {} moved by {:.3} (relative), more than --max-drift {}: this is not an update of the same model; retrain instead",
            w.layer, w.projection, w.relative, args.max_drift
        )));
    }
    let ported = port::port(&patch, &new_base, args.lambda, &drift)?;
    ported.write(&args.out, None)?;
    // Per layer: the largest drift among its targeted weights.
    let mut per_layer: Vec<(usize, f64)> = Vec::new();
    for d in &drift.weights {
        match per_layer.last_mut() {
            Some((l, m)) if *l == d.layer => *m = m.max(d.relative),
            _ => per_layer.push((d.layer, d.relative)),
        }
    }
    for (layer, m) in &per_layer {
        eprintln!("layer {layer:>3}: drift {m:.4}");
    }
    let out = args.out.display().to_string();
    emit(
        args.out_format,
        json!({
            "out": out,
            "from": patch.base.id,
            "to": new_base.id,
            "lambda": args.lambda,
            "scale": ported.scale,
            "drift_exact": drift.exact,
            "max_drift": drift.max(),
            "mean_drift": drift.mean(),
            "drift": drift.weights,
        }),
        || {
            say(format_args!(
                "{out}: ported from {} to {} (λ = {}), drift mean {:.4}, max {:.4} ({})\n",
                patch.base.short_id(),
                new_base.short_id(),
                args.lambda,
                drift.mean(),
                drift.max(),
                if drift.exact {
                    "measured on the weights"
                } else {
                    "from weight norms; pass --from OLD for the exact figure"
                }
            ))
        },
    );
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// Patches, each optionally weighted (`a.akp:0.5`).
    #[arg(required = true, value_name = "PATCH[:WEIGHT]")]
    patches: Vec<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "f16", value_parser = parse_dense)]
    dtype: DenseType,
    #[command(flatten)]
    out_format: Output,
}

/// `path[:weight]`, the weight 1 when absent.
pub fn split_weight(spec: &str) -> Result<(&str, f32), CliError> {
    match spec.rsplit_once(':') {
        Some((path, w)) if w.parse::<f32>().is_ok() => {
            let w = w.parse::<f32>().unwrap_or(1.0);
            if !w.is_finite() {
                return Err(CliError::msg(format!("{spec}: the weight must be finite")));
            }
            Ok((path, w))
        }
        _ => Ok((spec, 1.0)),
    }
}

fn merge_cmd(args: MergeArgs) -> Result<(), CliError> {
    let mut patches = Vec::new();
    for spec in &args.patches {
        let (path, weight) = split_weight(spec)?;
        patches.push((read_patch(Path::new(path))?, weight));
    }
    let merged = merge::combine(&patches, args.dtype)?;
    merged.write(&args.out, None)?;
    let out = args.out.display().to_string();
    emit(
        args.out_format,
        json!({"out": out, "method": merged.method.name(), "patches": patches.len(), "config": merged.config}),
        || say(format_args!("{out}: {} patches merged ({})\n", patches.len(), merged.method.name())),
    );
    Ok(())
}

#[derive(Args)]
pub struct SignArgs {
    patch: PathBuf,
    /// Ed25519 secret key file (from `adaptkit patch keygen`).
    #[arg(long)]
    key: PathBuf,
    /// Where to write the signed patch (default: in place, atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    out_format: Output,
}

fn sign(args: SignArgs) -> Result<(), CliError> {
    let key = read_secret_key(&args.key)?;
    let patch = read_patch(&args.patch)?;
    let out = args.out.unwrap_or_else(|| args.patch.clone());
    patch.write(&out, Some(&key))?;
    let signer = adaptkit::format::patch_file::hex(key.verifying_key().as_bytes());
    emit(args.out_format, json!({"out": out.display().to_string(), "signer": signer}), || {
        say(format_args!("{}: signed by {signer}\n", out.display()))
    });
    Ok(())
}

#[derive(Args)]
pub struct VerifyArgs {
    patch: PathBuf,
    /// Trusted Ed25519 public key files (repeatable); when given, the patch must be signed by one.
    #[arg(long = "trusted-key")]
    trusted_keys: Vec<PathBuf>,
    #[command(flatten)]
    out: Output,
}

fn verify(args: VerifyArgs) -> Result<(), CliError> {
    let trusted = read_trusted_keys(&args.trusted_keys)?;
    let patch = read_patch(&args.patch)?;
    if !trusted.is_empty() {
        adaptkit::format::patch_file::require_signer(patch.signer, &trusted)
            .map_err(|e| CliError::msg(format!("{}: {e}", args.patch.display())))?;
    }
    let signer = patch.signer_hex();
    emit(
        args.out,
        json!({"patch": args.patch.display().to_string(), "valid": true, "signed": signer.is_some(), "signer": signer, "trusted": !trusted.is_empty()}),
        || {
            say(format_args!(
                "{}: intact (checksum ok){}\n",
                args.patch.display(),
                match (&signer, trusted.is_empty()) {
                    (Some(k), false) => format!(", signed by trusted key {k}"),
                    (Some(k), true) => format!(", signature by {k} valid (no trusted keys given)"),
                    (None, _) => ", not signed".to_string(),
                }
            ))
        },
    );
    Ok(())
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Secret key file to write (the public key goes to KEY.pub); existing files are kept.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    out_format: Output,
}

fn keygen(args: KeygenArgs) -> Result<(), CliError> {
    let public_path = PathBuf::from(format!("{}.pub", args.out.display()));
    for path in [&args.out, &public_path] {
        if path.exists() {
            return Err(CliError::msg(format!("{}: exists; not overwriting a key", path.display())));
        }
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| CliError::msg(format!("no randomness from the OS (/dev/urandom): {e}")))?;
    let key = keys::signing_key(seed);
    let public = key.verifying_key().to_bytes();
    write_private(&args.out, &keys::secret_key_text(&key))?;
    adaptkit::format::write_atomic(&public_path, |w| w.write_all(keys::public_key_text(&public).as_bytes()))
        .map_err(|e| CliError::io(&public_path, e))?;
    let public_hex = adaptkit::format::patch_file::hex(&public);
    emit(
        args.out_format,
        json!({"secret_key": args.out.display().to_string(), "public_key": public_path.display().to_string(), "public": public_hex}),
        || {
            say(format_args!(
                "{} (secret) and {} (public: {public_hex})\n",
                args.out.display(),
                public_path.display()
            ))
        },
    );
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| CliError::io(path, e))?;
    file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(|e| CliError::io(path, e))
}
