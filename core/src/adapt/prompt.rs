//! Prompt tuning (Lester et al. 2021): `m` trainable input embeddings (virtual tokens) run
//! before the input. Not mergeable; a session computes their keys and values once (the model
//! writes them into an empty KV cache) and every later token reuses them. Stored as PEFT
//! `PROMPT_TUNING` (`prompt_embeddings: [m, d_model]`).

use burn::tensor::Tensor;
use serde_json::{json, Value};

use super::fields;
use super::registry::{
    peft_type, BuildContext, Coding, Combine, MethodKind, MethodOption, MethodSpec, OptionDefault, OptionSpec,
};
use super::tensors::{self, read, saved, tensor2, values, Rng, Saved};
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::{Adapters, Decoder, DecoderConfig, LowRankOutput};

pub static SPEC: MethodSpec = MethodSpec {
    name: "prompt",
    peft_type: "PROMPT_TUNING",
    summary: "virtual tokens run before the input",
    options: &[
        OptionSpec { option: MethodOption::VirtualTokens, default: OptionDefault::Count(20) },
        PROMPT_INIT,
    ],
    default_lr: 3e-2,
    mergeable: false,
    scalable: false,
    coding: Coding::Dense,
    combine: Combine::Not,
    stage: None,
    recognizes: |config| peft_type(config) == "PROMPT_TUNING",
    build: |ctx| {
        let tokens = ctx.count(MethodOption::VirtualTokens, ctx.options.virtual_tokens)?;
        Ok(Box::new(PromptAdapter::new(tokens, init_of(ctx)?, ctx.model, ctx.seed)?))
    },
    load: |peft, model| Ok(Box::new(PromptAdapter::from_peft(peft, model)?)),
};

pub const KIND: MethodKind = MethodKind::of(&SPEC);

/// Where a soft prompt starts (prompt tuning's and DePT's option).
pub(crate) const PROMPT_INIT: OptionSpec = OptionSpec {
    option: MethodOption::PromptInit,
    default: OptionDefault::Described("embeddings of random vocabulary tokens"),
};

/// The start the options ask for: the embeddings of `prompt_init`'s tokens, or random ones.
pub(crate) fn init_of(ctx: &BuildContext) -> Result<PromptInit, Error> {
    Ok(match ctx.prompt_text()? {
        Some(ids) => PromptInit::Text(ids),
        None => PromptInit::SampledVocabulary,
    })
}

/// Where a new soft prompt starts.
#[derive(Clone, Debug, PartialEq)]
pub enum PromptInit {
    /// Embeddings of vocabulary tokens drawn at random (Lester et al.'s "sampled vocabulary",
    /// which trains better than PEFT's `N(0, 1)`).
    SampledVocabulary,
    /// Embeddings of these token ids, repeated to fill the prompt (PEFT's `TEXT` init).
    Text(Vec<u32>),
}

#[derive(Clone)]
pub struct PromptAdapter {
    /// `[m, d_model]`; `None` for a prompt of length 0 (the base model).
    embeddings: Option<Tensor<2>>,
    init: PromptInit,
}

impl PromptAdapter {
    /// A soft prompt of `tokens` virtual tokens.
    pub fn new(tokens: usize, init: PromptInit, model: &Decoder, seed: u64) -> Result<Self, Error> {
        Ok(Self { embeddings: initial_prompt(tokens, &init, model, seed)?, init })
    }

