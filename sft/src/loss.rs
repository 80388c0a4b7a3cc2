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
use alignkit_model::logprobs::head_logprobs;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::forward_input;

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

    let out = head_logprobs(model, hidden, targets, CHUNK, true);
    let stats = out.stats.expect("statistics were asked for");
    let nll_sum = out.logp.sum().neg();
    let stats = Tensor::cat(vec![stats.correct.sum(), stats.entropy.sum()], 0);
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
