//! `alignkit data validate` on files that are not what it expects, on pairs
//! training refuses, and without `--model` (issue 12.7, 12.9).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// (success, stdout, stderr) of `alignkit data validate FILE [extra]` with
/// `cache` as the model cache.
fn validate(file: &Path, extra: &[&str], cache: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["data", "validate", file.to_str().unwrap()])
        .args(extra)
        .env("ALIGNKIT_CACHE", cache)
        .output()
        .expect("run alignkit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A cache holding the default model: the tiny Llama fixture's weights with
/// SmolLM2's tokenizer, where `ensure_model` looks for it.
fn cache_with_default_model() -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("models/smollm2-135m-instruct");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("model/tests/fixtures/llama").join(f), dir.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(
            fixture("datasets/tests/fixtures/smollm2").join(f),
            dir.join(f),
        )
        .unwrap();
    }
    cache
}

#[test]
fn files_that_are_not_jsonl_get_one_line_saying_so() {
    let cache = cache_with_default_model();
    let dir = tempfile::tempdir().unwrap();

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, stderr) = validate(&empty, &[], cache.path());
    assert!(!ok);
    assert_eq!(
        stderr,
        format!(
            "error: {}:1: empty file: no JSON records\n",
            empty.display()
        )
    );

    let array = dir.path().join("data.json");
    std::fs::write(
        &array,
        "[\n  {\"text\": \"a\"},\n  {\"text\": \"b\"},\n  {\"text\": \"c\"}\n]\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = validate(&array, &[], cache.path());
    assert!(!ok);
    let expected = format!(
        "{}:1: this looks like a JSON array; expected one object per line (JSONL)",
        array.display()
    );
    assert_eq!(stderr, format!("error: {expected}\n"));
    assert_eq!(stdout.matches(&expected).count(), 1, "{stdout}");
    assert!(!stdout.contains("malformed JSON"), "{stdout}");
}

#[test]
fn without_model_the_default_model_is_used() {
    let cache = cache_with_default_model();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sft.jsonl");
    std::fs::write(&data, "{\"prompt\": \"hi\", \"completion\": \"there\"}\n").unwrap();
    let (ok, stdout, stderr) = validate(&data, &[], cache.path());
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("1 record (sft), 1 ok, 0 errors"),
        "{stdout}"
    );
}

/// `data validate` refuses what the reward and DPO trainers refuse.
#[test]
fn identical_chosen_and_rejected_fail_validation_as_they_fail_training() {
    let cache = cache_with_default_model();
    let dir = tempfile::tempdir().unwrap();
    let prefs = dir.path().join("prefs.jsonl");
    std::fs::write(
        &prefs,
        "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\
         {\"prompt\": \"q2\", \"chosen\": \"same\", \"rejected\": \"same\"}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = validate(&prefs, &[], cache.path());
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{}:2: `chosen` and `rejected` are identical; remove the pair or fix the data",
            prefs.display()
        )),
        "{stdout}"
    );
    assert_eq!(
        stderr,
        format!("error: {}: 1 of 2 records have errors\n", prefs.display())
    );
}

/// `alignkit data pairs`: VADER-ranked pairs from a candidates file; an
/// existing --out is refused in one line (the wording `label export` uses)
/// and replaced with --overwrite.
#[test]
fn data_pairs_writes_ranked_pairs_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let candidates = dir.path().join("candidates.jsonl");
    let item = serde_json::json!({"id": "1", "prompt": "How was the film?", "responses": [
        {"text": "It was wonderful, I loved it!"},
        {"text": "It was terrible and boring."},
    ]});
    std::fs::write(&candidates, format!("{item}\n")).unwrap();
    let out = dir.path().join("pairs.jsonl");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_alignkit"))
            .args([
                "data",
                "pairs",
                candidates.to_str().unwrap(),
                "--judge",
                "sentiment",
            ])
            .args(["--out", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let pair: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(pair["chosen"], "It was wonderful, I loved it!");
    assert_eq!(pair["rejected"], "It was terrible and boring.");

    let again = run(&[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("exists (pass --overwrite to replace it)"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text, "untouched");
    assert!(run(&["--overwrite"]).status.success());
}
