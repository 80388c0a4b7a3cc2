//! Loop settings every trainer shares (the `[train]` table of a run config).

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
        if self.early_stopping_patience > 0 && self.eval_steps == 0 {
            return Err(TrainError::config(
                "train.early_stopping_patience",
                "needs evaluations: set train.eval_steps",
            ));
        }
        Ok(())
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
