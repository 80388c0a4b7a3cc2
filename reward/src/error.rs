use std::path::PathBuf;

/// Everything alignkit-reward can fail with; each message names the file, line
/// or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: `{field}`: {message}")]
    Config { field: String, message: String },
}

pub type Result<T, E = RewardError> = std::result::Result<T, E>;
