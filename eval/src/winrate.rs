//! Win rates of a policy against a baseline, with the uncertainty an honest
//! report needs: ties counted as half, a Wilson interval, an exact sign test,
//! and the length-controlled win rate.
//!
//! Practice followed (see `research/online-rl-and-winrate.md` §6): AlpacaEval
//! counts a tie as half a win and reports a length-controlled ("LC") win rate
//! from a logistic regression on the standardised length difference; MT-Bench
//! and Bowyer et al. (ICML 2025) ask for intervals that behave at small n.

use serde::Serialize;
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::stats::{wilson, z};

/// One prompt's verdict, from the policy's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Win,
    Tie,
    Loss,
}

impl Outcome {
    /// The outcome as a (soft) label: win 1, tie ½, loss 0.
    pub fn value(self) -> f64 {
        match self {
            Outcome::Win => 1.0,
            Outcome::Tie => 0.5,
            Outcome::Loss => 0.0,
        }
    }

    /// The policy wins when its score exceeds the baseline's by more than
    /// `tie_margin`; scores within the margin of each other tie.
    pub fn from_scores(policy: f64, baseline: f64, tie_margin: f64) -> Outcome {
        let diff = policy - baseline;
        if diff > tie_margin {
            Outcome::Win
        } else if diff < -tie_margin {
            Outcome::Loss
        } else {
            Outcome::Tie
        }
    }

    /// A pass/fail judge: one passing is a win or loss; both passing or both
    /// failing is a tie.
    pub fn from_passes(policy: bool, baseline: bool) -> Outcome {
        match (policy, baseline) {
            (true, false) => Outcome::Win,
            (false, true) => Outcome::Loss,
            _ => Outcome::Tie,
        }
    }
}

/// A judged prompt: the verdict and both responses' lengths (in characters,
/// as AlpacaEval measures them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Judged {
    pub outcome: Outcome,
    pub policy_len: usize,
    pub baseline_len: usize,
}

/// What a set of judgments says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinRate {
    pub n: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// (wins + ½ ties) / n.
    pub win_rate: f64,
    /// Wilson score interval of `win_rate` (ties as half a success).
    pub low: f64,
    pub high: f64,
    pub level: f64,
    /// Exact two-sided sign test of wins against losses, ties dropped:
    /// the chance of a split at least this lopsided if neither side were better.
    pub sign_test_p: f64,
    pub mean_policy_len: f64,
    pub mean_baseline_len: f64,
    pub length_controlled: LengthControlled,
}

impl WinRate {
    /// Summarises `judged` at confidence `level` (e.g. 0.95). `None` when empty.
    pub fn compute(judged: &[Judged], level: f64) -> Option<WinRate> {
        let n = judged.len();
        if n == 0 {
            return None;
        }
        let count = |o: Outcome| judged.iter().filter(|j| j.outcome == o).count();
        let (wins, ties, losses) = (
            count(Outcome::Win),
            count(Outcome::Tie),
            count(Outcome::Loss),
        );
        let win_rate = (wins as f64 + 0.5 * ties as f64) / n as f64;
        let (low, high) = wilson(win_rate, n, level);
        let mean =
            |f: fn(&Judged) -> usize| judged.iter().map(|j| f(j) as f64).sum::<f64>() / n as f64;
        Some(WinRate {
            n,
            wins,
            ties,
            losses,
            win_rate,
            low,
            high,
            level,
            sign_test_p: sign_test(wins, losses),
            mean_policy_len: mean(|j| j.policy_len),
            mean_baseline_len: mean(|j| j.baseline_len),
            length_controlled: LengthControlled::fit(judged, level),
        })
    }
}

/// Exact two-sided sign test: p = min(1, 2 · P(X ≤ min(w, l))) for
/// X ~ Binomial(w + l, ½). 1 when there is nothing to test (w + l = 0).
/// See: Conover (1999), "Practical Nonparametric Statistics", §3.4.
pub fn sign_test(wins: usize, losses: usize) -> f64 {
    let n = (wins + losses) as u64;
    if n == 0 {
        return 1.0;
    }
    let binomial = Binomial::new(0.5, n).expect("p = 0.5 is a valid probability");
    (2.0 * binomial.cdf(wins.min(losses) as u64)).min(1.0)
}

