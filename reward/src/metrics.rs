//! What a reward-model step logs, under TRL's `RewardTrainer` metric names.

use serde::{Deserialize, Serialize};

use crate::loss::RewardSums;

/// One `metrics.jsonl` record: an optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardMetrics {
    pub step: usize,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// Mean Bradley–Terry loss (plus the centring term) over the step's pairs.
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens seen so far (padding excluded).
    pub num_tokens: u64,
    /// Fraction of pairs with r_chosen > r_rejected.
    pub accuracy: f64,
    /// Mean r_chosen − r_rejected.
    pub margin: f64,
    /// Over the chosen and rejected rewards of the step.
    pub min_reward: f64,
    pub mean_reward: f64,
    pub max_reward: f64,
    /// Real tokens of this step per second of wall time.
    pub tokens_per_second: f64,
    /// Why the update was skipped (non-finite loss or gradient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_margin: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_min_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_mean_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_max_reward: Option<f64>,
}

impl RewardMetrics {
    /// A training record from the step's sums; no evaluation yet.
    pub fn new(
        step: usize,
        epoch: f64,
        learning_rate: f64,
        grad_norm: f64,
        s: &RewardSums,
    ) -> Self {
        Self {
            step,
            epoch,
            loss: s.loss(),
            learning_rate,
            grad_norm,
            num_tokens: 0,
            accuracy: s.accuracy(),
            margin: s.margin(),
            min_reward: s.min_reward(),
            mean_reward: s.mean_reward(),
            max_reward: s.max_reward(),
            tokens_per_second: 0.0,
            skipped: None,
            eval_loss: None,
            eval_accuracy: None,
            eval_margin: None,
            eval_min_reward: None,
            eval_mean_reward: None,
            eval_max_reward: None,
        }
    }

    /// Record an evaluation as the `eval_*` metrics.
    pub fn set_eval(&mut self, s: &RewardSums) {
        self.eval_loss = Some(s.loss());
        self.eval_accuracy = Some(s.accuracy());
        self.eval_margin = Some(s.margin());
        self.eval_min_reward = Some(s.min_reward());
        self.eval_mean_reward = Some(s.mean_reward());
        self.eval_max_reward = Some(s.max_reward());
    }
}
