//! The objectives of RLOO and GRPO as pure functions: advantages from
//! rewards (host numbers), and the clipped policy losses (tensors) with their
//! diagnostics.
//!
//! Notation, per completion i of a group of G completions of one prompt and
//! per completion token t:
//!
//! ```text
//! r_i          sequence reward (weighted sum of the reward functions)
//! logp_t       log π_θ(token_t | context), from temperature-scaled logits
//! old_t        the same under the policy that sampled the rollout (π_old)
//! ref_t        the same under the reference policy π_ref
//! ratio        exp(logp − old): per token (GRPO) or per sequence (RLOO)
//! ```
//!
//! - RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
//!   Optimization for Learning from Human Feedback in LLMs", eq. 6 and §3.2), as
//!   TRL's `RLOOTrainer` computes it: the k1 KL estimate Σ_t (old_t − ref_t) is
//!   a reward penalty r_i − β·KL_i (no gradient); the advantage is r_i minus
//!   the mean reward of the other G − 1 completions; the loss is PPO's clipped
//!   objective on the sequence ratio exp(Σ_t logp_t − Σ_t old_t), averaged over
//!   sequences.
//! - GRPO (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical
//!   Reasoning in Open Language Models", eq. 3 and §4.1.2), as TRL's
//!   `GRPOTrainer` computes it: the advantage is r_i minus its group's mean,
//!   divided by a standard deviation chosen by [`ScaleRewards`]; the loss is
//!   PPO's clipped objective per token plus β times the k3 KL estimate
//!   exp(ref − logp) − (ref − logp) − 1 per token, aggregated over tokens as
//!   [`LossType`] says.
//!
//! A token or sequence is clipped low when ratio < 1 − ε_low with a negative
//! advantage and high when ratio > 1 + ε_high with a positive one: exactly the
//! cases where the clipped term wins the min and the gradient vanishes.
//!
//! See: TRL `trl/trainer/rloo_trainer.py` (`_generate_and_score_completions`,
//! `_compute_loss`) and `trl/trainer/grpo_trainer.py` (same names).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

/// Added to a standard deviation before dividing by it (TRL's 1e-4).
pub const STD_EPS: f64 = 1e-4;

/// How GRPO scales the group-centred rewards r_i − mean(group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// ÷ (std of the group + 1e-4): GRPO as published (Shao et al. 2024, eq. 3).
    #[default]
    Group,
    /// ÷ (std of the whole batch + 1e-4): "PPO-Lite" (Liu et al. 2025, "Part I:
    /// Tricks or Traps? A Deep Dive into RL for LLM Reasoning", §4.1.1).
    Batch,
    /// No scaling: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like
    /// Training: A Critical Perspective", §3.1), which argues the std division
    /// weights too-easy and too-hard prompts up.
    None,
}

/// How GRPO aggregates per-token losses into the step's loss. B counts the
/// completions of the optimizer step (masked ones included), N its trained
/// tokens, n_i those of completion i, L `max_completion_length`, M the
/// micro-batches of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Σ_i (Σ_t ℓ_it / n_i) / B: mean over each sequence, then over
    /// sequences (Shao et al. 2024, eq. 3). Longer sequences weigh each of
    /// their tokens less.
    Grpo,
    /// Σ ℓ / (B·L): a constant normaliser, so no length bias (Liu et al. 2025,
    /// "Understanding R1-Zero-Like Training", eq. 4).
    DrGrpo,
    /// Σ ℓ / N: token mean over the whole step (Yu et al. 2025, "DAPO: An
    /// Open-Source LLM Reinforcement Learning System at Scale", eq. 8,
    /// "token-level policy gradient loss"). TRL's default.
    #[default]
    Dapo,
    /// Each micro-batch's token mean, averaged over the M micro-batches:
    /// Σ_m (Σ_{t∈m} ℓ / N_m) / M (TRL's "bnpo", batch-normalised).
    Bnpo,
}

/// PPO's clip range: the ratio is kept within [1 − low, 1 + high].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    pub low: f64,
    pub high: f64,
}

