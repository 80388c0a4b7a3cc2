//! `alignkit data validate`: read a whole file, tokenize every record the way
//! training will, and report what would break or quietly degrade a run.
//!
//! Errors (the file is not usable as is): malformed lines, schema violations,
//! records the chat template or the token boundary check rejects, preference
//! pairs whose chosen and rejected are the same tokens (the rule training
//! applies: `PreferenceExample::check_distinct`).
//! Warnings (counted, the first few listed): duplicates, empty fields,
//! missing EOS, truncation, examples longer than the model's context,
//! examples with nothing to train on.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::encode::{Encoder, Truncation};
use crate::error::{DataError, Location, Result};
use crate::jsonl::{AnyRecords, JsonlReader};
use crate::schema::{AnyRecord, DataKind, FieldMap, SftRecord, Turns};

/// What to validate and how much to list.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// `None`: detected from the first record.
    pub kind: Option<DataKind>,
    pub fields: FieldMap,
    /// How many errors and examples per warning to keep for display.
    pub max_listed: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            kind: None,
            fields: FieldMap::default(),
            max_listed: 10,
        }
    }
}

/// A log2-bucketed length histogram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Histogram {
    /// `buckets[0]` counts 0; `buckets[k]` counts `[2^(k-1), 2^k)`.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
}

impl Histogram {
    pub fn add(&mut self, n: usize) {
        let n = n as u64;
        let b = (u64::BITS - n.leading_zeros()) as usize;
        if self.buckets.len() <= b {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += 1;
        self.min = if self.count == 0 { n } else { self.min.min(n) };
        self.max = self.max.max(n);
        self.count += 1;
        self.sum += n;
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    fn bucket_label(b: usize) -> String {
        match b {
            0 => "0".to_owned(),
            1 => "1".to_owned(),
            b => format!("{}-{}", 1u64 << (b - 1), (1u64 << b) - 1),
        }
    }
}

/// A warning kind of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finding {
    Duplicate,
    EmptyField,
    MissingEos,
    EosDropped,
    PromptTruncated,
    CompletionTruncated,
    OverContext,
    NothingToTrain,
}

impl Finding {
    pub fn describe(self) -> &'static str {
        match self {
            Finding::Duplicate => "duplicate records",
            Finding::EmptyField => "empty fields",
            Finding::MissingEos => "trained turns without an end-of-turn/EOS token",
            Finding::EosDropped => "EOS cut off by max_len",
            Finding::PromptTruncated => "prompts truncated (max_prompt_len/max_len)",
            Finding::CompletionTruncated => "completions truncated (max_len)",
            Finding::OverContext => "longer than the model's context",
            Finding::NothingToTrain => "no trained tokens",
        }
    }
}

/// How often a warning occurred, with the first occurrences.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FindingLog {
    pub count: usize,
    pub examples: Vec<String>,
}

/// The result of validating one file.
#[derive(Debug)]
pub struct ValidationReport {
    pub path: PathBuf,
    pub kind: Option<DataKind>,
    /// Non-blank lines read.
    pub records: usize,
    /// Records that parsed and tokenized.
    pub ok: usize,
    pub error_count: usize,
    /// The first `max_listed` errors.
    pub errors: Vec<DataError>,
    /// Record forms seen (`messages`, `prompt/completion (text)`, ...).
    pub forms: BTreeMap<&'static str, usize>,
    /// Token-length histograms: `prompt`, `completion` (SFT, KTO), `chosen`,
    /// `rejected` (preferences), `total`.
    pub lengths: Vec<(&'static str, Histogram)>,
    pub findings: BTreeMap<Finding, FindingLog>,
    /// `max_position_embeddings` of the model, if known.
    pub context_length: Option<usize>,
    max_listed: usize,
}

impl ValidationReport {
    pub fn has_errors(&self) -> bool {
        self.error_count > 0
    }

    pub fn warning_count(&self) -> usize {
        self.findings.values().map(|f| f.count).sum()
    }

    pub fn finding(&self, f: Finding) -> usize {
        self.findings.get(&f).map_or(0, |l| l.count)
    }

