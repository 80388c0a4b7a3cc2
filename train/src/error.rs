use std::path::PathBuf;

use alignkit_model::ModelError;

/// Everything the shared training plumbing can fail with. Each variant names
/// the file (and where there is one, the field or tensor) it is about.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value that cannot work, found before training starts.
    #[error("config: `{field}`: {message}")]
    Config { field: String, message: String },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// A checkpoint that cannot be resumed into the current run.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(
        "{dir}: no complete checkpoint to resume from (expected checkpoints/step-N/trainer_state.json)"
    )]
    NoCheckpoint { dir: PathBuf },
    #[error(
        "{dir}: already holds checkpoints; pass --resume to continue that run or choose another output_dir"
    )]
    RunExists { dir: PathBuf },
    /// The NaN/Inf guard gave up.
    #[error(
        "stopped at step {step}: {count} consecutive steps with a non-finite loss or gradient (last: {reason}); the last checkpoint holds the last good weights"
    )]
    NonFinite {
        step: usize,
        count: usize,
        reason: String,
    },
    /// An export's output directory that must not be replaced.
    #[error("{path}: {why}")]
    OutputInUse { path: PathBuf, why: String },
    /// The run directory is another process's, or an output is an input.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
