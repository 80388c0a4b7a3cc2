//! Per-token log-probabilities of given continuations, and the statistics of
//! the predicted distributions the trainers log.
//!
//! The LM head runs over chunks of positions, so peak memory holds [chunk, V]
//! logits instead of [N, V] (V is 49k for SmolLM2).
//!
//! # Gradient without an autodiff graph over the vocabulary
//!
//! With logits z = h·Wᵀ, the target log-probability is
//! log p(y) = z_y − logsumexp(z), and its gradient is
//! ∂ log p(y)/∂z = e_y − softmax(z) =: c. So
//! ∂/∂h = c·W and ∂/∂W = cᵀ·h. When gradients are tracked, the head's logits
//! are computed *untracked*, c is formed from them, and the differentiable
//! output is
//!
//! ```text
//! log p(y) = value + s − stop_grad(s),   s = Σ_k h_k · (c·W)_k
//! ```
//!
//! whose value is the exact log-probability and whose gradient with respect
//! to h and W is exactly the one above. Autodiff then records two small
//! nodes (a [n, V]×[V, C] product and a row dot product) instead of the
//! matmul, max, subtract, exp, sum, log, subtract and gather over [n, V] that
//! a log-softmax records, each with its own [n, V] backward pass. The
//! matmul count is unchanged (logits; c·W; and cᵀ·(∂L·h) in the backward).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::dtype::to_f32;
use crate::fused;
use crate::transformer::{ForwardInput, LlamaForCausalLM};

/// Sequence positions per LM-head chunk of [`token_logprobs`].
pub const DEFAULT_CHUNK: usize = 128;

/// Detached statistics of the predicted distribution at each position.
#[derive(Debug, Clone)]
pub struct HeadStats<B: Backend> {
    /// 1.0 where the most likely token is the target. [N]
    pub correct: Tensor<B, 1>,
    /// Entropy of the predicted distribution in nats. [N]
    pub entropy: Tensor<B, 1>,
    /// The logit averaged over the vocabulary (TRL's `logits/*`). [N]
    pub mean_logit: Tensor<B, 1>,
}

/// Log-probabilities of the targets (differentiable) and, when asked for,
/// statistics of the distributions.
#[derive(Debug, Clone)]
pub struct HeadLogprobs<B: Backend> {
    /// log p(target). [N]
    pub logp: Tensor<B, 1>,
    pub stats: Option<HeadStats<B>>,
}

/// The LM head's dense [V, C] weight when the head is a plain product (tied
/// embedding, or an untied head without bias or adapter, and no soft-capping).
fn plain_head_weight<B: Backend>(model: &LlamaForCausalLM<B>) -> Option<Tensor<B, 2>> {
    if model.model.final_logit_softcapping.is_some() {
        return None;
    }
    match (&model.lm_head, &model.decode_head) {
        (Some(head), _) if head.bias.is_none() && head.lora.is_none() => Some(head.weight.val()),
        (None, None) => Some(model.model.embed_tokens.weight.val()),
        _ => None,
    }
}

