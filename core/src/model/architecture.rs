//! What sets one decoder family apart from another, as parts the shared decoder switches on.
//! A family is a row of [`Parts`]: Llama is the plain pre-norm transformer; Gemma 3 scales its
//! embeddings, gates its MLP with GELU, wraps both sublayers in a second norm, normalizes queries
//! and keys, and attends through a sliding window on five of every six layers. A new family
//! (Qwen's q/k norms, Phi's partial rotary) is a new row plus whatever part it alone has.

use crate::error::Error;
use crate::format::gguf::GgufFile;

/// The nonlinearity of the gated MLP: `act(gate) ⊙ up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU: Llama, Mistral, Qwen).
    Silu,
    /// GELU with PyTorch's tanh approximation, `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`
    /// (GeGLU: Gemma).
    GeluTanh,
}

/// How a file orders the rows of each q/k head. The decoder rotates adjacent pairs; a file in
/// rotate-half order has its rows permuted on load (and back wherever we write that file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryRows {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's permuted Llama GGUFs.
    Pairs,
    /// Halves `(i, i + head_dim/2)`: HF checkpoints, and GGUFs of NeoX-rope families (Gemma).
    Halves,
}

/// Attention through a sliding window on the local layers; the global ones see everything.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Positions a query sees, its own included: keys `pos - size + 1 ..= pos`.
    pub size: usize,
    /// Every `global_every`-th layer (1-based) is global; the others are local.
    pub global_every: usize,
    /// The RoPE base of the local layers (the global layers use the config's `rope_theta`).
    pub local_rope_theta: f32,
}

/// The parts of one family, read from or implied by its GGUF architecture name.
#[derive(Clone, Debug, PartialEq)]
pub struct Parts {
    pub activation: Activation,
    /// Token embeddings are multiplied by `√d_model` before the first block (Gemma; the head,
    /// tied or not, uses the unscaled matrix).
    pub scaled_embeddings: bool,
    /// A second RMSNorm on the output of attention and of the MLP, before each residual add.
    pub sandwich_norms: bool,
    /// RMSNorm over each query and key head (weights of `head_dim`), before RoPE.
    pub qk_norms: bool,
    pub rotary_rows: RotaryRows,
    pub sliding_window: Option<SlidingWindow>,
    /// RMSNorm weights are used as `norm_offset + w`: Gemma's checkpoints store `w` for a
    /// `(1 + w)` norm (1 here), its GGUFs the sum (0, as every other family).
    pub norm_offset: f32,
}

/// GGUF architecture names this decoder runs.
pub const SUPPORTED: &[&str] = &["llama", "mistral", "gemma3"];

impl Parts {
    /// The plain Llama decoder (Llama 2/3, Mistral without its window, SmolLM).
    pub fn llama() -> Self {
        Self {
            activation: Activation::Silu,
            scaled_embeddings: false,
            sandwich_norms: false,
            qk_norms: false,
            rotary_rows: RotaryRows::Pairs,
            sliding_window: None,
            norm_offset: 0.0,
        }
    }

