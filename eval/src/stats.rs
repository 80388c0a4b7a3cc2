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

/// The difference of two pass rates measured on the same items (paired
/// binary outcomes), with Newcombe's score interval for paired data (method
/// 10): the two Wilson intervals combined with the continuity-corrected
/// correlation φ* of the 2×2 table. On paired data it is narrower than the
/// independent interval when the two are positively correlated, as a policy
/// and its base usually are. See: Newcombe (1998), "Improved confidence
/// intervals for the difference between binomial proportions based on paired
/// data", Stat. Med. 17, 2635–2650.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedRates {
    /// Items where both pass, only `a` passes, only `b` passes, neither.
    pub both: usize,
    pub only_a: usize,
    pub only_b: usize,
    pub neither: usize,
    pub a: Proportion,
    pub b: Proportion,
    /// a − b with its interval.
    pub difference: Difference,
}

impl PairedRates {
    /// From per-item (a passes, b passes).
    pub fn new(passes: &[(bool, bool)], level: f64) -> Self {
        let count = |f: fn(&(bool, bool)) -> bool| passes.iter().filter(|p| f(p)).count();
        let (both, only_a, only_b, neither) = (
            count(|&(a, b)| a && b),
            count(|&(a, b)| a && !b),
            count(|&(a, b)| !a && b),
            count(|&(a, b)| !a && !b),
        );
        let n = passes.len();
        let a = Proportion::new(both + only_a, n, level);
        let b = Proportion::new(both + only_b, n, level);
        let (e, f, g, h) = (
            (both + only_a) as f64,
            (only_b + neither) as f64,
            (both + only_b) as f64,
            (only_a + neither) as f64,
        );
        let phi = if e * f * g * h == 0.0 {
            0.0
        } else {
            let cross = (both * neither) as f64 - (only_a * only_b) as f64;
            let corrected = if cross > 0.0 {
                (cross - n as f64 / 2.0).max(0.0)
            } else {
                cross
            };
            corrected / (e * f * g * h).sqrt()
        };
        let delta = a.rate - b.rate;
        let (da_low, da_high) = (a.rate - a.low, a.high - a.rate);
        let (db_low, db_high) = (b.rate - b.low, b.high - b.rate);
        let low = delta - (da_low.powi(2) - 2.0 * phi * da_low * db_high + db_high.powi(2)).sqrt();
        let high = delta + (da_high.powi(2) - 2.0 * phi * da_high * db_low + db_low.powi(2)).sqrt();
        Self {
            both,
            only_a,
            only_b,
            neither,
            a,
            b,
            difference: Difference {
                delta,
                low,
                high,
                level,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(both: usize, only_a: usize, only_b: usize, neither: usize) -> Vec<(bool, bool)> {
        [
            ((true, true), both),
            ((true, false), only_a),
            ((false, true), only_b),
            ((false, false), neither),
        ]
        .iter()
        .flat_map(|&(p, k)| std::iter::repeat_n(p, k))
        .collect()
    }

    #[test]
    fn paired_difference_matches_hand_computation() {
        // Newcombe's worked table: both 12, only a 9, only b 2, neither 21 (n = 44).
        // p_a = 21/44 = 0.47727 (Wilson [0.33755, 0.62098]), p_b = 14/44 = 0.31818
        // ([0.19987, 0.46656]); ad − bc = 252 − 18 = 234 > n/2, φ* = (234 − 22) /
        // √(21·23·14·30) = 212 / 450.40 = 0.47069; lower = 0.15909 − √(0.13972² −
        // 2φ*·0.13972·0.14838 + 0.14838²) = 0.01124, upper = 0.15909 + √(0.14371² −
        // 2φ*·0.14371·0.11831 + 0.11831²) = 0.29537.
        let r = PairedRates::new(&table(12, 9, 2, 21), 0.95);
        assert_eq!((r.both, r.only_a, r.only_b, r.neither), (12, 9, 2, 21));
        assert!((r.difference.delta - 0.159_09).abs() < 1e-4);
        assert!(
            (r.difference.low - 0.011_24).abs() < 1e-4,
            "{}",
            r.difference.low
        );
        assert!(
            (r.difference.high - 0.295_37).abs() < 1e-4,
            "{}",
            r.difference.high
        );
        assert!(r.difference.significant());
        // No item passes under b: φ = 0 and the interval is the independent one.
        let r = PairedRates::new(&table(0, 5, 0, 45), 0.95);
        let independent = Difference::new(&r.a, &r.b);
        assert!((r.difference.low - independent.low).abs() < 1e-12);
        assert!(
            (r.difference.low - 0.008_98).abs() < 1e-4,
            "{}",
            r.difference.low
        );
        // Positive correlation narrows the interval below the independent one.
        let r = PairedRates::new(&table(30, 12, 1, 7), 0.95);
        let independent = Difference::new(&r.a, &r.b);
        assert!(r.difference.low > independent.low && r.difference.high < independent.high);
        assert!(
            (r.difference.low - 0.083_70).abs() < 1e-4,
            "{}",
            r.difference.low
        );
    }

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
