//! An output never equals an input (issue 33): a command asked to write over
//! one of the files it reads (or to replace a directory holding one) refuses
//! with one line naming both, with `--overwrite` or without; `generate --out`
//! never mixes two models' responses in one file; `generate --prompt` with
//! `--out` is refused rather than ignoring it; `eval frontier` counts a run
//! given twice once.

use std::path::{Path, PathBuf};

use serde_json::json;

mod common;
use common::{alignkit, ok, refused, tiny_model};

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `line` names every one of `paths` and says an output is an input.
fn assert_names(line: &str, paths: &[&Path]) {
    assert!(
        line.contains("is also an input") || line.contains("contains the input"),
        "{line}"
    );
    for p in paths {
        assert!(
            line.contains(s(p)),
            "`{}` missing from: {line}",
            p.display()
        );
    }
}

fn write_candidates(path: &Path) {
    let item = |id: &str, a: &str, b: &str| {
        json!({"id": id, "prompt": "p", "responses": [{"text": a}, {"text": b}]}).to_string()
    };
    std::fs::write(
        path,
        format!(
            "{}\n{}\n",
            item("1", "I love it, wonderful!", "This is awful."),
            item("2", "Great.", "Terrible.")
        ),
    )
    .unwrap();
}

#[test]
fn data_pairs_never_replaces_its_candidates_file() {
    let tmp = tempfile::tempdir().unwrap();
    let candidates = tmp.path().join("cand.jsonl");
    write_candidates(&candidates);
    let before = std::fs::read(&candidates).unwrap();
    let link = tmp.path().join("link.jsonl");
    std::os::unix::fs::symlink(&candidates, &link).unwrap();
    for out in [&candidates, &link] {
        let line = refused(&alignkit([
            "data",
            "pairs",
            s(&candidates),
            "--judge",
            "sentiment",
            "--out",
            s(out),
            "--overwrite",
        ]));
        assert_names(&line, &[out, &candidates]);
    }
    assert_eq!(std::fs::read(&candidates).unwrap(), before);
    // Elsewhere it writes.
    ok(&alignkit([
        "data",
        "pairs",
        s(&candidates),
        "--judge",
        "sentiment",
        "--out",
        s(&tmp.path().join("pairs.jsonl")),
    ]));
}

#[test]
fn reward_score_never_replaces_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let data = tmp.path().join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"hello\"}\n").unwrap();
    let line = refused(&alignkit([
        "reward",
        "score",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&data),
    ]));
    assert_names(&line, &[&data]);
}

#[test]
fn generate_never_appends_to_its_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\"}\n").unwrap();
    let before = std::fs::read(&prompts).unwrap();
    let line = refused(&alignkit([
        "generate",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--out",
        s(&prompts),
        "--num-samples",
        "2",
        "--temperature",
        "0.7",
    ]));
    assert_names(&line, &[&prompts]);
    assert_eq!(std::fs::read(&prompts).unwrap(), before);
}

/// The pipeline's first input model lies in the directory of a stage it
/// would clear for a fresh run.
#[test]
fn a_pipeline_never_clears_a_stage_directory_holding_its_model() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let model = tiny_model(&runs.join("sft"));
    common::write_qa_sft(&tmp.path().join("sft.jsonl"));
    let pipeline = tmp.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        "model = \"runs/sft\"\noutput_dir = \"runs\"\n[[stage]]\nname = \"sft\"\nkind = \"sft\"\n[stage.config]\ndata.train_file = \"sft.jsonl\"\ntrain.max_steps = 1\n",
    )
    .unwrap();
    let line = refused(&alignkit(["run", s(&pipeline)]));
    assert_names(&line, &[&runs.join("sft")]);
    assert!(model.join("config.json").is_file(), "the model was removed");
}

fn generate_args(model: &Path, prompts: &Path, out: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        s(model),
        "--prompts",
        s(prompts),
        "--out",
        s(out),
        "--num-samples",
        "2",
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "1",
    ]
    .map(String::from)
    .to_vec()
}

/// A candidates file resumed after the model at the same path changed
/// would hold two models' responses: refused, naming the model.
#[test]
fn generate_resumes_only_with_the_model_that_began_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let other = tiny_model(&tmp.path().join("other"));
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"a?\"}\n{\"prompt\": \"b?\"}\n").unwrap();
    let out = tmp.path().join("candidates.jsonl");
    ok(&alignkit(generate_args(&model, &prompts, &out)));
    // Interrupted after its first item...
    let text = std::fs::read_to_string(&out).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&out, format!("{first}\n")).unwrap();
    // ... and the model replaced by another one at the same path.
    let weights = model.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    std::fs::copy(other.join("model.safetensors"), &weights).unwrap();
    let line = refused(&alignkit(generate_args(&model, &prompts, &out)));
    assert!(line.contains(s(&model)), "{line}");
    assert!(line.contains("changed"), "{line}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), format!("{first}\n"));
    // With the model that began it, the file is completed.
    std::fs::write(&weights, original).unwrap();
    ok(&alignkit(generate_args(&model, &prompts, &out)));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

/// `--out` writes a candidates file from `--prompts`; with `--prompt` it
/// would be ignored, so it is refused and nothing is written.
#[test]
fn generate_refuses_out_with_a_single_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let out = tmp.path().join("out.jsonl");
    let line = refused(&alignkit([
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "hi",
        "--out",
        s(&out),
    ]));
    assert!(
        line.contains("--out") && line.contains("--prompts"),
        "{line}"
    );
    assert!(!out.exists());
}

/// A run directory written for `eval frontier`: a GRPO run with two
/// held-out evaluations.
fn frontier_run(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "[grpo]\nbeta = 0.05\n[train]\nseed = 3\n",
    )
    .unwrap();
    let eval: String = [(0, 0.0, 0.1), (5, 1.0, 0.4)]
        .iter()
        .map(|(step, kl, r)| {
            format!(
                "{}\n",
                json!({"step": step, "eval/kl": kl, "eval/reward": r,
                       "eval/reward_std": 0.5, "eval/completions": 10})
            )
        })
        .collect();
    std::fs::write(dir.join("eval.jsonl"), eval).unwrap();
    dir.to_path_buf()
}

#[test]
fn frontier_counts_a_run_given_twice_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = frontier_run(&tmp.path().join("grpo"));
    let link = tmp.path().join("again");
    std::os::unix::fs::symlink(&run, &link).unwrap();
    let out = tmp.path().join("report");
    let (_, stderr) = ok(&alignkit([
        "eval",
        "frontier",
        s(&run),
        &format!("{}/", run.display()),
        s(&link),
        "--out",
        s(&out),
    ]));
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings[1].contains(s(&link)), "{stderr}");
    let md = std::fs::read_to_string(out.join("frontier.md")).unwrap();
    let rows = md
        .lines()
        .filter(|l| l.starts_with("| grpo | 0.05 | 3 |"))
        .count();
    assert_eq!(rows, 1, "{md}");
}

/// `eval winrate --out` into the policy's own directory would change the
/// model (and its fingerprint) it reports on.
#[test]
fn winrate_never_writes_into_a_model_it_compares() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tiny_model(&tmp.path().join("policy"));
    let baseline = tiny_model(&tmp.path().join("baseline"));
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hi\"}\n").unwrap();
    let line = refused(&alignkit([
        "eval",
        "winrate",
        "--policy",
        s(&policy),
        "--baseline",
        s(&baseline),
        "--prompts",
        s(&prompts),
        "--judge",
        "rule:one-sentence",
        "--out",
        s(&policy),
    ]));
    assert_names(&line, &[&policy]);
    assert!(!policy.join("winrate.json").exists());
}
