//! The adaptation methods by name. For each: what it is called and which PEFT type it is saved
//! as, which options it takes and their defaults, its default learning rate, whether it merges
//! into the weights, whether a scale other than 0 or 1 means anything, how a patch codes its
//! tensors, how patches of it combine, whether it trains in two stages, and how to build and
//! load it. Everything that lists methods (the runtime API, the CLI, patch coding and merging)
//! reads this table: adding a method is one module and one entry in [`METHODS`].

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

use super::lora::LoraInit;
use super::Method;
use crate::error::Error;
use crate::format::peft::PeftDir;
use crate::model::{Decoder, Projection};
use crate::tokenizer::Tokenizer;

/// Every registered method, in the order help texts list them.
pub static METHODS: [&MethodSpec; 8] = [
    &super::lora::SPEC,
    &super::dora::SPEC,
    &super::ia3::SPEC,
    &super::prompt::SPEC,
    &super::prefix::SPEC,
    &super::dept::SPEC,
    &super::peqa::SPEC,
    &super::lofit::SPEC,
];

/// One method's entry.
pub struct MethodSpec {
    /// The name users give (`--method lora`).
    pub name: &'static str,
    /// `peft_type` in `adapter_config.json`.
    pub peft_type: &'static str,
    pub summary: &'static str,
    /// The options the method takes, with their defaults.
    pub options: &'static [OptionSpec],
    /// The peak learning rate when none is given (measured: README, "Adaptation methods").
    pub default_lr: f32,
    /// Whether the change folds exactly into the base weights.
    pub mergeable: bool,
    /// Whether attaching at a scale other than 0 (off) or 1 (as trained) is defined: a soft
    /// prompt has no "half" of itself.
    pub scalable: bool,
    pub coding: Coding,
    pub combine: Combine,
    /// A first training stage whose result chooses what the kept adapter trains (LoFiT).
    pub stage: Option<Stage>,
    /// Whether a saved adapter's config is of this method.
    pub recognizes: fn(&Value) -> bool,
    /// A fresh trainable adapter (for a staged method, its first stage's).
    pub build: fn(&BuildContext) -> Result<Box<dyn Method>, Error>,
    /// A saved adapter of this method, made for `model` (shapes are checked).
    pub load: LoadFn,
}

/// Reads a saved adapter of one method for a model (shapes checked).
pub type LoadFn = fn(&PeftDir, &Decoder) -> Result<Box<dyn Method>, Error>;
/// Builds the kept adapter of a staged method from its first stage's record.
pub type NextStageFn = fn(&Value, &BuildContext) -> Result<Box<dyn Method>, Error>;

/// How a ComPEFT patch codes a method's tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Coding {
    /// `…lora_A.weight` / `…lora_B.weight` pairs through their product; other tensors dense.
    LoraPairs,
    /// Every tensor's change from this starting value.
    FromInit(f32),
    /// Dense f16 (the tensors start from the model's own values).
    Dense,
}

/// How several patches of one method combine into one (`patch merge`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Combine {
    /// LoRA pairs stack their ranks: exact for any ranks and targets.
    StackLora,
    /// The weighted changes from this starting value add up (same config required).
    SumChanges(f32),
    /// They do not; attach them together instead.
    Not,
}

/// A first training stage (LoFiT's head selection): it trains the adapter [`MethodSpec::build`]
/// makes, `finish` turns the result into a record (JSON, kept in the run's storage under
/// `record` so that a resumed run skips the stage), and `next` builds the adapter that is kept.
pub struct Stage {
    pub name: &'static str,
    pub record: &'static str,
    /// The option that holds its number of steps.
    pub steps: MethodOption,
    /// Its learning rate over the run's.
    pub lr_factor: f32,
    pub finish: fn(&dyn Method, &BuildContext) -> Result<Value, Error>,
    pub next: NextStageFn,
}

