//! Judgments to TRL preference JSONL (`{"prompt","chosen","rejected"}`), ready for reward
//! model and DPO training.
//!
//! Corrections are applied first (each annotator's latest judgment not undone counts).
//! A ranking gives every strictly ordered pair; ties, "both bad" and skips give none;
//! flagged items are left out. With several annotators every annotator's pairs are written.

use std::io::{self, Write};

use alignkit_datasets::{Message, Role, Turns};
use serde::Serialize;

use crate::record::Ledger;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Effective judgments read.
    pub judgments: usize,
    /// Preference lines written.
    pub pairs: usize,
    /// Judgments left out because the item was flagged.
    pub flagged: usize,
    /// Judgments that gave no pair (tie, both bad, skip, all-tied ranking).
    pub no_preference: usize,
}

#[derive(Serialize)]
struct Preference<'a> {
    prompt: &'a Turns,
    chosen: Turns,
    rejected: Turns,
}

/// A response in the prompt's form: a string after a string prompt, an assistant message
/// after a conversation (TRL wants both sides in the same format).
fn completion(prompt: &Turns, text: &str) -> Turns {
    match prompt {
        Turns::Text(_) => Turns::Text(text.to_string()),
        Turns::Messages(_) => Turns::Messages(vec![Message::new(Role::Assistant, text)]),
    }
}

/// Writes one preference line per ordered pair.
pub fn export(ledger: &Ledger, out: &mut impl Write) -> io::Result<ExportSummary> {
    let mut summary = ExportSummary::default();
    for j in ledger.effective() {
        summary.judgments += 1;
        if j.flagged {
            summary.flagged += 1;
            continue;
        }
        let pairs = j.preferences();
        if pairs.is_empty() {
            summary.no_preference += 1;
        }
        for (better, worse) in pairs {
            let line = Preference {
                prompt: &j.prompt,
                chosen: completion(&j.prompt, &j.responses[better].text),
                rejected: completion(&j.prompt, &j.responses[worse].text),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            summary.pairs += 1;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::judgment;
    use crate::record::{Correction, Decision, Record};

    fn lines(ledger: &Ledger) -> (Vec<serde_json::Value>, ExportSummary) {
        let mut out = Vec::new();
        let summary = export(ledger, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        (
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            summary,
        )
    }

    #[test]
    fn rankings_expand_ties_drop_flags_are_excluded_and_corrections_apply() {
        let mut ranked = judgment("1", "r", "al", Decision::Ranking(vec![2, 1, 2]));
        ranked.shown = vec![2, 0, 1]; // response 0 best; 2 and 1 tie below it.
        let mut flagged = judgment("2", "f", "al", Decision::A);
        flagged.flagged = true;
        let tie = judgment("3", "t", "al", Decision::Tie);
        let undone = judgment("4", "u", "al", Decision::B);
        let mut chat = judgment("5", "c", "al", Decision::B);
        chat.prompt = Turns::Messages(vec![Message::new(Role::User, "hi")]);
        let mut records: Vec<Record> = [ranked, flagged, tie, undone, chat]
            .into_iter()
            .map(Record::Judgment)
            .collect();
        records.push(Record::Correction(Correction {
            rid: "6".into(),
            item: "u".into(),
            annotator: "al".into(),
            ts: String::new(),
            undoes: "4".into(),
        }));
        let (prefs, summary) = lines(&Ledger::from_records(records));
        assert_eq!(
            summary,
            ExportSummary {
                judgments: 4,
                pairs: 3,
                flagged: 1,
                no_preference: 1
            }
        );
        assert_eq!(prefs[0]["prompt"], "p");
        assert_eq!(prefs[0]["chosen"], "r0");
        assert_eq!(prefs[1]["chosen"], "r0");
        let mut rejected = [prefs[0]["rejected"].clone(), prefs[1]["rejected"].clone()];
        rejected.sort_by_key(|v| v.to_string());
        assert_eq!(rejected, ["r1", "r2"]);
        // Conversational prompt: chosen/rejected become assistant messages.
        assert_eq!(prefs[2]["chosen"][0]["role"], "assistant");
        assert_eq!(prefs[2]["chosen"][0]["content"], "r1");
        assert_eq!(prefs[2]["rejected"][0]["content"], "r0");
        for p in &prefs {
            let keys: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys.len(), 3, "exactly prompt, chosen, rejected: {keys:?}");
        }
    }
}
