//! JSON Lines record schemas, TRL-compatible.
//!
//! A text field (`prompt`, `completion`, `chosen`, `rejected`) is either a plain
//! string or a list of chat messages; [`Turns`] holds both forms.
//!
//! | kind | accepted records |
//! |---|---|
//! | SFT | `{"text"}`, `{"prompt","completion"}`, `{"messages"}` |
//! | preferences | `{"prompt","chosen","rejected"}`; `{"chosen","rejected"}` with an implicit (shared) prompt |
//! | prompts | `{"prompt"}` |
//! | KTO | `{"prompt","completion","label"}` |
//!
//! Records are parsed by hand from `serde_json::Value` rather than through a
//! derived `Deserialize`, so that every error names the field
//! (`messages[2].role: unknown role "human"`) instead of serde's
//! "data did not match any variant of untagged enum".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{DataError, Location, Result};

/// A chat role. Unknown roles are rejected at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// One chat message, as in `{"role": "user", "content": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A prompt or response: plain text or a list of messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Turns {
    Text(String),
    Messages(Vec<Message>),
}

impl Turns {
    pub fn is_messages(&self) -> bool {
        matches!(self, Turns::Messages(_))
    }

    /// True when there is no content at all (empty string, or every message
    /// content empty or whitespace).
    pub fn is_blank(&self) -> bool {
        match self {
            Turns::Text(t) => t.trim().is_empty(),
            Turns::Messages(m) => m.iter().all(|m| m.content.trim().is_empty()),
        }
    }
}

/// Which schema a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// Supervised fine-tuning: text, prompt/completion or messages.
    Sft,
    /// Preference pairs for reward models and DPO.
    Preferences,
    /// Prompts only (generation, PPO, evaluation).
    Prompts,
    /// Unpaired preference labels (KTO).
    Kto,
}

impl DataKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Sft => "sft",
            DataKind::Preferences => "prefs",
            DataKind::Prompts => "prompts",
            DataKind::Kto => "kto",
        }
    }

    /// The canonical field names a record of this kind may have.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            DataKind::Sft => &["text", "prompt", "completion", "messages"],
            DataKind::Preferences => &["prompt", "chosen", "rejected"],
            DataKind::Prompts => &["prompt"],
            DataKind::Kto => &["prompt", "completion", "label"],
        }
    }

    /// Guess the kind from one record's keys (after field remapping).
    pub fn detect(object: &Map<String, Value>) -> Option<DataKind> {
        let has = |k: &str| object.contains_key(k);
        if has("chosen") || has("rejected") {
            Some(DataKind::Preferences)
        } else if has("label") {
            Some(DataKind::Kto)
        } else if has("messages") || has("text") || has("completion") {
            Some(DataKind::Sft)
        } else if has("prompt") {
            Some(DataKind::Prompts)
        } else {
            None
        }
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DataKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sft" => Ok(DataKind::Sft),
            "prefs" | "preferences" | "dpo" => Ok(DataKind::Preferences),
            "prompts" => Ok(DataKind::Prompts),
            "kto" => Ok(DataKind::Kto),
            _ => Err(DataError::config(format!(
                "unknown data kind `{s}` (expected sft, prefs, prompts or kto)"
            ))),
        }
    }
}

/// Field renames: `chosen=better` reads the canonical field `chosen` from the
/// file's key `better`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap {
    pairs: Vec<(String, String)>,
}

const CANONICAL_FIELDS: &[&str] = &[
    "text",
    "prompt",
    "completion",
    "messages",
    "chosen",
    "rejected",
    "label",
];

impl FieldMap {
    /// Parse `canonical=source` specs, as given on the command line.
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<Self> {
        let mut map = FieldMap::default();
        for spec in specs {
            let spec = spec.as_ref();
            let Some((canonical, source)) = spec.split_once('=') else {
                return Err(DataError::config(format!(
                    "field mapping `{spec}`: expected CANONICAL=SOURCE, e.g. chosen=better"
                )));
            };
            map.insert(canonical.trim(), source.trim())?;
        }
        Ok(map)
    }

