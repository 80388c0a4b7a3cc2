//! `alignkit grpo`, `alignkit rloo` and `alignkit ppo` on a tiny random model: a run writes
//! `final/`, the loss plot and the reward/KL/length curves and prints one
//! summary line; SIGTERM saves a checkpoint and exits 130; `--resume` refuses
//! a changed β in one line and finishes with the same settings; each command
//! refuses the other's config, and bad input is one line before any work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{metric_steps, signal_at_checkpoint, tiny_model};
use serde_json::json;

/// A tiny model, prompts and a config holding `table` (`[grpo]` or `[rloo]`).
fn setup(table: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(&dir.join("model"));
    let mut prompts = String::new();
    for (i, w) in ["sky", "grass", "snow", "coal", "sun", "sea"]
        .iter()
        .enumerate()
    {
        let rec = json!({"prompt": format!("{w}?"), "keys": [w], "n": i});
        prompts.push_str(&rec.to_string());
        prompts.push('\n');
    }
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let config = dir.join("rl.toml");
    std::fs::write(
        &config,
        format!(
            r#"model = "{}"
output_dir = "{}"
learning_rate = 1e-2

[{table}]
num_generations = 4
beta = 0.05

[data]
train_file = "{}"
max_prompt_len = 16
text_as_chat = true

[rollout]
max_completion_length = 8
log_completions_steps = 1

[[rewards]]
kind = "rule"
rule = {{ regex = "e" }}

[[rewards]]
kind = "rule"
rule = {{ json_keys_from = "keys" }}
weight = 0.5

[train]
batch_size = 4
grad_accum = 2
save_steps = 1

[lora]
r = 4
alpha = 8
"#,
            dir.join("model").display(),
            dir.join("run").display(),
            dir.join("prompts.jsonl").display(),
        ),
    )
    .unwrap();
    (tmp, config)
}

