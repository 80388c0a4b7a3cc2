//! Rewards of sampled completions: each reward function scores every
//! completion; the policy is trained on their weighted sum, and each is
//! logged under `rewards/{name}/mean|std` (TRL's `reward_funcs` and
//! `reward_weights`).
//!
//! - [`RewardKind::Model`]: a reward model directory — alignkit's `reward`
//!   output or a transformers `LlamaForSequenceClassification` export — read
//!   at the completion's last token (its end-of-turn token when it has one).
//!   It reads the policy's token ids directly, so its tokenizer must be the
//!   policy's (checked before any work).
//! - [`RewardKind::Rule`]: a rule judge of `alignkit-eval` (one sentence, a
//!   JSON object with keys, a regular expression, exact match against a field
//!   of the prompt record): 1 when it passes, 0 otherwise.
//! - [`RewardKind::Sentiment`]: the VADER compound score in [−1, 1] (Hutto &
//!   Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment
//!   Analysis of Social Media Text"), computed by `alignkit_eval::Sentiment`.
//!   The offline stand-in for the sentiment classifier of Rafailov et al.
//!   2023 §6.1.
//!
//! A reward that cannot be computed (a missing record field, a non-finite
//! score) is an error naming the prompt's FILE:LINE, never a silent 0.

use std::path::{Path, PathBuf};

use alignkit_datasets::Tokenizer;
use alignkit_eval::{Rule, Sentiment};
use alignkit_model::heads::{RewardModel, is_sequence_classification, load_reward_model};
use alignkit_model::{FinishReason, LlamaConfig};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RlError};
use crate::rollout::{Completion, Prompt, ScoredTokens};

fn one() -> f64 {
    1.0
}

/// One reward function of the `[[rewards]]` array.
///
/// ```toml
/// [[rewards]]
/// kind = "model"
/// path = "runs/reward/final"
///
/// [[rewards]]
/// kind = "rule"
/// rule = { json_keys = ["answer"] }
/// weight = 0.5
///
/// [[rewards]]
/// kind = "sentiment"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RewardKind {
    /// A reward model directory (scores are used as they are).
    Model {
        path: PathBuf,
        /// Logged as `rewards/{name}/…`; default `reward_model`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default = "one")]
        weight: f64,
    },
    /// A rule judge: 1 when the completion passes, 0 otherwise.
    Rule {
        rule: Rule,
        /// Default: the rule's key (`json_keys`, `regex`, ...).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default = "one")]
        weight: f64,
    },
    /// The VADER compound sentiment score in [−1, 1].
    Sentiment {
        /// Default: `sentiment`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default = "one")]
        weight: f64,
    },
}

impl RewardKind {
    /// The name it is logged under.
    pub fn name(&self) -> String {
        match self {
            RewardKind::Model { name, .. } => name.clone().unwrap_or_else(|| "reward_model".into()),
            RewardKind::Rule { name, rule, .. } => {
                name.clone().unwrap_or_else(|| rule.name().into())
            }
            RewardKind::Sentiment { name, .. } => {
                name.clone().unwrap_or_else(|| "sentiment".into())
            }
        }
    }

    pub fn weight(&self) -> f64 {
        match self {
            RewardKind::Model { weight, .. }
            | RewardKind::Rule { weight, .. }
            | RewardKind::Sentiment { weight, .. } => *weight,
        }
    }
}

/// Check the reward functions of a config: at least one, distinct names,
/// finite weights, valid rules, and reward models (`*ForSequenceClassification`
/// directories) with the policy's tokenizer (`policy_tokenizer`). Reads no
/// weights.
pub fn validate(specs: &[RewardKind], policy_tokenizer: Option<&Tokenizer>) -> Result<()> {
    if specs.is_empty() {
        return Err(RlError::Config {
            field: "rewards".into(),
            message: "no reward function: add a [[rewards]] table (kind = \"model\", \"rule\" or \"sentiment\")".into(),
        });
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let field = |f: &str| format!("rewards[{i}].{f}");
        if !names.insert(spec.name()) {
            return Err(RlError::Config {
                field: field("name"),
                message: format!(
                    "`{}` names two rewards; give them distinct names",
                    spec.name()
                ),
            });
        }
        if !spec.weight().is_finite() {
            return Err(RlError::Config {
                field: field("weight"),
                message: format!("{} is not a finite number", spec.weight()),
            });
        }
        match spec {
            RewardKind::Model { path, .. } => {
                if !path.join("config.json").is_file() {
                    return Err(RlError::Config {
                        field: field("path"),
                        message: format!("{} has no config.json", path.display()),
                    });
                }
                // A causal LM has no score head: say so now, not as a
                // missing `score.weight` when the weights load.
                let config = LlamaConfig::load(&path.join("config.json"))?;
                if !is_sequence_classification(&config) {
                    return Err(RlError::Config {
                        field: field("path"),
                        message: format!(
                            "{} is not a reward model (no *ForSequenceClassification architecture)",
                            path.display()
                        ),
                    });
                }
                if let Some(policy) = policy_tokenizer {
                    same_tokenizer(policy, path).map_err(|message| RlError::Config {
                        field: field("path"),
                        message,
                    })?;
                }
            }
            // A rule's pattern is compiled (and checked) when the config is read.
            RewardKind::Rule { .. } | RewardKind::Sentiment { .. } => {}
        }
    }
    Ok(())
}

