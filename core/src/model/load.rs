//! Builds a [`Decoder`] from a GGUF file (weights stay in their blocks, borrowed from the mapped
//! file) or from a Hugging Face safetensors checkpoint (F32/F16/BF16 matrices kept in their
//! dtype). One builder; each format only says where a tensor is and how to read it.

use burn::tensor::{Device, Tensor, TensorData};

use super::architecture::RotaryRows;
use super::config::DecoderConfig;
use super::decoder::{Block, Decoder};
use super::linear::QuantLinear;
use super::rope::{permute_rotary_rows, permute_rotary_values, Rope, RowOrder};
use super::sites::Projection;
use crate::bytes::SharedBytes;
use crate::error::Error;
use crate::format::gguf::GgufFile;
use crate::format::safetensors::{Dtype, SafetensorsFile};
use crate::quant::{self, GgmlType, QuantMatrix};

/// A tensor of the decoder, whatever the file calls it.
#[derive(Clone, Copy)]
enum Part {
    TokenEmbedding,
    Output,
    OutputNorm,
    AttnNorm(usize),
    FfnNorm(usize),
    PostAttnNorm(usize),
    PostFfnNorm(usize),
    QNorm(usize),
    KNorm(usize),
    Linear(usize, Projection),
    /// The optional output bias of a projection (e.g. LoFiT's merged head offsets).
    Bias(usize, Projection),
}

impl Part {
    fn is_norm(self) -> bool {
        !matches!(self, Part::TokenEmbedding | Part::Output | Part::Linear(..) | Part::Bias(..))
    }
}

/// Where a format keeps each part, and how to read it, in the file's own row order (the builder
/// permutes q/k rows of rotate-half files into pairs).
trait WeightSource {
    /// A `[rows, cols]` matrix.
    fn matrix(&self, part: Part, rows: usize, cols: usize) -> Result<QuantMatrix, Error>;
    fn vector(&self, part: Part, len: usize) -> Result<Vec<f32>, Error>;
    /// Whether the file has this part (for optional ones).
    fn has(&self, part: Part) -> bool;
}

impl Decoder {
    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<Self, Error> {
        build(DecoderConfig::from_gguf(gguf)?, &Gguf(gguf), device)
    }

    /// Loads a HF checkpoint: `config` from its `config.json`, tensors by HF names from the
    /// mapped shards.
    pub fn from_safetensors(
        config: DecoderConfig,
        files: &[SafetensorsFile],
        device: &Device,
    ) -> Result<Self, Error> {
        let sandwich_norms = config.parts.sandwich_norms;
        build(config, &HuggingFace { files, sandwich_norms }, device)
    }
}

fn build(config: DecoderConfig, source: &dyn WeightSource, device: &Device) -> Result<Decoder, Error> {
    let c = &config;
    // The heads whose rows a rotate-half file stores in the other order (q/k weights, their
    // biases and their head norms).
    let rotated_heads = |part: Part| match (c.parts.rotary_rows, part) {
        (RotaryRows::Pairs, _) => None,
        (_, Part::Linear(_, Projection::Q) | Part::Bias(_, Projection::Q)) => Some(c.n_heads),
        (_, Part::Linear(_, Projection::K) | Part::Bias(_, Projection::K)) => Some(c.n_kv_heads),
        (_, Part::QNorm(_) | Part::KNorm(_)) => Some(1),
        _ => None,
    };
    let vector_of = |part, len| -> Result<Tensor<1>, Error> {
        let mut values = source.vector(part, len)?;
        if let Some(heads) = rotated_heads(part) {
            values = permute_rotary_values(&values, heads, c.head_dim, 1, RowOrder::ToPairs);
        }
        if part.is_norm() && c.parts.norm_offset != 0.0 {
            values.iter_mut().for_each(|w| *w += c.parts.norm_offset);
        }
        Ok(Tensor::from_data(TensorData::new(values, [len]), device))
    };
    let vector = |part| vector_of(part, c.d_model);
    let optional = |present: bool, part, len| present.then(|| vector_of(part, len)).transpose();
    let linear = |layer, projection| -> Result<QuantLinear, Error> {
        let (rows, cols) = c.projection_shape(projection);
        let part = Part::Linear(layer, projection);
        let mut matrix = source.matrix(part, rows, cols)?;
        if let Some(heads) = rotated_heads(part) {
            let bytes: &[u8] = matrix.data();
            let permuted =
                permute_rotary_rows(bytes, heads, c.head_dim, bytes.len() / rows, RowOrder::ToPairs);
            matrix = QuantMatrix::new(matrix.ty(), rows, cols, SharedBytes::from_vec(permuted))?;
        }
        let linear = QuantLinear::new(matrix);
        let bias = Part::Bias(layer, projection);
        Ok(if source.has(bias) { linear.with_bias(vector_of(bias, rows)?) } else { linear })
    };
    let token_embedding = source.matrix(Part::TokenEmbedding, c.vocab_size, c.d_model)?;
    let output = QuantLinear::new(if c.tied_embeddings {
        token_embedding.clone()
    } else {
        source.matrix(Part::Output, c.vocab_size, c.d_model)?
    });
    // Grown one block at a time: a hostile layer count fails at the first missing tensor.
    let mut blocks = Vec::new();
    for i in 0..c.n_layers {
        blocks.push(Block {
            attn_norm: vector(Part::AttnNorm(i))?,
            attn_q: linear(i, Projection::Q)?,
            attn_k: linear(i, Projection::K)?,
            attn_v: linear(i, Projection::V)?,
            attn_output: linear(i, Projection::O)?,
            ffn_norm: vector(Part::FfnNorm(i))?,
            ffn_gate: linear(i, Projection::Gate)?,
            ffn_up: linear(i, Projection::Up)?,
            ffn_down: linear(i, Projection::Down)?,
            post_attn_norm: optional(c.parts.sandwich_norms, Part::PostAttnNorm(i), c.d_model)?,
            post_ffn_norm: optional(c.parts.sandwich_norms, Part::PostFfnNorm(i), c.d_model)?,
            q_norm: optional(c.parts.qk_norms, Part::QNorm(i), c.head_dim)?,
            k_norm: optional(c.parts.qk_norms, Part::KNorm(i), c.head_dim)?,
        });
    }
    let (rope, local_rope) = Rope::for_layers(c);
    Ok(Decoder {
        output_norm: vector(Part::OutputNorm)?,
        token_embedding,
        output,
        blocks,
        rope,
        local_rope,
        device: device.clone(),
        config,
    })
}

