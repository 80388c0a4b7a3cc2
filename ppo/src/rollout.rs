//! Rollouts: prompts JSONL → G sampled completions per prompt, with the
//! log-probability of every sampled token.
//!
//! - Prompts are `{"prompt"}` records (a string or a message list, see
//!   `alignkit_datasets::PromptRecord`); every other field of the record is
//!   kept for the rewards (e.g. the `answer` an exact-match rule compares to).
//! - Completions come from the KV-cached batched sampler
//!   ([`alignkit_model::sample`]), each row with its own generator seeded by
//!   (run seed, step, prompt, sample), so a resumed run draws the same
//!   completions as the uninterrupted one and batching does not change them.
//! - A completion ends at an end-of-turn token (kept: the policy learns to
//!   stop), at a stop string (the tokens through the one that completed it are
//!   kept; the text the rewards read ends before it), or at
//!   `max_completion_length` tokens (truncated).
//! - The recorded log-probs are log softmax(logits / T) of the sampled tokens,
//!   as the trainer computes them ([`scaled_token_logprobs`]): TRL divides the
//!   logits by the sampling temperature, and so does alignkit.

use std::path::Path;

use alignkit_datasets::{
    Batch, Encoder, FieldMap, Location, PaddingSide, PromptRecord, Sequence, Tokenizer, Turns,
    collate,
};
use alignkit_model::logprobs::{HeadLogprobs, head_logprobs};
use alignkit_model::mask::attention_mask;
use alignkit_model::precision::to_f32;
use alignkit_model::transformer::Linear;
use alignkit_model::{FinishReason, ForwardInput, LlamaForCausalLM, SamplingConfig, sample};
use alignkit_train::seed::{Stream, derive_seed};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::{Map, Value};

use crate::error::{Result, RlError};

/// One prompt of the prompts file.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// FILE:LINE of the record.
    pub at: Location,
    /// The prompt as written (for `completions.jsonl`).
    pub prompt: Turns,
    /// Tokenized, ending with the generation prompt for chat data.
    pub ids: Vec<u32>,
    /// Fields of the record other than `prompt`, for the rewards.
    pub fields: Map<String, Value>,
    /// Rendered through the chat template (its replies end a turn).
    pub chat: bool,
}

/// Read and tokenize every prompt of `path`. A record without `prompt`, a
/// malformed line or an empty file is an error naming FILE:LINE.
pub fn load_prompts(path: &Path, encoder: &Encoder) -> Result<Vec<Prompt>> {
    Ok(read_prompts(path, encoder)?.0)
}

/// [`load_prompts`], and how many prompts were cut to `data.max_prompt_len`.
pub(crate) fn read_prompts(path: &Path, encoder: &Encoder) -> Result<(Vec<Prompt>, usize)> {
    let mut out = Vec::new();
    let mut truncated = 0;
    for rec in alignkit_datasets::read::<PromptRecord>(path, &FieldMap::default())? {
        let rec = rec?;
        let ex = encoder.prompt(&rec.value).map_err(|e| e.at(&rec.at))?;
        truncated += usize::from(ex.truncation.any());
        if ex.prompt_ids.is_empty() {
            return Err(RlError::Prompt {
                at: rec.at,
                message: "the prompt has no tokens".into(),
            });
        }
        out.push(Prompt {
            chat: encoder.is_chat(&rec.value.prompt),
            at: rec.at,
            prompt: rec.value.prompt,
            ids: ex.prompt_ids,
            fields: rec.extra,
        });
    }
    if out.is_empty() {
        return Err(RlError::Config {
            field: "data.train_file".into(),
            message: format!("{}: no prompts", path.display()),
        });
    }
    Ok((out, truncated))
}

/// How completions are sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSettings {
    /// G: completions per prompt.
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// Strings that end a completion.
    pub stop: Vec<String>,
    /// Rows per sampler call.
    pub generation_batch_size: usize,
}

