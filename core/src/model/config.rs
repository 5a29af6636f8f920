//! Hyper-parameters of a decoder, read from GGUF metadata or a HF `config.json`: the shapes every
//! family shares, and the [`Parts`] that tell the families apart.

use super::architecture::Parts;
use super::sites::Projection;
use crate::error::Error;
use crate::format::gguf::GgufFile;

/// How RoPE frequencies are stretched for contexts longer than the training context.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (GGUF `rope.scaling.type = linear`, HF `"linear"`).
    Linear {
        factor: f32,
    },
    /// Llama 3.x: per-frequency factors (GGUF stores them as the `rope_freqs.weight` tensor,
    /// HF as four numbers that we expand the same way).
    PerFrequency {
        factors: Vec<f32>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub context_len: usize,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rms_eps: f32,
    pub tied_embeddings: bool,
    pub parts: Parts,
}

/// HF `model_type`s whose checkpoints this loader reads.
const HF_ARCHITECTURES: &[&str] = &["llama", "mistral", "gemma3_text"];

impl DecoderConfig {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, Error> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        let parts = Parts::from_gguf(gguf, &arch)?;
        let key = |k: &str| format!("{arch}.{k}");
        let usize_of = |k: &str| -> Result<usize, Error> { Ok(gguf.get_u64(&key(k))? as usize) };
        let d_model = usize_of("embedding_length")?;
        let n_heads = usize_of("attention.head_count")?;
        let n_kv_heads = match gguf.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => n_heads,
        };
        let head_dim = match gguf.get(&key("attention.key_length")) {
            Some(_) => usize_of("attention.key_length")?,
            None if n_heads > 0 => d_model / n_heads,
            None => 0,
        };
        let vocab_size = match gguf.get(&key("vocab_size")) {
            Some(_) => usize_of("vocab_size")?,
            None => match gguf.tensor("token_embd.weight") {
                Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
                _ => return Err(Error::MissingTensor("token_embd.weight".into())),
            },
        };
        let rope_theta = match gguf.get(&key("rope.freq_base")) {
            Some(_) => gguf.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let rope_scaling = match gguf.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => match gguf.tensor("rope_freqs.weight") {
                // Llama 3.1 GGUFs carry their per-frequency divisors as a tensor.
                Some(info) => {
                    let mut factors = vec![0.0; (info.n_elements() as usize).min(1 << 16)];
                    crate::quant::dequantize(info.ty, &gguf.tensor_data(info), &mut factors)?;
                    RopeScaling::PerFrequency { factors }
                }
                None => RopeScaling::None,
            },
            Some("linear") => RopeScaling::Linear { factor: gguf.get_f32(&key("rope.scaling.factor"))? },
            Some(other) => {
                return Err(Error::Config(format!(
                    "{arch}.rope.scaling.type = '{other}' is not supported (supported: none, linear)"
                )))
            }
        };
        let config = Self {
            n_layers: usize_of("block_count")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: usize_of("feed_forward_length")?,
            vocab_size,
            context_len: usize_of("context_length")?,
            rope_theta,
            rope_scaling,
            rms_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            tied_embeddings: gguf.tensor("output.weight").is_none(),
            architecture: arch.clone(),
            parts,
        };
        if let Some(dims) = gguf.get(&key("rope.dimension_count")).and_then(|v| v.as_u64()) {
            if dims != config.head_dim as u64 {
                return Err(Error::Config(format!(
                    "{}.rope.dimension_count = {dims}: partial rotary embeddings (head dimension {}) are not supported",
                    config.architecture, config.head_dim
                )));
            }
        }
        // Projections may have output biases (a merged LoFiT adapter writes one); other biases
        // belong to architectures this decoder is not.
        let projection_bias = |name: &str| {
            (0..config.n_layers).any(|layer| Projection::ALL.iter().any(|p| p.gguf_bias(layer) == name))
        };
        if let Some(bias) =
            gguf.tensors().iter().find(|t| t.name.ends_with(".bias") && !projection_bias(&t.name))
        {
            return Err(Error::Config(format!("tensor '{}': this bias is not supported", bias.name)));
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a Hugging Face `config.json` (`model_type` llama, mistral or gemma3_text).
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self, Error> {
        let field = |k: &str| json.get(k);
        let usize_of = |k: &str| -> Result<usize, Error> {
            field(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| Error::Config(format!("config.json: missing or non-integer '{k}'")))
        };
        let arch = field("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
        if !HF_ARCHITECTURES.contains(&arch.as_str()) {
            return Err(Error::UnsupportedArchitecture(arch));
        }
        let d_model = usize_of("hidden_size")?;
        let n_heads = usize_of("num_attention_heads")?;
        let n_kv_heads = usize_of("num_key_value_heads").unwrap_or(n_heads);
        let head_dim = match field("head_dim").and_then(|v| v.as_u64()) {
            Some(h) => h as usize,
            None if n_heads > 0 => d_model / n_heads,
            None => 0,
        };
        let f32_of = |k: &str, default: f32| field(k).and_then(|v| v.as_f64()).map_or(default, |v| v as f32);
        // transformers 5 nests the base of each attention type under `rope_parameters`.
        let rope_theta = json
            .pointer("/rope_parameters/full_attention/rope_theta")
            .or_else(|| json.pointer("/rope_parameters/rope_theta"))
            .and_then(|v| v.as_f64())
            .map_or_else(|| f32_of("rope_theta", 10_000.0), |v| v as f32);
        let rope_scaling = match field("rope_scaling").filter(|v| !v.is_null()) {
            None => RopeScaling::None,
            Some(s) => {
                let kind =
                    s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("");
                let num = |k: &str| s.get(k).and_then(|v| v.as_f64()).map(|v| v as f32);
                let factor = || {
                    num("factor")
                        .ok_or_else(|| Error::Config("config.json: rope_scaling.factor missing".into()))
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: factor()? },
                    "llama3" => RopeScaling::PerFrequency {
                        factors: llama3_frequency_factors(
                            head_dim,
                            rope_theta,
                            factor()?,
                            num("low_freq_factor").unwrap_or(1.0),
                            num("high_freq_factor").unwrap_or(4.0),
                            num("original_max_position_embeddings").unwrap_or(8192.0),
                        ),
                    },
                    other => {
                        return Err(Error::Config(format!(
                            "config.json: rope_scaling type '{other}' is not supported (supported: linear, llama3)"
                        )))
                    }
                }
            }
        };
        for flag in ["attention_bias", "mlp_bias"] {
            if field(flag).and_then(|v| v.as_bool()) == Some(true) {
                return Err(Error::Config(format!(
                    "config.json: {flag} = true: linear biases are not supported"
                )));
            }
        }
        let parts = Parts::from_hf_json(json, &arch, head_dim)?;
        let config = Self {
            // The GGUF name, so that adapters and patches match across the two formats.
            architecture: if arch == "gemma3_text" { "gemma3".into() } else { arch },
            n_layers: usize_of("num_hidden_layers")?,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: usize_of("intermediate_size")?,
            vocab_size: usize_of("vocab_size")?,
            context_len: usize_of("max_position_embeddings")?,
            rope_theta,
            rope_scaling,
            rms_eps: f32_of("rms_norm_eps", 1e-6), // transformers' DecoderConfig default
            tied_embeddings: field("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false),
            parts,
        };
        config.validate()?;
        Ok(config)
    }

    /// Rejects shapes the forward pass cannot run, before anything is allocated from them.
    fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad(format!(
                "layers ({}), width ({}), heads ({}) and kv heads ({}) must all be positive",
                self.n_layers, self.d_model, self.n_heads, self.n_kv_heads
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("{} heads are not a multiple of {} kv heads", self.n_heads, self.n_kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even and positive", self.head_dim));
        }
        if self.vocab_size == 0 || self.ffn_dim == 0 || self.context_len == 0 {
            return bad(format!(
                "vocab ({}), ffn width ({}) and context ({}) must be positive",
                self.vocab_size, self.ffn_dim, self.context_len
            ));
        }
        if self.rms_eps.is_nan() || self.rms_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0
        {
            return bad(format!(
                "rms epsilon {} and rope base {} must be positive",
                self.rms_eps, self.rope_theta
            ));
        }
        // Shapes multiply into allocation sizes: refuse any product that cannot be addressed.
        let widths = [self.n_heads, self.n_kv_heads, self.d_model, self.ffn_dim, self.vocab_size];
        let widest = self.head_dim.max(self.d_model).max(self.ffn_dim);
        if widths.iter().any(|&w| w.checked_mul(widest).is_none_or(|p| p > isize::MAX as usize / 4)) {
            return bad(format!("dimensions {widths:?} x {widest} overflow"));
        }
        if let Some(window) = self.parts.sliding_window {
            if window.size == 0 || window.size > self.context_len || window.global_every == 0 {
                return bad(format!(
                    "sliding window of {} positions (every {}th layer global) for a context of {}: the window must be 1..=context",
                    window.size, window.global_every, self.context_len
                ));
            }
        }
        let factors_ok = match &self.rope_scaling {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => factor.is_finite() && *factor > 0.0,
            RopeScaling::PerFrequency { factors } => {
                factors.len() == self.head_dim / 2 && factors.iter().all(|f| f.is_finite() && *f > 0.0)
            }
        };
        if !factors_ok {
            return bad(format!(
                "RoPE scaling {:?} needs positive finite factors, one per rotated pair",
                self.rope_scaling
            ));
        }
        Ok(())
    }

    /// `(out, in)` features of a block's projection.
    pub fn projection_shape(&self, projection: super::Projection) -> (usize, usize) {
        use super::Projection::*;
        match projection {
            Q => (self.q_dim(), self.d_model),
            K | V => (self.kv_dim(), self.d_model),
            O => (self.d_model, self.q_dim()),
            Gate | Up => (self.ffn_dim, self.d_model),
            Down => (self.d_model, self.ffn_dim),
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Llama 3.1's frequency-dependent RoPE stretch, as one divisor per rotated pair.
fn llama3_frequency_factors(
    head_dim: usize,
    theta: f32,
    factor: f32,
    low: f32,
    high: f32,
    original: f32,
) -> Vec<f32> {
    let low_wavelen = original / low;
    let high_wavelen = original / high;
    (0..head_dim / 2)
        .map(|i| {
            let freq = theta.powf(-((2 * i) as f32) / head_dim as f32);
            let wavelen = 2.0 * core::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}
