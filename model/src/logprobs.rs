//! Per-token log-probabilities of given continuations.
//!
//! The LM head and log-softmax run over chunks of the sequence, so peak memory
//! holds [B, chunk, V] logits instead of [B, T, V] (V is 49k for SmolLM2).

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::transformer::{ForwardInput, LlamaForCausalLM};

/// Sequence positions per LM-head chunk.
pub const DEFAULT_CHUNK: usize = 128;

/// log p(targets[b, t] | context up to t), from the hidden states at t.
///
/// Shapes: hidden [B, T, C], targets [B, T] → [B, T].
pub fn token_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    chunk: usize,
) -> Tensor<B, 2> {
    let [_, t, _] = hidden.dims();
    let chunk = chunk.max(1);
    let mut parts = Vec::with_capacity(t.div_ceil(chunk));
    let mut start = 0;
    while start < t {
        let len = chunk.min(t - start);
        let logits = model.lm_logits(hidden.clone().narrow(1, start, len));
        let logp = log_softmax(logits, 2);
        let target = targets.clone().narrow(1, start, len).unsqueeze_dim::<3>(2);
        parts.push(logp.gather(2, target).squeeze_dim::<2>(2));
        start += len;
    }
    Tensor::cat(parts, 1)
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
