//! The sweep of issue 33 ("misleading messages"): each bad input gets one
//! line that names its cause (the flag, key or path), with its exit status —
//! 1 for our refusals, 2 for clap's — and is refused before any sampling or
//! training. Tiny models; every command here is a plan, a refusal or one step.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::json;

mod common;
use common::{alignkit, ok, tiny_model};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The one line of a refused command, with its exit status `code` (it did
/// not panic and printed nothing else: no sampling or training came first).
fn refused_with(out: &Output, code: i32) -> String {
    let line = common::refused(out);
    assert_eq!(out.status.code(), Some(code), "{line}");
    line
}

/// Prompts, one a line, at `dir/prompts.jsonl`.
fn prompts(dir: &Path, texts: &[&str]) -> PathBuf {
    let path = dir.join("prompts.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .map(|t| json!({ "prompt": t }).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A tiny model, prompts and an RL config at `dir/rl.toml` with a `[table]`
/// and `extra` TOML after a rule reward.
fn rl_config(dir: &Path, table: &str, table_body: &str, extra: &str) -> PathBuf {
    let model = tiny_model(&dir.join("model"));
    let prompts = prompts(dir, &["sky?", "grass?"]);
    let config = dir.join("rl.toml");
    std::fs::write(
        &config,
        format!(
            r#"model = "{}"
output_dir = "{}"

[{table}]
{table_body}

[data]
train_file = "{}"
max_prompt_len = 16

[rollout]
max_completion_length = 4

[[rewards]]
kind = "rule"
rule = {{ regex = "e" }}

[train]
batch_size = 2
max_steps = 1
{extra}"#,
            s(&model),
            s(&dir.join("run")),
            s(&prompts),
        ),
    )
    .unwrap();
    config
}

/// `alignkit grpo|rloo|ppo --help` offers no flag for a key their config
/// lacks (`data.max_len`, `data.validation_*`) or refuses
/// (`train.eval_steps`); the supervised trainers keep them.
#[test]
fn rl_commands_offer_only_the_flags_that_apply() {
    let supervised = [
        "--max-len",
        "--validation-file",
        "--validation-split",
        "--eval-steps",
    ];
    for command in ["grpo", "rloo", "ppo"] {
        let (help, _) = ok(&alignkit([command, "--help"]));
        for flag in supervised {
            assert!(!help.contains(flag), "`{command} --help` offers {flag}");
        }
        assert!(help.contains("--max-completion-length"), "{help}");
        // Before: `config: \`data.max_len\`: unknown field` after parsing the file.
        let out = alignkit([command, "--max-len", "64"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr.lines().next(),
            Some("error: unexpected argument '--max-len' found"),
            "{stderr}"
        );
    }
    for command in [&["sft"][..], &["dpo"], &["reward", "train"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let (help, _) = ok(&alignkit(args));
        for flag in supervised {
            assert!(help.contains(flag), "{command:?} lacks {flag}");
        }
    }
}

/// Was: "config: `data.max_prompt_len`: 16 leaves no room for a completion
/// within data.max_len 16".
#[test]
fn a_zero_completion_length_names_its_own_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = rl_config(tmp.path(), "grpo", "num_generations = 2", "");
    let line = refused_with(
        &alignkit([
            "grpo",
            "--config",
            s(&config),
            "--max-completion-length",
            "0",
        ]),
        1,
    );
    assert_eq!(
        line,
        "error: config: `rollout.max_completion_length`: must be at least 1"
    );
}

/// A causal LM where a reward model belongs: named as such before any
/// sampling, as `ppo.value_model` was (was: "missing tensor `score.weight`",
/// and for `eval winrate` only after generating both sides).
#[test]
fn a_causal_lm_is_not_taken_for_a_reward_model() {
    let tmp = tempfile::tempdir().unwrap();
    let lm = tiny_model(&tmp.path().join("lm"));
    let reward = format!("\n[[rewards]]\nkind = \"model\"\npath = \"{}\"\n", s(&lm));
    let config = rl_config(tmp.path(), "grpo", "num_generations = 2", &reward);
    let line = refused_with(&alignkit(["grpo", "--config", s(&config)]), 1);
    assert_eq!(
        line,
        format!(
            "error: config: `rewards[1].path`: {} is not a reward model (no *ForSequenceClassification architecture)",
            lm.display()
        )
    );
    assert!(!tmp.path().join("run").exists());

    let policy = tmp.path().join("model");
    let baseline = tiny_model(&tmp.path().join("baseline"));
    let prompts = tmp.path().join("prompts.jsonl");
    let judge = format!("reward:{}", s(&lm));
    let line = refused_with(
        &alignkit([
            "eval",
            "winrate",
            "--policy",
            s(&policy),
            "--baseline",
            s(&baseline),
            "--prompts",
            s(&prompts),
            "--judge",
            &judge,
            "--max-new-tokens",
            "2",
            "--out",
            s(&tmp.path().join("ev")),
        ]),
        1,
    );
    assert_eq!(
        line,
        format!(
            "error: --judge {judge}: {} is not a reward model (no *ForSequenceClassification architecture)",
            lm.display()
        )
    );
    assert!(!tmp.path().join("ev/generations").exists());
}

/// A pipeline whose stages' configs would fail is refused when planned —
/// in `--dry-run` and before its first stage trains — naming the stage and
/// the key (was: "run" for each, and the failure after the SFT stage; an
/// eval stage against itself: all ties).
#[test]
fn a_dry_run_refuses_a_stage_its_trainer_would_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny_model(&dir.join("model"));
    let lm = tiny_model(&dir.join("lm"));
    prompts(dir, &["sky?", "grass?"]);
    std::fs::write(
        dir.join("sft.jsonl"),
        json!({"prompt": "sky?", "completion": "blue."}).to_string() + "\n",
    )
    .unwrap();
    // After an SFT stage, so that its model is not yet there.
    let pipeline = |stage: &str| {
        format!(
            r#"model = "{}"
output_dir = "run"

[[stage]]
name = "sft"
kind = "sft"
[stage.config]
data.train_file = "sft.jsonl"
data.max_len = 32
train.batch_size = 1
train.max_steps = 1

{stage}"#,
            s(&model)
        )
    };
    let rl_data = r#"
[stage.config.data]
train_file = "prompts.jsonl"
max_prompt_len = 16
[stage.config.rollout]
max_completion_length = 4
[[stage.config.rewards]]
kind = "rule"
rule = { regex = "e" }
"#;
    let cases = [
        (
            format!(
                "[[stage]]\nname = \"grpo\"\nkind = \"grpo\"\n[stage.config.grpo]\nnum_generations = 1\n{rl_data}"
            ),
            "stage `grpo`: config: `grpo.num_generations`: 1: group-relative advantages need at least 2 completions per prompt".to_string(),
        ),
        (
            format!(
                "[[stage]]\nname = \"ppo\"\nkind = \"ppo\"\n[stage.config.ppo]\nvalue_model = \"{}\"\n{rl_data}",
                s(&lm)
            ),
            format!(
                "stage `ppo`: config: `ppo.value_model`: {} is not a reward or value model (no *ForSequenceClassification architecture)",
                lm.display()
            ),
        ),
        (
            "[[stage]]\nname = \"eval\"\nkind = \"eval\"\n[stage.config]\nprompts = \"prompts.jsonl\"\njudges = [\"rule:one-sentence\"]\nbaseline = \"sft\"\n"
                .to_string(),
            format!(
                "stage `eval`: its policy {} is its baseline: every prompt would tie",
                dir.join("run/sft/final").display()
            ),
        ),
    ];
    let file = dir.join("pipeline.toml");
    for (stage, expected) in cases {
        std::fs::write(&file, pipeline(&stage)).unwrap();
        for extra in [&["--dry-run"][..], &[]] {
            let mut args = vec!["run", s(&file)];
            args.extend_from_slice(extra);
            let line = refused_with(&alignkit(args), 1);
            assert!(
                line.starts_with(&format!("error: {}: {expected}", file.display())),
                "{line}"
            );
            assert!(!dir.join("run").exists(), "work started: {line}");
        }
    }
}

/// Negative numbers reach the check of their flag or key (was: clap's
/// "unexpected argument '-1' found", exit 2).
#[test]
fn negative_numbers_are_refused_by_their_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let config = rl_config(tmp.path(), "grpo", "num_generations = 2", "");
    let cases: [(&[&str], &str); 4] = [
        (
            &["grpo", "--learning-rate", "-1e-4"],
            "error: config: `learning_rate`: -0.0001 is not a non-negative number",
        ),
        (
            &["grpo", "--max-steps", "-1"],
            "error: --max-steps must be a non-negative integer, got -1",
        ),
        (
            &["grpo", "--num-generations", "-2"],
            "error: --num-generations must be a non-negative integer, got -2",
        ),
        (
            &["sft", "--seed", "-5"],
            "error: --seed must be a non-negative integer, got -5",
        ),
    ];
    for (args, expected) in cases {
        let mut args = args.to_vec();
        args.extend(["--config", s(&config)]);
        assert_eq!(refused_with(&alignkit(&args), 1), expected, "{args:?}");
    }
}

/// `--judgments` names the file given (was: the candidates file missing).
#[test]
fn a_missing_judgments_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let nope = tmp.path().join("nope.jsonl");
    let line = refused_with(&alignkit(["eval", "winrate", "--judgments", s(&nope)]), 1);
    assert_eq!(
        line,
        format!(
            "error: --judgments {}: the file does not exist",
            nope.display()
        )
    );
}

/// A binary eval.jsonl is named (was: "stream did not contain valid UTF-8").
#[test]
fn a_binary_eval_log_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.toml"), "[grpo]\nbeta = 0.1\n").unwrap();
    std::fs::write(run.join("eval.jsonl"), b"{\"step\": 1}\n\xff\xfe\x00\x01\n").unwrap();
    let line = refused_with(
        &alignkit([
            "eval",
            "frontier",
            s(&run),
            "--out",
            s(&tmp.path().join("f")),
        ]),
        1,
    );
    assert_eq!(
        line,
        format!(
            "error: reading {}: stream did not contain valid UTF-8",
            run.join("eval.jsonl").display()
        )
    );
}

