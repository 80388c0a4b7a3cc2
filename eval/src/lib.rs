//! alignkit-eval: judging model outputs and reporting honest numbers.
//!
//! - [`rule`]: rule judges (exactly one sentence, JSON with given keys).
//! - [`stats`]: proportions with Wilson score intervals and the Newcombe
//!   interval for a difference of two proportions.

pub mod rule;
pub mod stats;

pub use rule::Rule;
pub use stats::{Difference, Proportion};
