//! The DPO family of preference losses, as pure functions of per-sequence
//! log-probability sums.
//!
//! Notation (TRL's `DPOTrainer`, which these follow formula for formula):
//! for a pair with policy log-prob sums πc, πr over the chosen / rejected
//! completion tokens and reference sums ρc, ρr,
//!
//! ```text
//! u_c = πc − ρc,   u_r = πr − ρr        (log-ratios; implicit rewards are β·u)
//! h   = u_c − u_r                        (the DPO logit)
//! h̄   = u_c / n_c − u_r / n_r            (per-token, n = completion tokens, ≥ 1)
//! ```
//!
//! Every variant returns one loss per pair; the batch loss is their mean, plus
//! α · (NLL per chosen completion token) when the RPO term is on.
//!
//! See: TRL `trl/trainer/dpo_trainer.py` (`dpo_loss` before the Feb 2026
//! refactor, `_compute_loss` after it; both give the same losses). Where the two
//! TRL versions disagree on diagnostics (IPO's `rewards/*` and `logps/*` were
//! per-token means before the refactor), this follows the current one: log-probs
//! are always sums and rewards are always β·u.

use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{DpoError, Result};

/// The preference loss, one per paper. `h`, `h̄`, `u` as in the module docs;
/// σ the logistic function, ε `label_smoothing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// −(1−ε)·log σ(βh) − ε·log σ(−βh). With ε = 0 the loss of Rafailov et al.
    /// 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    /// Reward Model", eq. 7; with ε > 0 conservative DPO (cDPO, Mitchell 2023,
    /// "A note on DPO with noisy preferences & relationship to IPO").
    #[default]
    Sigmoid,
    /// (h̄ − 1/(2β))². Azar et al. 2023, "A General Theoretical Paradigm to
    /// Understand Learning from Human Preferences", eq. 17 (β is their τ); the
    /// log-ratios are per-token averages, as the IPO authors confirmed to TRL.
    Ipo,
    /// max(0, 1 − βh). Zhao et al. 2023, "SLiC-HF: Sequence Likelihood
    /// Calibration with Human Feedback", eq. 1 on the normalised likelihood
    /// (as Liu et al. 2023, "Statistical Rejection Sampling Improves Preference
    /// Optimization", use it); 1/β is the margin.
    Hinge,
    /// [−(1−ε)·log σ(βh) + ε·log σ(−βh)] / (1 − 2ε): the unbiased loss under
    /// preference labels flipped with probability ε. Chowdhury et al. 2024,
    /// "Provably Robust DPO: Aligning Language Models with Noisy Feedback", eq. 10.
    Robust,
    /// −log σ(βh̄): DPO on length-normalised log-ratios, the length
    /// normalisation of Meng et al. 2024, "SimPO: Simple Preference Optimization
    /// with a Reference-Free Reward", eq. 4 (keeping DPO's reference model).
    SigmoidNorm,
    /// (1 − σ(βu_c)) + σ(βu_r): raise the chosen likelihood, lower the rejected.
    /// For chosen answers better than the model's own. D'Oosterlinck et al. 2024,
    /// "Anchored Preference Optimization and Contrastive Revisions", eq. 7.
    ApoZero,
    /// σ(βu_c) + (1 − σ(βh)): lower both likelihoods, the rejected more. For
    /// chosen answers worse than the model's own. Same paper, eq. 8.
    ApoDown,
}

impl DpoLoss {
    /// The name TRL's `loss_type` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Robust => "robust",
            DpoLoss::SigmoidNorm => "sigmoid_norm",
            DpoLoss::ApoZero => "apo_zero",
            DpoLoss::ApoDown => "apo_down",
        }
    }

    /// Whether the variant reads `label_smoothing`.
    pub fn uses_label_smoothing(self) -> bool {
        matches!(self, DpoLoss::Sigmoid | DpoLoss::Robust)
    }
}

