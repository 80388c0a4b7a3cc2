//! What a step reports, under TRL's `GRPOTrainer` / `RLOOTrainer` metric
//! names, and the sample of completions written to `completions.jsonl`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use alignkit_model::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};

/// One `metrics.jsonl` record: a rollout step and its optimisation passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlMetrics {
    pub step: usize,
    /// Fractional pass over the prompts after this step.
    pub epoch: f64,
    /// The policy loss, averaged over the μ passes. Near 0 on the first pass
    /// is normal: the advantages are centred and the ratio is 1 (trl#3452).
    pub loss: f64,
    pub learning_rate: f64,
    /// Global gradient norm before clipping, averaged over the passes.
    pub grad_norm: f64,
    /// Rewards, lengths, tokens and times of the step's rollout.
    #[serde(flatten)]
    pub rollout: RolloutStats,
    /// Fraction of prompts whose G rewards are all equal (no signal).
    pub frac_reward_zero_std: f64,
    /// Token mean of the KL estimate to the reference (k3 for GRPO, k1 for
    /// RLOO); absent when β = 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// Token mean of the entropy of the temperature-scaled policy.
    pub entropy: f64,
    /// Fractions of trained tokens (GRPO) or sequences (RLOO) clipped, over
    /// all passes.
    #[serde(rename = "clip_ratio/low_mean")]
    pub clip_low: f64,
    #[serde(rename = "clip_ratio/high_mean")]
    pub clip_high: f64,
    #[serde(rename = "clip_ratio/region_mean")]
    pub clip_region: f64,
    /// Mean and max |sampling log-prob − trainer log-prob| over the trained
    /// tokens of the first pass: the sampler and the trainer score the same
    /// temperature-scaled distribution, so these are rounding-sized.
    #[serde(rename = "sampling/sampling_logp_difference/mean")]
    pub logp_diff_mean: f64,
    #[serde(rename = "sampling/sampling_logp_difference/max")]
    pub logp_diff_max: f64,
}

/// One PPO `metrics.jsonl` record, under the names of TRL's last
/// `PPOTrainer`, plus the rollout's statistics under the GRPO names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoMetrics {
    pub step: usize,
    pub epoch: f64,
    /// Completions sampled so far.
    pub episode: usize,
    pub learning_rate: f64,
    pub critic_learning_rate: f64,
    /// Mean over completions of Σ_t kl_t (the estimator of `ppo.kl_estimator`).
    #[serde(rename = "objective/kl")]
    pub kl: f64,
    /// Mean over completions of Σ_t −logp_t (TRL's sequence entropy estimate).
    #[serde(rename = "objective/entropy")]
    pub entropy: f64,
    /// Mean over completions of Σ_t −β·kl_t.
    #[serde(rename = "objective/non_score_reward")]
    pub non_score_reward: f64,
    /// scores + non_score_reward.
    #[serde(rename = "objective/rlhf_reward")]
    pub rlhf_reward: f64,
    /// Mean score (weighted rewards, EOS penalty included).
    #[serde(rename = "objective/scores")]
    pub scores: f64,
    /// β used for this step's rewards.
    pub kl_coef: f64,
    /// Means over every micro-batch of every mini-batch update.
    #[serde(rename = "policy/approxkl_avg")]
    pub approxkl: f64,
    #[serde(rename = "policy/clipfrac_avg")]
    pub clipfrac: f64,
    #[serde(rename = "policy/entropy_avg")]
    pub policy_entropy: f64,
    #[serde(rename = "loss/policy_avg")]
    pub policy_loss: f64,
    #[serde(rename = "loss/value_avg")]
    pub value_loss: f64,
    #[serde(rename = "val/clipfrac_avg")]
    pub value_clipfrac: f64,
    /// Mean and variance of the importance ratio π_θ/π_old over the updates.
    #[serde(rename = "val/ratio")]
    pub ratio: f64,
    #[serde(rename = "val/ratio_var")]
    pub ratio_var: f64,
    /// Completions that ended with an end-of-turn token or a stop string.
    #[serde(rename = "val/num_eos_tokens")]
    pub num_eos_tokens: usize,
    /// Global gradient norms before clipping, averaged over the updates.
    pub grad_norm: f64,
    pub critic_grad_norm: f64,
    /// The scores (`reward`), lengths, tokens and times of the step's rollout;
    /// scoring time covers the no-grad passes of policy, reference and critic.
    #[serde(flatten)]
    pub rollout: RolloutStats,
}

