//! `train --method`: the adaptation method's options, which of them apply to which method,
//! their per-method defaults, and the fresh adapter they describe.

use adaptkit::adapt::dept::{DeptAdapter, DeptConfig};
use adaptkit::adapt::dora::DoraAdapter;
use adaptkit::adapt::ia3::{Ia3Adapter, Ia3Config};
use adaptkit::adapt::lofit::LofitAdapter;
use adaptkit::adapt::peqa::PeqaAdapter;
use adaptkit::adapt::prefix::PrefixAdapter;
use adaptkit::adapt::prompt::{PromptAdapter, PromptInit};
use adaptkit::adapt::{LoraAdapter, LoraConfig, Method, MethodKind};
use adaptkit::engine::Engine;
use adaptkit::model::Projection;
use clap::Args;

use crate::CliError;

#[derive(Args)]
pub struct MethodArgs {
    /// Adaptation method: lora, dora, ia3, prompt, prefix, dept, peqa or lofit (README: "Methods").
    #[arg(long, default_value = "lora", value_parser = parse_method)]
    pub method: MethodKind,
    /// Rank (lora, dora, dept) [default: 8].
    #[arg(long)]
    rank: Option<usize>,
    /// Alpha: the update is scaled by alpha/rank (lora, dora; rsLoRA and DePT: alpha/sqrt(rank))
    /// [default: 16; dept: 8].
    #[arg(long)]
    alpha: Option<f32>,
    /// Dropout on the adapter's input during training (lora, dora) [default: 0].
    #[arg(long)]
    dropout: Option<f32>,
    /// Scale by alpha/sqrt(rank) instead of alpha/rank (lora, dora).
    #[arg(long)]
    rslora: bool,
    /// How A and B start (lora): `kaiming` (PEFT's default: the model starts unchanged) or
    /// `pissa` (principal singular components; the base keeps the residual, and the adapter
    /// is saved as a LoRA of twice the rank for the original base) [default: kaiming].
    #[arg(long, value_parser = ["kaiming", "pissa"])]
    init: Option<String>,
    /// Projections to adapt, comma-separated (lora, dora, ia3, peqa) [default:
    /// q,k,v,o,gate,up,down; ia3: k,v,down].
    #[arg(long)]
    targets: Option<String>,
    /// Soft-prompt length in virtual tokens (prompt [default: 20], prefix [10], dept [10]).
    #[arg(long)]
    virtual_tokens: Option<usize>,
    /// Start the soft prompt from the embeddings of this text, repeated to its length
    /// (prompt, dept) [default: embeddings of random vocabulary tokens].
    #[arg(long)]
    prompt_init: Option<String>,
    /// Input positions DePT's embedding update covers (dept) [default: --seq].
    #[arg(long)]
    max_len: Option<usize>,
    /// Learning rate of DePT's low-rank embedding update (dept) [default: --lr / 30].
    #[arg(long)]
    embedding_lr: Option<f32>,
    /// Attention heads to keep after the selection stage (lofit) [default: 16].
    #[arg(long)]
    heads: Option<usize>,
    /// Steps of the head-selection stage (lofit) [default: 20].
    #[arg(long)]
    select_steps: Option<usize>,
    /// L1 weight of the head-selection stage (lofit) [default: 5e-4].
    #[arg(long)]
    l1: Option<f32>,
}

fn parse_method(name: &str) -> Result<MethodKind, String> {
    name.parse().map_err(|e: adaptkit::Error| e.to_string())
}

/// The options each method takes (beyond the training loop's).
fn accepted(method: MethodKind) -> &'static [&'static str] {
    match method {
        MethodKind::Lora => &["--rank", "--alpha", "--dropout", "--rslora", "--init", "--targets"],
        MethodKind::Dora => &["--rank", "--alpha", "--dropout", "--rslora", "--targets"],
        MethodKind::Ia3 | MethodKind::Peqa => &["--targets"],
        MethodKind::Prompt => &["--virtual-tokens", "--prompt-init"],
        MethodKind::Prefix => &["--virtual-tokens"],
        MethodKind::Dept => {
            &["--virtual-tokens", "--prompt-init", "--rank", "--alpha", "--max-len", "--embedding-lr"]
        }
        MethodKind::Lofit => &["--heads", "--select-steps", "--l1"],
    }
}

/// The run's peak learning rate when `--lr` is not given: measured on the README's comparison
/// (SmolLM2-135M, 60 steps of 4 x 128 tokens).
pub fn default_lr(method: MethodKind) -> f32 {
    match method {
        MethodKind::Lora | MethodKind::Dora => 2e-4,
        MethodKind::Ia3 => 3e-3,
        MethodKind::Prompt | MethodKind::Dept => 3e-2,
        MethodKind::Prefix => 1e-2,
        MethodKind::Peqa => 1e-4,
        MethodKind::Lofit => 1e-2,
    }
}

/// LoFiT's two stages: how many heads to keep, and the selection run's steps and L1 weight.
pub struct LofitPlan {
    pub heads: usize,
    pub select_steps: usize,
    pub l1: f32,
}