/// The objective's settings, validated by [`DpoObjective::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoObjective {
    pub loss: DpoLoss,
    /// Inverse temperature β of the implicit reward (IPO: the regulariser τ).
    pub beta: f64,
    /// ε: the assumed probability that a preference label is flipped
    /// (`Sigmoid`: cDPO, `Robust`); 0 for every other variant.
    pub label_smoothing: f64,
    /// α of the RPO term α · NLL(chosen) (Pang et al. 2024, "Iterative Reasoning
    /// Preference Optimization", eq. 2; TRL `rpo_alpha`); `None` for none.
    pub rpo_alpha: Option<f64>,
}

impl DpoObjective {
    /// Check the combination up front: a setting the chosen loss would ignore is
    /// an error, not silently dropped.
    pub fn new(
        loss: DpoLoss,
        beta: f64,
        label_smoothing: f64,
        rpo_alpha: Option<f64>,
    ) -> Result<Self> {
        let bad = |field: &str, message: String| DpoError::Config {
            field: field.into(),
            message,
        };
        if !(beta.is_finite() && beta > 0.0) {
            return Err(bad(
                "beta",
                format!("must be a positive number, got {beta}"),
            ));
        }
        if !label_smoothing.is_finite() {
            return Err(bad(
                "label_smoothing",
                format!("must be finite, got {label_smoothing}"),
            ));
        }
        match loss {
            // cDPO mixes the two label directions; past 0.5 it prefers the rejected.
            DpoLoss::Sigmoid if !(0.0..=0.5).contains(&label_smoothing) => {
                return Err(bad(
                    "label_smoothing",
                    format!("must lie in [0, 0.5] for the sigmoid loss, got {label_smoothing}"),
                ));
            }
            // The robust loss divides by 1 − 2ε.
            DpoLoss::Robust if !(0.0..0.5).contains(&label_smoothing) => {
                return Err(bad(
                    "label_smoothing",
                    format!("must lie in [0, 0.5) for the robust loss, got {label_smoothing}"),
                ));
            }
            other if !other.uses_label_smoothing() && label_smoothing != 0.0 => {
                return Err(bad(
                    "label_smoothing",
                    format!(
                        "is only used by the sigmoid and robust losses, not `{}`; remove it or set it to 0",
                        other.as_str()
                    ),
                ));
            }
            _ => {}
        }
        if let Some(alpha) = rpo_alpha
            && !(alpha.is_finite() && alpha >= 0.0)
        {
            return Err(bad(
                "rpo_alpha",
                format!("must be a non-negative number, got {alpha}"),
            ));
        }
        Ok(Self {
            loss,
            beta,
            label_smoothing,
            rpo_alpha,
        })
    }
}

/// One value per pair for chosen and for rejected.
///
/// Shapes: each [N].
#[derive(Debug, Clone)]
pub struct Pair<B: Backend> {
    pub chosen: Tensor<B, 1>,
    pub rejected: Tensor<B, 1>,
}

impl<B: Backend> Pair<B> {
    pub fn new(chosen: Tensor<B, 1>, rejected: Tensor<B, 1>) -> Self {
        Self { chosen, rejected }
    }

    /// No gradient flows back through either side.
    pub fn detach(self) -> Self {
        Self::new(self.chosen.detach(), self.rejected.detach())
    }
}

/// The losses of a batch of N pairs and their diagnostics.
#[derive(Debug, Clone)]
pub struct DpoLossOutput<B: Backend> {
    /// The preference loss of each pair, differentiable. [N]
    pub losses: Tensor<B, 1>,
    /// Implicit rewards β·u_c and β·u_r (no gradient). [N] each.
    pub rewards: Pair<B>,
    /// The RPO term's parts, when it is on.
    pub rpo: Option<RpoTerm<B>>,
}

/// α · NLL of the chosen completions, kept as a sum and a token count so that
/// gradient accumulation can normalise over the whole optimizer step.
#[derive(Debug, Clone)]
pub struct RpoTerm<B: Backend> {
    pub alpha: f64,
    /// −Σ πc over the batch: the summed NLL of every chosen completion token. [1]
    pub nll_sum: Tensor<B, 1>,
    /// Chosen completion tokens in the batch.
    pub tokens: f64,
}

