//! `RUN/<stage>/manifest.json`: what a stage was run with (its identity) and
//! how it ended.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stage::StageKind;

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Interrupted,
    Failed,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputModel {
    pub path: PathBuf,
    /// The base model's fingerprint, or the upstream stage's identity.
    pub sha256: String,
    /// The upstream stage, when the model is another stage's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub model: InputModel,
    pub data: Vec<InputFile>,
    /// The other models the stage reads, by role: an RL stage's reward
    /// models (`rewards[i]`), an eval stage's reward judges (`judges[i]`) and
    /// its `baseline`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, InputModel>,
    /// The content of every model the stage read when it ran
    /// ([`alignkit_train::model_fingerprint`]), by role: `model` (its input),
    /// those of `models`, a DPO stage's `ref_model`, a PPO stage's
    /// `ppo.value_model`. Another stage's output is known above by that
    /// stage's identity; this catches its files replaced since. Absent in
    /// manifests of older versions, which are then not compared.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fingerprints: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    /// The model later stages take (an HF directory; a PEFT adapter for an
    /// adapter export); an eval stage has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// An eval stage's `winrate.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<PathBuf>,
    pub steps: Option<usize>,
}

/// `RUN/<stage>/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub kind: StageKind,
    pub status: Status,
    /// The stage's identity: kind, config, data and input models.
    pub sha256: String,
    pub config_sha256: String,
    pub config: serde_json::Value,
    /// Ranks the stage trained on (`launch.nproc_per_node`; 1: one process).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ranks: usize,
    pub inputs: Inputs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    /// The last `metrics.jsonl` record; an eval stage's win-rate report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_metrics: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Manifest {
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(super) fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("a manifest serializes");
        alignkit_model::checkpoint::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
