//! Streaming JSON Lines reader: one line in memory at a time, so a multi-GB
//! file never loads whole. Every problem is reported as `FILE:LINE: reason`
//! and the reader carries on with the next line, so a validator sees all
//! errors of a file, not just the first.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Location, Result};
use crate::schema::{AnyRecord, DataKind, FieldMap, Record, Schema, split_fields};

/// Lines longer than this are reported and skipped rather than buffered.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

/// Raw JSON objects, one per non-blank line.
pub struct JsonlReader<R> {
    reader: R,
    path: PathBuf,
    line: usize,
    objects: usize,
    max_line_bytes: usize,
    buf: Vec<u8>,
    finished: bool,
}

impl JsonlReader<BufReader<File>> {
    /// Every data file of every command is opened here.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |error| DataError::Io {
            path: path.to_owned(),
            error,
        };
        // Opening a directory succeeds on Unix; reading it then fails with
        // an error that does not say what was given.
        if path.is_dir() {
            return Err(io(std::io::Error::other("is a directory, not a file")));
        }
        let file = File::open(path).map_err(io)?;
        Ok(Self::new(BufReader::with_capacity(1 << 16, file), path))
    }
}

impl<R: BufRead> JsonlReader<R> {
    /// Read from any buffered reader; `path` is only used in messages.
    pub fn new(reader: R, path: impl Into<PathBuf>) -> Self {
        Self {
            reader,
            path: path.into(),
            line: 0,
            objects: 0,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            buf: Vec::new(),
            finished: false,
        }
    }

    pub fn with_max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read one physical line into `self.buf` (without the newline). Returns
    /// `Ok(None)` at end of file and `Ok(Some(false))` when the line was longer
    /// than the limit (its bytes are skipped).
    fn read_line(&mut self) -> std::io::Result<Option<bool>> {
        self.buf.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                if self.buf.len() + take > self.max_line_bytes {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.reader.consume(take + usize::from(done));
            if done {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some(!too_long))
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<(Location, Map<String, Value>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        loop {
            let read = self.read_line();
            let at = Location::new(self.path.clone(), self.line + 1);
            match read {
                Err(error) => {
                    self.finished = true;
                    return Some(Err(DataError::Io {
                        path: self.path.clone(),
                        error,
                    }));
                }
                Ok(None) => {
                    self.finished = true;
                    if self.objects == 0 {
                        return Some(Err(DataError::NotJsonLines {
                            at: Location::new(self.path.clone(), self.line.max(1)),
                            reason: "empty file: no JSON records",
                        }));
                    }
                    return None;
                }
                Ok(Some(complete)) => {
                    self.line += 1;
                    self.objects += 1;
                    if !complete {
                        return Some(Err(DataError::record(
                            &at,
                            None,
                            format!("line longer than {} bytes, skipped", self.max_line_bytes),
                        )));
                    }
                    let mut bytes = &self.buf[..];
                    if self.line == 1 {
                        bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                    }
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        self.objects -= 1;
                        continue;
                    }
                    if self.objects == 1 && bytes.trim_ascii_start().starts_with(b"[") {
                        // A JSON array (pretty-printed or on one line) would
                        // otherwise give one "malformed JSON" per line.
                        self.finished = true;
                        return Some(Err(DataError::NotJsonLines {
                            at,
                            reason: "this looks like a JSON array; expected one object per line (JSONL)",
                        }));
                    }
                    return Some(parse_line(bytes, &at));
                }
            }
        }
    }
}

fn parse_line(bytes: &[u8], at: &Location) -> Result<(Location, Map<String, Value>)> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(DataError::record(
            at,
            None,
            format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok((at.clone(), m)),
        Ok(other) => Err(DataError::record(
            at,
            None,
            format!(
                "expected a JSON object, got {}",
                match other {
                    Value::Array(_) => "a list",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                }
            ),
        )),
        Err(e) => {
            // serde_json says "... at line 1 column N"; the line is ours.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            Err(DataError::record(
                at,
                None,
                format!("malformed JSON: {msg} (column {})", e.column()),
            ))
        }
    }
}

