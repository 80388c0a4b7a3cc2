//! The resume contract every trainer shares: a resumed run reproduces the
//! interrupted one only if nothing that shapes its trajectory changed.
//!
//! On `--resume` the new resolved config is compared key by key with the one
//! the checkpoint was written under (stored in its `trainer_state.json`), and
//! the data files' SHA-256 with the checkpoint's. The rule is *refuse unless
//! known harmless*: every key refuses except the [`BOOKKEEPING`] keys every
//! trainer shares (where the run lives, when it ends, how often it saves,
//! evaluates or logs, the export dtype) and the few a trainer adds for itself
//! (DPO's reference cache directory, say). A trainer thus never has to list
//! its objective keys (β, the loss type, a reward weight): a key nobody
//! thought about refuses rather than silently changing the run. Paths of the
//! model and data files are compared by content (the model fingerprint and
//! SHA-256), so a project moved elsewhere with its run directory resumes; so
//! are those of every other model the run reads ([`ModelInput`]: reward
//! models, the critic's start, the reference), and one that holds different
//! weights than when the run started refuses by its key and path
//! ([`replaced_models`]) — the run would go on under another objective.
//!
//! A refusal names every differing key, old → new, in one line; the allowed
//! changes are returned so the trainer can report them and are recorded in
//! the checkpoint's history ([`crate::TrainerState::resumes`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::{DataFile, ModelInput};

/// Keys (dotted) any trainer's run may change on resume: they move the
/// schedule's end or bookkeeping, or trade memory for time with gradients
/// bit-identical (activation checkpointing; a checkpoint from before
/// `recompute_granularity` existed lacks that key), never the data order or
/// the objective.
pub const BOOKKEEPING: &[&str] = &[
    "output_dir",
    "final_dtype",
    "train.max_steps",
    "train.epochs",
    "train.save_steps",
    "train.keep_last",
    "train.eval_steps",
    "train.early_stopping_patience",
    "train.max_bad_steps",
    "train.logging_steps",
    "train.gradient_checkpointing",
    "train.recompute_granularity",
];

/// Keys whose value is a path compared by content instead (the model by its
/// fingerprint, data files by SHA-256; see [`compare`]).
const CONTENT_PATHS: &[&str] = &["model", "data.train_file", "data.validation_file"];

/// Keys that change how a run computes, not what it computes: a finished run
/// redone with other values ends bit-identical (activation checkpointing
/// recomputes the same values). A pipeline does not re-run a completed stage
/// for them.
pub const RESULT_NEUTRAL: &[&str] = &[
    "train.gradient_checkpointing",
    "train.recompute_granularity",
];

/// One config key that differs between the checkpoint's run and this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key: String,
    /// The value as compact JSON; `absent` when the key was not set.
    pub old: String,
    pub new: String,
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → {}", self.key, self.old, self.new)
    }
}

/// Changes allowed on a resume at `step`, kept in the trainer state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub step: usize,
    pub changes: Vec<KeyChange>,
}

/// What [`compare`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Keys that change the data order or the objective: resuming is refused.
    pub refused: Vec<KeyChange>,
    /// Bookkeeping keys that changed: allowed, to be reported and recorded.
    pub allowed: Vec<KeyChange>,
}

/// A resolved config as the JSON the contract compares.
pub fn to_json<T: Serialize>(config: &T) -> Value {
    serde_json::to_value(config).expect("run configs serialize to JSON")
}

/// An older run's resolved config re-read with this version's config type
/// `T`: keys added since it was written take their defaults, so upgrading
/// alignkit does not by itself refuse a resume or re-run a finished pipeline
/// stage. A new key's default is the behaviour from before the key existed
/// (every new key is opt-in). `None` when the old config no longer parses (a
/// key renamed or removed since); it is then compared as written, and the
/// comparison names that key.
pub fn reread<T: DeserializeOwned + Serialize>(old: &Value) -> Option<Value> {
    serde_json::from_value::<T>(old.clone())
        .ok()
        .map(|c| to_json(&c))
}

/// Every leaf key (dotted) whose value differs between two JSON objects;
/// arrays compare whole.
pub fn differences(old: &Value, new: &Value) -> Vec<KeyChange> {
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

fn walk(old: &Value, new: &Value, prefix: &str, out: &mut Vec<KeyChange>) {
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match (a.get(k), b.get(k)) {
                (Some(u), Some(v)) => walk(u, v, &key, out),
                (u, v) => out.push(KeyChange {
                    key,
                    old: u.map_or_else(|| "absent".into(), Value::to_string),
                    new: v.map_or_else(|| "absent".into(), Value::to_string),
                }),
            }
        }
    } else if old != new {
        out.push(KeyChange {
            key: prefix.to_string(),
            old: old.to_string(),
            new: new.to_string(),
        });
    }
}