    /// Read canonical field `canonical` from key `source`.
    pub fn insert(&mut self, canonical: &str, source: &str) -> Result<()> {
        if !CANONICAL_FIELDS.contains(&canonical) {
            return Err(DataError::config(format!(
                "field mapping: `{canonical}` is not a field name (expected one of {})",
                CANONICAL_FIELDS.join(", ")
            )));
        }
        if source.is_empty() {
            return Err(DataError::config(format!(
                "field mapping: empty source key for `{canonical}`"
            )));
        }
        self.pairs.retain(|(c, _)| c != canonical);
        self.pairs.push((canonical.to_owned(), source.to_owned()));
        Ok(())
    }

    /// The key in the file for a canonical field.
    pub fn source<'a>(&'a self, canonical: &'a str) -> &'a str {
        self.pairs
            .iter()
            .find(|(c, _)| c == canonical)
            .map_or(canonical, |(_, s)| s.as_str())
    }

    /// Rename mapped keys of `object` to their canonical names. A key already
    /// named like the canonical field stays as an extra field under a
    /// `_original` suffix, so nothing is lost.
    pub fn apply(&self, object: &mut Map<String, Value>) {
        let mut moved = Vec::new();
        for (canonical, source) in &self.pairs {
            if let Some(v) = object.remove(source) {
                moved.push((canonical.clone(), v));
            }
        }
        for (canonical, v) in moved {
            if let Some(old) = object.remove(&canonical) {
                object.insert(format!("{canonical}_original"), old);
            }
            object.insert(canonical, v);
        }
    }
}

/// One SFT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftRecord {
    /// `{"text": ...}`: trained on every token.
    Text(String),
    /// `{"prompt": ..., "completion": ...}`: trained on the completion. Both
    /// strings or both message lists.
    PromptCompletion { prompt: Turns, completion: Turns },
    /// `{"messages": [...]}`: trained on every assistant turn.
    Messages(Vec<Message>),
}

/// A preference pair. With the implicit-prompt form (no `prompt` key), the
/// prompt is the shared prefix of `chosen` and `rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub prompt: Turns,
    pub chosen: Turns,
    pub rejected: Turns,
    /// The prompt was extracted from the shared prefix.
    pub implicit_prompt: bool,
}

/// A prompt for generation, PPO or evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRecord {
    pub prompt: Turns,
}

/// An unpaired, labelled completion (KTO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtoRecord {
    pub prompt: Turns,
    pub completion: Turns,
    /// True for a desirable completion.
    pub label: bool,
}

/// A record of any kind, for code that handles every kind (the validator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRecord {
    Sft(SftRecord),
    Preference(Preference),
    Prompt(PromptRecord),
    Kto(KtoRecord),
}

/// A parsed record with where it came from, its unknown fields and a digest
/// of its content (used for splits and duplicate detection).
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    pub at: Location,
    pub value: T,
    /// Fields not part of the schema, kept as they were.
    pub extra: Map<String, Value>,
    /// SHA-256 of the canonical JSON (sorted keys) of the schema fields.
    pub digest: [u8; 32],
}

/// A record schema: how to read one JSON object into `Self`.
pub trait Schema: Sized {
    const KIND: DataKind;
    /// Build from the schema fields (already renamed to canonical names).
    fn from_fields(fields: &Map<String, Value>, at: &Location) -> Result<Self>;
}

