//! Rule judges: deterministic checks of a response's form or content.
//!
//! On the command line a rule is written `one-sentence`, `json-keys=a,b`,
//! `json-keys-from=FIELD`, `regex=PATTERN` or `exact=FIELD` (see
//! [`Rule::from_str`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A rule that cannot be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(
        "unknown rule `{0}` (expected one-sentence, json-keys=KEY[,KEY...], json-keys-from=FIELD, regex=PATTERN or exact=FIELD)"
    )]
    Unknown(String),
    #[error("rule `{rule}`: {message}")]
    Invalid { rule: String, message: String },
    /// `exact=FIELD` on a prompt record without that field (or not a string or number).
    #[error("field `{0}` missing or not a string or number (needed by rule exact={0})")]
    MissingField(String),
    /// `json-keys-from=FIELD` on a record whose field is not a list of key names.
    #[error(
        "field `{0}` missing or not a non-empty list of strings (needed by rule json-keys-from={0})"
    )]
    MissingKeys(String),
}

/// A compiled regular expression that compares, prints and serialises as its pattern.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern, RuleError> {
        regex::Regex::new(pattern)
            .map(Pattern)
            .map_err(|e| RuleError::Invalid {
                rule: format!("regex={pattern}"),
                // regex's syntax errors span several lines (pattern, caret,
                // message); the last one says what is wrong.
                message: e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string(),
            })
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A checkable property of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// Exactly one sentence: non-empty, one line, ending in `.`, `!` or `?`,
    /// with no sentence end before that.
    OneSentence,
    /// A JSON object holding (at least) these keys, and nothing but it.
    JsonKeys(Vec<String>),
    /// A JSON object holding the keys listed in this field of the prompt
    /// record (`{"prompt": ..., "keys": ["name", "age"]}`), and nothing but it.
    JsonKeysFrom(String),
    /// The response contains a match of the pattern (anchor it with `^...$`
    /// to match the whole response).
    Regex(Pattern),
    /// The response, trimmed, equals this field of the prompt record, trimmed
    /// (a reference answer stored beside the prompt).
    ExactMatch(String),
}

impl Rule {
    /// Whether `response` passes. `record` is the prompt's JSON object, read
    /// only by [`Rule::ExactMatch`].
    pub fn check(&self, response: &str, record: &Map<String, Value>) -> Result<bool, RuleError> {
        Ok(match self {
            Rule::OneSentence => one_sentence(response),
            Rule::JsonKeys(keys) => json_keys(response, keys),
            Rule::JsonKeysFrom(field) => json_keys(response, &Self::keys(field, record)?),
            Rule::Regex(p) => p.0.is_match(response),
            Rule::ExactMatch(field) => response.trim() == self.reference(field, record)?.trim(),
        })
    }

