//! `alignkit run pipeline.toml` end to end on a tiny random model: skip,
//! resume after a kill, re-run downstream of a change, `--dry-run`, and
//! bad input reported before any work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::tiny_model;

const QA: [(&str, &str, &str); 6] = [
    ("sky?", "blue.", "it is blue. blue is nice. i like it."),
    ("grass?", "green.", "green. grass is green. very green."),
    ("snow?", "white.", "white. snow is cold. and white."),
    ("coal?", "black.", "black. coal burns. it is black."),
    ("sun?", "yellow.", "yellow. the sun is hot. so hot."),
    ("blood?", "red.", "red. blood is red. always red."),
];

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
        let p = self.dir.join("run").join(stage).join("metrics.jsonl");
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
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
    let mut child = f
        .command(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpts = f.dir.join("run/dpo/checkpoints");
    let started = Instant::now();
    while !ckpts.join("step-3").is_dir() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no DPO checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
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
        std::fs::write(f.dir.join("pipeline.toml"), &toml_text).unwrap();
        let err = f.err(&[]);
        assert!(err.contains(expected), "expected `{expected}` in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert!(!f.dir.join("run").exists(), "work started: {err}");
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