/// A missing `ppo.value_model` says so (was: "DIR: DIR/config.json").
#[test]
fn a_missing_value_model_is_said_to_be_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let nope = tmp.path().join("nope");
    let body = format!("num_generations = 1\nvalue_model = \"{}\"", s(&nope));
    let config = rl_config(tmp.path(), "ppo", &body, "");
    let line = refused_with(&alignkit(["ppo", "--config", s(&config)]), 1);
    assert_eq!(
        line,
        format!(
            "error: config: `ppo.value_model`: {} does not exist",
            nope.display()
        )
    );
}

/// A directory given as a data file is said to be one, by the trainers'
/// check and where every data file is opened (was: "does not exist", and
/// "Is a directory (os error 21)").
#[test]
fn a_directory_given_as_a_data_file_is_named_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let line = refused_with(
        &alignkit([
            "sft",
            "--model",
            s(&model),
            "--train-file",
            s(&dir),
            "--output-dir",
            s(&tmp.path().join("run")),
        ]),
        1,
    );
    assert_eq!(
        line,
        format!(
            "error: config: `data.train_file`: {} is a directory, not a file",
            dir.display()
        )
    );
    let baseline = tiny_model(&tmp.path().join("baseline"));
    let line = refused_with(
        &alignkit([
            "eval",
            "winrate",
            "--policy",
            s(&model),
            "--baseline",
            s(&baseline),
            "--prompts",
            s(&dir),
            "--judge",
            "rule:one-sentence",
        ]),
        1,
    );
    assert_eq!(
        line,
        format!("error: {}: is a directory, not a file", dir.display())
    );
}