/// Check that every prompt record holds what the rule rewards read from it
/// (`exact=FIELD`'s reference, `json-keys-from=FIELD`'s key list), before
/// any sampling: the first bad record is an error naming its FILE:LINE.
pub fn check_records(specs: &[RewardKind], prompts: &[Prompt]) -> Result<()> {
    for spec in specs {
        if let RewardKind::Rule { rule, .. } = spec {
            for p in prompts {
                rule.check_record(&p.fields).map_err(|e| RlError::Reward {
                    at: p.at.clone(),
                    reward: spec.name(),
                    message: e.to_string(),
                })?;
            }
        }
    }
    Ok(())
}

/// The reward model reads the policy's token ids: both tokenizers must map
/// every token (special ones included) to the same id.
pub(crate) fn same_tokenizer(
    policy: &Tokenizer,
    reward_dir: &Path,
) -> std::result::Result<(), String> {
    let theirs = Tokenizer::from_dir(reward_dir).map_err(|e| e.to_string())?;
    let (a, b) = (
        policy.inner().get_vocab(true),
        theirs.inner().get_vocab(true),
    );
    if a == b {
        return Ok(());
    }
    let differing = a
        .iter()
        .filter(|(tok, id)| b.get(*tok) != Some(id))
        .map(|(tok, _)| tok.clone())
        .chain(b.keys().filter(|t| !a.contains_key(*t)).cloned())
        .min()
        .unwrap_or_default();
    Err(format!(
        "{}: the reward model's tokenizer differs from the policy's ({} vs {} tokens; e.g. {differing:?}); it must read the policy's token ids",
        reward_dir.display(),
        b.len(),
        a.len()
    ))
}

/// A reward function ready to score.
enum Scorer<B: Backend> {
    Model(Box<RewardModel<B>>),
    Rule(Rule),
    Sentiment(Sentiment),
}

/// The reward functions of a run.
pub struct Rewards<B: Backend> {
    names: Vec<String>,
    weights: Vec<f64>,
    scorers: Vec<Scorer<B>>,
    pad_id: u32,
    /// Appended after a chat reply's end-of-turn token for a reward model
    /// (see [`Rewards::load`]).
    trailer: Vec<u32>,
    batch_size: usize,
}

/// Each reward function's score of each completion, and their weighted sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// `per_func[k][i]`: reward function k on completion i.
    pub per_func: Vec<Vec<f64>>,
    /// Σ_k weight_k · per_func[k][i].
    pub total: Vec<f64>,
}