/// Sample standard deviation (n − 1 in the denominator, as torch's `std`); 0
/// for fewer than two values.
pub fn sample_std(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let ss: f64 = x.iter().map(|v| (v - mean) * (v - mean)).sum();
    (ss / (n - 1) as f64).sqrt()
}

/// Rewards grouped by prompt: `rewards` holds `group` consecutive completions
/// per prompt.
fn groups(rewards: &[f64], group: usize) -> std::slice::Chunks<'_, f64> {
    assert!(
        group >= 2 && rewards.len().is_multiple_of(group),
        "{} rewards do not form groups of {group}",
        rewards.len()
    );
    rewards.chunks(group)
}

/// Fraction of groups whose rewards are all equal (std 0): they give GRPO and
/// RLOO no learning signal. TRL's `frac_reward_zero_std` (always per group
/// here, also under [`ScaleRewards::Batch`]).
pub fn frac_zero_std(rewards: &[f64], group: usize) -> f64 {
    let g = groups(rewards, group);
    let n = g.len().max(1) as f64;
    g.filter(|x| sample_std(x) == 0.0).count() as f64 / n
}

/// GRPO advantages: r_i − mean(group of i), divided by std + 1e-4 per
/// `scale` (see [`ScaleRewards`]).
pub fn grpo_advantages(rewards: &[f64], group: usize, scale: ScaleRewards) -> Vec<f64> {
    let batch_std = sample_std(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    for g in groups(rewards, group) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let divisor = match scale {
            ScaleRewards::Group => sample_std(g) + STD_EPS,
            ScaleRewards::Batch => batch_std + STD_EPS,
            ScaleRewards::None => 1.0,
        };
        out.extend(g.iter().map(|r| (r - mean) / divisor));
    }
    out
}

/// RLOO advantages: r_i minus the mean of the other G − 1 rewards of its group,
/// (Σ_group − r_i)/(G − 1) (Ahmadian et al. 2024, eq. 6). With `normalize`,
/// then standardised over the batch: (A − mean)/(std + 1e-4) (TRL's
/// `normalize_advantages`).
pub fn rloo_advantages(rewards: &[f64], group: usize, normalize: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in groups(rewards, group) {
        let sum: f64 = g.iter().sum();
        let others = (g.len() - 1) as f64;
        out.extend(g.iter().map(|r| r - (sum - r) / others));
    }
    if normalize {
        let mean = out.iter().sum::<f64>() / out.len().max(1) as f64;
        let std = sample_std(&out);
        out.iter_mut()
            .for_each(|a| *a = (*a - mean) / (std + STD_EPS));
    }
    out
}

/// The k1 estimate of KL(π‖π_ref) for one sequence: Σ_t (logp_t − ref_t)
/// (Schulman 2020, "Approximating KL Divergence"). Unbiased for samples of π,
/// but a single token's term can be negative.
pub fn k1_sequence(logp: &[f32], ref_logp: &[f32]) -> f64 {
    logp.iter()
        .zip(ref_logp)
        .map(|(&a, &b)| a as f64 - b as f64)
        .sum()
}

/// RLOO's KL-penalised reward r − β·KL (TRL: the penalty is applied before
/// the leave-one-out baseline, so it shifts advantages too).
pub fn kl_penalised(rewards: &[f64], kl: &[f64], beta: f64) -> Vec<f64> {
    rewards.iter().zip(kl).map(|(r, k)| r - beta * k).collect()
}

/// The k3 estimate of KL(π‖π_ref) per token: exp(ref − logp) − (ref − logp) − 1
/// (Schulman 2020): unbiased, never negative, differentiable in `logp`.
///
/// Shapes: [N] → [N].
pub fn k3<B: Backend>(logp: Tensor<B, 1>, ref_logp: Tensor<B, 1>) -> Tensor<B, 1> {
    let d = ref_logp - logp;
    d.clone().exp() - d - 1.0
}

