//! Items to judge: candidates JSONL (`{"id","prompt","responses":[{"text","source"?}]}`) or
//! TRL preference JSONL (`{"prompt","chosen","rejected"}`) to re-judge existing pairs.
//!
//! A malformed line is reported as `FILE:LINE` and skipped; the caller decides whether a
//! problem is fatal (`--strict`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use alignkit_datasets::{Message, Role, Turns};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{LabelError, LineError};

/// The most responses one item may hold: one per number key.
pub const MAX_RESPONSES: usize = 9;

/// One model response. `source` (the model that wrote it) is hidden while judging unless
/// asked for, so that judgments stay blind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One prompt with 2..=9 responses to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub prompt: Turns,
    pub responses: Vec<Response>,
}

/// Items that loaded, and the lines that did not.
#[derive(Debug, Default)]
pub struct Loaded {
    pub items: Vec<Item>,
    pub problems: Vec<LineError>,
}

#[derive(Deserialize)]
struct CandidateLine {
    id: Value,
    prompt: Turns,
    responses: Vec<Response>,
}

#[derive(Deserialize)]
struct PreferenceLine {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    prompt: Option<Turns>,
    chosen: Turns,
    rejected: Turns,
}

/// Reads a candidates file.
pub fn load_candidates(path: &Path) -> Result<Loaded, LabelError> {
    load_lines(path, |line| {
        let c: CandidateLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let id = id_string(&c.id)?;
        check_prompt(&c.prompt)?;
        if !(2..=MAX_RESPONSES).contains(&c.responses.len()) {
            return Err(format!(
                "responses: expected 2..={MAX_RESPONSES} responses, found {}",
                c.responses.len()
            ));
        }
        Ok(Item {
            id,
            prompt: c.prompt,
            responses: c.responses,
        })
    })
}

/// Reads a TRL preference file as two-response items, so existing pairs can be re-judged.
/// The `chosen`/`rejected` labels survive as each response's hidden `source`.
pub fn load_prefs(path: &Path) -> Result<Loaded, LabelError> {
    load_lines(path, |line| {
        let p: PreferenceLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let (prompt, chosen, rejected) = split_preference(p.prompt, p.chosen, p.rejected)?;
        check_prompt(&prompt)?;
        let id = match &p.id {
            Some(v) => id_string(v)?,
            None => format!("pref-{:016x}", fnv1a(line.as_bytes())),
        };
        Ok(Item {
            id,
            prompt,
            responses: vec![
                Response {
                    text: chosen,
                    source: Some("chosen".into()),
                },
                Response {
                    text: rejected,
                    source: Some("rejected".into()),
                },
            ],
        })
    })
}

fn load_lines(
    path: &Path,
    parse: impl Fn(&str) -> Result<Item, String>,
) -> Result<Loaded, LabelError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded = Loaded::default();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let problem = |message: String| LineError {
            path: PathBuf::from(path),
            line: lineno,
            message,
        };
        match parse(line) {
            Ok(item) => {
                if let Some(first) = first_line_of.get(&item.id) {
                    loaded.problems.push(problem(format!(
                        "duplicate id {:?} (first at line {first})",
                        item.id
                    )));
                    continue;
                }
                first_line_of.insert(item.id.clone(), lineno);
                loaded.items.push(item);
            }
            Err(message) => loaded.problems.push(problem(message)),
        }
    }
    Ok(loaded)
}

fn id_string(id: &Value) -> Result<String, String> {
    let id = match id {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("id: expected a string or a number, found {other}")),
    };
    if id.is_empty() || id.chars().any(char::is_control) {
        return Err(format!("id: {id:?} is empty or holds control characters"));
    }
    Ok(id)
}

fn check_prompt(prompt: &Turns) -> Result<(), String> {
    match prompt {
        Turns::Messages(m) if m.is_empty() => Err("prompt: empty message list".into()),
        _ => Ok(()),
    }
}

