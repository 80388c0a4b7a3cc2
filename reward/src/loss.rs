//! The reward-model objective: the Bradley–Terry pairwise loss
//! −log σ(r_c − r_r − m), as TRL's `RewardTrainer` computes it.
//!
//! r_c, r_r are the scalar rewards of the chosen and rejected sequences; m an
//! optional per-pair margin from the data (Touvron et al. 2023, "Llama 2",
//! eq. 2: a larger margin for more distinct pairs); and, optionally,
//! c · (r_c + r_r)² with c = `center_rewards_coefficient`, which pulls the mean
//! reward towards 0 (Eisenstein et al. 2023, "Helping or Herding? Reward Model
//! Ensembles Mitigate but do not Eliminate Reward Hacking", eq. 2).
//!
//! See: Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs";
//! Ouyang et al. 2022, "Training language models to follow instructions with
//! human feedback", eq. 1; TRL `trl/trainer/reward_trainer.py` `compute_loss`.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;

use crate::error::{Result, RewardError};

/// The objective's settings, validated by [`RewardObjective::new`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RewardObjective {
    /// c of the centring term c · mean((r_c + r_r)²); `None` for none.
    pub center_rewards_coefficient: Option<f64>,
}

impl RewardObjective {
    pub fn new(center_rewards_coefficient: Option<f64>) -> Result<Self> {
        if let Some(c) = center_rewards_coefficient
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(RewardError::Config {
                field: "center_rewards_coefficient".into(),
                message: format!("must be a non-negative number, got {c}"),
            });
        }
        Ok(Self {
            center_rewards_coefficient,
        })
    }
}

/// The losses of a batch of N pairs.
#[derive(Debug, Clone)]
pub struct RewardLossOutput<B: Backend> {
    /// −log σ(r_c − r_r − m) + c·(r_c + r_r)² per pair, differentiable. [N]
    pub losses: Tensor<B, 1>,
}

impl<B: Backend> RewardLossOutput<B> {
    /// The batch loss as TRL computes it: the mean over pairs (both TRL terms are
    /// pair means, so the mean of their per-pair sum is their sum). [1]
    pub fn loss(&self) -> Tensor<B, 1> {
        let pairs = self.losses.dims()[0] as f64;
        self.loss_normalized(pairs)
    }

    /// This batch's share of the mean over a whole optimizer step of
    /// `step_pairs` pairs, for gradient accumulation. [1]
    pub fn loss_normalized(&self, step_pairs: f64) -> Tensor<B, 1> {
        self.losses.clone().sum() / step_pairs.max(1.0)
    }
}

/// The Bradley–Terry loss of N pairs of rewards.
///
/// Shapes: chosen, rejected, margin [N] → losses [N].
pub fn bradley_terry_loss<B: Backend>(
    objective: &RewardObjective,
    chosen: Tensor<B, 1>,
    rejected: Tensor<B, 1>,
    margin: Option<Tensor<B, 1>>,
) -> RewardLossOutput<B> {
    let mut diff = chosen.clone() - rejected.clone();
    if let Some(m) = margin {
        diff = diff - m;
    }
    let mut losses = log_sigmoid(diff).neg();
    if let Some(c) = objective.center_rewards_coefficient {
        losses = losses + (chosen + rejected).powi_scalar(2) * c;
    }
    RewardLossOutput { losses }
}

/// Sums over the pairs of one or more batches, from which TRL's logged
/// `loss`, `accuracy`, `margin`, `min_reward`, `mean_reward`, `max_reward` are taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardSums {
    pub pairs: usize,
    /// Σ per-pair loss.
    pub loss: f64,
    /// Pairs with r_c > r_r (strictly, as TRL).
    pub correct: f64,
    /// Σ (r_c − r_r).
    pub margin: f64,
    /// Σ over all 2N rewards, and their extremes.
    pub reward_sum: f64,
    pub reward_min: f64,
    pub reward_max: f64,
}

