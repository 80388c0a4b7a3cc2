//! End-to-end tests of `alignkit label`: the real binary in a tmux pane, typed at with
//! `send-keys`, read with `capture-pane`, killed with SIGKILL at random moments.
//!
//! Needs tmux (`apt-get install -y tmux`). Each test runs its own tmux server (`-L`).
//! Set LABEL_E2E_SEED to replay a run of the crash test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

mod common;
use common::{alignkit, ok};

const BIN: &str = env!("CARGO_BIN_EXE_alignkit");
/// A tokenizer and chat template for `alignkit data validate`.
const TOKENIZER_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../datasets/tests/fixtures/smollm2"
);
const ITEMS: usize = 400;
const KILLS: usize = 60;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "alignkit-label-e2e-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tmux server with one pane that keeps its screen when the process in it dies.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str, width: u16, height: u16) -> Tmux {
        let found = Command::new("tmux").arg("-V").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "these tests need tmux: apt-get install -y tmux"
        );
        let t = Tmux {
            socket: format!("alignkit-e2e-{tag}-{}", std::process::id()),
        };
        let (w, h) = (width.to_string(), height.to_string());
        t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            &w,
            "-y",
            &h,
            "sleep 600",
        ]);
        t.run(&["set-option", "-t", "e2e", "remain-on-exit", "on"]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Replaces whatever runs in the pane with `command` (exec'd, so the pane pid is it).
    fn spawn(&self, command: &str) {
        self.run(&[
            "respawn-pane",
            "-k",
            "-t",
            "e2e",
            &format!("exec {command}"),
        ]);
    }

    fn pid(&self) -> String {
        self.run(&["display-message", "-p", "-t", "e2e", "#{pane_pid}"])
            .trim()
            .to_string()
    }

    fn dead(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "e2e", "#{pane_dead}"])
            .trim()
            == "1"
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "e2e"])
    }

    /// Types text literally.
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "e2e", "-l", text]);
    }

    /// Sends a named key (`Enter`, `Escape`, ...).
    fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", "e2e", key]);
    }

    fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        self.run(&["resize-window", "-t", "e2e", "-x", &w, "-y", &h]);
    }

    /// SIGKILLs the process in the pane after `delay`, from another thread, so the kill can
    /// land while a key sent in the meantime is being read, saved or drawn.
    fn kill_9_after(&self, delay: Duration) -> std::thread::JoinHandle<()> {
        let pid = self.pid();
        std::thread::spawn(move || {
            sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid]).status();
        })
    }

    fn wait_dead(&self) {
        let start = Instant::now();
        while !self.dead() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the pane did not die"
            );
            sleep(Duration::from_millis(2));
        }
    }

    /// Polls the screen until `ready` returns something.
    fn wait_for<T>(&self, what: &str, ready: impl Fn(&str) -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if let Some(t) = ready(&screen) {
                return t;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what}; screen:\n{screen}"
            );
            sleep(Duration::from_millis(3));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn id(i: usize) -> String {
    format!("c{i:03}")
}

