//! Shared by the CLI's end-to-end tests: a tiny random model directory,
//! question/answer data, and a run's logged steps.

// Each test crate uses a part of this module.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alignkit_model::{LlamaConfig, LlamaForCausalLM, ModelType, SaveDtype, save_model};
use alignkit_train::testutil::seeded;
use serde_json::json;

const CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,!?:;'-()";
const SPECIALS: [&str; 3] = ["<unk>", "<|im_start|>", "<|im_end|>"];
const TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// (question, one-sentence answer, rambling answer).
pub const QA: [(&str, &str, &str); 6] = [
    ("sky?", "blue.", "it is blue. blue is nice. i like it."),
    ("grass?", "green.", "green. grass is green. very green."),
    ("snow?", "white.", "white. snow is cold. and white."),
    ("coal?", "black.", "black. coal burns. it is black."),
    ("sun?", "yellow.", "yellow. the sun is hot. so hot."),
    ("blood?", "red.", "red. blood is red. always red."),
];

/// `alignkit ARGS` with its output captured, run against an empty model
/// cache (no test reads the user's cache or fetches the default model by
/// accident).
pub fn alignkit<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(args)
        .env(
            "ALIGNKIT_CACHE",
            std::env::temp_dir().join("alignkit-test-no-cache"),
        )
        .output()
        .expect("run alignkit")
}

/// stdout and stderr of a command that must have succeeded.
pub fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// The one line a refused command prints: it failed, did not panic, and
/// said why in a single line.
pub fn refused(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "expected a refusal: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
    stderr
}

/// One SFT step of `model` on `data` (batch 2, 64 tokens) into `run`, with
/// `extra` flags; its stderr (it must succeed).
pub fn one_sft_step(model: &Path, data: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--train-file",
        data.to_str().unwrap(),
        "--output-dir",
        run.to_str().unwrap(),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--max-len",
        "64",
    ];
    args.extend_from_slice(extra);
    ok(&alignkit(args)).1
}

/// [`QA`] as preference pairs (chosen: the one-sentence answer) at `path`.
pub fn write_qa_prefs(path: &Path) {
    let mut prefs = String::new();
    for (q, c, r) in QA {
        prefs.push_str(&json!({"prompt": q, "chosen": c, "rejected": r}).to_string());
        prefs.push('\n');
    }
    std::fs::write(path, prefs).unwrap();
}

/// [`QA`] as SFT examples (the one-sentence answer) at `path`.
pub fn write_qa_sft(path: &Path) {
    let lines: Vec<String> = QA
        .iter()
        .map(|(q, a, _)| json!({"prompt": q, "completion": a}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// The `step` of every record of `RUN_DIR/metrics.jsonl`.
pub fn metric_steps(run_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Spawn `cmd` with its output captured, wait until it has written
/// `run_dir/checkpoints/step-{step}`, send it `signal` (`-INT`, `-TERM`) and
/// return what it printed and how it exited.
pub fn signal_at_checkpoint(
    cmd: &mut std::process::Command,
    run_dir: &Path,
    step: usize,
    signal: &str,
) -> std::process::Output {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = run_dir.join(format!("checkpoints/step-{step}"));
    let started = Instant::now();
    while !checkpoint.is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait_with_output().unwrap()
}

/// A random tiny Llama with a character-level tokenizer and a ChatML template.
/// Its weights are drawn from a seed made of the directory's name: the same
/// every run, and different for `policy` and `baseline` (the backend generator
/// is process-global and tests run in parallel, so it is seeded and drawn
/// from under a lock).
pub fn tiny_model(dir: &Path) -> PathBuf {
    tiny_model_of(dir, ModelType::Llama)
}

/// [`tiny_model`] of another family (Qwen3's q/k norms, SmolLM3's NoPE
/// layer, OLMo 2's post-norms).
pub fn tiny_model_of(dir: &Path, family: ModelType) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut config = LlamaConfig::tiny(family);
    config.bos_token_id = None;
    config.eos_token_ids = vec![2];
    config.pad_token_id = Some(2);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let seed = name
        .unwrap_or_default()
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    seeded(seed, || {
        let model = LlamaForCausalLM::<burn::backend::Flex>::init(&config, &Default::default());
        save_model(&model, &config, dir, SaveDtype::F32).unwrap();
    });
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for (i, c) in CHARS.chars().enumerate() {
        vocab.insert(c.to_string(), json!(SPECIALS.len() + i));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tc = json!({
        "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<unk>", "add_bos_token": false, "chat_template": TEMPLATE
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    dir.to_path_buf()
}