impl<B: Backend> DpoLossOutput<B> {
    /// The batch loss as TRL computes it: mean over pairs of the preference loss,
    /// plus α · (chosen NLL per chosen completion token). [1]
    pub fn loss(&self) -> Tensor<B, 1> {
        let pairs = self.losses.dims()[0] as f64;
        let tokens = self.rpo.as_ref().map_or(1.0, |r| r.tokens);
        self.loss_normalized(pairs, tokens)
    }

    /// This batch's share of a loss normalised over a whole optimizer step of
    /// `step_pairs` pairs and `step_chosen_tokens` chosen completion tokens, so
    /// that accumulating micro-batches gives the gradient of the step mean. [1]
    pub fn loss_normalized(&self, step_pairs: f64, step_chosen_tokens: f64) -> Tensor<B, 1> {
        let preference = self.losses.clone().sum() / step_pairs.max(1.0);
        match &self.rpo {
            None => preference,
            Some(rpo) => {
                preference + rpo.nll_sum.clone() * (rpo.alpha / step_chosen_tokens.max(1.0))
            }
        }
    }
}

/// The DPO-family loss of N pairs.
///
/// `policy` and `reference` are log-prob sums over each completion's tokens;
/// `tokens` are the completion token counts (as floats), read by the
/// length-normalised variants and by the RPO term. Gradients flow into
/// `policy` only.
///
/// Shapes: every input [N] → [`DpoLossOutput`] with [N] tensors.
pub fn dpo_loss<B: Backend>(
    objective: &DpoObjective,
    policy: &Pair<B>,
    reference: &Pair<B>,
    tokens: &Pair<B>,
) -> DpoLossOutput<B> {
    let beta = objective.beta;
    let eps = objective.label_smoothing;
    let reference = reference.clone().detach();
    let u_c = policy.chosen.clone() - reference.chosen;
    let u_r = policy.rejected.clone() - reference.rejected;
    let h = || u_c.clone() - u_r.clone();
    // TRL clamps the counts at 1 so an empty completion does not divide by 0.
    let h_per_token = || {
        u_c.clone() / tokens.chosen.clone().clamp_min(1.0)
            - u_r.clone() / tokens.rejected.clone().clamp_min(1.0)
    };

    let losses = match objective.loss {
        DpoLoss::Sigmoid => {
            let x = h() * beta;
            log_sigmoid(x.clone()) * -(1.0 - eps) - log_sigmoid(x.neg()) * eps
        }
        DpoLoss::Robust => {
            let x = h() * beta;
            (log_sigmoid(x.clone()) * -(1.0 - eps) + log_sigmoid(x.neg()) * eps) / (1.0 - 2.0 * eps)
        }
        DpoLoss::Hinge => relu((h() * beta).neg() + 1.0),
        // See: Azar et al. 2023, eq. 17.
        DpoLoss::Ipo => (h_per_token() - 1.0 / (2.0 * beta)).powi_scalar(2),
        DpoLoss::SigmoidNorm => log_sigmoid(h_per_token() * beta).neg(),
        // See: D'Oosterlinck et al. 2024, eq. 7.
        DpoLoss::ApoZero => sigmoid(u_c.clone() * beta).neg() + 1.0 + sigmoid(u_r.clone() * beta),
        // See: D'Oosterlinck et al. 2024, eq. 8.
        DpoLoss::ApoDown => sigmoid(u_c.clone() * beta) + 1.0 - sigmoid(h() * beta),
    };

    let rpo = objective.rpo_alpha.map(|alpha| RpoTerm {
        alpha,
        nll_sum: policy.chosen.clone().sum().neg(),
        tokens: tokens.chosen.clone().sum().into_scalar().elem::<f64>(),
    });

    DpoLossOutput {
        losses,
        rewards: Pair::new(u_c.detach() * beta, u_r.detach() * beta),
        rpo,
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    use super::*;
    use crate::logps::CompletionLogps;
    use crate::metrics::DpoSums;

    type B = Flex;

    /// Policy log-probs as the forward pass would report them (no logit stats).
    fn policy(logps: Pair<B>, tokens: Pair<B>) -> CompletionLogps<B> {
        let n = logps.chosen.dims()[0];
        let zeros = || t(&vec![0.0; n]);
        CompletionLogps {
            logps,
            tokens,
            logit_sums: Pair::new(zeros(), zeros()),
        }
    }

    fn t(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }
    fn pair(c: &[f32], r: &[f32]) -> Pair<B> {
        Pair::new(t(c), t(r))
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

    // Two pairs shared by the golden tests, β = 0.1:
    //   pair 1: π = (−10, −12), ρ = (−11, −11) → u_c = 1,  u_r = −1, h = 2,  βh = 0.2
    //   pair 2: π = (−8, −6),   ρ = (−7, −7)   → u_c = −1, u_r = 1,  h = −2, βh = −0.2
    // Completion tokens n_c = 4, n_r = 2 in both, so
    //   pair 1: h̄ = 1/4 + 1/2 = 0.75;  pair 2: h̄ = −0.75.
    // Useful values: softplus(x) = ln(1 + eˣ) = −log σ(−x);
    //   softplus(−0.2) = ln 1.8187308 = 0.5981389,  softplus(0.2) = 0.5981389 + 0.2 = 0.7981389,
    //   σ(0.1) = 0.5249792, σ(0.2) = 0.5498340.
    fn batch() -> (Pair<B>, Pair<B>, Pair<B>) {
        (
            pair(&[-10.0, -8.0], &[-12.0, -6.0]),
            pair(&[-11.0, -7.0], &[-11.0, -7.0]),
            pair(&[4.0, 4.0], &[2.0, 2.0]),
        )
    }

    fn run(loss: DpoLoss, eps: f64, rpo: Option<f64>) -> DpoLossOutput<B> {
        let objective = DpoObjective::new(loss, 0.1, eps, rpo).unwrap();
        let (p, r, n) = batch();
        dpo_loss(&objective, &p, &r, &n)
    }

    #[test]
    fn sigmoid_golden() {
        // −log σ(βh) = softplus(−βh): pair 1 softplus(−0.2) = 0.5981389,
        // pair 2 softplus(0.2) = 0.7981389; mean 0.6981389.
        let out = run(DpoLoss::Sigmoid, 0.0, None);
        assert_close(
            &values(out.losses.clone()),
            &[0.598_138_9, 0.798_138_9],
            1e-6,
        );
        assert_close(&values(out.loss()), &[0.698_138_9], 1e-6);
        // Rewards β·u: (0.1, −0.1) and (−0.1, 0.1).
        assert_close(&values(out.rewards.chosen.clone()), &[0.1, -0.1], 1e-6);
        assert_close(&values(out.rewards.rejected.clone()), &[-0.1, 0.1], 1e-6);
        let (p, _, n) = batch();
        let s = DpoSums::of(&out, &policy(p, n));
        // margins: (0.2 + −0.2)/2 = 0; accuracy: pair 1 only → 0.5;
        // logps: (−10 − 8)/2 = −9, (−12 − 6)/2 = −9.
        assert_close(
            &[
                s.rewards_chosen(),
                s.rewards_rejected(),
                s.rewards_margins(),
                s.rewards_accuracies(),
            ],
            &[0.0, 0.0, 0.0, 0.5],
            1e-6,
        );
        assert_close(
            &[s.logps_chosen(), s.logps_rejected(), s.loss()],
            &[-9.0, -9.0, 0.698_138_9],
            1e-6,
        );
        assert_eq!(s.nll_loss(), None);
    }

    #[test]
    fn conservative_sigmoid_golden() {
        // cDPO, ε = 0.1: −(1−ε)·log σ(x) − ε·log σ(−x) = softplus(−x) + ε·x with x = βh
        // (because softplus(x) − softplus(−x) = x):
        //   pair 1: 0.5981389 + 0.1·0.2 = 0.6181389;  pair 2: 0.7981389 − 0.02 = 0.7781389.
        let out = run(DpoLoss::Sigmoid, 0.1, None);
        assert_close(&values(out.losses), &[0.618_138_9, 0.778_138_9], 1e-6);
    }

    #[test]
    fn robust_golden() {
        // ε = 0.1, s = softplus(−x): [(1−ε)s − ε(s + x)] / (1 − 2ε) = s − εx/(1 − 2ε):
        //   pair 1: 0.5981389 − 0.02/0.8 = 0.5731389;  pair 2: 0.7981389 + 0.025 = 0.8231389.
        let out = run(DpoLoss::Robust, 0.1, None);
        assert_close(&values(out.losses), &[0.573_138_9, 0.823_138_9], 1e-6);
        // With ε = 0 it is plain DPO.
        let plain = run(DpoLoss::Robust, 0.0, None);
        assert_close(&values(plain.losses), &[0.598_138_9, 0.798_138_9], 1e-6);
    }

    #[test]
    fn hinge_golden() {
        // max(0, 1 − βh): 1 − 0.2 = 0.8 and 1 + 0.2 = 1.2.
        let out = run(DpoLoss::Hinge, 0.0, None);
        assert_close(&values(out.losses), &[0.8, 1.2], 1e-6);
    }

    #[test]
    fn ipo_golden() {
        // (h̄ − 1/(2β))², 1/(2β) = 5: (0.75 − 5)² = 18.0625, (−0.75 − 5)² = 33.0625.
        let out = run(DpoLoss::Ipo, 0.0, None);
        assert_close(&values(out.losses.clone()), &[18.0625, 33.0625], 1e-4);
        // Rewards stay β·u of the sums (current TRL), not of the per-token means.
        assert_close(&values(out.rewards.chosen), &[0.1, -0.1], 1e-6);
    }

    #[test]
    fn sigmoid_norm_golden() {
        // −log σ(βh̄) = softplus(−βh̄), βh̄ = ±0.075:
        //   softplus(−0.075) = ln(1 + e^−0.075) = ln 1.9277435 = 0.6563501;
        //   softplus(0.075) = 0.6563501 + 0.075 = 0.7313501.
        let out = run(DpoLoss::SigmoidNorm, 0.0, None);
        assert_close(&values(out.losses), &[0.656_350_1, 0.731_350_1], 1e-6);
    }

    #[test]
    fn apo_zero_golden() {
        // (1 − σ(βu_c)) + σ(βu_r):
        //   pair 1: (1 − σ(0.1)) + σ(−0.1) = 2(1 − 0.5249792) = 0.9500416;
        //   pair 2: (1 − σ(−0.1)) + σ(0.1) = 2·0.5249792 = 1.0499584.
        let out = run(DpoLoss::ApoZero, 0.0, None);
        assert_close(&values(out.losses), &[0.950_041_6, 1.049_958_4], 1e-6);
    }

    #[test]
    fn apo_down_golden() {
        // σ(βu_c) + (1 − σ(βh)):
        //   pair 1: σ(0.1) + 1 − σ(0.2) = 0.5249792 + 0.4501660 = 0.9751452;
        //   pair 2: σ(−0.1) + 1 − σ(−0.2) = 0.4750208 + 0.5498340 = 1.0248548.
        let out = run(DpoLoss::ApoDown, 0.0, None);
        assert_close(&values(out.losses), &[0.975_145_2, 1.024_854_8], 1e-6);
    }

    #[test]
    fn rpo_term_golden() {
        // NLL per chosen token = −(−10 − 8)/(4 + 4) = 2.25; α = 0.5 adds 1.125 to the
        // sigmoid mean 0.6981389 → 1.8231389.
        let out = run(DpoLoss::Sigmoid, 0.0, Some(0.5));
        assert_close(&values(out.loss()), &[1.823_138_9], 1e-6);
        let (p, _, n) = batch();
        let s = DpoSums::of(&out, &policy(p, n));
        assert_close(
            &[s.loss(), s.nll_loss().unwrap()],
            &[1.823_138_9, 2.25],
            1e-6,
        );
        // Split over two micro-batches with step normalisation, the parts add up.
        let half = |i: usize| {
            let objective = DpoObjective::new(DpoLoss::Sigmoid, 0.1, 0.0, Some(0.5)).unwrap();
            let (p, r, n) = batch();
            let take = |x: Pair<B>| Pair::new(x.chosen.narrow(0, i, 1), x.rejected.narrow(0, i, 1));
            dpo_loss(&objective, &take(p), &take(r), &take(n)).loss_normalized(2.0, 8.0)
        };
        assert_close(&values(half(0) + half(1)), &[1.823_138_9], 1e-6);
    }

    #[test]
    fn policy_equal_to_reference_gives_ln2_and_zero_rewards() {
        // h = 0 → −log σ(0) = ln 2 for every pair; every implicit reward is β·0 = 0
        // and no pair is "correct" (TRL counts chosen > rejected strictly).
        let objective = DpoObjective::new(DpoLoss::Sigmoid, 0.5, 0.0, None).unwrap();
        let logps = pair(&[-3.5, -20.0, -0.25], &[-7.0, -1.0, -0.25]);
        let tokens = pair(&[3.0, 9.0, 1.0], &[5.0, 1.0, 1.0]);
        let out = dpo_loss(&objective, &logps, &logps, &tokens);
        let ln2 = std::f64::consts::LN_2;
        assert_close(&values(out.losses.clone()), &[ln2, ln2, ln2], 1e-7);
        assert_close(&values(out.loss()), &[ln2], 1e-7);
        let s = DpoSums::of(&out, &policy(logps, tokens));
        assert_close(
            &[
                s.rewards_chosen(),
                s.rewards_rejected(),
                s.rewards_margins(),
                s.rewards_accuracies(),
            ],
            &[0.0, 0.0, 0.0, 0.0],
            0.0,
        );
    }

    #[test]
    fn gradient_flows_to_policy_only() {
        // d/dπc of −log σ(β(πc − πr − ρc + ρr)) = −β·σ(−βh); at h = 2, β = 0.1:
        // −0.1·σ(−0.2) = −0.1·0.4501660 = −0.0450166 (one pair, so the mean is itself).
        type A = Autodiff<Flex>;
        let d = Default::default();
        let x = |v: f32| Tensor::<A, 1>::from_data(TensorData::new(vec![v], [1]), &d);
        let pc = x(-10.0).require_grad();
        let rc = x(-11.0).require_grad();
        let policy = Pair::new(pc.clone(), x(-12.0));
        let reference = Pair::new(rc.clone(), x(-11.0));
        let objective = DpoObjective::new(DpoLoss::Sigmoid, 0.1, 0.0, None).unwrap();
        let out = dpo_loss(&objective, &policy, &reference, &Pair::new(x(1.0), x(1.0)));
        let grads = out.loss().backward();
        let g = pc
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap();
        assert_close(&g, &[-0.045_016_6], 1e-6);
        assert!(
            rc.grad(&grads).is_none(),
            "the reference must not receive a gradient"
        );
    }

    #[test]
    fn settings_the_loss_would_ignore_are_rejected() {
        let err = |loss, beta, eps, rpo| {
            DpoObjective::new(loss, beta, eps, rpo)
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(DpoLoss::Hinge, 0.1, 0.1, None).contains("only used by the sigmoid and robust")
        );
        assert!(err(DpoLoss::Robust, 0.1, 0.5, None).contains("[0, 0.5)"));
        assert!(err(DpoLoss::Sigmoid, 0.1, 0.6, None).contains("[0, 0.5]"));
        assert!(err(DpoLoss::Sigmoid, 0.0, 0.0, None).contains("beta"));
        assert!(err(DpoLoss::Sigmoid, f64::NAN, 0.0, None).contains("beta"));
        assert!(err(DpoLoss::Sigmoid, 0.1, 0.0, Some(-1.0)).contains("rpo_alpha"));
        assert!(DpoObjective::new(DpoLoss::Sigmoid, 0.1, 0.5, Some(1.0)).is_ok());
    }

    #[test]
    fn loss_names_match_trl() {
        for (loss, name) in [
            (DpoLoss::Sigmoid, "sigmoid"),
            (DpoLoss::Ipo, "ipo"),
            (DpoLoss::Hinge, "hinge"),
            (DpoLoss::Robust, "robust"),
            (DpoLoss::SigmoidNorm, "sigmoid_norm"),
            (DpoLoss::ApoZero, "apo_zero"),
            (DpoLoss::ApoDown, "apo_down"),
        ] {
            assert_eq!(loss.as_str(), name);
            let json = serde_json::to_string(&loss).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
    }
}
