//! Rule judges: deterministic checks of a response's form.

use serde::{Deserialize, Serialize};

/// A checkable property of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// Exactly one sentence: non-empty, one line, ending in `.`, `!` or `?`,
    /// with no sentence end before that.
    OneSentence,
    /// A JSON object holding (at least) these keys, and nothing but it.
    JsonKeys(Vec<String>),
    /// The response contains a match of this regular expression (`regex`
    /// crate syntax; anchor with `^…$` to match the whole response).
    Regex(String),
    /// The trimmed response equals the named field of the prompt record (a
    /// string, trimmed; a number or boolean as its JSON text), e.g. `answer`.
    ExactMatch(String),
}

impl Rule {
    pub fn check(&self, response: &str) -> bool {
        match self {
            Rule::OneSentence => one_sentence(response),
            Rule::JsonKeys(keys) => json_keys(response, keys),
            // Without the record or a compiled pattern these cannot pass; use
            // `compile` and `CompiledRule::judge`, which report why.
            Rule::Regex(pattern) => regex::Regex::new(pattern).is_ok_and(|r| r.is_match(response)),
            Rule::ExactMatch(_) => false,
        }
    }

    /// The rule ready to judge many responses: a regular expression is
    /// compiled once (an invalid one is an error here, before any judging).
    pub fn compile(&self) -> Result<CompiledRule, RuleError> {
        let regex = match self {
            Rule::Regex(pattern) => {
                Some(regex::Regex::new(pattern).map_err(|e| RuleError::Pattern {
                    pattern: pattern.clone(),
                    message: e.to_string().replace('\n', " "),
                })?)
            }
            _ => None,
        };
        Ok(CompiledRule {
            rule: self.clone(),
            regex,
        })
    }

    /// The name a rule is reported under (its config key).
    pub fn name(&self) -> &'static str {
        match self {
            Rule::OneSentence => "one_sentence",
            Rule::JsonKeys(_) => "json_keys",
            Rule::Regex(_) => "regex",
            Rule::ExactMatch(_) => "exact_match",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Rule::OneSentence => "answers in exactly one sentence".into(),
            Rule::JsonKeys(keys) => {
                format!("answers with a JSON object with keys {}", keys.join(", "))
            }
            Rule::Regex(pattern) => format!("matches the regular expression {pattern}"),
            Rule::ExactMatch(field) => format!("equals the prompt's `{field}`"),
        }
    }
}

/// Why a rule could not judge a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid regular expression `{pattern}`: {message}")]
    Pattern { pattern: String, message: String },
    /// [`Rule::ExactMatch`] on a record without the field.
    #[error("the prompt record has no field `{0}` to compare with")]
    MissingField(String),
    #[error("the prompt record's `{0}` is not a string, number or boolean")]
    FieldType(String),
}

/// A [`Rule`] with its regular expression compiled.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    rule: Rule,
    regex: Option<regex::Regex>,
}

impl CompiledRule {
    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Whether `response` passes; `record` holds the prompt record's fields
    /// (needed by [`Rule::ExactMatch`]).
    pub fn judge(
        &self,
        response: &str,
        record: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, RuleError> {
        match (&self.rule, &self.regex) {
            (Rule::Regex(_), Some(re)) => Ok(re.is_match(response)),
            (Rule::ExactMatch(field), _) => {
                let want = match record.get(field) {
                    None => return Err(RuleError::MissingField(field.clone())),
                    Some(serde_json::Value::String(s)) => s.trim().to_string(),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        v.to_string()
                    }
                    Some(_) => return Err(RuleError::FieldType(field.clone())),
                };
                Ok(response.trim() == want)
            }
            (rule, _) => Ok(rule.check(response)),
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
            assert!(Rule::OneSentence.check(ok), "{ok}");
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
            assert!(!Rule::OneSentence.check(bad), "{bad:?}");
        }
    }

    #[test]
    fn json_keys_requires_an_object_with_the_keys() {
        let rule = Rule::JsonKeys(vec!["answer".into(), "confidence".into()]);
        assert!(rule.check(r#"{"answer": "Paris", "confidence": 0.9}"#));
        assert!(!rule.check(r#"{"answer": "Paris"}"#));
        assert!(!rule.check(r#"Sure: {"answer": "Paris", "confidence": 1}"#));
        assert!(!rule.check(r#"["answer", "confidence"]"#));
    }

    #[test]
    fn regex_searches_the_response() {
        let record = serde_json::Map::new();
        let rule = Rule::Regex("^yes|ok$".into()).compile().unwrap();
        assert!(rule.judge("yes, indeed", &record).unwrap());
        assert!(rule.judge("it is ok", &record).unwrap());
        assert!(!rule.judge("no", &record).unwrap());
        let err = Rule::Regex("(unclosed".into()).compile().unwrap_err();
        assert!(matches!(err, RuleError::Pattern { .. }), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn exact_match_compares_with_a_field_of_the_record() {
        let record: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"answer": " Paris ", "n": 42, "list": [1]}"#).unwrap();
        let city = Rule::ExactMatch("answer".into()).compile().unwrap();
        assert!(city.judge("Paris\n", &record).unwrap());
        assert!(!city.judge("paris", &record).unwrap());
        let n = Rule::ExactMatch("n".into()).compile().unwrap();
        assert!(n.judge(" 42", &record).unwrap());
        assert_eq!(
            Rule::ExactMatch("missing".into())
                .compile()
                .unwrap()
                .judge("x", &record),
            Err(RuleError::MissingField("missing".into()))
        );
        assert_eq!(
            Rule::ExactMatch("list".into())
                .compile()
                .unwrap()
                .judge("[1]", &record),
            Err(RuleError::FieldType("list".into()))
        );
        // Without the record the rule cannot pass.
        assert!(!Rule::ExactMatch("answer".into()).check("Paris"));
    }
}
