//! `alignkit eval winrate` with machine judges: both sides' responses (cached
//! by model fingerprint, prompt ids and sampling settings), judged by a reward
//! model, a rule or the sentiment score, or written as a blind candidates file
//! for people (`--judge human`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use alignkit_datasets::{Preference, PromptRecord, Record, Turns};
use alignkit_eval::generations::{
    GenerationCache, GenerationSettings, Generations, cache_key, model_fingerprint,
};
use alignkit_eval::{Judged, MeanInterval, Outcome, PairedRates, WinRate};
use alignkit_model::SamplingConfig;
use alignkit_model::checkpoint::write_atomic;
use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use serde_json::json;

use super::report::{JudgeResult, MeanScores, ResponseRow, WinrateReport};
use super::{BASELINE, Judge, LEVEL, POLICY, read_prompts};
use crate::backend::{DeviceSpec, Task};
use crate::common::{Loaded, SamplingArgs, TemplateArgs, cap_to_context, inference_encoder};
use crate::generate::{chat_prompt, progress_bar, prompt_ids, sample_all};

#[derive(Args, Clone)]
pub struct WinrateArgs {
    /// The model being evaluated (HF directory).
    #[arg(long, required_unless_present = "judgments")]
    pub policy: Option<PathBuf>,
    /// The model it is compared with (HF directory; its own tokenizer is used).
    #[arg(long, required_unless_present = "judgments")]
    pub baseline: Option<PathBuf>,
    /// Prompts JSONL ({"prompt"}: a string or a message list; other fields are
    /// kept for rule:exact=FIELD).
    #[arg(long, value_name = "FILE.jsonl", required_unless_present = "judgments")]
    pub prompts: Option<PathBuf>,
    /// reward:DIR, rule:RULE, sentiment or human (repeatable). Parsed by [`WinrateArgs::judges`],
    /// so that a bad one is reported in one line.
    #[arg(
        long = "judge",
        value_name = "JUDGE",
        required_unless_present = "judgments"
    )]
    pub judges: Vec<String>,
    /// With a reward judge: reward differences within ±M count as ties.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "M",
        allow_negative_numbers = true
    )]
    pub tie_margin: f64,
    /// Aggregate the judgments `alignkit label` wrote on the file `--judge human` made.
    #[arg(
        long,
        num_args = 1..,
        value_name = "J.jsonl",
        conflicts_with_all = ["policy", "baseline", "prompts", "judges"]
    )]
    pub judgments: Vec<PathBuf>,
    /// The candidates file the judgments are about (default: OUT/human-candidates.jsonl).
    #[arg(long, value_name = "FILE", requires = "judgments")]
    pub candidates: Option<PathBuf>,
    /// Directory for cached generations and results (default: alignkit-eval; with
    /// --judgments, the directory of the candidates file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Render string prompts as a user turn with each model's chat template.
    #[arg(long)]
    pub chat: bool,
    // The template variables hold for the reward judge's template too.
    #[command(flatten)]
    pub template: TemplateArgs,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

impl WinrateArgs {
    /// Where generations are cached and results written.
    pub fn out_dir(&self) -> PathBuf {
        if let Some(out) = &self.out {
            return out.clone();
        }
        match &self.candidates {
            Some(c) if !self.judgments.is_empty() => c
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            _ => PathBuf::from("alignkit-eval"),
        }
    }

    /// The judges, parsed.
    pub fn judges(&self) -> Result<Vec<Judge>> {
        if self.judges.is_empty() {
            bail!("give at least one --judge (reward:DIR, rule:RULE, sentiment or human)");
        }
        self.judges
            .iter()
            .map(|j| j.parse().map_err(|e| anyhow::anyhow!("--judge {j}: {e}")))
            .collect()
    }

