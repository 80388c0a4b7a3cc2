//! `alignkit eval drift`: what aligning a policy cost — sequence KL to the
//! reference on the policy's own samples, and per-token NLL of both models on
//! a general text.

use std::fmt::Write as _;
use std::path::PathBuf;

use alignkit_eval::MeanInterval;
use alignkit_eval::drift::{TextNll, completion_logprobs, sequence_kl, text_nll};
use alignkit_model::SamplingConfig;
use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use serde::Serialize;

use super::{LEVEL, read_prompts};
use crate::backend::{DeviceSpec, Task};
use crate::common::{Loaded, TemplateArgs, cap_to_context};
use crate::generate::{batch_seed, chat_prompt, progress_bar, prompt_ids};

#[derive(Args, Clone)]
pub struct DriftArgs {
    /// The aligned model (HF directory).
    #[arg(long)]
    pub policy: PathBuf,
    /// The model it started from (same tokenizer).
    #[arg(long)]
    pub reference: PathBuf,
    /// Prompts JSONL to sample the policy's completions on.
    #[arg(long, value_name = "FILE.jsonl")]
    pub prompts: PathBuf,
    /// A general text file: per-token NLL and perplexity of both models on it.
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Completions sampled from the policy per prompt (temperature 1, no filtering).
    #[arg(long, default_value_t = 4)]
    pub num_samples: usize,
    /// Longest completion in tokens (the KL is of completions cut at this length).
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    pub max_new_tokens: usize,
    /// Seed of the sampled completions (the same seed gives the same estimate).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Render string prompts as a user turn with the chat template.
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per NLL window (default: the context, at most 512).
    #[arg(long)]
    pub window: Option<usize>,
    /// Also score the same sampled completions: `sentiment` (VADER compound,
    /// in [−1, 1]) — with the KL, one point of a reward-versus-KL frontier.
    #[arg(long, value_name = "sentiment")]
    pub score: Option<DriftScore>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// What `eval drift --score` scores the sampled completions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftScore {
    /// The VADER compound score of the completion's text.
    Sentiment,
}

/// What `eval drift` measured.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub policy: String,
    pub reference: String,
    /// Sequence-level KL(policy ‖ reference) in nats, per sampled completion.
    pub kl: MeanInterval,
    /// Σ KL terms ÷ Σ completion tokens.
    pub kl_per_token: f64,
    pub samples: usize,
    pub mean_completion_tokens: f64,
    pub max_new_tokens: usize,
    /// NLL of each model on the general text, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextDrift>,
    /// `--score`: what scored the samples, and their mean score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scored_by: Option<DriftScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<MeanInterval>,
    /// With `--score`: signs of reward hacking in the samples' texts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_stats: Option<alignkit_eval::TextStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextDrift {
    pub file: String,
    pub window: usize,
    pub policy: TextNll,
    pub reference: TextNll,
    pub policy_nll_per_token: f64,
    pub reference_nll_per_token: f64,
    pub policy_perplexity: f64,
    pub reference_perplexity: f64,
}

impl DriftReport {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let k = &self.kl;
        let _ = writeln!(
            s,
            "KL(policy ‖ reference): {:.4} nats per completion, 95% CI [{:.4}, {:.4}] ({} samples from the policy, mean {:.1} tokens, at most {}); {:.5} per token",
            k.mean,
            k.low,
            k.high,
            self.samples,
            self.mean_completion_tokens,
            self.max_new_tokens,
            self.kl_per_token
        );
        if let (Some(by), Some(m)) = (&self.scored_by, &self.score) {
            let by = match by {
                DriftScore::Sentiment => "sentiment (VADER compound)",
            };
            let _ = writeln!(
                s,
                "{by} of the same samples: mean {:.4}, 95% CI [{:.4}, {:.4}]",
                m.mean, m.low, m.high
            );
        }
        if let Some(t) = &self.text {
            let _ = writeln!(
                s,
                "NLL on {} ({} tokens, windows of {}): reference {:.4} per token (perplexity {:.2}), policy {:.4} (perplexity {:.2}); change {:+.4}",
                t.file,
                t.reference.tokens,
                t.window,
                t.reference_nll_per_token,
                t.reference_perplexity,
                t.policy_nll_per_token,
                t.policy_perplexity,
                t.policy_nll_per_token - t.reference_nll_per_token
            );
        }
        s
    }
}

impl Task for DriftArgs {
    type Output = DriftReport;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<DriftReport> {
        drift::<B::InnerBackend>(&self, &device)
    }
}

