//! What a DPO step logs, under TRL's metric names.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::logps::CompletionLogps;
use crate::loss::DpoLossOutput;

/// Sums over the pairs of one or more batches, from which the logged means are
/// taken: TRL's `loss`, `rewards/*`, `logps/*`, `logits/*` and `nll_loss`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DpoSums {
    pub pairs: usize,
    /// Σ per-pair preference loss.
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    /// Pairs whose chosen reward is strictly above the rejected one (TRL: `>`).
    pub correct: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    /// Σ over completion tokens of the vocabulary-mean logit, and the token counts.
    pub logits_chosen: f64,
    pub logits_rejected: f64,
    pub tokens_chosen: f64,
    pub tokens_rejected: f64,
    /// Σ NLL over chosen completion tokens (RPO only; its token count is
    /// `tokens_chosen`).
    pub nll: f64,
    pub rpo_alpha: Option<f64>,
}

impl DpoSums {
    /// These sums added over the ranks of a run by `sum` (one process: `sum`
    /// returns its input).
    pub fn summed<E>(self, sum: impl FnOnce(&[f64]) -> Result<Vec<f64>, E>) -> Result<Self, E> {
        let local = [
            self.pairs as f64,
            self.loss,
            self.rewards_chosen,
            self.rewards_rejected,
            self.correct,
            self.logps_chosen,
            self.logps_rejected,
            self.logits_chosen,
            self.logits_rejected,
            self.tokens_chosen,
            self.tokens_rejected,
            self.nll,
        ];
        let s = sum(&local)?;
        Ok(Self {
            pairs: s[0] as usize,
            loss: s[1],
            rewards_chosen: s[2],
            rewards_rejected: s[3],
            correct: s[4],
            logps_chosen: s[5],
            logps_rejected: s[6],
            logits_chosen: s[7],
            logits_rejected: s[8],
            tokens_chosen: s[9],
            tokens_rejected: s[10],
            nll: s[11],
            rpo_alpha: self.rpo_alpha,
        })
    }
}

impl std::ops::AddAssign for DpoSums {
    fn add_assign(&mut self, o: Self) {
        self.pairs += o.pairs;
        self.loss += o.loss;
        self.rewards_chosen += o.rewards_chosen;
        self.rewards_rejected += o.rewards_rejected;
        self.correct += o.correct;
        self.logps_chosen += o.logps_chosen;
        self.logps_rejected += o.logps_rejected;
        self.logits_chosen += o.logits_chosen;
        self.logits_rejected += o.logits_rejected;
        self.tokens_chosen += o.tokens_chosen;
        self.tokens_rejected += o.tokens_rejected;
        self.nll += o.nll;
        self.rpo_alpha = self.rpo_alpha.or(o.rpo_alpha);
    }
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
    t.detach()
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("converted to f64 above")
}

impl DpoSums {
    /// Read a batch's diagnostics back from the device.
    pub fn of<B: Backend>(output: &DpoLossOutput<B>, policy: &CompletionLogps<B>) -> Self {
        let losses = host(output.losses.clone());
        let rc = host(output.rewards.chosen.clone());
        let rr = host(output.rewards.rejected.clone());
        let sum = |t: &Tensor<B, 1>| host(t.clone()).iter().sum::<f64>();
        Self {
            pairs: losses.len(),
            loss: losses.iter().sum(),
            rewards_chosen: rc.iter().sum(),
            rewards_rejected: rr.iter().sum(),
            correct: rc.iter().zip(&rr).filter(|(c, r)| c > r).count() as f64,
            logps_chosen: sum(&policy.logps.chosen),
            logps_rejected: sum(&policy.logps.rejected),
            logits_chosen: sum(&policy.logit_sums.chosen),
            logits_rejected: sum(&policy.logit_sums.rejected),
            tokens_chosen: sum(&policy.tokens.chosen),
            tokens_rejected: sum(&policy.tokens.rejected),
            nll: output.rpo.as_ref().map_or(0.0, |r| sum(&r.nll_sum)),
            rpo_alpha: output.rpo.as_ref().map(|r| r.alpha),
        }
    }

