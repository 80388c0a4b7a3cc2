//! A tiny random Llama with a character-level tokenizer and a ChatML template,
//! and a preference data set, written into a temporary directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alignkit_model::{LlamaConfig, LlamaForCausalLM, ModelType, SaveDtype, save_model};
use alignkit_reward::RewardConfig;
use burn::backend::{Autodiff, Flex};
use serde_json::json;

pub type AB = Autodiff<Flex>;
pub type B = Flex;

pub const CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n.,!?:;'-()";
pub const SPECIALS: [&str; 3] = ["<unk>", "<|im_start|>", "<|im_end|>"];

pub const TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

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

/// Vocabulary 96 ≥ 78 tokens; pad == eos == `<|im_end|>`.
pub fn tiny_config() -> LlamaConfig {
    let mut c = LlamaConfig::tiny(ModelType::Llama);
    c.bos_token_id = None;
    c.eos_token_ids = vec![2];
    c.pad_token_id = Some(2);
    c
}

/// Write a random tiny model directory at `dir`: the same weights every time
/// (the backend generator is seeded under a lock, as tests run in parallel).
pub fn tiny_model_dir(dir: &Path) -> PathBuf {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    std::fs::create_dir_all(dir).unwrap();
    let config = tiny_config();
    let device = Default::default();
    {
        // Parameters are drawn lazily: saving materialises them under the lock.
        let _lock = INIT.lock().unwrap();
        <B as burn::tensor::backend::Backend>::seed(&device, 7);
        let model = LlamaForCausalLM::<B>::init(&config, &device);
        save_model(&model, &config, dir, SaveDtype::F32).unwrap();
    }
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
    dir.to_path_buf()
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

/// A run config over `model` and `data` writing into `out`.
pub fn config(model: &Path, data: &Path, out: &Path) -> RewardConfig {
    let mut c = RewardConfig {
        model: model.to_path_buf(),
        output_dir: out.to_path_buf(),
        learning_rate: 5e-3,
        ..Default::default()
    };
    c.data.train_file = data.to_path_buf();
    c.data.max_len = 64;
    c.train.batch_size = 3;
    c.train.max_steps = 6;
    c.train.save_steps = 3;
    c.train.keep_last = 0;
    c.schedule.kind = alignkit_train::ScheduleKind::Constant;
    c.optim.weight_decay = 0.0;
    c
}

pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    alignkit_train::run::read_metrics(&run.join("metrics.jsonl")).unwrap()
}

pub fn series(run: &Path, key: &str) -> Vec<f64> {
    metrics(run)
        .iter()
        .map(|m| m[key].as_f64().unwrap_or(f64::NAN))
        .collect()
}
