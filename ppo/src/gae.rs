//! PPO's per-token advantages, on host numbers: the KL-shaped token rewards,
//! generalized advantage estimation, whitening and the adaptive KL
//! coefficient. The first pieces of PPO with a critic; the clipped policy and
//! value losses (tensors) build on these.
//!
//! Per completion of T tokens, with the critic's values V_t and the reward
//! model's score s of the whole completion:
//!
//! ```text
//! kl_t  = logp_t − ref_t                          (k1)
//!       = e^(ref_t − logp_t) − 1 − (ref_t − logp_t) (k3)
//! r_t   = −β·kl_t, and + s at the last token t = T − 1
//! δ_t   = r_t + γ·V_{t+1} − V_t                    (V_T = 0)
//! A_t   = δ_t + γλ·A_{t+1}                          (A_T = 0)
//! R_t   = A_t + V_t                                 (the critic's targets)
//! ```
//!
//! See: Schulman et al. 2016, "High-Dimensional Continuous Control Using
//! Generalized Advantage Estimation", eq. 16; Ziegler et al. 2019,
//! "Fine-Tuning Language Models from Human Preferences", §2.2 (the adaptive
//! KL coefficient); Huang et al. 2024, "The N+ Implementation Details of RLHF
//! with PPO: A Case Study on TL;DR Summarization" (details 7, 8, 11); TRL's
//! last `PPOTrainer` (`trl/trainer/ppo_trainer.py`, `masked_whiten`,
//! `AdaptiveKLController`).

use serde::{Deserialize, Serialize};

/// How the per-token KL to the reference is estimated from log-probs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// logp − ref: unbiased, can be negative per token. TRL's default.
    #[default]
    K1,
    /// e^(ref − logp) − 1 − (ref − logp): unbiased, never negative, lower
    /// variance (Schulman 2020, "Approximating KL Divergence").
    K3,
}

impl KlEstimator {
    /// The estimate at one token from the policy's and the reference's log-probs.
    pub fn at(self, logp: f64, reference: f64) -> f64 {
        match self {
            KlEstimator::K1 => logp - reference,
            KlEstimator::K3 => {
                let log_ratio = reference - logp;
                log_ratio.exp() - 1.0 - log_ratio
            }
        }
    }
}

/// The rewards of one completion's tokens: −β·kl_t at every token, plus the
/// sequence `score` at the last one. Empty for an empty completion.
pub fn token_rewards(
    logp: &[f64],
    reference: &[f64],
    estimator: KlEstimator,
    beta: f64,
    score: f64,
) -> Vec<f64> {
    assert_eq!(
        logp.len(),
        reference.len(),
        "token_rewards: one reference log-prob per token"
    );
    let mut rewards: Vec<f64> = logp
        .iter()
        .zip(reference)
        .map(|(&l, &r)| -beta * estimator.at(l, r))
        .collect();
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    rewards
}

/// Generalized advantage estimation over one completion: (A_t, R_t = A_t + V_t).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(rewards.len(), values.len(), "gae: one value per token");
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_advantage = 0.0;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Standardise `x` in place with its mean and unbiased variance:
/// (x − μ)/√(σ² + 10⁻⁸), plus μ again unless `shift_mean` (TRL's
/// `masked_whiten`: advantages are shifted, rewards keep their mean). Fewer
/// than two values are left as they are.
pub fn whiten(x: &mut [f64], shift_mean: bool) {
    if let Some(w) = Whitening::of(x) {
        w.apply(x, shift_mean);
    }
}

/// What [`whiten`] does to each value, measured on one set of values and
/// applicable to another (a rank's share of a step's tokens, with the
/// statistics of all of them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Whitening {
    pub mean: f64,
    /// 1/√(σ² + 10⁻⁸), σ² the unbiased variance.
    pub scale: f64,
}

impl Whitening {
    /// The statistics of `x`; none for fewer than two values.
    pub fn of(x: &[f64]) -> Option<Self> {
        let n = x.len();
        if n < 2 {
            return None;
        }
        let mean = x.iter().sum::<f64>() / n as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Some(Self {
            mean,
            scale: 1.0 / (var + 1e-8).sqrt(),
        })
    }

    pub fn apply(&self, x: &mut [f64], shift_mean: bool) {
        let back = if shift_mean { 0.0 } else { self.mean };
        for v in x.iter_mut() {
            *v = (*v - self.mean) * self.scale + back;
        }
    }
}