    fn mean(&self, sum: f64) -> f64 {
        sum / self.pairs.max(1) as f64
    }

    /// `loss`: mean preference loss plus α · NLL per chosen token.
    pub fn loss(&self) -> f64 {
        self.mean(self.loss)
            + self
                .rpo_alpha
                .map_or(0.0, |a| a * self.nll / self.tokens_chosen.max(1.0))
    }
    /// `rewards/chosen`.
    pub fn rewards_chosen(&self) -> f64 {
        self.mean(self.rewards_chosen)
    }
    /// `rewards/rejected`.
    pub fn rewards_rejected(&self) -> f64 {
        self.mean(self.rewards_rejected)
    }
    /// `rewards/margins`.
    pub fn rewards_margins(&self) -> f64 {
        self.mean(self.rewards_chosen - self.rewards_rejected)
    }
    /// `rewards/accuracies`.
    pub fn rewards_accuracies(&self) -> f64 {
        self.mean(self.correct)
    }
    /// `logps/chosen`.
    pub fn logps_chosen(&self) -> f64 {
        self.mean(self.logps_chosen)
    }
    /// `logps/rejected`.
    pub fn logps_rejected(&self) -> f64 {
        self.mean(self.logps_rejected)
    }
    /// `logits/chosen`: mean logit over the chosen completion tokens and the vocabulary.
    pub fn logits_chosen(&self) -> f64 {
        self.logits_chosen / self.tokens_chosen.max(1.0)
    }
    /// `logits/rejected`.
    pub fn logits_rejected(&self) -> f64 {
        self.logits_rejected / self.tokens_rejected.max(1.0)
    }
    /// `nll_loss` (RPO only).
    pub fn nll_loss(&self) -> Option<f64> {
        self.rpo_alpha
            .map(|_| self.nll / self.tokens_chosen.max(1.0))
    }
}

/// The means of [`DpoSums`] under TRL's names (`eval_` prefixed for evaluation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairMetrics {
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_margins: f64,
    pub rewards_accuracies: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub logits_chosen: f64,
    pub logits_rejected: f64,
    pub nll_loss: Option<f64>,
}

impl From<&DpoSums> for PairMetrics {
    fn from(s: &DpoSums) -> Self {
        Self {
            loss: s.loss(),
            rewards_chosen: s.rewards_chosen(),
            rewards_rejected: s.rewards_rejected(),
            rewards_margins: s.rewards_margins(),
            rewards_accuracies: s.rewards_accuracies(),
            logps_chosen: s.logps_chosen(),
            logps_rejected: s.logps_rejected(),
            logits_chosen: s.logits_chosen(),
            logits_rejected: s.logits_rejected(),
            nll_loss: s.nll_loss(),
        }
    }
}

/// One `metrics.jsonl` record: an optimizer step, with TRL's metric names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoMetrics {
    pub step: usize,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// Mean preference loss over the step's pairs (plus α·NLL with RPO).
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens seen so far (chosen and rejected rows, padding excluded).
    pub num_tokens: u64,
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    #[serde(rename = "logits/chosen")]
    pub logits_chosen: f64,
    #[serde(rename = "logits/rejected")]
    pub logits_rejected: f64,
    /// NLL per chosen completion token (RPO only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_loss: Option<f64>,
    /// Real tokens of this step per second of wall time.
    pub tokens_per_second: f64,
    /// Why the update was skipped (non-finite loss or gradient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(
        default,
        rename = "eval_rewards/chosen",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_rewards_chosen: Option<f64>,
    #[serde(
        default,
        rename = "eval_rewards/rejected",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_rewards_rejected: Option<f64>,
    #[serde(
        default,
        rename = "eval_rewards/margins",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_rewards_margins: Option<f64>,
    #[serde(
        default,
        rename = "eval_rewards/accuracies",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_rewards_accuracies: Option<f64>,
    #[serde(
        default,
        rename = "eval_logps/chosen",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_logps_chosen: Option<f64>,
    #[serde(
        default,
        rename = "eval_logps/rejected",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_logps_rejected: Option<f64>,
    #[serde(
        default,
        rename = "eval_logits/chosen",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_logits_chosen: Option<f64>,
    #[serde(
        default,
        rename = "eval_logits/rejected",
        skip_serializing_if = "Option::is_none"
    )]
    pub eval_logits_rejected: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_nll_loss: Option<f64>,
}