impl Schema for SftRecord {
    const KIND: DataKind = DataKind::Sft;
    fn from_fields(f: &Map<String, Value>, at: &Location) -> Result<Self> {
        let has = |k| f.contains_key(k);
        match (
            has("text"),
            has("messages"),
            has("prompt") || has("completion"),
        ) {
            (true, false, false) => Ok(SftRecord::Text(string_field(f, "text", at)?)),
            (false, true, false) => Ok(SftRecord::Messages(messages_field(f, "messages", at)?)),
            (false, false, true) => {
                let prompt = turns_field(f, "prompt", at)?;
                let completion = turns_field(f, "completion", at)?;
                same_form(&prompt, &completion, "prompt", "completion", at)?;
                starts_with_assistant(&completion, "completion", at)?;
                Ok(SftRecord::PromptCompletion { prompt, completion })
            }
            (false, false, false) => Err(DataError::record(
                at,
                None,
                "an SFT record needs `text`, `prompt` + `completion`, or `messages`",
            )),
            _ => Err(DataError::record(
                at,
                None,
                "ambiguous SFT record: use exactly one of `text`, `prompt` + `completion`, `messages`",
            )),
        }
    }
}

impl Schema for Preference {
    const KIND: DataKind = DataKind::Preferences;
    fn from_fields(f: &Map<String, Value>, at: &Location) -> Result<Self> {
        let chosen = turns_field(f, "chosen", at)?;
        let rejected = turns_field(f, "rejected", at)?;
        same_form(&chosen, &rejected, "chosen", "rejected", at)?;
        if f.contains_key("prompt") {
            let prompt = turns_field(f, "prompt", at)?;
            same_form(&prompt, &chosen, "prompt", "chosen", at)?;
            starts_with_assistant(&chosen, "chosen", at)?;
            starts_with_assistant(&rejected, "rejected", at)?;
            return Ok(Preference {
                prompt,
                chosen,
                rejected,
                implicit_prompt: false,
            });
        }
        split_implicit_prompt(chosen, rejected, at)
    }
}

impl Schema for PromptRecord {
    const KIND: DataKind = DataKind::Prompts;
    fn from_fields(f: &Map<String, Value>, at: &Location) -> Result<Self> {
        Ok(PromptRecord {
            prompt: turns_field(f, "prompt", at)?,
        })
    }
}

impl Schema for KtoRecord {
    const KIND: DataKind = DataKind::Kto;
    fn from_fields(f: &Map<String, Value>, at: &Location) -> Result<Self> {
        let prompt = turns_field(f, "prompt", at)?;
        let completion = turns_field(f, "completion", at)?;
        same_form(&prompt, &completion, "prompt", "completion", at)?;
        starts_with_assistant(&completion, "completion", at)?;
        let label = match f.get("label") {
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(DataError::record(
                    at,
                    Some("label"),
                    format!("expected true or false, got {}", type_name(other)),
                ));
            }
            None => return Err(DataError::record(at, Some("label"), "missing field")),
        };
        Ok(KtoRecord {
            prompt,
            completion,
            label,
        })
    }
}

impl AnyRecord {
    pub fn kind(&self) -> DataKind {
        match self {
            AnyRecord::Sft(_) => DataKind::Sft,
            AnyRecord::Preference(_) => DataKind::Preferences,
            AnyRecord::Prompt(_) => DataKind::Prompts,
            AnyRecord::Kto(_) => DataKind::Kto,
        }
    }

    pub fn from_fields(kind: DataKind, f: &Map<String, Value>, at: &Location) -> Result<Self> {
        Ok(match kind {
            DataKind::Sft => AnyRecord::Sft(SftRecord::from_fields(f, at)?),
            DataKind::Preferences => AnyRecord::Preference(Preference::from_fields(f, at)?),
            DataKind::Prompts => AnyRecord::Prompt(PromptRecord::from_fields(f, at)?),
            DataKind::Kto => AnyRecord::Kto(KtoRecord::from_fields(f, at)?),
        })
    }