    pub fn histogram(&self, name: &str) -> Option<&Histogram> {
        self.lengths
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, h)| h)
    }

    fn error(&mut self, e: DataError) {
        self.error_count += 1;
        if self.errors.len() < self.max_listed {
            self.errors.push(e);
        }
    }

    fn warn(&mut self, f: Finding, at: &Location, detail: impl FnOnce() -> String) {
        let log = self.findings.entry(f).or_default();
        log.count += 1;
        if log.examples.len() < self.max_listed {
            let d = detail();
            log.examples.push(if d.is_empty() {
                at.to_string()
            } else {
                format!("{at}: {d}")
            });
        }
    }

    fn length(&mut self, name: &'static str, n: usize) {
        match self.lengths.iter_mut().find(|(k, _)| *k == name) {
            Some((_, h)) => h.add(n),
            None => {
                let mut h = Histogram::default();
                h.add(n);
                self.lengths.push((name, h));
            }
        }
    }

    fn truncation(&mut self, t: &Truncation, at: &Location, what: &str) {
        if t.prompt_dropped > 0 {
            self.warn(Finding::PromptTruncated, at, || {
                format!("{what}: {} prompt tokens dropped", t.prompt_dropped)
            });
        }
        if t.completion_dropped > 0 {
            self.warn(Finding::CompletionTruncated, at, || {
                format!("{what}: {} completion tokens dropped", t.completion_dropped)
            });
        }
        if t.eos_dropped {
            self.warn(Finding::EosDropped, at, || what.to_owned());
        }
        if let Some(ctx) = self.context_length
            && t.original_len > ctx
        {
            self.warn(Finding::OverContext, at, || {
                format!("{what}: {} tokens > {ctx}", t.original_len)
            });
        }
    }
}

/// Validate `path` with `encoder` (the model's tokenizer and template).
pub fn validate(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    opts: &ValidateOptions,
) -> Result<ValidationReport> {
    validate_with_progress(path, encoder, opts, |_| {})
}

/// Like [`validate`], calling `progress(records_read)` every 1000 records.
pub fn validate_with_progress(
    path: impl AsRef<Path>,
    encoder: &Encoder,
    opts: &ValidateOptions,
    mut progress: impl FnMut(usize),
) -> Result<ValidationReport> {
    let path = path.as_ref();
    let mut records = AnyRecords::new(JsonlReader::open(path)?, opts.kind, &opts.fields);
    let mut report = ValidationReport {
        path: path.to_owned(),
        kind: opts.kind,
        records: 0,
        ok: 0,
        error_count: 0,
        errors: Vec::new(),
        forms: BTreeMap::new(),
        lengths: Vec::new(),
        findings: BTreeMap::new(),
        context_length: encoder.tokenizer().context_length(),
        max_listed: opts.max_listed,
    };
    let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
    for item in records.by_ref() {
        report.records += 1;
        if report.records.is_multiple_of(1000) {
            progress(report.records);
        }
        let rec = match item {
            Ok(r) => r,
            Err(e) => {
                // An error about the whole file (empty, a JSON array) is not a record.
                if matches!(e, DataError::NotJsonLines { .. }) {
                    report.records -= 1;
                }
                report.error(e);
                continue;
            }
        };
        let at = rec.at.clone();
        report
            .forms
            .entry(form(&rec.value))
            .and_modify(|n| *n += 1)
            .or_insert(1);
        if let Some(first) = seen.get(&rec.digest) {
            let first = *first;
            report.warn(Finding::Duplicate, &at, || format!("same as line {first}"));
        } else {
            seen.insert(rec.digest, at.line);
        }
        for f in rec.value.empty_fields() {
            report.warn(Finding::EmptyField, &at, || f.clone());
        }
        match check(&mut report, encoder, &rec.value, &at) {
            Ok(()) => report.ok += 1,
            Err(e) => report.error(e.at(&at)),
        }
    }
    report.kind = records.kind().or(report.kind);
    progress(report.records);
    Ok(report)
}

fn form(r: &AnyRecord) -> &'static str {
    let msgs = |t: &Turns| t.is_messages();
    match r {
        AnyRecord::Sft(SftRecord::Text(_)) => "text",
        AnyRecord::Sft(SftRecord::Messages(_)) => "messages",
        AnyRecord::Sft(SftRecord::PromptCompletion { prompt, .. }) if msgs(prompt) => {
            "prompt/completion (messages)"
        }
        AnyRecord::Sft(SftRecord::PromptCompletion { .. }) => "prompt/completion (text)",
        AnyRecord::Preference(p) if p.implicit_prompt => "implicit prompt",
        AnyRecord::Preference(p) if msgs(&p.prompt) => "prompt/chosen/rejected (messages)",
        AnyRecord::Preference(_) => "prompt/chosen/rejected (text)",
        AnyRecord::Prompt(p) if msgs(&p.prompt) => "prompt (messages)",
        AnyRecord::Prompt(_) => "prompt (text)",
        AnyRecord::Kto(k) if msgs(&k.prompt) => "prompt/completion/label (messages)",
        AnyRecord::Kto(_) => "prompt/completion/label (text)",
    }
}

