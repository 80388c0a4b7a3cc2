//! Whole files: bad input reported as FILE:LINE, `validate` listing every
//! problem, `inspect` showing what is trained, splits of a growing file.

mod common;

use alignkit_datasets::{
    DataKind, EncodeConfig, FieldMap, Finding, PromptRecord, SftRecord, SplitConfig,
    ValidateOptions, inspect, read, validate,
};

fn opts(kind: Option<DataKind>) -> ValidateOptions {
    ValidateOptions {
        kind,
        ..Default::default()
    }
}

#[test]
fn every_kind_of_bad_input_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let mut data = Vec::new();
    data.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n");
    data.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"\n"); // 2 malformed
    data.extend_from_slice(b"{\"messages\": \"hello\"}\n"); // 3 wrong type
    data.extend_from_slice(b"{\"prompt\": \"only a prompt\"}\n"); // 4 missing completion
    data.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n"); // 5 invalid UTF-8
    data.extend_from_slice(b"{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n"); // 6 unknown role
    data.extend_from_slice(b"{\"text\": \""); // 7: a 10 MB line, unterminated string
    data.extend(std::iter::repeat_n(b'a', 10 << 20));
    data.extend_from_slice(b"\n");
    data.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"  two spaces\"}]}\n"); // 8 boundary
    std::fs::write(&path, &data).unwrap();

    let enc = common::smollm2(EncodeConfig::default());
    let report = validate(&path, &enc, &opts(Some(DataKind::Sft))).unwrap();
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    let p = path.display().to_string();
    assert_eq!(report.records, 8);
    assert_eq!(report.ok, 1);
    assert_eq!(report.error_count, 7, "{errors:#?}");
    let expect = [
        format!("{p}:2: malformed JSON"),
        format!("{p}:3: field `messages`: expected a list of messages, got a string"),
        format!("{p}:4: field `completion`: missing field"),
        format!("{p}:5: invalid UTF-8 at byte 14 of the line"),
        format!("{p}:6: field `messages[0].role`: unknown role \"robot\""),
        format!("{p}:7: malformed JSON: EOF while parsing a string"),
        format!("{p}:8: field `messages[1]`: prompt/completion boundary not in token space"),
    ];
    for (got, want) in errors.iter().zip(&expect) {
        assert!(got.starts_with(want.as_str()), "got {got:?}\nwant {want:?}");
        assert!(
            got.len() < 600,
            "error message too long: {} bytes",
            got.len()
        );
    }
    assert!(report.has_errors());
    let text = report.to_string();
    assert!(text.contains("8 records (sft), 1 ok, 7 errors"), "{text}");
}

#[test]
fn empty_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let enc = common::smollm2(EncodeConfig::default());
    let empty = common::write_jsonl(dir.path(), "empty.jsonl", &[]);
    let report = validate(&empty, &enc, &opts(None)).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(
        report.errors[0].to_string(),
        format!("{}:1: empty file: no JSON records", empty.display())
    );
    let missing = dir.path().join("nope.jsonl");
    let err = validate(&missing, &enc, &opts(None))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}: ", missing.display())),
        "{err}"
    );
    let err = read::<SftRecord>(&missing, &FieldMap::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nope.jsonl"), "{err}");
}

#[test]
fn validate_counts_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(40);
    let long_line = format!(r#"{{"prompt": "{long}", "chosen": "a", "rejected": "b"}}"#);
    let path = common::write_jsonl(
        dir.path(),
        "prefs.jsonl",
        &[
            r#"{"prompt": [{"role": "user", "content": "Q"}], "better": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}], "id": 1}"#,
            r#"{"prompt": [{"role": "user", "content": "Q"}], "better": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}], "id": 2}"#,
            r#"{"prompt": "Q2", "better": "same", "rejected": "same"}"#,
            r#"{"prompt": "", "better": "x", "rejected": "y"}"#,
            &long_line,
            r#"{"better": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}"#,
        ],
    );
    // The Llama-3-style model has a 64-token context.
    let (_d, enc) = common::llama3(EncodeConfig {
        max_len: Some(40),
        ..Default::default()
    });
    let o = ValidateOptions {
        fields: FieldMap::parse(&["chosen=better"]).unwrap(),
        ..opts(None)
    };
    let report = validate(&path, &enc, &o).unwrap();
    assert_eq!(report.kind, Some(DataKind::Preferences));
    // Identical chosen/rejected are errors, as in training: line 3 as written,
    // line 5 once truncation left both empty.
    let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
    let p = path.display();
    assert_eq!(
        errors,
        [
            format!(
                "{p}:3: `chosen` and `rejected` are identical; remove the pair or fix the data"
            ),
            format!(
                "{p}:5: `chosen` and `rejected` are identical after truncation to max_len; remove the pair or fix the data"
            ),
        ]
    );
    assert_eq!(report.ok, 4);
    assert_eq!(
        report.finding(Finding::Duplicate),
        1,
        "extra `id` ignored for duplicates"
    );
    assert_eq!(report.finding(Finding::EmptyField), 1);
    assert_eq!(
        report.finding(Finding::OverContext),
        2,
        "chosen and rejected of line 5"
    );
    // Line 5's prompt alone exceeds max_len: with KeepStart it keeps its
    // first 40 tokens and both responses are gone; all of it is recorded.
    assert_eq!(report.finding(Finding::PromptTruncated), 2);
    assert_eq!(report.finding(Finding::CompletionTruncated), 2);
    assert_eq!(report.finding(Finding::EosDropped), 2);
    assert_eq!(report.finding(Finding::NothingToTrain), 1);
    assert_eq!(report.histogram("prompt").unwrap().max, 40);
    assert_eq!(report.forms["implicit prompt"], 1);
    assert_eq!(report.histogram("prompt").unwrap().count, 6);
    let text = report.to_string();
    assert!(text.contains("duplicate records: 1"), "{text}");
    assert!(
        text.contains(&format!("{}:2: same as line 1", path.display())),
        "{text}"
    );
    assert!(
        text.contains("longer than the model's context: 2"),
        "{text}"
    );
}