/// What every RL step reports of its rollout, under GRPO's names: flattened
/// into [`RlMetrics`] and [`PpoMetrics`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStats {
    /// Mean and sample std of the total (weighted, penalised) reward.
    pub reward: f64,
    pub reward_std: f64,
    /// `rewards/{name}/mean` and `rewards/{name}/std` of each reward function.
    #[serde(flatten)]
    pub rewards: BTreeMap<String, f64>,
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f64,
    #[serde(rename = "completions/min_length")]
    pub min_length: f64,
    #[serde(rename = "completions/max_length")]
    pub max_length: f64,
    /// Fraction of completions cut at `max_completion_length`.
    #[serde(rename = "completions/clipped_ratio")]
    pub clipped_ratio: f64,
    /// Prompt and completion tokens seen so far.
    pub num_tokens: u64,
    /// Seconds of the whole step, and of its parts.
    pub step_time: f64,
    #[serde(rename = "time/generation")]
    pub generation_time: f64,
    /// Rewards, reference log-probs and advantages.
    #[serde(rename = "time/scoring")]
    pub scoring_time: f64,
    #[serde(rename = "time/optimization")]
    pub optimization_time: f64,
    /// Why an update was skipped (non-finite loss or gradient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Seconds of a step's parts, from its start.
#[derive(Debug, Clone, Copy)]
pub struct StepTimes {
    pub started: std::time::Instant,
    pub generation: f64,
    pub scoring: f64,
    pub optimization: f64,
}

impl RolloutStats {
    /// The statistics of `completions` with their total rewards and the
    /// scores of each reward function (`names`, `per_func`).
    pub fn new(
        completions: &[crate::rollout::Completion],
        total_rewards: &[f64],
        scores: (&[String], &[Vec<f64>]),
        num_tokens: u64,
        times: StepTimes,
        skipped: Option<String>,
    ) -> Self {
        let lengths = Lengths::of(completions);
        Self::of(&lengths, total_rewards, scores, num_tokens, times, skipped)
    }

    /// [`RolloutStats::new`] from the completions' lengths (all ranks' in a
    /// distributed run).
    pub fn of(
        lengths: &Lengths,
        total_rewards: &[f64],
        (names, per_func): (&[String], &[Vec<f64>]),
        num_tokens: u64,
        times: StepTimes,
        skipped: Option<String>,
    ) -> Self {
        let (reward, reward_std) = mean_std(total_rewards);
        let (mean_length, min_length, max_length, clipped_ratio) = lengths.stats();
        Self {
            reward,
            reward_std,
            rewards: per_function(names, per_func),
            mean_length,
            min_length,
            max_length,
            clipped_ratio,
            num_tokens,
            step_time: times.started.elapsed().as_secs_f64(),
            generation_time: times.generation,
            scoring_time: times.scoring,
            optimization_time: times.optimization,
            skipped,
        }
    }
}

/// Length statistics of a rollout: mean, min, max and the fraction cut at
/// the length limit.
pub fn length_stats(completions: &[crate::rollout::Completion]) -> (f64, f64, f64, f64) {
    Lengths::of(completions).stats()
}

/// The completions' lengths and which ended before the length limit.
#[derive(Debug, Clone, Default)]
pub struct Lengths {
    pub tokens: Vec<f64>,
    /// 1 for a completion that ended (EOS or a stop string), else 0.
    pub terminated: Vec<f64>,
}