/// A registered method. Compares by name.
#[derive(Clone, Copy)]
pub struct MethodKind(&'static MethodSpec);

impl MethodKind {
    pub const fn of(spec: &'static MethodSpec) -> Self {
        Self(spec)
    }

    pub fn spec(self) -> &'static MethodSpec {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn mergeable(self) -> bool {
        self.0.mergeable
    }

    pub fn all() -> impl Iterator<Item = MethodKind> {
        METHODS.iter().map(|spec| Self(spec))
    }

    /// The method of a saved adapter, from its `adapter_config.json`.
    pub fn of_config(config: &Value) -> Result<Self, String> {
        Self::all().find(|m| (m.0.recognizes)(config)).ok_or_else(|| {
            let peft_type = config.get("peft_type").and_then(Value::as_str).unwrap_or_default();
            let mut known: Vec<&str> = METHODS.iter().map(|m| m.peft_type).collect();
            known.dedup();
            format!("peft_type '{peft_type}' is not a method adaptkit knows ({})", known.join(", "))
        })
    }

    /// Whether this method takes `option`.
    pub fn takes(self, option: MethodOption) -> bool {
        self.0.options.iter().any(|o| o.option == option)
    }

    /// The method's default for `option` (`None` when it does not take it).
    pub fn default_of(self, option: MethodOption) -> Option<OptionDefault> {
        self.0.options.iter().find(|o| o.option == option).map(|o| o.default)
    }
}

/// `peft_type` of a saved adapter's config.
pub fn peft_type(config: &Value) -> &str {
    config.get("peft_type").and_then(Value::as_str).unwrap_or_default()
}

impl PartialEq for MethodKind {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for MethodKind {}

impl core::hash::Hash for MethodKind {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl fmt::Debug for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl FromStr for MethodKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::all().find(|m| m.name() == name).ok_or_else(|| Error::InvalidOption {
            field: "method".into(),
            value: name.into(),
            message: format!(
                "unknown method (one of: {})",
                METHODS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

impl Serialize for MethodKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for MethodKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for MethodKind {
    fn default() -> Self {
        Self(&super::lora::SPEC)
    }
}

/// The options a method may take. Each has the name of its field in [`MethodOptions`] (the CLI
/// flag is the same with dashes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodOption {
    Rank,
    Alpha,
    Dropout,
    Rslora,
    Init,
    FreezeA,
    Targets,
    VirtualTokens,
    PromptInit,
    MaxLen,
    EmbeddingLr,
    Heads,
    SelectSteps,
    L1,
}

impl MethodOption {
    pub const ALL: [MethodOption; 14] = [
        Self::Rank,
        Self::Alpha,
        Self::Dropout,
        Self::Rslora,
        Self::Init,
        Self::FreezeA,
        Self::Targets,
        Self::VirtualTokens,
        Self::PromptInit,
        Self::MaxLen,
        Self::EmbeddingLr,
        Self::Heads,
        Self::SelectSteps,
        Self::L1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Rank => "rank",
            Self::Alpha => "alpha",
            Self::Dropout => "dropout",
            Self::Rslora => "rslora",
            Self::Init => "init",
            Self::FreezeA => "freeze_a",
            Self::Targets => "targets",
            Self::VirtualTokens => "virtual_tokens",
            Self::PromptInit => "prompt_init",
            Self::MaxLen => "max_len",
            Self::EmbeddingLr => "embedding_lr",
            Self::Heads => "heads",
            Self::SelectSteps => "select_steps",
            Self::L1 => "l1",
        }
    }

    /// The value given for this option in `options`, as text; `None` when not given.
    fn given(self, o: &MethodOptions) -> Option<String> {
        fn show<T: ToString>(v: &Option<T>) -> Option<String> {
            v.as_ref().map(T::to_string)
        }
        match self {
            Self::Rank => show(&o.rank),
            Self::Alpha => show(&o.alpha),
            Self::Dropout => show(&o.dropout),
            Self::Rslora => show(&o.rslora),
            Self::Init => o.init.map(|i| i.name().to_string()),
            Self::FreezeA => show(&o.freeze_a),
            Self::Targets => o.targets.as_ref().map(|t| Projection::list(t)),
            Self::VirtualTokens => show(&o.virtual_tokens),
            Self::PromptInit => o.prompt_init.clone(),
            Self::MaxLen => show(&o.max_len),
            Self::EmbeddingLr => show(&o.embedding_lr),
            Self::Heads => show(&o.heads),
            Self::SelectSteps => show(&o.select_steps),
            Self::L1 => show(&o.l1),
        }
    }
}

/// An option a method takes and its default.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    pub option: MethodOption,
    pub default: OptionDefault,
}

/// A default value; `Described` ones depend on the run (DePT's length is the sequence length).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptionDefault {
    Count(usize),
    Number(f32),
    Flag(bool),
    Init(LoraInit),
    Targets(&'static [Projection]),
    Described(&'static str),
}

impl fmt::Display for OptionDefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Number(x) => write!(f, "{x}"),
            Self::Flag(b) => write!(f, "{b}"),
            Self::Init(i) => f.write_str(i.name()),
            Self::Targets(t) => f.write_str(&Projection::list(t)),
            Self::Described(text) => f.write_str(text),
        }
    }
}