/// The reward after the "EOS trick" (Huang et al. 2024, "The N+
/// Implementation Details of RLHF with PPO", detail 23): a completion that
/// never ended (no EOS, no stop string) loses `penalty`. TRL's
/// `missing_eos_penalty`.
pub fn eos_penalised(reward: f64, terminated: bool, penalty: Option<f64>) -> f64 {
    match penalty {
        Some(p) if !terminated => reward - p,
        _ => reward,
    }
}

/// Whether a completion's tokens enter the loss: with
/// `mask_truncated_completions`, a completion cut at `max_completion_length`
/// does not (it still counts as a sequence in B; DAPO's "overlong filtering",
/// Yu et al. 2025 §3.4).
pub fn is_trained(terminated: bool, mask_truncated: bool) -> bool {
    terminated || !mask_truncated
}

/// The weight of each trained token of each completion in the step's loss,
/// per micro-batch: `active[m][i]` is the number of trained tokens of
/// completion i of micro-batch m (0 for a masked one). The loss of the step
/// is Σ_tokens weight · ℓ_t (see [`LossType`]).
pub fn token_weights(loss_type: LossType, active: &[Vec<usize>], max_len: usize) -> Vec<Vec<f64>> {
    token_weights_over(loss_type, active, max_len, StepCounts::of(active))
}

/// What GRPO's normalisers count over a step: B sequences, N trained tokens,
/// M micro-batches (a distributed step's are summed over its ranks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCounts {
    pub sequences: f64,
    pub tokens: f64,
    pub micro_batches: f64,
}

impl StepCounts {
    /// The counts of `active` (each micro-batch's rows' trained tokens).
    pub fn of(active: &[Vec<usize>]) -> Self {
        Self {
            sequences: active.iter().map(Vec::len).sum::<usize>() as f64,
            tokens: active.iter().flatten().sum::<usize>() as f64,
            micro_batches: active.len() as f64,
        }
    }
}

/// [`token_weights`] of this rank's micro-batches `active` with the whole
/// step's counts `step`.
pub fn token_weights_over(
    loss_type: LossType,
    active: &[Vec<usize>],
    max_len: usize,
    step: StepCounts,
) -> Vec<Vec<f64>> {
    let b = step.sequences.max(1.0);
    let n = step.tokens.max(1.0) as usize;
    let m = step.micro_batches.max(1.0);
    active
        .iter()
        .map(|micro| {
            let n_micro: usize = micro.iter().sum();
            micro
                .iter()
                .map(|&n_i| match loss_type {
                    LossType::Grpo => 1.0 / (n_i.max(1) as f64 * b),
                    LossType::DrGrpo => 1.0 / (b * max_len.max(1) as f64),
                    LossType::Dapo => 1.0 / n.max(1) as f64,
                    LossType::Bnpo => 1.0 / (n_micro.max(1) as f64 * m),
                })
                .collect()
        })
        .collect()
}

/// The tensors of one micro-batch's GRPO loss, one entry per trained token.
#[derive(Debug, Clone)]
pub struct GrpoInputs<B: Backend> {
    /// log π_θ, differentiable. [N]
    pub logp: Tensor<B, 1>,
    /// log π_old; `None` on the first pass over a rollout, where π_old is the
    /// current policy: the ratio is then exp(logp − stop_grad(logp)), exactly 1,
    /// with the gradient of logp. [N]
    pub old_logp: Option<Tensor<B, 1>>,
    /// log π_ref; `None` when β = 0 (no reference forward at all). [N]
    pub ref_logp: Option<Tensor<B, 1>>,
    /// The advantage of each token's completion. [N]
    pub advantage: Tensor<B, 1>,
    /// Each token's weight in the step's loss ([`token_weights`]). [N]
    pub weight: Tensor<B, 1>,
}

/// A policy loss and its diagnostics (no gradient), per token (GRPO) or per
/// sequence (RLOO).
#[derive(Debug, Clone)]
pub struct PolicyLoss<B: Backend> {
    /// The micro-batch's contribution to the step's loss. [1]
    pub loss: Tensor<B, 1>,
    /// exp(logp − old). [N]
    pub ratio: Tensor<B, 1>,
    /// Clipped low / high (see the module docs), as 0/1. [N]
    pub low_clipped: Tensor<B, 1>,
    pub high_clipped: Tensor<B, 1>,
    /// The k3 KL per token (GRPO with β > 0). [N]
    pub kl: Option<Tensor<B, 1>>,
}

