//! The named places where adapters act on the model, and the one trait through which they do.
//! The model owns this interface and never imports `adapt`; each adaptation method implements
//! [`Adapters`] (see `docs/architecture.md`, "Adding a method").

use burn::tensor::Tensor;

use crate::error::Error;

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

    /// The GGUF name of this projection's optional output bias in block `layer`.
    pub fn gguf_bias(self, layer: usize) -> String {
        self.gguf_tensor(layer).replace(".weight", ".bias")
    }

    /// The short name (`q`, …, `gate`, `up`, `down`) the CLI and the runtime API use.
    pub fn short_name(self) -> &'static str {
        self.hf_name().trim_end_matches("_proj")
    }

    /// The short names (`q,k,v,o,gate,up,down`) and PEFT's names both parse.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.hf_name() == name || p.short_name() == name)
    }

    /// `q,v,down`: the short names, comma-separated.
    pub fn list(projections: &[Projection]) -> String {
        projections.iter().map(|p| p.short_name()).collect::<Vec<_>>().join(",")
    }

    /// Whether the rows of this projection's output are in RoPE-pair order in our layout (GGUF)
    /// and in rotate-half order in Hugging Face checkpoints and adapters.
    pub fn is_rotary(self) -> bool {
        matches!(self, Self::Q | Self::K)
    }
}

impl serde::Serialize for Projection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.short_name())
    }
}

impl core::str::FromStr for Projection {
    type Err = crate::error::Error;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name).ok_or_else(|| {
            crate::error::Error::InvalidArgument(format!(
                "unknown projection '{name}' (one of: {})",
                Self::list(&Self::ALL)
            ))
        })
    }
}

impl<'de> serde::Deserialize<'de> for Projection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Adapters acting on a forward pass. Every site has a neutral default, so a method implements
/// only the sites it uses. Sites, in the order a pass meets them:
/// - the soft prompt: key/value prefixes written into an empty cache ([`prefix_kv`]) and
///   virtual tokens run through the model before the input ([`virtual_tokens`]), once per cache;
/// - the token embeddings of the input ([`token_embeddings`]);
/// - each projection's input ([`linear_input`]) and output ([`linear_output`]).
///
/// [`prefix_kv`]: Adapters::prefix_kv
/// [`virtual_tokens`]: Adapters::virtual_tokens
/// [`token_embeddings`]: Adapters::token_embeddings
/// [`linear_input`]: Adapters::linear_input
/// [`linear_output`]: Adapters::linear_output
pub trait Adapters: Send + Sync {
    /// The input of projection `projection` of block `layer` (`[batch, len, in]`), changed.
    fn linear_input(&self, layer: usize, projection: Projection, x: Tensor<3>) -> Tensor<3> {
        let _ = (layer, projection);
        x
    }

    /// The output `y` (`[batch, len, out]`) of projection `projection` of block `layer`,
    /// changed; `x` is the input it was computed from.
    fn linear_output(&self, layer: usize, projection: Projection, x: &Tensor<3>, y: Tensor<3>) -> Tensor<3> {
        let _ = (layer, projection, x);
        y
    }

    /// The token embeddings `x: [batch, len, d_model]` of input positions `start..start + len`
    /// (counted from the first real token: virtual tokens are not counted), changed.
    fn token_embeddings(&self, start: usize, x: Tensor<3>) -> Tensor<3> {
        let _ = start;
        x
    }

    /// Keys and values (`[len, kv_heads, head_dim]` each, keys after RoPE, in our RoPE-pair
    /// layout) that every sequence of block `layer` attends to before its first token.
    fn prefix_kv(&self, layer: usize) -> Option<(Tensor<3>, Tensor<3>)> {
        let _ = layer;
        None
    }

    /// Input embeddings `[len, d_model]` run through the model before the first real token.
    fn virtual_tokens(&self) -> Option<Tensor<2>> {
        None
    }

    /// Everything the adapters do to a token, when that is low-rank changes of projection
    /// outputs and nothing else: `Some` list of them (empty for adapters that act through the
    /// soft prompt alone), which the host decoder ([`HostDecoder`]) runs without burn. `None`,
    /// the default and always correct, says the adapters act on tokens otherwise, or may;
    /// decode then stays on the burn graph.
    ///
    /// [`HostDecoder`]: super::HostDecoder
    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        Ok(None)
    }
}

/// `scale · B·(A·x)` added to the output of projection `projection` of block `layer` for its
/// input `x`: `A` is `[rank, in]` and `B` `[out, rank]`, row-major host copies.
#[derive(Clone, Debug)]
pub struct LowRankOutput {
    pub layer: usize,
    pub projection: Projection,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub scale: f32,
}

/// Positions the adapters' soft prompt takes in the cache (key/value prefix and virtual tokens).
pub fn soft_prompt_len(adapters: &dyn Adapters) -> usize {
    adapters.prefix_kv(0).map_or(0, |(k, _)| k.dims()[0])
        + adapters.virtual_tokens().map_or(0, |t| t.dims()[0])
}

/// The plain model.
pub struct NoAdapters;

impl Adapters for NoAdapters {
    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        Ok(Some(Vec::new()))
    }
}
