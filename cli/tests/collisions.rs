//! Two processes never write one place (issue 33): a training, a pipeline or a
//! `generate --out` started into what a running one writes is refused with one
//! line naming the holder's PID, and a lock left behind by a killed process is
//! taken over with a note. The first process is held with SIGSTOP while the
//! second starts, so nothing here depends on timing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{ok, refused, tiny_model, write_qa_sft};

/// An `alignkit` process started in the background, its output going to
/// files; killed (after a SIGCONT) when dropped, so that a failing test
/// leaves nothing running.
struct Running {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    fn spawn(args: &[&str], logs: &Path) -> Self {
        let stdout = logs.join(format!("out-{}.txt", args[0]));
        let stderr = logs.join(format!("err-{}.txt", args[0]));
        let child = Command::new(env!("CARGO_BIN_EXE_alignkit"))
            .args(args)
            .env(
                "ALIGNKIT_CACHE",
                std::env::temp_dir().join("alignkit-test-no-cache"),
            )
            .stdout(Stdio::from(File::create(&stdout).unwrap()))
            .stderr(Stdio::from(File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Send `signal` (`-STOP`, `-CONT`, `-TERM`, `-KILL`).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// Wait until `done` holds; panics if the process ends first.
    fn wait_until(&mut self, what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "ended ({status}) before {what}:\n{}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(started.elapsed() < Duration::from_secs(300), "never {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Wait for the process to end; its exit status and output.
    fn finish(mut self) -> Output {
        let status = self.child.take().unwrap().wait().unwrap();
        Output {
            status,
            stdout: std::fs::read(&self.stdout).unwrap(),
            stderr: std::fs::read(&self.stderr).unwrap(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `alignkit ARGS`, killed after `limit` (a refusal comes at once; without
/// one the second process would run as long as the first).
fn alignkit_within(args: &[&str], logs: &Path, limit: Duration) -> Output {
    let mut second = Running::spawn(args, &logs.join("second"));
    let started = Instant::now();
    while second.child.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < limit,
            "still running after {limit:?}: the second process was not refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    second.finish()
}

/// `alignkit sft` of the tiny model into `run` for `steps` steps, saving only
/// at the end.
fn sft_args<'a>(model: &'a str, data: &'a str, run: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "sft",
        "--model",
        model,
        "--train-file",
        data,
        "--output-dir",
        run,
        "--max-steps",
        steps,
        "--save-steps",
        "1000000",
        "--batch-size",
        "2",
        "--max-len",
        "64",
    ]
}

struct Fixture {
    tmp: tempfile::TempDir,
    model: PathBuf,
    data: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let model = tiny_model(&tmp.path().join("model"));
        let data = tmp.path().join("sft.jsonl");
        write_qa_sft(&data);
        for d in ["first", "second"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        Self { tmp, model, data }
    }

    /// A training into `run` that would run for hours, once it has logged
    /// its first step (and so holds the run directory).
    fn training(&self, run: &Path) -> Running {
        let args = sft_args(
            Self::s(&self.model),
            Self::s(&self.data),
            Self::s(run),
            "1000000",
        );
        let mut first = Running::spawn(&args, &self.path("first"));
        let metrics = run.join("metrics.jsonl");
        first.wait_until("its first step", || {
            std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0)
        });
        first
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn s(path: &Path) -> &str {
        path.to_str().unwrap()
    }
}

/// The refusal names the directory, the holder and its PID, on one line.
fn assert_in_use(out: &Output, place: &Path, command: &str, pid: u32) {
    let line = refused(out);
    for needle in [
        place.display().to_string(),
        format!("in use by {command} (PID {pid})"),
    ] {
        assert!(line.contains(&needle), "`{needle}` missing from: {line}");
    }
}

#[test]
fn a_second_training_into_a_running_run_directory_is_refused() {
    let f = Fixture::new();
    let run = f.path("run");
    let (model, data, run_s) = (Fixture::s(&f.model), Fixture::s(&f.data), Fixture::s(&run));
    let first = f.training(&run);
    let metrics = run.join("metrics.jsonl");
    first.signal("-STOP");

    let second = alignkit_within(
        &sft_args(model, data, run_s, "1"),
        f.tmp.path(),
        Duration::from_secs(120),
    );
    assert_in_use(&second, &run, "alignkit sft", first.pid());
    let steps_before = std::fs::read_to_string(&metrics).unwrap();

    // SIGTERM: the first saves a checkpoint, exits 130 and removes its lock;
    // its metrics were never touched by the second.
    first.signal("-CONT");
    first.signal("-TERM");
    let out = first.finish();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .starts_with(&steps_before)
    );
    assert!(
        !run.join(".alignkit.lock").exists(),
        "the lock outlived the run"
    );
    // It resumes (one step more) with no word of a stale lock.
    let saved: usize = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .max()
        .expect("a checkpoint saved on SIGTERM");
    let steps = (saved + 1).to_string();
    let args = sft_args(model, data, run_s, &steps);
    let stderr = ok(&common::alignkit(args.into_iter().chain(["--resume"]))).1;
    assert!(stderr.contains("resuming from step"), "{stderr}");
    assert!(!stderr.contains("no longer running"), "{stderr}");
}

#[test]
fn the_lock_of_a_killed_training_is_taken_over_with_a_note() {
    let f = Fixture::new();
    let run = f.path("run");
    let (model, data, run_s) = (Fixture::s(&f.model), Fixture::s(&f.data), Fixture::s(&run));
    let first = f.training(&run);
    let pid = first.pid();
    first.signal("-KILL");
    assert!(!first.finish().status.success());

    let stderr = ok(&common::alignkit(sft_args(model, data, run_s, "1"))).1;
    assert!(
        stderr.contains(&format!("(PID {pid})")) && stderr.contains("no longer running"),
        "no note on the stale lock:\n{stderr}"
    );
    assert!(!run.join(".alignkit.lock").exists());
}

/// A prompts file of `n` distinct prompts.
fn write_prompts(path: &Path, n: usize) {
    let lines: String = (0..n)
        .map(|i| format!("{}\n", json!({"prompt": format!("q {i}?")})))
        .collect();
    std::fs::write(path, lines).unwrap();
}

fn generate_args<'a>(model: &'a str, prompts: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--prompts",
        prompts,
        "--out",
        out,
        "--num-samples",
        "2",
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "48",
        "--batch-size",
        "1",
    ]
}

/// The `id` of every line of a candidates file.
fn ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_second_generate_into_one_candidates_file_is_refused() {
    let f = Fixture::new();
    let prompts = f.path("prompts.jsonl");
    write_prompts(&prompts, 40);
    let out = f.path("candidates.jsonl");
    let args = generate_args(Fixture::s(&f.model), Fixture::s(&prompts), Fixture::s(&out));
    let mut first = Running::spawn(&args, &f.path("first"));
    first.wait_until("its first item", || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 0)
    });
    first.signal("-STOP");
    let second = alignkit_within(&args, f.tmp.path(), Duration::from_secs(120));
    assert_in_use(&second, &out, "alignkit generate", first.pid());

    // Interrupted (Ctrl-C) mid-file: it exits at once with 130 and removes
    // its lock; the next run completes the file, every item once.
    first.signal("-CONT");
    first.signal("-INT");
    let interrupted = first.finish();
    assert_eq!(
        interrupted.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&interrupted.stderr)
    );
    let lock = PathBuf::from(format!("{}.lock", out.display()));
    assert!(!lock.exists(), "the lock outlived the interrupted run");
    let stderr = ok(&common::alignkit(&args)).1;
    assert!(!stderr.contains("no longer running"), "{stderr}");
    let mut got = ids(&out);
    assert_eq!(got.len(), 40);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 40, "an item was written twice");
    assert!(!lock.exists());
}

#[test]
fn a_second_pipeline_into_one_output_directory_is_refused() {
    let f = Fixture::new();
    std::fs::write(
        f.path("pipeline.toml"),
        r#"[[stage]]
name = "sft"
kind = "sft"
[stage.config]
data.train_file = "sft.jsonl"
data.max_len = 64
train.batch_size = 2
train.max_steps = 1000000
train.save_steps = 1000000
"#,
    )
    .unwrap();
    let (pipeline, out) = (f.path("pipeline.toml"), f.path("runs"));
    let args = [
        "run",
        Fixture::s(&pipeline),
        "--out",
        Fixture::s(&out),
        "--model",
        Fixture::s(&f.model),
    ];
    let mut first = Running::spawn(&args, &f.path("first"));
    let metrics = out.join("sft/metrics.jsonl");
    first.wait_until("its first step", || {
        std::fs::metadata(&metrics).is_ok_and(|m| m.len() > 0)
    });
    first.signal("-STOP");
    let second = alignkit_within(&args, f.tmp.path(), Duration::from_secs(120));
    assert_in_use(&second, &out, "alignkit run", first.pid());
    assert!(
        metrics.is_file(),
        "the second run cleared the first's stage"
    );
}

/// Two annotators share a judgments file (`--overlap`); one annotator in two
/// terminals does not: the second is refused, naming the first. The first is
/// this test, holding the lock the labeler takes (`alignkit label` needs a
/// terminal to get further).
#[test]
fn one_annotator_labels_one_judgments_file_at_a_time() {
    let f = Fixture::new();
    let candidates = f.path("candidates.jsonl");
    std::fs::write(
        &candidates,
        format!(
            "{}\n",
            json!({"id": "1", "prompt": "p", "responses": [{"text": "a"}, {"text": "b"}]})
        ),
    )
    .unwrap();
    let judgments = f.path("judgments.jsonl");
    let _held = alignkit_train::output::Lock::file_for(&judgments, "ada").unwrap();
    let label = |annotator: &str| {
        common::alignkit([
            "label",
            Fixture::s(&candidates),
            "--judgments",
            Fixture::s(&judgments),
            "--annotator",
            annotator,
        ])
    };
    let line = refused(&label("ada"));
    for needle in [
        judgments.display().to_string(),
        "annotator ada".into(),
        format!("(PID {})", std::process::id()),
    ] {
        assert!(line.contains(&needle), "`{needle}` missing from: {line}");
    }
    // Another annotator gets as far as the terminal check.
    let line = refused(&label("bob"));
    assert!(line.contains("needs a terminal"), "{line}");
}
