//! Learning-rate schedules with linear warmup, as transformers'
//! `get_scheduler` computes them, plus a floor at `min_lr_ratio · lr`
//! (transformers' `cosine_with_min_lr`, generalised to the linear decay).
//!
//! The rate of update `s` (0-based: the first update is s = 0) is
//! `lr · factor(s)`. As in transformers, the first warmup update has rate 0.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Flat after warmup (transformers' `constant_with_warmup`).
    Constant,
    /// Linear to the floor at the last step (transformers' `linear`).
    Linear,
    /// Half a cosine to the floor (transformers' `cosine`; Loshchilov & Hutter
    /// 2017, "SGDR", eq. 5 without restarts).
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    /// Warmup length in updates; 0 to use `warmup_ratio`.
    pub warmup_steps: usize,
    /// Warmup length as a fraction of all updates (rounded up); used when
    /// `warmup_steps` is 0.
    pub warmup_ratio: f64,
    /// The decay ends at `min_lr_ratio · lr` instead of 0.
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    /// transformers' `TrainingArguments` defaults: linear, no warmup.
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            min_lr_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(TrainError::config(
                "schedule.warmup_ratio",
                format!("{} is not in [0, 1]", self.warmup_ratio),
            ));
        }
        if self.warmup_steps > 0 && self.warmup_ratio > 0.0 {
            return Err(TrainError::config(
                "schedule.warmup_steps",
                "set either warmup_steps or warmup_ratio, not both",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(TrainError::config(
                "schedule.min_lr_ratio",
                format!("{} is not in [0, 1]", self.min_lr_ratio),
            ));
        }
        Ok(())
    }

    /// The schedule for a run of `total_steps` updates at peak rate `lr`.
    pub fn build(&self, lr: f64, total_steps: usize) -> Schedule {
        let warmup = if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (self.warmup_ratio * total_steps as f64).ceil() as usize
        };
        Schedule {
            kind: self.kind,
            lr,
            warmup,
            total: total_steps,
            min_ratio: self.min_lr_ratio,
        }
    }
}

/// A resolved schedule. Stateless: the position is the update index, which a
/// checkpoint stores as its step.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub warmup: usize,
    pub total: usize,
    pub min_ratio: f64,
}

impl Schedule {
    /// Learning rate of update `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.lr * self.factor(step)
    }

    fn factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        let progress =
            (step - self.warmup) as f64 / self.total.saturating_sub(self.warmup).max(1) as f64;
        let decay = match self.kind {
            ScheduleKind::Constant => return 1.0,
            ScheduleKind::Linear => (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0)
            }
        };
        self.min_ratio + (1.0 - self.min_ratio) * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup_steps: usize, min_lr_ratio: f64) -> Schedule {
        ScheduleConfig {
            kind,
            warmup_steps,
            warmup_ratio: 0.0,
            min_lr_ratio,
        }
        .build(1.0, 10)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_is_linear_from_zero() {
        let s = sched(ScheduleKind::Constant, 4, 0.0);
        let lrs: Vec<f64> = (0..6).map(|i| s.lr_at(i)).collect();
        assert_eq!(lrs, vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    }

    /// transformers' linear schedule with warmup 2, total 10:
    /// factor(s) = (10 − s) / 8 for s ≥ 2, so s = 6 → 0.5, s = 10 → 0.
    #[test]
    fn linear_matches_transformers() {
        let s = sched(ScheduleKind::Linear, 2, 0.0);
        assert!(close(s.lr_at(2), 1.0));
        assert!(close(s.lr_at(6), 0.5));
        assert!(close(s.lr_at(10), 0.0));
    }

    /// Cosine, warmup 2, total 10: progress(6) = 4/8 = 0.5, factor = 0.5·(1 + cos(π/2)) = 0.5.
    /// With min_lr_ratio 0.1: 0.1 + 0.9·0.5 = 0.55; at the end, 0.1.
    #[test]
    fn cosine_with_floor() {
        let s = sched(ScheduleKind::Cosine, 2, 0.0);
        assert!(close(s.lr_at(6), 0.5));
        let s = sched(ScheduleKind::Cosine, 2, 0.1);
        assert!(close(s.lr_at(6), 0.55));
        assert!(close(s.lr_at(10), 0.1));
        assert!(close(s.lr_at(2), 1.0));
    }

    #[test]
    fn warmup_ratio_rounds_up_and_conflicts_are_errors() {
        let c = ScheduleConfig {
            warmup_ratio: 0.15,
            ..Default::default()
        };
        assert_eq!(c.build(1.0, 10).warmup, 2);
        let bad = ScheduleConfig {
            warmup_steps: 3,
            warmup_ratio: 0.1,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("not both"));
    }
}