fn drift<B: Backend>(args: &DriftArgs, device: &B::Device) -> Result<DriftReport> {
    if args.num_samples == 0 || args.batch_size == 0 || args.max_new_tokens == 0 {
        bail!("--num-samples, --batch-size and --max-new-tokens must be at least 1");
    }
    let records = read_prompts(&args.prompts)?;
    // The general text and its window are checked before any model loads or
    // samples: the context is in the models' config.json.
    let mut context = usize::MAX;
    for (side, dir) in [("policy", &args.policy), ("reference", &args.reference)] {
        let config = alignkit_model::LlamaConfig::load(&dir.join("config.json"))
            .with_context(|| format!("the {side} {}", dir.display()))?;
        context = context.min(config.max_position_embeddings);
    }
    let general_text = match &args.text {
        None => None,
        Some(path) => {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("--text {}", path.display()))?;
            if content.trim().is_empty() {
                bail!("--text {}: no text", path.display());
            }
            let window = args.window.unwrap_or(context.min(512));
            if window < 2 || window > context {
                bail!("--window must be in 2..={context} (the models' context), got {window}");
            }
            Some((path, content, window))
        }
    };
    let template_kwargs = args.template.kwargs()?;
    let policy = Loaded::<B>::load(&args.policy, device, &template_kwargs)
        .with_context(|| format!("loading the policy {}", args.policy.display()))?;
    let reference = Loaded::<B>::load(&args.reference, device, &template_kwargs)
        .with_context(|| format!("loading the reference {}", args.reference.display()))?;
    // A per-token KL compares distributions over one vocabulary.
    if policy.tokenizer().inner().get_vocab(true) != reference.tokenizer().inner().get_vocab(true)
        || policy.config.vocab_size != reference.config.vocab_size
    {
        bail!(
            "{} and {} have different tokenizers: KL to the reference needs one vocabulary",
            args.policy.display(),
            args.reference.display()
        );
    }
    let ids: Vec<Vec<u32>> = records
        .iter()
        .map(|r| {
            prompt_ids(
                &policy.encoder,
                &chat_prompt(&r.value.prompt, args.chat, None),
            )
            .with_context(|| r.at.to_string())
        })
        .collect::<Result<_>>()?;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let (max_new_tokens, note) = cap_to_context(args.max_new_tokens, longest, context)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    // Exactly π: temperature 1, nothing filtered.
    let sampling = SamplingConfig {
        max_new_tokens,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: args.seed,
    };
    let rows: Vec<Vec<u32>> = ids
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), args.num_samples))
        .collect();
    let bar = progress_bar(rows.len(), "[drift: sample]");
    let mut pairs = Vec::with_capacity(rows.len());
    let tokenizer = policy.tokenizer();
    for (k, chunk) in rows.chunks(args.batch_size).enumerate() {
        let outs = alignkit_model::generate(
            &policy.model,
            chunk,
            &policy.stop_ids(),
            tokenizer.pad_id(),
            &SamplingConfig {
                seed: batch_seed(args.seed, k),
                ..sampling.clone()
            },
            |_, _| false,
            device,
        )?;
        for (p, o) in chunk.iter().zip(outs) {
            pairs.push((p.clone(), o.tokens));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (score, text_stats) = match args.score {
        None => (None, None),
        Some(DriftScore::Sentiment) => {
            let vader = alignkit_eval::Sentiment::new();
            let texts: Vec<String> = pairs
                .iter()
                .map(|(_, c)| Ok(tokenizer.decode(c, true)?))
                .collect::<Result<_>>()?;
            let scores: Vec<f64> = texts.iter().map(|t| vader.score(t)).collect();
            (
                MeanInterval::of(&scores, LEVEL),
                Some(alignkit_eval::TextStats::of(&texts)),
            )
        }
    };
    let lp_policy = completion_logprobs(&policy.model, &pairs, args.batch_size, device)?;
    let lp_reference = completion_logprobs(&reference.model, &pairs, args.batch_size, device)?;
    let kl = sequence_kl(&lp_policy, &lp_reference, LEVEL).expect("prompts are not empty");
    let tokens: usize = pairs.iter().map(|(_, c)| c.len()).sum();
    let text = match general_text {
        None => None,
        Some((path, content, window)) => {
            let nll = |l: &Loaded<B>| -> Result<TextNll> {
                let ids = l.tokenizer().encode(&content, true)?;
                Ok(text_nll(&l.model, &ids, window, args.batch_size, device)?)
            };
            let (p, r) = (nll(&policy)?, nll(&reference)?);
            Some(TextDrift {
                file: path.display().to_string(),
                window,
                policy_nll_per_token: p.per_token(),
                reference_nll_per_token: r.per_token(),
                policy_perplexity: p.perplexity(),
                reference_perplexity: r.perplexity(),
                policy: p,
                reference: r,
            })
        }
    };
    Ok(DriftReport {
        policy: args.policy.display().to_string(),
        reference: args.reference.display().to_string(),
        kl_per_token: (kl.mean * kl.n as f64) / tokens.max(1) as f64,
        kl,
        samples: pairs.len(),
        mean_completion_tokens: tokens as f64 / pairs.len() as f64,
        max_new_tokens,
        text,
        scored_by: args.score,
        score,
        text_stats,
    })
}