/// SHA-256 of the canonical JSON of `fields` (keys sorted at every level),
/// independent of key order in the file and of serde_json's map feature.
pub fn content_digest(fields: &Map<String, Value>) -> [u8; 32] {
    fn write(v: &Value, h: &mut Sha256) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                h.update(b"{");
                for k in keys {
                    write(&Value::String(k.clone()), h);
                    h.update(b":");
                    write(&m[k], h);
                    h.update(b",");
                }
                h.update(b"}");
            }
            Value::Array(a) => {
                h.update(b"[");
                for x in a {
                    write(x, h);
                    h.update(b",");
                }
                h.update(b"]");
            }
            other => h.update(other.to_string().as_bytes()),
        }
    }
    let mut h = Sha256::new();
    write(&Value::Object(fields.clone()), &mut h);
    h.finalize().into()
}

/// Typed records of one schema, streamed.
pub struct Records<T, R = BufReader<File>> {
    lines: JsonlReader<R>,
    fields: FieldMap,
    _schema: PhantomData<T>,
}

impl<T: Schema, R: BufRead> Iterator for Records<T, R> {
    type Item = Result<Record<T>>;
    fn next(&mut self) -> Option<Self::Item> {
        let (at, object) = match self.lines.next()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let (known, extra) = split_fields(T::KIND, object, &self.fields);
        Some(T::from_fields(&known, &at).map(|value| Record {
            digest: content_digest(&known),
            at,
            value,
            extra,
        }))
    }
}

/// Stream the records of `path` as schema `T` (e.g. [`crate::SftRecord`]).
pub fn read<T: Schema>(path: impl AsRef<Path>, fields: &FieldMap) -> Result<Records<T>> {
    Ok(Records {
        lines: JsonlReader::open(path)?,
        fields: fields.clone(),
        _schema: PhantomData,
    })
}

/// Like [`read`], from any reader (`path` names it in messages).
pub fn read_from<T: Schema, R: Read>(
    reader: R,
    path: impl Into<PathBuf>,
    fields: &FieldMap,
) -> Records<T, BufReader<R>> {
    Records {
        lines: JsonlReader::new(BufReader::new(reader), path),
        fields: fields.clone(),
        _schema: PhantomData,
    }
}

/// Records of a kind chosen at run time; with `kind: None` the kind is
/// detected from the first object.
pub struct AnyRecords<R = BufReader<File>> {
    lines: JsonlReader<R>,
    fields: FieldMap,
    kind: Option<DataKind>,
}

impl<R: BufRead> AnyRecords<R> {
    pub fn new(lines: JsonlReader<R>, kind: Option<DataKind>, fields: &FieldMap) -> Self {
        Self {
            lines,
            fields: fields.clone(),
            kind,
        }
    }

    /// The kind read (known after the first object when detected).
    pub fn kind(&self) -> Option<DataKind> {
        self.kind
    }
}

impl<R: BufRead> Iterator for AnyRecords<R> {
    type Item = Result<Record<AnyRecord>>;
    fn next(&mut self) -> Option<Self::Item> {
        let (at, mut object) = match self.lines.next()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let kind = match self.kind {
            Some(k) => k,
            None => {
                self.fields.apply(&mut object);
                match DataKind::detect(&object) {
                    Some(k) => {
                        self.kind = Some(k);
                        // Already renamed: do not rename twice.
                        let (known, extra) = split_fields(k, object, &FieldMap::default());
                        return Some(finish(k, known, extra, at));
                    }
                    None => {
                        return Some(Err(DataError::record(
                            &at,
                            None,
                            "cannot tell the data kind from this record's keys; pass --kind",
                        )));
                    }
                }
            }
        };
        let (known, extra) = split_fields(kind, object, &self.fields);
        Some(finish(kind, known, extra, at))
    }
}