/// Compare the checkpoint's resolved config and data files with this run's.
/// `bookkeeping` adds the trainer's own harmless keys to [`BOOKKEEPING`].
/// Data files are matched by position (train first, then validation) and
/// named by `data_keys`.
pub fn compare(
    old_config: &Value,
    new_config: &Value,
    old_data: &[DataFile],
    new_data: &[DataFile],
    data_keys: &[&str],
    bookkeeping: &[&str],
) -> Comparison {
    let mut c = Comparison::default();
    for change in differences(old_config, new_config) {
        let key = change.key.as_str();
        if CONTENT_PATHS.contains(&key) {
            // Compared by content below (the model by the fingerprint check).
            c.allowed.push(change);
        } else if BOOKKEEPING.contains(&key) || bookkeeping.contains(&key) {
            c.allowed.push(change);
        } else {
            c.refused.push(change);
        }
    }
    let n = old_data.len().max(new_data.len());
    for i in 0..n {
        let key = data_keys.get(i).copied().unwrap_or("data file");
        let short = |f: Option<&DataFile>| {
            f.map_or_else(
                || "absent".into(),
                |f| format!("sha256 {}", short_hash(&f.sha256)),
            )
        };
        let (a, b) = (old_data.get(i), new_data.get(i));
        if a.map(|f| &f.sha256) != b.map(|f| &f.sha256) {
            c.refused.push(KeyChange {
                key: format!("{key} content"),
                old: short(a),
                new: short(b),
            });
        }
    }
    c
}

/// The models of `new` whose fingerprint differs from the one `old` recorded
/// under the same key. A key only one side has is a config change, compared
/// with the config; a checkpoint of an older version recorded none.
pub fn replaced_models<'a>(old: &[ModelInput], new: &'a [ModelInput]) -> Vec<&'a ModelInput> {
    new.iter()
        .filter(|n| {
            old.iter()
                .any(|o| o.key == n.key && o.fingerprint != n.fingerprint)
        })
        .collect()
}

/// The one line a resume refused by [`replaced_models`] prints after the
/// checkpoint's path.
pub fn replaced_message(replaced: &[&ModelInput]) -> String {
    let list: Vec<String> = replaced
        .iter()
        .map(|m| format!("{} {}", m.key, m.path.display()))
        .collect();
    let (verb, what, them) = match replaced {
        [_] => ("holds", "a different model", "it"),
        _ => ("hold", "different models", "them"),
    };
    format!(
        "{} {verb} {what} than when the run started (fingerprint changed); start a fresh run or restore {them}",
        list.join(", ")
    )
}

/// `old_config` with the value at the key of each model that moved — the
/// same fingerprint under the same key in `old` and `new`, another path —
/// taken from `new_config`, and those moves as bookkeeping changes: a model
/// is compared by content, as the base model and the data files are.
pub fn follow_moved_models(
    old_config: &Value,
    new_config: &Value,
    old: &[ModelInput],
    new: &[ModelInput],
) -> (Value, Vec<KeyChange>) {
    let mut config = old_config.clone();
    let mut moved = Vec::new();
    for n in new {
        if !old
            .iter()
            .any(|o| o.key == n.key && o.fingerprint == n.fingerprint)
        {
            continue;
        }
        let Some(to) = at_key(new_config, &n.key) else {
            continue;
        };
        let Some(from) = at_key_mut(&mut config, &n.key) else {
            continue;
        };
        if from != to {
            moved.push(KeyChange {
                key: n.key.clone(),
                old: from.to_string(),
                new: to.to_string(),
            });
            *from = to.clone();
        }
    }
    (config, moved)
}

/// The value at a dotted key whose parts may index an array (`rewards[0].path`).
fn at_key<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    key.split('.').try_fold(v, |v, part| match index(part)? {
        (name, Some(i)) => v.get(name)?.get(i),
        (name, None) => v.get(name),
    })
}

fn at_key_mut<'v>(v: &'v mut Value, key: &str) -> Option<&'v mut Value> {
    key.split('.').try_fold(v, |v, part| match index(part)? {
        (name, Some(i)) => v.get_mut(name)?.get_mut(i),
        (name, None) => v.get_mut(name),
    })
}

/// `rewards[0]` → (`rewards`, 0); `model` → (`model`, none).
fn index(part: &str) -> Option<(&str, Option<usize>)> {
    match part.split_once('[') {
        Some((name, i)) => Some((name, Some(i.strip_suffix(']')?.parse().ok()?))),
        None => Some((part, None)),
    }
}