/// Splits TRL's explicit or implicit prompt form into (prompt, chosen text, rejected text).
/// Implicit prompt: chosen and rejected are message lists whose shared prefix is the prompt.
fn split_preference(
    prompt: Option<Turns>,
    chosen: Turns,
    rejected: Turns,
) -> Result<(Turns, String, String), String> {
    if let Some(prompt) = prompt {
        return Ok((prompt, turns_text(&chosen), turns_text(&rejected)));
    }
    let (Turns::Messages(c), Turns::Messages(r)) = (&chosen, &rejected) else {
        return Err("prompt: missing, and chosen/rejected are not message lists".into());
    };
    let shared = c.iter().zip(r).take_while(|(a, b)| a == b).count();
    // The prompt must end before the last message of either side.
    let shared = shared
        .min(c.len().saturating_sub(1))
        .min(r.len().saturating_sub(1));
    if shared == 0 {
        return Err("prompt: missing, and chosen/rejected share no leading messages".into());
    }
    Ok((
        Turns::Messages(c[..shared].to_vec()),
        messages_text(&c[shared..]),
        messages_text(&r[shared..]),
    ))
}

fn turns_text(turns: &Turns) -> String {
    match turns {
        Turns::Text(t) => t.clone(),
        Turns::Messages(m) => messages_text(m),
    }
}

/// A single assistant turn reads as its content; anything longer keeps its role labels.
fn messages_text(messages: &[Message]) -> String {
    match messages {
        [one] if one.role == Role::Assistant => one.content.clone(),
        _ => messages
            .iter()
            .map(|m| format!("{}: {}", m.role.as_str(), m.content))
            .collect::<Vec<_>>()
            .join("\n\n"),
    }
}

/// FNV-1a, 64 bit: a stable hash (std's hasher may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    #[test]
    fn malformed_lines_are_reported_with_file_and_line_and_the_rest_loads() {
        let f = file(&[
            r#"{"id":"a","prompt":"hi","responses":[{"text":"x"},{"text":"y","source":"m1"}]}"#,
            r#"{"id":"b","prompt":"hi","responses":[{"text":"only one"}]}"#,
            "",
            r#"{"id":"c","prompt":"hi","responses":[{"text":"x"},{"text":"y"}"#,
            r#"{"id":"a","prompt":"again","responses":[{"text":"x"},{"text":"y"}]}"#,
            r#"{"id":7,"prompt":[{"role":"user","content":"q"}],"responses":[{"text":"x"},{"text":"y"},{"text":"z"}]}"#,
        ]);
        let loaded = load_candidates(f.path()).unwrap();
        let ids: Vec<_> = loaded.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "7"]);
        let lines: Vec<_> = loaded.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 4, 5]);
        let shown = loaded.problems[0].to_string();
        assert!(
            shown.starts_with(&format!("{}:2: responses", f.path().display())),
            "{shown}"
        );
        assert!(loaded.problems[2].message.contains("duplicate id"));
    }

    #[test]
    fn prefs_load_with_explicit_and_implicit_prompts() {
        let f = file(&[
            r#"{"prompt":"2+2?","chosen":"4","rejected":"5"}"#,
            r#"{"chosen":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}],"rejected":[{"role":"user","content":"hi"},{"role":"assistant","content":"go away"}]}"#,
            r#"{"chosen":"a","rejected":"b"}"#,
        ]);
        let loaded = load_prefs(f.path()).unwrap();
        assert_eq!(loaded.items.len(), 2);
        assert_eq!(loaded.problems.len(), 1);
        assert_eq!(loaded.problems[0].line, 3);
        let implicit = &loaded.items[1];
        assert_eq!(
            implicit.prompt,
            Turns::Messages(vec![Message::new(Role::User, "hi")])
        );
        assert_eq!(implicit.responses[0].text, "hello");
        assert_eq!(implicit.responses[1].text, "go away");
        assert_eq!(implicit.responses[0].source.as_deref(), Some("chosen"));
        assert!(loaded.items[0].id.starts_with("pref-"));
    }
}
