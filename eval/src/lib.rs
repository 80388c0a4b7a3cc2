//! alignkit-eval: judging model outputs and reporting honest numbers.
//!
//! - [`rule`]: rule judges (exactly one sentence, JSON with given keys, a
//!   regular expression, exact match against a field of the prompt record).
//! - [`stats`]: proportions with Wilson score intervals and the Newcombe
//!   interval for a difference of two proportions.

pub mod rule;
pub mod stats;

pub use rule::{CompiledRule, Rule, RuleError};
pub use stats::{Difference, Proportion};
