//! What alignment cost: how far the policy moved from its reference, and how
//! much worse it predicts ordinary text.
//!
//! - Sequence KL(π‖π_ref) by Monte Carlo: for completions y sampled from π
//!   (temperature 1, no truncation of the distribution), the mean of
//!   log π(y|x) − log π_ref(y|x), each summed over y's tokens, is an unbiased
//!   estimate of the KL of the (length-limited) sequence distributions.
//!   See: Schulman (2020), "Approximating KL divergence" (the k1 estimator);
//!   the `objective/kl` TRL logs for PPO/RLOO is the same quantity.
//! - Per-token negative log-likelihood and perplexity on a general text file:
//!   the forgetting measure (a policy that predicts ordinary prose worse than
//!   its base has lost something).

use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, LlamaForCausalLM};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::error::{EvalError, Result};

/// A sample mean with a Student-t confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanInterval {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (ddof 1); 0 for one value.
    pub sd: f64,
    /// mean ± t(n−1) · sd / √n; the mean itself when n = 1.
    pub low: f64,
    pub high: f64,
    pub level: f64,
}

impl MeanInterval {
    /// `None` for no values.
    pub fn of(values: &[f64], level: f64) -> Option<MeanInterval> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Some(MeanInterval {
                n,
                mean,
                sd: 0.0,
                low: mean,
                high: mean,
                level,
            });
        }
        let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
            .expect("n − 1 ≥ 1 degrees of freedom")
            .inverse_cdf(0.5 + level / 2.0);
        let half = t * sd / (n as f64).sqrt();
        Some(MeanInterval {
            n,
            mean,
            sd,
            low: mean - half,
            high: mean + half,
            level,
        })
    }
}

/// The Monte-Carlo KL estimate from per-sample sequence log-probs of the
/// completions (sampled from the policy) under the policy and the reference.
pub fn sequence_kl(policy: &[f64], reference: &[f64], level: f64) -> Option<MeanInterval> {
    let diffs: Vec<f64> = policy.iter().zip(reference).map(|(p, r)| p - r).collect();
    MeanInterval::of(&diffs, level)
}

/// log p(completion | prompt), summed over the completion's tokens, for each
/// (prompt ids, completion ids) row; `batch_size` rows per forward pass.
/// An empty completion has log-prob 0.
pub fn completion_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    rows: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<f64>> {
    if let Some(i) = rows.iter().position(|(p, _)| p.is_empty()) {
        return Err(EvalError::Input(format!(
            "prompt {i} has no tokens, so its completion's first token has no context"
        )));
    }
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(p, c)| p.iter().chain(c).copied().collect())
            .collect();
        let per_token = token_logprobs(model, &seqs, device)?;
        for ((p, c), lp) in chunk.iter().zip(&per_token) {
            // lp[i] = log p(seq[i + 1]); the completion starts at seq[p.len()].
            out.push(lp[p.len() - 1..p.len() - 1 + c.len()].iter().sum());
        }
    }
    Ok(out)
}

/// Per-position log-probs of right-padded sequences (each of length ≥ 1):
/// row r gets len_r − 1 values, log p(seq[i + 1] | seq[..=i]).
fn token_logprobs<B: Backend>(
    model: &LlamaForCausalLM<B>,
    seqs: &[Vec<u32>],
    device: &B::Device,
) -> Result<Vec<Vec<f64>>> {
    let b = seqs.len();
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if t < 2 {
        return Ok(seqs.iter().map(|_| Vec::new()).collect());
    }
    let mut ids = Vec::with_capacity(b * t);
    let mut positions = Vec::with_capacity(b * t);
    let mut valid = Vec::with_capacity(b);
    for s in seqs {
        ids.extend(s.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(0, t - s.len()));
        positions.extend(0..t as i64);
        valid.push((0..t).map(|i| i < s.len()).collect::<Vec<bool>>());
    }
    let input = ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), device),
        positions: Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, t]), device),
        mask: attention_mask::<B>(&valid, t, None, device),
    };
    let flat = sequence_logprobs(model, input)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| EvalError::Input(format!("reading log-probs: {e:?}")))?;
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(r, s)| {
            flat[r * (t - 1)..r * (t - 1) + s.len().saturating_sub(1)]
                .iter()
                .map(|&x| x as f64)
                .collect()
        })
        .collect())
}

/// A model's negative log-likelihood on a text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TextNll {
    /// Tokens predicted (every token but the first of each window).
    pub tokens: usize,
    /// Σ −log p over them, in nats.
    pub nll: f64,
}

impl TextNll {
    pub fn per_token(&self) -> f64 {
        self.nll / self.tokens.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.per_token().exp()
    }
}

