//! `alignkit eval`: how a policy compares with a baseline, and what aligning it cost.
//!
//! ```text
//! alignkit eval winrate --policy DIR --baseline DIR --prompts FILE.jsonl
//!                       --judge reward:DIR | rule:RULE | human  [--judge ...] [--tie-margin M]
//! alignkit eval winrate --judgments J.jsonl [J2.jsonl ...] [--candidates FILE]
//! alignkit eval drift   --policy DIR --reference DIR --prompts FILE.jsonl [--text FILE]
//! ```
//!
//! Generations are cached in `OUT/generations/` by model fingerprint, prompt ids
//! and sampling settings, so judging again never samples again. Results go to
//! the terminal (or `--json`), `OUT/winrate.json`, `OUT/winrate.svg` and
//! `OUT/responses.jsonl` (`human-winrate.json`/`.svg` for `--judgments`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use alignkit_datasets::{EncodeConfig, Encoder, FieldMap, Preference, PromptRecord, Record, Turns};
use alignkit_eval::drift::{TextNll, completion_logprobs, sequence_kl, text_nll};
use alignkit_eval::generations::{
    GenerationCache, GenerationSettings, Generations, cache_key, model_fingerprint,
};
use alignkit_eval::{Judged, MeanInterval, Outcome, PairedRates, Proportion, Rule, WinRate};
use alignkit_labeler::{Decision, Ledger, load_candidates, read_logs};
use alignkit_model::SamplingConfig;
use alignkit_model::checkpoint::write_atomic;
use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::common::{Loaded, SamplingArgs, cap_to_context};
use crate::generate::{batch_seed, chat_prompt, progress_bar, prompt_ids, sample_all};

/// Confidence level of every interval printed.
const LEVEL: f64 = 0.95;
const POLICY: &str = "policy";
const BASELINE: &str = "baseline";

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Win rate of a policy against a baseline on prompts, judged by a reward model,
    /// a rule or people (via `alignkit label`), with intervals and a length-controlled rate.
    #[command(after_help = "Examples:
  alignkit eval winrate --policy run/dpo/final --baseline base --prompts heldout.jsonl \\
      --judge reward:run/reward/final --judge rule:one-sentence
  alignkit eval winrate --policy A --baseline B --prompts p.jsonl --judge human --out ev
  alignkit label ev/human-candidates.jsonl --judgments j.jsonl --annotator me
  alignkit eval winrate --judgments j.jsonl --out ev

Judges: reward:DIR, rule:RULE, sentiment (VADER compound score), human.
Rules: one-sentence, json-keys=KEY[,KEY...], json-keys-from=FIELD (a list field of the prompt record), regex=PATTERN, exact=FIELD (a field of the prompt record).")]
    Winrate(WinrateArgs),
    /// What alignment cost: sequence KL(policy ‖ reference) on sampled completions and
    /// per-token NLL / perplexity of both models on a general text.
    #[command(after_help = "Example:
  alignkit eval drift --policy run/dpo/final --reference base --prompts heldout.jsonl \\
      --text examples/general-text.txt")]
    Drift(DriftArgs),
    /// The reward-versus-KL frontier of several runs, from their held-out
    /// evaluations (RL `[eval]`: eval.jsonl; others: drift-step-N.json reports):
    /// frontier.svg and a table of the best reward within each KL budget.
    #[command(after_help = crate::examples::EVAL_FRONTIER)]
    Frontier(crate::frontier::FrontierArgs),
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Winrate(args) if !args.judgments.is_empty() => {
            let report = aggregate_human(&args)?;
            report.emit(&args.out_dir(), args.json)
        }
        EvalCommand::Winrate(args) => {
            let (out, json) = (args.out_dir(), args.json);
            let report = dispatch(args.device, args)?;
            report.emit(&out, json)
        }
        EvalCommand::Frontier(args) => crate::frontier::run(args),
        EvalCommand::Drift(args) => {
            let json = args.json;
            let report = dispatch(args.device, args)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
    }
}

/// Who decides which response is better.
#[derive(Debug, Clone, PartialEq)]
pub enum Judge {
    /// A reward model (an HF sequence-classification directory) scores both.
    Reward(PathBuf),
    /// A rule; one passing wins, both passing or both failing ties.
    Rule(Rule),
    /// People, in `alignkit label`, on a blind, order-shuffled candidates file.
    Human,
    /// The VADER compound sentiment score of each response, in [−1, 1]: the
    /// true reward of the controlled-sentiment task.
    Sentiment,
}