impl Lengths {
    pub fn of(completions: &[crate::rollout::Completion]) -> Self {
        Self {
            tokens: completions.iter().map(|c| c.tokens.len() as f64).collect(),
            terminated: completions
                .iter()
                .map(|c| c.terminated() as u8 as f64)
                .collect(),
        }
    }

    /// Mean, min, max and the fraction cut at the length limit.
    pub fn stats(&self) -> (f64, f64, f64, f64) {
        let l = &self.tokens;
        (
            mean_std(l).0,
            l.iter().copied().fold(f64::INFINITY, f64::min),
            l.iter().copied().fold(0.0, f64::max),
            self.terminated.iter().filter(|&&t| t == 0.0).count() as f64 / l.len().max(1) as f64,
        )
    }
}

/// `rewards/{name}/mean` and `rewards/{name}/std` of each reward function.
pub fn per_function(names: &[String], per_func: &[Vec<f64>]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, s) in names.iter().zip(per_func) {
        let (m, sd) = mean_std(s);
        out.insert(format!("rewards/{name}/mean"), m);
        out.insert(format!("rewards/{name}/std"), sd);
    }
    out
}

/// The first `n` completions of a step as `completions.jsonl` records.
#[allow(clippy::too_many_arguments)]
pub fn completion_records(
    step: usize,
    prompts: &[crate::rollout::Prompt],
    completions: &[crate::rollout::Completion],
    total_rewards: &[f64],
    names: &[String],
    per_func: &[Vec<f64>],
    advantages: &[f64],
    n: usize,
) -> Vec<CompletionRecord> {
    completions
        .iter()
        .enumerate()
        .take(n)
        .map(|(i, comp)| CompletionRecord {
            step,
            at: prompts[comp.prompt].at.to_string(),
            prompt: serde_json::to_value(&prompts[comp.prompt].prompt).unwrap_or_default(),
            completion: comp.text.clone(),
            reward: total_rewards[i],
            rewards: names
                .iter()
                .zip(per_func)
                .map(|(n, s)| (n.clone(), s[i]))
                .collect(),
            advantage: advantages[i],
            finish: match comp.finish {
                alignkit_model::FinishReason::Eos => "eos",
                alignkit_model::FinishReason::Stop => "stop",
                alignkit_model::FinishReason::Length => "length",
            }
            .into(),
        })
        .collect()
}

/// Mean and sample standard deviation.
pub fn mean_std(x: &[f64]) -> (f64, f64) {
    let mean = x.iter().sum::<f64>() / x.len().max(1) as f64;
    (mean, crate::loss::sample_std(x))
}

/// One completion of a `completions.jsonl` sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRecord {
    pub step: usize,
    /// FILE:LINE of the prompt.
    pub at: String,
    pub prompt: serde_json::Value,
    pub completion: String,
    /// The total reward (weighted, penalised) and each function's.
    pub reward: f64,
    pub rewards: BTreeMap<String, f64>,
    pub advantage: f64,
    /// `eos`, `stop` or `length`.
    pub finish: String,
}

/// A JSON Lines file of a run keyed by `step` (`completions.jsonl`,
/// `eval.jsonl`), appended and flushed per record batch.
#[derive(Debug)]
pub struct StepLog {
    path: PathBuf,
    /// Writes nothing (a rank other than 0 of a distributed run).
    muted: bool,
}

/// The completions log's name; [`CompletionsLog`] is a [`StepLog`] of it.
pub const COMPLETIONS_FILE: &str = "completions.jsonl";
/// The held-out evaluations of an RL run (`[eval]`).
pub const EVAL_FILE: &str = "eval.jsonl";

/// `RUN_DIR/completions.jsonl`.
pub type CompletionsLog = StepLog;

impl StepLog {
    /// Open `RUN_DIR/completions.jsonl` (see [`StepLog::open_file`]).
    pub fn open(run_dir: &Path, resumed_step: Option<usize>) -> Result<Self> {
        Self::open_file(&run_dir.join(COMPLETIONS_FILE), resumed_step)
    }

