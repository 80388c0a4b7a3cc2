//! Batched autoregressive generation with a KV cache: greedy or sampled
//! (temperature, top-k, top-p, min-p), stopping on EOS, a caller's stop
//! condition (e.g. stop strings), or `max_new_tokens`. [`sample`] gives each
//! row its own seeded generator and records the sampled tokens' log-probs,
//! for online RL.
//!
//! Prompts of different lengths are left-padded so every row's next token is
//! at the same column; padding is masked out and position ids skip it, so a row
//! generates exactly what it would alone. Rows with the same prompt (the G
//! samples per prompt of GRPO and RLOO) are prefilled once.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::Distribution;
use rand_distr::weighted::WeightedIndex;
use rayon::prelude::*;

use crate::cache::KvCache;
use crate::error::{ModelError, Result};
use crate::mask::{attention_mask, positions_from_mask};
use crate::transformer::{ForwardInput, LlamaForCausalLM};

/// How the next token is chosen. Filters apply in transformers' order:
/// temperature, top-k, top-p, min-p.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (Holtzman et al. 2020); 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (Nguyen et al. 2024); 0 disables.
    pub min_p: f32,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Input(msg));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is included in `tokens`).
    Eos,
    /// The caller's stop condition matched.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Whether `config` samples from the whole tempered distribution (nothing
/// cut by top-k, top-p or min-p).
fn unfiltered(config: &SamplingConfig) -> bool {
    config.temperature > 0.0 && config.top_k == 0 && config.top_p >= 1.0 && config.min_p <= 0.0
}

/// A draw from softmax(logits / t) without sorting the vocabulary, with
/// the token's log-probability under it; `None` if the weights are not
/// finite (then the caller takes the argmax).
fn draw_unfiltered(logits: &[f32], temperature: f32, rng: &mut StdRng) -> Option<(u32, f32)> {
    let inv_t = 1.0 / temperature as f64;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let weights = logits.iter().map(|&x| ((x as f64 - max) * inv_t).exp());
    let dist = WeightedIndex::new(weights).ok()?;
    let token = dist.sample(rng);
    let logprob = (logits[token] as f64 - max) * inv_t - dist.total_weight().ln();
    Some((token as u32, logprob as f32))
}

/// The next token of one row and its log-probability under
/// softmax(logits / temperature) before any filtering (temperature 1 when
/// greedy), as [`Sampled`] records it. The unfiltered draw computes the
/// exponentials once for both.
fn choose(logits: &[f32], config: &SamplingConfig, rng: &mut StdRng) -> (u32, f32) {
    if unfiltered(config)
        && let Some(drawn) = draw_unfiltered(logits, config.temperature, rng)
    {
        return drawn;
    }
    let token = sample_token(logits, config, rng);
    (token, scaled_logprob(logits, token, config.temperature))
}

