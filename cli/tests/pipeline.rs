//! `alignkit run pipeline.toml` end to end on a tiny random model: skip,
//! resume after a kill, re-run downstream of a change, `--dry-run`, a GRPO
//! stage rewarded by a reward stage and an eval stage judging it, and bad
//! input reported before any work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{QA, metric_steps, tiny_model};

fn write_data(dir: &Path) {
    let mut sft = String::new();
    let mut prefs = String::new();
    for (q, c, r) in QA {
        let prompt = json!([{"role": "user", "content": q}]);
        sft.push_str(
            &json!({"prompt": prompt, "completion": [{"role": "assistant", "content": c}]})
                .to_string(),
        );
        sft.push('\n');
        prefs.push_str(
            &json!({"prompt": prompt,
                    "chosen": [{"role": "assistant", "content": c}],
                    "rejected": [{"role": "assistant", "content": r}]})
            .to_string(),
        );
        prefs.push('\n');
    }
    std::fs::write(dir.join("sft.jsonl"), sft).unwrap();
    std::fs::write(dir.join("prefs.jsonl"), prefs).unwrap();
}

/// A three-stage pipeline over the tiny model.
fn pipeline(sft_lr: &str, beta: &str, dpo_steps: usize) -> String {
    format!(
        r#"model = "model"
output_dir = "run"

[[stage]]
name = "sft"
kind = "sft"
[stage.config]
learning_rate = {sft_lr}
data.train_file = "sft.jsonl"
data.max_len = 64
train.batch_size = 2
train.max_steps = 4
train.save_steps = 2
lora.r = 4
lora.alpha = 8

[[stage]]
name = "dpo"
kind = "dpo"
[stage.config]
learning_rate = 5e-3
beta = {beta}
data.train_file = "prefs.jsonl"
data.max_len = 64
data.max_prompt_len = 32
train.batch_size = 2
train.max_steps = {dpo_steps}
train.save_steps = 1
lora.r = 4
lora.alpha = 8

[[stage]]
name = "export"
kind = "export"
"#
    )
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Fixture {
    fn new(pipeline_toml: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        tiny_model(&dir.join("model"));
        write_data(&dir);
        std::fs::write(dir.join("pipeline.toml"), pipeline_toml).unwrap();
        Self { _tmp: tmp, dir }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_alignkit"));
        cmd.arg("run")
            .arg(self.dir.join("pipeline.toml"))
            .args(extra);
        cmd.env("ALIGNKIT_CACHE", self.dir.join("cache"));
        cmd
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.command(extra).output().unwrap()
    }

    fn ok(&self, extra: &[&str]) -> String {
        let out = self.run(extra);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "alignkit run failed:\n{text}");
        text
    }

    fn err(&self, extra: &[&str]) -> String {
        let out = self.run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "expected an error:\n{stderr}");
        stderr
    }

    fn manifest(&self, stage: &str) -> serde_json::Value {
        let p = self.dir.join("run").join(stage).join("manifest.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    fn steps(&self, stage: &str) -> Vec<u64> {
        metric_steps(&self.dir.join("run").join(stage))
    }

    /// With `toml_text` as the pipeline, `alignkit run` fails with a one-line
    /// error containing `expected` before it starts any work.
    fn fails_before_work(&self, toml_text: &str, expected: &str) {
        std::fs::write(self.dir.join("pipeline.toml"), toml_text).unwrap();
        for extra in [&["--dry-run"][..], &[]] {
            let err = self.err(extra);
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
            assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
            assert!(!self.dir.join("run").exists(), "work started: {err}");
        }
    }

    /// Run the pipeline and kill -9 it once `stage` has checkpoint `step`.
    fn kill_at_checkpoint(&self, stage: &str, step: usize) {
        let mut child = self
            .command(&[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ckpt = self
            .dir
            .join("run")
            .join(stage)
            .join(format!("checkpoints/step-{step}"));
        let started = Instant::now();
        while !ckpt.is_dir() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the pipeline ended before it could be killed"
            );
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no {stage} checkpoint"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// The plan line of `stage` from `--dry-run` output: (action, reason).
fn plan_line(text: &str, stage: &str) -> (String, String) {
    let line = text
        .lines()
        .find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 3 && w[1] == stage
        })
        .unwrap_or_else(|| panic!("no plan line for {stage} in:\n{text}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[3].to_string(), w[4..].join(" "))
}

#[test]
fn killed_dpo_resumes_and_sft_is_skipped() {
    let f = Fixture::new(&pipeline("1e-2", "0.1", 200));
    let dry = f.ok(&["--dry-run"]);
    for stage in ["sft", "dpo", "export"] {
        assert_eq!(plan_line(&dry, stage).0, "run", "{dry}");
    }
    assert!(!f.dir.join("run").exists(), "--dry-run did work");

    // Kill -9 once DPO has a few complete checkpoints.
    f.kill_at_checkpoint("dpo", 3);
    assert_eq!(f.manifest("dpo")["status"], "running");
    let sft_started = f.manifest("sft")["started_at"].clone();
    let sft_steps = f.steps("sft");

    let dry = f.ok(&["--dry-run"]);
    assert_eq!(plan_line(&dry, "sft").0, "skip", "{dry}");
    let (action, reason) = plan_line(&dry, "dpo");
    assert_eq!(action, "resume", "{dry}");
    assert!(reason.contains("resuming from its checkpoint"), "{reason}");
    assert_eq!(plan_line(&dry, "export").0, "run", "{dry}");

    let text = f.ok(&[]);
    assert!(text.contains("[1/3 sft] skip"), "{text}");
    assert!(text.contains("resuming from step"), "{text}");
    assert_eq!(f.manifest("sft")["started_at"], sft_started);
    assert_eq!(f.steps("sft"), sft_steps);
    // One run's metrics: every step once, in order, the resumed ones included.
    assert_eq!(f.steps("dpo"), (1..=200).collect::<Vec<_>>());
    for stage in ["sft", "dpo", "export"] {
        assert_eq!(f.manifest(stage)["status"], "completed", "{stage}");
    }
    assert!(f.dir.join("run/export/model/model.safetensors").is_file());
    let dpo = f.manifest("dpo");
    assert!(
        dpo["final_metrics"]["rewards/accuracies"].is_number(),
        "{dpo}"
    );
    assert_eq!(dpo["inputs"]["model"]["from"], "sft");
    assert_eq!(
        dpo["inputs"]["data"][0]["sha256"].as_str().unwrap().len(),
        64
    );

    // Nothing changed: everything is skipped.
    let text = f.ok(&[]);
    for (k, stage) in ["sft", "dpo", "export"].iter().enumerate() {
        assert!(
            text.contains(&format!("[{}/3 {stage}] skip", k + 1)),
            "{text}"
        );
    }
}

#[test]
fn a_change_reruns_that_stage_and_later_ones_only() {
    let f = Fixture::new(&pipeline("1e-2", "0.1", 4));
    f.ok(&[]);
    let started = |s: &str| f.manifest(s)["started_at"].as_u64().unwrap();
    let sha = |s: &str| f.manifest(s)["sha256"].as_str().unwrap().to_string();
    let (sft_sha, dpo_sha) = (sha("sft"), sha("dpo"));
    let sft_started = started("sft");

    // A new β: SFT is skipped, DPO and the export re-run.
    std::fs::write(f.dir.join("pipeline.toml"), pipeline("1e-2", "0.5", 4)).unwrap();
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(plan_line(&dry, "sft").0, "skip", "{dry}");
    assert_eq!(
        plan_line(&dry, "dpo"),
        ("run".into(), "config changed (`beta`)".into()),
        "{dry}"
    );
    assert_eq!(
        plan_line(&dry, "export"),
        ("run".into(), "upstream stage `dpo` runs".into()),
        "{dry}"
    );
    let text = f.ok(&[]);
    assert!(text.contains("[1/3 sft] skip"), "{text}");
    assert_eq!(started("sft"), sft_started);
    assert_eq!(sha("sft"), sft_sha);
    assert_ne!(sha("dpo"), dpo_sha);
    assert_eq!(f.manifest("dpo")["config"]["beta"], 0.5);
    assert_eq!(f.steps("dpo"), vec![1, 2, 3, 4]);

    // A new SFT learning rate: everything re-runs.
    std::fs::write(f.dir.join("pipeline.toml"), pipeline("2e-2", "0.5", 4)).unwrap();
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(
        plan_line(&dry, "sft"),
        ("run".into(), "config changed (`learning_rate`)".into())
    );
    assert_eq!(
        plan_line(&dry, "dpo"),
        ("run".into(), "upstream stage `sft` runs".into())
    );

    // Changed data: the stage that reads it re-runs.
    let prefs = f.dir.join("prefs.jsonl");
    let mut text = std::fs::read_to_string(&prefs).unwrap();
    text.push_str(
        &json!({"prompt": "sea?", "chosen": "blue.", "rejected": "blue. the sea is big."})
            .to_string(),
    );
    text.push('\n');
    std::fs::write(&prefs, text).unwrap();
    std::fs::write(f.dir.join("pipeline.toml"), pipeline("1e-2", "0.5", 4)).unwrap();
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(plan_line(&dry, "sft").0, "skip", "{dry}");
    let (action, reason) = plan_line(&dry, "dpo");
    assert_eq!(action, "run");
    assert!(
        reason.starts_with("data file") && reason.contains("prefs.jsonl"),
        "{reason}"
    );
}

/// Finished stages are not re-run for what cannot change their result: an
/// upgrade that adds config keys (at their defaults), a moved project, or
/// activation checkpointing turned on. A removed key still re-runs.
#[test]
fn upgrades_moves_and_checkpointing_skip_finished_stages() {
    let mut f = Fixture::new(&pipeline("1e-2", "0.1", 2));
    f.ok(&[]);
    let started = |f: &Fixture, s: &str| f.manifest(s)["started_at"].as_u64().unwrap();
    let before: Vec<u64> = ["sft", "dpo", "export"]
        .iter()
        .map(|s| started(&f, s))
        .collect();
    let all_skipped = |f: &Fixture, why: &str| {
        let dry = f.ok(&["--dry-run"]);
        for stage in ["sft", "dpo", "export"] {
            assert_eq!(
                plan_line(&dry, stage),
                ("skip".into(), "unchanged since it completed".into()),
                "{why}:\n{dry}"
            );
        }
    };

    // The manifests an older alignkit wrote: without `recompute_granularity`
    // (added since), so each stage's identity, and the chain, differ.
    let rewrite = |f: &Fixture, edit: &dyn Fn(&str, &mut serde_json::Value)| {
        for stage in ["sft", "dpo", "export"] {
            let path = f.dir.join("run").join(stage).join("manifest.json");
            let mut m = f.manifest(stage);
            edit(stage, &mut m);
            std::fs::write(path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        }
    };
    rewrite(&f, &|stage, m| {
        if let Some(train) = m["config"].get_mut("train").and_then(|t| t.as_object_mut()) {
            train.remove("recompute_granularity");
        }
        m["sha256"] = json!(format!("older-{stage}"));
        let upstream = match stage {
            "dpo" => "older-sft",
            "export" => "older-dpo",
            _ => return,
        };
        m["inputs"]["model"]["sha256"] = json!(upstream);
    });
    all_skipped(&f, "after an upgrade");

    // The project moved: every path in the configs differs.
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("project");
    std::fs::rename(&f.dir, &to).unwrap();
    f.dir = to;
    all_skipped(&f, "after a move");

    // Activation checkpointing turned on for SFT: how it computes, not what.
    let toml = pipeline("1e-2", "0.1", 2).replace(
        "train.max_steps = 4",
        "train.max_steps = 4\ntrain.gradient_checkpointing = true\ntrain.recompute_granularity = \"selective\"",
    );
    std::fs::write(f.dir.join("pipeline.toml"), &toml).unwrap();
    all_skipped(&f, "with checkpointing");
    let text = f.ok(&[]);
    assert!(text.contains("[1/3 sft] skip"), "{text}");
    let after: Vec<u64> = ["sft", "dpo", "export"]
        .iter()
        .map(|s| started(&f, s))
        .collect();
    assert_eq!(after, before, "a finished stage re-ran");

    // A key this version no longer knows: that stage and the later ones re-run.
    rewrite(&f, &|stage, m| {
        if stage == "sft" {
            m["config"]["train"]["retired_option"] = json!(1);
        }
    });
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(
        plan_line(&dry, "sft"),
        (
            "run".into(),
            "config changed (`train.retired_option`)".into()
        ),
        "{dry}"
    );
    assert_eq!(plan_line(&dry, "dpo").0, "run", "{dry}");
}

#[test]
fn bad_pipelines_fail_before_any_work() {
    let base = pipeline("1e-2", "0.1", 4);
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("kind = \"dpo\"", "kind = \"ppo2\""),
            "unknown variant `ppo2`",
        ),
        (
            base.replace("kind = \"sft\"\n", "kind = \"sft\"\nfrom = \"dpo\"\n"),
            "stages form a cycle through `from`: ",
        ),
        (
            base.replace("kind = \"dpo\"\n", "kind = \"dpo\"\nfrom = \"sfft\"\n"),
            "`from = \"sfft\"` names no stage",
        ),
        (
            base.replace("model = \"model\"", "model = \"nope\""),
            "no config.json",
        ),
        (
            base.replace("\"prefs.jsonl\"", "\"missing.jsonl\""),
            "missing.jsonl does not exist",
        ),
        (
            base.replace("beta = 0.1", "beta = 0.1\nbta = 2"),
            "unknown field `bta`",
        ),
        (
            base.replace("beta = 0.1", "beta = 0.1\noutput_dir = \"x\""),
            "`output_dir` is set by the pipeline",
        ),
    ];
    let f = Fixture::new(&base);
    for (toml_text, expected) in cases {
        f.fails_before_work(&toml_text, expected);
    }

    // Identical chosen and rejected, named by file and line.
    std::fs::write(f.dir.join("pipeline.toml"), &base).unwrap();
    let prefs = f.dir.join("prefs.jsonl");
    let mut text = std::fs::read_to_string(&prefs).unwrap();
    text.push_str(&json!({"prompt": "x?", "chosen": "same.", "rejected": "same."}).to_string());
    text.push('\n');
    std::fs::write(&prefs, text).unwrap();
    let err = f.err(&[]);
    assert!(
        err.contains("prefs.jsonl:7: `chosen` and `rejected` are identical"),
        "{err}"
    );
    assert!(!f.dir.join("run").exists());
}

/// SFT, a reward model on the SFT backbone, DPO on the SFT policy (not the
/// reward model), and a merged export of the reward model. `rm_steps` sizes
/// the reward stage.
fn reward_pipeline(rm_data: &str, rm_steps: usize) -> String {
    let sft_dpo = pipeline("1e-2", "0.1", 4);
    let (sft, dpo) = sft_dpo
        .split_once("[[stage]]\nname = \"dpo\"")
        .expect("the dpo stage");
    let dpo = dpo.split("[[stage]]").next().expect("dpo's table");
    format!(
        r#"{sft}[[stage]]
name = "rm"
kind = "reward"
[stage.config]
learning_rate = 1e-2
{rm_data}
data.validation_file = "prefs.jsonl"
data.max_len = 64
train.batch_size = 2
train.max_steps = {rm_steps}
train.save_steps = 1
train.eval_steps = {rm_steps}
lora.r = 4
lora.alpha = 8

[[stage]]
name = "dpo"{dpo}[[stage]]
name = "rm-export"
kind = "export"
from = "rm"
"#
    )
}

const RM_DATA: &str = "data.train_file = \"prefs.jsonl\"";

fn reward_score(model: &Path, data: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["reward", "score", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn reward_stage_trains_on_the_policy_and_dpo_takes_the_policy() {
    let f = Fixture::new(&reward_pipeline(RM_DATA, 4));
    let dry = f.ok(&["--dry-run"]);
    for stage in ["sft", "rm", "dpo", "rm-export"] {
        assert_eq!(plan_line(&dry, stage).0, "run", "{dry}");
    }
    let rm_line = dry.lines().find(|l| l.contains(" rm ")).unwrap();
    assert_eq!(rm_line.split_whitespace().nth(2), Some("reward"), "{dry}");
    assert!(!f.dir.join("run").exists(), "--dry-run did work");

    let text = f.ok(&[]);
    assert!(text.contains("[2/4 rm] run"), "{text}");
    for stage in ["sft", "rm", "dpo", "rm-export"] {
        assert_eq!(f.manifest(stage)["status"], "completed", "{stage}");
    }
    // The reward model starts from the SFT model; DPO takes the SFT policy,
    // not the reward model before it.
    let rm = f.manifest("rm");
    assert_eq!(rm["kind"], "reward");
    assert_eq!(rm["inputs"]["model"]["from"], "sft");
    assert_eq!(f.manifest("dpo")["inputs"]["model"]["from"], "sft");
    assert_eq!(f.manifest("rm-export")["inputs"]["model"]["from"], "rm");
    assert_eq!(f.steps("rm"), vec![1, 2, 3, 4]);
    assert!(rm["final_metrics"]["eval_accuracy"].is_number(), "{rm}");
    assert!(rm["final_metrics"]["eval_margin"].is_number(), "{rm}");
    assert!(f.dir.join("run/rm/loss.svg").is_file());

    // The reward stage's output and its export are the same reward model.
    let final_dir = f.dir.join("run/rm/final");
    let exported = f.dir.join("run/rm-export/model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert!(exported.join("tokenizer.json").is_file());
    let prefs = f.dir.join("prefs.jsonl");
    let scores = reward_score(&final_dir, &prefs);
    assert_eq!(scores.len(), QA.len());
    for s in &scores {
        assert!(s["margin"].as_f64().unwrap().is_finite(), "{s}");
    }
    assert_eq!(reward_score(&exported, &prefs), scores);

    // Nothing changed: everything is skipped.
    let text = f.ok(&[]);
    for (k, stage) in ["sft", "rm", "dpo", "rm-export"].iter().enumerate() {
        assert!(
            text.contains(&format!("[{}/4 {stage}] skip", k + 1)),
            "{text}"
        );
    }

    // A new reward config re-runs the reward stage and its export only.
    std::fs::write(
        f.dir.join("pipeline.toml"),
        reward_pipeline(RM_DATA, 4).replace(
            &format!("learning_rate = 1e-2\n{RM_DATA}"),
            &format!("learning_rate = 2e-2\n{RM_DATA}"),
        ),
    )
    .unwrap();
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(plan_line(&dry, "sft").0, "skip", "{dry}");
    assert_eq!(
        plan_line(&dry, "rm"),
        ("run".into(), "config changed (`learning_rate`)".into()),
        "{dry}"
    );
    assert_eq!(plan_line(&dry, "dpo").0, "skip", "{dry}");
    assert_eq!(
        plan_line(&dry, "rm-export"),
        ("run".into(), "upstream stage `rm` runs".into()),
        "{dry}"
    );
}

#[test]
fn killed_reward_stage_resumes() {
    let f = Fixture::new(&reward_pipeline(RM_DATA, 100));
    f.kill_at_checkpoint("rm", 3);
    assert_eq!(f.manifest("rm")["status"], "running");

    let dry = f.ok(&["--dry-run"]);
    assert_eq!(plan_line(&dry, "sft").0, "skip", "{dry}");
    let (action, reason) = plan_line(&dry, "rm");
    assert_eq!(action, "resume", "{dry}");
    assert!(reason.contains("resuming from its checkpoint"), "{reason}");
    assert_eq!(plan_line(&dry, "dpo").0, "run", "{dry}");

    let text = f.ok(&[]);
    assert!(text.contains("resuming from step"), "{text}");
    assert_eq!(f.steps("rm"), (1..=100).collect::<Vec<_>>());
    assert_eq!(f.manifest("rm")["status"], "completed");
    assert!(f.dir.join("run/rm/final/model.safetensors").is_file());
}

#[test]
fn bad_reward_stages_fail_before_any_work() {
    let base = reward_pipeline(RM_DATA, 4);
    let cases: Vec<(String, &str)> = vec![
        (
            reward_pipeline("data.train_file = \"missing.jsonl\"", 4),
            "missing.jsonl does not exist",
        ),
        (reward_pipeline("", 4), "`data.train_file` is required"),
        (
            base.replace(
                &format!("learning_rate = 1e-2\n{RM_DATA}"),
                &format!("learning_rate = 1e-2\n{RM_DATA}\nbeta = 0.1"),
            ),
            "stage `rm`: [stage.config]: unknown field `beta`",
        ),
        (
            base.replace("kind = \"dpo\"\n", "kind = \"dpo\"\nfrom = \"rm\"\n"),
            "takes its model from `rm`, a reward model, not a policy",
        ),
        (
            format!("{base}[stage.config]\nformat = \"adapter\"\n"),
            "`rm` is a reward model",
        ),
    ];
    let f = Fixture::new(&base);
    for (toml_text, expected) in cases {
        f.fails_before_work(&toml_text, expected);
    }

    // Identical chosen and rejected in the reward data, named by file and line.
    let mut text = std::fs::read_to_string(f.dir.join("prefs.jsonl")).unwrap();
    text.push_str(&json!({"prompt": "x?", "chosen": "same.", "rejected": "same."}).to_string());
    text.push('\n');
    std::fs::write(f.dir.join("rm-prefs.jsonl"), text).unwrap();
    f.fails_before_work(
        &reward_pipeline("data.train_file = \"rm-prefs.jsonl\"", 4),
        "rm-prefs.jsonl:7: `chosen` and `rejected` are identical",
    );
}

/// `{"prompt"}` per question of [`QA`], for GRPO and the eval.
fn write_prompts(dir: &Path) {
    let mut prompts = String::new();
    for (q, _, _) in QA {
        prompts.push_str(&json!({ "prompt": q }).to_string());
        prompts.push('\n');
    }
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
}

/// A reward model on the base model, GRPO rewarded by its model (and a
/// rule), an eval of the GRPO policy against the base model judged by a rule
/// and the reward stage, and an adapter export, which takes the GRPO policy
/// (an eval outputs no model). `rm_lr` is the reward stage's learning rate.
fn rl_pipeline(rm_lr: &str) -> String {
    format!(
        r#"model = "model"
output_dir = "run"

[[stage]]
name = "rm"
kind = "reward"
[stage.config]
learning_rate = {rm_lr}
data.train_file = "prefs.jsonl"
data.max_len = 64
train.batch_size = 2
train.max_steps = 2
lora.r = 4
lora.alpha = 8

[[stage]]
name = "grpo"
kind = "grpo"
[stage.config]
learning_rate = 1e-2
grpo.num_generations = 2
data.train_file = "prompts.jsonl"
data.max_prompt_len = 16
rollout.max_completion_length = 4
train.batch_size = 4
train.max_steps = 2
lora.r = 4
lora.alpha = 8
[[stage.config.rewards]]
kind = "model"
stage = "rm"
[[stage.config.rewards]]
kind = "rule"
rule = {{ regex = "e" }}
weight = 0.5

[[stage]]
name = "eval"
kind = "eval"
[stage.config]
prompts = "prompts.jsonl"
judges = ["rule:one-sentence", "reward:rm"]
max_new_tokens = 4

[[stage]]
name = "adapter"
kind = "export"
[stage.config]
format = "adapter"
"#
    )
}

const RL_ORDER: [&str; 4] = ["rm", "grpo", "eval", "adapter"];

#[test]
fn grpo_rewarded_by_a_reward_stage_then_evaluated() {
    let f = Fixture::new(&rl_pipeline("1e-2"));
    write_prompts(&f.dir);
    let dry = f.ok(&["--dry-run"]);
    for (k, stage) in RL_ORDER.iter().enumerate() {
        assert!(
            dry.contains(&format!("  {}. {stage} ", k + 1)),
            "{stage} not at {}:\n{dry}",
            k + 1
        );
        assert_eq!(plan_line(&dry, stage).0, "run", "{dry}");
    }

    let text = f.ok(&[]);
    for stage in RL_ORDER {
        assert_eq!(f.manifest(stage)["status"], "completed", "{stage}");
    }
    let (rm, grpo, eval) = (f.manifest("rm"), f.manifest("grpo"), f.manifest("eval"));
    // GRPO: the base model as its policy, the reward stage's model as a reward.
    assert_eq!(grpo["kind"], "grpo");
    assert!(grpo["inputs"]["model"]["from"].is_null(), "{grpo}");
    let reward = &grpo["inputs"]["models"]["rewards[0]"];
    assert_eq!(reward["from"], "rm");
    assert_eq!(reward["sha256"], rm["sha256"]);
    let rm_final = f.dir.join("run/rm/final");
    assert_eq!(
        grpo["config"]["rewards"][0]["path"],
        rm_final.display().to_string()
    );
    assert!(grpo["config"]["rewards"][0].get("stage").is_none());
    assert_eq!(grpo["config"]["grpo"]["num_generations"], 2);
    assert_eq!(f.steps("grpo"), vec![1, 2]);
    assert!(
        grpo["final_metrics"]["rewards/reward_model/mean"].is_number(),
        "{grpo}"
    );
    assert!(f.dir.join("run/grpo/final/model.safetensors").is_file());

    // The eval: the GRPO policy against the base model, its report recorded.
    assert_eq!(eval["inputs"]["model"]["from"], "grpo");
    assert_eq!(eval["inputs"]["models"]["judges[1]"]["from"], "rm");
    assert_eq!(
        eval["inputs"]["models"]["baseline"]["path"],
        f.dir.join("model").display().to_string()
    );
    assert_eq!(
        eval["inputs"]["data"][0]["sha256"].as_str().unwrap().len(),
        64
    );
    let out = f.dir.join("run/eval");
    assert_eq!(
        eval["outputs"]["report"],
        out.join("winrate.json").display().to_string()
    );
    assert!(eval["outputs"].get("model").is_none(), "{eval}");
    let judges = eval["final_metrics"]["judges"].as_array().unwrap();
    let names: Vec<&str> = judges
        .iter()
        .map(|j| j["judge"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rule:one-sentence", "reward:rm"]);
    for j in judges {
        let r = &j["result"];
        assert_eq!(r["n"], QA.len(), "{j}");
        let counted: u64 = ["wins", "ties", "losses"]
            .iter()
            .map(|k| r[k].as_u64().unwrap())
            .sum();
        assert_eq!(counted, QA.len() as u64, "{j}");
        assert!(
            (0.0..=1.0).contains(&r["win_rate"].as_f64().unwrap()),
            "{j}"
        );
    }
    for file in ["winrate.json", "winrate.svg", "responses.jsonl"] {
        assert!(out.join(file).is_file(), "no {file}");
    }
    assert!(out.join("generations").is_dir());
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("winrate.json")).unwrap()).unwrap();
    assert_eq!(written["judges"], eval["final_metrics"]["judges"]);
    // `alignkit run` prints the table.
    assert!(text.contains("reward:rm"), "{text}");
    assert!(text.contains("win rate"), "{text}");

    // The export after the eval takes the GRPO policy: its LoRA adapter.
    assert_eq!(f.manifest("adapter")["inputs"]["model"]["from"], "grpo");
    assert!(
        f.dir
            .join("run/adapter/adapter/adapter_config.json")
            .is_file()
    );

    // Nothing changed: everything is skipped.
    let text = f.ok(&[]);
    for (k, stage) in RL_ORDER.iter().enumerate() {
        assert!(
            text.contains(&format!("[{}/4 {stage}] skip", k + 1)),
            "{text}"
        );
    }

    // Another judge: only the eval re-runs.
    std::fs::write(
        f.dir.join("pipeline.toml"),
        rl_pipeline("1e-2").replace("\"reward:rm\"]", "\"reward:rm\", \"rule:regex=e\"]"),
    )
    .unwrap();
    let dry = f.ok(&["--dry-run"]);
    for stage in ["rm", "grpo", "adapter"] {
        assert_eq!(plan_line(&dry, stage).0, "skip", "{dry}");
    }
    assert_eq!(
        plan_line(&dry, "eval"),
        ("run".into(), "config changed (`judges`)".into()),
        "{dry}"
    );

    // The same reward model by its directory (relative to the pipeline
    // file): the same config, but the model is known by its fingerprint
    // instead of the reward stage's identity.
    std::fs::write(
        f.dir.join("pipeline.toml"),
        rl_pipeline("1e-2").replace("stage = \"rm\"", "path = \"run/rm/final\""),
    )
    .unwrap();
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(
        plan_line(&dry, "grpo"),
        (
            "run".into(),
            format!("`rewards[0]` model {} changed", rm_final.display())
        ),
        "{dry}"
    );

    // A retrained reward model re-runs every stage that reads it, and the
    // stages after those.
    std::fs::write(f.dir.join("pipeline.toml"), rl_pipeline("2e-2")).unwrap();
    let dry = f.ok(&["--dry-run"]);
    assert_eq!(
        plan_line(&dry, "rm"),
        ("run".into(), "config changed (`learning_rate`)".into()),
        "{dry}"
    );
    assert_eq!(
        plan_line(&dry, "grpo"),
        ("run".into(), "upstream stage `rm` runs".into()),
        "{dry}"
    );
    for stage in ["eval", "adapter"] {
        assert_eq!(
            plan_line(&dry, stage),
            ("run".into(), "upstream stage `grpo` runs".into()),
            "{dry}"
        );
    }
    let text = f.ok(&[]);
    for (k, stage) in RL_ORDER.iter().enumerate() {
        assert!(
            text.contains(&format!("[{}/4 {stage}] run", k + 1)),
            "{text}"
        );
    }
    let (grpo2, eval2) = (f.manifest("grpo"), f.manifest("eval"));
    assert_ne!(grpo2["sha256"], grpo["sha256"]);
    assert_eq!(
        grpo2["inputs"]["models"]["rewards[0]"]["sha256"],
        f.manifest("rm")["sha256"]
    );
    assert_ne!(eval2["sha256"], eval["sha256"]);
    // The baseline's responses come from the eval's cache, kept across runs.
    assert!(
        text.contains(&format!("baseline: {} responses from the cache", QA.len())),
        "{text}"
    );

    // The project moved: nothing re-runs, the eval (its prompts, judges and
    // baseline are paths) included.
    let mut f = f;
    let moved = tempfile::tempdir().unwrap();
    let to = moved.path().join("project");
    std::fs::rename(&f.dir, &to).unwrap();
    f.dir = to;
    let dry = f.ok(&["--dry-run"]);
    for stage in RL_ORDER {
        assert_eq!(plan_line(&dry, stage).0, "skip", "{dry}");
    }
}

/// A finished pipeline whose reward stage's `final/model.safetensors` is
/// replaced by another model (issue 33): the GRPO stage, which reads it,
/// runs again, and the stages after it; the reward stage, whose own inputs
/// did not change, is skipped. Once done, nothing runs.
#[test]
fn a_replaced_stage_output_reruns_the_stages_that_read_it() {
    use alignkit_model::heads::{RewardModel, load_reward_model, save_reward_model};
    use alignkit_train::testutil::{B, seeded};

    let f = Fixture::new(&rl_pipeline("1e-2"));
    write_prompts(&f.dir);
    f.ok(&[]);
    let rm_final = f.dir.join("run/rm/final");
    let (config, _) = load_reward_model::<B>(&rm_final, &Default::default()).unwrap();
    let other = f.dir.join("other-rm");
    seeded(99, || {
        let model = RewardModel::<B>::init(&config, &Default::default());
        save_reward_model(&model, &config, &other, alignkit_model::SaveDtype::F32).unwrap();
    });
    std::fs::copy(
        other.join("model.safetensors"),
        rm_final.join("model.safetensors"),
    )
    .unwrap();

    let dry = f.ok(&["--dry-run"]);
    assert_eq!(plan_line(&dry, "rm").0, "skip", "{dry}");
    assert_eq!(
        plan_line(&dry, "grpo"),
        (
            "run".into(),
            format!(
                "`rewards[0]` model {} holds a different model than when the stage ran",
                rm_final.display()
            )
        ),
        "{dry}"
    );
    let text = f.ok(&[]);
    assert!(text.contains("[1/4 rm] skip"), "{text}");
    for (k, stage) in RL_ORDER.iter().enumerate().skip(1) {
        assert!(
            text.contains(&format!("[{}/4 {stage}] run", k + 1)),
            "{text}"
        );
    }
    let dry = f.ok(&["--dry-run"]);
    for stage in RL_ORDER {
        assert_eq!(plan_line(&dry, stage).0, "skip", "{dry}");
    }
}

/// An RLOO stage without an `[rloo]` table trains with its defaults, and
/// the stages after it take its policy.
#[test]
fn rloo_stage_without_its_table_takes_the_defaults() {
    let f = Fixture::new(
        &rl_pipeline("1e-2")
            .replace(
                "name = \"grpo\"\nkind = \"grpo\"",
                "name = \"rloo\"\nkind = \"rloo\"",
            )
            .replace("grpo.num_generations = 2\n", ""),
    );
    write_prompts(&f.dir);
    f.ok(&[]);
    let rloo = f.manifest("rloo");
    assert_eq!(rloo["kind"], "rloo");
    assert_eq!(
        rloo["config"]["rloo"],
        serde_json::to_value(alignkit_ppo::RlooParams::default()).unwrap()
    );
    assert!(rloo["config"].get("grpo").is_none(), "{rloo}");
    assert_eq!(f.steps("rloo"), vec![1, 2]);
    assert_eq!(rloo["inputs"]["models"]["rewards[0]"]["from"], "rm");
    for stage in ["eval", "adapter"] {
        assert_eq!(f.manifest(stage)["inputs"]["model"]["from"], "rloo");
    }
}

/// A `ppo` stage reads the reward stage's model twice: as its reward and as
/// its critic's starting weights (the only model reward); it trains on two
/// local peers (`launch.devices`).
#[test]
fn ppo_stage_takes_the_reward_stage_as_reward_and_critic() {
    let f = Fixture::new(
        &rl_pipeline("1e-2")
            .replace(
                "name = \"grpo\"\nkind = \"grpo\"",
                "name = \"ppo\"\nkind = \"ppo\"\nlaunch = { devices = [\"cpu\", \"cpu\"] }",
            )
            .replace("grpo.num_generations = 2\n", "ppo.num_ppo_epochs = 2\n"),
    );
    write_prompts(&f.dir);
    f.ok(&[]);
    let ppo = f.manifest("ppo");
    assert_eq!(ppo["kind"], "ppo");
    assert_eq!(ppo["config"]["ppo"]["num_ppo_epochs"], 2);
    assert_eq!(ppo["inputs"]["models"]["rewards[0]"]["from"], "rm");
    assert_eq!(ppo["ranks"], 2);
    assert_eq!(f.steps("ppo"), vec![1, 2]);
    let critic = f.dir.join("run/ppo/checkpoints/step-2/critic");
    assert!(critic.join("adapter_model.safetensors").is_file());
    assert!(critic.join("score.safetensors").is_file());
    for stage in ["eval", "adapter"] {
        assert_eq!(f.manifest(stage)["inputs"]["model"]["from"], "ppo");
    }
}

#[test]
fn bad_model_references_fail_before_any_work() {
    let base = rl_pipeline("1e-2");
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("stage = \"rm\"", "stage = \"rmm\""),
            "stage `grpo`: rewards[0]: `stage = \"rmm\"` names no stage (stages: rm, grpo, eval, adapter)",
        ),
        (
            base.replace("stage = \"rm\"", "stage = \"eval\""),
            "stage `grpo`: rewards[0]: `stage = \"eval\"`: `eval` is a kind = \"eval\" stage, not a reward stage",
        ),
        (
            base.replace("stage = \"rm\"", "stage = \"rm\"\npath = \"model\""),
            "stage `grpo`: rewards[0]: give `stage` or `path`, not both",
        ),
        (
            base.replace("grpo.num_generations", "rloo.num_generations"),
            "stage `grpo`: [stage.config] holds a [rloo] table, but the stage is kind = \"grpo\"",
        ),
        (
            base.replace("\"reward:rm\"]", "\"human\"]"),
            "stage `eval`: judges: `human` needs people at a terminal, not a pipeline: use alignkit eval winrate --judge human",
        ),
        (
            base.replace("\"reward:rm\"]", "\"reward:grpo\"]"),
            "stage `eval`: judges: `reward:grpo`: `grpo` is a kind = \"grpo\" stage, not a reward stage",
        ),
        (
            base.replace("\"reward:rm\"]", "\"reward:rmm\"]"),
            "stage `eval`: judges: `reward:rmm`: `rmm` names no stage (stages: rm, grpo, eval, adapter) and no model directory",
        ),
        (
            base.replace(
                "max_new_tokens = 4",
                "max_new_tokens = 4\nbaseline = \"rm\"",
            ),
            "stage `eval`: baseline = \"rm\": a reward model, not a policy",
        ),
        (
            base.replace("kind = \"eval\"\n", "kind = \"eval\"\nfrom = \"rm\"\n"),
            "stage `eval`: takes its model from `rm`, a reward model, not a policy",
        ),
        (
            base.replace(
                "kind = \"export\"\n",
                "kind = \"export\"\nfrom = \"eval\"\n",
            ),
            "stage `adapter`: `from = \"eval\"`: an eval stage, which outputs no model",
        ),
        (
            base.replace(
                "name = \"rm\"\nkind = \"reward\"\n",
                "name = \"rm\"\nkind = \"reward\"\nfrom = \"grpo\"\n",
            ),
            "stages form a cycle through `from` and the models they read: rm → grpo → rm",
        ),
    ];
    let f = Fixture::new(&base);
    write_prompts(&f.dir);
    for (toml_text, expected) in cases {
        assert_ne!(toml_text, base, "the case did not apply: {expected}");
        f.fails_before_work(&toml_text, expected);
    }
}

/// A stage with `launch = { nproc_per_node = 2 }` trains on two ranks
/// through `alignkit launch` (its checkpoints say so), the next stage takes
/// its model, a re-run skips it, and another number of ranks re-runs it;
/// `launch` on an export stage fails before any work.
#[test]
fn a_launched_stage_trains_on_two_ranks_and_feeds_the_next() {
    let two_ranks = pipeline("1e-2", "0.1", 2).replacen(
        "kind = \"sft\"\n",
        "kind = \"sft\"\nlaunch = { nproc_per_node = 2, master_port = 29740 }\n",
        1,
    );
    let f = Fixture::new(&two_ranks);
    f.ok(&[]);
    let run = f.dir.join("run").join("sft");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/step-4/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2, "{state}");
    assert_eq!(f.steps("sft"), vec![1, 2, 3, 4]);
    assert_eq!(f.steps("dpo"), vec![1, 2]);
    assert!(f.dir.join("run/export/model/model.safetensors").is_file());
    let (action, _) = plan_line(&f.ok(&["--dry-run"]), "sft");
    assert_eq!(action, "skip");
    // Three ranks deal another global batch: another run.
    std::fs::write(
        f.dir.join("pipeline.toml"),
        two_ranks.replace("nproc_per_node = 2", "nproc_per_node = 3"),
    )
    .unwrap();
    let (action, _) = plan_line(&f.ok(&["--dry-run"]), "sft");
    assert_eq!(action, "run");
    // Two local peers are two ranks too: the same global batch, no re-run.
    let peers =
        |list: &str| two_ranks.replace("nproc_per_node = 2", &format!("devices = [{list}]"));
    std::fs::write(f.dir.join("pipeline.toml"), peers("\"cpu\", \"cpu\"")).unwrap();
    let (action, _) = plan_line(&f.ok(&["--dry-run"]), "sft");
    assert_eq!(action, "skip");
    let mixed = peers("\"cpu\", \"wgpu:cpu\"");
    Fixture::new(&mixed).fails_before_work(
        &mixed,
        "launch.devices = cpu,wgpu:cpu: the local peers of one process run on one backend",
    );
    let export = two_ranks.replacen(
        "kind = \"export\"\n",
        "kind = \"export\"\nlaunch = { nproc_per_node = 2 }\n",
        1,
    );
    assert!(
        export.matches("launch = {").count() == 2,
        "the export stage"
    );
    let g = Fixture::new(&export);
    g.fails_before_work(&export, "eval and export run in one process");
}