/// The adaptive KL coefficient of Ziegler et al. (2019): β moves toward the
/// value that keeps the measured KL at `target`, by at most 20% of
/// `n_steps / horizon` per update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveKl {
    pub value: f64,
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKl {
    /// After a batch of `n_steps` samples whose mean KL was `current`.
    pub fn update(&mut self, current: f64, n_steps: usize) {
        let error = (current / self.target - 1.0).clamp(-0.2, 0.2);
        self.value *= 1.0 + error * n_steps as f64 / self.horizon;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    /// logp (−1, −2), ref (−1.5, −1), β = 0.1, score 2.
    /// k1: kl = (0.5, −1) → r = (−0.05, 0.1 + 2).
    /// k3: ref − logp = (−0.5, 1) → kl = (e^−0.5 − 0.5, e − 2) = (0.1065307, 0.7182818)
    /// → r = (−0.01065307, 2 − 0.07182818).
    #[test]
    fn token_rewards_penalise_kl_and_add_the_score_at_the_end() {
        let (logp, reference) = ([-1.0, -2.0], [-1.5, -1.0]);
        close(
            &token_rewards(&logp, &reference, KlEstimator::K1, 0.1, 2.0),
            &[-0.05, 2.1],
        );
        let k3 = token_rewards(&logp, &reference, KlEstimator::K3, 0.1, 2.0);
        let want = [
            -0.1 * ((-0.5f64).exp() - 0.5),
            2.0 - 0.1 * (1f64.exp() - 2.0),
        ];
        close(&k3, &want);
        assert!((want[0] + 0.010_653_07).abs() < 1e-8);
        assert!(token_rewards(&[], &[], KlEstimator::K1, 0.1, 2.0).is_empty());
        assert!(KlEstimator::K3.at(-3.0, -1.0) >= 0.0 && KlEstimator::K3.at(-1.0, -1.0) == 0.0);
    }

    /// r = (0, 0, 1), V = (0.5, 0.6, 0.7), γ = 1, λ = 0.95:
    /// δ₂ = 1 − 0.7 = 0.3 → A₂ = 0.3; δ₁ = 0.7 − 0.6 = 0.1 → A₁ = 0.1 + 0.95·0.3 = 0.385;
    /// δ₀ = 0.6 − 0.5 = 0.1 → A₀ = 0.1 + 0.95·0.385 = 0.46575; R = A + V.
    /// With λ = 1 the advantage is the return-to-go minus the value: (0.5, 0.4, 0.3).
    #[test]
    fn gae_matches_the_hand_recursion() {
        let (rewards, values) = ([0.0, 0.0, 1.0], [0.5, 0.6, 0.7]);
        let (a, r) = gae(&rewards, &values, 1.0, 0.95);
        close(&a, &[0.46575, 0.385, 0.3]);
        close(&r, &[0.96575, 0.985, 1.0]);
        let (a, _) = gae(&rewards, &values, 1.0, 1.0);
        close(&a, &[0.5, 0.4, 0.3]);
        // γ = 0.5, λ = 0: one-step TD errors r_t + γV_{t+1} − V_t.
        let (a, _) = gae(&rewards, &values, 0.5, 0.0);
        close(&a, &[0.3 - 0.5, 0.35 - 0.6, 0.3]);
    }

    /// Four tokens, γ = 0.9, λ = 0.8 (γλ = 0.72), r = (0.1, −0.2, 0, 1),
    /// V = (0.5, 0.4, 0.3, 0.6):
    /// δ₃ = 1 − 0.6 = 0.4                    → A₃ = 0.4
    /// δ₂ = 0 + 0.9·0.6 − 0.3 = 0.24         → A₂ = 0.24 + 0.72·0.4 = 0.528
    /// δ₁ = −0.2 + 0.9·0.3 − 0.4 = −0.33     → A₁ = −0.33 + 0.72·0.528 = 0.05016
    /// δ₀ = 0.1 + 0.9·0.4 − 0.5 = −0.04      → A₀ = −0.04 + 0.72·0.05016 = −0.0038848
    /// R = A + V = (0.4961152, 0.45016, 0.828, 1.0).
    #[test]
    fn gae_on_four_tokens_with_discount() {
        let (a, r) = gae(&[0.1, -0.2, 0.0, 1.0], &[0.5, 0.4, 0.3, 0.6], 0.9, 0.8);
        close(&a, &[-0.0038848, 0.05016, 0.528, 0.4]);
        close(&r, &[0.4961152, 0.45016, 0.828, 1.0]);
    }

    /// (1, 2, 3, 4): μ = 2.5, unbiased σ² = 5/3, so (x − μ)/σ = ±0.387298, ±1.161895.
    #[test]
    fn whitening_uses_the_unbiased_variance_and_keeps_the_mean_when_asked() {
        let mut x = [1.0, 2.0, 3.0, 4.0];
        whiten(&mut x, true);
        let s = (5.0f64 / 3.0 + 1e-8).sqrt();
        close(&x, &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]);
        assert!((x[3] - 1.161_895).abs() < 1e-6);
        let mut y = [1.0, 2.0, 3.0, 4.0];
        whiten(&mut y, false);
        close(
            &y,
            &[2.5 - 1.5 / s, 2.5 - 0.5 / s, 2.5 + 0.5 / s, 2.5 + 1.5 / s],
        );
        let mut one = [7.0];
        whiten(&mut one, true);
        assert_eq!(one, [7.0]);
    }

    /// β = 0.05, target 6, horizon 10 000, 512 samples: KL 12 → error clipped to
    /// +0.2 → β·(1 + 0.2·512/10⁴) = 0.050512; KL 3 → −0.2 → 0.049488; KL 6.6 →
    /// +0.1 → 0.050256.
    #[test]
    fn the_adaptive_coefficient_follows_ziegler() {
        for (kl, want) in [(12.0, 0.050_512), (3.0, 0.049_488), (6.6, 0.050_256)] {
            let mut c = AdaptiveKl {
                value: 0.05,
                target: 6.0,
                horizon: 10_000.0,
            };
            c.update(kl, 512);
            assert!((c.value - want).abs() < 1e-12, "{kl}: {}", c.value);
        }
    }
}
