//! `DpoConfig`: what `alignkit dpo --config dpo.toml` reads. Unknown keys are
//! errors; every default is in the `Default` impls below (TRL's `DPOConfig`
//! defaults where it has one) and written out in `RUN_DIR/config.toml`.
//!
//! ```toml
//! model = "runs/sft/final"        # the policy's starting point (HF directory)
//! output_dir = "runs/dpo"
//! loss_type = "sigmoid"           # ipo | hinge | robust | sigmoid_norm | apo_zero | apo_down
//! beta = 0.1
//! precompute_ref_log_probs = true # one reference pass, cached on disk
//!
//! [data]
//! train_file = "prefs.jsonl"      # {"prompt","chosen","rejected"} per line
//!
//! [train]                         # alignkit_train::LoopConfig
//! batch_size = 2                  # pairs per micro-batch (2 × that many sequences)
//!
//! [lora]                          # absent: full fine-tune with a frozen reference copy
//! r = 16
//! ```

use std::path::{Path, PathBuf};

use alignkit_datasets::{CompletionEnd, TemplateKwargs};
use alignkit_model::lora::LoraConfig;
pub use alignkit_train::FinalDtype;
use alignkit_train::{AdamWConfig, LoopConfig, RunSettings, ScheduleConfig};
use serde::{Deserialize, Serialize};

use crate::error::{DpoError, Result};
use crate::loss::{DpoLoss, DpoObjective};

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// JSONL: `{"prompt","chosen","rejected"}` per line, strings or message lists.
    pub train_file: PathBuf,
    /// Separate validation JSONL; when absent, `validation_split` of the
    /// training file (by content hash) is held out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_file: Option<PathBuf>,
    pub validation_split: f64,
    /// Longest prompt + completion in tokens. TRL: `max_length` 1024.
    pub max_len: usize,
    /// Longest prompt in tokens (its end is kept). TRL: `max_prompt_length` 512.
    pub max_prompt_len: usize,
    /// Treat string prompt/chosen/rejected as a user and an assistant turn.
    pub text_as_chat: bool,
    /// Where a conversational completion ends: `"template"` (default, TRL's
    /// span: everything the chat template renders after the prompt, ChatML's
    /// trailing newline included) or `"end_of_turn"` (through the end-of-turn
    /// token).
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
            max_prompt_len: 512,
            text_as_chat: false,
            completion_end: CompletionEnd::Template,
            chat_template_kwargs: TemplateKwargs::new(),
        }
    }
}

/// Direct Preference Optimization configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    /// The policy's starting point: an HF model directory (weights + tokenizer).
    pub model: PathBuf,
    /// The reference policy. Absent: the starting `model` itself — a frozen
    /// copy for a full fine-tune; with LoRA, the policy with its adapters
    /// removed (no second copy of the weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_model: Option<PathBuf>,
    /// The run directory.
    pub output_dir: PathBuf,
    /// Peak learning rate. TRL's `DPOConfig` default: 1e-6.
    pub learning_rate: f64,
    /// dtype of the exported `final/` weights.
    pub final_dtype: FinalDtype,
    pub loss_type: DpoLoss,
    /// β: inverse temperature of the implicit reward. TRL: 0.1.
    pub beta: f64,
    /// ε for the `sigmoid` (cDPO) and `robust` losses. TRL: 0.
    pub label_smoothing: f64,
    /// Weight of the NLL-on-chosen term (RPO); absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Option<f64>,
    /// Compute the reference log-probs once before training (and cache them
    /// on disk) instead of running the reference model on every batch.
    pub precompute_ref_log_probs: bool,
    /// Where precomputed reference log-probs are cached; absent:
    /// `output_dir/reference-cache`. Share one directory between runs (or
    /// pipeline stages) to reuse them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_cache_dir: Option<PathBuf>,
    pub data: DataConfig,
    pub train: LoopConfig,
    pub optim: AdamWConfig,
    pub schedule: ScheduleConfig,
    /// Present: train a LoRA adapter on a frozen base. Absent: full fine-tune.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            ref_model: None,
            output_dir: PathBuf::new(),
            learning_rate: 1e-6,
            final_dtype: FinalDtype::F32,
            loss_type: DpoLoss::Sigmoid,
            beta: 0.1,
            label_smoothing: 0.0,
            rpo_alpha: None,
            precompute_ref_log_probs: false,
            ref_cache_dir: None,
            data: DataConfig::default(),
            train: LoopConfig::default(),
            optim: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            lora: None,
        }
    }
}

