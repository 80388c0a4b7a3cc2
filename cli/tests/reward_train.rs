//! `alignkit reward train` on a tiny random model: config errors name the
//! file and line, a run writes `final/` and a loss plot and prints one summary
//! line, and Ctrl-C saves a checkpoint (exit 130) that `--resume` continues.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{metric_steps, signal_at_checkpoint, tiny_model, write_qa_prefs};

/// A tiny model, preference data and a reward config in a temporary directory.
fn setup(extra_config: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(&dir.join("model"));
    write_qa_prefs(&dir.join("prefs.jsonl"));
    let config = dir.join("reward.toml");
    std::fs::write(
        &config,
        format!(
            r#"model = "{}"
output_dir = "{}"
learning_rate = 1e-2
{extra_config}
[data]
train_file = "{}"
validation_file = "{}"
max_len = 64
text_as_chat = true

[train]
batch_size = 2
save_steps = 1

[lora]
r = 4
alpha = 8
"#,
            dir.join("model").display(),
            dir.join("run").display(),
            dir.join("prefs.jsonl").display(),
            dir.join("prefs.jsonl").display(),
        ),
    )
    .unwrap();
    (tmp, config)
}

fn reward_train(config: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignkit"));
    cmd.args(["reward", "train", "--config"])
        .arg(config)
        .args(extra);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn unknown_config_key_names_file_and_line() {
    let (_tmp, config) = setup("center_rewards = 0.01\n");
    let out = reward_train(&config, &[]).output().unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("reward.toml:4:1: unknown field `center_rewards`"),
        "{stderr}"
    );
    let (_tmp, config) = setup("");
    let out = reward_train(&config, &["--set", "train.bach_size=2"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unknown field `bach_size`"), "{stderr}");
}

#[test]
fn trains_plots_and_summarizes() {
    let (tmp, config) = setup("");
    let out = reward_train(
        &config,
        &["--max-steps", "6", "--set", "train.eval_steps=3"],
    )
    .output()
    .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let run = tmp.path().join("run");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("done: 6 steps, loss "), "{stdout}");
    assert!(stdout.contains(", eval accuracy "), "{stdout}");
    assert!(
        stdout.contains(&format!("model in {}", run.join("final").display())),
        "{stdout}"
    );
    assert!(
        stderr.contains("6 pairs (6 validation, 0 truncated)"),
        "{stderr}"
    );
    assert_eq!(metric_steps(&run), (1..=6).collect::<Vec<_>>());
    assert!(run.join("loss.svg").is_file());
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("eval_steps = 3"), "{resolved}");
    let final_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("final/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        final_config["architectures"][0],
        "LlamaForSequenceClassification"
    );

    // `alignkit export` re-saves the final reward model (bf16 here), and
    // refuses the run's checkpoints, whose export would drop the score head.
    let export = |source: &Path, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_alignkit"))
            .arg("export")
            .arg(source)
            .arg("--merged")
            .arg(out)
            .args(["--dtype", "bf16"])
            .output()
            .unwrap()
    };
    let out = export(&run.join("final"), &tmp.path().join("rm-bf16"));
    assert!(out.status.success(), "{}", text(&out).1);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("rm-bf16/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(config["torch_dtype"], "bfloat16");
    let out = export(&run, &tmp.path().join("rm-ckpt"));
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("export the run's final/ directory"),
        "{}",
        text(&out).1
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes() {
    let (tmp, config) = setup("");
    let run = tmp.path().join("run");
    let out = signal_at_checkpoint(
        &mut reward_train(&config, &["--max-steps", "300"]),
        &run,
        3,
        "-INT",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: finishing this step"),
        "{stderr}"
    );
    assert!(stdout.starts_with("interrupted: "), "{stdout}");
    assert!(stdout.contains("(continue with --resume)"), "{stdout}");
    assert!(!run.join("final").exists());
    let done = metric_steps(&run).len();
    assert!(done < 300, "not interrupted: {done} steps");

    let out = reward_train(&config, &["--max-steps", "300", "--resume"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(resuming from step "), "{stderr}");
    assert!(stdout.starts_with("done: 300 steps"), "{stdout}");
    assert_eq!(metric_steps(&run), (1..=300).collect::<Vec<_>>());
    assert!(run.join("final/model.safetensors").is_file());
}