    /// Virtual tokens.
    pub fn len(&self) -> usize {
        self.embeddings.as_ref().map_or(0, |e| e.dims()[0])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn from_peft(peft: &PeftDir, model: &Decoder) -> Result<Self, Error> {
        super::expect_type(peft, KIND)?;
        Ok(Self::from_embeddings(read_prompt(peft, model)?))
    }

    /// A prompt of these trained embeddings `[m, d_model]`.
    pub(crate) fn from_embeddings(embeddings: Tensor<2>) -> Self {
        Self { embeddings: Some(embeddings), init: PromptInit::SampledVocabulary }
    }

    /// The PEFT config fields and tensor of the prompt, saved as `peft_type`.
    pub(crate) fn prompt_peft(
        &self,
        c: &DecoderConfig,
        peft_type: &str,
    ) -> Result<(Value, Vec<Saved>), Error> {
        let m = self.len();
        let mut tensors = Vec::new();
        if let Some(e) = &self.embeddings {
            tensors.push(saved(KEY.into(), vec![m, c.d_model], &values(e)?));
        }
        let init = match &self.init {
            PromptInit::SampledVocabulary => json!("sampled_vocabulary"),
            PromptInit::Text(ids) => json!({ "text_token_ids": ids }),
        };
        let config = json!({
            "peft_type": peft_type,
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": m,
            "token_dim": c.d_model,
            "num_transformer_submodules": 1,
            "num_attention_heads": c.n_heads,
            "num_layers": c.n_layers,
            // The trained values are in the weights; PEFT must not re-initialise from a tokenizer.
            "prompt_tuning_init": "RANDOM",
            "adaptkit_init": init,
            "inference_mode": true,
        });
        Ok((config, tensors))
    }
}

const KEY: &str = "prompt_embeddings";

/// The starting prompt of `tokens` rows.
pub(crate) fn initial_prompt(
    tokens: usize,
    init: &PromptInit,
    model: &Decoder,
    seed: u64,
) -> Result<Option<Tensor<2>>, Error> {
    let c = model.config();
    if tokens == 0 {
        return Ok(None);
    }
    if tokens > c.context_len {
        return Err(Error::ContextOverflow { tokens, context: c.context_len });
    }
    let ids: Vec<u32> = match init {
        PromptInit::SampledVocabulary => {
            let mut rng = Rng::new(seed);
            (0..tokens)
                .map(|_| ((rng.uniform() * 0.5 + 0.5) * c.vocab_size as f32) as u32 % c.vocab_size as u32)
                .collect()
        }
        PromptInit::Text(ids) if ids.is_empty() => {
            return Err(Error::InvalidArgument("the prompt's initial text has no tokens".into()))
        }
        PromptInit::Text(ids) => ids.iter().copied().cycle().take(tokens).collect(),
    };
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary")));
    }
    let mut rows = vec![0.0; tokens * c.d_model];
    model.token_embedding().get_rows(&ids, &mut rows)?;
    Ok(Some(tensor2(rows, [tokens, c.d_model], model.device())))
}

/// The `prompt_embeddings` of a saved prompt-tuning (or DePT) adapter.
pub(crate) fn read_prompt(peft: &PeftDir, model: &Decoder) -> Result<Tensor<2>, Error> {
    let c = model.config();
    let field = |result: Result<Option<usize>, String>| result.map_err(|m| tensors::bad(peft, m));
    let m = field(fields::count(&peft.config, "num_virtual_tokens"))?.unwrap_or(0);
    if m == 0 || m > c.context_len {
        return Err(tensors::bad(
            peft,
            format!("num_virtual_tokens {m} must be in 1..={} (the model's context)", c.context_len),
        ));
    }
    if let Some(n) = field(fields::count(&peft.config, "num_transformer_submodules"))?.filter(|&n| n != 1) {
        return Err(tensors::bad(
            peft,
            format!("num_transformer_submodules {n}: only decoder-only models (1)"),
        ));
    }
    Ok(tensor2(read(peft, KEY, &[m, c.d_model])?, [m, c.d_model], model.device()))
}

impl Adapters for PromptAdapter {
    fn virtual_tokens(&self) -> Option<Tensor<2>> {
        self.embeddings.clone()
    }

    fn host_low_rank(&self) -> Result<Option<Vec<LowRankOutput>>, Error> {
        Ok(Some(Vec::new()))
    }
}

impl Method for PromptAdapter {
    fn kind(&self) -> MethodKind {
        KIND
    }

    fn parameters(&self) -> Vec<(String, &Tensor<2>)> {
        self.embeddings.iter().map(|e| (KEY.to_string(), e)).collect()
    }

    fn parameters_mut(&mut self) -> Vec<(String, &mut Tensor<2>)> {
        self.embeddings.iter_mut().map(|e| (KEY.to_string(), e)).collect()
    }

    fn boxed_clone(&self) -> Box<dyn Method> {
        Box::new(self.clone())
    }

    fn to_peft(&self, config: &DecoderConfig) -> Result<(Value, Vec<Saved>), Error> {
        self.prompt_peft(config, SPEC.peft_type)
    }
}
