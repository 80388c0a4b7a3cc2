//! The pipeline file (`[[stage]]` entries) and each stage's resolved config,
//! as its own crate's type.

use std::path::PathBuf;

use alignkit_dpo::DpoConfig;
use alignkit_reward::RewardConfig;
use alignkit_sft::SftConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineFile {
    pub(super) model: Option<PathBuf>,
    pub(super) output_dir: Option<PathBuf>,
    #[serde(default, rename = "stage")]
    pub(super) stages: Vec<StageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StageEntry {
    pub(super) name: String,
    pub(super) kind: StageKind,
    pub(super) from: Option<String>,
    #[serde(default)]
    pub(super) config: toml::Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Sft,
    Reward,
    Dpo,
    Export,
}

impl StageKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            StageKind::Sft => "sft",
            StageKind::Reward => "reward",
            StageKind::Dpo => "dpo",
            StageKind::Export => "export",
        }
    }

    /// Whether the stage's output is a policy (a causal LM) later stages take.
    pub(super) fn outputs_policy(self) -> bool {
        !matches!(self, StageKind::Reward)
    }
}

/// The `[stage.config]` table of an `export` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub format: ExportFormat,
    /// Weight dtype of a merged export.
    pub dtype: ExportDtype,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            format: ExportFormat::Merged,
            dtype: ExportDtype::F32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A Hugging Face model directory with LoRA folded in.
    Merged,
    /// A PEFT adapter directory (LoRA stages only).
    Adapter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    F32,
    Bf16,
}

/// A stage's resolved config, as its own crate's type.
#[derive(Debug, Clone)]
pub enum StageConfig {
    Sft(Box<SftConfig>),
    Reward(Box<RewardConfig>),
    Dpo(Box<DpoConfig>),
    Export(ExportConfig),
}

impl StageConfig {
    pub(super) fn to_json(&self) -> serde_json::Value {
        let v = match self {
            StageConfig::Sft(c) => serde_json::to_value(c),
            StageConfig::Reward(c) => serde_json::to_value(c),
            StageConfig::Dpo(c) => serde_json::to_value(c),
            StageConfig::Export(c) => serde_json::to_value(c),
        };
        v.expect("stage configs serialize")
    }

    pub(super) fn to_toml(&self) -> String {
        match self {
            StageConfig::Sft(c) => c.to_toml(),
            StageConfig::Reward(c) => c.to_toml(),
            StageConfig::Dpo(c) => c.to_toml(),
            StageConfig::Export(c) => toml::to_string(c).expect("ExportConfig serializes"),
        }
    }

    pub(super) fn data_files(&self) -> Vec<PathBuf> {
        let (train, validation) = match self {
            StageConfig::Sft(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Reward(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Dpo(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Export(_) => return Vec::new(),
        };
        std::iter::once(train.clone())
            .chain(validation.clone())
            .collect()
    }
}
