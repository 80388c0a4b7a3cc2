//! alignkit-ppo: online reinforcement learning of a language model on its own
//! samples — the critic-free algorithms RLOO (Ahmadian et al. 2024, "Back to
//! Basics: Revisiting REINFORCE Style Optimization for Learning from Human
//! Feedback in LLMs") and GRPO (Shao et al. 2024, "DeepSeekMath"), as TRL's
//! `RLOOTrainer` and `GRPOTrainer` compute them, on one machine, with exact
//! resume.
//!
//! - [`config`]: [`RlConfig`] (TOML, `[grpo]` or `[rloo]`, unknown keys
//!   rejected, defaults in one place).
//! - [`rollout`]: prompts JSONL → G sampled completions per prompt with the
//!   KV-cached sampler, each token's temperature-scaled log-prob recorded.
//! - [`reward`]: reward models, rule judges and VADER sentiment, weighted and
//!   summed.
//! - [`loss`]: advantages and the clipped policy losses, with golden tests.
//! - [`metrics`]: [`RlMetrics`] under TRL's names; `completions.jsonl`.
//! - [`collect`]: one step's rollout: prompts in order, completions, scores.
//! - [`run`]: what every online-RL loop shares: `open`, `finish`, events.
//! - [`evaluator`]: held-out evaluations (`[eval]`, `eval.jsonl`).
//! - [`train`]: [`train()`], the GRPO/RLOO loop.
//! - [`gae`], [`critic`], [`ppo_train`]: PPO with a learned critic
//!   ([`train_ppo`]), as TRL's last `PPOTrainer` and Huang et al. 2024.

pub mod collect;
pub mod config;
pub mod critic;
pub mod error;
pub mod evaluator;
pub mod gae;
pub mod loss;
pub mod metrics;
pub mod ppo_train;
pub mod reward;
pub mod rollout;
pub mod run;
pub mod train;

pub use config::{
    AdaptiveKlConfig, Algorithm, DataConfig, EvalConfig, FinalDtype, GrpoParams, PpoParams,
    RlConfig, RlooParams, RolloutConfig,
};
pub use critic::CriticInit;
pub use error::RlError;
pub use loss::{Clip, LossType, ScaleRewards};
pub use metrics::{CompletionRecord, PpoMetrics, RlMetrics};
pub use ppo_train::{PpoOutcome, train_ppo};
pub use reward::RewardKind;
pub use train::{
    EvalRecord, Event, ReferenceKind, RlOutcome, RunInfo, RunOptions, StopReason, train,
};