    fn check(&self) -> Result<SamplingConfig> {
        let sampling = self.sampling.config()?;
        if !(self.tie_margin >= 0.0 && self.tie_margin.is_finite()) {
            bail!("--tie-margin must be >= 0, got {}", self.tie_margin);
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(sampling)
    }
}

impl Task for WinrateArgs {
    type Output = WinrateReport;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<WinrateReport> {
        winrate::<B::InnerBackend>(&self, &device)
    }
}

/// `--judge reward:DIR` names a reward model: a directory whose config is a
/// sequence classifier's (read without its weights).
pub(crate) fn check_reward_judge(dir: &Path) -> Result<()> {
    if !dir.join("config.json").is_file() {
        bail!(
            "--judge reward:{}: no config.json there (expected a reward model directory)",
            dir.display()
        );
    }
    let config = alignkit_model::LlamaConfig::load(&dir.join("config.json"))?;
    if !alignkit_model::heads::is_sequence_classification(&config) {
        bail!(
            "--judge reward:{0}: {0} is not a reward model (no *ForSequenceClassification architecture)",
            dir.display()
        );
    }
    Ok(())
}

/// Policy and baseline are two different policies (causal LMs, read
/// without their weights); their fingerprints (policy, baseline). A model
/// compared with itself ties on every prompt, so that is refused.
fn check_sides(policy: &Path, baseline: &Path) -> Result<(String, String)> {
    for (side, dir) in [(POLICY, policy), (BASELINE, baseline)] {
        let config = alignkit_model::LlamaConfig::load(&dir.join("config.json"))
            .with_context(|| format!("the {side} {}", dir.display()))?;
        if alignkit_model::heads::is_sequence_classification(&config) {
            bail!(
                "--{side} {}: a reward model (*ForSequenceClassification), not a policy",
                dir.display()
            );
        }
    }
    let same = |why: &str| {
        anyhow::anyhow!(
            "--policy {} and --baseline {} are {why}: every prompt would tie; compare two different models",
            policy.display(),
            baseline.display()
        )
    };
    if std::fs::canonicalize(policy)? == std::fs::canonicalize(baseline)? {
        return Err(same("the same directory"));
    }
    let fingerprints = (model_fingerprint(policy)?, model_fingerprint(baseline)?);
    if fingerprints.0 == fingerprints.1 {
        return Err(same("the same model (identical files)"));
    }
    Ok(fingerprints)
}

/// One side's responses (`side`: its name, directory and fingerprint): from
/// the cache when the model, prompt ids and settings are unchanged, sampled
/// (and cached) otherwise.
fn side_responses<B: Backend>(
    (side, dir, fingerprint): (&str, &Path, &str),
    turns: &[Turns],
    records: &[Record<PromptRecord>],
    sampling: &SamplingConfig,
    args: &WinrateArgs,
    device: &B::Device,
) -> Result<(Generations, bool)> {
    // The key needs the prompt ids and the context, not the weights: a cache
    // hit never loads the model.
    let config = alignkit_model::LlamaConfig::load(&dir.join("config.json"))
        .with_context(|| format!("the {side} {}", dir.display()))?;
    let template_kwargs = args.template.kwargs()?;
    let encoder = inference_encoder(dir, &template_kwargs)
        .with_context(|| format!("the {side} {}", dir.display()))?;
    let ids: Vec<Vec<u32>> = turns
        .iter()
        .zip(records)
        .map(|(t, r)| prompt_ids(&encoder, t).with_context(|| r.at.to_string()))
        .collect::<Result<_>>()?;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let (max_new_tokens, note) = cap_to_context(
        sampling.max_new_tokens,
        longest,
        config.max_position_embeddings,
    )?;
    if let Some(note) = note {
        eprintln!("note: {side}: {note}");
    }
    let settings = GenerationSettings {
        max_new_tokens,
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        seed: sampling.seed,
        stop: args.sampling.stop.clone(),
        batch_size: args.batch_size,
    };
    let key = cache_key(fingerprint, &ids, &settings);
    let cache = GenerationCache::new(args.out_dir().join("generations"));
    if let Some(cached) = cache.load(&key, ids.len())? {
        eprintln!(
            "{side}: {} responses from the cache ({})",
            cached.responses.len(),
            cache.path(&key).display()
        );
        return Ok((cached, true));
    }
    let loaded = Loaded::<B>::load(dir, device, &template_kwargs)
        .with_context(|| format!("loading the {side} {}", dir.display()))?;
    let bar = progress_bar(ids.len(), &format!("[generate {side}]"));
    let responses = sample_all(&loaded, &ids, &settings, device, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let generations = Generations {
        key,
        model: dir.display().to_string(),
        fingerprint: fingerprint.to_string(),
        settings,
        responses,
    };
    let path = cache.store(&generations)?;
    eprintln!(
        "{side}: {} responses generated, cached in {}",
        generations.responses.len(),
        path.display()
    );
    Ok((generations, false))
}

pub(crate) fn winrate<B: Backend>(args: &WinrateArgs, device: &B::Device) -> Result<WinrateReport> {
    let sampling = args.check()?;
    let (Some(policy), Some(baseline), Some(prompts_path)) =
        (&args.policy, &args.baseline, &args.prompts)
    else {
        bail!("--policy, --baseline and --prompts are required (or --judgments to aggregate)");
    };
    let judge_list = args.judges()?;
    let records = read_prompts(prompts_path)?;
    // Refuse a missing reference field or a model that cannot take its part
    // before generating anything.
    for judge in &judge_list {
        if let Judge::Rule(rule) = judge {
            for r in &records {
                rule.check_record(&r.extra)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", r.at))?;
            }
        }
        if let Judge::Reward(dir) = judge {
            check_reward_judge(dir)?;
        }
    }
    let fingerprints = check_sides(policy, baseline)?;
    let turns: Vec<Turns> = records
        .iter()
        .map(|r| chat_prompt(&r.value.prompt, args.chat, None))
        .collect();
    let out = args.out_dir();
    let judges = judge_list.iter().filter_map(|j| match j {
        Judge::Reward(dir) => Some(dir.as_path()),
        _ => None,
    });
    let inputs: Vec<&Path> = [policy.as_path(), baseline.as_path(), prompts_path.as_path()]
        .into_iter()
        .chain(judges)
        .collect();
    ensure_distinct(&out, Writes::Path, &inputs)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let (pol, pol_cached) = side_responses::<B>(
        (POLICY, policy, &fingerprints.0),
        &turns,
        &records,
        &sampling,
        args,
        device,
    )?;
    let (base, base_cached) = side_responses::<B>(
        (BASELINE, baseline, &fingerprints.1),
        &turns,
        &records,
        &sampling,
        args,
        device,
    )?;
    let texts = |g: &Generations| -> Vec<String> {
        g.responses
            .iter()
            .map(|r| r.text.trim().to_string())
            .collect()
    };
    let (pol_texts, base_texts) = (texts(&pol), texts(&base));
    let lengths: Vec<(usize, usize)> = pol_texts
        .iter()
        .zip(&base_texts)
        .map(|(p, b)| (p.chars().count(), b.chars().count()))
        .collect();

    let mut judges = Vec::new();
    let mut human_candidates = None;
    for judge in &judge_list {
        let mut pass_rates = None;
        let (outcomes, scores) = match judge {
            Judge::Rule(rule) => {
                let mut passes = Vec::with_capacity(records.len());
                for ((r, p), b) in records.iter().zip(&pol_texts).zip(&base_texts) {
                    let pass = |t: &str| {
                        rule.check(t, &r.extra)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", r.at))
                    };
                    passes.push((pass(p)?, pass(b)?));
                }
                pass_rates = Some(PairedRates::new(&passes, LEVEL));
                let outcomes: Vec<Outcome> = passes
                    .iter()
                    .map(|&(p, b)| Outcome::from_passes(p, b))
                    .collect();
                (outcomes, Vec::new())
            }
            Judge::Sentiment => {
                let vader = alignkit_eval::Sentiment::new();
                let scores: Vec<(f64, f64)> = pol_texts
                    .iter()
                    .zip(&base_texts)
                    .map(|(p, b)| (vader.score(p), vader.score(b)))
                    .collect();
                let outcomes = scores
                    .iter()
                    .map(|&(p, b)| Outcome::from_scores(p, b, args.tie_margin))
                    .collect();
                (outcomes, scores)
            }
            Judge::Reward(dir) => {
                let scores =
                    reward_scores::<B>(dir, &turns, &pol_texts, &base_texts, args, device)?;
                let outcomes = scores
                    .iter()
                    .map(|&(p, b)| Outcome::from_scores(p, b, args.tie_margin))
                    .collect();
                (outcomes, scores)
            }
            Judge::Human => {
                let path = out.join("human-candidates.jsonl");
                write_human_candidates(
                    &path,
                    &pol,
                    &base,
                    &turns,
                    &pol_texts,
                    &base_texts,
                    sampling.seed,
                )?;
                human_candidates = Some(path);
                continue;
            }
        };
        let judged: Vec<Judged> = outcomes
            .iter()
            .zip(&lengths)
            .map(|(&outcome, &(policy_len, baseline_len))| Judged {
                outcome,
                policy_len,
                baseline_len,
            })
            .collect();
        judges.push(JudgeResult {
            judge: judge.to_string(),
            result: WinRate::compute(&judged, LEVEL).expect("prompts are not empty"),
            mean_scores: (!scores.is_empty()).then(|| {
                let n = scores.len() as f64;
                let d: Vec<f64> = scores.iter().map(|s| s.0 - s.1).collect();
                MeanScores {
                    policy: scores.iter().map(|s| s.0).sum::<f64>() / n,
                    baseline: scores.iter().map(|s| s.1).sum::<f64>() / n,
                    difference: MeanInterval::of(&d, LEVEL).expect("scores are not empty"),
                }
            }),
            outcomes,
            scores,
            pass_rates,
            human: None,
        });
    }
    let rows = turns
        .iter()
        .zip(pol_texts)
        .zip(base_texts)
        .map(|((prompt, policy), baseline)| ResponseRow {
            prompt: prompt.clone(),
            policy,
            baseline,
        })
        .collect();
    Ok(WinrateReport {
        policy: policy.display().to_string(),
        baseline: baseline.display().to_string(),
        prompts: records.len(),
        settings: BTreeMap::from([
            (POLICY.to_string(), pol.settings.clone()),
            (BASELINE.to_string(), base.settings.clone()),
        ]),
        judges,
        cached: BTreeMap::from([
            (POLICY.to_string(), pol_cached),
            (BASELINE.to_string(), base_cached),
        ]),
        human_candidates,
        judged_file: None,
        rows,
    })
}

/// (policy, baseline) reward per prompt, with the reward model's own tokenizer
/// and chat template, read at each response's last token (as `alignkit reward score`).
fn reward_scores<B: Backend>(
    dir: &Path,
    turns: &[Turns],
    policy: &[String],
    baseline: &[String],
    args: &WinrateArgs,
    device: &B::Device,
) -> Result<Vec<(f64, f64)>> {
    let (config, model) = alignkit_model::heads::load_reward_model::<B>(dir, device)
        .with_context(|| format!("loading the reward model {}", dir.display()))?;
    let encoder = alignkit_reward::data::encoder(
        dir,
        config.max_position_embeddings,
        false,
        alignkit_datasets::CompletionEnd::default(),
        &args.template.kwargs()?,
    )?;
    let mut seqs = Vec::with_capacity(2 * turns.len());
    for (i, ((prompt, p), b)) in turns.iter().zip(policy).zip(baseline).enumerate() {
        let pair = Preference {
            prompt: prompt.clone(),
            chosen: Turns::Text(p.clone()),
            rejected: Turns::Text(b.clone()),
            implicit_prompt: false,
        };
        let ex = encoder
            .preference(&pair)
            .with_context(|| format!("prompt {}: encoding for the reward model", i + 1))?;
        seqs.push(ex.chosen());
        seqs.push(ex.rejected());
    }
    let rewards = alignkit_reward::score_sequences(
        &model,
        &seqs,
        args.batch_size,
        encoder.tokenizer().pad_id(),
        device,
    );
    Ok(rewards
        .chunks(2)
        .map(|r| (r[0] as f64, r[1] as f64))
        .collect())
}

/// Hex of a short hash, for ids that tie candidates to their generations.
fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A blind candidates file for `alignkit label`: per prompt the two responses
/// in a seeded random order, each with its `source` (hidden while judging).
/// Item ids name the pair of generations, so judgments of another run's file
/// do not match.
fn write_human_candidates(
    path: &Path,
    policy: &Generations,
    baseline: &Generations,
    turns: &[Turns],
    pol_texts: &[String],
    base_texts: &[String],
    seed: u64,
) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let tag = short_hash(&format!("{}{}", policy.key, baseline.key));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut text = String::new();
    for (i, ((prompt, p), b)) in turns.iter().zip(pol_texts).zip(base_texts).enumerate() {
        let mut responses = vec![
            json!({"text": p, "source": POLICY}),
            json!({"text": b, "source": BASELINE}),
        ];
        if rng.random::<bool>() {
            responses.swap(0, 1);
        }
        let item =
            json!({"id": format!("wr-{tag}-{}", i + 1), "prompt": prompt, "responses": responses});
        writeln!(text, "{item}").expect("writing to a string");
    }
    write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "human judge: {} items in {}; judge them with\n  alignkit label {} --judgments judgments.jsonl --annotator NAME\nthen aggregate with\n  alignkit eval winrate --judgments judgments.jsonl --candidates {}",
        turns.len(),
        path.display(),
        path.display(),
        path.display()
    );
    Ok(())
}