impl DpoConfig {
    /// Read a TOML file, then apply `overrides` (`key=value`). Unknown keys
    /// are errors.
    pub fn load(path: Option<&Path>, overrides: &[(String, String)]) -> Result<Self> {
        Ok(alignkit_train::load_config(path, overrides)?)
    }

    /// The loss settings, validated together.
    pub fn objective(&self) -> Result<DpoObjective> {
        DpoObjective::new(
            self.loss_type,
            self.beta,
            self.label_smoothing,
            self.rpo_alpha,
        )
    }

    /// Check every setting that can be checked without reading data or
    /// weights; paths must exist.
    pub fn validate(&self) -> Result<()> {
        RunSettings {
            model_dirs: &[
                ("model", Some(self.model.as_path())),
                ("ref_model", self.ref_model.as_deref()),
            ],
            output_dir: &self.output_dir,
            train_file: &self.data.train_file,
            validation_file: self.data.validation_file.as_deref(),
            validation_split: self.data.validation_split,
            max_len: self.data.max_len,
            max_prompt_len: Some(self.data.max_prompt_len),
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
            std::path::absolute(p).map_err(|source| DpoError::Io {
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
        if let Some(r) = &self.ref_model {
            c.ref_model = Some(abs(r)?);
        }
        if let Some(d) = &self.ref_cache_dir {
            c.ref_cache_dir = Some(abs(d)?);
        }
        Ok(c)
    }

    /// Where precomputed reference log-probs are cached.
    pub fn reference_cache_dir(&self) -> PathBuf {
        self.ref_cache_dir
            .clone()
            .unwrap_or_else(|| self.output_dir.join("reference-cache"))
    }

    /// The resolved config as TOML, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("DpoConfig serializes to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_a_one_line_error_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpo.toml");
        std::fs::write(&path, "model = \"m\"\nbeta = 0.2\nloss = \"ipo\"\n").unwrap();
        let err = DpoConfig::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("dpo.toml:3:1:"), "{err}");
        assert!(err.contains("unknown field `loss`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn loss_types_parse_by_trl_name_and_unknown_ones_are_errors() {
        let c: DpoConfig = toml::from_str("loss_type = \"sigmoid_norm\"\nbeta = 0.5").unwrap();
        assert_eq!((c.loss_type, c.beta), (DpoLoss::SigmoidNorm, 0.5));
        let err = toml::from_str::<DpoConfig>("loss_type = \"kto\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `kto`"), "{err}");
    }

    #[test]
    fn overrides_and_defaults() {
        let c = DpoConfig::load(
            None,
            &[
                ("beta".into(), "0.25".into()),
                ("loss_type".into(), "ipo".into()),
                ("train.batch_size".into(), "3".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            (c.beta, c.loss_type, c.train.batch_size),
            (0.25, DpoLoss::Ipo, 3)
        );
        assert_eq!(c.learning_rate, 1e-6);
        assert_eq!((c.data.max_len, c.data.max_prompt_len), (1024, 512));
    }

    #[test]
    fn resolved_config_round_trips_with_all_defaults() {
        let c = DpoConfig {
            model: "m".into(),
            output_dir: "o".into(),
            rpo_alpha: Some(1.0),
            lora: Some(LoraConfig::default()),
            ..Default::default()
        };
        let text = c.to_toml();
        for key in [
            "loss_type = \"sigmoid\"",
            "beta = 0.1",
            "label_smoothing = 0.0",
            "[optim]",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        let back: DpoConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn loss_settings_are_validated_with_the_config() {
        let c = DpoConfig {
            loss_type: DpoLoss::Hinge,
            label_smoothing: 0.2,
            ..Default::default()
        };
        let err = c.objective().unwrap_err().to_string();
        assert!(err.contains("label_smoothing"), "{err}");
    }
}
