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
}

impl Rule {
    pub fn check(&self, response: &str) -> bool {
        match self {
            Rule::OneSentence => one_sentence(response),
            Rule::JsonKeys(keys) => json_keys(response, keys),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Rule::OneSentence => "answers in exactly one sentence".into(),
            Rule::JsonKeys(keys) => {
                format!("answers with a JSON object with keys {}", keys.join(", "))
            }
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
}