    /// Names of fields whose content is empty or whitespace only
    /// (`messages[3].content`, `chosen`, ...).
    pub fn empty_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut turns = |name: &str, t: &Turns| match t {
            Turns::Text(s) if s.trim().is_empty() => out.push(name.to_owned()),
            Turns::Text(_) => {}
            Turns::Messages(ms) => {
                for (i, m) in ms.iter().enumerate() {
                    if m.content.trim().is_empty() {
                        out.push(format!("{name}[{i}].content"));
                    }
                }
            }
        };
        match self {
            AnyRecord::Sft(SftRecord::Text(t)) => turns("text", &Turns::Text(t.clone())),
            AnyRecord::Sft(SftRecord::PromptCompletion { prompt, completion }) => {
                turns("prompt", prompt);
                turns("completion", completion);
            }
            AnyRecord::Sft(SftRecord::Messages(m)) => {
                turns("messages", &Turns::Messages(m.clone()))
            }
            AnyRecord::Preference(p) => {
                turns("prompt", &p.prompt);
                turns("chosen", &p.chosen);
                turns("rejected", &p.rejected);
            }
            AnyRecord::Prompt(p) => turns("prompt", &p.prompt),
            AnyRecord::Kto(k) => {
                turns("prompt", &k.prompt);
                turns("completion", &k.completion);
            }
        }
        out
    }
}

/// Split one JSON object into (schema fields under canonical names, extras).
pub(crate) fn split_fields(
    kind: DataKind,
    mut object: Map<String, Value>,
    fields: &FieldMap,
) -> (Map<String, Value>, Map<String, Value>) {
    fields.apply(&mut object);
    let mut known = Map::new();
    for name in kind.fields() {
        if let Some(v) = object.remove(*name) {
            known.insert((*name).to_owned(), v);
        }
    }
    (known, object)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn string_field(f: &Map<String, Value>, name: &str, at: &Location) -> Result<String> {
    match f.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(DataError::record(
            at,
            Some(name),
            format!("expected a string, got {}", type_name(other)),
        )),
        None => Err(DataError::record(at, Some(name), "missing field")),
    }
}

fn turns_field(f: &Map<String, Value>, name: &str, at: &Location) -> Result<Turns> {
    match f.get(name) {
        Some(Value::String(s)) => Ok(Turns::Text(s.clone())),
        Some(Value::Array(_)) => Ok(Turns::Messages(messages_field(f, name, at)?)),
        Some(other) => Err(DataError::record(
            at,
            Some(name),
            format!(
                "expected a string or a list of messages, got {}",
                type_name(other)
            ),
        )),
        None => Err(DataError::record(at, Some(name), "missing field")),
    }
}

