//! alignkit-eval: judging model outputs and reporting honest numbers.
//!
//! - [`rule`]: rule judges (exactly one sentence, JSON with given keys, a
//!   regular expression, an exact match against a field of the prompt record).
//! - [`sentiment`]: the VADER compound score (the sentiment reward and judge).
//! - [`stats`]: proportions with Wilson score intervals and the Newcombe
//!   interval for a difference of two proportions.
//! - [`generations`]: responses cached on disk by model fingerprint, prompt
//!   ids and sampling settings.
//! - [`drift`]: Monte-Carlo sequence KL to the reference and per-token NLL on
//!   general text (forgetting).
//! - [`hacking`]: signs of reward hacking in completions (`!`, capitals,
//!   distinct-2, length).
//! - [`winrate`]: policy-against-baseline win rates: ties as half, Wilson
//!   interval, exact sign test, length-controlled win rate (AlpacaEval LC).
//! - [`human`]: people's judgments of a blind candidates file, mapped back to
//!   policy and baseline: one verdict per item, each annotator's win rate.

pub mod drift;
pub mod error;
pub mod generations;
pub mod hacking;
pub mod human;
pub mod rule;
pub mod sentiment;
pub mod stats;
pub mod winrate;

pub use drift::{MeanInterval, TextNll};
pub use error::EvalError;
pub use generations::{GenerationCache, GenerationSettings, Generations};
pub use hacking::TextStats;
pub use rule::{Pattern, Rule, RuleError};
pub use sentiment::Sentiment;
pub use stats::{Difference, PairedRates, Proportion, wilson};
pub use winrate::{Judged, LengthControlled, Outcome, WinRate, sign_test};