    /// Open the log at `path`. A fresh run starts it empty; on resume from
    /// `resumed_step`, records of later steps (written by the interrupted
    /// process after its checkpoint) are dropped.
    pub fn open_file(path: &Path, resumed_step: Option<usize>) -> Result<Self> {
        Self::open_as(path, resumed_step, true)
    }

    /// [`StepLog::open_file`]; `writes` false: a log that writes nothing.
    pub fn open_as(path: &Path, resumed_step: Option<usize>, writes: bool) -> Result<Self> {
        if !writes {
            return Ok(Self {
                path: path.to_path_buf(),
                muted: true,
            });
        }
        let path = path.to_path_buf();
        let io = |e| RlError::Io {
            path: path.clone(),
            source: e,
        };
        match resumed_step {
            None => {
                if path.exists() {
                    std::fs::remove_file(&path).map_err(io)?;
                }
            }
            Some(step) if path.exists() => {
                let text = std::fs::read_to_string(&path).map_err(io)?;
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                            .is_some_and(|s| s as usize <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                write_atomic(&path, kept.as_bytes())?;
            }
            Some(_) => {}
        }
        Ok(Self { path, muted: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append<T: Serialize>(&mut self, records: &[T]) -> Result<()> {
        if self.muted {
            return Ok(());
        }
        let io = |e| RlError::Io {
            path: self.path.clone(),
            source: e,
        };
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(r).expect("a log record serializes"));
            text.push('\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.flush())
            .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_trl_names() {
        let mut rewards = BTreeMap::new();
        rewards.insert("rewards/json_keys/mean".to_string(), 0.5);
        let rollout = RolloutStats {
            reward: 0.5,
            reward_std: 0.1,
            rewards,
            mean_length: 3.0,
            min_length: 1.0,
            max_length: 5.0,
            clipped_ratio: 0.0,
            num_tokens: 10,
            step_time: 1.0,
            generation_time: 0.5,
            scoring_time: 0.1,
            optimization_time: 0.4,
            skipped: None,
        };
        let mut m = RlMetrics {
            step: 1,
            epoch: 0.5,
            loss: 0.0,
            learning_rate: 1e-6,
            grad_norm: 1.0,
            rollout,
            frac_reward_zero_std: 0.0,
            kl: Some(0.01),
            entropy: 2.0,
            clip_low: 0.0,
            clip_high: 0.0,
            clip_region: 0.0,
            logp_diff_mean: 0.0,
            logp_diff_max: 0.0,
        };
        let v = serde_json::to_value(&m).unwrap();
        for key in [
            "reward",
            "reward_std",
            "rewards/json_keys/mean",
            "frac_reward_zero_std",
            "completions/mean_length",
            "completions/min_length",
            "completions/max_length",
            "completions/clipped_ratio",
            "kl",
            "entropy",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
            "clip_ratio/region_mean",
            "num_tokens",
            "step_time",
            "time/generation",
            "time/optimization",
        ] {
            assert!(v.get(key).is_some(), "no `{key}` in {v}");
        }
        assert!(v.get("skipped").is_none(), "{v}");
        // The flattened statistics (and their flattened map) read back.
        m.rollout.skipped = Some("non-finite loss".into());
        m.kl = None;
        let line = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<RlMetrics>(&line).unwrap(), m);
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
    }

    #[test]
    fn resume_drops_completions_written_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |step| CompletionRecord {
            step,
            at: "p.jsonl:1".into(),
            prompt: "hi".into(),
            completion: "x".into(),
            reward: 1.0,
            rewards: BTreeMap::new(),
            advantage: 0.0,
            finish: "eos".into(),
        };
        let mut log = CompletionsLog::open(dir.path(), None).unwrap();
        log.append(&[rec(2), rec(4), rec(6)]).unwrap();
        CompletionsLog::open(dir.path(), Some(4)).unwrap();
        let text = std::fs::read_to_string(dir.path().join(COMPLETIONS_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        CompletionsLog::open(dir.path(), None).unwrap();
        assert!(!dir.path().join(COMPLETIONS_FILE).exists());
    }
}
