//! alignkit-reward: scalar reward models trained on preference pairs with the
//! Bradley–Terry loss (Ouyang et al. 2022, "Training language models to follow
//! instructions with human feedback", §3.5), as TRL's `RewardTrainer` does.
//! The model itself (backbone + `score` head) is
//! `alignkit_model::heads::RewardModel`.
//!
//! - [`config`]: [`RewardConfig`] (TOML, unknown keys rejected, defaults in one place).
//! - [`data`]: preference JSONL → token pairs with optional margins; identical
//!   pairs rejected.
//! - [`loss`]: the Bradley–Terry loss with margin and centring, golden-tested.
//! - [`score`]: [`score`] / [`score_sequences`] — each sample's reward.
//! - [`train`]: [`train()`], the loop, and [`RewardMetrics`] per step.
//!
//! The reward model as a run trains, checkpoints and exports it (full or
//! LoRA, `final/`) is `alignkit_train::reward_model`, shared with PPO's critic.
//!
//! Where the score is read is one rule for training, scoring and export: the
//! sequence's last token that is not the pad token, as transformers'
//! `LlamaForSequenceClassification` reads it (see `alignkit_model::heads`).
//! With the default `data.completion_end = "template"` a conversation's
//! sequence is what TRL's `RewardTrainer` tokenizes (the chat template's
//! whole rendering, ChatML's trailing `\n` included), so alignkit, TRL and
//! transformers score the same token of the same record. transformers'
//! embedding drops the gradient of pad-token inputs (`padding_idx`; SmolLM2
//! pads with `<|im_end|>`); alignkit's gradient is the true one.

pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod score;
pub mod train;

pub use config::{DataConfig, FinalDtype, RewardConfig};
pub use error::RewardError;
pub use loss::{RewardLossOutput, RewardObjective, RewardSums, bradley_terry_loss};
pub use metrics::RewardMetrics;
pub use score::{Score, ScoredRecord, score, score_sequences};
pub use train::{Event, RewardOutcome, RunInfo, RunOptions, StopReason, evaluate, train};
