//! alignkit-sft: supervised fine-tuning (instruction tuning) of a causal LM,
//! full or with LoRA adapters — the objective of Ouyang et al. 2022,
//! "Training language models to follow instructions with human feedback",
//! step 1, as TRL's `SFTTrainer` implements it: next-token cross-entropy on the
//! completion (or assistant turns), averaged over trained tokens.
//!
//! - [`config`]: [`SftConfig`] (TOML, unknown keys rejected, defaults in one place).
//! - [`data`]: JSONL → token sequences → seeded micro-batches (padded or packed).
//! - [`loss`]: the objective and its diagnostics, with golden tests.
//! - [`train`]: [`train()`], the loop, and [`SftMetrics`] per step.

pub mod config;
pub mod data;
pub mod error;
pub mod loss;
pub mod metrics;
pub mod train;

pub use config::{DataConfig, FinalDtype, LossOn, SftConfig};
pub use error::SftError;
pub use metrics::SftMetrics;
pub use train::{Event, RunInfo, RunOptions, SftOutcome, StopReason, evaluate, train};
