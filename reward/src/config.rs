//! `RewardConfig`: what `alignkit reward train --config reward.toml` reads.
//! Unknown keys are errors; every default is in the `Default` impls below
//! (TRL's `RewardConfig` defaults where it has one) and written out in
//! `RUN_DIR/config.toml`.
//!
//! ```toml
//! model = "runs/sft/final"        # backbone: a causal LM (fresh score head) or a reward model
//! output_dir = "runs/reward"
//! learning_rate = 1e-4
//! center_rewards_coefficient = 0.01
//!
//! [data]
//! train_file = "prefs.jsonl"      # {"prompt","chosen","rejected"[,"margin"]} per line
//! validation_split = 0.1
//!
//! [train]
//! batch_size = 4                  # pairs per micro-batch
//!
//! [lora]                          # absent: full fine-tune; present: adapters + a fully trained head
//! r = 16
//! ```

use std::path::{Path, PathBuf};

use alignkit_datasets::{CompletionEnd, TemplateKwargs};
use alignkit_model::lora::LoraConfig;
pub use alignkit_train::FinalDtype;
use alignkit_train::{AdamWConfig, LoopConfig, RunSettings, ScheduleConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RewardError};
use crate::loss::RewardObjective;

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// JSONL: `{"prompt","chosen","rejected"}` per line, strings or message
    /// lists, with an optional numeric `"margin"` (TRL's margin column).
    pub train_file: PathBuf,
    /// Separate validation JSONL; when absent, `validation_split` of the
    /// training file (by content hash) is held out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_file: Option<PathBuf>,
    pub validation_split: f64,
    /// Longest prompt + completion in tokens. TRL: `max_length` 1024. Longer
    /// sequences lose the start of their prompt, so the end of the completion,
    /// where the score is read, survives (TRL drops such pairs instead).
    pub max_len: usize,
    /// Treat string prompt/chosen/rejected as a user and an assistant turn.
    pub text_as_chat: bool,
    /// Where a conversational completion ends: `"template"` (default, TRL's
    /// span: everything the chat template renders after the prompt, ChatML's
    /// trailing newline included) or `"end_of_turn"` (through the end-of-turn
    /// token). The score is read at the sequence's last token that is not
    /// the pad token, so this decides where; score with the same setting.
    pub completion_end: CompletionEnd,
    /// Variables the chat template is rendered with, as
    /// `apply_chat_template(..., **kwargs)` passes them (Qwen3:
    /// `{ enable_thinking = false }`).
    #[serde(skip_serializing_if = "TemplateKwargs::is_empty")]
    pub chat_template_kwargs: TemplateKwargs,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train_file: PathBuf::new(),
            validation_file: None,
            validation_split: 0.0,
            max_len: 1024,
            text_as_chat: false,
            completion_end: CompletionEnd::Template,
            chat_template_kwargs: TemplateKwargs::new(),
        }
    }
}

/// Reward-model training configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// The starting point: a causal-LM directory (its backbone, a fresh score
    /// head) or a reward-model directory (`*ForSequenceClassification`).
    pub model: PathBuf,
    /// The run directory.
    pub output_dir: PathBuf,
    /// Peak learning rate. TRL's `RewardConfig` default: 1e-4.
    pub learning_rate: f64,
    /// dtype of the exported `final/` weights.
    pub final_dtype: FinalDtype,
    /// c of the centring term c · mean((r_c + r_r)²); absent: none. TRL
    /// recommends 0.01.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub center_rewards_coefficient: Option<f64>,
    pub data: DataConfig,
    pub train: LoopConfig,
    pub optim: AdamWConfig,
    pub schedule: ScheduleConfig,
    /// Present: LoRA adapters on a frozen backbone (the score head is trained
    /// fully, as PEFT's `modules_to_save=["score"]`). Absent: full fine-tune.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::new(),
            learning_rate: 1e-4,
            final_dtype: FinalDtype::F32,
            center_rewards_coefficient: None,
            data: DataConfig::default(),
            train: LoopConfig::default(),
            optim: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            lora: None,
        }
    }
}

impl RewardConfig {
    /// Read a TOML file, then apply `overrides` (`key=value`). Unknown keys
    /// are errors.
    pub fn load(path: Option<&Path>, overrides: &[(String, String)]) -> Result<Self> {
        Ok(alignkit_train::load_config(path, overrides)?)
    }

    /// The loss settings.
    pub fn objective(&self) -> Result<RewardObjective> {
        RewardObjective::new(self.center_rewards_coefficient)
    }

    /// Check every setting that can be checked without reading data or
    /// weights; paths must exist.
    pub fn validate(&self) -> Result<()> {
        RunSettings {
            model_dirs: &[("model", Some(self.model.as_path()))],
            output_dir: &self.output_dir,
            train_file: &self.data.train_file,
            validation_file: self.data.validation_file.as_deref(),
            validation_split: self.data.validation_split,
            max_len: self.data.max_len,
            max_prompt_len: None,
            learning_rate: self.learning_rate,
            eval_steps: self.train.eval_steps,
        }
        .check()?;
        self.objective()?;
        self.train.validate()?;
        self.optim.validate()?;
        self.schedule.validate()?;
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        Ok(())
    }

    /// The same config with every path absolute (so a run resumes from any
    /// working directory).
    pub fn with_absolute_paths(&self) -> Result<Self> {
        let abs = |p: &Path| {
            std::path::absolute(p).map_err(|source| RewardError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let mut c = self.clone();
        c.model = abs(&self.model)?;
        c.output_dir = abs(&self.output_dir)?;
        c.data.train_file = abs(&self.data.train_file)?;
        if let Some(v) = &self.data.validation_file {
            c.data.validation_file = Some(abs(v)?);
        }
        Ok(c)
    }

    /// The resolved config as TOML, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("RewardConfig serializes to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_a_one_line_error_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reward.toml");
        std::fs::write(&path, "model = \"m\"\n[data]\nmax_length = 4\n").unwrap();
        let err = RewardConfig::load(Some(&path), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("reward.toml:3:1:"), "{err}");
        assert!(err.contains("unknown field `max_length`"), "{err}");
    }

    #[test]
    fn defaults_and_round_trip() {
        let c = RewardConfig::load(
            None,
            &[("center_rewards_coefficient".into(), "0.01".into())],
        )
        .unwrap();
        assert_eq!(c.center_rewards_coefficient, Some(0.01));
        assert_eq!((c.learning_rate, c.data.max_len), (1e-4, 1024));
        let c = RewardConfig {
            model: "m".into(),
            output_dir: "o".into(),
            lora: Some(LoraConfig::default()),
            ..c
        };
        let back: RewardConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let bad = RewardConfig {
            center_rewards_coefficient: Some(-1.0),
            ..c
        };
        assert!(
            bad.objective()
                .unwrap_err()
                .to_string()
                .contains("center_rewards_coefficient")
        );
    }
}