impl FromStr for Judge {
    type Err = String;

    fn from_str(s: &str) -> Result<Judge, String> {
        match s.split_once(':') {
            Some(("reward", dir)) if !dir.is_empty() => Ok(Judge::Reward(dir.into())),
            Some(("rule", rule)) => rule.parse().map(Judge::Rule).map_err(|e| e.to_string()),
            None if s == "human" => Ok(Judge::Human),
            None if s == "sentiment" => Ok(Judge::Sentiment),
            _ => Err(format!(
                "unknown judge `{s}` (expected reward:DIR, rule:RULE, sentiment or human)"
            )),
        }
    }
}

impl std::fmt::Display for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Judge::Reward(dir) => write!(f, "reward:{}", dir.display()),
            Judge::Rule(rule) => write!(f, "rule:{rule}"),
            Judge::Human => write!(f, "human"),
            Judge::Sentiment => write!(f, "sentiment"),
        }
    }
}

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

/// The mean score of each side under a scoring judge.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MeanScores {
    pub policy: f64,
    pub baseline: f64,
    /// Per prompt policy − baseline: its mean and Student-t interval (the
    /// paired comparison of the scores, beside the win rate's sign test).
    pub difference: MeanInterval,
}

/// One judge's verdicts and their summary.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeResult {
    pub judge: String,
    pub result: WinRate,
    /// Per prompt, in prompt order (machine judges), or per item (people).
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
    /// Reward judge: (policy, baseline) score per prompt.
    #[serde(skip)]
    pub scores: Vec<(f64, f64)>,
    /// Score judges (reward model, sentiment): each side's mean score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_scores: Option<MeanScores>,
    /// Rule judge: each side's pass rate and their paired difference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_rates: Option<PairedRates>,
    /// People: per-annotator win rates, position bias and agreement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub human: Option<HumanDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HumanDetail {
    pub judgments: usize,
    pub skipped: usize,
    pub flagged: usize,
    pub annotators: Vec<(String, WinRate)>,
    /// How often the response shown first (A) won a decisive judgment.
    pub first_shown_wins: Proportion,
    /// Inter-annotator agreement from the labeler's statistics (Cohen's κ for two, Fleiss' for more).
    pub agreement: Option<alignkit_labeler::stats::Agreement>,
}

/// What `eval winrate` found.
#[derive(Debug, Clone, Serialize)]
pub struct WinrateReport {
    pub policy: String,
    pub baseline: String,
    pub prompts: usize,
    pub settings: BTreeMap<String, GenerationSettings>,
    pub judges: Vec<JudgeResult>,
    /// Generations read from the cache (true) or sampled (false), per side.
    pub cached: BTreeMap<String, bool>,
    /// The candidates file written for `--judge human`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub human_candidates: Option<PathBuf>,
    /// With `--judgments`: the candidates file the judgments are about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judged_file: Option<String>,
    #[serde(skip)]
    pub rows: Vec<ResponseRow>,
}

/// One prompt with both responses, for `OUT/responses.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseRow {
    pub prompt: Turns,
    pub policy: String,
    pub baseline: String,
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

/// Read a prompts file (an empty one is an error).
fn read_prompts(path: &Path) -> Result<Vec<Record<PromptRecord>>> {
    let records: Vec<_> = alignkit_datasets::read::<PromptRecord>(path, &FieldMap::default())?
        .collect::<Result<_, _>>()?;
    if records.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(records)
}

