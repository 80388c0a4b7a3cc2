//! Test helpers shared by the trainers' test suites (behind the
//! `test-support` feature): a tiny random Llama with a character-level
//! tokenizer and a ChatML template, written into a directory; chat and
//! preference data writers; readers for a run's `metrics.jsonl`.
//!
//! Helpers panic on failure: they only ever run inside tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use alignkit_model::heads::{RewardModel, save_reward_model};
use alignkit_model::{LlamaConfig, LlamaForCausalLM, ModelType, SaveDtype, save_model};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::tensor::backend::Backend;
use serde_json::json;

pub type AB = Autodiff<Flex>;
pub type B = Flex;

pub const CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,!?:;'-()";
pub const SPECIALS: [&str; 3] = ["<unk>", "<|im_start|>", "<|im_end|>"];

pub const TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Token id of a character.
pub fn id_of(c: char) -> u32 {
    SPECIALS.len() as u32 + CHARS.find(c).expect("a tokenizer character") as u32
}

fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIALS.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for c in CHARS.chars() {
        vocab.insert(c.to_string(), json!(id_of(c)));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// The tiny configuration used by every test: vocabulary 96 ≥ 78 tokens;
/// pad == eos == `<|im_end|>`.
pub fn tiny_config() -> LlamaConfig {
    let mut c = LlamaConfig::tiny(ModelType::Llama);
    c.bos_token_id = None;
    c.eos_token_ids = vec![2];
    c.pad_token_id = Some(2);
    c
}

/// Write a random tiny model directory at `dir`: the same weights every time.
pub fn tiny_model_dir(dir: &Path) -> PathBuf {
    tiny_model_dir_seeded(dir, 7)
}

/// Write a random tiny model directory at `dir`, its weights drawn from
/// `seed`.
pub fn tiny_model_dir_seeded(dir: &Path, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = tiny_config();
    seeded(seed, || {
        let model = LlamaForCausalLM::<B>::init(&config, &Default::default());
        save_model(&model, &config, dir, SaveDtype::F32).unwrap();
    });
    write_tokenizer(dir);
    dir.to_path_buf()
}

/// Write a random tiny reward model directory at `dir` (the tiny model with
/// a score head, `LlamaForSequenceClassification`, and the tiny tokenizer),
/// its weights drawn from `seed`.
pub fn tiny_reward_model_dir_seeded(dir: &Path, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = tiny_config();
    seeded(seed, || {
        let model = RewardModel::<B>::init(&config, &Default::default());
        save_reward_model(&model, &config, dir, SaveDtype::F32).unwrap();
    });
    write_tokenizer(dir);
    dir.to_path_buf()
}

/// Run `draw` with the backend generator seeded from `seed`, alone among the
/// callers of this function. The generator is process-global and tests run
/// in parallel: a test drawing from it while another seeds and draws its
/// model changes that model's weights (a reward-model helper doing so made
/// thresholds on the tiny model flaky under load). Parameters are drawn
/// lazily, so `draw` must materialise them (save the model, say).
pub fn seeded<R>(seed: u64, draw: impl FnOnce() -> R) -> R {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    B::seed(&Default::default(), seed);
    draw()
}

/// Write `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `dir`.
pub fn write_tokenizer(dir: &Path) {
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer_json()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&json!({
            "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
            "unk_token": "<unk>", "add_bos_token": false, "chat_template": TEMPLATE
        }))
        .unwrap(),
    )
    .unwrap();
}

/// Overwrite model weights in a directory (e.g. to poison a row).
pub fn rewrite_model<F>(dir: &Path, f: F)
where
    F: FnOnce(LlamaForCausalLM<B>) -> LlamaForCausalLM<B>,
{
    let (config, model) = alignkit_model::load_model::<B>(dir, &Default::default()).unwrap();
    let model = f(model);
    save_model(&model, &config, dir, SaveDtype::F32).unwrap();
}

/// Question/answer pairs to memorise, as chat records.
pub const PAIRS: [(&str, &str); 6] = [
    ("sky?", "blue"),
    ("grass?", "green"),
    ("snow?", "white"),
    ("coal?", "black"),
    ("sun?", "yellow"),
    ("blood?", "red"),
];