/// NLL of `ids` in consecutive, non-overlapping windows of `window` tokens
/// (each predicted from its own window only), `batch_size` windows per pass.
/// Two models compare fairly on the same ids and window.
pub fn text_nll<B: Backend>(
    model: &LlamaForCausalLM<B>,
    ids: &[u32],
    window: usize,
    batch_size: usize,
    device: &B::Device,
) -> Result<TextNll> {
    if window < 2 {
        return Err(EvalError::Input(format!(
            "the NLL window must hold at least 2 tokens, got {window}"
        )));
    }
    let windows: Vec<Vec<u32>> = ids
        .chunks(window)
        .filter(|w| w.len() >= 2)
        .map(<[u32]>::to_vec)
        .collect();
    let mut result = TextNll {
        tokens: 0,
        nll: 0.0,
    };
    for chunk in windows.chunks(batch_size.max(1)) {
        for lp in token_logprobs(model, chunk, device)? {
            result.tokens += lp.len();
            result.nll -= lp.iter().sum::<f64>();
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alignkit_model::{LlamaConfig, ModelType};
    use burn::backend::Flex;

    #[test]
    fn mean_interval_matches_the_t_table() {
        // 1, 2, 3, 4, 5: mean 3, sd = √2.5 = 1.581139, t(4, 0.975) = 2.776445,
        // half = 2.776445 · 1.581139 / √5 = 1.963243.
        let m = MeanInterval::of(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.95).unwrap();
        assert!((m.mean - 3.0).abs() < 1e-12);
        assert!((m.sd - 2.5_f64.sqrt()).abs() < 1e-12);
        assert!((m.high - 3.0 - 1.963_243).abs() < 1e-5, "{}", m.high);
        assert!((m.low - 3.0 + 1.963_243).abs() < 1e-5, "{}", m.low);
        assert!(MeanInterval::of(&[], 0.95).is_none());
        let one = MeanInterval::of(&[2.0], 0.95).unwrap();
        assert_eq!((one.low, one.high), (2.0, 2.0));
        // KL from per-sample log-probs: differences 1, 0, −1, 4 → mean 1.
        let kl = sequence_kl(&[-1.0, -2.0, -3.0, 0.0], &[-2.0, -2.0, -2.0, -4.0], 0.95).unwrap();
        assert!((kl.mean - 1.0).abs() < 1e-12);
    }

    fn tiny() -> LlamaForCausalLM<Flex> {
        let mut config = LlamaConfig::tiny(ModelType::Llama);
        config.max_position_embeddings = 64;
        LlamaForCausalLM::init(&config, &Default::default())
    }

    #[test]
    fn batched_and_padded_log_probs_equal_one_row_at_a_time() {
        let model = tiny();
        let device = Default::default();
        let rows = vec![
            (vec![1, 5, 9], vec![4, 4, 7, 2]),
            (vec![1, 3], vec![8]),
            (vec![1, 6, 6, 6, 6], vec![]),
        ];
        let batched = completion_logprobs(&model, &rows, 8, &device).unwrap();
        for (row, expected) in rows.iter().zip(&batched) {
            let alone = completion_logprobs(&model, std::slice::from_ref(row), 1, &device).unwrap();
            assert!(
                (alone[0] - expected).abs() < 1e-4,
                "{} vs {expected}",
                alone[0]
            );
        }
        assert_eq!(batched[2], 0.0);
        assert!(batched[0] < 0.0 && batched[1] < 0.0);
        // The same model as policy and reference: every sample's KL term is 0.
        let kl = sequence_kl(&batched, &batched, 0.95).unwrap();
        assert_eq!((kl.mean, kl.low, kl.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn text_nll_sums_each_windows_predictions() {
        let model = tiny();
        let device = Default::default();
        let ids: Vec<u32> = (0..23).map(|i| (i * 7 % 90) as u32 + 3).collect();
        let nll = text_nll(&model, &ids, 10, 2, &device).unwrap();
        // Windows of 10, 10, 3 tokens predict 9 + 9 + 2 tokens.
        assert_eq!(nll.tokens, 20);
        // The same as the completion log-probs of each window after its first token.
        let rows: Vec<(Vec<u32>, Vec<u32>)> = ids
            .chunks(10)
            .map(|w| (w[..1].to_vec(), w[1..].to_vec()))
            .collect();
        let lp: f64 = completion_logprobs(&model, &rows, 8, &device)
            .unwrap()
            .iter()
            .sum();
        assert!((nll.nll + lp).abs() < 1e-3, "{} vs {}", nll.nll, -lp);
        // A random 96-token model is near uniform: perplexity near 96.
        assert!(
            nll.perplexity() > 50.0 && nll.perplexity() < 200.0,
            "{}",
            nll.perplexity()
        );
        assert!(text_nll(&model, &ids, 1, 2, &device).is_err());
    }
}
