//! Completion log-probabilities of preference pairs, chosen and rejected in
//! one forward pass.
//!
//! The batch comes from `alignkit_datasets::collate_pairs`: rows 0..N are the
//! chosen sequences (prompt + chosen), rows N..2N the rejected ones, padded to
//! one length. Token t is scored from the hidden state at t − 1 when
//! `loss_mask[t]` (a completion token); only those hidden states go through the
//! LM head, so prompt and padding cost no head FLOPs.
//!
//! See: TRL `DPOTrainer.concatenated_forward` (one pass "because it's faster
//! for FSDP" — and here because the backbone runs once over 2N rows).

use alignkit_datasets::Batch;
use alignkit_model::logprobs::head_logprobs;
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, LlamaForCausalLM};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::loss::Pair;

/// Rows of LM-head logits computed at once: bounds the [rows, V] logits
/// (and their log-softmax) held in memory.
pub const HEAD_CHUNK: usize = 512;

/// The model inputs of a padded batch (no packing: each row is one sequence).
pub fn forward_input<B: Backend>(batch: &Batch, device: &B::Device) -> ForwardInput<B> {
    let (b, t) = (batch.batch_size, batch.seq_len);
    let ids: Vec<i64> = batch.input_ids.iter().map(|&i| i as i64).collect();
    let valid: Vec<Vec<bool>> = batch
        .attention_mask
        .chunks(t.max(1))
        .map(<[bool]>::to_vec)
        .collect();
    ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device),
        positions: Tensor::<B, 2, Int>::from_data(
            TensorData::new(batch.position_ids.clone(), [b, t]),
            device,
        ),
        mask: attention_mask(&valid, t, None, device),
    }
}

/// The completion tokens of a batch: for each, the row it belongs to, the
/// flat index of the hidden state that predicts it (b·T + t − 1), and its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompletionTokens {
    pub row: Vec<i64>,
    pub hidden_index: Vec<i64>,
    pub target: Vec<i64>,
    /// Completion tokens per row. [2N]
    pub per_row: Vec<usize>,
}

impl CompletionTokens {
    pub fn of(batch: &Batch) -> Self {
        let t = batch.seq_len;
        let mut out = CompletionTokens {
            per_row: vec![0; batch.batch_size],
            ..Default::default()
        };
        for r in 0..batch.batch_size {
            for pos in 1..t {
                let i = r * t + pos;
                if batch.loss_mask[i] {
                    out.row.push(r as i64);
                    out.hidden_index.push((i - 1) as i64);
                    out.target.push(batch.input_ids[i] as i64);
                    out.per_row[r] += 1;
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row.is_empty()
    }
}

/// Per-sequence results of one concatenated forward pass over N pairs.
#[derive(Debug, Clone)]
pub struct CompletionLogps<B: Backend> {
    /// Σ log p(token) over each completion, differentiable. [N] each.
    pub logps: Pair<B>,
    /// Completion tokens of each sequence, as floats. [N] each.
    pub tokens: Pair<B>,
    /// Σ over each completion's tokens of the logit averaged over the
    /// vocabulary (no gradient): TRL's `logits/chosen` and `logits/rejected`
    /// are these summed over the batch divided by the token counts. [N] each.
    pub logit_sums: Pair<B>,
}

/// Run `model` on a `collate_pairs` batch of 2N rows and sum each row's
/// completion log-probs.
///
/// Shapes: batch [2N, T] → [N] per side.
pub fn completion_logps<B: Backend>(
    model: &LlamaForCausalLM<B>,
    batch: &Batch,
    device: &B::Device,
) -> CompletionLogps<B> {
    assert!(
        batch.batch_size.is_multiple_of(2),
        "completion_logps: a pair batch has an even number of rows, got {}",
        batch.batch_size
    );
    let rows = batch.batch_size;
    let n = rows / 2;
    let tokens = CompletionTokens::of(batch);
    let counts: Vec<f32> = tokens.per_row.iter().map(|&c| c as f32).collect();
    let counts = Tensor::<B, 1>::from_data(TensorData::new(counts, [rows]), device);

    let (logps, logit_sums) = if tokens.is_empty() {
        (Tensor::zeros([rows], device), Tensor::zeros([rows], device))
    } else {
        let m = tokens.len();
        let hidden = model.forward_hidden(forward_input(batch, device), None);
        let [b, t, c] = hidden.dims();
        let index =
            |v: &[i64]| Tensor::<B, 1, Int>::from_data(TensorData::new(v.to_vec(), [m]), device);
        let hidden = hidden
            .reshape([b * t, c])
            .select(0, index(&tokens.hidden_index));
        let targets = index(&tokens.target);

        let out = head_logprobs(model, hidden, targets, HEAD_CHUNK, true);
        let mean_logit = out.stats.expect("statistics were asked for").mean_logit;
        // Scatter-add each token's value into its row's sum.
        let row = index(&tokens.row);
        let per_row = |values: Tensor<B, 1>| {
            Tensor::<B, 1>::zeros([rows], device).select_assign(
                0,
                row.clone(),
                values,
                IndexingUpdateOp::Add,
            )
        };
        (per_row(out.logp), per_row(mean_logit).detach())
    };

    let split = |x: Tensor<B, 1>| Pair::new(x.clone().narrow(0, 0, n), x.narrow(0, n, n));
    CompletionLogps {
        logps: split(logps),
        tokens: split(counts),
        logit_sums: split(logit_sums),
    }
}