/// Write `pairs` as a JSONL file of `{"messages": [user, assistant]}` records.
pub fn write_chat_data(path: &Path, pairs: &[(&str, &str)]) {
    let mut text = String::new();
    for (q, a) in pairs {
        let rec = json!({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]});
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Questions answered politely (chosen) or rudely (rejected).
pub const PREFS: [(&str, &str, &str); 6] = [
    ("sky?", "blue, thanks", "no"),
    ("grass?", "green, thanks", "no"),
    ("snow?", "white, thanks", "go away"),
    ("coal?", "black, thanks", "no"),
    ("sun?", "yellow, thanks", "whatever"),
    ("blood?", "red, thanks", "no"),
];

/// Write `(prompt, chosen, rejected)` triples as a JSONL file of
/// conversational preference records.
pub fn write_prefs(path: &Path, prefs: &[(&str, &str, &str)]) {
    let mut text = String::new();
    for (q, c, r) in prefs {
        let rec = json!({
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        });
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// Every record of a run's `metrics.jsonl`.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    crate::run::read_metrics(&run.join("metrics.jsonl")).unwrap()
}

/// The value of `key` in every record of a run's `metrics.jsonl` (NaN where absent).
pub fn series(run: &Path, key: &str) -> Vec<f64> {
    metrics(run)
        .iter()
        .map(|m| m[key].as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Float parameters by name, as bits.
pub fn bits<Bk: Backend, M: Module<Bk>>(m: &M) -> BTreeMap<String, Vec<u32>> {
    alignkit_model::checkpoint::named_tensors::<Bk, _>(m)
        .into_iter()
        .map(|(k, (_, v))| (k, v.into_iter().map(f32::to_bits).collect()))
        .collect()
}

/// What a kill -9 in the middle of writing checkpoint `step` of `run` leaves
/// on disk: its temporary directory with a truncated weights file.
pub fn leave_partial_checkpoint(run: &Path, step: usize) -> PathBuf {
    let partial = run.join(format!("checkpoints/.tmp-step-{step}"));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.safetensors"), b"trunc").unwrap();
    partial
}

/// The keys of the bookkeeping changes recorded by the resumes of the
/// checkpoint at `run/checkpoints/step-{step}`.
pub fn recorded_resume_keys(run: &Path, step: usize) -> Vec<String> {
    let dir = run.join(format!("checkpoints/step-{step}"));
    crate::TrainerState::read(&dir)
        .unwrap()
        .resumes
        .iter()
        .flat_map(|r| r.changes.iter().map(|c| c.key.clone()))
        .collect()
}

/// A trainer as [`assert_resumes_bit_for_bit`] drives it: train into `out`
/// with `options` (fresh or resuming), calling `step` with every step the run
/// reports, and return the run's outcome.
pub type TrainFn<'a, M> =
    dyn FnMut(&Path, crate::RunOptions<'static>, &mut dyn FnMut(usize)) -> crate::Outcome<M> + 'a;

/// Run a trainer into `out` until it reports step `step`, then stop it as
/// Ctrl-C does: it saves that step's checkpoint and returns, interrupted.
pub fn stop_at<M>(out: &Path, step: usize, train: &mut TrainFn<'_, M>) {
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let options = crate::RunOptions {
        resume: false,
        stop: Some(stop),
        ..Default::default()
    };
    let outcome = train(out, options, &mut |s| {
        if s == step {
            stop.store(true, Ordering::SeqCst);
        }
    });
    assert_eq!(
        (outcome.stop, outcome.steps),
        (crate::StopReason::Interrupted, step)
    );
}

/// `err` is the one line of a resume refused because the model at config
/// key `key` (`path`) holds other weights than when the run started.
pub fn assert_model_replaced(err: &str, key: &str, path: &Path) {
    let want = format!(
        "{key} {} holds a different model than when the run started",
        path.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

/// What [`assert_resumes_bit_for_bit`] kills and compares.
pub struct KilledRun<'a> {
    /// The step whose report kills the run (after the checkpoint it resumes from).
    pub kill_at: usize,
    /// The checkpoint the resumed run starts from.
    pub resumed_from: usize,
    /// A checkpoint whose write the kill cut short (its temporary directory is
    /// left behind, and the resume must clean it up).
    pub partial_at: Option<usize>,
    /// The metrics whose every value must be equal bit for bit.
    pub keys: &'a [&'a str],
}

/// The one test of exact resume every trainer runs: a run killed at
/// `kill_at` and resumed reports the steps after `resumed_from`, and its
/// metrics, final weights (`final/`) and last checkpoint's weight files equal
/// the uninterrupted run's bit for bit. Returns the two run directories
/// (uninterrupted, resumed) for the caller's own checks.
pub fn assert_resumes_bit_for_bit<M>(
    tmp: &Path,
    kill: KilledRun<'_>,
    train: &mut TrainFn<'_, M>,
) -> (PathBuf, PathBuf) {
    let whole_dir = tmp.join("whole");
    let killed_dir = tmp.join("killed");
    let fresh = crate::RunOptions::default();
    let whole = train(&whole_dir, fresh, &mut |_| {});
    // A kill -9: the run stops where it is, nothing more is saved.
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(&killed_dir, fresh, &mut |step| {
            assert_ne!(step, kill.kill_at, "simulated kill");
        })
    }));
    assert!(
        crashed.is_err(),
        "the run was not killed at step {}",
        kill.kill_at
    );
    let partial = kill
        .partial_at
        .map(|step| leave_partial_checkpoint(&killed_dir, step));
    let mut steps = Vec::new();
    let resumed = train(&killed_dir, crate::RunOptions::RESUME, &mut |step| {
        steps.push(step)
    });
    assert_eq!(
        steps,
        (kill.resumed_from + 1..=whole.steps).collect::<Vec<_>>(),
        "resumed from step {}",
        kill.resumed_from
    );
    assert_eq!((resumed.stop, resumed.steps), (whole.stop, whole.steps));
    if let Some(partial) = partial {
        assert!(!partial.exists(), "the partial checkpoint is cleaned up");
    }
    let as_bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
    for key in kill.keys {
        let (want, got) = (series(&whole_dir, key), series(&killed_dir, key));
        assert!(!want.is_empty(), "no `{key}` in the metrics");
        assert_eq!(as_bits(want), as_bits(got), "metric `{key}` differs");
    }
    let dirs = [
        (whole.final_dir, resumed.final_dir),
        (whole.last_checkpoint, resumed.last_checkpoint),
    ];
    for (a, b) in dirs {
        let (a, b) = (a.expect("a final/ or checkpoint"), b.expect("the same"));
        let (fa, fb) = (weight_files(&a), weight_files(&b));
        assert_eq!(
            fa.keys().collect::<Vec<_>>(),
            fb.keys().collect::<Vec<_>>(),
            "{}",
            b.display()
        );
        for (name, bytes) in &fa {
            assert!(bytes == &fb[name], "{} differs", b.join(name).display());
        }
    }
    (whole_dir, killed_dir)
}

/// What one safetensors file holds: its metadata, and each tensor's dtype,
/// shape and bytes.
type FileContent = (
    BTreeMap<String, String>,
    BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
);

/// Every safetensors file under `dir` (a checkpoint: weights, optimizer,
/// critic), by relative path, with its content. Saving is deterministic, so
/// equal content is equal weights. (The metadata's key order in the header
/// is a hash map's, which differs between runs: compared as a map.)
fn weight_files(dir: &Path) -> BTreeMap<PathBuf, FileContent> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "safetensors") {
                let bytes = std::fs::read(&path).unwrap();
                let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
                let metadata = meta.metadata().clone().unwrap_or_default();
                let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                let tensors = st
                    .tensors()
                    .into_iter()
                    .map(|(name, v)| {
                        let t = (
                            format!("{:?}", v.dtype()),
                            v.shape().to_vec(),
                            v.data().to_vec(),
                        );
                        (name, t)
                    })
                    .collect();
                let content = (metadata.into_iter().collect(), tensors);
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), content);
            }
        }
    }
    assert!(!out.is_empty(), "{}: no safetensors file", dir.display());
    out
}
