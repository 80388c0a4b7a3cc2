//! Proportions with confidence intervals that behave at small n and at 0 or 1.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

/// z such that P(|Z| <= z) = level for a standard normal Z.
pub(crate) fn z(level: f64) -> f64 {
    let normal = Normal::new(0.0, 1.0).expect("standard normal is valid");
    normal.inverse_cdf(0.5 + level / 2.0)
}

/// k successes out of n, with a Wilson score interval.
/// See: Wilson (1927), "Probable inference, the law of succession, and statistical inference".
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Proportion {
    pub successes: usize,
    pub trials: usize,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
    pub level: f64,
}

impl Proportion {
    pub fn new(successes: usize, trials: usize, level: f64) -> Self {
        assert!(successes <= trials, "more successes than trials");
        let rate = if trials == 0 {
            0.0
        } else {
            successes as f64 / trials as f64
        };
        let (low, high) = wilson(rate, trials, level);
        Self {
            successes,
            trials,
            rate,
            low,
            high,
            level,
        }
    }
}

/// The Wilson score interval of an observed rate `p` over `n` trials:
/// (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n). `p` may be fractional
/// (a win rate with ties counted as half). [0, 1] when n = 0.
pub fn wilson(p: f64, n: usize, level: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let z = z(level);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    // At p = 0 (p = 1) the bound is exactly 0 (1); rounding would leave ~1e-17.
    let low = if p <= 0.0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if p >= 1.0 {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    (low, high)
}

/// The difference `a − b` of two independent proportions with Newcombe's
/// hybrid score interval (method 10), built from the two Wilson intervals.
/// See: Newcombe (1998), "Interval estimation for the difference between
/// independent proportions: comparison of eleven methods", Stat. Med. 17.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Difference {
    pub delta: f64,
    pub low: f64,
    pub high: f64,
    pub level: f64,
}

impl Difference {
    pub fn new(a: &Proportion, b: &Proportion) -> Self {
        let delta = a.rate - b.rate;
        let low = delta - ((a.rate - a.low).powi(2) + (b.high - b.rate).powi(2)).sqrt();
        let high = delta + ((a.high - a.rate).powi(2) + (b.rate - b.low).powi(2)).sqrt();
        Self {
            delta,
            low,
            high,
            level: a.level,
        }
    }

    /// True when the whole interval lies above zero: `a` is better than `b`
    /// by more than the uncertainty.
    pub fn significant(&self) -> bool {
        self.low > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_hand_computation() {
        // 8 of 10 at 95%: z = 1.959964, z² = 3.841459.
        // denom = 1 + 0.3841459 = 1.3841459; centre = (0.8 + 0.1920729) / denom = 0.716758
        // half = 1.959964 · sqrt(0.016 + 0.0096036) / denom = 1.959964 · 0.160011 / 1.3841459
        //      = 0.226575  → [0.490, 0.943] (the textbook Wilson interval for 8/10).
        let p = Proportion::new(8, 10, 0.95);
        assert!((p.low - 0.490_18).abs() < 1e-4, "{}", p.low);
        assert!((p.high - 0.943_33).abs() < 1e-4, "{}", p.high);
    }

    #[test]
    fn wilson_interval_at_the_edges() {
        let none = Proportion::new(0, 20, 0.95);
        assert_eq!(none.low, 0.0);
        assert!(none.high > 0.1 && none.high < 0.2, "{}", none.high); // 0.161
        let all = Proportion::new(20, 20, 0.95);
        assert_eq!(all.high, 1.0);
        assert!(
            (all.low - (1.0 - none.high)).abs() < 1e-12,
            "{} vs {}",
            all.low,
            none.high
        );
    }

    #[test]
    fn newcombe_difference() {
        // Newcombe (1998), example (a): 56/70 vs 48/80 → δ = 0.2. Wilson 95%:
        // 56/70 → [0.6918, 0.8770], 48/80 → [0.4905, 0.7004].
        // low  = 0.2 − sqrt((0.8 − 0.6918)² + (0.7004 − 0.6)²) = 0.2 − 0.1476 = 0.0524
        // high = 0.2 + sqrt((0.8770 − 0.8)² + (0.6 − 0.4905)²) = 0.2 + 0.1339 = 0.3339
        let a = Proportion::new(56, 70, 0.95);
        let b = Proportion::new(48, 80, 0.95);
        let d = Difference::new(&a, &b);
        assert!((d.delta - 0.2).abs() < 1e-12);
        assert!((d.low - 0.0524).abs() < 5e-4, "{}", d.low);
        assert!((d.high - 0.3339).abs() < 5e-4, "{}", d.high);
        assert!(d.significant());
        assert!(!Difference::new(&b, &a).significant());
    }
}
