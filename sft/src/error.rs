use std::path::PathBuf;

use alignkit_datasets::DataError;
use alignkit_model::ModelError;
use alignkit_train::TrainError;

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

pub type Result<T, E = SftError> = std::result::Result<T, E>;