/// Why a completion ended.
pub type Finish = FinishReason;

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Index of its prompt in the prompts file.
    pub prompt: usize,
    /// Which of the G samples of that prompt (0-based).
    pub sample: usize,
    /// Generated ids, the end-of-turn token included when there is one.
    pub tokens: Vec<u32>,
    /// log softmax(logits / T) of each token when it was sampled. [len(tokens)]
    pub logprobs: Vec<f32>,
    pub finish: Finish,
    /// The text the rewards read: special tokens dropped, cut before a stop string.
    pub text: String,
}

impl Completion {
    /// Ended by an end-of-turn token or a stop string, not cut at the length limit.
    pub fn terminated(&self) -> bool {
        self.finish != FinishReason::Length
    }
}

/// The seed of sample `g` of prompt `prompt` at `step`.
pub fn sample_seed(seed: u64, step: usize, prompt: usize, g: usize, per_prompt: usize) -> u64 {
    derive_seed(
        seed,
        Stream::Sampling,
        step as u64,
        (prompt * per_prompt + g) as u64,
    )
}

/// The text of a completion for the rewards.
fn completion_text(
    tokenizer: &Tokenizer,
    tokens: &[u32],
    finish: Finish,
    stop: &[String],
) -> Result<String> {
    let mut text = tokenizer.decode(tokens, true)?;
    if finish == FinishReason::Stop
        && let Some(i) = stop.iter().filter_map(|s| text.find(s.as_str())).min()
    {
        text.truncate(i);
    }
    Ok(text)
}

/// Sample G completions for each prompt of `indices` (indices into
/// `prompts`) at `step`, `generation_batch_size` rows at a time. Completions
/// come prompt by prompt, G consecutive ones per prompt.
#[allow(clippy::too_many_arguments)]
pub fn roll_out<B: Backend>(
    model: &LlamaForCausalLM<B>,
    prompts: &[Prompt],
    indices: &[usize],
    settings: &RolloutSettings,
    tokenizer: &Tokenizer,
    seed: u64,
    step: usize,
    device: &B::Device,
) -> Result<Vec<Completion>> {
    let g = settings.num_generations;
    let rows: Vec<(usize, usize)> = indices
        .iter()
        .flat_map(|&p| (0..g).map(move |s| (p, s)))
        .collect();
    let config = SamplingConfig {
        max_new_tokens: settings.max_completion_length,
        temperature: settings.temperature,
        top_k: settings.top_k,
        top_p: settings.top_p,
        min_p: 0.0,
        seed: 0,
    };
    let eos = tokenizer.end_of_turn_ids();
    let pad = tokenizer.pad_id();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(settings.generation_batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|&(p, _)| prompts[p].ids.clone()).collect();
        let seeds: Vec<u64> = chunk
            .iter()
            .map(|&(p, s)| sample_seed(seed, step, p, s, g))
            .collect();
        // A stop string may span tokens: decode what the row has so far.
        let stop = |_: usize, generated: &[u32]| {
            !settings.stop.is_empty()
                && tokenizer
                    .decode(generated, true)
                    .is_ok_and(|t| settings.stop.iter().any(|s| t.contains(s.as_str())))
        };
        let sampled = sample(model, &ids, eos, pad, &config, &seeds, stop, device)?;
        for (&(p, s), sampled) in chunk.iter().zip(sampled) {
            let generation = sampled.generation;
            let text = completion_text(
                tokenizer,
                &generation.tokens,
                generation.finish,
                &settings.stop,
            )?;
            out.push(Completion {
                prompt: p,
                sample: s,
                tokens: generation.tokens,
                logprobs: sampled.logprobs,
                finish: generation.finish,
                text,
            });
        }
    }
    Ok(out)
}

/// Prompt + completion rows for a forward pass, with the completion tokens
/// that are scored: for each, its row, the flat index (b·T + t − 1) of the
/// hidden state that predicts it, and its id.
#[derive(Debug, Clone)]
pub struct ScoredTokens {
    pub batch: Batch,
    /// Row of each scored token.
    pub row: Vec<usize>,
    pub hidden_index: Vec<i64>,
    pub target: Vec<i64>,
}

