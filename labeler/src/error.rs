//! Errors of the labeler. Every message names the file, and the line where there is one.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A problem with one line of an input file, reported as `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl std::error::Error for LineError {}

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot write judgments to {}", path.display())]
    Unwritable { path: PathBuf, source: io::Error },

    /// Every line was malformed (or the file holds none); `problems` says why.
    #[error("{}: no usable items{}", path.display(), why_none(problems))]
    NoItems {
        path: PathBuf,
        problems: Vec<LineError>,
    },

    #[error("{} malformed line(s) and --strict is set:\n{}", .0.len(), join_lines(.0))]
    Strict(Vec<LineError>),

    #[error("{}", path.display())]
    Guidelines { path: PathBuf, source: io::Error },

    #[error("invalid option: {0}")]
    Option(String),

    #[error("terminal: {0}")]
    Terminal(io::Error),

    #[error("{}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// An error and its causes, `: `-separated, as the binary prints errors (anyhow's `{:#}`):
/// each message leaves its cause to [`std::error::Error::source`].
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn why_none(problems: &[LineError]) -> String {
    match problems {
        [] => " (the file holds no items)".into(),
        [one] => format!(" (1 malformed line: {one})"),
        [first, ..] => format!(" ({} malformed lines, first {first})", problems.len()),
    }
}

fn join_lines(errors: &[LineError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
