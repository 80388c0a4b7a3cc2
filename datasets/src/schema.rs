//! JSON Lines record schemas, TRL-compatible.
//!
//! A text field (`prompt`, `completion`, `chosen`, `rejected`) is either a plain
//! string or a list of chat messages; [`Turns`] holds both forms.

use serde::{Deserialize, Serialize};

/// A chat role. Unknown roles are rejected at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One chat message, as in `{"role": "user", "content": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A prompt or response: plain text or a list of messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Turns {
    Text(String),
    Messages(Vec<Message>),
}
