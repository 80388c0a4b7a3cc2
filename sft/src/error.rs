use std::path::PathBuf;

use alignkit_datasets::DataError;
use alignkit_model::ModelError;
use alignkit_train::{LoadError, TrainError};

/// Everything `alignkit_sft::train` can fail with; each message is one line
/// naming the file, line or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    ConfigFile {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config: `{field}`: {message}")]
    Config { field: String, message: String },
    /// An override (`--set key=value` or a flag) names an unknown key or has
    /// the wrong type.
    #[error("{origin} with command-line overrides: {message}")]
    Override { origin: String, message: String },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<LoadError> for SftError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Io { path, source } => Self::Io { path, source },
            LoadError::File {
                path,
                line,
                column,
                message,
            } => Self::ConfigFile {
                path,
                line,
                column,
                message,
            },
            LoadError::Key { field, message } => Self::Config { field, message },
            LoadError::Override { origin, message } => Self::Override { origin, message },
        }
    }
}

impl From<alignkit_train::ConfigIssue> for SftError {
    fn from(i: alignkit_train::ConfigIssue) -> Self {
        Self::Config {
            field: i.field.into(),
            message: i.message,
        }
    }
}

pub type Result<T, E = SftError> = std::result::Result<T, E>;
