//! DePT (Shi & Lipani 2024): a shorter soft prompt plus a low-rank, position-indexed update of
//! the input token embeddings, `E[i] += γ·(A B)[i]` for input positions `i < max_len`, with
//! `A: [max_len, r]` Kaiming-uniform, `B: [r, d_model]` zero and `γ = α/√r`. The prompt and the
//! low-rank pair train at their own learning rates. The update is per position, so it does not
//! merge into the vocabulary's embeddings. PEFT has no DePT: it is stored in PEFT's layout
//! with `peft_type: "DEPT"` (`prompt_embeddings`, `lora_embedding_A`, `lora_embedding_B`).

use burn::tensor::Tensor;
use serde_json::Value;

use super::fields;
use super::prompt::{self, read_prompt, PromptAdapter, PromptInit};
use super::registry::{
    peft_type, Coding, Combine, MethodKind, MethodOption, MethodSpec, OptionDefault, OptionSpec,
};
use super::tensors::{self, read, saved, tensor2, values, Rng, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::{Adapters, Decoder, DecoderConfig};

pub static SPEC: MethodSpec = MethodSpec {
    name: "dept",
    peft_type: "DEPT",
    summary: "a shorter soft prompt plus a low-rank update of the input embeddings by position",
    options: &[
        OptionSpec { option: MethodOption::VirtualTokens, default: OptionDefault::Count(10) },
        prompt::PROMPT_INIT,
        OptionSpec { option: MethodOption::Rank, default: OptionDefault::Count(8) },
        OptionSpec { option: MethodOption::Alpha, default: OptionDefault::Number(8.0) },
        OptionSpec {
            option: MethodOption::MaxLen,
            default: OptionDefault::Described("the sequence length (seq)"),
        },
        OptionSpec { option: MethodOption::EmbeddingLr, default: OptionDefault::Described("lr / 30") },
    ],
    default_lr: 3e-2,
    mergeable: false,
    scalable: false,
    coding: Coding::Dense,
    combine: Combine::Not,
    stage: None,
    recognizes: |config| peft_type(config) == "DEPT",
    build: |ctx| {
        let o = ctx.options;
        let embedding_lr = o.embedding_lr.unwrap_or(ctx.lr / 30.0);
        let config = DeptConfig {
            tokens: ctx.count(MethodOption::VirtualTokens, o.virtual_tokens)?,
            rank: ctx.count(MethodOption::Rank, o.rank)?,
            alpha: ctx.number(MethodOption::Alpha, o.alpha)?,
            max_len: o.max_len.unwrap_or(ctx.seq),
            embedding_lr_ratio: embedding_lr / ctx.lr,
        };
        Ok(Box::new(DeptAdapter::new(config, prompt::init_of(ctx)?, ctx.model, ctx.seed)?))
    },
    load: |peft, model| Ok(Box::new(DeptAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

#[derive(Clone, Debug, PartialEq)]
pub struct DeptConfig {
    /// Virtual tokens of the soft prompt.
    pub tokens: usize,
    pub rank: usize,
    pub alpha: f32,
    /// Input positions the embedding update covers.
    pub max_len: usize,
    /// The low-rank pair's learning rate over the prompt's.
    pub embedding_lr_ratio: f32,
}

impl DeptConfig {
    fn scale(&self) -> f32 {
        self.alpha / (self.rank as f32).sqrt()
    }

    fn check(&self, context: usize) -> Result<(), String> {
        if self.rank == 0 || self.max_len == 0 || self.max_len > context {
            return Err(format!(
                "DePT needs a rank >= 1 and a max length in 1..={context}, not rank {} and length {}",
                self.rank, self.max_len
            ));
        }
        if !(self.alpha.is_finite() && self.embedding_lr_ratio > 0.0 && self.embedding_lr_ratio.is_finite()) {
            return Err("DePT's alpha must be finite and its learning-rate ratio positive".into());
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct DeptAdapter {
    config: DeptConfig,
    prompt: PromptAdapter,
    a: Tensor<2>,
    b: Tensor<2>,
}

const KEY_A: &str = "lora_embedding_A";
const KEY_B: &str = "lora_embedding_B";

impl DeptAdapter {
    pub fn new(config: DeptConfig, init: PromptInit, model: &Decoder, seed: u64) -> Result<Self, Error> {
        let c = model.config();
        config.check(c.context_len).map_err(Error::InvalidArgument)?;
        let prompt = PromptAdapter::new(config.tokens, init, model, seed)?;
        // PEFT's LoRA-embedding initialisation: Kaiming-uniform rows of A (bound 1/√r), B zero.
        let mut rng = Rng::new(seed ^ 0xD3E7);
        let bound = 1.0 / (config.rank as f32).sqrt();
        let a = (0..config.max_len * config.rank).map(|_| rng.uniform() * bound).collect();
        let a = tensor2(a, [config.max_len, config.rank], model.device());
        let b = tensor2(vec![0.0; config.rank * c.d_model], [config.rank, c.d_model], model.device());
        Ok(Self { config, prompt, a, b })
    }

    pub fn config(&self) -> &DeptConfig {
        &self.config
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        let c = model.config();
        let json = &peft.config;
        let count = |key: &str| fields::count(json, key).map_err(|m| tensors::bad(peft, m));
        let number = |key: &str| fields::number(json, key).map_err(|m| tensors::bad(peft, m));
        let config = DeptConfig {
            tokens: count("num_virtual_tokens")?.unwrap_or(0),
            rank: count("r")?.unwrap_or(0),
            alpha: number("lora_alpha")?.unwrap_or(f64::NAN) as f32,
            max_len: count("max_length")?.unwrap_or(0),
            embedding_lr_ratio: number("embedding_lr_ratio")?.unwrap_or(1.0) as f32,
        };
        config.check(c.context_len).map_err(|m| tensors::bad(peft, m))?;
        let embeddings = read_prompt(peft, model)?;
        let prompt = PromptAdapter::from_embeddings(embeddings);
        let a = read(peft, KEY_A, &[config.max_len, config.rank])?;
        let b = read(peft, KEY_B, &[config.rank, c.d_model])?;
        Ok(Self {
            a: tensor2(a, [config.max_len, config.rank], model.device()),
            b: tensor2(b, [config.rank, c.d_model], model.device()),
            config,
            prompt,
        })
    }
}

impl Adapters for DeptAdapter {
    fn virtual_tokens(&self) -> Option<Tensor<2>> {
        self.prompt.virtual_tokens()
    }

    fn token_embeddings(&self, start: usize, x: Tensor<3>) -> Tensor<3> {
        let [_, len, d] = x.dims();
        let end = (start + len).min(self.config.max_len);
        if start >= end {
            return x;
        }
        let r = self.config.rank;
        let update =
            self.a.clone().slice([start..end, 0..r]).matmul(self.b.clone()).mul_scalar(self.config.scale());
        let update = if end - start < len {
            Tensor::cat(vec![update, Tensor::zeros([len - (end - start), d], &x.device())], 0)
        } else {
            update
        };
        x + update.unsqueeze_dim(0)
    }
}

impl Method for DeptAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        let mut params = self.prompt.parameters();
        params.extend([(KEY_A.to_string(), &self.a), (KEY_B.to_string(), &self.b)]);
        params
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        let mut params = self.prompt.parameters_mut();
        params.extend([(KEY_A.to_string(), &mut self.a), (KEY_B.to_string(), &mut self.b)]);
        params
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, model: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        let (mut config, mut tensors) = self.prompt.prompt_peft(model, SPEC.peft_type)?;
        let c = &self.config;
        for (key, value) in [
            ("r", Value::from(c.rank)),
            ("lora_alpha", Value::from(c.alpha)),
            ("max_length", Value::from(c.max_len)),
            ("embedding_lr_ratio", Value::from(c.embedding_lr_ratio)),
        ] {
            config[key] = value;
        }
        tensors.push(saved(KEY_A.into(), vec![c.max_len, c.rank], &values(&self.a)?));
        tensors.push(saved(KEY_B.into(), vec![c.rank, model.d_model], &values(&self.b)?));
        Ok((config, tensors))
    }

    fn learning_rate_scale(&self, name: &str) -> f32 {
        if name == KEY_A || name == KEY_B {
            self.config.embedding_lr_ratio
        } else {
            1.0
        }
    }
}
