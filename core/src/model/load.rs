//! Builds a [`Llama`] from a GGUF file (weights stay in their blocks, borrowed from the mapped
//! file) or from a Hugging Face safetensors checkpoint (F32/F16/BF16, kept as f32).

use burn::tensor::{Device, Tensor, TensorData};

use super::config::LlamaConfig;
use super::linear::QuantLinear;
use super::llama::{Block, Llama};
use super::rope::Rope;
use crate::error::Error;
use crate::format::gguf::GgufFile;
use crate::format::safetensors::SafetensorsFile;
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
        let mut blocks = Vec::with_capacity(c.n_layers);
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
        let mut rope = Rope::new(c);
        if gguf.tensor("rope_freqs.weight").is_some() {
            rope = rope.with_frequency_factors(&gguf_vector(gguf, "rope_freqs.weight", c.head_dim / 2)?);
        }
        Ok(Self {
            output_norm: vector("output_norm.weight", c.d_model)?,
            token_embedding,
            output,
            blocks,
            rope,
            device: device.clone(),
            config,
        })
    }

    /// Loads a HF checkpoint: `config` from its `config.json`, tensors by HF names. Q/K rows are
    /// permuted from HF's rotate-half layout into the adjacent-pair layout GGUF uses.
    pub fn from_safetensors(
        config: LlamaConfig,
        files: &[SafetensorsFile],
        device: &Device,
    ) -> Result<Self, Error> {
        let c = &config;
        let find = |name: &str| files.iter().find(|f| f.tensor(name).is_some());
        let load = |name: &str, rows: usize, cols: usize| -> Result<Vec<f32>, Error> {
            let file = find(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
            let values = file.tensor_f32(name)?;
            if values.len() != rows * cols {
                return Err(Error::TensorShape {
                    name: name.to_string(),
                    expected: vec![rows, cols],
                    found: file.tensor(name).map(|t| t.shape.clone()).unwrap_or_default(),
                });
            }
            Ok(values)
        };
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QuantMatrix, Error> {
            f32_matrix(load(name, rows, cols)?, rows, cols)
        };
        let rotary = |name: &str, heads: usize| -> Result<QuantLinear, Error> {
            let rows = heads * c.head_dim;
            let values = load(name, rows, c.d_model)?;
            let permuted = rotate_half_to_pairs(&values, heads, c.head_dim, c.d_model);
            Ok(QuantLinear::new(f32_matrix(permuted, rows, c.d_model)?))
        };
        let vector = |name: &str| -> Result<Tensor<1>, Error> {
            Ok(Tensor::from_data(TensorData::new(load(name, 1, c.d_model)?, [c.d_model]), device))
        };
        let linear = |name: String, rows, cols| matrix(&name, rows, cols).map(QuantLinear::new);

        let token_embedding = matrix("model.embed_tokens.weight", c.vocab_size, c.d_model)?;
        let output = match find("lm_head.weight") {
            Some(_) if !c.tied_embeddings => matrix("lm_head.weight", c.vocab_size, c.d_model)?,
            _ => token_embedding.clone(),
        };
        let mut blocks = Vec::with_capacity(c.n_layers);
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

fn f32_matrix(values: Vec<f32>, rows: usize, cols: usize) -> Result<QuantMatrix, Error> {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(QuantMatrix::new(GgmlType::F32, rows, cols, crate::bytes::SharedBytes::from_vec(bytes))?)
}

/// HF stores each head's rows as [first halves; second halves]; GGUF interleaves them so that
/// row 2i+p of a head is HF row p*head_dim/2 + i.
fn rotate_half_to_pairs(values: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let dst = (h * head_dim + 2 * i + p) * cols;
                let src = (h * head_dim + p * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}
