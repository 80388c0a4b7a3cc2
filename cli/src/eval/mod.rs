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

mod drift;
mod human;
mod report;
mod winrate;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use alignkit_datasets::{FieldMap, PromptRecord, Record};
use alignkit_eval::Rule;
use anyhow::{Result, bail};
use clap::Subcommand;

use crate::backend::dispatch;

pub use drift::DriftArgs;
pub use report::WinrateReport;
pub use winrate::WinrateArgs;
pub(crate) use winrate::{check_reward_judge, winrate};

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
            let report = human::aggregate_human(&args)?;
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

/// Read a prompts file (an empty one is an error).
fn read_prompts(path: &Path) -> Result<Vec<Record<PromptRecord>>> {
    let records: Vec<_> = alignkit_datasets::read::<PromptRecord>(path, &FieldMap::default())?
        .collect::<Result<_, _>>()?;
    if records.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(records)
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
