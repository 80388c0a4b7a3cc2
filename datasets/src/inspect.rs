//! `alignkit data inspect`: one record as the model will see it — the rendered
//! text, every token, and whether it is trained on.

use std::fmt;
use std::path::Path;

use crate::encode::{Encoder, PlainText, Sequence, Truncation};
use crate::error::{DataError, Location, Result};
use crate::jsonl::{AnyRecords, JsonlReader};
use crate::schema::{AnyRecord, DataKind, FieldMap, Turns};

/// One token of an inspected sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectToken {
    pub id: u32,
    /// The token's text (decoded on its own).
    pub text: String,
    pub trained: bool,
    pub special: bool,
}

/// One sequence of a record (an SFT example has one; a preference pair has
/// `chosen` and `rejected`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectSection {
    pub title: &'static str,
    /// The token ids decoded back to text, special tokens included.
    pub text: String,
    pub tokens: Vec<InspectToken>,
    pub truncation: Truncation,
}

impl InspectSection {
    pub fn trained(&self) -> usize {
        self.tokens.iter().filter(|t| t.trained).count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub at: Location,
    pub kind: DataKind,
    /// Where the completion ends, for records with one (preferences, KTO).
    pub rule: Option<&'static str>,
    pub sections: Vec<InspectSection>,
}

/// Inspect record number `index` (0-based, counting non-blank lines) of `path`.
pub fn inspect(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    kind: Option<DataKind>,
    fields: &FieldMap,
    index: usize,
) -> Result<Inspection> {
    let path = path.as_ref();
    let mut records = AnyRecords::new(JsonlReader::open(path)?, kind, fields);
    let mut seen = 0;
    let rec = loop {
        match records.next() {
            None => {
                return Err(DataError::config(format!(
                    "{}: no record {index} (the file has {seen})",
                    path.display()
                )));
            }
            Some(r) if seen == index => break r?,
            Some(Err(e)) if matches!(e, DataError::NotJsonLines { .. }) => {
                return Err(e);
            }
            Some(_) => seen += 1,
        }
    };
    let at = rec.at.clone();
    let sections = sections(encoder, &rec.value).map_err(|e| e.at(&at))?;
    let rule = completion_rule(encoder, &rec.value);
    Ok(Inspection {
        at,
        kind: rec.value.kind(),
        rule,
        sections,
    })
}

/// Where a record's completion ends: `None` for records without one.
fn completion_rule(encoder: &Encoder, record: &AnyRecord) -> Option<&'static str> {
    let completion = match record {
        AnyRecord::Preference(p) => &p.chosen,
        AnyRecord::Kto(k) => &k.completion,
        AnyRecord::Sft(_) | AnyRecord::Prompt(_) => return None,
    };
    let config = encoder.config();
    let chat = matches!(completion, Turns::Messages(_)) || config.plain_text == PlainText::Chat;
    Some(if chat {
        config.completion_end.rule()
    } else {
        "completion = the response's tokens, then EOS (string data, as TRL)"
    })
}

/// The sections of one record.
pub fn sections(encoder: &Encoder, record: &AnyRecord) -> Result<Vec<InspectSection>> {
    let section = |title, seq: &Sequence, truncation| -> Result<InspectSection> {
        let tok = encoder.tokenizer();
        Ok(InspectSection {
            title,
            text: tok.decode(&seq.input_ids, false)?,
            tokens: seq
                .input_ids
                .iter()
                .zip(&seq.loss_mask)
                .map(|(&id, &trained)| InspectToken {
                    id,
                    text: tok.token_text(id),
                    trained,
                    special: tok.is_special(id),
                })
                .collect(),
            truncation,
        })
    };
    Ok(match record {
        AnyRecord::Sft(r) => {
            let ex = encoder.sft(r)?;
            vec![section("sequence", &ex.tokens, ex.truncation)?]
        }
        AnyRecord::Preference(p) => {
            let ex = encoder.preference(p)?;
            vec![
                section("chosen", &ex.chosen(), ex.chosen_truncation)?,
                section("rejected", &ex.rejected(), ex.rejected_truncation)?,
            ]
        }
        AnyRecord::Prompt(p) => {
            let ex = encoder.prompt(p)?;
            vec![section("prompt", &ex.sequence(), ex.truncation)?]
        }
        AnyRecord::Kto(k) => {
            let ex = encoder.kto(k)?;
            let title = if ex.label { "desirable" } else { "undesirable" };
            vec![section(title, &ex.sequence(), ex.truncation)?]
        }
    })
}

/// Plain rendering (for pipes): the text, then one token per line with `+`
/// marking trained tokens.
impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.at, self.kind)?;
        if let Some(rule) = self.rule {
            writeln!(f, "{rule}")?;
        }
        for s in &self.sections {
            writeln!(
                f,
                "\n== {}: {} tokens, {} trained ==",
                s.title,
                s.tokens.len(),
                s.trained()
            )?;
            if s.truncation.any() {
                writeln!(
                    f,
                    "truncated from {} tokens: {} prompt, {} completion tokens dropped{}",
                    s.truncation.original_len,
                    s.truncation.prompt_dropped,
                    s.truncation.completion_dropped,
                    if s.truncation.eos_dropped {
                        ", EOS dropped"
                    } else {
                        ""
                    }
                )?;
            }
            writeln!(f, "{}", s.text)?;
            writeln!(f, "-- tokens (+ = trained) --")?;
            for (i, t) in s.tokens.iter().enumerate() {
                writeln!(
                    f,
                    "{i:>6} {:>8} {} {:?}",
                    t.id,
                    if t.trained { '+' } else { ' ' },
                    t.text
                )?;
            }
        }
        Ok(())
    }
}
