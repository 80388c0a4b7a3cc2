//! Loop settings every trainer shares (the `[train]` table of a run config).

use std::path::{Path, PathBuf};

use alignkit_model::recompute;
use alignkit_model::transformer::LlamaModel;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How long to train, how to batch, when to checkpoint and evaluate.
/// Defaults follow transformers' `TrainingArguments` where it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Sequences (or packed rows) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer update.
    pub grad_accum: usize,
    /// Passes over the training data (ignored when `max_steps` > 0).
    pub epochs: usize,
    /// Optimizer updates to run; 0: `epochs` passes.
    pub max_steps: usize,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Seeds data order, adapter init and dropout.
    pub seed: u64,
    /// Checkpoint every this many updates (and always at the end and on Ctrl-C); 0: only then.
    pub save_steps: usize,
    /// Complete checkpoints to keep (the best one is kept in addition); 0 keeps all.
    pub keep_last: usize,
    /// Evaluate on the validation split every this many updates; 0: never.
    pub eval_steps: usize,
    /// Stop after this many evaluations without a lower validation loss; 0: never.
    pub early_stopping_patience: usize,
    /// Stop after this many consecutive updates with a non-finite loss or gradient.
    pub max_bad_steps: usize,
    /// Keep only each decoder layer's input in the forward pass and recompute
    /// the layer in the backward pass (transformers' name): less memory, about
    /// one more forward pass of time, identical gradients. Not with LoRA
    /// dropout.
    pub gradient_checkpointing: bool,
    /// What checkpointing keeps of each layer (Megatron-LM's name): `"full"`,
    /// the layer's input only; `"selective"`, also its projections' outputs,
    /// so the backward pass recomputes the attention core, norms and
    /// elementwise ops but no projection (most of the extra time goes, for
    /// 2·F + 2·C + 2·K·D values per token and layer). Needs
    /// `gradient_checkpointing`. On every backend the command line offers
    /// (the CPU kernels' own node; burn's ops elsewhere, CUDA and wgpu).
    pub recompute_granularity: recompute::Granularity,
    /// Weight and activation dtype: `"f32"`, or `"bf16"` for mixed precision
    /// on accelerators (bf16 weights and matmuls; f32 master weights and
    /// AdamW moments, RMSNorm statistics, softmax, log-softmax and losses).
    /// The command line applies bf16 on CUDA only; other backends train in f32.
    pub dtype: TrainDtype,
}

/// [`LoopConfig::dtype`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainDtype {
    #[default]
    F32,
    Bf16,
}

impl TrainDtype {
    pub fn dtype(self) -> DType {
        match self {
            TrainDtype::F32 => DType::F32,
            TrainDtype::Bf16 => DType::BF16,
        }
    }
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            grad_accum: 1,
            epochs: 3,
            max_steps: 0,
            max_grad_norm: 1.0,
            seed: 42,
            save_steps: 500,
            keep_last: 2,
            eval_steps: 0,
            early_stopping_patience: 0,
            max_bad_steps: 5,
            gradient_checkpointing: false,
            recompute_granularity: recompute::Granularity::Full,
            dtype: TrainDtype::F32,
        }
    }
}

impl LoopConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(TrainError::config("train.batch_size", "must be at least 1"));
        }
        if self.grad_accum == 0 {
            return Err(TrainError::config("train.grad_accum", "must be at least 1"));
        }
        if self.max_steps == 0 && self.epochs == 0 {
            return Err(TrainError::config(
                "train.epochs",
                "0 epochs and max_steps 0: nothing to train",
            ));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return Err(TrainError::config(
                "train.max_grad_norm",
                "must be non-negative (0 disables clipping)",
            ));
        }
        if self.recompute_granularity != recompute::Granularity::Full
            && !self.gradient_checkpointing
        {
            return Err(TrainError::config(
                "train.recompute_granularity",
                "applies to activation checkpointing: set train.gradient_checkpointing = true",
            ));
        }
        if self.early_stopping_patience > 0 && self.eval_steps == 0 {
            return Err(TrainError::config(
                "train.early_stopping_patience",
                "needs evaluations: set train.eval_steps",
            ));
        }
        Ok(())
    }

    /// Turn on activation checkpointing in the backbone a run trains when
    /// `gradient_checkpointing` asks for it; why it cannot, if it cannot.
    pub fn checkpointing<B: AutodiffBackend>(
        &self,
        backbone: &mut LlamaModel<B>,
    ) -> std::result::Result<(), ConfigIssue> {
        if !self.gradient_checkpointing {
            return Ok(());
        }
        recompute::turn_on(backbone, self.recompute_granularity).map_err(|why| ConfigIssue {
            field: "train.gradient_checkpointing",
            message: why,
        })
    }

    /// Whether a checkpoint is due after update `step` (counted from 1).
    pub fn save_due(&self, step: usize) -> bool {
        self.save_steps > 0 && step.is_multiple_of(self.save_steps)
    }

    /// Whether an evaluation is due after update `step` (counted from 1).
    pub fn eval_due(&self, step: usize) -> bool {
        self.eval_steps > 0 && step.is_multiple_of(self.eval_steps)
    }

    /// Whether `evals_without_improvement` evaluations without a lower
    /// validation loss exhaust the early-stopping patience.
    pub fn patience_exhausted(&self, evals_without_improvement: usize) -> bool {
        self.early_stopping_patience > 0
            && evals_without_improvement >= self.early_stopping_patience
    }

    /// Updates per epoch for `micro_batches` micro-batches per epoch: the
    /// last update of an epoch may accumulate fewer micro-batches.
    pub fn steps_per_epoch(&self, micro_batches: usize) -> usize {
        micro_batches.div_ceil(self.grad_accum)
    }

    /// Total updates of the run.
    pub fn total_steps(&self, micro_batches: usize) -> usize {
        if self.max_steps > 0 {
            self.max_steps
        } else {
            self.epochs * self.steps_per_epoch(micro_batches)
        }
    }
}