/// Choose the next token from one row of logits.
pub fn sample_token(logits: &[f32], config: &SamplingConfig, rng: &mut StdRng) -> u32 {
    if config.temperature == 0.0 {
        return argmax(logits);
    }
    let inv_t = 1.0 / config.temperature;
    if unfiltered(config) {
        // Nothing is cut from the distribution: draw from it as it is.
        return draw_unfiltered(logits, config.temperature, rng)
            .map_or_else(|| argmax(logits), |(token, _)| token);
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if config.top_k > 0 && config.top_k < order.len() {
        order.select_nth_unstable_by(config.top_k - 1, by_logit_desc);
        order.truncate(config.top_k);
    }
    order.sort_unstable_by(by_logit_desc);
    // Softmax over the kept candidates, in f64 for a stable cumulative sum.
    let max = logits[order[0] as usize] as f64 * inv_t as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (logits[i as usize] as f64 * inv_t as f64 - max).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if config.top_p < 1.0 {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                cumulative += p;
                cumulative >= config.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    if config.min_p > 0.0 {
        let threshold = probs[0] * config.min_p as f64;
        let keep = probs.iter().take_while(|&&p| p >= threshold).count().max(1);
        probs.truncate(keep);
    }
    match WeightedIndex::new(&probs) {
        Ok(dist) => order[dist.sample(rng)],
        Err(_) => order[0],
    }
}

/// Generate continuations of `prompts` (token ids, BOS already included).
///
/// `stop(row, generated)` is asked after each new token; returning true ends
/// that row with [`FinishReason::Stop`]. `pad_id` fills finished rows. All
/// rows draw from one generator seeded with `config.seed`.
pub fn generate<B: Backend>(
    model: &LlamaForCausalLM<B>,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    pad_id: u32,
    config: &SamplingConfig,
    stop: impl FnMut(usize, &[u32]) -> bool,
    device: &B::Device,
) -> Result<Vec<Generation>> {
    let rngs = Rngs::Shared(Box::new(StdRng::seed_from_u64(config.seed)));
    let out = decode(model, prompts, eos_ids, pad_id, config, rngs, stop, device)?;
    Ok(out.into_iter().map(|s| s.generation).collect())
}

/// A sampled continuation and the log-probability of each of its tokens
/// under the distribution it was drawn from, before top-k/top-p/min-p
/// filtering: log softmax(logits / temperature) (temperature 1 when greedy).
/// These are the log-probs an RL trainer computes for the same tokens, since
/// TRL's trainers divide the logits by the sampling temperature too.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub generation: Generation,
    /// One per generated token. [len(tokens)]
    pub logprobs: Vec<f32>,
}

/// Like [`generate`], but row `r` draws from its own generator seeded with
/// `row_seeds[r]` (`config.seed` is unused), so what a row samples does not
/// depend on which rows share its batch or in which order; and each token's
/// log-probability is recorded (see [`Sampled`]).
#[allow(clippy::too_many_arguments)]
pub fn sample<B: Backend>(
    model: &LlamaForCausalLM<B>,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    pad_id: u32,
    config: &SamplingConfig,
    row_seeds: &[u64],
    stop: impl FnMut(usize, &[u32]) -> bool,
    device: &B::Device,
) -> Result<Vec<Sampled>> {
    if row_seeds.len() != prompts.len() {
        return Err(ModelError::Input(format!(
            "{} seeds for {} prompts",
            row_seeds.len(),
            prompts.len()
        )));
    }
    let rngs = Rngs::PerRow(
        row_seeds
            .iter()
            .map(|&s| StdRng::seed_from_u64(s))
            .collect(),
    );
    decode(model, prompts, eos_ids, pad_id, config, rngs, stop, device)
}

/// Where the random draws of a batch come from.
enum Rngs {
    /// One generator, drawn from row by row.
    Shared(Box<StdRng>),
    /// One generator per row.
    PerRow(Vec<StdRng>),
}

/// log softmax(logits / t)[token], in f64 for a stable sum over the vocabulary.
pub fn scaled_logprob(logits: &[f32], token: u32, temperature: f32) -> f32 {
    let inv_t = if temperature > 0.0 {
        1.0 / temperature as f64
    } else {
        1.0
    };
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let sum: f64 = logits
        .iter()
        .map(|&x| ((x as f64 - max) * inv_t).exp())
        .sum();
    ((logits[token as usize] as f64 - max) * inv_t - sum.ln()) as f32
}

#[allow(clippy::too_many_arguments)]
fn decode<B: Backend>(
    model: &LlamaForCausalLM<B>,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    pad_id: u32,
    config: &SamplingConfig,
    mut rngs: Rngs,
    mut stop: impl FnMut(usize, &[u32]) -> bool,
    device: &B::Device,
) -> Result<Vec<Sampled>> {
    config.validate()?;
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!("prompt {i} is empty")));
    }
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let left_padded = |p: &[u32]| {
        let pad = width - p.len();
        std::iter::repeat_n(false, pad)
            .chain(std::iter::repeat_n(true, p.len()))
            .collect::<Vec<bool>>()
    };
    let mut valid: Vec<Vec<bool>> = prompts.iter().map(|p| left_padded(p)).collect();
    let mut lengths: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();

    // Rows that share a prompt (the G samples of one prompt that RL rollouts
    // draw) share its prefill: only the distinct prompts run through the
    // model; their cache and last logits are then copied to each row.
    let (distinct, row_of) = distinct_prompts(prompts);
    let u = distinct.len();
    let prefill_valid: Vec<Vec<bool>> = distinct.iter().map(|p| left_padded(p)).collect();
    let padded = |p: &[u32]| -> Vec<i64> {
        let pad = std::iter::repeat_n(pad_id as i64, width - p.len());
        pad.chain(p.iter().map(|&t| t as i64)).collect()
    };
    let ids: Vec<i64> = distinct.iter().flat_map(|p| padded(p)).collect();
    // LongRoPE (Phi-3) switches to its long factors once a position reaches
    // the original context; the keys cached before then were rotated with
    // the short ones, so the whole sequence is prefilled again at that step,
    // as transformers' Phi-3 `prepare_inputs_for_generation` does.
    let long_from = model.model.rope.long.as_ref().map(|(_, n)| *n as i64);
    let mut short_cache = long_from.is_some_and(|n| (width as i64) - 1 < n);
    let mut history: Vec<Vec<i64>> = match short_cache {
        true => prompts.iter().map(|p| padded(p)).collect(),
        false => Vec::new(),
    };
    let mut cache = KvCache::new(model.model.layers.len(), width + config.max_new_tokens);
    let mut logits = prefill(model, ids, &prefill_valid, &mut cache, device);
    if u < b {
        let rows = row_of.iter().map(|&r| r as i64).collect::<Vec<_>>();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b]), device);
        cache.select_rows(&rows);
        logits = logits.select(0, rows);
    }

    let mut outputs: Vec<Sampled> = (0..b)
        .map(|_| Sampled {
            generation: Generation {
                tokens: Vec::new(),
                finish: FinishReason::Length,
            },
            logprobs: Vec::new(),
        })
        .collect();
    let mut done = vec![false; b];
    for _ in 0..config.max_new_tokens {
        let [_, _, v] = logits.dims();
        let rows = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("{e:?}")))?;
        let mut next = vec![pad_id as i64; b];
        let row_logits = |row: usize| &rows[row * v..(row + 1) * v];
        // Rows with their own generators draw in parallel (each row's draw
        // depends on its logits and generator only); a shared generator is
        // drawn from row by row.
        let chosen: Vec<Option<(u32, f32)>> = match &mut rngs {
            Rngs::PerRow(rngs) => rngs
                .par_iter_mut()
                .enumerate()
                .map(|(row, rng)| (!done[row]).then(|| choose(row_logits(row), config, rng)))
                .collect(),
            Rngs::Shared(rng) => (0..b)
                .map(|row| (!done[row]).then(|| (sample_token(row_logits(row), config, rng), 0.0)))
                .collect(),
        };
        let record_logprobs = matches!(rngs, Rngs::PerRow(_));
        for (row, chosen) in chosen.into_iter().enumerate() {
            let Some((token, logprob)) = chosen else {
                continue;
            };
            next[row] = token as i64;
            let out = &mut outputs[row];
            if record_logprobs {
                out.logprobs.push(logprob);
            }
            let gen_out = &mut out.generation;
            gen_out.tokens.push(token);
            if eos_ids.contains(&token) {
                gen_out.finish = FinishReason::Eos;
                done[row] = true;
            } else if stop(row, &gen_out.tokens) {
                gen_out.finish = FinishReason::Stop;
                done[row] = true;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        for (row, v) in valid.iter_mut().enumerate() {
            v.push(!done[row]);
        }
        let positions = lengths.clone();
        for (row, len) in lengths.iter_mut().enumerate() {
            *len += !done[row] as i64;
        }
        if short_cache {
            history.iter_mut().zip(&next).for_each(|(h, &t)| h.push(t));
        }
        let switch = short_cache && long_from.is_some_and(|n| positions.iter().any(|&p| p >= n));
        if switch {
            short_cache = false;
            cache = KvCache::new(model.model.layers.len(), width + config.max_new_tokens);
            logits = prefill(model, history.concat(), &valid, &mut cache, device);
            continue;
        }
        let input = ForwardInput {
            input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(next, [b, 1]), device),
            positions: Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, 1]), device),
            mask: attention_mask::<B>(&valid, 1, None, device),
        };
        logits = model.forward(input, Some(&mut cache));
    }
    Ok(outputs)
}