impl Serialize for OptionDefault {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => serializer.serialize_u64(*n as u64),
            Self::Number(x) => serializer.serialize_f32(*x),
            Self::Flag(b) => serializer.serialize_bool(*b),
            other => serializer.serialize_str(&other.to_string()),
        }
    }
}

/// The method options a caller gives; unset ones take the method's defaults. Serialized with
/// the field names that [`MethodOption::name`] lists.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodOptions {
    /// Rank of the low-rank update (lora, dora, dept).
    pub rank: Option<usize>,
    /// The update is scaled by alpha/rank (alpha/sqrt(rank) with rslora, and for dept).
    pub alpha: Option<f32>,
    /// Dropout on the adapter's input while training (lora, dora).
    pub dropout: Option<f32>,
    /// Scale by alpha/sqrt(rank) (lora, dora).
    pub rslora: Option<bool>,
    /// How a LoRA starts: `kaiming` (PEFT's) or `pissa` (principal components).
    pub init: Option<LoraInit>,
    /// Keep every `A` at its starting value and train `B` only (FFA-LoRA, lora): averaging the
    /// `B`s of adapters that share `A` is then exact, which federated rounds rely on.
    pub freeze_a: Option<bool>,
    /// Projections to adapt.
    pub targets: Option<Vec<Projection>>,
    /// Soft-prompt length (prompt, prefix, dept).
    pub virtual_tokens: Option<usize>,
    /// Start the soft prompt from this text's embeddings (prompt, dept).
    pub prompt_init: Option<String>,
    /// Input positions DePT's embedding update covers.
    pub max_len: Option<usize>,
    /// Learning rate of DePT's embedding update.
    pub embedding_lr: Option<f32>,
    /// Attention heads LoFiT keeps.
    pub heads: Option<usize>,
    /// Steps of LoFiT's head-selection stage.
    pub select_steps: Option<usize>,
    /// L1 weight of LoFiT's head-selection stage.
    pub l1: Option<f32>,
}