/// A setting that cannot work: the dotted field and why. Each trainer turns
/// it into its own `Config` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub field: &'static str,
    pub message: String,
}

/// The paths and data/optimizer settings every trainer's config has, checked
/// the same way by each (see [`RunSettings::check`]).
#[derive(Debug, Clone, Copy)]
pub struct RunSettings<'a> {
    /// Model directories by field, in the order to check: `model` first.
    pub model_dirs: &'a [(&'static str, Option<&'a Path>)],
    pub output_dir: &'a Path,
    pub train_file: &'a Path,
    pub validation_file: Option<&'a Path>,
    pub validation_split: f64,
    pub max_len: usize,
    /// `data.max_prompt_len`, for trainers that cap the prompt separately.
    pub max_prompt_len: Option<usize>,
    pub learning_rate: f64,
    pub eval_steps: usize,
}

impl RunSettings<'_> {
    /// Check every setting that can be checked without reading data or
    /// weights; paths must exist. The first issue found, in field order.
    pub fn check(&self) -> std::result::Result<(), ConfigIssue> {
        let issue = |field: &'static str, message: String| Err(ConfigIssue { field, message });
        for &(field, dir) in self.model_dirs {
            let Some(dir) = dir else { continue };
            if dir.as_os_str().is_empty() {
                return issue(field, "required: a Hugging Face model directory".into());
            }
            if !dir.join("config.json").is_file() {
                return issue(field, format!("{} has no config.json", dir.display()));
            }
        }
        if self.output_dir.as_os_str().is_empty() {
            return issue("output_dir", "required: the run directory".into());
        }
        if self.train_file.as_os_str().is_empty() {
            return issue("data.train_file", "required: a JSONL file".into());
        }
        if let Some(why) = not_a_file(self.train_file) {
            return issue("data.train_file", why);
        }
        if let Some(v) = self.validation_file {
            if let Some(why) = not_a_file(v) {
                return issue("data.validation_file", why);
            }
            if self.validation_split > 0.0 {
                return issue(
                    "data.validation_split",
                    "set either validation_file or validation_split, not both".into(),
                );
            }
        }
        if !(0.0..1.0).contains(&self.validation_split) {
            return issue(
                "data.validation_split",
                format!("{} is not in [0, 1)", self.validation_split),
            );
        }
        if self.max_len < 2 {
            return issue("data.max_len", "must be at least 2".into());
        }
        if let Some(max_prompt_len) = self.max_prompt_len
            && max_prompt_len >= self.max_len
        {
            return issue(
                "data.max_prompt_len",
                format!(
                    "{max_prompt_len} leaves no room for a completion within data.max_len {}",
                    self.max_len
                ),
            );
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return issue(
                "learning_rate",
                format!("{} is not a non-negative number", self.learning_rate),
            );
        }
        if self.eval_steps > 0 && self.validation_file.is_none() && self.validation_split == 0.0 {
            return issue(
                "train.eval_steps",
                "evaluation needs data.validation_file or data.validation_split".into(),
            );
        }
        Ok(())
    }
}

/// Why `path` cannot be read as a data file, if it cannot: it does not
/// exist, or it is a directory.
fn not_a_file(path: &Path) -> Option<String> {
    if path.is_dir() {
        Some(format!("{} is a directory, not a file", path.display()))
    } else if !path.is_file() {
        Some(format!("{} does not exist", path.display()))
    } else {
        None
    }
}

