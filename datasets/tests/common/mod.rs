//! Test helpers: the committed SmolLM2 fixture and a hand-made Llama-3-style
//! model directory (byte-level BPE, `<|begin_of_text|>` added by the
//! post-processor, `<|eot_id|>` ending turns).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alignkit_datasets::{EncodeConfig, Encoder};
use serde_json::{Value, json};

pub fn smollm2_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2")
}

pub fn smollm2(config: EncodeConfig) -> Encoder {
    Encoder::from_dir(smollm2_dir(), config).expect("SmolLM2 fixture loads")
}

pub const BOS: u32 = 256;
pub const END_OF_TEXT: u32 = 257;
pub const START_HEADER: u32 = 258;
pub const END_HEADER: u32 = 259;
pub const EOT: u32 = 260;
/// The one merge: "\n\n" is a single token.
pub const NEWLINES: u32 = 261;

const SPECIALS: [(u32, &str); 5] = [
    (BOS, "<|begin_of_text|>"),
    (END_OF_TEXT, "<|end_of_text|>"),
    (START_HEADER, "<|start_header_id|>"),
    (END_HEADER, "<|end_header_id|>"),
    (EOT, "<|eot_id|>"),
];

/// Llama 3's pre-tokenizer split pattern (keeps "\n\n" together).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Meta's Llama-3-Instruct template, verbatim.
pub const LLAMA3_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// GPT-2's byte → printable character table.
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// Token id of every byte is the byte value.
pub fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

pub fn llama3_tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b as u32));
    }
    // Real files list added tokens in the model vocabulary too; the
    // tokenizers crate keeps their ids only then.
    for (id, t) in SPECIALS {
        vocab.insert(t.to_string(), json!(id));
    }
    let nl = byte_char(b'\n').to_string();
    vocab.insert(format!("{nl}{nl}"), json!(NEWLINES));
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": SPECIALS.iter().map(|(id, t)| added(*id, t)).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [BOS], "tokens": ["<|begin_of_text|>"]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": [[nl.clone(), nl]]
        }
    })
}

/// Write a Llama-3-style model directory. `template` goes to
/// `chat_template.jinja`; `tokenizer_config.json` carries a decoy template
/// that must lose to it.
pub fn llama3_dir(template: &str, add_bos_token: Option<bool>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("tokenizer.json"),
        llama3_tokenizer_json().to_string(),
    )
    .unwrap();
    let mut cfg = json!({
        "bos_token": "<|begin_of_text|>",
        "eos_token": {"content": "<|end_of_text|>", "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
        "chat_template": [
            {"name": "default", "template": "{{ raise_exception('the tokenizer_config.json template was used') }}"},
            {"name": "tool_use", "template": "unused"}
        ],
    });
    if let Some(b) = add_bos_token {
        cfg["add_bos_token"] = json!(b);
    }
    std::fs::write(p.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    std::fs::write(p.join("chat_template.jinja"), template).unwrap();
    std::fs::write(
        p.join("generation_config.json"),
        json!({"eos_token_id": [END_OF_TEXT, EOT]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        p.join("config.json"),
        json!({"model_type": "llama", "max_position_embeddings": 64}).to_string(),
    )
    .unwrap();
    dir
}

pub fn llama3(config: EncodeConfig) -> (tempfile::TempDir, Encoder) {
    let dir = llama3_dir(LLAMA3_TEMPLATE, None);
    let enc = Encoder::from_dir(dir.path(), config).unwrap();
    (dir, enc)
}

pub fn write_jsonl(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}