impl ScoredTokens {
    /// The completions `rows` (indices into `completions`) after their
    /// prompts; completion `i`'s tokens are scored when `trained[i]`.
    pub fn of(
        prompts: &[Prompt],
        completions: &[Completion],
        rows: impl IntoIterator<Item = usize>,
        trained: &[bool],
        pad_id: u32,
    ) -> Self {
        let rows: Vec<usize> = rows.into_iter().collect();
        let pairs: Vec<(&[u32], &[u32])> = rows
            .iter()
            .map(|&i| {
                let c = &completions[i];
                (prompts[c.prompt].ids.as_slice(), c.tokens.as_slice())
            })
            .collect();
        let on: Vec<bool> = rows.iter().map(|&i| trained[i]).collect();
        Self::new(&pairs, &on, pad_id)
    }

    /// Rows `prompt ids ++ completion tokens`, right-padded; the completion
    /// tokens of rows with `scored[r]` are scored (a masked completion is
    /// still a row, with no scored token).
    pub fn new(rows: &[(&[u32], &[u32])], scored: &[bool], pad_id: u32) -> Self {
        let seqs: Vec<Sequence> = rows
            .iter()
            .zip(scored)
            .map(|(&(p, c), &on)| {
                let mut input_ids = p.to_vec();
                input_ids.extend_from_slice(c);
                let mut loss_mask = vec![false; p.len()];
                loss_mask.extend(std::iter::repeat_n(on, c.len()));
                Sequence {
                    input_ids,
                    loss_mask,
                }
            })
            .collect();
        let batch = collate(seqs.iter(), pad_id, PaddingSide::Right);
        let t = batch.seq_len;
        let (mut row, mut hidden_index, mut target) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..batch.batch_size {
            for pos in 1..t {
                let i = r * t + pos;
                if batch.loss_mask[i] {
                    row.push(r);
                    hidden_index.push((i - 1) as i64);
                    target.push(batch.input_ids[i] as i64);
                }
            }
        }
        Self {
            batch,
            row,
            hidden_index,
            target,
        }
    }

    pub fn len(&self) -> usize {
        self.row.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row.is_empty()
    }

    /// The model inputs (padding masked out).
    pub fn input<B: Backend>(&self, device: &B::Device) -> ForwardInput<B> {
        let (b, t) = (self.batch.batch_size, self.batch.seq_len);
        let ids: Vec<i64> = self.batch.input_ids.iter().map(|&i| i as i64).collect();
        let valid: Vec<Vec<bool>> = self
            .batch
            .attention_mask
            .chunks(t.max(1))
            .map(<[bool]>::to_vec)
            .collect();
        ForwardInput {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device),
            positions: Tensor::<B, 2, Int>::from_data(
                TensorData::new(self.batch.position_ids.clone(), [b, t]),
                device,
            ),
            mask: attention_mask(&valid, t, None, device),
        }
    }
}

/// Rows of LM-head logits computed at once: bounds the [rows, V] logits held
/// in memory (never [B × T × V]).
pub const HEAD_CHUNK: usize = 256;

/// log softmax(logits / T) of the scored tokens, and with `want_stats` the
/// entropy of each (temperature-scaled) predicted distribution. The logits
/// are h·Wᵀ, so (h / T)·Wᵀ = logits / T: the hidden states are scaled instead,
/// which lets the chunked head (`alignkit_model::logprobs`) do the rest. The
/// caller checks that the LM head has no bias ([`check_head`]).
///
/// Shapes: → [N], N = `tokens.len()`.
pub fn scaled_token_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    tokens: &ScoredTokens,
    temperature: f32,
    want_stats: bool,
    device: &B::Device,
) -> HeadLogprobs<B> {
    let hidden = scored_hidden(model, tokens, device);
    scaled_head(model, hidden, tokens, temperature, want_stats, device)
}

