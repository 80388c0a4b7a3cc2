//! Scoring with a reward model: each sequence's scalar reward, read at its
//! last real token.

use std::path::Path;

use alignkit_datasets::{
    AnyRecord, Batch, FieldMap, Location, PaddingSide, Sequence, collate, collate_pairs, read_any,
};
use alignkit_model::ForwardInput;
use alignkit_model::heads::RewardModel;
use alignkit_model::mask::attention_mask;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::data::{RewardPair, encoder};
use crate::error::{Result, RewardError};

/// The model inputs of a padded batch.
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

/// The reward of every row of a padded batch, read at each row's last real
/// token (right or left padding alike; never a pad token, even when pad == eos).
///
/// Shapes: batch [R, T] → [R].
pub fn batch_rewards<B: Backend>(
    model: &RewardModel<B>,
    batch: &Batch,
    device: &B::Device,
) -> Tensor<B, 1> {
    // An all-padding row (an empty sequence) reads position 0; it scores nothing real.
    let last: Vec<usize> = batch
        .last_token_index()
        .into_iter()
        .map(|i| i.unwrap_or(0))
        .collect();
    model.forward(forward_input(batch, device), &last)
}

/// Rewards of N pairs in one forward pass over 2N rows.
///
/// Shapes: → chosen [N], rejected [N].
pub fn pair_rewards<B: Backend>(
    model: &RewardModel<B>,
    pairs: &[&RewardPair],
    pad_id: u32,
    device: &B::Device,
) -> (Tensor<B, 1>, Tensor<B, 1>, Batch) {
    let n = pairs.len();
    let batch = collate_pairs(pairs.iter().map(|p| &p.example), pad_id, PaddingSide::Right);
    let r = batch_rewards(model, &batch, device);
    (r.clone().narrow(0, 0, n), r.narrow(0, n, n), batch)
}

/// Each sequence's reward, `batch_size` sequences per forward pass.
pub fn score_sequences<B: Backend>(
    model: &RewardModel<B>,
    seqs: &[Sequence],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = collate(chunk, pad_id, PaddingSide::Right);
        out.extend(
            batch_rewards(model, &batch, device)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("converted to f32 above"),
        );
    }
    out
}

/// The reward(s) of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Score {
    /// A `{"text"}`, `{"prompt","completion"}` or `{"messages"}` record.
    Single(f32),
    /// A `{"prompt","chosen","rejected"}` record.
    Pair { chosen: f32, rejected: f32 },
}

/// A scored record and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRecord {
    pub at: Location,
    pub score: Score,
}

/// Score every record of a JSONL file with the reward model of `model_dir`
/// (tokenizer and chat template from the same directory): completions and
/// conversations get one reward, read at the end of their last completion or
/// assistant turn; preference pairs one each for chosen and rejected.
/// Sequences longer than `max_len` lose their prompt's start.
pub fn score<B: Backend>(
    model: &RewardModel<B>,
    model_dir: &Path,
    data: &Path,
    batch_size: usize,
    max_len: usize,
    device: &B::Device,
) -> Result<Vec<ScoredRecord>> {
    let encoder = encoder(model_dir, max_len, false)?;
    let pad_id = encoder.tokenizer().pad_id();
    // (location, first sequence index, is a pair)
    let mut index = Vec::new();
    let mut seqs = Vec::new();
    for rec in read_any(data, None, &FieldMap::default())? {
        let rec = rec?;
        let at = rec.at.clone();
        match &rec.value {
            AnyRecord::Sft(r) => {
                let mut seq = encoder.sft(r).map_err(|e| e.at(&at))?.tokens;
                // End at the last completion token (the end-of-turn token), as a
                // pair's sequences do, not at the template's trailing newline.
                let end = seq
                    .loss_mask
                    .iter()
                    .rposition(|&m| m)
                    .map_or(seq.len(), |i| i + 1);
                seq.input_ids.truncate(end);
                seq.loss_mask.truncate(end);
                index.push((at, seqs.len(), false));
                seqs.push(seq);
            }
            AnyRecord::Preference(p) => {
                let ex = encoder.preference(p).map_err(|e| e.at(&at))?;
                index.push((at, seqs.len(), true));
                seqs.push(ex.chosen());
                seqs.push(ex.rejected());
            }
            AnyRecord::Prompt(_) | AnyRecord::Kto(_) => {
                return Err(RewardError::Config {
                    field: "data".into(),
                    message: format!(
                        "{at}: a reward model scores completions or preference pairs, not prompts or KTO records"
                    ),
                });
            }
        }
    }
    let rewards = score_sequences(model, &seqs, batch_size, pad_id, device);
    Ok(index
        .into_iter()
        .map(|(at, i, pair)| ScoredRecord {
            at,
            score: if pair {
                Score::Pair {
                    chosen: rewards[i],
                    rejected: rewards[i + 1],
                }
            } else {
                Score::Single(rewards[i])
            },
        })
        .collect())
}