impl MethodOptions {
    /// Every option `method` takes, as given or else its default, by name (targets in the
    /// model's order): what a resumed run must match.
    pub fn resolved(&self, method: MethodKind) -> BTreeMap<&'static str, String> {
        let mut canonical = self.clone();
        if let Some(targets) = canonical.targets.as_mut() {
            targets.sort();
            targets.dedup();
        }
        method
            .spec()
            .options
            .iter()
            .map(|o| (o.option.name(), o.option.given(&canonical).unwrap_or_else(|| o.default.to_string())))
            .collect()
    }

    /// Refuses options `method` does not take and values out of range, naming the option.
    pub fn check(&self, method: MethodKind) -> Result<(), Error> {
        for option in MethodOption::ALL {
            if option.given(self).is_some() && !method.takes(option) {
                return Err(Error::OptionNotTaken {
                    option: option.name().into(),
                    method: method.name().into(),
                    takes: method.spec().options.iter().map(|o| o.option.name().to_string()).collect(),
                });
            }
        }
        let positive = |option: MethodOption, v: Option<usize>| match v {
            Some(0) => Err(Error::option(option.name(), 0, "must be at least 1")),
            _ => Ok(()),
        };
        positive(MethodOption::Rank, self.rank)?;
        positive(MethodOption::VirtualTokens, self.virtual_tokens)?;
        positive(MethodOption::MaxLen, self.max_len)?;
        positive(MethodOption::Heads, self.heads)?;
        positive(MethodOption::SelectSteps, self.select_steps)?;
        if let Some(d) = self.dropout.filter(|d| !(0.0..1.0).contains(d)) {
            return Err(Error::option("dropout", d, "must be in [0, 1)"));
        }
        if let Some(a) = self.alpha.filter(|a| !a.is_finite()) {
            return Err(Error::option("alpha", a, "must be finite"));
        }
        if let Some(lr) = self.embedding_lr.filter(|lr| !(*lr > 0.0 && lr.is_finite())) {
            return Err(Error::option("embedding_lr", lr, "must be positive"));
        }
        if let Some(l1) = self.l1.filter(|l1| !(*l1 >= 0.0 && l1.is_finite())) {
            return Err(Error::option("l1", l1, "must be at least 0"));
        }
        if self.targets.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(Error::option("targets", "", "name at least one projection"));
        }
        if self.prompt_init.as_deref() == Some("") {
            return Err(Error::option("prompt_init", "", "the text is empty"));
        }
        Ok(())
    }
}

/// What building a fresh adapter needs: the model, its tokenizer (a soft prompt may start from a
/// text), the options with the method's defaults behind them, and the run's sequence length,
/// learning rate and seed.
pub struct BuildContext<'a> {
    pub method: MethodKind,
    pub model: &'a Decoder,
    pub tokenizer: &'a Tokenizer,
    pub options: &'a MethodOptions,
    pub seq: usize,
    pub lr: f32,
    pub seed: u64,
}

