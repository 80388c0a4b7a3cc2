use std::path::PathBuf;

use alignkit_datasets::{DataError, Location};
use alignkit_model::ModelError;
use alignkit_train::{LoadError, TrainError};

/// Everything alignkit-ppo can fail with; each message is one line naming the
/// file, line or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: `{field}`: {message}")]
    Config { field: String, message: String },
    /// A prompt that cannot be used.
    #[error("{at}: {message}")]
    Prompt { at: Location, message: String },
    /// A reward that cannot be computed for a completion of the prompt at `at`.
    #[error("{at}: reward `{reward}`: {message}")]
    Reward {
        at: Location,
        reward: String,
        message: String,
    },
    /// The run config could not be read.
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<alignkit_train::ConfigIssue> for RlError {
    fn from(i: alignkit_train::ConfigIssue) -> Self {
        Self::Config {
            field: i.field.into(),
            message: i.message,
        }
    }
}

pub type Result<T, E = RlError> = std::result::Result<T, E>;
