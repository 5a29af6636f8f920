//! Hugging Face PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors`.
//! Only the bytes: what the config and tensors mean is each adaptation method's business.

use std::path::{Path, PathBuf};

use super::safetensors::{write_safetensors, Dtype, SafetensorsError, SafetensorsFile};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a PEFT adapter config: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {source}")]
    Weights { path: PathBuf, source: SafetensorsError },
}

/// A PEFT adapter as stored: its JSON config and its tensors (borrowed from the mapped file).
pub struct PeftDir {
    pub config: serde_json::Value,
    pub tensors: SafetensorsFile,
    pub path: PathBuf,
}

impl PeftDir {
    pub fn read(dir: &Path) -> Result<Self, PeftError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|source| PeftError::Io { path: config_path.clone(), source })?;
        let config =
            serde_json::from_str(&text).map_err(|source| PeftError::Config { path: config_path, source })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors = SafetensorsFile::open(&weights_path)
            .map_err(|source| PeftError::Weights { path: weights_path, source })?;
        Ok(Self { config, tensors, path: dir.to_path_buf() })
    }

    /// Writes `dir` (created if needed); each file is written atomically (temp file, fsync,
    /// rename), the weights before the config, so a directory with a config is complete.
    pub fn write(
        dir: &Path,
        config: &serde_json::Value,
        tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    ) -> Result<(), PeftError> {
        std::fs::create_dir_all(dir).map_err(|source| PeftError::Io { path: dir.to_path_buf(), source })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        write_safetensors(&weights_path, tensors, &[("format", "pt")])
            .map_err(|source| PeftError::Weights { path: weights_path, source })?;
        let config_path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(config).unwrap_or_default();
        super::write_atomic(&config_path, |w| w.write_all(text.as_bytes()))
            .map_err(|source| PeftError::Io { path: config_path, source })
    }
}