/// GRPO counts the prompts it cut to `data.max_prompt_len`, as DPO counts
/// truncated pairs (was: no count).
#[test]
fn grpo_counts_its_truncated_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = rl_config(tmp.path(), "grpo", "num_generations = 2", "");
    let long = "a".repeat(200);
    let prompts = prompts(tmp.path(), &["sky?", &long, "grass?"]);
    let (_, stderr) = ok(&alignkit([
        "grpo",
        "--config",
        s(&config),
        "--train-file",
        s(&prompts),
    ]));
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("GRPO: 3 prompts (1 truncated), "),
        "{stderr}"
    );
}

/// `eval drift` checks `--text` and `--window` before loading a model or
/// sampling (was: after sampling; here the policy's weights are missing, so
/// the old order failed on them instead).
#[test]
fn drift_checks_its_text_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tiny_model(&tmp.path().join("policy"));
    std::fs::remove_file(policy.join("model.safetensors")).unwrap();
    let reference = tiny_model(&tmp.path().join("reference"));
    let prompts = prompts(tmp.path(), &["sky?"]);
    let text = tmp.path().join("text.txt");
    std::fs::write(&text, "some general text.").unwrap();
    let nope = tmp.path().join("nope.txt");
    let drift = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "drift",
            "--policy",
            s(&policy),
            "--reference",
            s(&reference),
            "--prompts",
            s(&prompts),
        ];
        args.extend_from_slice(extra);
        alignkit(args)
    };
    let line = refused_with(&drift(&["--text", s(&nope)]), 1);
    assert_eq!(
        line,
        format!(
            "error: --text {}: No such file or directory (os error 2)",
            nope.display()
        )
    );
    let line = refused_with(&drift(&["--text", s(&text), "--window", "1"]), 1);
    assert_eq!(
        line,
        "error: --window must be in 2..=256 (the models' context), got 1"
    );
}

