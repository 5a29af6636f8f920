//! Prefix tuning (Li & Liang 2021): trainable keys and values, `m` positions per layer, that
//! every sequence attends to before its first token. The model writes them into an empty KV
//! cache, so inference costs `m` cached positions and no extra compute. Not mergeable. Keys are
//! stored after RoPE, as a cache holds them; real tokens then start at position `m`, as in
//! transformers with PEFT's `past_key_values`. PEFT's MLP reparametrisation
//! (`prefix_projection`) is not used: the prefixes train directly, which is PEFT's default.
//!
//! Stored as PEFT `PREFIX_TUNING`: `prompt_embeddings: [m, layers·2·kv_heads·head_dim]`, each
//! row layer by layer, key then value, head by head (keys' head dimensions in HF's rotate-half
//! order).

use burn::tensor::Tensor;
use serde_json::{json, Value};

use super::fields;
use super::registry::{
    peft_type, Coding, Combine, MethodKind, MethodOption, MethodSpec, OptionDefault, OptionSpec,
};
use super::tensors::{self, read, saved, tensor2, untracked, values, Rng, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::rope::{permute_rotary_values, RowOrder};
use crate::model::{Adapters, Decoder, DecoderConfig, LowRankOutput, NoAdapters};

pub static SPEC: MethodSpec = MethodSpec {
    name: "prefix",
    peft_type: "PREFIX_TUNING",
    summary: "keys and values of every layer that every sequence attends to first",
    options: &[OptionSpec { option: MethodOption::VirtualTokens, default: OptionDefault::Count(10) }],
    default_lr: 1e-2,
    mergeable: false,
    scalable: false,
    coding: Coding::Dense,
    combine: Combine::Not,
    stage: None,
    recognizes: |config| peft_type(config) == "PREFIX_TUNING",
    build: |ctx| {
        let tokens = ctx.count(MethodOption::VirtualTokens, ctx.options.virtual_tokens)?;
        Ok(Box::new(PrefixAdapter::new(tokens, ctx.model, ctx.seed)?))
    },
    load: |peft, model| Ok(Box::new(PrefixAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

#[derive(Clone)]
pub struct PrefixAdapter {
    /// Per layer, keys and values `[m, kv_heads·head_dim]`.
    layers: Vec<(Tensor<2>, Tensor<2>)>,
    kv_heads: usize,
    head_dim: usize,
}

const KEY: &str = "prompt_embeddings";

impl PrefixAdapter {
    /// Prefixes of `tokens` positions, starting as the keys and values of that many vocabulary
    /// tokens drawn at random (real activations train better than PEFT's `N(0, 1)`).
    pub fn new(tokens: usize, model: &Decoder, seed: u64) -> Result<Self, Error> {
        let c = model.config();
        if tokens == 0 || tokens > c.context_len {
            return Err(Error::InvalidArgument(format!(
                "a prefix of {tokens} positions: it must be in 1..={} (the model's context)",
                c.context_len
            )));
        }
        let mut rng = Rng::new(seed);
        let ids: Vec<u32> = (0..tokens)
            .map(|_| ((rng.uniform() * 0.5 + 0.5) * c.vocab_size as f32) as u32 % c.vocab_size as u32)
            .collect();
        Self::from_tokens(&ids, model)
    }

    /// The keys and values of `ids` run through the base model: attending to this prefix is
    /// attending to those tokens.
    pub fn from_tokens(ids: &[u32], model: &Decoder) -> Result<Self, Error> {
        let c = model.config();
        let mut cache = model.new_cache(1);
        model.forward_adapted(ids, 1, &mut cache, &NoAdapters)?;
        let width = c.n_kv_heads * c.head_dim;
        let rows =
            |t: Tensor<4>| untracked(&t.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([ids.len(), width]));
        let layers = (0..c.n_layers)
            .map(|layer| {
                let (k, v) = cache.layer(layer).expect("every layer ran");
                (rows(k), rows(v))
            })
            .collect();
        Ok(Self { layers, kv_heads: c.n_kv_heads, head_dim: c.head_dim })
    }

    /// Positions of the prefix.
    pub fn len(&self) -> usize {
        self.layers[0].0.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        let c = model.config();
        let m = fields::count(&peft.config, "num_virtual_tokens")
            .map_err(|m| tensors::bad(peft, m))?
            .unwrap_or(0);
        if m == 0 || m > c.context_len {
            return Err(tensors::bad(
                peft,
                format!("num_virtual_tokens {m} must be in 1..={}", c.context_len),
            ));
        }
        if fields::flag(&peft.config, "prefix_projection").map_err(|m| tensors::bad(peft, m))? == Some(true) {
            return Err(tensors::bad(
                peft,
                "prefix_projection = true is not supported (save the adapter without it)",
            ));
        }
        let width = c.n_kv_heads * c.head_dim;
        let row = c.n_layers * 2 * width;
        let all = read(peft, KEY, &[m, row])?;
        let column = |layer: usize, part: usize| -> Vec<f32> {
            all.chunks_exact(row).flat_map(|r| &r[(2 * layer + part) * width..][..width]).copied().collect()
        };
        let layers = (0..c.n_layers)
            .map(|layer| {
                let keys = permute_rotary_values(
                    &column(layer, 0),
                    m * c.n_kv_heads,
                    c.head_dim,
                    1,
                    RowOrder::ToPairs,
                );
                (
                    tensor2(keys, [m, width], model.device()),
                    tensor2(column(layer, 1), [m, width], model.device()),
                )
            })
            .collect();
        Ok(Self { layers, kv_heads: c.n_kv_heads, head_dim: c.head_dim })
    }
}

impl Adapters for PrefixAdapter {
    fn prefix_kv(&self, layer: usize) -> Option<(Tensor<3>, Tensor<3>)> {
        let (k, v) = self.layers.get(layer)?;
        let shape = [self.len(), self.kv_heads, self.head_dim];
        Some((k.clone().reshape(shape), v.clone().reshape(shape)))
    }

    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        Ok(Some(Vec::new()))
    }
}

impl Method for PrefixAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        (self.layers.iter().enumerate())
            .flat_map(|(l, (k, v))| [(format!("prefix.{l}.key"), k), (format!("prefix.{l}.value"), v)])
            .collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        (self.layers.iter_mut().enumerate())
            .flat_map(|(l, (k, v))| [(format!("prefix.{l}.key"), k), (format!("prefix.{l}.value"), v)])
            .collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, c: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let (m, width) = (self.len(), self.kv_heads * self.head_dim);
        let mut rows = vec![Vec::with_capacity(self.layers.len() * 2 * width); m];
        for (k, v) in &self.layers {
            let keys = permute_rotary_values(
                &values(k)?,
                m * self.kv_heads,
                self.head_dim,
                1,
                RowOrder::ToRotateHalf,
            );
            let vals = values(v)?;
            for (i, row) in rows.iter_mut().enumerate() {
                row.extend(&keys[i * width..][..width]);
                row.extend(&vals[i * width..][..width]);
            }
        }
        let all: Vec<f32> = rows.concat();
        let tensors = vec![saved(KEY.into(), vec![m, all.len() / m], &all)];
        let config = json!({
            "peft_type": "PREFIX_TUNING",
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": m,
            "token_dim": width,
            "num_transformer_submodules": 1,
            "num_attention_heads": c.n_kv_heads,
            "num_layers": c.n_layers,
            "encoder_hidden_size": c.d_model,
            "prefix_projection": false,
            "inference_mode": true,
        });
        Ok((config, tensors))
    }
}