impl BuildContext<'_> {
    fn default_of(&self, option: MethodOption) -> Result<OptionDefault, Error> {
        self.method.default_of(option).ok_or_else(|| {
            Error::InvalidArgument(format!("method {} has no option {}", self.method.name(), option.name()))
        })
    }

    fn mismatch(&self, option: MethodOption) -> Error {
        Error::InvalidArgument(format!(
            "the registry's default of {}'s {} has the wrong type",
            self.method.name(),
            option.name()
        ))
    }

    /// A whole-number option by name: the given value or the method's default.
    pub fn count_of(&self, option: MethodOption) -> Result<usize, Error> {
        let o = self.options;
        let given = match option {
            MethodOption::Rank => o.rank,
            MethodOption::VirtualTokens => o.virtual_tokens,
            MethodOption::MaxLen => o.max_len,
            MethodOption::Heads => o.heads,
            MethodOption::SelectSteps => o.select_steps,
            _ => return Err(self.mismatch(option)),
        };
        self.count(option, given)
    }

    /// A whole-number option: the given value or the method's default.
    pub fn count(&self, option: MethodOption, given: Option<usize>) -> Result<usize, Error> {
        match (given, self.default_of(option)?) {
            (Some(v), _) => Ok(v),
            (None, OptionDefault::Count(v)) => Ok(v),
            _ => Err(self.mismatch(option)),
        }
    }

    /// A real-valued option: the given value or the method's default.
    pub fn number(&self, option: MethodOption, given: Option<f32>) -> Result<f32, Error> {
        match (given, self.default_of(option)?) {
            (Some(v), _) => Ok(v),
            (None, OptionDefault::Number(v)) => Ok(v),
            _ => Err(self.mismatch(option)),
        }
    }

    pub fn flag(&self, option: MethodOption, given: Option<bool>) -> Result<bool, Error> {
        match (given, self.default_of(option)?) {
            (Some(v), _) => Ok(v),
            (None, OptionDefault::Flag(v)) => Ok(v),
            _ => Err(self.mismatch(option)),
        }
    }

    pub fn targets(&self) -> Result<Vec<Projection>, Error> {
        match (&self.options.targets, self.default_of(MethodOption::Targets)?) {
            (Some(t), _) => Ok(t.clone()),
            (None, OptionDefault::Targets(t)) => Ok(t.to_vec()),
            _ => Err(self.mismatch(MethodOption::Targets)),
        }
    }

    pub fn init(&self) -> Result<LoraInit, Error> {
        match (self.options.init, self.default_of(MethodOption::Init)?) {
            (Some(i), _) => Ok(i),
            (None, OptionDefault::Init(i)) => Ok(i),
            _ => Err(self.mismatch(MethodOption::Init)),
        }
    }

    /// The token ids of `prompt_init`, when given.
    pub fn prompt_text(&self) -> Result<Option<Vec<u32>>, Error> {
        self.options.prompt_init.as_deref().map(|text| Ok(self.tokenizer.encode(text, false)?)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_are_unique_and_defaults_are_typed() {
        let mut names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METHODS.len());
        for spec in METHODS {
            for o in spec.options {
                let ok = matches!(
                    (o.option, o.default),
                    (
                        MethodOption::Rank
                            | MethodOption::VirtualTokens
                            | MethodOption::Heads
                            | MethodOption::SelectSteps,
                        OptionDefault::Count(_),
                    ) | (
                        MethodOption::Alpha | MethodOption::Dropout | MethodOption::L1,
                        OptionDefault::Number(_),
                    ) | (MethodOption::Rslora | MethodOption::FreezeA, OptionDefault::Flag(_))
                        | (MethodOption::Init, OptionDefault::Init(_))
                        | (MethodOption::Targets, OptionDefault::Targets(_))
                        | (
                            MethodOption::PromptInit | MethodOption::MaxLen | MethodOption::EmbeddingLr,
                            OptionDefault::Described(_),
                        )
                );
                assert!(ok, "{}: the default of {} has the wrong type", spec.name, o.option.name());
            }
            assert!(spec.default_lr > 0.0);
            if let Some(stage) = &spec.stage {
                assert!(spec.options.iter().any(|o| o.option == stage.steps), "{}", spec.name);
            }
        }
    }

    #[test]
    fn configs_are_recognized_by_exactly_their_method() {
        for spec in METHODS {
            let mut config = serde_json::json!({ "peft_type": spec.peft_type });
            if spec.name == "dora" {
                config["use_dora"] = Value::Bool(true);
            }
            let found: Vec<&str> =
                METHODS.iter().filter(|m| (m.recognizes)(&config)).map(|m| m.name).collect();
            assert_eq!(found, [spec.name]);
        }
        let err = MethodKind::of_config(&serde_json::json!({"peft_type": "VERA"})).unwrap_err();
        assert!(err.contains("'VERA'") && err.contains("LORA") && err.contains("LOFIT"), "{err}");
    }

    #[test]
    fn options_a_method_does_not_take_are_named() {
        let ia3: MethodKind = "ia3".parse().unwrap();
        let err = MethodOptions { rank: Some(4), ..Default::default() }.check(ia3).unwrap_err();
        assert_eq!(err.to_string(), "rank does not apply to method ia3 (it takes targets)");
        let lora: MethodKind = "lora".parse().unwrap();
        let err = MethodOptions { dropout: Some(1.5), ..Default::default() }.check(lora).unwrap_err();
        assert!(matches!(&err, Error::InvalidOption { field, .. } if field == "dropout"), "{err}");
        let err = "lorra".parse::<MethodKind>().unwrap_err();
        assert!(err.to_string().contains("lorra") && err.to_string().contains("lofit"), "{err}");
    }
}
