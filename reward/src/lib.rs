//! alignkit-reward: scalar reward models trained on preference pairs with the
//! Bradley–Terry loss (Ouyang et al. 2022, "Training language models to follow
//! instructions with human feedback", §3.5), as TRL's `RewardTrainer` does.
//! The model itself (backbone + `score` head) is
//! `alignkit_model::heads::RewardModel`.
//!
//! - [`loss`]: the Bradley–Terry loss with margin and centring, golden-tested.

pub mod error;
pub mod loss;

pub use error::RewardError;
pub use loss::{RewardLossOutput, RewardObjective, RewardSums, bradley_terry_loss};
