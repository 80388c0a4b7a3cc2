//! Judgment records and the append-only log that holds them.
//!
//! One JSON object per line, never rewritten. A judgment is appended, flushed and fsynced
//! before the screen moves on; undo appends a [`Correction`] that cancels an earlier judgment.
//! A torn last line (a write cut by a crash or power loss) is ignored with a warning.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use alignkit_datasets::Turns;
use serde::{Deserialize, Serialize};

use crate::candidates::Response;
use crate::error::{LabelError, LineError};

/// What the annotator does with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMode {
    /// Two responses: A better, B better, tie, both bad, or skip.
    Pairwise,
    /// All responses ranked best to worst, ties allowed.
    Rank,
}

/// A decision, in terms of shown positions (A is `shown[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    A,
    B,
    Tie,
    BothBad,
    Skip,
    /// `ranking[k]` is the rank (1 = best, ties share a rank) of the response shown at
    /// position `k`, which is `responses[shown[k]]`.
    Ranking(Vec<u32>),
}

impl Decision {
    /// The name used in statistics: `a`, `b`, `tie`, `both_bad`, `skip` or `ranking`.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::A => "a",
            Decision::B => "b",
            Decision::Tie => "tie",
            Decision::BothBad => "both_bad",
            Decision::Skip => "skip",
            Decision::Ranking(_) => "ranking",
        }
    }
}

/// One line of the judgments file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Judgment(Judgment),
    Correction(Correction),
}

/// A judgment of one item by one annotator. It carries the prompt and responses so that
/// export needs nothing but the judgments file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    /// Unique per annotator; corrections refer to it.
    pub rid: String,
    pub item: String,
    pub annotator: String,
    /// RFC 3339, UTC.
    pub ts: String,
    pub mode: JudgeMode,
    /// The shuffle seed the shown order was drawn with.
    pub seed: u64,
    /// `shown[k]` is the index into `responses` of the response shown at position `k`.
    pub shown: Vec<usize>,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rationale: String,
    /// The annotator marked the prompt itself as bad; export leaves the item out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
    /// Time from the item appearing to the decision.
    pub duration_ms: u64,
    /// The judgment of the same item this one replaces (a re-judgment), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    pub prompt: Turns,
    pub responses: Vec<Response>,
}

/// Undo: cancels the judgment `undoes` of the same annotator. The judgment before it (if the
/// item had been re-judged) becomes the effective one again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub rid: String,
    pub item: String,
    pub annotator: String,
    pub ts: String,
    pub undoes: String,
}

impl Record {
    pub fn rid(&self) -> &str {
        match self {
            Record::Judgment(j) => &j.rid,
            Record::Correction(c) => &c.rid,
        }
    }

    pub fn annotator(&self) -> &str {
        match self {
            Record::Judgment(j) => &j.annotator,
            Record::Correction(c) => &c.annotator,
        }
    }

    pub fn item(&self) -> &str {
        match self {
            Record::Judgment(j) => &j.item,
            Record::Correction(c) => &c.item,
        }
    }
}

impl Judgment {
    /// Checks that `shown` and the decision fit the responses.
    fn check(&self) -> Result<(), String> {
        let n = self.responses.len();
        let mut seen = vec![false; n];
        for &i in &self.shown {
            if i >= n || std::mem::replace(&mut seen[i], true) {
                return Err(format!(
                    "shown: bad or repeated index {i} for {n} responses"
                ));
            }
        }
        match (&self.mode, &self.decision) {
            (JudgeMode::Pairwise, Decision::Ranking(_)) => {
                Err("a ranking in a pairwise judgment".into())
            }
            (JudgeMode::Pairwise, _) if self.shown.len() != 2 => {
                Err("a pairwise judgment must show 2 responses".into())
            }
            (JudgeMode::Rank, Decision::Ranking(r)) if r.len() != self.shown.len() => Err(format!(
                "ranking has {} ranks for {} shown",
                r.len(),
                self.shown.len()
            )),
            (JudgeMode::Rank, Decision::Ranking(r)) if r.contains(&0) => {
                Err("ranks start at 1".into())
            }
            (JudgeMode::Rank, Decision::Ranking(_) | Decision::Skip) => Ok(()),
            (JudgeMode::Rank, d) => Err(format!("decision {:?} in a rank judgment", d.name())),
            (JudgeMode::Pairwise, _) => Ok(()),
        }
    }

