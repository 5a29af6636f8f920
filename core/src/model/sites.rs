//! The named places where adapters act on the model, and the one trait through which they do.
//! The model owns this interface and never imports `adapt`; each adaptation method implements
//! [`Adapters`] (see `shared/design.md`, "How each method plugs in").

use burn::tensor::Tensor;

/// A linear projection of a decoder block, by its PEFT target-module name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    /// The Hugging Face module name (`q_proj`, …) that PEFT's `target_modules` uses.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The HF module path inside a decoder layer (`self_attn.q_proj`, `mlp.up_proj`).
    pub fn hf_path(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// The GGUF tensor name inside block `layer` (`blk.{layer}.attn_q.weight`, …).
    pub fn gguf_tensor(self, layer: usize) -> String {
        let part = match self {
            Self::Q => "attn_q",
            Self::K => "attn_k",
            Self::V => "attn_v",
            Self::O => "attn_output",
            Self::Gate => "ffn_gate",
            Self::Up => "ffn_up",
            Self::Down => "ffn_down",
        };
        format!("blk.{layer}.{part}.weight")
    }

    /// The short names the CLI takes (`q,k,v,o,gate,up,down`) and PEFT's names both parse.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.hf_name() == name || p.hf_name().trim_end_matches("_proj") == name)
    }

    /// Whether the rows of this projection's output are in RoPE-pair order in our layout (GGUF)
    /// and in rotate-half order in Hugging Face checkpoints and adapters.
    pub fn is_rotary(self) -> bool {
        matches!(self, Self::Q | Self::K)
    }
}

/// Adapters acting on a forward pass. Every method has a neutral default, so a method
/// implements only the sites it uses.
pub trait Adapters: Send + Sync {
    /// What to add to the output of projection `projection` of block `layer`, given its input
    /// `x: [batch, len, in]`; `None` for nothing.
    fn linear_delta(&self, layer: usize, projection: Projection, x: &Tensor<3>) -> Option<Tensor<3>> {
        let _ = (layer, projection, x);
        None
    }
}

/// The plain model.
pub struct NoAdapters;

impl Adapters for NoAdapters {}