    /// The parts of GGUF architecture `arch`. Gemma 3's window size is in the file
    /// (`gemma3.attention.sliding_window`); its layer pattern (five local, one global) and the
    /// local layers' RoPE base (10 000) are not, and are the values llama.cpp and transformers
    /// fix for every Gemma 3.
    pub fn from_gguf(gguf: &GgufFile, arch: &str) -> Result<Self, Error> {
        match arch {
            "llama" | "mistral" => Ok(Self::llama()),
            "gemma3" => {
                let size = gguf.get_u64("gemma3.attention.sliding_window")? as usize;
                Ok(Self::gemma3(SlidingWindow { size, global_every: 6, local_rope_theta: 10_000.0 }, 0.0))
            }
            other => Err(Error::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// Gemma 3 with its `window`, its norms stored as `w` where `norm_offset` is 1 (checkpoints)
    /// or as `1 + w` where it is 0 (GGUFs); q/k rows in rotate-half order in both.
    fn gemma3(window: SlidingWindow, norm_offset: f32) -> Self {
        Self {
            activation: Activation::GeluTanh,
            scaled_embeddings: true,
            sandwich_norms: true,
            qk_norms: true,
            rotary_rows: RotaryRows::Halves,
            sliding_window: Some(window),
            norm_offset,
        }
    }

    /// The parts of a Hugging Face `config.json` of `model_type` `arch` (checkpoints keep q/k
    /// rows in rotate-half order). Gemma 3 (`gemma3_text`) states its window, its layer types
    /// and both RoPE bases; what this decoder does not implement (soft-capping, an attention
    /// scale other than `1/√head_dim`, another activation, an irregular layer pattern) is refused
    /// by name.
    pub fn from_hf_json(json: &serde_json::Value, arch: &str, head_dim: usize) -> Result<Self, Error> {
        let llama = Self { rotary_rows: RotaryRows::Halves, ..Self::llama() };
        if arch != "gemma3_text" {
            return Ok(llama);
        }
        let bad = |what: String| Error::Config(format!("config.json: {what}"));
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if json.get(key).is_some_and(|v| !v.is_null()) {
                return Err(bad(format!("{key} = {}: soft-capping is not supported", json[key])));
            }
        }
        let activation =
            json.get("hidden_activation").and_then(|v| v.as_str()).unwrap_or("gelu_pytorch_tanh");
        if activation != "gelu_pytorch_tanh" {
            return Err(bad(format!(
                "hidden_activation = {activation}: only gelu_pytorch_tanh is supported"
            )));
        }
        let scalar = json.get("query_pre_attn_scalar").and_then(|v| v.as_f64()).unwrap_or(head_dim as f64);
        if scalar != head_dim as f64 {
            return Err(bad(format!(
                "query_pre_attn_scalar = {scalar}: only the head dimension ({head_dim}) is supported"
            )));
        }
        let size = json
            .get("sliding_window")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad("missing or non-integer 'sliding_window'".into()))?;
        let pattern = ["sliding_window_pattern", "_sliding_window_pattern"]
            .iter()
            .find_map(|k| json.get(*k).and_then(|v| v.as_u64()))
            .unwrap_or(6) as usize;
        let global_every = match json.get("layer_types").and_then(|v| v.as_array()) {
            Some(types) => periodic_global_layer(types, pattern).ok_or_else(|| {
                bad("layer_types: only a repeating pattern of sliding layers ending in one full layer is supported".into())
            })?,
            None => pattern,
        };
        // transformers 4 spells the local base `rope_local_base_freq`; 5 nests it.
        let local = json
            .pointer("/rope_parameters/sliding_attention/rope_theta")
            .or_else(|| json.get("rope_local_base_freq"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0) as f32;
        Ok(Self::gemma3(SlidingWindow { size: size as usize, global_every, local_rope_theta: local }, 1.0))
    }

    /// The window of `layer`'s attention, `None` for a global layer.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|w| !(layer + 1).is_multiple_of(w.global_every)).map(|w| w.size)
    }
}

/// `k` when the layers are `k - 1` sliding ones then one full one, repeated (the last period may
/// be cut short), as in every Gemma 3 size; `pattern` when no layer is full and it says so.
fn periodic_global_layer(types: &[serde_json::Value], pattern: usize) -> Option<usize> {
    let kind = |v: &serde_json::Value| match v.as_str() {
        Some("full_attention") => Some(true),
        Some("sliding_attention") => Some(false),
        _ => None,
    };
    let every = types.iter().position(|v| kind(v) == Some(true)).map_or(pattern, |p| p + 1);
    types
        .iter()
        .enumerate()
        .all(|(layer, v)| kind(v) == Some((layer + 1).is_multiple_of(every)))
        .then_some(every)
}
