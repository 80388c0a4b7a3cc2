use serde::{Deserialize, Serialize};

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