struct Gguf<'a>(&'a GgufFile);

impl Gguf<'_> {
    fn name(part: Part) -> String {
        match part {
            Part::TokenEmbedding => "token_embd.weight".into(),
            Part::Output => "output.weight".into(),
            Part::OutputNorm => "output_norm.weight".into(),
            Part::AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
            Part::FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
            Part::PostAttnNorm(i) => format!("blk.{i}.post_attention_norm.weight"),
            Part::PostFfnNorm(i) => format!("blk.{i}.post_ffw_norm.weight"),
            Part::QNorm(i) => format!("blk.{i}.attn_q_norm.weight"),
            Part::KNorm(i) => format!("blk.{i}.attn_k_norm.weight"),
            Part::Linear(i, projection) => projection.gguf_tensor(i),
            Part::Bias(i, projection) => projection.gguf_bias(i),
        }
    }
}

impl WeightSource for Gguf<'_> {
    /// GGUF dims are `[cols, rows]`.
    fn matrix(&self, part: Part, rows: usize, cols: usize) -> Result<QuantMatrix, Error> {
        let name = Self::name(part);
        let info = self.0.tensor(&name).ok_or_else(|| Error::MissingTensor(name.clone()))?;
        if info.dims != [cols as u64, rows as u64] {
            return Err(Error::TensorShape {
                name,
                expected: vec![cols, rows],
                found: info.dims.iter().map(|&d| d as usize).collect(),
            });
        }
        Ok(QuantMatrix::new(info.ty, rows, cols, self.0.tensor_data(info))?)
    }

    fn vector(&self, part: Part, len: usize) -> Result<Vec<f32>, Error> {
        let name = Self::name(part);
        let info = self.0.tensor(&name).ok_or_else(|| Error::MissingTensor(name.clone()))?;
        if info.dims != [len as u64] {
            return Err(Error::TensorShape {
                name,
                expected: vec![len],
                found: info.dims.iter().map(|&d| d as usize).collect(),
            });
        }
        let mut out = vec![0.0; len];
        quant::dequantize(info.ty, &self.0.tensor_data(info), &mut out)?;
        Ok(out)
    }

    fn has(&self, part: Part) -> bool {
        self.0.tensor(&Self::name(part)).is_some()
    }
}

struct HuggingFace<'a> {
    files: &'a [SafetensorsFile],
    /// Gemma's names: its `post_attention_layernorm` is the sandwich norm after attention, and
    /// the norm before the MLP is `pre_feedforward_layernorm`.
    sandwich_norms: bool,
}

impl HuggingFace<'_> {
    fn name(&self, part: Part) -> String {
        match part {
            Part::FfnNorm(i) if self.sandwich_norms => {
                format!("model.layers.{i}.pre_feedforward_layernorm.weight")
            }
            Part::TokenEmbedding => "model.embed_tokens.weight".into(),
            Part::Output => "lm_head.weight".into(),
            Part::OutputNorm => "model.norm.weight".into(),
            Part::AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
            Part::FfnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
            Part::PostAttnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
            Part::PostFfnNorm(i) => format!("model.layers.{i}.post_feedforward_layernorm.weight"),
            Part::QNorm(i) => format!("model.layers.{i}.self_attn.q_norm.weight"),
            Part::KNorm(i) => format!("model.layers.{i}.self_attn.k_norm.weight"),
            Part::Linear(i, projection) => format!("model.layers.{i}.{}.weight", projection.hf_path()),
            Part::Bias(i, projection) => format!("model.layers.{i}.{}.bias", projection.hf_path()),
        }
    }

    /// The shard holding `name`, checked against `shape`, and its block type.
    fn find(&self, name: &str, shape: &[usize]) -> Result<(&SafetensorsFile, GgmlType), Error> {
        let (file, info) = self
            .files
            .iter()
            .find_map(|f| f.tensor(name).map(|t| (f, t)))
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if info.shape != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let ty = match info.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => {
                return Err(Error::Config(format!(
                    "tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16"
                )))
            }
        };
        Ok((file, ty))
    }
}

impl WeightSource for HuggingFace<'_> {
    fn matrix(&self, part: Part, rows: usize, cols: usize) -> Result<QuantMatrix, Error> {
        let name = self.name(part);
        let (file, ty) = self.find(&name, &[rows, cols])?;
        Ok(QuantMatrix::new(ty, rows, cols, file.tensor_data(&name)?)?)
    }

    fn vector(&self, part: Part, len: usize) -> Result<Vec<f32>, Error> {
        let name = self.name(part);
        let (file, _) = self.find(&name, &[len])?;
        Ok(file.tensor_f32(&name)?)
    }

    fn has(&self, part: Part) -> bool {
        self.files.iter().any(|f| f.tensor(&self.name(part)).is_some())
    }
}