fn write_candidates(path: &Path, n: usize) {
    let mut text = String::new();
    for i in 0..n {
        let line = serde_json::json!({
            "id": id(i),
            "prompt": format!("Question {i}: which answer is better?"),
            "responses": [
                {"text": format!("First answer to question {i}."), "source": "model-a"},
                {"text": format!("Second answer to question {i}, a little longer."), "source": "model-b"},
                {"text": format!("Third answer to question {i}."), "source": "model-c"},
            ],
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The item on screen, from the header "item c017 (18/400)", when the header is fully drawn
/// and consistent (file order: c017 is 18th).
fn item_on_screen(screen: &str) -> Option<usize> {
    let header = screen.lines().next()?;
    let rest = &header[header.find("item c")? + "item c".len()..];
    let (num, rest) = rest.split_once(" (")?;
    let (pos, _) = rest.split_once('/')?;
    let (num, pos): (usize, usize) = (num.parse().ok()?, pos.parse().ok()?);
    (num < ITEMS && pos == num + 1).then_some(num)
}

/// Every line of the judgments file, parsed; panics on a line that does not parse or a
/// missing final newline.
fn judgments(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "torn last line in {}",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn label_command(candidates: &Path, judgments: &Path, extra: &str) -> String {
    format!(
        "{BIN} label '{}' --judgments '{}' --annotator tester {extra}",
        candidates.display(),
        judgments.display()
    )
}

#[test]
fn sigkill_at_random_moments_never_loses_or_duplicates_a_confirmed_judgment() {
    // A fixed default, so that a failure reproduces; LABEL_E2E_SEED explores others.
    let seed: u64 = std::env::var("LABEL_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    println!("LABEL_E2E_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let dir = TempDir::new("kill");
    let (cands, jpath) = (dir.path("cands.jsonl"), dir.path("judgments.jsonl"));
    write_candidates(&cands, ITEMS);
    let command = label_command(&cands, &jpath, "");
    let tmux = Tmux::new("kill", 80, 24);

    let keys = [
        ('a', "a"),
        ('b', "b"),
        ('t', "tie"),
        ('x', "both_bad"),
        ('s', "skip"),
    ];
    // Item -> decision, for every judgment whose next screen appeared.
    let mut confirmed: HashMap<usize, &str> = HashMap::new();
    let (mut at_start, mut after_key) = (0, 0);
    for round in 0..KILLS {
        tmux.spawn(&command);
        if rng.random_bool(0.1) {
            // Kill while it starts up (reading the files, entering raw mode).
            tmux.kill_9_after(Duration::from_micros(rng.random_range(0..5000)))
                .join()
                .unwrap();
            tmux.wait_dead();
            at_start += 1;
            continue;
        }
        let mut current = tmux.wait_for("the labeler", item_on_screen);

        // It resumes at the first item without a judgment in the file.
        let on_disk: Vec<usize> = judgments(&jpath)
            .iter()
            .map(|r| r["item"].as_str().unwrap()[1..].parse().unwrap())
            .collect();
        let first_open = (0..ITEMS).find(|i| !on_disk.contains(i)).unwrap();
        assert_eq!(
            current, first_open,
            "round {round}: resumed at the wrong item"
        );

        for _ in 0..rng.random_range(0..=3) {
            let (key, decision) = keys[rng.random_range(0..keys.len())];
            tmux.type_text(&key.to_string());
            let before = current;
            current = tmux.wait_for("the next item", |s| {
                item_on_screen(s).filter(|&i| i != before)
            });
            confirmed.insert(before, decision);
        }
        // Kill while idle, or around a decision key: before it is read, while the record is
        // written, or before the next screen is drawn. Such a judgment may or may not be
        // on disk, but never twice.
        let kill = tmux.kill_9_after(Duration::from_micros(rng.random_range(0..4000)));
        if rng.random_bool(0.7) {
            let (key, _) = keys[rng.random_range(0..keys.len())];
            tmux.type_text(&key.to_string());
            after_key += 1;
        }
        kill.join().unwrap();
        tmux.wait_dead();
    }

    let records = judgments(&jpath);
    let mut count: HashMap<usize, usize> = HashMap::new();
    for r in &records {
        assert_eq!(r["type"], "judgment");
        assert_eq!(r["annotator"], "tester");
        let item: usize = r["item"].as_str().unwrap()[1..].parse().unwrap();
        *count.entry(item).or_default() += 1;
        if let Some(decision) = confirmed.get(&item) {
            assert_eq!(r["decision"], *decision, "item {item}");
        }
        let shown: Vec<u64> = serde_json::from_value(r["shown"].clone()).unwrap();
        assert_eq!(shown.len(), 2);
    }
    for (item, n) in &count {
        assert_eq!(*n, 1, "item {item} judged {n} times");
    }
    for item in confirmed.keys() {
        assert!(
            count.contains_key(item),
            "confirmed judgment of item {item} lost"
        );
    }
    assert!(
        confirmed.len() >= 20,
        "only {} confirmed judgments",
        confirmed.len()
    );
    println!(
        "{KILLS} kills ({at_start} at start-up, {after_key} around a key): {} confirmed \
         judgments, {} records on disk",
        confirmed.len(),
        records.len()
    );

    // The file exports to preference pairs and summarises.
    let prefs = dir.path("prefs.jsonl");
    let out = alignkit([
        "label",
        "export",
        jpath.to_str().unwrap(),
        "--to",
        prefs.to_str().unwrap(),
    ]);
    ok(&out);
    let decisive = records
        .iter()
        .filter(|r| r["decision"] == "a" || r["decision"] == "b")
        .count();
    let lines = std::fs::read_to_string(&prefs).unwrap();
    assert_eq!(lines.lines().count(), decisive);
    for line in lines.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["chosen", "prompt", "rejected"]);
        assert!(v["chosen"].as_str().unwrap().contains("answer to question"));
    }
    let (table, _) = ok(&alignkit(["label", "stats", jpath.to_str().unwrap()]));
    assert!(
        table.contains("tester") && table.contains("position bias"),
        "{table}"
    );
}

#[test]
fn bad_input_is_reported_before_the_ui_opens() {
    let dir = TempDir::new("bad");
    let cands = dir.path("cands.jsonl");
    write_candidates(&cands, 3);
    let mut text = std::fs::read_to_string(&cands).unwrap();
    text.insert_str(
        text.find('\n').unwrap() + 1,
        "{\"id\":\"broken\",\"prompt\":\"x\"\n",
    );
    std::fs::write(&cands, text).unwrap();
    let c = cands.to_str().unwrap();

    // An unwritable judgments path fails at once (no terminal needed to get that far).
    let out = alignkit([
        "label",
        c,
        "--judgments",
        "/nonexistent-dir/j.jsonl",
        "--annotator",
        "t",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write judgments to /nonexistent-dir/j.jsonl"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\x1b[?1049h"),
        "no UI drawn"
    );

    // --strict refuses malformed candidates, naming FILE:LINE.
    let j = dir.path("j.jsonl");
    let out = alignkit([
        "label",
        c,
        "--judgments",
        j.to_str().unwrap(),
        "--annotator",
        "t",
        "--strict",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{c}:2:")), "{err}");
}

#[test]
fn warnings_tiny_terminal_resize_ranking_and_quit_in_a_real_terminal() {
    let dir = TempDir::new("ui");
    let (cands, jpath) = (dir.path("cands.jsonl"), dir.path("judgments.jsonl"));
    write_candidates(&cands, 3);
    let mut text = std::fs::read_to_string(&cands).unwrap();
    text.push_str("not json\n");
    std::fs::write(&cands, text).unwrap();

    let tmux = Tmux::new("ui", 40, 10);
    tmux.spawn(&label_command(&cands, &jpath, "--mode rank"));
    tmux.wait_for("the too-small message", |s| {
        s.contains("make the window larger").then_some(())
    });
    tmux.resize(80, 24);
    let screen = tmux.wait_for("the item after a resize", |s| {
        s.contains("item c000").then(|| s.to_string())
    });
    assert!(screen.contains("malformed input line"), "{screen}");

    // Rank: 2 best, then 3 (1 is last by elimination), confirm.
    tmux.type_text("23");
    tmux.key("Enter");
    tmux.wait_for("the next item", |s| s.contains("item c001").then_some(()));
    let records = judgments(&jpath);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["mode"], "rank");
    let ranking: Vec<u32> =
        serde_json::from_value(records[0]["decision"]["ranking"].clone()).unwrap();
    assert_eq!(ranking, [3, 1, 2], "ranks follow the shown positions");

    // A double tap skips one item, not two: the second key came before c002 was shown.
    tmux.type_text("ss");
    let screen = tmux.wait_for("the warning", |s| {
        s.contains("ignored 1 key(s)").then(|| s.to_string())
    });
    assert!(screen.contains("item c002"), "{screen}");
    assert_eq!(judgments(&jpath).len(), 2);

    tmux.type_text("q");
    let after = tmux.wait_for("the summary after quitting", |s| {
        s.contains("judgment(s) saved this session")
            .then(|| s.to_string())
    });
    assert!(
        after.contains(&format!("{}:4:", cands.display())),
        "{after}"
    );
}

#[test]
fn exported_preferences_pass_data_validation() {
    let dir = TempDir::new("validate");
    let (cands, jpath) = (dir.path("cands.jsonl"), dir.path("judgments.jsonl"));
    let chat = serde_json::json!({
        "id": "chat",
        "prompt": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What does DPO optimise?"},
        ],
        "responses": [
            {"text": "The policy, directly on preference pairs."},
            {"text": "A reward model first, then the policy."},
            {"text": "Nothing."},
        ],
    });
    write_candidates(&cands, 1);
    let mut text = std::fs::read_to_string(&cands).unwrap();
    text.push_str(&format!("{chat}\n"));
    std::fs::write(&cands, text).unwrap();

    let tmux = Tmux::new("validate", 80, 24);
    tmux.spawn(&label_command(&cands, &jpath, "--mode rank"));
    for next in ["chat", "All 2 items"] {
        tmux.wait_for("an item", |s| s.contains("item ").then_some(()));
        tmux.type_text("21");
        tmux.key("Enter");
        tmux.wait_for(next, |s| s.contains(next).then_some(()));
    }
    tmux.type_text("q");

    let prefs = dir.path("prefs.jsonl");
    let out = alignkit([
        "label",
        "export",
        jpath.to_str().unwrap(),
        "--to",
        prefs.to_str().unwrap(),
    ]);
    ok(&out);
    let lines: Vec<Value> = std::fs::read_to_string(&prefs)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "two rankings of three: 3 pairs each");
    assert_eq!(lines[3]["chosen"][0]["role"], "assistant");
    let out = alignkit([
        "data",
        "validate",
        prefs.to_str().unwrap(),
        "--model",
        TOKENIZER_DIR,
        "--kind",
        "prefs",
    ]);
    ok(&out);
}

#[test]
fn a_save_that_fails_is_reported_on_quit_with_a_non_zero_exit_and_a_recovery_file() {
    let dir = TempDir::new("full");
    let (cands, jpath) = (dir.path("cands.jsonl"), dir.path("judgments.jsonl"));
    write_candidates(&cands, 3);
    // The judgments file ends just below an 8 KiB file-size limit (`ulimit -f 8`, with
    // SIGXFSZ ignored so writes fail with EFBIG instead): every append fails part-way, as
    // on a full disk. The padding is a blank line, which the log skips.
    std::fs::write(&jpath, format!("{}\n", " ".repeat(8100))).unwrap();
    let tmux = Tmux::new("full", 100, 30);
    tmux.spawn(&format!(
        "bash -c \"ulimit -f 8; trap '' XFSZ; {}; echo exit=\\$?\"",
        label_command(&cands, &jpath, "")
    ));
    tmux.wait_for("the labeler", |s| s.contains("item c000").then_some(()));
    tmux.type_text("a");
    tmux.wait_for("the save error", |s| s.contains("NOT SAVED").then_some(()));
    tmux.type_text("q");
    let screen = tmux.wait_for("the exit code", |s| {
        s.contains("exit=").then(|| s.to_string())
    });
    assert!(screen.contains("exit=1"), "{screen}");
    let flat = screen.replace('\n', "");
    assert!(flat.contains("1 record(s) could NOT be saved"), "{screen}");

    // The decision is in the recovery file beside the judgments, in their format.
    let recovery: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("judgments.jsonl.unsaved-")
        })
        .collect();
    assert_eq!(recovery.len(), 1, "{screen}");
    assert!(flat.contains(recovery[0].to_str().unwrap()), "{screen}");
    let saved = judgments(&recovery[0]);
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0]["item"], "c000");
    assert_eq!(saved[0]["decision"], "a");
}