/// [`scaled_token_logprobs`] and the value of each scored token from
/// `value_head` ([1, C]) over the same hidden states, in one forward pass:
/// the critic of `ppo.shared_backbone`. A token's value is read where it is
/// predicted, as [`crate::critic::token_values`] reads a separate critic's.
///
/// Shapes: → ([N], [N]).
pub fn logprobs_and_values<B: Backend>(
    model: &LlamaForCausalLM<B>,
    value_head: &Linear<B>,
    tokens: &ScoredTokens,
    temperature: f32,
    want_stats: bool,
    device: &B::Device,
) -> (HeadLogprobs<B>, Tensor<B, 1>) {
    let hidden = scored_hidden(model, tokens, device);
    let values = to_f32(value_head.forward(hidden.clone())).reshape([tokens.len()]);
    let head = scaled_head(model, hidden, tokens, temperature, want_stats, device);
    (head, values)
}

/// The final hidden state that predicts each scored token. Shapes: → [N, C].
fn scored_hidden<B: Backend>(
    model: &LlamaForCausalLM<B>,
    tokens: &ScoredTokens,
    device: &B::Device,
) -> Tensor<B, 2> {
    let hidden = model.forward_hidden(tokens.input(device), None);
    let [b, t, c] = hidden.dims();
    hidden
        .reshape([b * t, c])
        .select(0, int_index(&tokens.hidden_index, device))
}

fn scaled_head<B: Backend>(
    model: &LlamaForCausalLM<B>,
    hidden: Tensor<B, 2>,
    tokens: &ScoredTokens,
    temperature: f32,
    want_stats: bool,
    device: &B::Device,
) -> HeadLogprobs<B> {
    let target = int_index(&tokens.target, device);
    head_logprobs(
        model,
        hidden.div_scalar(temperature),
        target,
        HEAD_CHUNK,
        want_stats,
    )
}

fn int_index<B: Backend>(v: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

/// Dividing the hidden states by T divides the logits by T only for a head
/// without bias (every Llama-family checkpoint) and, unless T is 1, without
/// soft-capped logits (Gemma 2-style `final_logit_softcapping`).
pub fn check_head<B: Backend>(model: &LlamaForCausalLM<B>, temperature: f64) -> Result<()> {
    if model.lm_head.as_ref().is_some_and(|h| h.bias.is_some()) {
        return Err(RlError::Config {
            field: "model".into(),
            message: "an LM head with a bias is not supported (the logits are temperature-scaled through the hidden states)".into(),
        });
    }
    if model.model.final_logit_softcapping.is_some() && temperature != 1.0 {
        return Err(RlError::Config {
            field: "rollout.temperature".into(),
            message: format!(
                "{temperature}: a model with final_logit_softcapping samples at temperature 1 only (the logits are temperature-scaled through the hidden states, before the cap)"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scored_tokens_cover_completions_of_scored_rows_only() {
        // Row 0: prompt (5, 6), completion (7, 8) → tokens at 2, 3 predicted
        // from hidden rows 1, 2. Row 1: prompt (9), completion (10) not scored.
        let st = ScoredTokens::new(&[(&[5, 6], &[7, 8]), (&[9], &[10])], &[true, false], 0);
        assert_eq!(st.batch.seq_len, 4);
        assert_eq!(st.row, vec![0, 0]);
        assert_eq!(st.hidden_index, vec![1, 2]);
        assert_eq!(st.target, vec![7, 8]);
    }

    #[test]
    fn seeds_differ_by_step_prompt_and_sample() {
        let a = sample_seed(1, 3, 2, 1, 4);
        assert_ne!(a, sample_seed(1, 4, 2, 1, 4));
        assert_ne!(a, sample_seed(1, 3, 1, 1, 4));
        assert_ne!(a, sample_seed(1, 3, 2, 0, 4));
        assert_eq!(a, sample_seed(1, 3, 2, 1, 4));
    }
}