    /// Original response indices `(better, worse)` for every strictly ordered pair.
    /// Ties, "both bad" and skips give none.
    pub fn preferences(&self) -> Vec<(usize, usize)> {
        match &self.decision {
            Decision::A => vec![(self.shown[0], self.shown[1])],
            Decision::B => vec![(self.shown[1], self.shown[0])],
            Decision::Ranking(ranks) => {
                let mut pairs = Vec::new();
                for (i, &ri) in ranks.iter().enumerate() {
                    for (j, &rj) in ranks.iter().enumerate() {
                        if ri < rj {
                            pairs.push((self.shown[i], self.shown[j]));
                        }
                    }
                }
                pairs
            }
            Decision::Tie | Decision::BothBad | Decision::Skip => Vec::new(),
        }
    }
}

/// Records read from a judgments file, and the lines that were ignored.
#[derive(Debug, Default)]
pub struct LogRead {
    pub records: Vec<Record>,
    pub warnings: Vec<LineError>,
}

/// Reads a whole judgments file.
pub fn read_log(path: &Path) -> Result<LogRead, LabelError> {
    let bytes = std::fs::read(path).map_err(|source| LabelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (read, _) = parse_lines(path, &bytes, 1, true);
    Ok(read)
}

/// Parses complete lines of `bytes`, numbering from `first_line`. Returns the records and
/// the number of bytes consumed (up to the last newline). A trailing fragment without a
/// newline is a torn write: with `warn_torn` it is reported, and it is never consumed.
fn parse_lines(path: &Path, bytes: &[u8], first_line: usize, warn_torn: bool) -> (LogRead, usize) {
    let mut read = LogRead::default();
    let consumed = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let warn = |line, message: String| LineError {
        path: path.to_path_buf(),
        line,
        message,
    };
    for (index, line) in bytes[..consumed].split(|&b| b == b'\n').enumerate() {
        let lineno = first_line + index;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(Record::Judgment(j)) => match j.check() {
                Ok(()) => read.records.push(Record::Judgment(j)),
                Err(e) => read
                    .warnings
                    .push(warn(lineno, format!("ignored judgment: {e}"))),
            },
            Ok(record) => read.records.push(record),
            Err(e) => read
                .warnings
                .push(warn(lineno, format!("ignored unreadable line ({e})"))),
        }
    }
    if warn_torn && consumed < bytes.len() {
        let lineno = first_line + bytes[..consumed].iter().filter(|&&b| b == b'\n').count();
        read.warnings.push(warn(
            lineno,
            "ignored a torn last line (an interrupted write)".into(),
        ));
    }
    (read, consumed)
}

/// The judgments file, open for appending, with a cursor for records other processes append.
#[derive(Debug)]
pub struct JudgmentLog {
    path: PathBuf,
    file: File,
    /// Bytes read so far (always at a line start).
    offset: u64,
    /// Line number of the line starting at `offset`.
    next_line: usize,
    /// This process created the file.
    created: bool,
    /// The last append failed, possibly after writing part of its line (a full disk): the
    /// next one starts a fresh line, so it is not glued to the fragment.
    torn: bool,
}

