//! The NaN/Inf guard: a step whose loss or gradient norm is not finite is
//! skipped (no update, so the weights stay the last good ones), reported, and
//! after `max_consecutive` such steps in a row training stops.

use crate::error::TrainError;

/// What to do with a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Apply the update.
    Update,
    /// Skip the update; `reason` says which value was not finite.
    Skip { reason: String },
}

/// Why a judged step was not applied, for its metrics: the value that was
/// not finite, or `None` for an applied update (or an unrelated error).
pub fn skip_reason(verdict: &Result<Verdict, TrainError>) -> Option<String> {
    match verdict {
        Ok(Verdict::Update) => None,
        Ok(Verdict::Skip { reason }) => Some(reason.clone()),
        Err(TrainError::NonFinite { reason, .. }) => Some(reason.clone()),
        Err(_) => None,
    }
}

#[derive(Debug, Clone)]
pub struct NanGuard {
    max_consecutive: usize,
    consecutive: usize,
    skipped: usize,
}

impl NanGuard {
    /// `max_consecutive` bad steps in a row stop training (0: never stop).
    pub fn new(max_consecutive: usize) -> Self {
        Self {
            max_consecutive,
            consecutive: 0,
            skipped: 0,
        }
    }

    /// Restore the counters of a checkpoint.
    pub fn resume(max_consecutive: usize, consecutive: usize, skipped: usize) -> Self {
        Self {
            max_consecutive,
            consecutive,
            skipped,
        }
    }

    /// Judge step `step` from its loss and pre-clip gradient norm. Returns an
    /// error once `max_consecutive` steps in a row were bad.
    pub fn check(&mut self, step: usize, loss: f64, grad_norm: f64) -> Result<Verdict, TrainError> {
        let reason = if !loss.is_finite() {
            format!("loss is {loss}")
        } else if !grad_norm.is_finite() {
            format!("gradient norm is {grad_norm}")
        } else {
            self.consecutive = 0;
            return Ok(Verdict::Update);
        };
        self.consecutive += 1;
        self.skipped += 1;
        if self.max_consecutive > 0 && self.consecutive >= self.max_consecutive {
            return Err(TrainError::NonFinite {
                step,
                count: self.consecutive,
                reason,
            });
        }
        Ok(Verdict::Skip { reason })
    }

    /// Bad steps in a row so far.
    pub fn consecutive(&self) -> usize {
        self.consecutive
    }

    /// Bad steps in the whole run.
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_then_stops_after_n_in_a_row() {
        let mut g = NanGuard::new(3);
        assert_eq!(g.check(1, 1.0, 1.0).unwrap(), Verdict::Update);
        assert!(matches!(
            g.check(2, f64::NAN, 1.0).unwrap(),
            Verdict::Skip { .. }
        ));
        assert!(matches!(
            g.check(3, 1.0, f64::INFINITY).unwrap(),
            Verdict::Skip { .. }
        ));
        // A good step resets the run of bad ones.
        assert_eq!(g.check(4, 1.0, 1.0).unwrap(), Verdict::Update);
        for s in 5..7 {
            assert!(matches!(
                g.check(s, f64::NAN, 0.0).unwrap(),
                Verdict::Skip { .. }
            ));
        }
        let err = g.check(7, f64::NAN, 0.0).unwrap_err().to_string();
        assert!(
            err.contains("step 7") && err.contains("3 consecutive"),
            "{err}"
        );
        assert_eq!(g.skipped(), 5);
    }
}