/// −min(ratio·A, clip(ratio)·A) and the clip masks.
fn clipped_surrogate<B: Backend>(
    log_ratio: Tensor<B, 1>,
    advantage: Tensor<B, 1>,
    clip: Clip,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let ratio = log_ratio.exp();
    let clipped = ratio.clone().clamp(1.0 - clip.low, 1.0 + clip.high);
    let unclipped_term = ratio.clone() * advantage.clone();
    let clipped_term = clipped * advantage.clone();
    let per_item = unclipped_term.min_pair(clipped_term).neg();
    let r = ratio.clone().detach();
    let a = advantage.detach();
    let both = |x: Tensor<B, 1, Bool>, y: Tensor<B, 1, Bool>| x.float().mul(y.float());
    let low = both(
        r.clone().lower_elem(1.0 - clip.low),
        a.clone().lower_elem(0.0),
    );
    let high = both(r.clone().greater_elem(1.0 + clip.high), a.greater_elem(0.0));
    (per_item, r, low, high)
}

/// GRPO's loss over the trained tokens of one micro-batch:
/// Σ_t w_t · (−min(ratio_t·A_t, clip(ratio_t)·A_t) + β·k3_t).
pub fn grpo_loss<B: Backend>(inputs: GrpoInputs<B>, clip: Clip, beta: f64) -> PolicyLoss<B> {
    let GrpoInputs {
        logp,
        old_logp,
        ref_logp,
        advantage,
        weight,
    } = inputs;
    let old = old_logp.unwrap_or_else(|| logp.clone().detach());
    let (mut per_token, ratio, low, high) = clipped_surrogate(logp.clone() - old, advantage, clip);
    let kl = match ref_logp {
        Some(r) if beta != 0.0 => {
            let kl = k3(logp, r);
            per_token = per_token + kl.clone().mul_scalar(beta);
            Some(kl.detach())
        }
        _ => None,
    };
    PolicyLoss {
        loss: (per_token * weight).sum(),
        ratio,
        low_clipped: low,
        high_clipped: high,
        kl,
    }
}

/// RLOO's loss over the sequences of one micro-batch: each sequence's
/// −min(ratio·A, clip(ratio)·A) with ratio = exp(Σ logp − Σ old), times
/// `weight` (1/B of the step, so the step's loss is the mean over sequences).
///
/// Shapes: `logp_sum`, `old_logp_sum` (None: the first pass, ratio exactly 1),
/// `advantage` [S] → per-sequence diagnostics [S].
pub fn rloo_loss<B: Backend>(
    logp_sum: Tensor<B, 1>,
    old_logp_sum: Option<Tensor<B, 1>>,
    advantage: Tensor<B, 1>,
    weight: f64,
    clip: Clip,
) -> PolicyLoss<B> {
    let old = old_logp_sum.unwrap_or_else(|| logp_sum.clone().detach());
    let (per_seq, ratio, low, high) = clipped_surrogate(logp_sum - old, advantage, clip);
    PolicyLoss {
        loss: per_seq.sum().mul_scalar(weight),
        ratio,
        low_clipped: low,
        high_clipped: high,
        kl: None,
    }
}

/// PPO's clipped value loss and how often the clipped branch decided it.
#[derive(Debug, Clone)]
pub struct ValueLoss<B: Backend> {
    /// The micro-batch's contribution to the step's loss. [1]
    pub loss: Tensor<B, 1>,
    /// 1 where the clipped error was the larger (no gradient). [N]
    pub clipped: Tensor<B, 1>,
}