/// Ridge weight on the length coefficient. When the judge decides by length
/// alone the classes are separable in the length feature and the unpenalised
/// coefficient runs off to infinity; a weak N(0, 1/λ) prior (sd ≈ 3.2, so a
/// response much longer may still shift the odds ~20×) keeps the fit finite
/// without touching the intercept, which is what is read out.
const LENGTH_RIDGE: f64 = 0.1;

/// The length-controlled win rate: AlpacaEval's "LC minimal" GLM,
/// logit P(policy wins) = θ + β · tanh(Δlen / sd(Δlen)), fitted by Newton's
/// method (IRLS) on soft labels (tie = ½), read at Δlen = 0: σ(θ).
/// See: Dubois et al. (2024), "Length-Controlled AlpacaEval", arXiv 2404.04475, eq. (3);
/// `alpaca_eval/metrics/glm_winrate.py` (`length_controlled_minimal`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LengthControlled {
    /// σ(θ): the win rate the fit predicts for a response as long as the baseline's.
    pub win_rate: f64,
    /// σ(θ ± z · se(θ)), the Wald interval from the inverse Hessian. When every
    /// outcome is the same the fit has no finite optimum; then the raw win
    /// rate and its Wilson interval are reported and `fitted` is false.
    pub low: f64,
    pub high: f64,
    /// θ and β of the fit.
    pub intercept: f64,
    pub length_coef: f64,
    pub fitted: bool,
}

impl LengthControlled {
    pub fn fit(judged: &[Judged], level: f64) -> LengthControlled {
        let n = judged.len();
        let y: Vec<f64> = judged.iter().map(|j| j.outcome.value()).collect();
        let raw = y.iter().sum::<f64>() / n.max(1) as f64;
        if n == 0 || y.iter().all(|&v| v == 1.0) || y.iter().all(|&v| v == 0.0) {
            let (low, high) = wilson(raw, n, level);
            return LengthControlled {
                win_rate: raw,
                low,
                high,
                intercept: f64::NAN,
                length_coef: f64::NAN,
                fitted: false,
            };
        }
        let x = standardised_tanh(judged);
        let (theta, beta, var_theta) = newton_logistic(&x, &y);
        let se = var_theta.sqrt();
        let z = z(level);
        LengthControlled {
            win_rate: sigmoid(theta),
            low: sigmoid(theta - z * se),
            high: sigmoid(theta + z * se),
            intercept: theta,
            length_coef: beta,
            fitted: true,
        }
    }
}

