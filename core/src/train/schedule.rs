//! Learning-rate schedules, with Hugging Face Trainer's names (`lr_scheduler_type`) and
//! formulas, so a run here moves as far as the same run in PEFT: a linear warm-up from 0 over
//! `warmup` steps, then the schedule's shape from the peak over the remaining steps. As in
//! transformers, optimizer step `s` (counted from 1) uses the rate at `i = s − 1`.

use core::f32::consts::PI;
use core::fmt;
use core::str::FromStr;

use crate::error::Error;

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The peak rate after warm-up (`constant_with_warmup`; `constant` without warm-up).
    Constant,
    /// Linear decay to 0 (`linear`, transformers' default).
    Linear,
    /// Half a cosine down to 0 (`cosine`).
    Cosine,
    /// Half a cosine down to `min_lr_ratio` of the peak (`cosine_with_min_lr`), adaptkit's
    /// default with a ratio of 0.1.
    #[default]
    CosineWithMinLr,
}

impl LrSchedule {
    pub const ALL: [LrSchedule; 4] = [Self::Constant, Self::Linear, Self::Cosine, Self::CosineWithMinLr];

    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::CosineWithMinLr => "cosine_with_min_lr",
        }
    }

    /// The rate of optimizer step `step` (from 1) of `steps`, peaking at `lr` after `warmup`
    /// steps; `min_lr_ratio` is the floor of [`LrSchedule::CosineWithMinLr`].
    pub fn rate(self, lr: f32, step: usize, steps: usize, warmup: usize, min_lr_ratio: f32) -> f32 {
        let i = step.saturating_sub(1) as f32;
        let (steps, warmup) = (steps as f32, warmup as f32);
        if i < warmup {
            return lr * i / warmup.max(1.0);
        }
        let progress = ((i - warmup) / (steps - warmup).max(1.0)).clamp(0.0, 1.0);
        let cosine = 0.5 * (1.0 + (PI * progress).cos());
        lr * match self {
            Self::Constant => 1.0,
            Self::Linear => 1.0 - progress,
            Self::Cosine => cosine,
            Self::CosineWithMinLr => min_lr_ratio + (1.0 - min_lr_ratio) * cosine,
        }
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LrSchedule {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|s| s.name()).collect();
            Error::option("lr_schedule", name, format!("one of {}", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LrSchedule::{self, *};

    /// transformers' `get_*_schedule_with_warmup` lambdas at optimizer step `i` (from 0).
    fn transformers(schedule: LrSchedule, i: f32, steps: f32, warmup: f32, min_ratio: f32) -> f32 {
        if i < warmup {
            return i / warmup.max(1.0);
        }
        let progress = (i - warmup) / (steps - warmup).max(1.0);
        match schedule {
            Constant => 1.0,
            Linear => ((steps - i) / (steps - warmup).max(1.0)).max(0.0),
            Cosine => (0.5 * (1.0 + (core::f32::consts::PI * progress).cos())).max(0.0),
            CosineWithMinLr => {
                let cosine = 0.5 * (1.0 + (core::f32::consts::PI * progress).cos());
                min_ratio + (1.0 - min_ratio) * cosine
            }
        }
    }

    #[test]
    fn schedules_follow_transformers() {
        for schedule in LrSchedule::ALL {
            for (steps, warmup) in [(110, 10), (60, 0), (1, 0), (5, 5)] {
                for step in 1..=steps {
                    let got = schedule.rate(2e-4, step, steps, warmup, 0.1);
                    let want =
                        2e-4 * transformers(schedule, (step - 1) as f32, steps as f32, warmup as f32, 0.1);
                    assert!(
                        (got - want).abs() < 1e-9,
                        "{schedule} step {step}/{steps} (warm-up {warmup}): {got} vs {want}"
                    );
                }
            }
        }
        // The shapes: the peak right after warm-up, the floors at the end.
        assert_eq!(Linear.rate(1.0, 11, 110, 10, 0.1), 1.0);
        assert!((Cosine.rate(1.0, 110, 110, 10, 0.1) - 0.0).abs() < 1e-3);
        assert!((CosineWithMinLr.rate(1.0, 110, 110, 10, 0.1) - 0.1).abs() < 1e-3);
        assert_eq!(Constant.rate(1.0, 110, 110, 10, 0.1), 1.0);
        assert_eq!(Constant.rate(1.0, 1, 110, 10, 0.1), 0.0, "warm-up starts at 0, as in transformers");
        assert_eq!("cosine_with_min_lr".parse::<LrSchedule>().unwrap(), CosineWithMinLr);
        assert!("step".parse::<LrSchedule>().unwrap_err().to_string().contains("linear"));
    }
}