/// Run padded rows `ids` ([rows, S] flat, `valid` marking the real tokens)
/// into an empty `cache`; the logits of their last position. [rows, 1, V]
fn prefill<B: Backend>(
    model: &LlamaForCausalLM<B>,
    ids: Vec<i64>,
    valid: &[Vec<bool>],
    cache: &mut KvCache<B>,
    device: &B::Device,
) -> Tensor<B, 3> {
    let (rows, s) = (valid.len(), valid.first().map_or(0, Vec::len));
    let positions = positions_from_mask(valid).concat();
    let input = ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, s]), device),
        positions: Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [rows, s]), device),
        mask: attention_mask::<B>(valid, s, None, device),
    };
    let hidden = model.forward_hidden(input, Some(cache));
    model.lm_logits(hidden.narrow(1, s - 1, 1))
}

/// The distinct prompts in order of first appearance, and for each row the
/// index of its prompt among them.
fn distinct_prompts(prompts: &[Vec<u32>]) -> (Vec<&[u32]>, Vec<usize>) {
    let mut index: HashMap<&[u32], usize> = HashMap::new();
    let mut distinct = Vec::new();
    let row_of = prompts
        .iter()
        .map(|p| {
            *index.entry(p.as_slice()).or_insert_with(|| {
                distinct.push(p.as_slice());
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, row_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LlamaConfig, ModelType};
    use burn::backend::Flex;

    /// A row samples the same tokens, with the same log-probs, whether its
    /// prompt is prefilled for it alone or shared with other rows of the batch
    /// (rows 0, 2 and 3 share prompt A; row 1's B is shorter, so padded).
    #[test]
    fn rows_sharing_a_prompt_sample_as_they_would_alone() {
        let device = Default::default();
        let model = LlamaForCausalLM::<Flex>::init(&LlamaConfig::tiny(ModelType::Llama), &device);
        let a = vec![1, 5, 9, 13, 2, 7];
        let b = vec![1, 4, 4];
        let prompts = vec![a.clone(), b, a.clone(), a];
        let seeds = [11, 12, 13, 14];
        let config = SamplingConfig {
            max_new_tokens: 12,
            temperature: 1.0,
            ..SamplingConfig::default()
        };
        let batch = sample(
            &model,
            &prompts,
            &[],
            0,
            &config,
            &seeds,
            |_, _| false,
            &device,
        )
        .unwrap();
        let tokens: Vec<&Vec<u32>> = batch.iter().map(|s| &s.generation.tokens).collect();
        assert_ne!(
            tokens[0], tokens[2],
            "different seeds draw different samples"
        );
        for (row, prompt) in prompts.iter().enumerate() {
            let alone = sample(
                &model,
                std::slice::from_ref(prompt),
                &[],
                0,
                &config,
                &seeds[row..=row],
                |_, _| false,
                &device,
            )
            .unwrap();
            assert_eq!(alone[0].generation, batch[row].generation, "row {row}");
            for (x, y) in alone[0].logprobs.iter().zip(&batch[row].logprobs) {
                assert!((x - y).abs() < 1e-5, "row {row}: {x} vs {y}");
            }
        }
    }

    /// One draw gives the token `sample_token` draws with the same generator
    /// and the log-prob `scaled_logprob` computes for it, filtered or not.
    #[test]
    fn choose_draws_as_sample_token_and_scores_as_scaled_logprob() {
        let logits: Vec<f32> = (0..50)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        for config in [
            SamplingConfig {
                temperature: 0.7,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                temperature: 1.0,
                top_k: 5,
                ..SamplingConfig::default()
            },
            SamplingConfig::default(),
        ] {
            for seed in 0..20 {
                let (token, logprob) = choose(&logits, &config, &mut StdRng::seed_from_u64(seed));
                let again = sample_token(&logits, &config, &mut StdRng::seed_from_u64(seed));
                assert_eq!(token, again, "{config:?}, seed {seed}");
                let want = scaled_logprob(&logits, token, config.temperature);
                assert!(
                    (logprob - want).abs() < 1e-6,
                    "{config:?}: {logprob} vs {want}"
                );
            }
        }
    }

    #[test]
    fn distinct_prompts_keep_first_appearance_order() {
        let prompts = vec![vec![3], vec![1, 2], vec![3], vec![1, 2], vec![4]];
        let (distinct, row_of) = distinct_prompts(&prompts);
        assert_eq!(distinct, vec![&[3][..], &[1, 2][..], &[4][..]]);
        assert_eq!(row_of, vec![0, 1, 0, 1, 2]);
    }

    /// Logits (0, ln 3): at T = 1, p = (1/4, 3/4) → log p₁ = ln ¾ = −0.2876821;
    /// at T = ½ the logits double to (0, ln 9), p₁ = 9/10 → ln 0.9 = −0.1053605.
    #[test]
    fn scaled_logprob_divides_the_logits_by_the_temperature() {
        let logits = [0.0, 3f32.ln()];
        assert!((scaled_logprob(&logits, 1, 1.0) + 0.287_682_1).abs() < 1e-6);
        assert!((scaled_logprob(&logits, 1, 0.5) + 0.105_360_5).abs() < 1e-6);
        assert!((scaled_logprob(&logits, 0, 0.0) + 4f32.ln()).abs() < 1e-6);
    }
}
