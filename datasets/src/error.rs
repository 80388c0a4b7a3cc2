//! One error type for the crate. Every error that comes from a data file names
//! the file and line (`FILE:LINE: ...`) and, where there is one, the field.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a record came from: `FILE:LINE` (lines count from 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
}

impl Location {
    pub fn new(path: impl Into<PathBuf>, line: usize) -> Self {
        Self {
            path: path.into(),
            line,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        /// Not a `#[source]`: the message already includes it, and error
        /// chains (`{:#}`) would print it twice.
        error: std::io::Error,
    },
    /// The file as a whole is not JSON Lines: it is empty, or it is one JSON
    /// array. Not about a record, so validation does not count it as one.
    #[error("{at}: {reason}")]
    NotJsonLines { at: Location, reason: &'static str },
    /// A line is not a valid record: malformed JSON, invalid UTF-8, a missing
    /// field, a wrong type, an unknown role.
    #[error("{at}: {}{reason}", field_prefix(field))]
    Record {
        at: Location,
        field: Option<String>,
        reason: String,
    },
    /// A record parsed but could not be turned into a training example
    /// (template error, prompt/completion boundary not in token space, ...).
    /// `at` is filled in by whoever knows where the record came from.
    #[error("{}{}{reason}", location_prefix(at), field_prefix(field))]
    Example {
        at: Option<Location>,
        field: Option<String>,
        reason: String,
    },
    /// A file of the model directory (tokenizer.json, tokenizer_config.json,
    /// config.json, ...) is missing or malformed.
    #[error("{}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    /// The chat template does not compile.
    #[error("chat template: {reason}")]
    Template { reason: String },
    /// A setting is invalid (a field mapping, split fractions, a row length).
    #[error("{reason}")]
    Config { reason: String },
}

fn field_prefix(field: &Option<String>) -> String {
    match field {
        Some(f) => format!("field `{f}`: "),
        None => String::new(),
    }
}

fn location_prefix(at: &Option<Location>) -> String {
    match at {
        Some(at) => format!("{at}: "),
        None => String::new(),
    }
}

impl DataError {
    pub(crate) fn record(at: &Location, field: Option<&str>, reason: impl Into<String>) -> Self {
        Self::Record {
            at: at.clone(),
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }

    pub(crate) fn example(field: Option<&str>, reason: impl Into<String>) -> Self {
        Self::Example {
            at: None,
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }

    pub(crate) fn model(path: &Path, reason: impl Into<String>) -> Self {
        Self::Model {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Self::Config {
            reason: reason.into(),
        }
    }

    /// Attach a location to an [`DataError::Example`] that has none yet.
    pub fn at(self, loc: &Location) -> Self {
        match self {
            Self::Example {
                at: None,
                field,
                reason,
            } => Self::Example {
                at: Some(loc.clone()),
                field,
                reason,
            },
            other => other,
        }
    }

    /// The location of the record this error is about, if any.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Record { at, .. } | Self::NotJsonLines { at, .. } => Some(at),
            Self::Example { at, .. } => at.as_ref(),
            _ => None,
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