fn messages_field(f: &Map<String, Value>, name: &str, at: &Location) -> Result<Vec<Message>> {
    let items = match f.get(name) {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(DataError::record(
                at,
                Some(name),
                format!("expected a list of messages, got {}", type_name(other)),
            ));
        }
        None => return Err(DataError::record(at, Some(name), "missing field")),
    };
    if items.is_empty() {
        return Err(DataError::record(at, Some(name), "empty list of messages"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_message(item, &format!("{name}[{i}]"), at))
        .collect()
}

fn parse_message(item: &Value, path: &str, at: &Location) -> Result<Message> {
    let Value::Object(m) = item else {
        return Err(DataError::record(
            at,
            Some(path),
            format!(
                "expected a message {{\"role\", \"content\"}}, got {}",
                type_name(item)
            ),
        ));
    };
    if m.contains_key("from") && m.contains_key("value") && !m.contains_key("role") {
        return Err(DataError::record(
            at,
            Some(path),
            "ShareGPT-style message (`from`/`value`); convert to `role`/`content`",
        ));
    }
    if let Some(key) = m.keys().find(|k| *k != "role" && *k != "content") {
        return Err(DataError::record(
            at,
            Some(path),
            format!("unknown key `{key}` (a message has only `role` and `content`)"),
        ));
    }
    let role = match m.get("role") {
        Some(Value::String(r)) => Role::parse(r).ok_or_else(|| {
            DataError::record(
                at,
                Some(&format!("{path}.role")),
                format!("unknown role {r:?} (expected system, user, assistant or tool)"),
            )
        })?,
        Some(other) => {
            return Err(DataError::record(
                at,
                Some(&format!("{path}.role")),
                format!("expected a string, got {}", type_name(other)),
            ));
        }
        None => {
            return Err(DataError::record(
                at,
                Some(&format!("{path}.role")),
                "missing field",
            ));
        }
    };
    let content = match m.get("content") {
        Some(Value::String(c)) => c.clone(),
        Some(Value::Array(_)) => {
            return Err(DataError::record(
                at,
                Some(&format!("{path}.content")),
                "multimodal content parts are not supported; expected a string",
            ));
        }
        Some(other) => {
            return Err(DataError::record(
                at,
                Some(&format!("{path}.content")),
                format!("expected a string, got {}", type_name(other)),
            ));
        }
        None => {
            return Err(DataError::record(
                at,
                Some(&format!("{path}.content")),
                "missing field",
            ));
        }
    };
    Ok(Message { role, content })
}

fn same_form(a: &Turns, b: &Turns, an: &str, bn: &str, at: &Location) -> Result<()> {
    if a.is_messages() != b.is_messages() {
        return Err(DataError::record(
            at,
            None,
            format!("`{an}` and `{bn}` must both be strings or both be message lists"),
        ));
    }
    Ok(())
}

fn starts_with_assistant(t: &Turns, name: &str, at: &Location) -> Result<()> {
    if let Turns::Messages(m) = t
        && m[0].role != Role::Assistant
    {
        return Err(DataError::record(
            at,
            Some(&format!("{name}[0].role")),
            format!(
                "a {name} must start with an assistant message, got {}",
                m[0].role.as_str()
            ),
        ));
    }
    Ok(())
}

/// TRL's `extract_prompt`: the prompt is the longest shared prefix.
fn split_implicit_prompt(chosen: Turns, rejected: Turns, at: &Location) -> Result<Preference> {
    match (chosen, rejected) {
        (Turns::Messages(c), Turns::Messages(r)) => {
            let k = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            if k == c.len() && k == r.len() {
                return Err(DataError::record(
                    at,
                    None,
                    "no `prompt` and `chosen` equals `rejected`: nothing to prefer",
                ));
            }
            if k == 0 {
                return Err(DataError::record(
                    at,
                    Some("prompt"),
                    "missing field, and `chosen`/`rejected` share no prefix to use as prompt",
                ));
            }
            if k == c.len() || k == r.len() {
                return Err(DataError::record(
                    at,
                    None,
                    "implicit prompt: one of `chosen`/`rejected` is a prefix of the other, leaving an empty response",
                ));
            }
            let prompt = c[..k].to_vec();
            let chosen = Turns::Messages(c[k..].to_vec());
            let rejected = Turns::Messages(r[k..].to_vec());
            starts_with_assistant(&chosen, "chosen", at)?;
            starts_with_assistant(&rejected, "rejected", at)?;
            Ok(Preference {
                prompt: Turns::Messages(prompt),
                chosen,
                rejected,
                implicit_prompt: true,
            })
        }
        (Turns::Text(c), Turns::Text(r)) => {
            let k: usize = c
                .char_indices()
                .zip(r.chars())
                .take_while(|((_, a), b)| a == b)
                .map(|((_, a), _)| a.len_utf8())
                .sum();
            if k == 0 {
                return Err(DataError::record(
                    at,
                    Some("prompt"),
                    "missing field, and `chosen`/`rejected` share no prefix to use as prompt",
                ));
            }
            if k == c.len() || k == r.len() {
                return Err(DataError::record(
                    at,
                    None,
                    "implicit prompt: one of `chosen`/`rejected` is a prefix of the other, leaving an empty response",
                ));
            }
            Ok(Preference {
                prompt: Turns::Text(c[..k].to_owned()),
                chosen: Turns::Text(c[k..].to_owned()),
                rejected: Turns::Text(r[k..].to_owned()),
                implicit_prompt: true,
            })
        }
        _ => Err(DataError::record(
            at,
            None,
            "`chosen` and `rejected` must both be strings or both be message lists",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> Location {
        Location::new("t.jsonl", 7)
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn parse<T: Schema>(v: Value) -> Result<T> {
        T::from_fields(&obj(v), &at())
    }

    #[test]
    fn sft_forms() {
        assert_eq!(
            parse::<SftRecord>(json!({"text": "hi"})).unwrap(),
            SftRecord::Text("hi".into())
        );
        let pc = parse::<SftRecord>(json!({"prompt": "a", "completion": "b"})).unwrap();
        assert!(matches!(pc, SftRecord::PromptCompletion { .. }));
        let m = parse::<SftRecord>(json!({"messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}))
        .unwrap();
        assert!(matches!(m, SftRecord::Messages(ref v) if v.len() == 2));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse::<SftRecord>(json!({"messages": [{"role": "human", "content": "q"}]}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.jsonl:7: field `messages[0].role`: unknown role \"human\" (expected system, user, assistant or tool)"
        );
        let e = parse::<SftRecord>(json!({"text": 3}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.jsonl:7: field `text`: expected a string, got a number"
        );
        let e = parse::<Preference>(json!({"prompt": "p", "chosen": "c"}))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.jsonl:7: field `rejected`: missing field");
        let e = parse::<SftRecord>(
            json!({"prompt": "p", "completion": [{"role": "assistant", "content": "x"}]}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("both be strings or both be message lists"),
            "{e}"
        );
        let e = parse::<SftRecord>(json!({"messages": [{"from": "human", "value": "x"}]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ShareGPT"), "{e}");
        let e = parse::<KtoRecord>(json!({"prompt": "p", "completion": "c", "label": "yes"}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.jsonl:7: field `label`: expected true or false, got a string"
        );
    }

    #[test]
    fn implicit_prompt_is_shared_prefix() {
        let p = parse::<Preference>(json!({
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
        }))
        .unwrap();
        assert!(p.implicit_prompt);
        assert_eq!(
            p.prompt,
            Turns::Messages(vec![Message::new(Role::User, "q")])
        );
        assert_eq!(
            p.chosen,
            Turns::Messages(vec![Message::new(Role::Assistant, "good")])
        );
        let p = parse::<Preference>(json!({"chosen": "Q: x A: yes", "rejected": "Q: x A: no"}))
            .unwrap();
        assert_eq!(p.prompt, Turns::Text("Q: x A: ".into()));
        assert_eq!(p.rejected, Turns::Text("no".into()));
        let same = json!({"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]});
        assert!(parse::<Preference>(same).is_err());
    }

    #[test]
    fn field_map_renames_and_keeps_extras() {
        let fm = FieldMap::parse(&["chosen=better", "rejected=worse"]).unwrap();
        let (known, extra) = split_fields(
            DataKind::Preferences,
            obj(json!({"prompt": "p", "better": "b", "worse": "w", "id": 3})),
            &fm,
        );
        assert_eq!(known.len(), 3);
        assert_eq!(known["chosen"], json!("b"));
        assert_eq!(extra["id"], json!(3));
        assert!(FieldMap::parse(&["nope=x"]).is_err());
        assert!(FieldMap::parse(&["chosen"]).is_err());
    }

    #[test]
    fn detect_kind() {
        assert_eq!(
            DataKind::detect(&obj(json!({"prompt": 1, "chosen": 2}))),
            Some(DataKind::Preferences)
        );
        assert_eq!(
            DataKind::detect(&obj(json!({"prompt": 1}))),
            Some(DataKind::Prompts)
        );
        assert_eq!(
            DataKind::detect(&obj(json!({"messages": 1}))),
            Some(DataKind::Sft)
        );
        assert_eq!(DataKind::detect(&obj(json!({"x": 1}))), None);
    }
}
