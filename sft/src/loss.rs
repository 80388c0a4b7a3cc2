//! The SFT objective: the negative log-likelihood of the trained tokens,
//! averaged over every trained token of the optimizer step.
//!
//! With gradient accumulation the step's loss is
//! L = Σ_micro Σ_{t trained} −log p(x_t | x_<t) / N_step, where N_step counts
//! the trained tokens of all micro-batches of the step. Each micro-batch
//! contributes its sum divided by N_step, so the accumulated gradient is the
//! gradient of the token mean over the whole step — not a mean of
//! per-micro-batch means, which would weight a token of a short micro-batch
//! more than one of a long one. (transformers' Trainer does the same since
//! 4.46: `num_items_in_batch`.)

use alignkit_datasets::Batch;
use alignkit_model::LlamaForCausalLM;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::forward_input;

/// Per-token statistics of the model's predictions.
#[derive(Debug, Clone)]
pub struct TokenStats<B: Backend> {
    /// −log p(target), differentiable. [N]
    pub nll: Tensor<B, 1>,
    /// 1.0 where the most likely token is the target (no gradient). [N]
    pub correct: Tensor<B, 1>,
    /// Entropy of the predicted distribution in nats (no gradient). [N]
    pub entropy: Tensor<B, 1>,
}

/// Shapes: logits [N, V], targets [N] → each [N].
pub fn token_stats<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> TokenStats<B> {
    let logp = log_softmax(logits, 1);
    let nll = logp
        .clone()
        .gather(1, targets.clone().unsqueeze_dim::<2>(1))
        .squeeze_dim::<1>(1)
        .neg();
    let logp = logp.detach();
    let entropy = (logp.clone().exp() * logp.clone())
        .sum_dim(1)
        .squeeze_dim::<1>(1)
        .neg();
    let correct = logp.argmax(1).squeeze_dim::<1>(1).equal(targets).float();
    TokenStats {
        nll,
        correct,
        entropy,
    }
}

/// Sums over the trained tokens of one micro-batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchSums {
    pub nll: f64,
    pub correct: f64,
    pub entropy: f64,
    /// Trained tokens.
    pub targets: usize,
    /// Real (non-padding) tokens.
    pub tokens: usize,
}

impl std::ops::AddAssign for BatchSums {
    fn add_assign(&mut self, o: Self) {
        self.nll += o.nll;
        self.correct += o.correct;
        self.entropy += o.entropy;
        self.targets += o.targets;
        self.tokens += o.tokens;
    }
}

/// The trained positions of a batch: hidden-state row (b·T + t − 1, which
/// predicts token t) and target id, for every t with `loss_mask[t]`.
pub fn trained_positions(batch: &Batch) -> (Vec<i64>, Vec<i64>) {
    let t = batch.seq_len;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch.batch_size {
        for pos in 1..t {
            let i = b * t + pos;
            if batch.loss_mask[i] {
                rows.push((i - 1) as i64);
                targets.push(batch.input_ids[i] as i64);
            }
        }
    }
    (rows, targets)
}

/// Rows of LM-head logits computed at once.
const CHUNK: usize = 512;

/// Forward one micro-batch and return its loss contribution Σ nll / `norm`
/// (differentiable) and its sums. Only the hidden states of trained positions
/// go through the LM head, so prompt and padding tokens cost no head FLOPs.
pub fn batch_loss<B: Backend>(
    model: &LlamaForCausalLM<B>,
    batch: &Batch,
    packed: bool,
    norm: f64,
    device: &B::Device,
) -> (Tensor<B, 1>, BatchSums) {
    let (rows, targets) = trained_positions(batch);
    let tokens = batch.attention_mask.iter().filter(|&&m| m).count();
    let n = rows.len();
    if n == 0 {
        return (
            Tensor::zeros([1], device),
            BatchSums {
                tokens,
                ..Default::default()
            },
        );
    }
    let hidden = model.forward_hidden(forward_input(batch, packed, device), None);
    let [b, t, c] = hidden.dims();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), device);
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [n]), device);
    let hidden = hidden.reshape([b * t, c]).select(0, rows);

    let (mut nll, mut stats) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let h = hidden.clone().narrow(0, start, len).unsqueeze_dim::<3>(0);
        let logits = model.lm_logits(h).squeeze_dim::<2>(0);
        let s = token_stats(logits, targets.clone().narrow(0, start, len));
        nll.push(s.nll.sum());
        stats.push(Tensor::cat(vec![s.correct.sum(), s.entropy.sum()], 0));
        start += len;
    }
    let nll_sum = Tensor::cat(nll, 0).sum();
    let stats = Tensor::stack::<2>(stats, 0).sum_dim(0).squeeze_dim::<1>(0);
    let host: Vec<f32> = Tensor::cat(vec![nll_sum.clone().detach(), stats], 0)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("converted to f32 above");
    let sums = BatchSums {
        nll: host[0] as f64,
        correct: host[1] as f64,
        entropy: host[2] as f64,
        targets: n,
        tokens,
    };
    (nll_sum.div_scalar(norm), sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    /// logits (0, ln 3) → p = (1/4, 3/4).
    /// Target 1: nll = −ln(3/4) = ln 4 − ln 3 ≈ 0.287682; argmax = 1 → correct.
    /// Target 0: nll = ln 4 ≈ 1.386294; incorrect.
    /// Entropy of (1/4, 3/4) = −(¼ ln ¼ + ¾ ln ¾) = ln 4 − ¾ ln 3 ≈ 0.562335.
    #[test]
    fn golden_token_stats() {
        let dev = Default::default();
        let ln3 = 3f32.ln();
        let logits =
            Tensor::<B, 2>::from_data(TensorData::new(vec![0.0, ln3, 0.0, ln3], [2, 2]), &dev);
        let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &dev);
        let s = token_stats(logits, targets);
        let v = |t: Tensor<B, 1>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let nll = v(s.nll);
        assert!(
            (nll[0] - 0.287_682).abs() < 1e-5 && (nll[1] - 1.386_294).abs() < 1e-5,
            "{nll:?}"
        );
        assert_eq!(v(s.correct), vec![1.0, 0.0]);
        let h = v(s.entropy);
        assert!(
            (h[0] - 0.562_335).abs() < 1e-5 && (h[1] - 0.562_335).abs() < 1e-5,
            "{h:?}"
        );
    }

    #[test]
    fn trained_positions_shift_by_one() {
        // Row 0: tokens [5, 6, 7], trained 6 and 7 → rows 0, 1; row 1: [8, 9, pad], trained 9 → row 3.
        let batch = Batch {
            batch_size: 2,
            seq_len: 3,
            input_ids: vec![5, 6, 7, 8, 9, 0],
            attention_mask: vec![true, true, true, true, true, false],
            position_ids: vec![0, 1, 2, 0, 1, 0],
            loss_mask: vec![false, true, true, false, true, false],
            segment_ids: vec![1, 1, 1, 1, 1, 0],
        };
        let (rows, targets) = trained_positions(&batch);
        assert_eq!(rows, vec![0, 1, 3]);
        assert_eq!(targets, vec![6, 7, 9]);
    }
}