impl DpoMetrics {
    /// A training record from the step's sums; no evaluation yet.
    pub fn new(
        step: usize,
        epoch: f64,
        learning_rate: f64,
        grad_norm: f64,
        m: &PairMetrics,
    ) -> Self {
        Self {
            step,
            epoch,
            loss: m.loss,
            learning_rate,
            grad_norm,
            num_tokens: 0,
            rewards_chosen: m.rewards_chosen,
            rewards_rejected: m.rewards_rejected,
            rewards_margins: m.rewards_margins,
            rewards_accuracies: m.rewards_accuracies,
            logps_chosen: m.logps_chosen,
            logps_rejected: m.logps_rejected,
            logits_chosen: m.logits_chosen,
            logits_rejected: m.logits_rejected,
            nll_loss: m.nll_loss,
            tokens_per_second: 0.0,
            skipped: None,
            eval_loss: None,
            eval_rewards_chosen: None,
            eval_rewards_rejected: None,
            eval_rewards_margins: None,
            eval_rewards_accuracies: None,
            eval_logps_chosen: None,
            eval_logps_rejected: None,
            eval_logits_chosen: None,
            eval_logits_rejected: None,
            eval_nll_loss: None,
        }
    }

    /// Record an evaluation's means as the `eval_*` metrics.
    pub fn set_eval(&mut self, m: &PairMetrics) {
        self.eval_loss = Some(m.loss);
        self.eval_rewards_chosen = Some(m.rewards_chosen);
        self.eval_rewards_rejected = Some(m.rewards_rejected);
        self.eval_rewards_margins = Some(m.rewards_margins);
        self.eval_rewards_accuracies = Some(m.rewards_accuracies);
        self.eval_logps_chosen = Some(m.logps_chosen);
        self.eval_logps_rejected = Some(m.logps_rejected);
        self.eval_logits_chosen = Some(m.logits_chosen);
        self.eval_logits_rejected = Some(m.logits_rejected);
        self.eval_nll_loss = m.nll_loss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_use_trl_metric_names() {
        let s = DpoSums {
            pairs: 2,
            loss: 1.0,
            rewards_chosen: 0.4,
            rewards_rejected: -0.2,
            correct: 1.0,
            tokens_chosen: 4.0,
            tokens_rejected: 2.0,
            logits_chosen: 2.0,
            ..Default::default()
        };
        let m = PairMetrics::from(&s);
        let mut rec = DpoMetrics::new(3, 0.5, 1e-6, 0.1, &m);
        rec.set_eval(&m);
        let json = serde_json::to_value(&rec).unwrap();
        for key in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "logits/chosen",
            "logits/rejected",
            "eval_loss",
            "eval_rewards/chosen",
            "eval_rewards/margins",
            "eval_rewards/accuracies",
            "eval_logps/chosen",
            "eval_logits/rejected",
        ] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
        assert!(json.get("nll_loss").is_none());
        // (0.4 − (−0.2)) / 2 = 0.3; 1 of 2 pairs correct; 2 logit-sum / 4 tokens.
        assert!((json["rewards/margins"].as_f64().unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(json["rewards/accuracies"], 0.5);
        assert_eq!(json["logits/chosen"], 0.5);
        let back: DpoMetrics = serde_json::from_value(json).unwrap();
        assert_eq!(back, rec);
    }
}