#[test]
fn label_export_refuses_an_existing_file_unless_overwrite() {
    let dir = TempDir::new("export");
    let jpath = dir.path("judgments.jsonl");
    let judgment = serde_json::json!({
        "type": "judgment", "rid": "1", "item": "c000", "annotator": "t",
        "ts": "2025-01-01T00:00:00.000Z", "mode": "pairwise", "seed": 0, "shown": [1, 0],
        "decision": "a", "duration_ms": 10, "prompt": "p",
        "responses": [{"text": "worse"}, {"text": "better"}],
    });
    std::fs::write(&jpath, format!("{judgment}\n")).unwrap();
    let prefs = dir.path("train.jsonl");
    std::fs::write(&prefs, "precious training data\n").unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec![
            "label",
            "export",
            jpath.to_str().unwrap(),
            "--to",
            prefs.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        alignkit(&args)
    };

    let out = export(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "--to {}: exists (pass --overwrite to replace it)",
            prefs.display()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&prefs).unwrap(),
        "precious training data\n"
    );

    let out = export(&["--overwrite"]);
    ok(&out);
    assert_eq!(
        std::fs::read_to_string(&prefs).unwrap(),
        "{\"prompt\":\"p\",\"chosen\":\"better\",\"rejected\":\"worse\"}\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");
}

#[test]
fn without_a_terminal_no_judgments_file_is_created_and_malformed_items_say_why() {
    let dir = TempDir::new("noterm");
    let (cands, jpath) = (dir.path("cands.jsonl"), dir.path("judgments.jsonl"));
    write_candidates(&cands, 2);
    let label = |c: &Path| {
        alignkit([
            "label",
            c.to_str().unwrap(),
            "--judgments",
            jpath.to_str().unwrap(),
            "--annotator",
            "t",
        ])
    };
    let out = label(&cands);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal"), "{err}");
    assert!(!jpath.exists(), "an empty judgments file was left behind");

    let bad = dir.path("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\":\"a\",\"prompt\":\"p\"}\n{\"id\":\"b\",\"prompt\":\"p\"}\n",
    )
    .unwrap();
    let out = label(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let b = bad.display();
    assert!(
        err.contains(&format!(
            "{b}: no usable items (2 malformed lines, first {b}:1: "
        )),
        "{err}"
    );
    assert!(err.contains("responses"), "the reason is missing: {err}");
}
