//! `alignkit dpo` on a tiny random model: a run writes `final/` and a loss
//! plot and prints one summary line; SIGTERM (what `timeout` and schedulers
//! send) saves a checkpoint and exits 130; `--resume` refuses a changed β in
//! one line and finishes the run with the same settings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{metric_steps, signal_at_checkpoint, tiny_model, write_qa_prefs};

/// A tiny model, preference data and a DPO config in a temporary directory.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(&dir.join("model"));
    write_qa_prefs(&dir.join("prefs.jsonl"));
    let config = dir.join("dpo.toml");
    std::fs::write(
        &config,
        format!(
            r#"model = "{}"
output_dir = "{}"
learning_rate = 1e-2
beta = 0.1

[data]
train_file = "{}"
max_len = 64
max_prompt_len = 16
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
        ),
    )
    .unwrap();
    (tmp, config)
}

fn dpo(config: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignkit"));
    cmd.args(["dpo", "--config"]).arg(config).args(extra);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn trains_plots_and_summarizes() {
    let (tmp, config) = setup();
    let out = dpo(&config, &["--max-steps", "3", "--beta", "0.2"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("done: 3 steps, loss "),
        "one summary line: {stdout}"
    );
    assert!(stdout.contains(", accuracy "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let run = tmp.path().join("run");
    assert!(run.join("final/model.safetensors").is_file());
    assert!(run.join("loss.svg").is_file());
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("beta = 0.2"), "--beta reaches the config");
    assert_eq!(metric_steps(&run), [1, 2, 3]);
}

#[test]
fn sigterm_saves_a_checkpoint_exits_130_and_resume_keeps_the_contract() {
    let (tmp, config) = setup();
    let run = tmp.path().join("run");
    let out = signal_at_checkpoint(&mut dpo(&config, &["--max-steps", "300"]), &run, 2, "-TERM");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stdout.starts_with("interrupted: "), "{stdout}");
    assert!(stdout.contains("(continue with --resume)"), "{stdout}");
    assert!(!run.join("final").exists());
    let done = metric_steps(&run).len();
    assert!(done < 300, "not interrupted: {done} steps");
    let saved = run.join(format!("checkpoints/step-{done}/trainer_state.json"));
    assert!(saved.is_file(), "the last step is checkpointed");

    // A changed β is refused in one line naming it; nothing is trained.
    let out = dpo(
        &config,
        &["--max-steps", "300", "--resume", "--beta", "0.5"],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot resume: 1 setting changed (beta 0.1 → 0.5)"),
        "{stderr}"
    );
    assert_eq!(metric_steps(&run).len(), done);

    // The same settings with a shorter end resume and finish.
    let end = (done + 3).to_string();
    let out = dpo(&config, &["--max-steps", &end, "--resume"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(resuming from step "), "{stderr}");
    assert!(
        stderr.contains("changed since the checkpoint: train.max_steps 300 → "),
        "{stderr}"
    );
    assert!(
        stdout.starts_with(&format!("done: {end} steps")),
        "{stdout}"
    );
    let want: Vec<u64> = (1..=done as u64 + 3).collect();
    assert_eq!(metric_steps(&run), want);
    assert!(run.join("final/model.safetensors").is_file());
}
