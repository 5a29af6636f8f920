//! Builds a [`Llama`] from a GGUF file (weights stay in their blocks, borrowed from the mapped
//! file) or from a Hugging Face safetensors checkpoint (F32/F16/BF16 matrices kept in their dtype).

use burn::tensor::{Device, Tensor, TensorData};

use super::config::LlamaConfig;
use super::linear::QuantLinear;
use super::llama::{Block, Llama};
use super::rope::{permute_rotary_rows, Rope, RowOrder};
use crate::bytes::SharedBytes;
use crate::error::Error;
use crate::format::gguf::GgufFile;
use crate::format::safetensors::{Dtype, SafetensorsFile};
use crate::quant::{self, GgmlType, QuantMatrix};

impl Llama {
    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<Self, Error> {
        let config = LlamaConfig::from_gguf(gguf)?;
        let c = &config;
        let matrix = |name: &str, rows: usize, cols: usize| gguf_matrix(gguf, name, rows, cols);
        let vector = |name: &str, len: usize| -> Result<Tensor<1>, Error> {
            let values = gguf_vector(gguf, name, len)?;
            Ok(Tensor::from_data(TensorData::new(values, [len]), device))
        };
        let linear = |name: String, rows, cols| matrix(&name, rows, cols).map(QuantLinear::new);

        let token_embedding = matrix("token_embd.weight", c.vocab_size, c.d_model)?;
        let output = if c.tied_embeddings {
            token_embedding.clone()
        } else {
            matrix("output.weight", c.vocab_size, c.d_model)?
        };
        // Grown one block at a time: a hostile layer count fails at the first missing tensor.
        let mut blocks = Vec::new();
        for i in 0..c.n_layers {
            let name = |part: &str| format!("blk.{i}.{part}.weight");
            blocks.push(Block {
                attn_norm: vector(&name("attn_norm"), c.d_model)?,
                attn_q: linear(name("attn_q"), c.q_dim(), c.d_model)?,
                attn_k: linear(name("attn_k"), c.kv_dim(), c.d_model)?,
                attn_v: linear(name("attn_v"), c.kv_dim(), c.d_model)?,
                attn_output: linear(name("attn_output"), c.d_model, c.q_dim())?,
                ffn_norm: vector(&name("ffn_norm"), c.d_model)?,
                ffn_gate: linear(name("ffn_gate"), c.ffn_dim, c.d_model)?,
                ffn_up: linear(name("ffn_up"), c.ffn_dim, c.d_model)?,
                ffn_down: linear(name("ffn_down"), c.d_model, c.ffn_dim)?,
            });
        }
        Ok(Self {
            output_norm: vector("output_norm.weight", c.d_model)?,
            token_embedding,
            output,
            blocks,
            rope: Rope::new(c),
            device: device.clone(),
            config,
        })
    }

    /// Loads a HF checkpoint: `config` from its `config.json`, tensors by HF names. Matrices stay
    /// in their dtype (F32/F16/BF16), borrowed from the mapped files; q/k rows are permuted from
    /// HF's rotate-half layout into the adjacent-pair layout GGUF uses.
    pub fn from_safetensors(
        config: LlamaConfig,
        files: &[SafetensorsFile],
        device: &Device,
    ) -> Result<Self, Error> {
        let c = &config;
        let find = |name: &str, shape: &[usize]| -> Result<(&SafetensorsFile, GgmlType), Error> {
            let (file, info) = files
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
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QuantMatrix, Error> {
            let (file, ty) = find(name, &[rows, cols])?;
            Ok(QuantMatrix::new(ty, rows, cols, file.tensor_data(name)?)?)
        };
        let rotary = |name: &str, heads: usize| -> Result<QuantLinear, Error> {
            let rows = heads * c.head_dim;
            let (file, ty) = find(name, &[rows, c.d_model])?;
            let bytes = file.tensor_data(name)?;
            let permuted =
                permute_rotary_rows(&bytes, heads, c.head_dim, bytes.len() / rows, RowOrder::ToPairs);
            Ok(QuantLinear::new(QuantMatrix::new(ty, rows, c.d_model, SharedBytes::from_vec(permuted))?))
        };
        let vector = |name: &str| -> Result<Tensor<1>, Error> {
            let (file, _) = find(name, &[c.d_model])?;
            Ok(Tensor::from_data(TensorData::new(file.tensor_f32(name)?, [c.d_model]), device))
        };
        let linear = |name: String, rows, cols| matrix(&name, rows, cols).map(QuantLinear::new);

        let token_embedding = matrix("model.embed_tokens.weight", c.vocab_size, c.d_model)?;
        let output = if c.tied_embeddings {
            token_embedding.clone()
        } else {
            matrix("lm_head.weight", c.vocab_size, c.d_model)?
        };
        // Grown one block at a time: a hostile layer count fails at the first missing tensor.
        let mut blocks = Vec::new();
        for i in 0..c.n_layers {
            let name = |part: &str| format!("model.layers.{i}.{part}.weight");
            blocks.push(Block {
                attn_norm: vector(&name("input_layernorm"))?,
                attn_q: rotary(&name("self_attn.q_proj"), c.n_heads)?,
                attn_k: rotary(&name("self_attn.k_proj"), c.n_kv_heads)?,
                attn_v: linear(name("self_attn.v_proj"), c.kv_dim(), c.d_model)?,
                attn_output: linear(name("self_attn.o_proj"), c.d_model, c.q_dim())?,
                ffn_norm: vector(&name("post_attention_layernorm"))?,
                ffn_gate: linear(name("mlp.gate_proj"), c.ffn_dim, c.d_model)?,
                ffn_up: linear(name("mlp.up_proj"), c.ffn_dim, c.d_model)?,
                ffn_down: linear(name("mlp.down_proj"), c.d_model, c.ffn_dim)?,
            });
        }
        Ok(Self {
            output_norm: vector("model.norm.weight")?,
            token_embedding,
            output,
            blocks,
            rope: Rope::new(c),
            device: device.clone(),
            config,
        })
    }
}

/// A GGUF matrix tensor, checked against the shape the config implies (GGUF dims are
/// `[cols, rows]`).
fn gguf_matrix(gguf: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<QuantMatrix, Error> {
    let info = gguf.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if info.dims != [cols as u64, rows as u64] {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: vec![cols, rows],
            found: info.dims.iter().map(|&d| d as usize).collect(),
        });
    }
    Ok(QuantMatrix::new(info.ty, rows, cols, gguf.tensor_data(info))?)
}

fn gguf_vector(gguf: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, Error> {
    let info = gguf.tensor(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
    if info.dims != [len as u64] {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: vec![len],
            found: info.dims.iter().map(|&d| d as usize).collect(),
        });
    }
    let mut out = vec![0.0; len];
    quant::dequantize(info.ty, &gguf.tensor_data(info), &mut out)?;
    Ok(out)
}