impl JudgmentLog {
    /// Opens (creating if needed) the judgments file and reads what it holds. Fails, before
    /// any UI opens, when the file cannot be written.
    pub fn open(path: &Path) -> Result<(JudgmentLog, LogRead), LabelError> {
        let unwritable = |source| LabelError::Unwritable {
            path: path.to_path_buf(),
            source,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(unwritable)?;
        if !existed {
            // Make the new directory entry itself durable.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(unwritable)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|source| LabelError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, consumed) = parse_lines(path, &bytes, 1, true);
        let mut next_line = 1 + bytes[..consumed].iter().filter(|&&b| b == b'\n').count();
        let mut offset = bytes.len() as u64;
        if consumed < bytes.len() {
            // End the torn fragment so the next record starts on a line of its own; the
            // fragment stays, unreadable, and is skipped on every later read.
            file.write_all(b"\n")
                .and_then(|()| file.sync_all())
                .map_err(unwritable)?;
            offset += 1;
            next_line += 1;
        }
        let log = JudgmentLog {
            path: path.to_path_buf(),
            file,
            offset,
            next_line,
            created: !existed,
            torn: false,
        };
        Ok((log, read))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether [`JudgmentLog::open`] created the file.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Appends one record as one line: `write_all`, `flush`, then `fsync`. When this returns
    /// `Ok`, the record survives a crash or power loss. After a failed append the next one
    /// starts with a newline: the failed write may have left part of its line behind.
    pub fn append(&mut self, record: &Record) -> Result<(), LabelError> {
        let mut line = Vec::new();
        if self.torn {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, record).expect("records serialise");
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.sync_all());
        self.torn = written.is_err();
        written.map_err(|source| LabelError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Swaps the file written to (tests: a writer that fails, as on a full disk).
    #[cfg(test)]
    pub(crate) fn replace_file(&mut self, file: File) -> File {
        std::mem::replace(&mut self.file, file)
    }

    /// Reads complete lines appended since the last read (by this process or another
    /// annotator sharing the file).
    pub fn read_new(&mut self) -> Result<LogRead, LabelError> {
        let io_err = |source| LabelError::Read {
            path: self.path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(self.offset))
            .map_err(io_err)?;
        self.file.read_to_end(&mut bytes).map_err(io_err)?;
        let (read, consumed) = parse_lines(&self.path, &bytes, self.next_line, false);
        self.offset += consumed as u64;
        self.next_line += bytes[..consumed].iter().filter(|&&b| b == b'\n').count();
        Ok(read)
    }
}

/// Writes records that could not be appended to `judgments` into a recovery file beside it,
/// `FILE.unsaved-PID.jsonl` (appended to if it exists), in the judgments format: appending
/// its lines to `judgments` later (`cat RECOVERY >> FILE`) restores them. Returns its path.
pub fn write_recovery(judgments: &Path, records: &[Record]) -> Result<PathBuf, LabelError> {
    let name = judgments
        .file_name()
        .map_or_else(|| "judgments".into(), |n| n.to_string_lossy().to_string());
    let path = judgments.with_file_name(format!("{name}.unsaved-{}.jsonl", std::process::id()));
    let mut bytes = Vec::new();
    for r in records {
        serde_json::to_writer(&mut bytes, r).expect("records serialise");
        bytes.push(b'\n');
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .map_err(|source| LabelError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The effective judgments after corrections: for each (annotator, item), the latest
/// judgment not undone.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Judgments not undone, in file order.
    active: Vec<Judgment>,
    corrections: usize,
}

impl Ledger {
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Ledger {
        let mut ledger = Ledger::default();
        for r in records {
            ledger.apply(r);
        }
        ledger
    }

    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Judgment(j) => self.active.push(j),
            Record::Correction(c) => {
                self.corrections += 1;
                if let Some(pos) = self
                    .active
                    .iter()
                    .rposition(|j| j.rid == c.undoes && j.annotator == c.annotator)
                {
                    self.active.remove(pos);
                }
            }
        }
    }

    /// The effective judgment of `item` by `annotator`.
    pub fn current(&self, annotator: &str, item: &str) -> Option<&Judgment> {
        self.active
            .iter()
            .rev()
            .find(|j| j.annotator == annotator && j.item == item)
    }

    /// The most recent effective judgment by `annotator`: what `u` undoes.
    pub fn last_by(&self, annotator: &str) -> Option<&Judgment> {
        self.active.iter().rev().find(|j| j.annotator == annotator)
    }

    /// One effective judgment per (annotator, item), in the order they were first made.
    pub fn effective(&self) -> Vec<&Judgment> {
        let mut latest: std::collections::HashMap<(&str, &str), usize> = Default::default();
        for (i, j) in self.active.iter().enumerate() {
            latest.insert((j.annotator.as_str(), j.item.as_str()), i);
        }
        let mut keep: Vec<usize> = latest.into_values().collect();
        keep.sort_unstable();
        keep.into_iter().map(|i| &self.active[i]).collect()
    }

    /// Number of correction records applied.
    pub fn corrections(&self) -> usize {
        self.corrections
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn judgment(rid: &str, item: &str, annotator: &str, decision: Decision) -> Judgment {
        let (mode, shown) = match &decision {
            Decision::Ranking(r) => (JudgeMode::Rank, (0..r.len()).collect()),
            _ => (JudgeMode::Pairwise, vec![0, 1]),
        };
        let n = shown.len();
        Judgment {
            rid: rid.into(),
            item: item.into(),
            annotator: annotator.into(),
            ts: "2025-01-01T00:00:00.000Z".into(),
            mode,
            seed: 0,
            shown,
            decision,
            note: String::new(),
            rationale: String::new(),
            flagged: false,
            duration_ms: 1000,
            supersedes: None,
            prompt: Turns::Text("p".into()),
            responses: (0..n)
                .map(|i| Response {
                    text: format!("r{i}"),
                    source: None,
                })
                .collect(),
        }
    }

    #[test]
    fn records_round_trip_as_one_line_each() {
        let j = Record::Judgment(judgment("1", "x", "al", Decision::Ranking(vec![2, 1, 2])));
        let line = serde_json::to_string(&j).unwrap();
        assert!(
            line.starts_with(r#"{"type":"judgment","rid":"1""#),
            "{line}"
        );
        assert!(line.contains(r#""decision":{"ranking":[2,1,2]}"#), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), j);
        let p = serde_json::to_string(&Record::Judgment(judgment(
            "2",
            "x",
            "al",
            Decision::BothBad,
        )))
        .unwrap();
        assert!(p.contains(r#""decision":"both_bad""#), "{p}");
    }

    #[test]
    fn torn_last_line_is_ignored_with_a_warning_and_appends_start_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let good = serde_json::to_string(&Record::Judgment(judgment("1", "x", "al", Decision::A)))
            .unwrap();
        std::fs::write(&path, format!("{good}\n{}", &good[..40])).unwrap();

        let (mut log, read) = JudgmentLog::open(&path).unwrap();
        assert_eq!(read.records.len(), 1);
        assert_eq!(read.warnings.len(), 1);
        assert_eq!(read.warnings[0].line, 2);
        assert!(read.warnings[0].message.contains("torn"));

        log.append(&Record::Judgment(judgment("2", "y", "al", Decision::B)))
            .unwrap();
        let again = read_log(&path).unwrap();
        assert_eq!(again.records.len(), 2, "{:?}", again.warnings);
        assert_eq!(again.warnings.len(), 1, "the fragment stays, ignored");
        assert!(std::fs::read(&path).unwrap().ends_with(b"\n"));
    }

    #[test]
    fn read_new_sees_lines_appended_by_another_writer_but_not_half_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut log, read) = JudgmentLog::open(&path).unwrap();
        assert!(read.records.is_empty());
        let (mut other, _) = JudgmentLog::open(&path).unwrap();
        other
            .append(&Record::Judgment(judgment("1", "x", "bo", Decision::A)))
            .unwrap();
        let line = serde_json::to_string(&Record::Judgment(judgment("2", "y", "bo", Decision::B)))
            .unwrap();
        other.file.write_all(&line.as_bytes()[..10]).unwrap();
        let new = log.read_new().unwrap();
        assert_eq!(new.records.len(), 1);
        assert!(new.warnings.is_empty());
        other.file.write_all(&line.as_bytes()[10..]).unwrap();
        other.file.write_all(b"\n").unwrap();
        let new = log.read_new().unwrap();
        assert_eq!(new.records.len(), 1);
        assert_eq!(new.records[0].rid(), "2");
    }

    #[test]
    fn an_append_after_a_failed_one_starts_a_fresh_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut log, _) = JudgmentLog::open(&path).unwrap();
        log.append(&Record::Judgment(judgment("1", "x", "al", Decision::A)))
            .unwrap();
        // A full disk cut the next append after 30 bytes, then space came back.
        let line = serde_json::to_string(&Record::Judgment(judgment("2", "y", "al", Decision::B)))
            .unwrap();
        log.file.write_all(&line.as_bytes()[..30]).unwrap();
        let real = log.replace_file(File::create("/dev/full").unwrap());
        let failed = log.append(&Record::Judgment(judgment("2", "y", "al", Decision::B)));
        assert!(
            matches!(failed, Err(LabelError::Write { .. })),
            "{failed:?}"
        );
        log.replace_file(real);
        log.append(&Record::Judgment(judgment("3", "y", "al", Decision::B)))
            .unwrap();
        let read = read_log(&path).unwrap();
        let rids: Vec<&str> = read.records.iter().map(Record::rid).collect();
        assert_eq!(rids, ["1", "3"], "the retry is not glued to the fragment");
        assert_eq!(read.warnings.len(), 1, "only the fragment is unreadable");
    }

    #[test]
    fn unsaved_records_go_to_a_recovery_file_in_the_judgments_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let records = [
            Record::Judgment(judgment("1", "x", "al", Decision::A)),
            Record::Judgment(judgment("2", "y", "al", Decision::Tie)),
        ];
        let recovery = write_recovery(&path, &records).unwrap();
        assert_eq!(recovery.parent(), Some(dir.path()), "beside the judgments");
        assert!(
            recovery
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("j.jsonl.unsaved-")
        );
        assert_eq!(read_log(&recovery).unwrap().records, records);
        let err = write_recovery(Path::new("/nonexistent-dir/j.jsonl"), &records).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-dir/j.jsonl.unsaved-"),
            "{err}"
        );
    }

    #[test]
    fn unwritable_path_fails_on_open() {
        let err = JudgmentLog::open(Path::new("/nonexistent-dir/j.jsonl")).unwrap_err();
        assert!(matches!(err, LabelError::Unwritable { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-dir/j.jsonl"));
    }

    #[test]
    fn corrections_undo_the_latest_judgment_and_restore_the_previous_one() {
        let mut ledger = Ledger::default();
        ledger.apply(Record::Judgment(judgment("1", "x", "al", Decision::A)));
        ledger.apply(Record::Judgment(judgment("2", "y", "al", Decision::A)));
        let mut rejudge = judgment("3", "x", "al", Decision::B);
        rejudge.supersedes = Some("1".into());
        ledger.apply(Record::Judgment(rejudge));
        ledger.apply(Record::Judgment(judgment("4", "x", "bo", Decision::Tie)));
        assert_eq!(ledger.current("al", "x").unwrap().decision, Decision::B);
        assert_eq!(ledger.effective().len(), 3);
        assert_eq!(ledger.last_by("al").unwrap().rid, "3");

        ledger.apply(Record::Correction(Correction {
            rid: "5".into(),
            item: "x".into(),
            annotator: "al".into(),
            ts: String::new(),
            undoes: "3".into(),
        }));
        assert_eq!(ledger.current("al", "x").unwrap().decision, Decision::A);
        assert_eq!(ledger.last_by("al").unwrap().rid, "2");
        assert_eq!(ledger.current("bo", "x").unwrap().decision, Decision::Tie);
    }

    #[test]
    fn rankings_expand_to_all_strictly_ordered_pairs() {
        // shown[k] = k; ranks 2,1,2,3: response 1 beats 0, 2 and 3; 0 and 2 tie; both beat 3.
        let j = judgment("1", "x", "al", Decision::Ranking(vec![2, 1, 2, 3]));
        let mut pairs = j.preferences();
        pairs.sort_unstable();
        assert_eq!(pairs, [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]);
        let mut b = judgment("1", "x", "al", Decision::B);
        b.shown = vec![1, 0];
        assert_eq!(b.preferences(), [(0, 1)]);
    }
}