/// A validation set that was asked for (`data.validation_file`, or a
/// `data.validation_split` above 0) must hold something: evaluating on
/// nothing would report a loss of 0 (issue 12.6). `validation` and
/// `examples` count what the set and the whole data ended with.
pub fn check_validation_set(
    validation_file: Option<&Path>,
    validation_split: f64,
    validation: usize,
    examples: usize,
) -> std::result::Result<(), ConfigIssue> {
    if validation > 0 {
        return Ok(());
    }
    match validation_file {
        Some(path) => Err(ConfigIssue {
            field: "data.validation_file",
            message: format!("{} holds no usable example", path.display()),
        }),
        None if validation_split > 0.0 => Err(ConfigIssue {
            field: "data.validation_split",
            message: format!(
                "{validation_split} selects none of the {examples} examples; raise it, give data.validation_file, or set it to 0 (no evaluation)"
            ),
        }),
        None => Ok(()),
    }
}

/// Storage dtype of a trainer's `final/model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalDtype {
    F32,
    Bf16,
}

impl From<FinalDtype> for alignkit_model::SaveDtype {
    fn from(d: FinalDtype) -> Self {
        match d {
            FinalDtype::F32 => alignkit_model::SaveDtype::F32,
            FinalDtype::Bf16 => alignkit_model::SaveDtype::Bf16,
        }
    }
}

/// Why a run config could not be read, in one line naming the file, line or
/// key at fault. Each trainer's error wraps it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not this config (an unknown key, a wrong type), at
    /// `line:column` of `path` (0:0 when the error has no position).
    #[error("{path}:{line}:{column}: {message}")]
    File {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// An override that cannot be set at `field` (see [`set_key`]).
    #[error("config: `{field}`: {message}")]
    Key { field: String, message: String },
    /// The file with its overrides applied is not this config; `origin` is
    /// the file, or `<flags>` without one.
    #[error("{origin} with command-line overrides: {message}")]
    Override { origin: String, message: String },
}

/// How error messages name a config's source: its path, or `<flags>` when
/// every setting came from the command line.
pub fn config_origin(path: Option<&Path>) -> PathBuf {
    path.map_or_else(|| PathBuf::from("<flags>"), Path::to_path_buf)
}

/// Read a TOML run config from `path` (none: every default), then apply
/// `overrides` (`key=value`, as given by `--set` or the CLI's flags; see
/// [`set_key`]). Unknown keys are errors.
pub fn load_config<T: DeserializeOwned>(
    path: Option<&Path>,
    overrides: &[(String, String)],
) -> std::result::Result<T, LoadError> {
    let (text, origin) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| LoadError::Io {
                path: p.to_path_buf(),
                source,
            })?,
            config_origin(path),
        ),
        None => (String::new(), config_origin(None)),
    };
    let file_error = |e: toml::de::Error| {
        let (line, column, message) = toml_error_position(&text, &e);
        LoadError::File {
            path: origin.clone(),
            line,
            column,
            message,
        }
    };
    if overrides.is_empty() {
        return toml::from_str(&text).map_err(file_error);
    }
    let file: toml::Table = toml::from_str(&text).map_err(file_error)?;
    let set = |table: &mut toml::Table, k: &String, v: &String| {
        set_key(table, k, v).map_err(|message| LoadError::Key {
            field: k.clone(),
            message,
        })
    };
    let mut table = file.clone();
    for (k, v) in overrides {
        set(&mut table, k, v)?;
    }
    let parse = |t: &toml::Table| toml::Value::Table(t.clone()).try_into::<T>();
    let one_line = |e: toml::de::Error| e.message().trim().replace('\n', " ");
    let err = match parse(&table) {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    // Name the culprit (the error itself names no key): the file, with its
    // line, or else the one override without which the config reads.
    if parse(&file).is_err() {
        toml::from_str::<T>(&text).map_err(file_error)?;
    }
    for skip in 0..overrides.len() {
        let mut without = file.clone();
        for (i, (k, v)) in overrides.iter().enumerate() {
            if i != skip {
                set(&mut without, k, v)?;
            }
        }
        if parse(&without).is_ok() {
            return Err(LoadError::Key {
                field: overrides[skip].0.clone(),
                message: one_line(err),
            });
        }
    }
    Err(LoadError::Override {
        origin: origin.display().to_string(),
        message: one_line(err),
    })
}

/// Where a TOML parse error is in `text`: 1-based line and column (0, 0 when
/// the error has no span) and its message on one line.
pub fn toml_error_position(text: &str, err: &toml::de::Error) -> (usize, usize, String) {
    let (line, column) = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            (line, column)
        }
        None => (0, 0),
    };
    (line, column, err.message().trim().replace('\n', " "))
}