impl RewardSums {
    /// These sums over the ranks of a run: `sum` adds over the ranks,
    /// `gather` gives every rank's values (for the extremes). One process:
    /// both return their input.
    pub fn summed<E>(
        self,
        sum: impl FnOnce(&[f64]) -> Result<Vec<f64>, E>,
        gather: impl FnOnce(&[f64]) -> Result<Vec<Vec<f64>>, E>,
    ) -> Result<Self, E> {
        let local = [
            self.pairs as f64,
            self.loss,
            self.correct,
            self.margin,
            self.reward_sum,
        ];
        let s = sum(&local)?;
        let all = gather(&[self.reward_min, self.reward_max])?;
        Ok(Self {
            pairs: s[0] as usize,
            loss: s[1],
            correct: s[2],
            margin: s[3],
            reward_sum: s[4],
            reward_min: all.iter().map(|v| v[0]).fold(f64::INFINITY, f64::min),
            reward_max: all.iter().map(|v| v[1]).fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

impl Default for RewardSums {
    fn default() -> Self {
        Self {
            pairs: 0,
            loss: 0.0,
            correct: 0.0,
            margin: 0.0,
            reward_sum: 0.0,
            reward_min: f64::INFINITY,
            reward_max: f64::NEG_INFINITY,
        }
    }
}

impl std::ops::AddAssign for RewardSums {
    fn add_assign(&mut self, o: Self) {
        self.pairs += o.pairs;
        self.loss += o.loss;
        self.correct += o.correct;
        self.margin += o.margin;
        self.reward_sum += o.reward_sum;
        self.reward_min = self.reward_min.min(o.reward_min);
        self.reward_max = self.reward_max.max(o.reward_max);
    }
}

impl RewardSums {
    /// Read a batch's diagnostics back from the device (one sync).
    pub fn of<B: Backend>(
        output: &RewardLossOutput<B>,
        chosen: Tensor<B, 1>,
        rejected: Tensor<B, 1>,
    ) -> Self {
        let to_vec = |t: Tensor<B, 1>| -> Vec<f64> {
            t.detach()
                .into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .unwrap_or_default()
        };
        Self::from_values(
            &to_vec(output.losses.clone()),
            &to_vec(chosen),
            &to_vec(rejected),
        )
    }

    /// The same from host values.
    pub fn from_values(losses: &[f64], chosen: &[f64], rejected: &[f64]) -> Self {
        let all = chosen.iter().chain(rejected);
        Self {
            pairs: chosen.len(),
            loss: losses.iter().sum(),
            correct: chosen.iter().zip(rejected).filter(|(c, r)| c > r).count() as f64,
            margin: chosen.iter().zip(rejected).map(|(c, r)| c - r).sum(),
            reward_sum: all.clone().sum(),
            reward_min: all.clone().copied().fold(f64::INFINITY, f64::min),
            reward_max: all.copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    fn mean(&self, sum: f64) -> f64 {
        sum / self.pairs.max(1) as f64
    }

    /// `loss`.
    pub fn loss(&self) -> f64 {
        self.mean(self.loss)
    }
    /// `accuracy`.
    pub fn accuracy(&self) -> f64 {
        self.mean(self.correct)
    }
    /// `margin`: mean r_c − r_r.
    pub fn margin(&self) -> f64 {
        self.mean(self.margin)
    }
    /// `mean_reward` over chosen and rejected alike.
    pub fn mean_reward(&self) -> f64 {
        self.reward_sum / (2 * self.pairs).max(1) as f64
    }
    /// `min_reward`.
    pub fn min_reward(&self) -> f64 {
        self.reward_min
    }
    /// `max_reward`.
    pub fn max_reward(&self) -> f64 {
        self.reward_max
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    use super::*;

    type B = Flex;

    fn t(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }
    fn values(x: Tensor<B, 1>) -> Vec<f64> {
        x.into_data().convert::<f64>().into_vec::<f64>().unwrap()
    }
    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    // Two pairs: (r_c, r_r) = (1.5, 0.5) and (−0.5, 0.5), so r_c − r_r = 1 and −1.
    // −log σ(x) = softplus(−x) = ln(1 + e^−x):
    //   softplus(−1) = ln 1.3678794 = 0.3132617;  softplus(1) = 0.3132617 + 1 = 1.3132617.
    const CHOSEN: [f32; 2] = [1.5, -0.5];
    const REJECTED: [f32; 2] = [0.5, 0.5];

    #[test]
    fn bradley_terry_golden() {
        let out = bradley_terry_loss(&RewardObjective::default(), t(&CHOSEN), t(&REJECTED), None);
        assert_close(
            &values(out.losses.clone()),
            &[0.313_261_7, 1.313_261_7],
            1e-6,
        );
        // Mean: (0.3132617 + 1.3132617)/2 = 0.8132617.
        assert_close(&values(out.loss()), &[0.813_261_7], 1e-6);
        let s = RewardSums::of(&out, t(&CHOSEN), t(&REJECTED));
        // accuracy 1/2; margin (1 − 1)/2 = 0; rewards {1.5, −0.5, 0.5, 0.5}:
        // min −0.5, mean 2/4 = 0.5, max 1.5.
        assert_close(
            &[
                s.loss(),
                s.accuracy(),
                s.margin(),
                s.min_reward(),
                s.mean_reward(),
                s.max_reward(),
            ],
            &[0.813_261_7, 0.5, 0.0, -0.5, 0.5, 1.5],
            1e-6,
        );
    }

    #[test]
    fn margin_golden() {
        // Margins (0.25, 0): pair 1 becomes softplus(−(1 − 0.25)) = ln(1 + e^−0.75)
        // = ln 1.4723666 = 0.3868710; pair 2 unchanged 1.3132617; mean 0.8500663.
        let out = bradley_terry_loss(
            &RewardObjective::default(),
            t(&CHOSEN),
            t(&REJECTED),
            Some(t(&[0.25, 0.0])),
        );
        assert_close(
            &values(out.losses.clone()),
            &[0.386_871_0, 1.313_261_7],
            1e-6,
        );
        assert_close(&values(out.loss()), &[0.850_066_3], 1e-6);
    }

    #[test]
    fn centering_golden() {
        // c = 0.01, (r_c + r_r)² = 4 and 0: pair 1 0.3132617 + 0.04 = 0.3532617,
        // pair 2 1.3132617; mean 0.8332617 = BT mean 0.8132617 + c·mean(4, 0) = + 0.02.
        let objective = RewardObjective::new(Some(0.01)).unwrap();
        let out = bradley_terry_loss(&objective, t(&CHOSEN), t(&REJECTED), None);
        assert_close(
            &values(out.losses.clone()),
            &[0.353_261_7, 1.313_261_7],
            1e-6,
        );
        assert_close(&values(out.loss()), &[0.833_261_7], 1e-6);
    }

    #[test]
    fn equal_rewards_give_ln2_and_no_accuracy() {
        let out = bradley_terry_loss(
            &RewardObjective::default(),
            t(&[0.3, -2.0]),
            t(&[0.3, -2.0]),
            None,
        );
        assert_close(&values(out.loss()), &[std::f64::consts::LN_2], 1e-7);
        let s = RewardSums::of(&out, t(&[0.3, -2.0]), t(&[0.3, -2.0]));
        assert_eq!(s.accuracy(), 0.0);
    }

    #[test]
    fn gradient_golden() {
        // d/dr_c −log σ(r_c − r_r) = −σ(−(r_c − r_r)) = −σ(−1) = −0.2689414; the
        // rejected reward gets the opposite. One pair, so the mean is itself.
        type A = Autodiff<Flex>;
        let d = Default::default();
        let rc = Tensor::<A, 1>::from_data(TensorData::new(vec![1.5f32], [1]), &d).require_grad();
        let rr = Tensor::<A, 1>::from_data(TensorData::new(vec![0.5f32], [1]), &d).require_grad();
        let out = bradley_terry_loss(&RewardObjective::default(), rc.clone(), rr.clone(), None);
        let grads = out.loss().backward();
        let g = |x: &Tensor<A, 1>| {
            x.grad(&grads)
                .unwrap()
                .into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .unwrap()
        };
        assert_close(&g(&rc), &[-0.268_941_4], 1e-6);
        assert_close(&g(&rr), &[0.268_941_4], 1e-6);
    }

    #[test]
    fn accumulated_sums_match_one_batch() {
        let mut s = RewardSums::from_values(&[1.0], &[2.0], &[-1.0]);
        s += RewardSums::from_values(&[3.0], &[0.0], &[4.0]);
        assert_eq!(
            s,
            RewardSums::from_values(&[1.0, 3.0], &[2.0, 0.0], &[-1.0, 4.0])
        );
    }

    #[test]
    fn negative_centering_is_rejected() {
        let err = RewardObjective::new(Some(-0.1)).unwrap_err().to_string();
        assert!(err.contains("center_rewards_coefficient"), "{err}");
    }
}
