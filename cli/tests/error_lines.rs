//! The full text of error lines: each cause said once (issue 11.6). The
//! binary prints `error: {err:#}`, the message and then each source; a message
//! that already held its source would say it twice.

use std::path::{Path, PathBuf};

mod common;
use common::alignkit;

/// stderr of a failing `alignkit args`.
fn error_of(args: &[&str]) -> String {
    let out = alignkit(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

const NO_FILE: &str = "No such file or directory (os error 2)";

#[test]
fn a_missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sft.toml");
    let c = config.display();
    assert_eq!(
        error_of(&["sft", "--config", &c.to_string()]),
        format!("error: {c}: {NO_FILE}\n")
    );
}

#[test]
fn a_missing_model_directory() {
    assert_eq!(
        error_of(&[
            "logprobs",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "a",
            "--completion",
            "b",
        ]),
        format!("error: /nonexistent/model/config.json: {NO_FILE}\n")
    );
}

#[test]
fn a_truncated_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixture("model/tests/fixtures/llama").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            fixture("datasets/tests/fixtures/smollm2").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let model = dir.path().display().to_string();
    assert_eq!(
        error_of(&[
            "logprobs",
            "--model",
            &model,
            "--prompt",
            "a",
            "--completion",
            "b"
        ]),
        format!(
            "error: {}: not a valid safetensors file: incomplete metadata, file not fully covered\n",
            weights.display()
        )
    );
}

#[test]
fn a_bad_value_in_a_config_file_and_in_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sft.toml");
    std::fs::write(&config, "model = \"m\"\nlearning_rate = \"fast\"\n").unwrap();
    let c = config.display().to_string();
    assert_eq!(
        error_of(&["sft", "--config", &c]),
        format!("error: {c}:2:17: invalid type: string \"fast\", expected f64\n")
    );
    assert_eq!(
        error_of(&["sft", "--set", "train.batch_size=abc"]),
        "error: config: `train.batch_size`: invalid type: string \"abc\", expected usize\n"
    );
}

#[test]
fn an_unwritable_judgments_file() {
    let dir = tempfile::tempdir().unwrap();
    let cands = dir.path().join("c.jsonl");
    std::fs::write(
        &cands,
        "{\"id\":\"a\",\"prompt\":\"p\",\"responses\":[{\"text\":\"x\"},{\"text\":\"y\"}]}\n",
    )
    .unwrap();
    assert_eq!(
        error_of(&[
            "label",
            cands.to_str().unwrap(),
            "--judgments",
            "/nonexistent-dir/j.jsonl",
            "--annotator",
            "a",
        ]),
        format!("error: cannot write judgments to /nonexistent-dir/j.jsonl: {NO_FILE}\n")
    );
}

#[test]
fn a_missing_data_file() {
    let tokenizer = fixture("datasets/tests/fixtures/smollm2");
    assert_eq!(
        error_of(&[
            "data",
            "validate",
            "/nonexistent/data.jsonl",
            "--model",
            tokenizer.to_str().unwrap(),
        ]),
        format!("error: /nonexistent/data.jsonl: {NO_FILE}\n")
    );
}