fn finish(
    kind: DataKind,
    known: Map<String, Value>,
    extra: Map<String, Value>,
    at: Location,
) -> Result<Record<AnyRecord>> {
    AnyRecord::from_fields(kind, &known, &at).map(|value| Record {
        digest: content_digest(&known),
        at,
        value,
        extra,
    })
}

/// Stream records of `path` as `kind` (detected from the first record if `None`).
pub fn read_any(
    path: impl AsRef<Path>,
    kind: Option<DataKind>,
    fields: &FieldMap,
) -> Result<AnyRecords> {
    Ok(AnyRecords::new(JsonlReader::open(path)?, kind, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SftRecord;

    fn lines(input: &[u8]) -> Vec<Result<(Location, Map<String, Value>)>> {
        JsonlReader::new(input, "d.jsonl").collect()
    }

    fn errors(input: &[u8]) -> Vec<String> {
        lines(input)
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn reports_every_bad_line_with_its_number() {
        let input = b"{\"text\": \"a\"}\n{bad\n\n[1]\n{\"text\": \"\xff\"}\r\n{\"text\": \"ok\"}";
        let errs = errors(input);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("d.jsonl:2: malformed JSON"),
            "{}",
            errs[0]
        );
        assert_eq!(errs[1], "d.jsonl:4: expected a JSON object, got a list");
        assert_eq!(errs[2], "d.jsonl:5: invalid UTF-8 at byte 11 of the line");
        let ok: Vec<_> = lines(input).into_iter().filter_map(|r| r.ok()).collect();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].0.line, 6);
    }

    #[test]
    fn a_json_array_is_reported_once() {
        let expected =
            "d.jsonl:2: this looks like a JSON array; expected one object per line (JSONL)";
        let pretty = b"\n[\n  {\"text\": \"a\"},\n  {\"text\": \"b\"}\n]\n";
        assert_eq!(errors(pretty), vec![expected]);
        assert_eq!(
            errors(b"\n [{\"text\": \"a\"}, {\"text\": \"b\"}]"),
            vec![expected]
        );
    }

    #[test]
    fn empty_file_is_an_error() {
        assert_eq!(errors(b""), vec!["d.jsonl:1: empty file: no JSON records"]);
        assert_eq!(
            errors(b"\n  \n"),
            vec!["d.jsonl:2: empty file: no JSON records"]
        );
    }

    #[test]
    fn long_line_is_skipped_not_buffered() {
        let mut input = b"{\"text\": \"".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 << 20));
        input.extend(b"\"}\n{\"text\": \"after\"}\n");
        // A 10 MB line under the default limit parses.
        assert!(lines(&input).iter().all(|r| r.is_ok()));
        // Over a small limit it is reported, and the next line still reads.
        let got: Vec<_> = JsonlReader::new(&input[..], "d.jsonl")
            .with_max_line_bytes(1 << 20)
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].as_ref().unwrap_err().to_string(),
            "d.jsonl:1: line longer than 1048576 bytes, skipped"
        );
        assert_eq!(got[1].as_ref().unwrap().0.line, 2);
    }

    #[test]
    fn typed_records_keep_extras_and_digest_ignores_key_order() {
        let input = b"{\"text\": \"a\", \"id\": 1}\n{\"id\": 2, \"text\": \"a\"}\n";
        let recs: Vec<_> = read_from::<SftRecord, _>(&input[..], "d.jsonl", &FieldMap::default())
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(recs[0].extra["id"], 1);
        assert_eq!(recs[0].digest, recs[1].digest);
    }

    #[test]
    fn detects_kind_from_first_record() {
        let input = b"{\"prompt\": \"p\", \"better\": \"c\", \"rejected\": \"r\"}\n";
        let fm = FieldMap::parse(&["chosen=better"]).unwrap();
        let mut recs = AnyRecords::new(JsonlReader::new(&input[..], "d.jsonl"), None, &fm);
        let r = recs.next().unwrap().unwrap();
        assert_eq!(recs.kind(), Some(DataKind::Preferences));
        assert!(matches!(r.value, AnyRecord::Preference(_)));
    }
}