/// A final save killed mid-write leaves `.final.tmp-PID`; the next open of
/// the run removes such leftovers of dead processes, and keeps a live one's
/// (was: kept forever, even after a successful resume).
#[test]
fn leftovers_of_killed_atomic_writes_are_removed_when_a_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(&tmp.path().join("model"));
    let data = tmp.path().join("sft.jsonl");
    common::write_qa_sft(&data);
    let run = tmp.path().join("run");
    let args = [
        "sft",
        "--model",
        s(&model),
        "--train-file",
        s(&data),
        "--output-dir",
        s(&run),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--max-len",
        "32",
        "--lora-r",
        "2",
    ];
    ok(&alignkit(args));
    // A process that has ended: its id names no running process.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = [
        run.join(format!(".final.tmp-{dead}")),
        run.join(format!(".config.toml.tmp-{dead}")),
    ];
    std::fs::create_dir_all(&stale[0]).unwrap();
    std::fs::write(stale[0].join("model.safetensors"), b"partial").unwrap();
    std::fs::write(&stale[1], b"partial").unwrap();
    let live = run.join(format!(".final.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();

    let mut resume = args.to_vec();
    resume.push("--resume");
    ok(&alignkit(resume));
    for path in &stale {
        assert!(!path.exists(), "{} is left", path.display());
    }
    assert!(live.is_dir(), "a running process's temporary was removed");
    assert!(run.join("final/model.safetensors").is_file());
}

/// A model compared with itself is refused, by directory or by content
/// (was: all ties and no word).
#[test]
fn winrate_refuses_a_model_compared_with_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = tiny_model(&tmp.path().join("policy"));
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&policy).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    let prompts = prompts(tmp.path(), &["sky?"]);
    let out = tmp.path().join("ev");
    let winrate = |baseline: &Path| {
        alignkit([
            "eval",
            "winrate",
            "--policy",
            s(&policy),
            "--baseline",
            s(baseline),
            "--prompts",
            s(&prompts),
            "--judge",
            "rule:one-sentence",
            "--max-new-tokens",
            "2",
            "--out",
            s(&out),
        ])
    };
    let tail = "every prompt would tie; compare two different models";
    let same_dir = tmp.path().join("./policy");
    assert_eq!(
        refused_with(&winrate(&same_dir), 1),
        format!(
            "error: --policy {} and --baseline {} are the same directory: {tail}",
            policy.display(),
            same_dir.display()
        )
    );
    assert_eq!(
        refused_with(&winrate(&copy), 1),
        format!(
            "error: --policy {} and --baseline {} are the same model (identical files): {tail}",
            policy.display(),
            copy.display()
        )
    );
    assert!(!out.join("generations").exists());
}
