//! `adaptkit patch …`: the runtime's patch verbs (`adaptkit::runtime::patches`) on files:
//! compress, inspect, apply, port, merge, sign, verify, keygen (layout in docs/patch-format.md).

use std::path::{Path, PathBuf};

use adaptkit::adapt::merge::MergedType;
use adaptkit::patch::{DenseType, Patch};
use adaptkit::runtime::patches::{self, CompressOptions, Density, PortOptions};
use adaptkit::runtime::AdapterSource;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::args::{parse, read_bytes, read_secret_key, read_text, read_trusted_keys, ModelArgs, TrustArgs};
use crate::{emit, say, CliError, Output};

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
        PatchCommand::Compress(args) => compress(args),
        PatchCommand::Inspect(args) => inspect(args),
        PatchCommand::Apply(args) => apply(args),
        PatchCommand::Port(args) => port(args),
        PatchCommand::Merge(args) => merge(args),
        PatchCommand::Sign(args) => sign(args),
        PatchCommand::Verify(args) => verify(args),
        PatchCommand::Keygen(args) => keygen(args),
    }
}

/// Writes a file atomically (temp file, fsync, rename).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    adaptkit::format::write_atomic(path, |w| w.write_all(bytes)).map_err(|e| CliError::io(path, e))
}

fn read_patch(path: &Path) -> Result<Patch, CliError> {
    Ok(Patch::read(path)?)
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
    #[arg(long, default_value = "0.1", value_parser = parse::<Density>)]
    density: Density,
    /// Tensors stored dense: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = parse::<DenseType>)]
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

fn compress(args: CompressArgs) -> Result<(), CliError> {
    let key = args.sign.as_deref().map(read_secret_key).transpose()?;
    let options = CompressOptions {
        density: args.density,
        dense_type: args.dtype,
        eval_text: args.eval.as_deref().map(read_text).transpose()?,
        general_text: args.general_eval.as_deref().map(read_text).transpose()?,
        seq: args.seq,
        keep_gain: args.keep_gain,
        max_general_rise: args.max_general_rise,
    };
    if options.density == Density::Auto && options.eval_text.is_none() {
        return Err(CliError::msg("--density auto needs held-out text: --eval FILE"));
    }
    let model = args.model.open(false)?;
    let source = AdapterSource::Path(args.adapter.clone());
    let compressed = patches::compress_source(&model, source, &options, key.as_ref(), &mut |t| {
        eprintln!(
            "density {:.2}, alpha x{:.2}: held-out perplexity {:.3} (keeps {:.1}% of the gain){}, {} bytes{}",
            t.density,
            t.alpha_factor,
            t.perplexity,
            t.gain_kept * 100.0,
            t.general.map_or(String::new(), |g| format!(", general {g:.3}")),
            t.bytes,
            if t.accepted { ": chosen" } else { "" }
        )
    })?;
    write_file(&args.out, &compressed.bytes)?;
    let report = &compressed.report;
    let out = args.out.display().to_string();
    emit(args.out_format, report, &[("out", json!(out))], || {
        say(format_args!(
            "{out}: {} bytes, {:.1}x smaller than the adapter in f16\n",
            report.bytes, report.ratio_vs_f16
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    patch: PathBuf,
    #[command(flatten)]
    out: Output,
}

fn inspect(args: InspectArgs) -> Result<(), CliError> {
    let label = args.patch.display().to_string();
    let bytes = read_bytes(&args.patch)?;
    let report = patches::inspect(&bytes, &label)?;
    emit(args.out, &report, &[("patch", json!(label))], || {
        let coded = report.tensors.iter().filter(|t| t.ternary.is_some()).count();
        say(format_args!(
            "{label}: {} patch for base {} ({}), {} tensors ({coded} ComPEFT-coded), {} values in {} bytes ({:.2} bits/value, {:.1}x smaller than f16), scale {}{}{}\n",
            report.method,
            report.base["id"].as_str().map_or("?", |id| &id[..id.len().min(12)]),
            report.base["architecture"].as_str().unwrap_or("?"),
            report.tensors.len(),
            report.values,
            report.bytes,
            report.bits_per_value,
            report.ratio_vs_f16,
            report.scale,
            report.signer.as_ref().map_or(String::new(), |k| format!(", signed by {k}")),
            report.ported.as_ref().map_or(String::new(), |p| format!(", ported from {}", p["from"].as_str().unwrap_or("?"))),
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct ApplyArgs {
    patch: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// Write the merged model here (GGUF).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Block format of the merged matrices (see `merge --type`).
    #[arg(long = "type", default_value = "F16", value_parser = parse::<MergedType>)]
    merged_type: MergedType,
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
    let model = args.model.open(false)?;
    let adapter = model.load_adapter(AdapterSource::Path(args.patch.clone()), &args.trust.load_options()?)?;
    let mut report = json!({
        "patch": args.patch.display().to_string(),
        "method": adapter.method(),
        "scale": adapter.info().scale,
    });
    if let Some(dir) = &args.peft {
        adapter.save_dir(dir)?;
        report["peft"] = json!(dir.display().to_string());
    }
    if let Some(out) = &args.out {
        model.attach(&adapter, 1.0)?;
        let merged = model.export_merged_file(args.merged_type, out)?;
        report["out"] = json!(out.display().to_string());
        report["tensors_merged"] = json!(merged.tensors_merged);
    }
    emit(args.out_format, &report, &[], || say(format_args!("applied {}: {report}\n", args.patch.display())));
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

fn port(args: PortArgs) -> Result<(), CliError> {
    let patch = read_patch(&args.patch)?;
    let model = args.model.open(false)?;
    let old = args.from.as_deref().map(|path| args.model.open_path(path, false)).transpose()?;
    let options = PortOptions { lambda: args.lambda, max_drift: args.max_drift };
    let (ported, report) = patches::port(&patch, &model, old.as_ref(), options)?;
    write_file(&args.out, &ported.to_bytes(None))?;
    for (layer, drift) in &report.layers {
        eprintln!("layer {layer:>3}: drift {drift:.4}");
    }
    let out = args.out.display().to_string();
    emit(args.out_format, &report, &[("out", json!(out))], || {
        say(format_args!(
            "{out}: ported from {} to {} (λ = {}), drift mean {:.4}, max {:.4} ({})\n",
            &report.from[..12.min(report.from.len())],
            &report.to[..12.min(report.to.len())],
            report.lambda,
            report.mean_drift,
            report.max_drift,
            if report.drift_exact {
                "measured on the weights"
            } else {
                "from weight norms; pass --from OLD for the exact figure"
            }
        ))
    });
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// Patches, each optionally weighted (`a.akp:0.5`).
    #[arg(required = true, value_name = "PATCH[:WEIGHT]")]
    patches: Vec<String>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "f16", value_parser = parse::<DenseType>)]
    dtype: DenseType,
    #[command(flatten)]
    out_format: Output,
}

fn merge(args: MergeArgs) -> Result<(), CliError> {
    let mut weighted = Vec::new();
    for spec in &args.patches {
        let (path, weight) = patches::split_weight(spec)?;
        weighted.push((read_patch(Path::new(path))?, weight));
    }
    let (merged, report) = patches::merge(&weighted, args.dtype)?;
    write_file(&args.out, &merged.to_bytes(None))?;
    let out = args.out.display().to_string();
    emit(args.out_format, &report, &[("out", json!(out))], || {
        say(format_args!("{out}: {} patches merged ({})\n", report.patches, report.method))
    });
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
    let (signed, signer) = patches::sign(&read_bytes(&args.patch)?, &args.patch.display().to_string(), &key)?;
    let out = args.out.unwrap_or_else(|| args.patch.clone());
    write_file(&out, &signed)?;
    emit(args.out_format, &json!({"out": out.display().to_string(), "signer": signer}), &[], || {
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
    let label = args.patch.display().to_string();
    let report = patches::verify(&read_bytes(&args.patch)?, &label, &trusted)?;
    emit(args.out, &report, &[("patch", json!(label))], || {
        say(format_args!(
            "{label}: intact (checksum ok){}\n",
            match (&report.signer, report.trusted) {
                (Some(k), true) => format!(", signed by trusted key {k}"),
                (Some(k), false) => format!(", signature by {k} valid (no trusted keys given)"),
                (None, _) => ", not signed".to_string(),
            }
        ))
    });
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
    let pair = patches::keygen()?;
    write_private(&args.out, &pair.secret)?;
    write_file(&public_path, pair.public.as_bytes())?;
    let report = json!({"secret_key": args.out.display().to_string(), "public_key": public_path.display().to_string(), "public": pair.public_hex});
    emit(args.out_format, &report, &[], || {
        say(format_args!(
            "{} (secret) and {} (public: {})\n",
            args.out.display(),
            public_path.display(),
            pair.public_hex
        ))
    });
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