impl<B: Backend> Rewards<B> {
    /// Load every reward function (reward models on `device`, no gradients).
    /// Run [`validate`] first. `trailer` is what the chat template renders
    /// after a reply's end-of-turn token (`Encoder::turn_trailer`; ChatML's
    /// newline): a reward model reads a chat reply that ended its turn after
    /// it, where `alignkit reward score`, transformers and TRL read the same
    /// reply rendered by the template.
    pub fn load(
        specs: &[RewardKind],
        pad_id: u32,
        trailer: Vec<u32>,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let mut scorers = Vec::with_capacity(specs.len());
        for spec in specs {
            scorers.push(match spec {
                RewardKind::Model { path, .. } => {
                    Scorer::Model(Box::new(load_reward_model::<B>(path, device)?.1))
                }
                RewardKind::Rule { rule, .. } => Scorer::Rule(rule.clone()),
                RewardKind::Sentiment { .. } => Scorer::Sentiment(Sentiment::new()),
            });
        }
        Ok(Self {
            names: specs.iter().map(RewardKind::name).collect(),
            weights: specs.iter().map(RewardKind::weight).collect(),
            scorers,
            pad_id,
            trailer,
            batch_size,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Score `completions` of `prompts`.
    pub fn score(
        &self,
        prompts: &[Prompt],
        completions: &[Completion],
        device: &B::Device,
    ) -> Result<Scores> {
        let mut per_func = Vec::with_capacity(self.scorers.len());
        for (name, scorer) in self.names.iter().zip(&self.scorers) {
            let error = |c: &Completion, message: String| RlError::Reward {
                at: prompts[c.prompt].at.clone(),
                reward: name.clone(),
                message,
            };
            let scores: Vec<f64> = match scorer {
                Scorer::Model(model) => {
                    let mut out = Vec::with_capacity(completions.len());
                    for chunk in completions.chunks(self.batch_size.max(1)) {
                        out.extend(model_scores(
                            model,
                            prompts,
                            chunk,
                            self.pad_id,
                            &self.trailer,
                            device,
                        ));
                    }
                    if let Some((c, s)) = completions.iter().zip(&out).find(|(_, s)| !s.is_finite())
                    {
                        return Err(error(c, format!("the reward model scored {s}")));
                    }
                    out
                }
                Scorer::Rule(rule) => completions
                    .iter()
                    .map(|c| {
                        rule.check(&c.text, &prompts[c.prompt].fields)
                            .map(|pass| pass as u8 as f64)
                            .map_err(|e| error(c, e.to_string()))
                    })
                    .collect::<Result<_>>()?,
                Scorer::Sentiment(vader) => {
                    completions.iter().map(|c| vader.score(&c.text)).collect()
                }
            };
            per_func.push(scores);
        }
        let total = (0..completions.len())
            .map(|i| {
                per_func
                    .iter()
                    .zip(&self.weights)
                    .map(|(s, w)| w * s[i])
                    .sum()
            })
            .collect();
        Ok(Scores { per_func, total })
    }
}

/// A reward model's score of each completion, read at its last token.
fn model_scores<B: Backend>(
    model: &RewardModel<B>,
    prompts: &[Prompt],
    completions: &[Completion],
    pad_id: u32,
    trailer: &[u32],
    device: &B::Device,
) -> Vec<f64> {
    let replies: Vec<Vec<u32>> = completions
        .iter()
        .map(|c| {
            let ended_turn = c.finish == FinishReason::Eos && prompts[c.prompt].chat;
            let tail = if ended_turn { trailer } else { &[] };
            [c.tokens.as_slice(), tail].concat()
        })
        .collect();
    let rows: Vec<(&[u32], &[u32])> = completions
        .iter()
        .zip(&replies)
        .map(|(c, reply)| (prompts[c.prompt].ids.as_slice(), reply.as_slice()))
        .collect();
    let tokens = ScoredTokens::new(&rows, &vec![false; rows.len()], pad_id);
    let last: Vec<usize> = tokens
        .batch
        .last_token_index()
        .into_iter()
        .map(|i| i.unwrap_or(0))
        .collect();
    model
        .forward(tokens.input(device), &last)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("converted to f64 above")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<Vec<RewardKind>, String> {
        #[derive(Deserialize)]
        struct T {
            rewards: Vec<RewardKind>,
        }
        toml::from_str::<T>(text)
            .map(|t| t.rewards)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reward_tables_parse_with_defaults_and_reject_unknown_kinds() {
        let r = parse(
            "[[rewards]]\nkind = \"rule\"\nrule = { json_keys = [\"a\"] }\nweight = 0.5\n\
             [[rewards]]\nkind = \"sentiment\"\n",
        )
        .unwrap();
        assert_eq!(r[0].name(), "json_keys");
        assert_eq!(r[0].weight(), 0.5);
        assert_eq!(r[1].name(), "sentiment");
        assert_eq!(r[1].weight(), 1.0);
        validate(&r, None).unwrap();
        let err = parse("[[rewards]]\nkind = \"vibes\"\n").unwrap_err();
        assert!(err.contains("unknown variant `vibes`"), "{err}");
        let err = parse("[[rewards]]\nkind = \"sentiment\"\nscale = 2\n").unwrap_err();
        assert!(err.contains("unknown field `scale`"), "{err}");
    }

    #[test]
    fn validation_names_the_bad_reward() {
        let two = vec![
            RewardKind::Sentiment {
                name: None,
                weight: 1.0,
            },
            RewardKind::Sentiment {
                name: None,
                weight: 2.0,
            },
        ];
        let err = validate(&two, None).unwrap_err().to_string();
        assert!(err.starts_with("config: `rewards[1].name`"), "{err}");
        let err = validate(&[], None).unwrap_err().to_string();
        assert!(err.starts_with("config: `rewards`"), "{err}");
    }
}