fn check(
    report: &mut ValidationReport,
    enc: &Encoder,
    rec: &AnyRecord,
    at: &Location,
) -> Result<()> {
    match rec {
        AnyRecord::Sft(r) => {
            let ex = enc.sft(r)?;
            report.length("prompt", ex.prompt_len);
            report.length("completion", ex.tokens.len() - ex.prompt_len);
            report.length("total", ex.truncation.original_len);
            report.truncation(&ex.truncation, at, "sequence");
            if !ex.has_eos && !ex.truncation.eos_dropped {
                report.warn(Finding::MissingEos, at, String::new);
            }
            if ex.tokens.trained() == 0 {
                report.warn(Finding::NothingToTrain, at, String::new);
            }
        }
        AnyRecord::Preference(p) => {
            let ex = enc.preference(p)?;
            report.length("prompt", ex.prompt_ids.len());
            report.length("chosen", ex.chosen_ids.len());
            report.length("rejected", ex.rejected_ids.len());
            report.length(
                "total",
                ex.chosen_truncation
                    .original_len
                    .max(ex.rejected_truncation.original_len),
            );
            report.truncation(&ex.chosen_truncation, at, "chosen");
            report.truncation(&ex.rejected_truncation, at, "rejected");
            for (name, has, t) in [
                ("chosen", ex.chosen_has_eos, &ex.chosen_truncation),
                ("rejected", ex.rejected_has_eos, &ex.rejected_truncation),
            ] {
                if !has && !t.eos_dropped {
                    report.warn(Finding::MissingEos, at, || name.to_owned());
                }
            }
            if ex.chosen_ids.is_empty() || ex.rejected_ids.is_empty() {
                report.warn(Finding::NothingToTrain, at, String::new);
            }
            // An error, as in training (see `PreferenceExample::check_distinct`).
            ex.check_distinct()?;
        }
        AnyRecord::Prompt(p) => {
            let ex = enc.prompt(p)?;
            report.length("prompt", ex.prompt_ids.len());
            report.truncation(&ex.truncation, at, "prompt");
        }
        AnyRecord::Kto(k) => {
            let ex = enc.kto(k)?;
            report.length("prompt", ex.prompt_ids.len());
            report.length("completion", ex.completion_ids.len());
            report.length("total", ex.truncation.original_len);
            report.truncation(&ex.truncation, at, "sequence");
            if !ex.has_eos && !ex.truncation.eos_dropped {
                report.warn(Finding::MissingEos, at, String::new);
            }
            if ex.completion_ids.is_empty() {
                report.warn(Finding::NothingToTrain, at, String::new);
            }
        }
    }
    Ok(())
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self
            .kind
            .map_or("unknown kind".to_owned(), |k| k.to_string());
        writeln!(
            f,
            "{}: {} ({kind}), {} ok, {}, {}",
            self.path.display(),
            plural(self.records, "record"),
            self.ok,
            plural(self.error_count, "error"),
            plural(self.warning_count(), "warning"),
        )?;
        if !self.forms.is_empty() {
            let forms: Vec<String> = self
                .forms
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            writeln!(f, "  forms: {}", forms.join(", "))?;
        }
        match self.context_length {
            Some(c) => writeln!(f, "  model context: {c} tokens")?,
            None => writeln!(
                f,
                "  model context: unknown (no max_position_embeddings in config.json)"
            )?,
        }
        if self.error_count > 0 {
            writeln!(f, "\nerrors ({}):", self.error_count)?;
            for e in &self.errors {
                writeln!(f, "  {e}")?;
            }
            if self.error_count > self.errors.len() {
                writeln!(f, "  ... and {} more", self.error_count - self.errors.len())?;
            }
        }
        if !self.lengths.is_empty() {
            writeln!(f, "\nlengths in tokens:")?;
            writeln!(
                f,
                "  {:<11} {:>8} {:>7} {:>9} {:>7}",
                "", "count", "min", "mean", "max"
            )?;
            for (name, h) in &self.lengths {
                writeln!(
                    f,
                    "  {name:<11} {:>8} {:>7} {:>9.1} {:>7}",
                    h.count,
                    h.min,
                    h.mean(),
                    h.max
                )?;
            }
            for (name, h) in &self.lengths {
                if *name == "total" {
                    continue;
                }
                writeln!(f, "\n  {name} histogram:")?;
                let peak = h.buckets.iter().copied().max().unwrap_or(0).max(1);
                let first = h.buckets.iter().position(|&c| c > 0).unwrap_or(0);
                for (b, &c) in h.buckets.iter().enumerate().skip(first) {
                    let bar = "#".repeat(((c * 40).div_ceil(peak)) as usize);
                    writeln!(f, "  {:>11} {c:>8} {bar}", Histogram::bucket_label(b))?;
                }
            }
        }
        if !self.findings.is_empty() {
            writeln!(f, "\nwarnings:")?;
            for (finding, log) in &self.findings {
                writeln!(f, "  {}: {}", finding.describe(), log.count)?;
                for e in &log.examples {
                    writeln!(f, "    {e}")?;
                }
                if log.count > log.examples.len() {
                    writeln!(f, "    ... and {} more", log.count - log.examples.len())?;
                }
            }
        }
        Ok(())
    }
}
