use alignkit_train::skeleton::Update;
use serde::{Deserialize, Serialize};

use crate::loss::BatchSums;

/// One `metrics.jsonl` record: an optimizer step, with TRL's metric names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    pub step: usize,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// Token-mean NLL over the trained tokens of the step.
    pub loss: f64,
    /// The rate this step used.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens seen so far (padding excluded).
    pub num_tokens: u64,
    /// Fraction of trained tokens whose most likely prediction is the target.
    pub mean_token_accuracy: f64,
    /// Mean entropy (nats) of the predicted distribution at trained tokens.
    pub entropy: f64,
    /// Real tokens of this step per second of wall time.
    pub tokens_per_second: f64,
    /// Why the update was skipped (non-finite loss or gradient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_mean_token_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_entropy: Option<f64>,
}

impl SftMetrics {
    /// The record of step `step`: `loss` and the update's rate, norm and skip
    /// reason, with `sums`' diagnostics per trained token (the caller sets
    /// the token counts and the evaluation).
    pub fn new(step: usize, epoch: f64, loss: f64, update: &Update, sums: &BatchSums) -> Self {
        let targets = sums.targets.max(1) as f64;
        SftMetrics {
            step,
            epoch,
            loss,
            learning_rate: update.learning_rate,
            grad_norm: update.grad_norm,
            num_tokens: 0,
            mean_token_accuracy: sums.correct / targets,
            entropy: sums.entropy / targets,
            tokens_per_second: 0.0,
            skipped: update.skipped.clone(),
            eval_loss: None,
            eval_mean_token_accuracy: None,
            eval_entropy: None,
        }
    }

    /// The evaluation's means over its trained tokens.
    pub fn set_eval(&mut self, e: &BatchSums) {
        let targets = e.targets.max(1) as f64;
        self.eval_loss = Some(e.nll / targets);
        self.eval_mean_token_accuracy = Some(e.correct / targets);
        self.eval_entropy = Some(e.entropy / targets);
    }
}
