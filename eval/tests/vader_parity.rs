//! `Sentiment::score` against the reference VADER, Python vaderSentiment 3.3.2, on the
//! committed fixture written by `scripts/fixtures_vader.py` (issue 33, item 7).

use std::path::Path;

use alignkit_eval::Sentiment;

/// The tolerance the reward promises: the reference reports compound to 4 decimals.
const TOLERANCE: f64 = 1e-4;
/// Against the reference's unrounded compound: the same rules in the same order give the
/// same floating-point sums, so a rule that moves a score by less than the rounding shows.
const UNROUNDED_TOLERANCE: f64 = 1e-9;

struct Case {
    text: String,
    /// As `polarity_scores` returns it: rounded to 4 decimals.
    compound: f64,
    /// The same score before that rounding.
    compound_unrounded: f64,
}

fn cases() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vader.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let row: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
            let number = |key: &str| {
                row[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{}:{}: no number `{key}`", path.display(), i + 1))
            };
            Case {
                text: row["text"].as_str().unwrap().to_string(),
                compound: number("compound"),
                compound_unrounded: number("compound_unrounded"),
            }
        })
        .collect()
}

#[test]
fn compound_matches_vader_sentiment_3_3_2() {
    let cases = cases();
    assert!(cases.len() >= 200, "only {} fixture texts", cases.len());
    let vader = Sentiment::new();
    let mut failures = Vec::new();
    for case in &cases {
        let ours = vader.score(&case.text);
        if (ours - case.compound).abs() > TOLERANCE
            || (ours - case.compound_unrounded).abs() > UNROUNDED_TOLERANCE
        {
            failures.push(format!(
                "ours {ours:.6}  reference {:.4} ({:.6})  {:?}",
                case.compound, case.compound_unrounded, case.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} texts differ from vaderSentiment 3.3.2 (by more than {TOLERANCE}, or \
         {UNROUNDED_TOLERANCE} from its unrounded compound):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