/// One chunk: hidden [n, C], targets [n] → log p [n] and, optionally, stats.
fn chunk_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    hidden: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    want_stats: bool,
) -> (Tensor<B, 1>, Option<HeadStats<B>>) {
    let weight = plain_head_weight(model);
    // `is_require_grad` is true only for leaves (parameters), not for hidden
    // states computed from trainable adapters, so ask the backend instead.
    // Inference passes (`valid()` models) run on the inner backend.
    let tracked = B::ad_enabled(&hidden.device());
    // With a plain head under autodiff the logits are computed untracked (the
    // gradient is added below); otherwise they are untracked already, or go
    // through a generic head whose graph the log-softmax below keeps.
    let analytic = tracked && weight.is_some();
    let logits = match &weight {
        Some(w) if analytic => to_f32(fused::linear(
            hidden.clone().detach(),
            w.clone().detach(),
            None,
            None,
        )),
        _ => model
            .lm_logits(hidden.clone().unsqueeze_dim::<3>(0))
            .squeeze_dim::<2>(0),
    };
    // Untracked logits take the CPU backend's one-pass row kernel.
    let logits = if analytic || !tracked {
        match fused::log_softmax_rows(logits, &targets, want_stats, analytic) {
            Ok(rows) => {
                let stats = rows.stats.map(|[correct, entropy, mean_logit]| HeadStats {
                    correct,
                    entropy,
                    mean_logit,
                });
                let logp = match (weight, rows.coeff) {
                    (Some(w), Some(coeff)) => with_head_gradient(rows.logp, hidden, coeff, w),
                    _ => rows.logp,
                };
                return (logp, stats);
            }
            Err(logits) => logits,
        }
    } else {
        logits
    };
    let target = targets.unsqueeze_dim::<2>(1);
    let max = logits.clone().max_dim(1).detach();
    let exp = (logits.clone() - max.clone()).exp();
    let sum = exp.clone().sum_dim(1);
    let lse = sum.clone().log() + max;
    let logp = logits.clone().gather(1, target.clone()) - lse.clone();
    let probs = (want_stats || analytic).then(|| exp.detach() / sum.detach());

    let stats = want_stats.then(|| {
        let logits = logits.clone().detach();
        let probs = probs.clone().expect("computed when stats are wanted");
        let expected = (probs * logits.clone()).sum_dim(1);
        HeadStats {
            correct: logits
                .clone()
                .argmax(1)
                .equal(target.clone())
                .float()
                .squeeze_dim::<1>(1),
            entropy: (lse.detach() - expected).squeeze_dim::<1>(1),
            mean_logit: logits.mean_dim(1).squeeze_dim::<1>(1),
        }
    });

    let logp = match (weight, probs) {
        (Some(w), Some(probs)) if analytic => {
            // c = e_y − softmax(z), untracked; s = Σ h ⊙ (c·W).
            let coeff = probs.neg().scatter(
                1,
                target,
                Tensor::ones([logp.dims()[0], 1], &logp.device()),
                burn::tensor::IndexingUpdateOp::Add,
            );
            with_head_gradient(logp.squeeze_dim::<1>(1), hidden, coeff, w)
        }
        _ => logp.squeeze_dim::<1>(1),
    };
    (logp, stats)
}

/// log p(y) = value + s − stop_grad(s) with s = Σ_k h_k · (c·W)_k: the value
/// of `logp`, the gradient c·W with respect to h and cᵀ·h with respect to W.
///
/// The products run in the weights' dtype (c, f32, is cast to it), s is
/// summed in f32.
///
/// Shapes: logp [n], hidden [n, C], coeff [n, V], weight [V, C] → [n].
fn with_head_gradient<B: Backend>(
    logp: Tensor<B, 1>,
    hidden: Tensor<B, 2>,
    coeff: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let s = fused::head_term(hidden, coeff, weight);
    logp.detach() + s.clone() - s.detach()
}

/// log p(targets[i] | hidden[i]) for rows of hidden states, through the LM
/// head in chunks of `chunk` rows.
///
/// Shapes: hidden [N, C], targets [N] → [N].
pub fn head_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    hidden: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    chunk: usize,
    want_stats: bool,
) -> HeadLogprobs<B> {
    let [n, _] = hidden.dims();
    let chunk = chunk.max(1);
    let (mut logp, mut stats) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let (lp, s) = chunk_logprobs(
            model,
            hidden.clone().narrow(0, start, len),
            targets.clone().narrow(0, start, len),
            want_stats,
        );
        logp.push(lp);
        stats.extend(s);
        start += len;
    }
    let cat = |f: fn(&HeadStats<B>) -> Tensor<B, 1>| Tensor::cat(stats.iter().map(f).collect(), 0);
    HeadLogprobs {
        logp: Tensor::cat(logp, 0),
        stats: want_stats.then(|| HeadStats {
            correct: cat(|s| s.correct.clone()),
            entropy: cat(|s| s.entropy.clone()),
            mean_logit: cat(|s| s.mean_logit.clone()),
        }),
    }
}

