//! What can go wrong in evaluation, each with the file or setting it concerns.

use std::path::PathBuf;

use crate::rule::RuleError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Model(#[from] alignkit_model::ModelError),
    #[error("{0}")]
    Input(String),
}

impl EvalError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
