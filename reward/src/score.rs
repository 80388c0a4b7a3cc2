//! Scoring with a reward model: each sequence's scalar reward, read at its
//! last token that is not the pad token — transformers' rule for
//! `*ForSequenceClassification` (the rightmost token ≠ `pad_token_id`),
//! used alike in training, here, and by anyone loading the exported model
//! with transformers or TRL, so all of them read the same token. With TRL's
//! completion span ([`CompletionEnd::Template`]) a ChatML conversation ends
//! `<|im_end|>\n` and the score is read at that `\n`; a string completion
//! ends with EOS, which is passed over when it is also the pad token
//! (SmolLM2), as transformers does.

use std::path::Path;

use alignkit_datasets::{
    AnyRecord, Batch, CompletionEnd, FieldMap, Location, PaddingSide, Sequence, collate,
    collate_pairs, read_any,
};
use alignkit_model::ForwardInput;
use alignkit_model::LlamaConfig;
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
/// token that is not `pad_id` (right or left padding alike; see the module
/// docs).
///
/// Shapes: batch [R, T] → [R].
pub fn batch_rewards<B: Backend>(
    model: &RewardModel<B>,
    batch: &Batch,
    pad_id: u32,
    device: &B::Device,
) -> Tensor<B, 1> {
    // A row without such a token reads position 0, as transformers does.
    let last: Vec<usize> = batch
        .score_index(pad_id)
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
    let r = batch_rewards(model, &batch, pad_id, device);
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
            batch_rewards(model, &batch, pad_id, device)
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
/// (tokenizer, chat template and `pad_token_id` from the same directory):
/// completions and conversations get one reward, preference pairs one each
/// for chosen and rejected. A conversation is scored as rendered whole
/// ([`CompletionEnd::Template`], what transformers scores after
/// `apply_chat_template`) or cut after its last assistant turn's end-of-turn
/// token ([`CompletionEnd::EndOfTurn`]); use the setting the model was
/// trained with. Sequences longer than `max_len` lose their prompt's start.
pub fn score<B: Backend>(
    model: &RewardModel<B>,
    model_dir: &Path,
    data: &Path,
    batch_size: usize,
    max_len: usize,
    completion_end: CompletionEnd,
    device: &B::Device,
) -> Result<Vec<ScoredRecord>> {
    let encoder = encoder(
        model_dir,
        max_len,
        false,
        completion_end,
        &Default::default(),
    )?;
    // transformers compares ids with the config's pad_token_id; the
    // tokenizer's pad token is the fall-back, as in training.
    let pad_id = LlamaConfig::load(&model_dir.join("config.json"))?
        .pad_token_id
        .unwrap_or_else(|| encoder.tokenizer().pad_id());
    // (location, first sequence index, is a pair)
    let mut index = Vec::new();
    let mut seqs = Vec::new();
    for rec in read_any(data, None, &FieldMap::default())? {
        let rec = rec?;
        let at = rec.at.clone();
        match &rec.value {
            AnyRecord::Sft(r) => {
                let mut seq = encoder.sft(r).map_err(|e| e.at(&at))?.tokens;
                if completion_end == CompletionEnd::EndOfTurn {
                    // End at the last trained token (the end-of-turn token),
                    // not at what the template renders after it.
                    let end = seq
                        .loss_mask
                        .iter()
                        .rposition(|&m| m)
                        .map_or(seq.len(), |i| i + 1);
                    seq.input_ids.truncate(end);
                    seq.loss_mask.truncate(end);
                }
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