fn short_hash(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// The one line a refused resume prints after the checkpoint's path.
pub fn refusal_message(refused: &[KeyChange]) -> String {
    let list: Vec<String> = refused.iter().map(ToString::to_string).collect();
    format!(
        "cannot resume: {} changed ({}); these change the data order or the objective — resume with the previous values or start a new output_dir",
        if refused.len() == 1 {
            "1 setting".to_string()
        } else {
            format!("{} settings", refused.len())
        },
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(sha: &str) -> DataFile {
        DataFile {
            path: "d.jsonl".into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn every_differing_leaf_is_named_once() {
        let old = json!({"beta": 0.1, "train": {"seed": 42, "batch_size": 2}, "lora": {"r": 8}});
        let new = json!({"beta": 0.2, "train": {"seed": 7, "batch_size": 2}});
        let d = differences(&old, &new);
        let keys: Vec<&str> = d.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["beta", "lora", "train.seed"]);
        assert_eq!(d[0].to_string(), "beta 0.1 → 0.2");
        assert_eq!(d[1].to_string(), "lora {\"r\":8} → absent");
    }

    #[test]
    fn bookkeeping_is_allowed_and_everything_else_refused() {
        let old = json!({"output_dir": "/a/run", "model": "/m", "loss_type": "sigmoid",
                         "ref_cache_dir": "/c1",
                         "train": {"max_steps": 2, "seed": 42, "save_steps": 1}});
        let new = json!({"output_dir": "/b/run", "model": "/moved/m", "loss_type": "ipo",
                         "ref_cache_dir": "/c2",
                         "train": {"max_steps": 9, "seed": 42, "save_steps": 5}});
        let c = compare(&old, &new, &[], &[], &[], &["ref_cache_dir"]);
        let refused: Vec<String> = c.refused.iter().map(ToString::to_string).collect();
        assert_eq!(refused, ["loss_type \"sigmoid\" → \"ipo\""]);
        let allowed: Vec<&str> = c.allowed.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(
            allowed,
            [
                "model",
                "output_dir",
                "ref_cache_dir",
                "train.max_steps",
                "train.save_steps"
            ]
        );
        // Without the trainer's own key, the cache directory would refuse.
        let c = compare(&old, &new, &[], &[], &[], &[]);
        assert_eq!(c.refused.len(), 2);
        // Checkpointing changes memory, not gradients: a run may turn it on
        // to resume in less memory, and a checkpoint from before
        // recompute_granularity existed resumes.
        let old = json!({"train": {"gradient_checkpointing": false, "dtype": "f32"}});
        let new = json!({"train": {"gradient_checkpointing": true,
                                   "recompute_granularity": "selective", "dtype": "bf16"}});
        let c = compare(&old, &new, &[], &[], &[], &[]);
        let allowed: Vec<String> = c.allowed.iter().map(ToString::to_string).collect();
        assert_eq!(
            allowed,
            [
                "train.gradient_checkpointing false → true",
                "train.recompute_granularity absent → \"selective\""
            ]
        );
        let refused: Vec<&str> = c.refused.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(refused, ["train.dtype"]);
    }

    #[test]
    fn a_data_file_with_other_content_refuses_under_its_key() {
        let keys = ["data.train_file", "data.validation_file"];
        let same = compare(
            &json!({}),
            &json!({}),
            &[file("aaaa")],
            &[file("aaaa")],
            &keys,
            &[],
        );
        assert_eq!(same, Comparison::default());
        let c = compare(
            &json!({}),
            &json!({}),
            &[file("aaaa")],
            &[file("bbbb"), file("cccc")],
            &keys,
            &[],
        );
        let refused: Vec<String> = c.refused.iter().map(ToString::to_string).collect();
        assert_eq!(
            refused,
            [
                "data.train_file content sha256 aaaa → sha256 bbbb",
                "data.validation_file content absent → sha256 cccc"
            ]
        );
        let line = refusal_message(&c.refused);
        assert!(line.starts_with("cannot resume: 2 settings changed (data.train_file"));
        assert!(!line.contains('\n'));
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Config {
        beta: f64,
        granularity: String,
    }

    impl Default for Config {
        fn default() -> Self {
            Self {
                beta: 0.1,
                granularity: "full".into(),
            }
        }
    }

    #[test]
    fn reread_fills_keys_added_since_and_refuses_removed_ones() {
        // Written before `granularity` existed: it comes back at its default,
        // and the comparison with this version's config finds nothing.
        let older = json!({"beta": 0.5});
        let new = json!({"beta": 0.5, "granularity": "full"});
        let filled = reread::<Config>(&older).unwrap();
        assert_eq!(filled, new);
        let c = compare(&filled, &new, &[], &[], &[], &[]);
        assert!(c.refused.is_empty() && c.allowed.is_empty(), "{c:?}");
        // A new key set to something else is still a change.
        let other = json!({"beta": 0.5, "granularity": "selective"});
        assert_eq!(
            compare(&filled, &other, &[], &[], &[], &[]).refused.len(),
            1
        );
        // A key this version no longer has: compared as written, so named.
        assert_eq!(reread::<Config>(&json!({"beta": 0.5, "gone": 1})), None);
    }
}