#[test]
fn inspect_shows_trained_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_jsonl(
        dir.path(),
        "sft.jsonl",
        &[
            r#"{"text": "first"}"#,
            "",
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
        ],
    );
    let enc = common::smollm2(EncodeConfig::default());
    let ins = inspect(&path, &enc, None, &FieldMap::default(), 1).unwrap();
    assert_eq!(ins.at.line, 3);
    let s = &ins.sections[0];
    let trained: String = s
        .tokens
        .iter()
        .filter(|t| t.trained)
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(trained, "Hello<|im_end|>");
    assert!(s.text.starts_with("<|im_start|>system\n"));
    let plain = ins.to_string();
    assert!(plain.contains("== sequence:"), "{plain}");
    assert!(plain.contains("+ \"Hello\""), "{plain}");
    let err = inspect(&path, &enc, None, &FieldMap::default(), 5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no record 5 (the file has 2)"), "{err}");
}

#[test]
fn inspect_states_where_a_preference_completion_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_jsonl(
        dir.path(),
        "prefs.jsonl",
        &[
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}], "rejected": [{"role": "assistant", "content": "Go"}]}"#,
            r#"{"prompt": "Hi", "chosen": " Hello", "rejected": " Go"}"#,
        ],
    );
    let trained = |ins: &alignkit_datasets::Inspection| -> String {
        let s = &ins.sections[0];
        s.tokens
            .iter()
            .filter(|t| t.trained)
            .map(|t| t.text.as_str())
            .collect()
    };
    let enc = common::smollm2(EncodeConfig::default());
    let chat = inspect(&path, &enc, None, &FieldMap::default(), 0).unwrap();
    assert_eq!(trained(&chat), "Hello<|im_end|>\n");
    let plain = chat.to_string();
    assert!(
        plain.contains(
            "completion = everything the chat template renders after the prompt (TRL's span"
        ),
        "{plain}"
    );
    let text = inspect(&path, &enc, None, &FieldMap::default(), 1).unwrap();
    assert!(
        text.to_string()
            .contains("completion = the response's tokens, then EOS")
    );

    let enc = common::smollm2(EncodeConfig {
        completion_end: alignkit_datasets::CompletionEnd::EndOfTurn,
        ..Default::default()
    });
    let chat = inspect(&path, &enc, None, &FieldMap::default(), 0).unwrap();
    assert_eq!(trained(&chat), "Hello<|im_end|>");
    assert!(
        chat.to_string()
            .contains("completion = the response through its end-of-turn token")
    );
}

#[test]
fn splits_are_stable_when_the_file_grows() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"prompt": "question {i}"}}"#))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let small = common::write_jsonl(dir.path(), "small.jsonl", &refs[..100]);
    let large = common::write_jsonl(dir.path(), "large.jsonl", &refs);
    let enc = common::smollm2(EncodeConfig::default());
    let cfg = SplitConfig::new(42, 0.2, 0.1).unwrap();
    let assign = |p| {
        enc.encode_prompt_file(p, &FieldMap::default())
            .unwrap()
            .into_iter()
            .map(|e| cfg.assign(&e.digest))
            .collect::<Vec<_>>()
    };
    let (a, b) = (assign(&small), assign(&large));
    assert_eq!(a[..], b[..100]);
    let recs: Vec<_> = read::<PromptRecord>(&large, &FieldMap::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let sets = cfg.partition(recs, |r| &r.digest);
    assert!(!sets.validation.is_empty() && !sets.test.is_empty());
    assert_eq!(
        sets.train.len() + sets.validation.len() + sets.test.len(),
        300
    );
}