/// tanh(Δlen / sd(Δlen)) with Δlen = policy − baseline length and the sample
/// standard deviation (ddof 1, as pandas' `std`); all zeros when Δlen does not vary.
fn standardised_tanh(judged: &[Judged]) -> Vec<f64> {
    let d: Vec<f64> = judged
        .iter()
        .map(|j| j.policy_len as f64 - j.baseline_len as f64)
        .collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = if d.len() > 1 {
        d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let sd = var.sqrt();
    if sd == 0.0 {
        return vec![0.0; d.len()];
    }
    d.iter().map(|v| (v / sd).tanh()).collect()
}

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

/// Maximises Σ y log p + (1 − y) log(1 − p) − λ/2 · β², p = σ(θ + β x), by
/// Newton's method. Returns (θ, β, Var θ) with the variance from the inverse
/// of the penalised negative Hessian at the optimum.
fn newton_logistic(x: &[f64], y: &[f64]) -> (f64, f64, f64) {
    let (mut theta, mut beta) = (0.0_f64, 0.0_f64);
    let mut h = [[0.0; 2]; 2];
    for _ in 0..100 {
        // Gradient g and negative Hessian h of the penalised log-likelihood.
        let mut g = [0.0, -LENGTH_RIDGE * beta];
        h = [[0.0, 0.0], [0.0, LENGTH_RIDGE]];
        for (&xi, &yi) in x.iter().zip(y) {
            let p = sigmoid(theta + beta * xi);
            let w = p * (1.0 - p);
            g[0] += yi - p;
            g[1] += (yi - p) * xi;
            h[0][0] += w;
            h[0][1] += w * xi;
            h[1][1] += w * xi * xi;
        }
        h[1][0] = h[0][1];
        let det = h[0][0] * h[1][1] - h[0][1] * h[1][0];
        if det <= 0.0 || !det.is_finite() {
            break;
        }
        let step = [
            (h[1][1] * g[0] - h[0][1] * g[1]) / det,
            (h[0][0] * g[1] - h[1][0] * g[0]) / det,
        ];
        theta += step[0];
        beta += step[1];
        if step[0].abs().max(step[1].abs()) < 1e-10 {
            break;
        }
    }
    let det = h[0][0] * h[1][1] - h[0][1] * h[1][0];
    (theta, beta, h[1][1] / det)
}

/// How often the response shown first won, among decisive judgments: with no
/// position bias, about half. A Wilson interval says whether the gap matters.
pub fn position_bias(first_wins: usize, decisive: usize, level: f64) -> crate::Proportion {
    crate::Proportion::new(first_wins, decisive, level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn judged(outcomes: &[(Outcome, usize)]) -> Vec<Judged> {
        outcomes
            .iter()
            .flat_map(|&(o, k)| {
                std::iter::repeat_n(
                    Judged {
                        outcome: o,
                        policy_len: 10,
                        baseline_len: 10,
                    },
                    k,
                )
            })
            .collect()
    }

    #[test]
    fn ties_count_half_and_the_interval_is_wilsons() {
        // 6 wins, 4 ties, 0 losses of 10: (6 + 2) / 10 = 0.8, and the Wilson
        // interval of 0.8 at n = 10 is [0.4902, 0.9433] (see stats.rs).
        let w = WinRate::compute(&judged(&[(Outcome::Win, 6), (Outcome::Tie, 4)]), 0.95).unwrap();
        assert_eq!((w.wins, w.ties, w.losses, w.n), (6, 4, 0, 10));
        assert!((w.win_rate - 0.8).abs() < 1e-12);
        assert!((w.low - 0.490_18).abs() < 1e-4, "{}", w.low);
        assert!((w.high - 0.943_33).abs() < 1e-4, "{}", w.high);
        // Ties dropped: 6 wins, 0 losses: p = 2 · (1/2)^6 = 1/32.
        assert!(
            (w.sign_test_p - 1.0 / 32.0).abs() < 1e-12,
            "{}",
            w.sign_test_p
        );
        assert!(WinRate::compute(&[], 0.95).is_none());
    }

    #[test]
    fn sign_test_matches_exact_binomial_sums() {
        // 8 vs 2: P(X ≤ 2) for Bin(10, ½) = (1 + 10 + 45) / 1024 = 56/1024;
        // two-sided p = 112/1024 = 0.109375.
        assert!((sign_test(8, 2) - 112.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test(2, 8) - 112.0 / 1024.0).abs() < 1e-12);
        // 15 vs 5: P(X ≤ 5) for Bin(20, ½) = (1 + 20 + 190 + 1140 + 4845 + 15504) / 2^20
        //   = 21700 / 1048576; two-sided p = 43400 / 1048576 = 0.041389.
        assert!((sign_test(15, 5) - 43_400.0 / 1_048_576.0).abs() < 1e-12);
        // A 5-5 split is as unremarkable as it gets; nothing to test gives 1.
        assert_eq!(sign_test(5, 5), 1.0);
        assert_eq!(sign_test(0, 0), 1.0);
        // 1 vs 0: 2 · ½ = 1.
        assert!((sign_test(1, 0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn outcomes_from_scores_and_passes() {
        assert_eq!(Outcome::from_scores(1.0, 0.5, 0.1), Outcome::Win);
        assert_eq!(Outcome::from_scores(0.5, 1.0, 0.1), Outcome::Loss);
        assert_eq!(Outcome::from_scores(1.0, 0.95, 0.1), Outcome::Tie);
        assert_eq!(Outcome::from_scores(1.0, 1.0, 0.0), Outcome::Tie);
        assert_eq!(Outcome::from_passes(true, false), Outcome::Win);
        assert_eq!(Outcome::from_passes(false, true), Outcome::Loss);
        assert_eq!(Outcome::from_passes(true, true), Outcome::Tie);
        assert_eq!(Outcome::from_passes(false, false), Outcome::Tie);
    }

    /// Synthetic judgments: the policy answers longer on average (Δlen ~ N(40, 60²)
    /// characters); the judge prefers it with logit = `preference` + `length_weight`
    /// · tanh(Δlen / 60).
    fn synthetic(n: usize, preference: f64, length_weight: f64, seed: u64) -> Vec<Judged> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Box-Muller for a normal length difference.
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let delta = 40.0 + 60.0 * normal;
                let baseline_len = 200;
                let policy_len = (baseline_len as f64 + delta).max(1.0) as usize;
                let p = sigmoid(preference + length_weight * (delta / 60.0).tanh());
                let outcome = if rng.random::<f64>() < p {
                    Outcome::Win
                } else {
                    Outcome::Loss
                };
                Judged {
                    outcome,
                    policy_len,
                    baseline_len,
                }
            })
            .collect()
    }

    #[test]
    fn a_judge_that_only_rewards_length_gives_an_lc_win_rate_near_half() {
        // Longer answers win and the policy is usually longer, so the raw win
        // rate is far above ½; with length controlled it is ½ up to noise.
        let w = WinRate::compute(&synthetic(4000, 0.0, 3.0, 1), 0.95).unwrap();
        assert!(w.win_rate > 0.65, "raw {}", w.win_rate);
        let lc = w.length_controlled;
        assert!(lc.fitted);
        assert!((lc.win_rate - 0.5).abs() < 0.03, "LC {}", lc.win_rate);
        assert!(lc.low < 0.5 && lc.high > 0.5, "[{}, {}]", lc.low, lc.high);
        assert!(lc.length_coef > 2.0, "β {}", lc.length_coef);
    }

    #[test]
    fn a_judge_decided_by_length_alone_is_separable_and_still_reads_half() {
        // The longer response always wins: perfectly separable in the length
        // feature; the ridge keeps β finite and the intercept stays near 0.
        let mut rng = StdRng::seed_from_u64(7);
        let judged: Vec<Judged> = (0..1000)
            .map(|_| {
                let baseline_len = 100;
                let policy_len = rng.random_range(60..200usize);
                Judged {
                    outcome: if policy_len > baseline_len {
                        Outcome::Win
                    } else if policy_len < baseline_len {
                        Outcome::Loss
                    } else {
                        Outcome::Tie
                    },
                    policy_len,
                    baseline_len,
                }
            })
            .collect();
        let w = WinRate::compute(&judged, 0.95).unwrap();
        assert!(w.win_rate > 0.65, "raw {}", w.win_rate);
        let lc = w.length_controlled;
        assert!(
            lc.length_coef.is_finite() && lc.length_coef > 10.0,
            "β {}",
            lc.length_coef
        );
        assert!((lc.win_rate - 0.5).abs() < 0.05, "LC {}", lc.win_rate);
    }

    #[test]
    fn a_length_independent_preference_is_recovered() {
        // logit 0.7 / 0.3: the judge prefers the policy 70% of the time whatever
        // the lengths; LC reads 0.7 and the raw rate agrees.
        let preference = (0.7_f64 / 0.3).ln();
        let w = WinRate::compute(&synthetic(4000, preference, 0.0, 2), 0.95).unwrap();
        let lc = w.length_controlled;
        assert!((lc.win_rate - 0.7).abs() < 0.03, "LC {}", lc.win_rate);
        assert!((w.win_rate - 0.7).abs() < 0.03, "raw {}", w.win_rate);
        assert!(lc.length_coef.abs() < 0.3, "β {}", lc.length_coef);
        // With a length bias on top, the raw rate is inflated; LC still reads 0.7.
        let w = WinRate::compute(&synthetic(4000, preference, 2.0, 3), 0.95).unwrap();
        assert!(w.win_rate > 0.75, "raw {}", w.win_rate);
        let lc = w.length_controlled;
        assert!((lc.win_rate - 0.7).abs() < 0.03, "LC {}", lc.win_rate);
        assert!(lc.low < 0.7 && lc.high > 0.7, "[{}, {}]", lc.low, lc.high);
    }

    #[test]
    fn equal_lengths_make_lc_the_raw_rate() {
        // Δlen = 0 everywhere: the feature is 0, θ = logit(mean y) exactly.
        // 3 wins, 1 tie, 1 loss of 5: (3 + 0.5) / 5 = 0.7.
        let w = WinRate::compute(
            &judged(&[(Outcome::Win, 3), (Outcome::Tie, 1), (Outcome::Loss, 1)]),
            0.95,
        )
        .unwrap();
        assert!((w.win_rate - 0.7).abs() < 1e-12);
        assert!((w.length_controlled.win_rate - 0.7).abs() < 1e-9);
        // All wins: no finite fit; LC falls back to the raw rate and its Wilson interval.
        let all = WinRate::compute(&judged(&[(Outcome::Win, 4)]), 0.95).unwrap();
        let lc = all.length_controlled;
        assert!(!lc.fitted);
        assert_eq!((lc.win_rate, lc.high), (1.0, 1.0));
        assert!((lc.low - all.low).abs() < 1e-12);
    }
}
