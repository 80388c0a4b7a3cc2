//! alignkit-dpo: Direct Preference Optimization (Rafailov et al. 2023,
//! "Direct Preference Optimization: Your Language Model is Secretly a Reward
//! Model") and its variants, as TRL's `DPOTrainer` computes them.
//!
//! - [`config`]: [`DpoConfig`] (TOML, unknown keys rejected, defaults in one place).
//! - [`data`]: preference JSONL → token pairs, identical pairs rejected.
//! - [`loss`]: the loss variants ([`DpoLoss`]) as pure functions of per-sequence
//!   log-prob sums, with golden tests.
//! - [`logps`]: completion log-prob sums of chosen and rejected in one
//!   concatenated forward pass.
//! - [`metrics`]: the logged diagnostics under TRL's names.
//! - [`reference`]: the reference policy — a frozen model, the LoRA policy with
//!   adapters removed, or log-probs precomputed once and cached on disk.
//! - [`train`]: [`train()`], the loop, and [`DpoMetrics`] per step.

pub mod config;
pub mod data;
pub mod error;
pub mod logps;
pub mod loss;
pub mod metrics;
pub mod reference;
pub mod train;

pub use config::{DataConfig, DpoConfig, FinalDtype};
pub use error::DpoError;
pub use logps::{CompletionLogps, completion_logps};
pub use loss::{DpoLoss, DpoLossOutput, DpoObjective, Pair, RpoTerm, dpo_loss};
pub use metrics::{DpoMetrics, DpoSums, PairMetrics};
pub use reference::{
    CacheStatus, ReferenceCache, ReferenceKey, ReferenceLogps, lora_reference, precompute,
};
pub use train::{DpoOutcome, Event, ReferenceKind, RunInfo, RunOptions, StopReason, train};
