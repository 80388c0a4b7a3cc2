use std::path::PathBuf;

/// Everything that can go wrong loading, running or saving a model.
///
/// Each variant names the file and, where there is one, the tensor or field.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
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
    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{dir}: missing tensor `{name}` (shape {shape:?})")]
    MissingTensor {
        dir: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: unexpected tensor `{name}` (not part of a {model_type} model)")]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        model_type: String,
    },
    #[error("invalid input: {0}")]
    Input(String),
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
