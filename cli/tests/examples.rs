//! Every TOML file under `examples/` works as README shows it: trainer configs
//! (`sft*.toml`, `reward*.toml`, `dpo*.toml`, `grpo*.toml`, `rloo*.toml`, `ppo*.toml`) run one step of their command
//! from the repository root (on a tiny model instead of the default one), and
//! pipelines (`pipeline*.toml`) plan with `alignkit run --dry-run`. A TOML
//! file of any other name fails the test, so none goes unchecked.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::tiny_model;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_runs_with_its_command() {
    let root = repo_root();
    let mut files = Vec::new();
    toml_files(&root.join("examples"), &mut files);
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    for (i, file) in files.iter().enumerate() {
        let rel = file.strip_prefix(&root).unwrap();
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let out = tmp.path().join(format!("run-{i}"));
        let command: &[&str] = if stem.starts_with("sft") {
            &["sft"]
        } else if stem.starts_with("reward") {
            &["reward", "train"]
        } else if stem.starts_with("dpo") {
            &["dpo"]
        } else if stem.starts_with("grpo") {
            &["grpo"]
        } else if stem.starts_with("rloo") {
            &["rloo"]
        } else if stem.starts_with("ppo") {
            &["ppo"]
        } else if stem.starts_with("pipeline") {
            &["run"]
        } else {
            panic!("{}: no command is known for this example", rel.display());
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignkit"));
        cmd.current_dir(&root).args(command);
        if command == ["run"] {
            cmd.arg(rel)
                .arg("--model")
                .arg(&model)
                .arg("--out")
                .arg(&out)
                .arg("--dry-run");
        } else {
            cmd.arg("--config")
                .arg(rel)
                .arg("--model")
                .arg(&model)
                .arg("--output-dir")
                .arg(&out)
                .args(["--max-steps", "1"]);
        }
        let result = cmd.output().unwrap();
        assert!(
            result.status.success(),
            "{}: {}",
            rel.display(),
            String::from_utf8_lossy(&result.stderr)
        );
        if command != ["run"] {
            assert!(
                out.join("final/config.json").is_file(),
                "{}: no final model",
                rel.display()
            );
        }
    }
}
