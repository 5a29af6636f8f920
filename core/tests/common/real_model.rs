//! Where the real test models are (SmolLM2-135M-Instruct, GGUF Q4_1, from
//! `scripts/fetch-model.sh`; Gemma 3 270M, GGUF Q4_K_M), for every test binary that uses them:
//! the core's golden tests and the CLI's (which includes this file by path); and the pinned
//! Flower venv.
#![allow(dead_code)]

use std::path::PathBuf;

/// The model's file name in the cache.
pub const REAL_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Whether the environment variable `name` is set to something other than empty or `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The real model: `$ADAPTKIT_TEST_MODEL`, or `$ADAPTKIT_HOME/models/…` (default
/// `~/.cache/adaptkit/models/…`). When it is missing the test is skipped with a note, unless
/// `ADAPTKIT_REQUIRE_MODEL` is set (CI sets it), where a missing model fails the test.
pub fn real_model() -> Option<PathBuf> {
    cached_model("ADAPTKIT_TEST_MODEL", REAL_MODEL_FILE, "scripts/fetch-model.sh")
}

/// The second family's model: Gemma 3 270M (GGUF Q4_K_M, from `adaptkit fetch --model
/// gemma3-270m`), `$ADAPTKIT_TEST_GEMMA` or the cache; skipped or failed as [`real_model`].
pub fn gemma_model() -> Option<PathBuf> {
    cached_model("ADAPTKIT_TEST_GEMMA", GEMMA_MODEL_FILE, "scripts/fetch-model.sh gemma3-270m")
}

/// The Gemma model's file name in the cache.
pub const GEMMA_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

fn cached_model(variable: &str, file: &str, fetch: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("ADAPTKIT_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/adaptkit")
        });
        home.join("models").join(file)
    });
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !env_flag("ADAPTKIT_REQUIRE_MODEL"),
        "ADAPTKIT_REQUIRE_MODEL is set but {} is missing: run {fetch}",
        path.display()
    );
    eprintln!("note: {} not found; real-model test skipped (run {fetch})", path.display());
    None
}

/// The pinned Flower venv (`scripts/flower-venv.sh`): `$ADAPTKIT_FLOWER_VENV`. When it is not
/// set the test is skipped with a note, unless `ADAPTKIT_REQUIRE_FLOWER` is set (CI), where it
/// fails.
pub fn flower_venv() -> Option<PathBuf> {
    if let Some(venv) = std::env::var_os("ADAPTKIT_FLOWER_VENV") {
        return Some(PathBuf::from(venv));
    }
    assert!(
        !env_flag("ADAPTKIT_REQUIRE_FLOWER"),
        "ADAPTKIT_REQUIRE_FLOWER is set but ADAPTKIT_FLOWER_VENV is not: run scripts/flower-venv.sh"
    );
    eprintln!(
        "note: ADAPTKIT_FLOWER_VENV is not set; Flower test skipped (scripts/flower-venv.sh makes the venv)"
    );
    None
}