impl MethodArgs {
    /// Rejects options the method does not take, naming the ones it does.
    pub fn check(&self) -> Result<(), CliError> {
        let given = [
            ("--rank", self.rank.is_some()),
            ("--alpha", self.alpha.is_some()),
            ("--dropout", self.dropout.is_some()),
            ("--rslora", self.rslora),
            ("--init", self.init.is_some()),
            ("--targets", self.targets.is_some()),
            ("--virtual-tokens", self.virtual_tokens.is_some()),
            ("--prompt-init", self.prompt_init.is_some()),
            ("--max-len", self.max_len.is_some()),
            ("--embedding-lr", self.embedding_lr.is_some()),
            ("--heads", self.heads.is_some()),
            ("--select-steps", self.select_steps.is_some()),
            ("--l1", self.l1.is_some()),
        ];
        let takes = accepted(self.method);
        if let Some((flag, _)) = given.iter().find(|(flag, given)| *given && !takes.contains(flag)) {
            let takes = if takes.is_empty() { "no options of its own".to_string() } else { takes.join(", ") };
            return Err(CliError::msg(format!(
                "{flag} does not apply to --method {} (it takes {takes})",
                self.method.name()
            )));
        }
        if self.rank == Some(0) {
            return Err(CliError::msg("--rank must be at least 1"));
        }
        if let Some(dropout) = self.dropout.filter(|d| !(0.0..1.0).contains(d)) {
            return Err(CliError::msg(format!("--dropout {dropout} must be in [0, 1)")));
        }
        if self.virtual_tokens == Some(0) || self.heads == Some(0) {
            return Err(CliError::msg("--virtual-tokens and --heads must be at least 1"));
        }
        Ok(())
    }

    pub fn lofit(&self) -> LofitPlan {
        LofitPlan {
            heads: self.heads.unwrap_or(16),
            select_steps: self.select_steps.unwrap_or(20),
            l1: self.l1.unwrap_or(5e-4),
        }
    }

    fn targets(&self, default: &[Projection]) -> Result<Vec<Projection>, CliError> {
        let Some(targets) = &self.targets else { return Ok(default.to_vec()) };
        targets
            .split(',')
            .map(|t| {
                Projection::parse(t.trim())
                    .ok_or_else(|| CliError::msg(format!("--targets: unknown projection '{t}'")))
            })
            .collect()
    }

    fn lora_config(&self) -> Result<LoraConfig, CliError> {
        let mut config = LoraConfig::new(
            self.rank.unwrap_or(8),
            self.alpha.unwrap_or(16.0),
            self.targets(&Projection::ALL)?,
        );
        config.dropout = self.dropout.unwrap_or(0.0);
        config.use_rslora = self.rslora;
        Ok(config)
    }

    fn prompt_init(&self, engine: &Engine) -> Result<PromptInit, CliError> {
        Ok(match &self.prompt_init {
            Some(text) => {
                PromptInit::Text(engine.tokenizer().encode(text, false).map_err(adaptkit::Error::from)?)
            }
            None => PromptInit::SampledVocabulary,
        })
    }

    /// The fresh adapter of the chosen method (for LoFiT, its selection stage), made trainable.
    /// PiSSA changes the engine's base weights.
    pub fn build(
        &self,
        engine: &mut Engine,
        seq: usize,
        lr: f32,
        seed: u64,
    ) -> Result<Box<dyn Method>, CliError> {
        let adapter: Box<dyn Method> = match self.method {
            MethodKind::Lora => {
                let config = self.lora_config()?;
                match self.init.as_deref() {
                    Some("pissa") => {
                        Box::new(engine.with_model_mut(|model| LoraAdapter::new_pissa(config, model, seed))?)
                    }
                    _ => Box::new(LoraAdapter::new(config, engine.model(), seed)?),
                }
            }
            MethodKind::Dora => Box::new(DoraAdapter::new(self.lora_config()?, engine.model(), seed)?),
            MethodKind::Ia3 => {
                let config = Ia3Config::on(self.targets(&Ia3Config::default().targets)?);
                Box::new(Ia3Adapter::new(config, engine.model())?)
            }
            MethodKind::Prompt => Box::new(PromptAdapter::new(
                self.virtual_tokens.unwrap_or(20),
                self.prompt_init(engine)?,
                engine.model(),
                seed,
            )?),
            MethodKind::Prefix => {
                Box::new(PrefixAdapter::new(self.virtual_tokens.unwrap_or(10), engine.model(), seed)?)
            }
            MethodKind::Dept => {
                let embedding_lr = self.embedding_lr.unwrap_or(lr / 30.0);
                let config = DeptConfig {
                    tokens: self.virtual_tokens.unwrap_or(10),
                    rank: self.rank.unwrap_or(8),
                    alpha: self.alpha.unwrap_or(8.0),
                    max_len: self.max_len.unwrap_or(seq),
                    embedding_lr_ratio: embedding_lr / lr,
                };
                Box::new(DeptAdapter::new(config, self.prompt_init(engine)?, engine.model(), seed)?)
            }
            MethodKind::Peqa => Box::new(PeqaAdapter::new(self.targets(&Projection::ALL)?, engine.model())?),
            MethodKind::Lofit => Box::new(LofitAdapter::selection(engine.model(), self.lofit().l1, seed)?),
        };
        Ok(adaptkit::adapt::trainable(adapter))
    }
}