/// Set `key` (dotted: `train.batch_size`) to `raw`, parsed as a TOML value
/// (`4`, `2e-4`, `true`, `"all-linear"`, `["q_proj", "v_proj"]`), or taken as a
/// string when it does not parse as one. The error is the message for `key`.
pub fn set_key(table: &mut toml::Table, key: &str, raw: &str) -> Result<(), String> {
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "empty key".to_string())?;
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Run {
        train: LoopConfig,
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn a_bad_override_names_its_key() {
        let message = |path: Option<&Path>, sets: &[(&str, &str)]| {
            let sets: Vec<(String, String)> = sets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            load_config::<Run>(path, &sets).unwrap_err().to_string()
        };
        assert_eq!(
            message(
                None,
                &[
                    ("name", "x"),
                    ("train.batch_size", "abc"),
                    ("train.seed", "3")
                ]
            ),
            "config: `train.batch_size`: invalid type: string \"abc\", expected usize"
        );
        assert!(
            message(None, &[("train.batch_sise", "4")])
                .starts_with("config: `train.batch_sise`: unknown field `batch_sise`"),
        );
        // A bad value in the file keeps its line, whatever the flags.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(&file, "name = \"a\"\n[train]\nseed = \"x\"\n").unwrap();
        let text = message(Some(&file), &[("train.batch_size", "4")]);
        assert!(
            text.starts_with(&format!("{}:3:8: ", file.display())),
            "{text}"
        );
    }

    #[test]
    fn recompute_granularity_parses_and_needs_checkpointing() {
        let parse = |sets: &[(&str, &str)]| {
            let sets: Vec<(String, String)> = sets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            load_config::<Run>(None, &sets)
        };
        let run = parse(&[
            ("train.gradient_checkpointing", "true"),
            ("train.recompute_granularity", "selective"),
        ])
        .unwrap();
        assert_eq!(
            run.train.recompute_granularity,
            recompute::Granularity::Selective
        );
        assert!(run.train.validate().is_ok());
        let alone = parse(&[("train.recompute_granularity", "selective")]).unwrap();
        assert_eq!(
            alone.train.validate().unwrap_err().to_string(),
            "config: `train.recompute_granularity`: applies to activation checkpointing: \
             set train.gradient_checkpointing = true"
        );
        let text = parse(&[("train.recompute_granularity", "some")])
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with("config: `train.recompute_granularity`: unknown variant `some`"),
            "{text}"
        );
    }

    #[test]
    fn a_requested_validation_set_must_not_be_empty() {
        let file = Path::new("val.jsonl");
        assert_eq!(check_validation_set(None, 0.0, 0, 8), Ok(()));
        assert_eq!(check_validation_set(None, 0.2, 1, 8), Ok(()));
        assert_eq!(check_validation_set(Some(file), 0.0, 3, 11), Ok(()));
        let issue = check_validation_set(None, 0.01, 0, 8).unwrap_err();
        assert_eq!(issue.field, "data.validation_split");
        assert!(
            issue
                .message
                .starts_with("0.01 selects none of the 8 examples")
        );
        let issue = check_validation_set(Some(file), 0.0, 0, 8).unwrap_err();
        assert_eq!(issue.field, "data.validation_file");
        assert_eq!(issue.message, "val.jsonl holds no usable example");
    }

    #[test]
    fn run_settings_report_the_first_bad_field_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let train = dir.path().join("train.jsonl");
        std::fs::write(&train, "").unwrap();
        let missing = dir.path().join("nowhere");
        let ok = RunSettings {
            model_dirs: &[("model", Some(&model)), ("ref_model", None)],
            output_dir: dir.path(),
            train_file: &train,
            validation_file: None,
            validation_split: 0.0,
            max_len: 8,
            max_prompt_len: Some(4),
            learning_rate: 1e-3,
            eval_steps: 0,
        };
        assert_eq!(ok.check(), Ok(()));

        let both_models = [
            ("model", Some(model.as_path())),
            ("ref_model", Some(&missing)),
        ];
        let err = RunSettings {
            model_dirs: &both_models,
            output_dir: Path::new(""),
            ..ok
        }
        .check()
        .unwrap_err();
        assert_eq!(err.field, "ref_model");
        assert!(err.message.ends_with("has no config.json"), "{err:?}");

        let err = RunSettings {
            max_prompt_len: Some(8),
            learning_rate: f64::NAN,
            ..ok
        }
        .check()
        .unwrap_err();
        assert_eq!(
            (err.field, err.message.as_str()),
            (
                "data.max_prompt_len",
                "8 leaves no room for a completion within data.max_len 8"
            )
        );

        let err = RunSettings {
            eval_steps: 10,
            ..ok
        }
        .check()
        .unwrap_err();
        assert_eq!(err.field, "train.eval_steps");
    }
}