/// log p(targets[b, t] | context up to t), from the hidden states at t.
///
/// Shapes: hidden [B, T, C], targets [B, T] → [B, T].
pub fn token_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    chunk: usize,
) -> Tensor<B, 2> {
    let [b, t, c] = hidden.dims();
    let flat = head_logprobs(
        model,
        hidden.reshape([b * t, c]),
        targets.reshape([b * t]),
        chunk * b,
        false,
    );
    flat.logp.reshape([b, t])
}

/// Run the model and return log p(input_ids[t + 1]) at every position t < T - 1.
///
/// Shapes: input [B, T] → [B, T - 1].
pub fn sequence_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    input: ForwardInput<B>,
) -> Tensor<B, 2> {
    let [_, t] = input.input_ids.dims();
    let targets = input.input_ids.clone().narrow(1, 1, t - 1);
    let hidden = model.forward_hidden(input, None).narrow(1, 0, t - 1);
    token_logprobs(model, hidden, targets, DEFAULT_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LlamaConfig, ModelType};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;
    use burn::tensor::activation::log_softmax;

    type A = Autodiff<Flex>;

    fn tiny(tied: bool) -> LlamaForCausalLM<A> {
        let config = LlamaConfig {
            tie_word_embeddings: tied,
            ..LlamaConfig::tiny(ModelType::Llama)
        };
        LlamaForCausalLM::init(&config, &Default::default())
    }

    /// Hidden states that are not leaves (as under LoRA, where they depend on
    /// adapters) and a frozen head: the gradient still reaches the hidden states.
    #[test]
    fn gradient_reaches_intermediate_hidden_states_under_a_frozen_head() {
        let dev = Default::default();
        let mut model = tiny(true);
        model.model.embed_tokens.weight = model.model.embed_tokens.weight.set_require_grad(false);
        let leaf = Tensor::<A, 2>::ones([3, 32], &dev).require_grad();
        let hidden = leaf.clone().mul_scalar(0.5);
        let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![1i64, 2, 3], [3]), &dev);
        let logp = head_logprobs(&model, hidden, targets, 2, false).logp;
        let grads = logp.sum().backward();
        let g = leaf.grad(&grads).expect("gradient reaches the leaf");
        let norm: f32 = g.abs().sum().into_scalar();
        assert!(norm > 0.0, "zero gradient");
    }

    fn grads_of(model: &LlamaForCausalLM<A>, fast: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let dev = Default::default();
        let h: Vec<f32> = (0..7 * 32)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let hidden = Tensor::<A, 2>::from_data(TensorData::new(h, [7, 32]), &dev).require_grad();
        let targets = Tensor::<A, 1, Int>::from_data(
            TensorData::new(vec![0i64, 3, 95, 5, 5, 1, 20], [7]),
            &dev,
        );
        let weights = Tensor::<A, 1>::from_data(
            TensorData::new(vec![1.0f32, -2., 0.5, 3., 1., 0., 0.25], [7]),
            &dev,
        );
        let logp = if fast {
            head_logprobs(model, hidden.clone(), targets, 3, false).logp
        } else {
            let logits = model
                .lm_logits(hidden.clone().unsqueeze_dim::<3>(0))
                .squeeze_dim::<2>(0);
            log_softmax(logits, 1)
                .gather(1, targets.unsqueeze_dim::<2>(1))
                .squeeze_dim::<1>(1)
        };
        let value = logp.clone().into_data().to_vec::<f32>().unwrap();
        let grads = (logp * weights).sum().backward();
        let gh = hidden
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let w = match &model.lm_head {
            Some(head) => head.weight.val(),
            None => model.model.embed_tokens.weight.val(),
        };
        let gw = w.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        (value, gh, gw)
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst <= tol, "max diff {worst}");
    }

    /// Values and gradients (wrt hidden states and the head weight, tied and
    /// untied) equal those of log-softmax + gather under autodiff.
    #[test]
    fn custom_gradient_equals_log_softmax() {
        for tied in [true, false] {
            let model = tiny(tied);
            let (v0, h0, w0) = grads_of(&model, false);
            let (v1, h1, w1) = grads_of(&model, true);
            close(&v0, &v1, 1e-5);
            close(&h0, &h1, 1e-5);
            close(&w0, &w1, 1e-5);
        }
    }

    /// Hidden [1, 0, …] against a head with rows (0, …) and (ln 3, …) gives
    /// logits (0, ln 3) → p = (1/4, 3/4).
    /// Target 1: log p = ln 3 − ln 4 ≈ −0.287682; argmax = 1 → correct.
    /// Target 0: log p = −ln 4 ≈ −1.386294; incorrect.
    /// Entropy of (1/4, 3/4) = ln 4 − ¾ ln 3 ≈ 0.562335; mean logit ln 3 / 2.
    #[test]
    fn golden_two_token_vocabulary() {
        let dev = Default::default();
        let config = LlamaConfig {
            vocab_size: 2,
            tie_word_embeddings: true,
            ..LlamaConfig::tiny(ModelType::Llama)
        };
        let mut model = LlamaForCausalLM::<A>::init(&config, &dev);
        let ln3 = 3f32.ln();
        let mut w = vec![0.0f32; 2 * 32];
        w[32] = ln3;
        model.model.embed_tokens.weight =
            burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(w, [2, 32]), &dev));
        let mut h = vec![0.0f32; 2 * 32];
        h[0] = 1.0;
        h[32] = 1.0;
        let hidden = Tensor::<A, 2>::from_data(TensorData::new(h, [2, 32]), &dev).require_grad();
        let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &dev);
        let out = head_logprobs(&model, hidden, targets, 1, true);
        let v = |t: Tensor<A, 1>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        close(&v(out.logp), &[-0.287_682, -1.386_294], 1e-5);
        let stats = out.stats.unwrap();
        assert_eq!(v(stats.correct), vec![1.0, 0.0]);
        close(&v(stats.entropy), &[0.562_335, 0.562_335], 1e-5);
        close(&v(stats.mean_logit), &[ln3 / 2.0, ln3 / 2.0], 1e-6);
    }

    /// Untracked: same values as log-softmax; stats by hand on a 2-token vocabulary
    /// are covered by the SFT golden test, here entropy ≥ 0 and correct ∈ {0, 1}.
    #[test]
    fn untracked_values_and_stats() {
        let model = tiny(true);
        let inner = burn::module::AutodiffModule::valid(&model);
        let dev = Default::default();
        let hidden =
            Tensor::<Flex, 2>::random([5, 32], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let targets =
            Tensor::<Flex, 1, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4, 5], [5]), &dev);
        let out = head_logprobs(&inner, hidden.clone(), targets.clone(), 2, true);
        let reference = log_softmax(
            inner
                .lm_logits(hidden.unsqueeze_dim::<3>(0))
                .squeeze_dim::<2>(0),
            1,
        )
        .gather(1, targets.unsqueeze_dim::<2>(1))
        .squeeze_dim::<1>(1);
        close(
            &out.logp.into_data().to_vec::<f32>().unwrap(),
            &reference.into_data().to_vec::<f32>().unwrap(),
            1e-5,
        );
        let stats = out.stats.unwrap();
        for e in stats.entropy.into_data().to_vec::<f32>().unwrap() {
            assert!((0.0..=96f32.ln() + 1e-5).contains(&e), "{e}");
        }
        for c in stats.correct.into_data().to_vec::<f32>().unwrap() {
            assert!(c == 0.0 || c == 1.0);
        }
    }
}
