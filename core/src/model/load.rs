//! Builds a [`Llama`] from a GGUF file (weights stay in their blocks, borrowed from the mapped
//! file) or from a Hugging Face safetensors checkpoint (F32/F16/BF16 matrices kept in their
//! dtype). One builder; each format only says where a tensor is and how to read it.

use burn::tensor::{Device, Tensor, TensorData};

use super::config::LlamaConfig;
use super::linear::QuantLinear;
use super::llama::{Block, Llama};
use super::rope::{permute_rotary_rows, Rope, RowOrder};
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
    Linear(usize, Projection),
    /// The optional output bias of a projection (e.g. LoFiT's merged head offsets).
    Bias(usize, Projection),
}

/// Where a format keeps each part, and how to read it.
trait WeightSource {
    /// A `[rows, cols]` matrix, its rows in our layout (q/k in RoPE-pair order).
    fn matrix(&self, part: Part, rows: usize, cols: usize) -> Result<QuantMatrix, Error>;
    fn vector(&self, part: Part, len: usize) -> Result<Vec<f32>, Error>;
    /// Whether the file has this part (for optional ones).
    fn has(&self, part: Part) -> bool;
}

impl Llama {
    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<Self, Error> {
        build(LlamaConfig::from_gguf(gguf)?, &Gguf(gguf), device)
    }

    /// Loads a HF checkpoint: `config` from its `config.json`, tensors by HF names from the
    /// mapped shards.
    pub fn from_safetensors(
        config: LlamaConfig,
        files: &[SafetensorsFile],
        device: &Device,
    ) -> Result<Self, Error> {
        let source = HuggingFace { files, config: &config };
        build(config.clone(), &source, device)
    }
}

fn build(config: LlamaConfig, source: &dyn WeightSource, device: &Device) -> Result<Llama, Error> {
    let c = &config;
    let vector_of = |part, len| -> Result<Tensor<1>, Error> {
        Ok(Tensor::from_data(TensorData::new(source.vector(part, len)?, [len]), device))
    };
    let vector = |part| vector_of(part, c.d_model);
    let linear = |layer, projection| -> Result<QuantLinear, Error> {
        let (rows, cols) = c.projection_shape(projection);
        let linear = QuantLinear::new(source.matrix(Part::Linear(layer, projection), rows, cols)?);
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
        });
    }
    Ok(Llama {
        output_norm: vector(Part::OutputNorm)?,
        token_embedding,
        output,
        blocks,
        rope: Rope::new(c),
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
            Part::Linear(i, projection) => projection.gguf_tensor(i),
            Part::Bias(i, projection) => projection.gguf_bias(i),
        }
    }
}

impl WeightSource for Gguf<'_> {
    /// GGUF dims are `[cols, rows]`; its q/k rows are already in pair order.
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
    config: &'a LlamaConfig,
}

impl HuggingFace<'_> {
    fn name(part: Part) -> String {
        match part {
            Part::TokenEmbedding => "model.embed_tokens.weight".into(),
            Part::Output => "lm_head.weight".into(),
            Part::OutputNorm => "model.norm.weight".into(),
            Part::AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
            Part::FfnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
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
    /// HF keeps q/k rows in rotate-half order: permuted (as bytes) into pair order.
    fn matrix(&self, part: Part, rows: usize, cols: usize) -> Result<QuantMatrix, Error> {
        let name = Self::name(part);
        let (file, ty) = self.find(&name, &[rows, cols])?;
        let bytes = file.tensor_data(&name)?;
        let heads = match part {
            Part::Linear(_, Projection::Q) => self.config.n_heads,
            Part::Linear(_, Projection::K) => self.config.n_kv_heads,
            _ => return Ok(QuantMatrix::new(ty, rows, cols, bytes)?),
        };
        let permuted =
            permute_rotary_rows(&bytes, heads, self.config.head_dim, bytes.len() / rows, RowOrder::ToPairs);
        Ok(QuantMatrix::new(ty, rows, cols, SharedBytes::from_vec(permuted))?)
    }

    /// q/k biases are permuted like the rows of their weights.
    fn vector(&self, part: Part, len: usize) -> Result<Vec<f32>, Error> {
        let name = Self::name(part);
        let (file, _) = self.find(&name, &[len])?;
        let values = file.tensor_f32(&name)?;
        let heads = match part {
            Part::Bias(_, Projection::Q) => self.config.n_heads,
            Part::Bias(_, Projection::K) => self.config.n_kv_heads,
            _ => return Ok(values),
        };
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(permute_rotary_rows(&bytes, heads, self.config.head_dim, 4, RowOrder::ToPairs)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn has(&self, part: Part) -> bool {
        self.files.iter().any(|f| f.tensor(&Self::name(part)).is_some())
    }
}