/// PPO's value loss over the trained tokens of one micro-batch (Huang et al.
/// 2024, detail 12; TRL's `PPOTrainer`): the critic's new values V may move
/// at most ε_v from the values V_old it gave when the rollout was scored,
///
/// ```text
/// Σ_t w_t · ½·max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −ε_v, ε_v) − R_t)²)
/// ```
///
/// with R_t the GAE returns ([`crate::gae::gae`]) and w_t the token weights
/// (1/N for the mean over N tokens). Shapes: all [N].
pub fn value_loss<B: Backend>(
    values: Tensor<B, 1>,
    old_values: Tensor<B, 1>,
    returns: Tensor<B, 1>,
    weight: Tensor<B, 1>,
    clip_range: f64,
) -> ValueLoss<B> {
    let moved = (values.clone() - old_values.clone()).clamp(-clip_range, clip_range);
    let unclipped = (values - returns.clone()).powi_scalar(2);
    let clipped = (old_values + moved - returns).powi_scalar(2);
    let which = clipped.clone().greater(unclipped.clone()).float().detach();
    ValueLoss {
        loss: (unclipped.max_pair(clipped) * weight).sum().mul_scalar(0.5),
        clipped: which,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type A = Autodiff<Flex>;

    fn t(v: &[f64]) -> Tensor<A, 1> {
        let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::from_data(TensorData::new(v.clone(), [v.len()]), &Default::default())
    }
    fn values(x: Tensor<A, 1>) -> Vec<f64> {
        x.into_data().convert::<f64>().into_vec::<f64>().unwrap()
    }
    fn close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }
    const CLIP: Clip = Clip {
        low: 0.2,
        high: 0.28,
    };

    /// ε_v = 0.2, weights ½ each.
    /// Token 0: V 1.0, V_old 0.5, R 2: unclipped (1 − 2)² = 1, clipped V 0.7 →
    /// (0.7 − 2)² = 1.69, the larger (counted clipped; no gradient to V).
    /// Token 1: V 1.0, V_old 0.5, R 0: unclipped 1, clipped 0.49 → 1, gradient
    /// ½·½·2·(V − R) = 0.5. Loss ½·(½·1.69 + ½·1) = 0.6725.
    #[test]
    fn value_loss_clips_the_critic_s_move() {
        let v = t(&[1.0, 1.0]).require_grad();
        let out = value_loss(
            v.clone(),
            t(&[0.5, 0.5]),
            t(&[2.0, 0.0]),
            t(&[0.5, 0.5]),
            0.2,
        );
        close(&values(out.loss.clone()), &[0.6725], 1e-6);
        close(&values(out.clipped), &[1.0, 0.0], 0.0);
        let grads = out.loss.backward();
        let g = v.grad(&grads).unwrap();
        let g: Vec<f64> = g.into_data().convert::<f64>().into_vec::<f64>().unwrap();
        close(&g, &[0.0, 0.5], 1e-6);
    }

    #[test]
    fn leave_one_out_baseline() {
        // G = 3, rewards (1, 2, 6): baselines (2+6)/2 = 4, (1+6)/2 = 3.5,
        // (1+2)/2 = 1.5 → advantages (−3, −1.5, 4.5). G = 2 with (1, 3): ±2.
        close(
            &rloo_advantages(&[1.0, 2.0, 6.0], 3, false),
            &[-3.0, -1.5, 4.5],
            1e-12,
        );
        close(
            &rloo_advantages(&[1.0, 3.0, 5.0, 5.0], 2, false),
            &[-2.0, 2.0, 0.0, 0.0],
            1e-12,
        );
        // Normalised over the batch: (−2, 2, 0, 0) has mean 0 and sample std
        // √(8/3) = 1.6329932 → ±2/1.6330932 = ±1.2246699.
        close(
            &rloo_advantages(&[1.0, 3.0, 5.0, 5.0], 2, true),
            &[-1.2246699, 1.2246699, 0.0, 0.0],
            1e-6,
        );
    }

    #[test]
    fn rloo_kl_penalty_enters_the_reward_before_the_baseline() {
        // Per-token log-probs (old, ref): sequence 1 (−1, −2), (−1.5, −1) →
        // k1 = 1 + (−0.5) = 0.5; sequence 2 (−2, −1) → −1 (k1 may be negative).
        let kl = [
            k1_sequence(&[-1.0, -1.5], &[-2.0, -1.0]),
            k1_sequence(&[-2.0], &[-1.0]),
        ];
        close(&kl, &[0.5, -1.0], 1e-12);
        // β = 0.1, rewards (1, 2) → (0.95, 2.1) → LOO advantages ∓1.15.
        let r = kl_penalised(&[1.0, 2.0], &kl, 0.1);
        close(&r, &[0.95, 2.1], 1e-12);
        close(&rloo_advantages(&r, 2, false), &[-1.15, 1.15], 1e-12);
    }

    /// Groups (1, 2, 3), (0, 0, 4), (2, 2, 2).
    #[test]
    fn group_normalisation_under_each_scale() {
        let r = [1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 2.0, 2.0, 2.0];
        // Group: means 2, 4/3, 2; sample stds 1, √(16/3) = 2.3094011, 0.
        //   (−1, 0, 1)/1.0001 = ±0.9999000; (−4/3, −4/3, 8/3)/2.3095011 =
        //   (−0.5773253, −0.5773253, 1.1546505); (0, 0, 0)/1e-4 = 0.
        close(
            &grpo_advantages(&r, 3, ScaleRewards::Group),
            &[
                -0.9999000, 0.0, 0.9999000, -0.5773253, -0.5773253, 1.1546505, 0.0, 0.0, 0.0,
            ],
            1e-6,
        );
        // Batch: one std over all nine, Σr = 16, Σr² = 42 →
        //   Σ(r − 16/9)² = 42 − 256/9 = 122/9, /8 → std = √(122/72) = 1.3017083;
        //   (−1, 0, 1)/1.3018083 = ±0.7681623; (−4/3, 8/3)/1.3018083 = −1.0242164, 2.0484327.
        close(
            &grpo_advantages(&r, 3, ScaleRewards::Batch),
            &[
                -0.7681623, 0.0, 0.7681623, -1.0242164, -1.0242164, 2.0484327, 0.0, 0.0, 0.0,
            ],
            1e-6,
        );
        // None: centred only.
        close(
            &grpo_advantages(&r, 3, ScaleRewards::None),
            &[
                -1.0,
                0.0,
                1.0,
                -4.0 / 3.0,
                -4.0 / 3.0,
                8.0 / 3.0,
                0.0,
                0.0,
                0.0,
            ],
            1e-12,
        );
        // One group of three has std 0.
        close(&[frac_zero_std(&r, 3)], &[1.0 / 3.0], 1e-12);
    }

    /// A ragged step of two micro-batches: completions with 2 and 4 trained
    /// tokens, then 1 and a masked one (0). B = 4, N = 7, L = 5, M = 2.
    #[test]
    fn each_loss_type_normaliser_on_a_ragged_batch() {
        let active = vec![vec![2, 4], vec![1, 0]];
        // grpo: 1/(n_i·B) = 1/8, 1/16, 1/4 (and 1/4 for the masked one, which has no token).
        assert_eq!(
            token_weights(LossType::Grpo, &active, 5),
            vec![vec![0.125, 0.0625], vec![0.25, 0.25]]
        );
        // dr_grpo: 1/(B·L) = 1/20 everywhere.
        assert_eq!(
            token_weights(LossType::DrGrpo, &active, 5),
            vec![vec![0.05; 2], vec![0.05; 2]]
        );
        // dapo: 1/N = 1/7 everywhere.
        assert_eq!(
            token_weights(LossType::Dapo, &active, 5),
            vec![vec![1.0 / 7.0; 2], vec![1.0 / 7.0; 2]]
        );
        // bnpo: 1/(N_m·M): 1/(6·2) = 1/12 in the first, 1/(1·2) = 1/2 in the second.
        assert_eq!(
            token_weights(LossType::Bnpo, &active, 5),
            vec![vec![1.0 / 12.0; 2], vec![0.5; 2]]
        );
        // With every per-token loss 1, the grpo step loss is the mean over
        // sequences of per-sequence means, with the masked one contributing 0:
        // (2/8 + 4/16 + 1/4 + 0) = 3/4; dapo's is 7/7 = 1; bnpo's (6/12 + 1/2) = 1.
        let sum = |w: Vec<Vec<f64>>| -> f64 {
            w.iter()
                .zip(&active)
                .flat_map(|(wm, am)| wm.iter().zip(am).map(|(w, &n)| w * n as f64))
                .sum()
        };
        close(
            &[sum(token_weights(LossType::Grpo, &active, 5))],
            &[0.75],
            1e-12,
        );
        close(
            &[sum(token_weights(LossType::Dapo, &active, 5))],
            &[1.0],
            1e-12,
        );
        close(
            &[sum(token_weights(LossType::Bnpo, &active, 5))],
            &[1.0],
            1e-12,
        );
        close(
            &[sum(token_weights(LossType::DrGrpo, &active, 5))],
            &[0.35],
            1e-12,
        );
    }

    #[test]
    fn k1_and_k3_estimators() {
        // logp = ln ½, ref = ln ¼: k1 = ln 2 = 0.6931472;
        // k3 = e^(ref−logp) − (ref − logp) − 1 = ½ + ln 2 − 1 = 0.1931472.
        // logp = ref: both 0.
        let (half, quarter) = (0.5f64.ln(), 0.25f64.ln());
        close(
            &[k1_sequence(&[half as f32], &[quarter as f32])],
            &[std::f64::consts::LN_2],
            1e-6,
        );
        close(
            &values(k3(t(&[half, -1.0]), t(&[quarter, -1.0]))),
            &[0.1931472, 0.0],
            1e-6,
        );
    }

    /// Four tokens, ratios (1.5, 0.5, 1.1, 0.7), advantages (1, −1, 1, 1),
    /// ε_low 0.2, ε_high 0.28 (ratio kept in [0.8, 1.28]):
    /// - 1.5 with A > 0: min(1.5, 1.28) = 1.28 → ℓ = −1.28, clipped high;
    /// - 0.5 with A < 0: min(−0.5, −0.8) = −0.8 → ℓ = 0.8, clipped low;
    /// - 1.1: inside → ℓ = −1.1;
    /// - 0.7 with A > 0: min(0.7, 0.8) = 0.7 → ℓ = −0.7, not clipped (the
    ///   unclipped term is the pessimistic one).
    ///
    /// Weights 1/4 (dapo, N = 4): loss = (−1.28 + 0.8 − 1.1 − 0.7)/4 = −0.57.
    /// ∂loss/∂logp = −w·ratio·A where unclipped, 0 where clipped:
    /// (0, 0, −0.275, −0.175). Clip ratios: low 1/4, high 1/4, region 1/2.
    #[test]
    fn grpo_clipped_loss_and_clip_ratios() {
        let old = [0.0, 0.0, 0.0, 0.0];
        let logp = t(&[1.5f64.ln(), 0.5f64.ln(), 1.1f64.ln(), 0.7f64.ln()]).require_grad();
        let out = grpo_loss(
            GrpoInputs {
                logp: logp.clone(),
                old_logp: Some(t(&old)),
                ref_logp: None,
                advantage: t(&[1.0, -1.0, 1.0, 1.0]),
                weight: t(&[0.25; 4]),
            },
            CLIP,
            0.04,
        );
        close(&values(out.loss.clone()), &[-0.57], 1e-6);
        close(&values(out.low_clipped.clone()), &[0.0, 1.0, 0.0, 0.0], 0.0);
        close(
            &values(out.high_clipped.clone()),
            &[1.0, 0.0, 0.0, 0.0],
            0.0,
        );
        assert!(out.kl.is_none(), "no reference, no KL");
        let grads = out.loss.backward();
        let g = logp.grad(&grads).unwrap();
        let g: Vec<f64> = g.into_data().convert::<f64>().into_vec().unwrap();
        close(&g, &[0.0, 0.0, -0.275, -0.175], 1e-6);
    }

    /// The KL term: one token, ratio 1 (old = logp), A = 0, logp = ln ½,
    /// ref = ln ¼, β = 0.1, weight 1: loss = β·k3 = 0.1 · 0.1931472 = 0.01931472;
    /// ∂/∂logp of β·(e^(ref−logp) − (ref − logp) − 1) = β·(1 − e^(ref−logp)) = 0.1·½ = 0.05.
    #[test]
    fn grpo_kl_term() {
        let logp = t(&[0.5f64.ln()]).require_grad();
        let out = grpo_loss(
            GrpoInputs {
                logp: logp.clone(),
                old_logp: None,
                ref_logp: Some(t(&[0.25f64.ln()])),
                advantage: t(&[0.0]),
                weight: t(&[1.0]),
            },
            CLIP,
            0.1,
        );
        close(&values(out.loss.clone()), &[0.01931472], 1e-7);
        close(&values(out.kl.clone().unwrap()), &[0.1931472], 1e-6);
        let grads = out.loss.backward();
        let g: Vec<f64> = logp
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .into_vec()
            .unwrap();
        close(&g, &[0.05], 1e-6);
    }

    /// On the first pass π_old is the current policy: the ratio is exactly 1
    /// (bit for bit), nothing is clipped, and the loss is −Σ w·A with gradient
    /// −w·A per token: advantages (2, −1), weights ½ → loss −½, gradient (−1, ½).
    #[test]
    fn ratio_is_exactly_one_on_the_first_pass() {
        let logp = t(&[-3.7, -0.01]).require_grad();
        let out = grpo_loss(
            GrpoInputs {
                logp: logp.clone(),
                old_logp: None,
                ref_logp: None,
                advantage: t(&[2.0, -1.0]),
                weight: t(&[0.5, 0.5]),
            },
            Clip {
                low: 0.0,
                high: 0.0,
            },
            0.0,
        );
        for r in values(out.ratio.clone()) {
            assert_eq!(r.to_bits(), 1.0f64.to_bits());
        }
        close(&values(out.low_clipped.clone()), &[0.0, 0.0], 0.0);
        close(&values(out.loss.clone()), &[-0.5], 1e-7);
        let grads = out.loss.backward();
        let g: Vec<f64> = logp
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .into_vec()
            .unwrap();
        close(&g, &[-1.0, 0.5], 1e-7);

        let seq = t(&[-12.5, -3.0]);
        let out = rloo_loss(seq, None, t(&[1.0, -1.0]), 0.5, CLIP);
        for r in values(out.ratio) {
            assert_eq!(r.to_bits(), 1.0f64.to_bits());
        }
    }

    /// Sequence ratios (1.5, 0.5), advantages (2, 1), ε = 0.2 both ways, B = 2:
    /// - 1.5, A = 2: min(3, 1.2·2 = 2.4) = 2.4 → −2.4, clipped high;
    /// - 0.5, A = 1: min(0.5, 0.8) = 0.5 → −0.5, not clipped (A > 0).
    ///
    /// Loss (−2.4 − 0.5)/2 = −1.45.
    #[test]
    fn rloo_sequence_level_clipped_loss() {
        let out = rloo_loss(
            t(&[1.5f64.ln() - 4.0, 0.5f64.ln() - 7.0]),
            Some(t(&[-4.0, -7.0])),
            t(&[2.0, 1.0]),
            0.5,
            Clip {
                low: 0.2,
                high: 0.2,
            },
        );
        close(&values(out.loss), &[-1.45], 1e-5);
        close(&values(out.high_clipped), &[1.0, 0.0], 0.0);
        close(&values(out.low_clipped), &[0.0, 0.0], 0.0);
    }

    #[test]
    fn eos_penalty_and_truncation_mask() {
        // Penalty 1: an ended completion keeps 1.0, a truncated one 0.5 → −0.5.
        close(
            &[
                eos_penalised(1.0, true, Some(1.0)),
                eos_penalised(0.5, false, Some(1.0)),
                eos_penalised(0.5, false, None),
            ],
            &[1.0, -0.5, 0.5],
            0.0,
        );
        assert!(is_trained(true, true));
        assert!(!is_trained(false, true));
        assert!(is_trained(false, false));
    }
}