fn alignkit(command: &str, config: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignkit"));
    cmd.args([command, "--config"]).arg(config).args(extra);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn grpo_and_rloo_train_plot_and_summarize() {
    for command in ["grpo", "rloo"] {
        let (tmp, config) = setup(command);
        let out = alignkit(command, &config, &["--max-steps", "2", "--beta", "0.1"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{command}: {stderr}");
        assert!(
            stdout.starts_with("done: 2 steps") && stdout.contains(", reward "),
            "{command}: one summary line: {stdout}"
        );
        assert!(stdout.contains(", kl "), "{stdout}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            stderr.contains(&format!("{}: 6 prompts", command.to_uppercase())),
            "{stderr}"
        );
        assert!(
            stderr.contains("rewards regex + json_keys"),
            "{command}: {stderr}"
        );
        let run = tmp.path().join("run");
        assert!(run.join("final/model.safetensors").is_file());
        assert!(run.join("loss.svg").is_file());
        let curves = std::fs::read_to_string(run.join("curves.svg")).unwrap();
        for label in ["reward (mean)", "KL to the reference", "completion length"] {
            assert!(
                curves.contains(label),
                "{command}: curves.svg lacks {label}"
            );
        }
        assert_eq!(metric_steps(&run), [1, 2]);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains("beta = 0.1"), "--beta reaches the config");
        let logged = std::fs::read_to_string(run.join("completions.jsonl")).unwrap();
        assert!(logged.lines().count() >= 2, "{logged}");
    }
}

#[test]
fn ppo_trains_a_policy_and_a_critic_plots_and_summarizes() {
    let (tmp, config) = setup("ppo");
    let text_before = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_before.replace("beta = 0.05", "kl_coef = 0.05\nnum_mini_batches = 2"),
    )
    .unwrap();
    let out = alignkit("ppo", &config, &["--max-steps", "2", "--beta", "0.1"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("done: 2 steps")
            && stdout.contains(", score ")
            && stdout.contains(", kl ")
            && stdout.contains(", value loss "),
        "one summary line: {stdout}"
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stderr.contains("PPO: 6 prompts"), "{stderr}");
    assert!(
        stderr.contains("critic: the policy's weights with a fresh value head"),
        "{stderr}"
    );
    let run = tmp.path().join("run");
    assert!(run.join("final/model.safetensors").is_file());
    assert!(
        run.join("checkpoints/step-2/critic/adapter_model.safetensors")
            .is_file()
    );
    let curves = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    for label in ["score (mean)", "sequence KL", "value loss"] {
        assert!(curves.contains(label), "curves.svg lacks {label}");
    }
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(written.contains("kl_coef = 0.1"), "--beta sets ppo.kl_coef");
    let e = refused("grpo", &config, |c| c);
    assert!(e.contains("no [grpo] table"), "{e}");
    let e = refused("ppo", &config, |c| {
        c.replace("num_mini_batches = 2", "num_mini_batches = 3")
    });
    assert!(e.contains("ppo.num_mini_batches"), "{e}");
}

#[test]
fn sigterm_saves_a_checkpoint_exits_130_and_resume_keeps_the_contract() {
    let (tmp, config) = setup("grpo");
    let run = tmp.path().join("run");
    let out = signal_at_checkpoint(
        &mut alignkit("grpo", &config, &["--max-steps", "300"]),
        &run,
        2,
        "-TERM",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stdout.starts_with("interrupted: "), "{stdout}");
    assert!(stdout.contains("(continue with --resume)"), "{stdout}");
    assert!(!run.join("final").exists());
    let done = metric_steps(&run).len();
    assert!(done < 300, "not interrupted: {done} steps");
    assert!(
        run.join(format!("checkpoints/step-{done}/trainer_state.json"))
            .is_file(),
        "the last step is checkpointed"
    );

    // A changed β is refused in one line naming it; nothing is trained.
    let out = alignkit(
        "grpo",
        &config,
        &["--max-steps", "300", "--resume", "--beta", "0.5"],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot resume: 1 setting changed (grpo.beta 0.05 → 0.5)"),
        "{stderr}"
    );
    assert_eq!(metric_steps(&run).len(), done);

    // The same settings with a nearer end resume and finish.
    let end = (done + 2).to_string();
    let out = alignkit("grpo", &config, &["--max-steps", &end, "--resume"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(resuming from step "), "{stderr}");
    assert!(
        stdout.starts_with(&format!("done: {end} steps")),
        "{stdout}"
    );
    let want: Vec<u64> = (1..=done as u64 + 2).collect();
    assert_eq!(metric_steps(&run), want);
}

/// Runs `command` with `config` edited by `edit`; returns its one error line.
fn refused(command: &str, config: &Path, edit: impl Fn(String) -> String) -> String {
    let text_before = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, edit(text_before.clone())).unwrap();
    let out = alignkit(command, config, &["--max-steps", "1"])
        .output()
        .unwrap();
    std::fs::write(config, text_before).unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn bad_input_is_one_line_before_any_work() {
    let (tmp, config) = setup("grpo");
    let run = tmp.path().join("run");

    let e = refused("rloo", &config, |c| c);
    assert!(e.contains("no [rloo] table"), "{e}");
    let e = refused("grpo", &config, |c| {
        c.replace("num_generations = 4", "num_generations = 1")
    });
    assert!(
        e.contains("grpo.num_generations") && e.contains("at least 2"),
        "{e}"
    );
    let e = refused("grpo", &config, |c| {
        c.replace(
            "kind = \"rule\"\nrule = { regex = \"e\" }",
            "kind = \"oracle\"",
        )
    });
    assert!(e.contains("oracle"), "{e}");
    let prompts = tmp.path().join("prompts.jsonl");
    let kept = std::fs::read_to_string(&prompts).unwrap();
    std::fs::write(&prompts, "{\"question\": \"sky?\"}\n").unwrap();
    let e = refused("grpo", &config, |c| c);
    assert!(e.contains("prompts.jsonl:1"), "{e}");
    // A record without the keys its rule reads names its line.
    std::fs::write(&prompts, format!("{kept}{{\"prompt\": \"moon?\"}}\n")).unwrap();
    let e = refused("grpo", &config, |c| c);
    assert!(
        e.contains("prompts.jsonl:7") && e.contains("json-keys-from=keys"),
        "{e}"
    );
    assert!(
        !run.join("checkpoints").exists(),
        "nothing was trained: {:?}",
        std::fs::read_dir(&run).map(|d| d.count())
    );
}
