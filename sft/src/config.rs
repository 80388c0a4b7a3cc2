//! `SftConfig`: what `alignkit sft --config sft.toml` reads. Unknown keys are
//! errors; every default is in the `Default` impls below and written out in
//! `RUN_DIR/config.toml`.
//!
//! ```toml
//! model = "models/SmolLM2-135M-Instruct"   # HF directory (weights + tokenizer)
//! output_dir = "runs/sft"
//! learning_rate = 2e-4
//!
//! [data]
//! train_file = "examples/sft.jsonl"
//! max_len = 512
//!
//! [train]                                   # alignkit_train::LoopConfig
//! batch_size = 4
//! epochs = 1
//!
//! [lora]                                    # absent: full fine-tune
//! r = 16
//! alpha = 32
//! target_modules = "all-linear"
//! ```

use std::path::{Path, PathBuf};

use alignkit_datasets::{PlainText, TemplateKwargs, TrainOn};
use alignkit_model::lora::LoraConfig;
pub use alignkit_train::FinalDtype;
use alignkit_train::{AdamWConfig, LoopConfig, RunSettings, ScheduleConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SftError};

/// Which tokens carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossOn {
    /// Completions, or every assistant turn of a conversation (TRL's
    /// `completion_only_loss` / `assistant_only_loss`).
    Completion,
    /// Every token.
    All,
}

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// JSONL: `{"text"}`, `{"prompt","completion"}` or `{"messages"}` per line.
    pub train_file: PathBuf,
    /// Separate validation JSONL; when absent, `validation_split` of the
    /// training file (by content hash) is held out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_file: Option<PathBuf>,
    pub validation_split: f64,
    /// Longest sequence in tokens (longer ones are truncated, and counted).
    pub max_len: usize,
    /// Pack several examples into each row of `max_len` tokens (attention and
    /// positions restart per example, so packing changes no example's loss).
    pub packing: bool,
    pub loss_on: LossOn,
    /// Treat string prompt/completion records as a user and an assistant turn.
    pub text_as_chat: bool,
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
            packing: false,
            loss_on: LossOn::Completion,
            text_as_chat: false,
            chat_template_kwargs: TemplateKwargs::new(),
        }
    }
}

/// Supervised fine-tuning configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Hugging Face model directory (config.json, safetensors, tokenizer).
    pub model: PathBuf,
    /// The run directory.
    pub output_dir: PathBuf,
    /// Peak learning rate. TRL's `SFTConfig` default: 2e-5.
    pub learning_rate: f64,
    /// dtype of the exported `final/` weights.
    pub final_dtype: FinalDtype,
    pub data: DataConfig,
    pub train: LoopConfig,
    pub optim: AdamWConfig,
    pub schedule: ScheduleConfig,
    /// Present: train a LoRA adapter on a frozen base. Absent: full fine-tune.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::new(),
            learning_rate: 2e-5,
            final_dtype: FinalDtype::F32,
            data: DataConfig::default(),
            train: LoopConfig::default(),
            optim: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            lora: None,
        }
    }
}

impl SftConfig {
    /// Read a TOML file, then apply `overrides` (`key=value`, as given by
    /// `--set` or the CLI's flags). Unknown keys are errors.
    pub fn load(path: Option<&Path>, overrides: &[(String, String)]) -> Result<Self> {
        Ok(alignkit_train::load_config(path, overrides)?)
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
            std::path::absolute(p).map_err(|e| SftError::Io {
                path: p.to_path_buf(),
                source: e,
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
        toml::to_string(self).expect("SftConfig serializes to TOML")
    }

    pub(crate) fn train_on(&self) -> TrainOn {
        match self.data.loss_on {
            LossOn::Completion => TrainOn::Completion,
            LossOn::All => TrainOn::All,
        }
    }

    pub(crate) fn plain_text(&self) -> PlainText {
        if self.data.text_as_chat {
            PlainText::Chat
        } else {
            PlainText::Raw
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_a_one_line_error_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.toml");
        std::fs::write(&path, "model = \"m\"\n[train]\nbatch_sise = 4\n").unwrap();
        let err = SftConfig::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("sft.toml:3:1:"), "{err}");
        assert!(err.contains("unknown field `batch_sise`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn overrides_parse_as_toml_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.toml");
        std::fs::write(&path, "model = \"m\"\noutput_dir = \"o\"\n").unwrap();
        let overrides = vec![
            ("train.batch_size".to_string(), "3".to_string()),
            ("learning_rate".to_string(), "1e-4".to_string()),
            (
                "lora.target_modules".to_string(),
                "q_proj,v_proj".to_string(),
            ),
            ("data.train_file".to_string(), "x.jsonl".to_string()),
        ];
        let c = SftConfig::load(Some(&path), &overrides).unwrap();
        assert_eq!(c.train.batch_size, 3);
        assert_eq!(c.learning_rate, 1e-4);
        assert_eq!(
            c.lora.unwrap().target_modules.names(),
            vec!["q_proj".to_string(), "v_proj".to_string()]
        );
        assert_eq!(c.data.train_file, PathBuf::from("x.jsonl"));
        let err = SftConfig::load(Some(&path), &[("train.nope".into(), "1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `nope`"), "{err}");
    }

    /// `[data.chat_template_kwargs]` from the file and `--set`, written back
    /// into the resolved config; absent, it is not written at all.
    #[test]
    fn chat_template_kwargs_are_read_overridden_and_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.toml");
        std::fs::write(
            &path,
            "model = \"m\"\n[data.chat_template_kwargs]\nenable_thinking = true\nlang = \"fr\"\n",
        )
        .unwrap();
        let set = [(
            "data.chat_template_kwargs.enable_thinking".to_string(),
            "false".to_string(),
        )];
        let c = SftConfig::load(Some(&path), &set).unwrap();
        let kwargs = &c.data.chat_template_kwargs;
        assert_eq!(kwargs["enable_thinking"], serde_json::Value::Bool(false));
        assert_eq!(kwargs["lang"], serde_json::Value::from("fr"));
        let back: SftConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.data.chat_template_kwargs, *kwargs);
        assert!(
            !SftConfig::default()
                .to_toml()
                .contains("chat_template_kwargs")
        );
    }

    #[test]
    fn resolved_config_round_trips_with_all_defaults() {
        let c = SftConfig {
            model: "m".into(),
            output_dir: "o".into(),
            lora: Some(LoraConfig::default()),
            ..Default::default()
        };
        let text = c.to_toml();
        assert!(
            text.contains("[optim]") && text.contains("eps = "),
            "{text}"
        );
        assert!(text.contains("max_bad_steps = 5"), "{text}");
        let back: SftConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