    /// The name a rule's reward is logged under (its config key).
    pub fn name(&self) -> &'static str {
        match self {
            Rule::OneSentence => "one_sentence",
            Rule::JsonKeys(_) | Rule::JsonKeysFrom(_) => "json_keys",
            Rule::Regex(_) => "regex",
            Rule::ExactMatch(_) => "exact_match",
        }
    }

    /// A check that needs no prompt record (every rule but `exact=` and
    /// `json-keys-from=`).
    pub fn check_response(&self, response: &str) -> Result<bool, RuleError> {
        self.check(response, &Map::new())
    }

    /// The error an `exact=FIELD` rule gives for `record`, if any: lets a caller
    /// refuse a prompts file before generating anything.
    pub fn check_record(&self, record: &Map<String, Value>) -> Result<(), RuleError> {
        match self {
            Rule::ExactMatch(field) => self.reference(field, record).map(|_| ()),
            Rule::JsonKeysFrom(field) => Self::keys(field, record).map(|_| ()),
            _ => Ok(()),
        }
    }

    fn keys(field: &str, record: &Map<String, Value>) -> Result<Vec<String>, RuleError> {
        let missing = || RuleError::MissingKeys(field.to_string());
        let list = record
            .get(field)
            .and_then(Value::as_array)
            .ok_or_else(missing)?;
        let keys: Option<Vec<String>> = list
            .iter()
            .map(|k| k.as_str().map(str::to_string))
            .collect();
        keys.filter(|k| !k.is_empty()).ok_or_else(missing)
    }

    fn reference(&self, field: &str, record: &Map<String, Value>) -> Result<String, RuleError> {
        match record.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(RuleError::MissingField(field.to_string())),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Rule::OneSentence => "answers in exactly one sentence".into(),
            Rule::JsonKeys(keys) => {
                format!("answers with a JSON object with keys {}", keys.join(", "))
            }
            Rule::Regex(p) => format!("matches /{}/", p.as_str()),
            Rule::ExactMatch(field) => format!("equals the prompt record's `{field}`"),
            Rule::JsonKeysFrom(field) => {
                format!("answers with a JSON object with the keys in the prompt record's `{field}`")
            }
        }
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    /// `one-sentence`, `json-keys=a,b`, `json-keys-from=FIELD`, `regex=PATTERN`
    /// or `exact=FIELD`.
    fn from_str(s: &str) -> Result<Rule, RuleError> {
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let invalid = |message: &str| RuleError::Invalid {
            rule: s.to_string(),
            message: message.to_string(),
        };
        match (name, arg) {
            ("one-sentence", None) => Ok(Rule::OneSentence),
            ("json-keys", Some(keys)) => {
                let keys: Vec<String> = keys.split(',').map(|k| k.trim().to_string()).collect();
                if keys.iter().any(String::is_empty) {
                    return Err(invalid("expected json-keys=KEY[,KEY...] with no empty key"));
                }
                Ok(Rule::JsonKeys(keys))
            }
            ("json-keys-from", Some(f)) if !f.trim().is_empty() => {
                Ok(Rule::JsonKeysFrom(f.trim().into()))
            }
            ("json-keys-from", _) => Err(invalid(
                "expected json-keys-from=FIELD naming a list field of the prompt record",
            )),
            ("regex", Some(p)) if !p.is_empty() => Ok(Rule::Regex(Pattern::new(p)?)),
            ("regex", _) => Err(invalid("expected regex=PATTERN with a non-empty pattern")),
            ("exact", Some(f)) if !f.trim().is_empty() => Ok(Rule::ExactMatch(f.trim().into())),
            ("exact", _) => Err(invalid(
                "expected exact=FIELD naming a field of the prompt record",
            )),
            ("one-sentence", Some(_)) => Err(invalid("one-sentence takes no argument")),
            ("json-keys", None) => Err(invalid("expected json-keys=KEY[,KEY...]")),
            _ => Err(RuleError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Rule {
    /// The command-line form, which [`Rule::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::OneSentence => write!(f, "one-sentence"),
            Rule::JsonKeys(keys) => write!(f, "json-keys={}", keys.join(",")),
            Rule::JsonKeysFrom(field) => write!(f, "json-keys-from={field}"),
            Rule::Regex(p) => write!(f, "regex={}", p.as_str()),
            Rule::ExactMatch(field) => write!(f, "exact={field}"),
        }
    }
}

fn one_sentence(response: &str) -> bool {
    let text = response.trim();
    if text.is_empty() || text.contains('\n') {
        return false;
    }
    let Some(last) = text.chars().last() else {
        return false;
    };
    if !matches!(last, '.' | '!' | '?') {
        return false;
    }
    // A sentence end is a terminator followed by whitespace; decimals such as
    // "3.14" and abbreviations without a following space do not count.
    let chars: Vec<char> = text.chars().collect();
    let inner_ends = chars
        .windows(2)
        .filter(|w| matches!(w[0], '.' | '!' | '?') && w[1].is_whitespace())
        .count();
    inner_ends == 0
}

fn json_keys(response: &str, keys: &[String]) -> bool {
    match serde_json::from_str::<serde_json::Value>(response.trim()) {
        Ok(serde_json::Value::Object(map)) => keys.iter().all(|k| map.contains_key(k)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sentence_accepts_single_sentences() {
        for ok in [
            "The capital of France is Paris.",
            "  A cow moos!  ",
            "Is it 3.14?",
        ] {
            assert!(Rule::OneSentence.check_response(ok).unwrap(), "{ok}");
        }
    }

    #[test]
    fn one_sentence_rejects_everything_else() {
        for bad in [
            "",
            "Paris",
            "The capital is Paris. It is large.",
            "Paris.\nIt is large.",
            "Paris! Definitely.",
            "Yes? No.",
        ] {
            assert!(!Rule::OneSentence.check_response(bad).unwrap(), "{bad:?}");
        }
    }

    #[test]
    fn json_keys_requires_an_object_with_the_keys() {
        let rule = Rule::JsonKeys(vec!["answer".into(), "confidence".into()]);
        assert!(
            rule.check_response(r#"{"answer": "Paris", "confidence": 0.9}"#)
                .unwrap()
        );
        assert!(!rule.check_response(r#"{"answer": "Paris"}"#).unwrap());
        assert!(
            !rule
                .check_response(r#"Sure: {"answer": "Paris", "confidence": 1}"#)
                .unwrap()
        );
        assert!(!rule.check_response(r#"["answer", "confidence"]"#).unwrap());
    }

    #[test]
    fn json_keys_from_reads_the_keys_of_each_record() {
        let rule: Rule = "json-keys-from=keys".parse().unwrap();
        assert_eq!(rule.to_string(), "json-keys-from=keys");
        let record = |v: Value| {
            let mut m = Map::new();
            m.insert("keys".into(), v);
            m
        };
        let two = record(serde_json::json!(["name", "age"]));
        assert!(rule.check(r#"{"name": "Rex", "age": 3}"#, &two).unwrap());
        assert!(!rule.check(r#"{"name": "Rex"}"#, &two).unwrap());
        assert!(
            !rule
                .check("```json\n{\"name\": 1, \"age\": 2}\n```", &two)
                .unwrap()
        );
        let one = record(serde_json::json!(["name"]));
        assert!(rule.check(r#"{"name": "Rex"}"#, &one).unwrap());
        for bad in [
            serde_json::json!([]),
            serde_json::json!("name"),
            serde_json::json!([1]),
        ] {
            let e = rule.check("{}", &record(bad)).unwrap_err().to_string();
            assert!(
                e.contains("`keys`") && e.contains("json-keys-from=keys"),
                "{e}"
            );
            assert!(rule.check_record(&record(serde_json::json!(3))).is_err());
        }
        assert!(rule.check("{}", &Map::new()).is_err());
        assert!("json-keys-from=".parse::<Rule>().is_err());
    }

    #[test]
    fn regex_and_exact_match() {
        let rule: Rule = "regex=^[0-9]+$".parse().unwrap();
        assert!(rule.check_response("42").unwrap());
        assert!(!rule.check_response("42 apples").unwrap());
        let contains: Rule = "regex=Paris".parse().unwrap();
        assert!(contains.check_response("It is Paris.").unwrap());

        let exact: Rule = "exact=answer".parse().unwrap();
        let record = |v: Value| {
            let mut m = Map::new();
            m.insert("answer".into(), v);
            m
        };
        assert!(exact.check(" 91 ", &record(Value::from(91))).unwrap());
        assert!(
            exact
                .check("Paris", &record(Value::from("Paris\n")))
                .unwrap()
        );
        assert!(!exact.check("91.", &record(Value::from(91))).unwrap());
        assert!(matches!(
            exact.check("91", &Map::new()),
            Err(RuleError::MissingField(f)) if f == "answer"
        ));
        assert!(exact.check_record(&Map::new()).is_err());
        assert!(Rule::OneSentence.check_record(&Map::new()).is_ok());
    }

    #[test]
    fn rules_parse_and_print_their_command_line_form() {
        for s in [
            "one-sentence",
            "json-keys=a,b",
            "regex=^x+$",
            "exact=answer",
        ] {
            let rule: Rule = s.parse().unwrap();
            assert_eq!(rule.to_string(), s);
        }
        assert_eq!(
            "json-keys=a, b".parse::<Rule>().unwrap(),
            Rule::JsonKeys(vec!["a".into(), "b".into()])
        );
        for bad in [
            "",
            "two-sentences",
            "json-keys",
            "json-keys=a,,b",
            "regex=",
            "regex=(",
            "exact=",
            "one-sentence=1",
        ] {
            let err = bad.parse::<Rule>().unwrap_err().to_string();
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        assert!(
            "regex=("
                .parse::<Rule>()
                .unwrap_err()
                .to_string()
                .contains("regex=(")
        );
    }
}