/// One side's responses: from the cache when the model, prompt ids and
/// settings are unchanged, sampled (and cached) otherwise.
fn side_responses<B: Backend>(
    side: &str,
    dir: &Path,
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
    let encoder = Encoder::from_dir(dir, EncodeConfig::default())
        .with_context(|| format!("cannot load the tokenizer of the {side} {}", dir.display()))?;
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
    let fingerprint = model_fingerprint(dir)?;
    let key = cache_key(&fingerprint, &ids, &settings);
    let cache = GenerationCache::new(args.out_dir().join("generations"));
    if let Some(cached) = cache.load(&key, ids.len())? {
        eprintln!(
            "{side}: {} responses from the cache ({})",
            cached.responses.len(),
            cache.path(&key).display()
        );
        return Ok((cached, true));
    }
    let loaded = Loaded::<B>::load(dir, device)
        .with_context(|| format!("loading the {side} {}", dir.display()))?;
    let bar = progress_bar(ids.len(), &format!("[generate {side}]"));
    let responses = sample_all(&loaded, &ids, &settings, device, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let generations = Generations {
        key,
        model: dir.display().to_string(),
        fingerprint,
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
    // Refuse a missing reference field before generating anything.
    for judge in &judge_list {
        if let Judge::Rule(rule) = judge {
            for r in &records {
                rule.check_record(&r.extra)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", r.at))?;
            }
        }
        if let Judge::Reward(dir) = judge
            && !dir.join("config.json").is_file()
        {
            bail!(
                "--judge reward:{}: no config.json there (expected a reward model directory)",
                dir.display()
            );
        }
    }
    let turns: Vec<Turns> = records
        .iter()
        .map(|r| chat_prompt(&r.value.prompt, args.chat, None))
        .collect();
    let out = args.out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let (pol, pol_cached) =
        side_responses::<B>(POLICY, policy, &turns, &records, &sampling, args, device)?;
    let (base, base_cached) = side_responses::<B>(
        BASELINE, baseline, &turns, &records, &sampling, args, device,
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

/// The policy's and the baseline's response index and lengths in a candidates item.
struct Pair {
    policy: usize,
    lengths: (usize, usize),
    texts: Vec<String>,
}

/// `eval winrate --judgments`: what people decided, mapped from shown
/// positions back to policy and baseline.
fn aggregate_human(args: &WinrateArgs) -> Result<WinrateReport> {
    let candidates = args
        .candidates
        .clone()
        .unwrap_or_else(|| args.out_dir().join("human-candidates.jsonl"));
    if !candidates.is_file() {
        bail!(
            "{} not found: give --candidates FILE (the file `--judge human` wrote)",
            candidates.display()
        );
    }
    let loaded = load_candidates(&candidates)?;
    if let Some(p) = loaded.problems.first() {
        bail!("{p}");
    }
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    for item in &loaded.items {
        let sources: Vec<Option<&str>> =
            item.responses.iter().map(|r| r.source.as_deref()).collect();
        let policy = match sources.as_slice() {
            [Some(POLICY), Some(BASELINE)] => 0,
            [Some(BASELINE), Some(POLICY)] => 1,
            _ => bail!(
                "{}: item {:?} is not a policy/baseline pair; give the file `alignkit eval winrate --judge human` wrote",
                candidates.display(),
                item.id
            ),
        };
        let len = |i: usize| item.responses[i].text.chars().count();
        pairs.insert(
            item.id.clone(),
            Pair {
                policy,
                lengths: (len(policy), len(1 - policy)),
                texts: item.responses.iter().map(|r| r.text.clone()).collect(),
            },
        );
    }
    let read = read_logs(&args.judgments)?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    let names = args
        .judgments
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let ledger = Ledger::from_records(read.records.iter().cloned());
    let effective = ledger.effective();
    if effective.is_empty() {
        bail!("{names}: no judgments");
    }
    // value of each (item, annotator) judgment, from the policy's side.
    let mut per_item: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut per_annotator: BTreeMap<&str, Vec<Judged>> = BTreeMap::new();
    let (mut skipped, mut flagged) = (0, 0);
    for j in &effective {
        let Some(pair) = pairs.get(&j.item) else {
            bail!(
                "{names}: item {:?} is not in {}: these judgments are from another candidates file",
                j.item,
                candidates.display()
            );
        };
        let texts: Vec<&str> = j.responses.iter().map(|r| r.text.as_str()).collect();
        if texts != pair.texts.iter().map(String::as_str).collect::<Vec<_>>() {
            bail!(
                "{names}: item {:?} holds other responses than in {}: these judgments are from another candidates file",
                j.item,
                candidates.display()
            );
        }
        if j.flagged {
            flagged += 1;
            continue;
        }
        // Original response index of the winner, if any.
        let outcome = match &j.decision {
            Decision::A => winner(j.shown[0], pair.policy),
            Decision::B => winner(j.shown[1], pair.policy),
            Decision::Tie | Decision::BothBad => Outcome::Tie,
            Decision::Skip => {
                skipped += 1;
                continue;
            }
            Decision::Ranking(ranks) => {
                let rank_of =
                    |idx: usize| ranks[j.shown.iter().position(|&s| s == idx).unwrap_or(0)];
                match rank_of(pair.policy).cmp(&rank_of(1 - pair.policy)) {
                    std::cmp::Ordering::Less => Outcome::Win,
                    std::cmp::Ordering::Greater => Outcome::Loss,
                    std::cmp::Ordering::Equal => Outcome::Tie,
                }
            }
        };
        per_item.entry(&j.item).or_default().push(outcome.value());
        per_annotator.entry(&j.annotator).or_default().push(Judged {
            outcome,
            policy_len: pair.lengths.0,
            baseline_len: pair.lengths.1,
        });
    }
    // One verdict per item (items are the independent units): the mean of its
    // annotators' verdicts, a win above ½, a loss below, a tie at ½.
    let judged: Vec<Judged> = per_item
        .iter()
        .map(|(item, values)| {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let outcome = if mean > 0.5 {
                Outcome::Win
            } else if mean < 0.5 {
                Outcome::Loss
            } else {
                Outcome::Tie
            };
            let (policy_len, baseline_len) = pairs[*item].lengths;
            Judged {
                outcome,
                policy_len,
                baseline_len,
            }
        })
        .collect();
    let Some(result) = WinRate::compute(&judged, LEVEL) else {
        bail!("{names}: every judgment was skipped or flagged; nothing to count");
    };
    let stats = alignkit_labeler::compute_stats(&read.records);
    let human = HumanDetail {
        judgments: effective.len(),
        skipped,
        flagged,
        annotators: per_annotator
            .iter()
            .filter_map(|(a, j)| Some((a.to_string(), WinRate::compute(j, LEVEL)?)))
            .collect(),
        first_shown_wins: alignkit_eval::winrate::position_bias(
            stats.position.left_wins,
            stats.position.decisive,
            LEVEL,
        ),
        agreement: stats.agreement,
    };
    Ok(WinrateReport {
        policy: POLICY.into(),
        baseline: BASELINE.into(),
        prompts: pairs.len(),
        settings: BTreeMap::new(),
        judges: vec![JudgeResult {
            judge: "human".into(),
            outcomes: judged.iter().map(|j| j.outcome).collect(),
            result,
            scores: Vec::new(),
            pass_rates: None,
            mean_scores: None,
            human: Some(human),
        }],
        cached: BTreeMap::new(),
        human_candidates: None,
        judged_file: Some(candidates.display().to_string()),
        rows: Vec::new(),
    })
}

fn winner(shown: usize, policy: usize) -> Outcome {
    if shown == policy {
        Outcome::Win
    } else {
        Outcome::Loss
    }
}

/// Three decimals, or two significant digits below 0.001 (a 60–0 split is not "0.000").
fn p_value(p: f64) -> String {
    if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

impl WinrateReport {
    /// The terminal table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let settings = self.settings.get(POLICY);
        let how = match settings {
            Some(g) if g.temperature == 0.0 => {
                format!(", greedy, at most {} new tokens", g.max_new_tokens)
            }
            Some(g) => format!(
                ", temperature {} (seed {}), at most {} new tokens",
                g.temperature, g.seed, g.max_new_tokens
            ),
            None => String::new(),
        };
        match &self.judged_file {
            Some(file) => {
                let _ = writeln!(s, "human judgments of {}: {} items", file, self.prompts);
            }
            None => {
                let _ = writeln!(
                    s,
                    "policy {} vs baseline {}: {} prompts{how}",
                    self.policy, self.baseline, self.prompts
                );
            }
        }
        let w = self
            .judges
            .iter()
            .map(|j| j.judge.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        if !self.judges.is_empty() {
            let _ = writeln!(
                s,
                "  {:<w$} {:>4} {:>4} {:>4}  {:>8}  {:<17} {:>7}  length-controlled",
                "judge", "win", "tie", "loss", "win rate", "95% CI (Wilson)", "sign p",
            );
        }
        for j in &self.judges {
            let r = &j.result;
            let lc = &r.length_controlled;
            let _ = writeln!(
                s,
                "  {:<w$} {:>4} {:>4} {:>4}  {:>8}  {:<17} {:>7}  {} [{}, {}]",
                j.judge,
                r.wins,
                r.ties,
                r.losses,
                pct(r.win_rate),
                format!("[{}, {}]", pct(r.low), pct(r.high)),
                p_value(r.sign_test_p),
                pct(lc.win_rate),
                pct(lc.low),
                pct(lc.high),
            );
        }
        if let Some(r) = self.judges.first().map(|j| &j.result) {
            let _ = writeln!(
                s,
                "  ties count half; sign test drops ties; mean length (characters): policy {:.1}, baseline {:.1}",
                r.mean_policy_len, r.mean_baseline_len
            );
        }
        for j in &self.judges {
            let Some(m) = &j.mean_scores else { continue };
            let d = &m.difference;
            let _ = writeln!(
                s,
                "  {} mean score: policy {:.4}, baseline {:.4}; paired difference {:+.4}, {:.0}% CI [{:+.4}, {:+.4}]",
                j.judge,
                m.policy,
                m.baseline,
                d.mean,
                d.level * 100.0,
                d.low,
                d.high
            );
        }
        for j in &self.judges {
            let Some(r) = &j.pass_rates else { continue };
            let rate = |p: &Proportion| {
                format!(
                    "{}/{} = {} [{}, {}]",
                    p.successes,
                    p.trials,
                    pct(p.rate),
                    pct(p.low),
                    pct(p.high)
                )
            };
            let d = &r.difference;
            let _ = writeln!(
                s,
                "  {} pass rate: policy {}, baseline {}; difference {:+.1} points, 95% CI [{:+.1}, {:+.1}] (Newcombe, paired){}",
                j.judge,
                rate(&r.a),
                rate(&r.b),
                100.0 * d.delta,
                100.0 * d.low,
                100.0 * d.high,
                if d.significant() { ", above 0" } else { "" },
            );
        }
        for j in &self.judges {
            let Some(h) = &j.human else { continue };
            let _ = writeln!(
                s,
                "  {} judgments ({} skipped, {} flagged left out); one verdict per item: the mean of its annotators'",
                h.judgments, h.skipped, h.flagged
            );
            for (a, r) in &h.annotators {
                let _ = writeln!(
                    s,
                    "    {a:<24} {:>4} {:>4} {:>4}  {:>8}  [{}, {}]",
                    r.wins,
                    r.ties,
                    r.losses,
                    pct(r.win_rate),
                    pct(r.low),
                    pct(r.high)
                );
            }
            let p = &h.first_shown_wins;
            let _ = writeln!(
                s,
                "  position bias: the first shown response won {} of {} decisive judgments ({} [{}, {}]; no bias: 50%)",
                p.successes,
                p.trials,
                pct(p.rate),
                pct(p.low),
                pct(p.high)
            );
            match &h.agreement {
                None => {
                    let _ = writeln!(s, "  agreement: no item judged by two or more annotators");
                }
                Some(a) => {
                    let (name, k) = match a.kappa {
                        alignkit_labeler::stats::Kappa::Cohen(k) => ("Cohen's kappa", k),
                        alignkit_labeler::stats::Kappa::Fleiss(k) => ("Fleiss' kappa", k),
                    };
                    let k = k.map_or("undefined".into(), |k| format!("{k:.3}"));
                    let _ = writeln!(
                        s,
                        "  agreement: {} units by {} annotators, raw {}, {name} {k}",
                        a.units,
                        a.annotators,
                        pct(a.raw)
                    );
                }
            }
        }
        if let Some(p) = &self.human_candidates {
            let _ = writeln!(s, "  human judge: candidates in {}", p.display());
        }
        s
    }

    /// Print (table or JSON) and write the files ([`WinrateReport::write_files`]).
    pub fn emit(&self, out: &Path, json: bool) -> Result<()> {
        self.write_files(out)?;
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            print!("{}", self.table());
            eprintln!("written: {}", out.join(self.file_name("json")).display());
        }
        Ok(())
    }

    /// `winrate.json` (or `human-winrate.json` for people's judgments, so that
    /// the machine judges' results beside them stay), `.svg`, and with
    /// generations `responses.jsonl`.
    fn file_name(&self, ext: &str) -> String {
        match self.judged_file {
            Some(_) => format!("human-winrate.{ext}"),
            None => format!("winrate.{ext}"),
        }
    }

    /// `OUT/winrate.json`, `OUT/winrate.svg` and `OUT/responses.jsonl` (each
    /// prompt with both responses and every judge's verdict).
    pub fn write_files(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let text = serde_json::to_string_pretty(self)?;
        write_atomic(&out.join(self.file_name("json")), text.as_bytes())?;
        if !self.rows.is_empty() {
            let mut lines = String::new();
            for (i, row) in self.rows.iter().enumerate() {
                let mut v = serde_json::to_value(row)?;
                let obj = v.as_object_mut().expect("an object");
                for j in &self.judges {
                    let mut verdict = Map::new();
                    verdict.insert("outcome".into(), serde_json::to_value(j.outcomes[i])?);
                    if let Some((p, b)) = j.scores.get(i) {
                        verdict.insert("policy_score".into(), json!(p));
                        verdict.insert("baseline_score".into(), json!(b));
                    }
                    obj.insert(j.judge.clone(), Value::Object(verdict));
                }
                writeln!(lines, "{v}").expect("writing to a string");
            }
            write_atomic(&out.join("responses.jsonl"), lines.as_bytes())?;
        }
        if !self.judges.is_empty() {
            let svg = out.join(self.file_name("svg"));
            write_svg(&svg, self).with_context(|| format!("writing {}", svg.display()))?;
        }
        Ok(())
    }
}

/// Win / tie / loss bars per judge with the win rate's Wilson interval as a whisker.
fn write_svg(path: &Path, report: &WinrateReport) -> Result<()> {
    use plotters::prelude::*;
    let n = report.judges.len();
    let height = 120 + 70 * n as u32;
    let root = SVGBackend::new(path, (800, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = match &report.judged_file {
        Some(file) => format!("human judgments of {file} ({} items)", report.prompts),
        None => format!(
            "{} vs {} ({} prompts)",
            report.policy, report.baseline, report.prompts
        ),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .build_cartesian_2d(0f64..1f64, 0f64..n as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .light_line_style(TRANSPARENT)
        .x_desc("share of prompts: win (green), tie (grey), loss (red); whisker: win rate, 95% Wilson CI")
        .x_label_formatter(&|x| format!("{:.0}%", 100.0 * x))
        .draw()?;
    let grey = RGBColor(190, 190, 190);
    for (i, j) in report.judges.iter().enumerate() {
        let r = &j.result;
        let y = (n - 1 - i) as f64;
        let total = r.n.max(1) as f64;
        let (w, t) = (r.wins as f64 / total, r.ties as f64 / total);
        let bars = [
            (0.0, w, GREEN.mix(0.6)),
            (w, w + t, grey.mix(0.9)),
            (w + t, 1.0, RED.mix(0.6)),
        ];
        chart.draw_series(
            bars.into_iter()
                .filter(|(a, b, _)| b > a)
                .map(|(a, b, c)| Rectangle::new([(a, y + 0.25), (b, y + 0.65)], c.filled())),
        )?;
        let mid = y + 0.45;
        chart.draw_series([
            PathElement::new(vec![(r.low, mid), (r.high, mid)], BLACK.stroke_width(2)),
            PathElement::new(
                vec![(r.low, mid - 0.08), (r.low, mid + 0.08)],
                BLACK.stroke_width(2),
            ),
            PathElement::new(
                vec![(r.high, mid - 0.08), (r.high, mid + 0.08)],
                BLACK.stroke_width(2),
            ),
        ])?;
        chart.draw_series([Circle::new((r.win_rate, mid), 4, BLACK.filled())])?;
        chart.draw_series([Text::new(
            format!(
                "{}: {} [{}, {}], LC {}",
                j.judge,
                pct(r.win_rate),
                pct(r.low),
                pct(r.high),
                pct(r.length_controlled.win_rate)
            ),
            (0.01, y + 0.92),
            ("sans-serif", 13),
        )])?;
    }
    chart.draw_series([PathElement::new(
        vec![(0.5, 0.0), (0.5, n as f64)],
        BLACK.mix(0.5),
    )])?;
    root.present()?;
    Ok(())
}

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
    let policy = Loaded::<B>::load(&args.policy, device)
        .with_context(|| format!("loading the policy {}", args.policy.display()))?;
    let reference = Loaded::<B>::load(&args.reference, device)
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
    let context = policy
        .config
        .max_position_embeddings
        .min(reference.config.max_position_embeddings);
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
    let text = match &args.text {
        None => None,
        Some(path) => {
            let content = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            if content.trim().is_empty() {
                bail!("{}: no text", path.display());
            }
            let window = args.window.unwrap_or(context.min(512));
            if window < 2 || window > context {
                bail!("--window must be in 2..={context} (the models' context), got {window}");
            }
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

/// Only the names and types used by tests of this module.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_parse_and_print() {
        assert_eq!("human".parse::<Judge>().unwrap(), Judge::Human);
        assert_eq!("sentiment".parse::<Judge>().unwrap(), Judge::Sentiment);
        assert_eq!(Judge::Sentiment.to_string(), "sentiment");
        assert_eq!(
            "reward:runs/rm".parse::<Judge>().unwrap(),
            Judge::Reward("runs/rm".into())
        );
        let rule: Judge = "rule:json-keys=a,b".parse().unwrap();
        assert_eq!(rule.to_string(), "rule:json-keys=a,b");
        for bad in ["reward:", "rule:nope", "people", ""] {
            assert!(bad.parse::<Judge>().is_err(), "{bad}");
        }
    }
}
