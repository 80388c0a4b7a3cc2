//! Hugging Face tokenizer files from the `tokenizer.ggml.*` metadata: byte-level BPE
//! (`tokenizer.ggml.model == "gpt2"`) and SentencePiece-style BPE with byte fallback (`"llama"` in a
//! `gemma3` or `phi3` file).
//!
//! A GGUF stores the vocabulary (`tokens`, one id each), each token's type (llama.cpp
//! `llama_token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), for BPE the
//! merges (`"a b"` strings, best first) and the name of the pre-tokenizer (`tokenizer.ggml.pre`). The
//! pre-tokenizer regexes follow llama.cpp's `llama-vocab.cpp` (`llm_tokenizer_bpe`); control tokens
//! become special added tokens and user-defined ones plain added tokens, as transformers'
//! `integrations/gguf/gguf_tokenizer_mapping.py` does. A SentencePiece vocabulary comes without
//! merges; [`spm_merges`] recovers them as that module's `generate_merges` does: ranked by token
//! position for Gemma, by `tokenizer.ggml.scores` for Phi-3.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::GgufError;
use super::arch::Arch;
use super::reader::GgufFile;

const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split regex as in its HF `tokenizer.json` (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`
/// spells the case-insensitive contractions out as `'[sS]|...`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex as in its HF `tokenizer.json`: Llama 3's with single digits
/// (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`, contractions spelled out the same way).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's word-boundary mark, which Gemma's vocabulary uses for a space.
const SPACE_MARK: char = '\u{2581}';

/// How text is split before BPE, from `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's regex (`"gpt2"`, `"mpt"`, `"olmo"`, `"jais"`, or no `tokenizer.ggml.pre` at all).
    Gpt2,
    /// Every digit on its own, then GPT-2's regex (`"smollm"`, `"starcoder"`, `"refact"`,
    /// `"command-r"`, `"codeshell"`, `"exaone"`): llama.cpp's `"\\p{N}"` split, HF's
    /// `Digits(individual_digits=true)`.
    Gpt2Digits,
    /// Llama 3's regex (`"llama3"`, `"llama-v3"`, `"llama-bpe"`, `"falcon3"`).
    Llama3,
    /// Llama 3's regex under the names of models whose tokenizer is Llama 3's (`"smaug-bpe"`, which
    /// the converter writes for SmolLM3 and for some Llama 3 files, its hash being the same; `"dbrx"`).
    /// Unlike for `"llama-bpe"`, llama.cpp adds no BOS unless the file says so.
    Smaug,
    /// Qwen2's regex (`"qwen2"`: Qwen2, Qwen2.5, Qwen3), after Qwen's NFC normalizer.
    Qwen2,
}

impl PreTokenizer {
    pub fn from_gguf(pre: &str) -> Option<Self> {
        Some(match pre {
            "gpt2" | "mpt" | "olmo" | "jais" => PreTokenizer::Gpt2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
                PreTokenizer::Gpt2Digits
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => PreTokenizer::Llama3,
            "smaug-bpe" | "dbrx" => PreTokenizer::Smaug,
            "qwen2" => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    /// llama.cpp's defaults when the file has no `tokenizer.ggml.add_bos_token`.
    fn default_add_bos(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// A word that is a whole token is not merged: llama.cpp's `ignore_merges` for Llama 3, and what
    /// the `tokenizer.json` of the models behind `"smaug-bpe"` (Llama 3's, SmolLM3's) says, where
    /// llama.cpp does merge; the two differ only on a word the merges would spell otherwise.
    fn ignore_merges(self) -> bool {
        matches!(self, PreTokenizer::Llama3 | PreTokenizer::Smaug)
    }

    /// Qwen's own `tokenizer.json` normalizes to NFC, which llama.cpp skips; the import follows the
    /// model's tokenizer, so text that is already NFC (nearly all) splits the same either way.
    fn normalizer(self) -> Value {
        match self {
            PreTokenizer::Qwen2 => json!({"type": "NFC"}),
            _ => Value::Null,
        }
    }

    fn json(self) -> Value {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split_then_bytes = |regex: &str| {
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ],
            })
        };
        match self {
            PreTokenizer::Gpt2 => byte_level(true),
            PreTokenizer::Gpt2Digits => json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
            }),
            PreTokenizer::Llama3 | PreTokenizer::Smaug => split_then_bytes(LLAMA3_SPLIT),
            PreTokenizer::Qwen2 => split_then_bytes(QWEN2_SPLIT),
        }
    }
}

/// The tokenizer model a vocabulary is for, from `tokenizer.ggml.model` and the architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vocab {
    /// `"gpt2"`: byte-level BPE with the file's merges.
    ByteLevel(PreTokenizer),
    /// `"llama"`: SentencePiece BPE over `▁`-spelled text, unknown bytes as `<0xNN>` tokens, merges
    /// recovered from the vocabulary.
    SentencePiece(Spm),
}

/// How a SentencePiece vocabulary is tokenized, which the file leaves to the architecture (as
/// transformers' GGUF loader does, `GGUF_SENTENCEPIECE_BUILDERS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spm {
    /// Gemma's (`GemmaTokenizer`): no prefix space; merges ranked by token position.
    Gemma,
    /// Phi-3's own `tokenizer.json` (Llama 2's legacy `LlamaTokenizerFast`): `▁` prepended to each
    /// piece of text between special tokens, as llama.cpp does (`tokenizer_add_space_prefix`, on
    /// unless `tokenizer.ggml.add_space_prefix` is false); merges ranked by `tokenizer.ggml.scores`.
    Phi3 { prefix_space: bool },
}

/// The tokenizer files of an HF model directory, as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerFiles {
    pub tokenizer_json: Value,
    pub tokenizer_config_json: Value,
    pub generation_config_json: Value,
    /// `tokenizer.chat_template`, also written as `chat_template.jinja`.
    pub chat_template: Option<String>,
    /// Things a reader should know that are not errors (e.g. duplicate tokens).
    pub warnings: Vec<String>,
}

/// GPT-2's byte → char table (`bytes_to_unicode`): printable Latin-1 bytes stand for themselves,
/// the other 68 bytes for U+0100.. in order.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let code = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// Whether every char of `token` is in the byte-level alphabet.
fn is_byte_level(token: &str) -> bool {
    token.chars().all(|c| {
        let c = c as u32;
        (0x21..=0x7E).contains(&c) || (0xA1..=0xAC).contains(&c) || (0xAE..=0x143).contains(&c)
    })
}

fn id_token<'a>(tokens: &[&'a str], id: Option<u64>) -> Option<&'a str> {
    id.and_then(|i| tokens.get(usize::try_from(i).ok()?).copied())
}

/// How a vocabulary turns into `tokenizer.json`'s model and pipeline.
struct Built {
    /// `tokenizer.json`'s `"model"`.
    model: Value,
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
    /// The post-processor before BOS/EOS are added, if the pipeline has one.
    post_processor: Option<Value>,
    /// (id, content, special) of the tokens matched whole in the input.
    added: Vec<(usize, String, bool)>,
    /// llama.cpp's `add_bos` when the file does not say.
    default_add_bos: bool,
}

/// Build the tokenizer files of an `arch` model. `model_max_length` is the context length for
/// `tokenizer_config.json`.
pub fn tokenizer_files(
    file: &GgufFile,
    arch: Arch,
    model_max_length: Option<usize>,
) -> Result<TokenizerFiles, GgufError> {
    let path = file.path();
    let mut warnings = Vec::new();
    let vocab_kind = match file.get_str("tokenizer.ggml.model")? {
        "gpt2" => Vocab::ByteLevel(match file.opt_str("tokenizer.ggml.pre")? {
            Some(name) => PreTokenizer::from_gguf(name).ok_or_else(|| {
                GgufError::unsupported(path, format!("tokenizer.ggml.pre {name:?}"))
            })?,
            None => {
                warnings.push("no tokenizer.ggml.pre: assuming GPT-2 pre-tokenization".to_string());
                PreTokenizer::Gpt2
            }
        }),
        "llama" if arch == Arch::Gemma3 => {
            if file.opt_bool("tokenizer.ggml.add_space_prefix")? == Some(true) {
                return Err(GgufError::unsupported(
                    path,
                    "tokenizer.ggml.add_space_prefix = true in a gemma3 file",
                ));
            }
            Vocab::SentencePiece(Spm::Gemma)
        }
        "llama" if arch == Arch::Phi3 => Vocab::SentencePiece(Spm::Phi3 {
            // llama.cpp's default for a SentencePiece vocabulary.
            prefix_space: file
                .opt_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true),
        }),
        "llama" => {
            return Err(GgufError::unsupported(
                path,
                format!(
                    "tokenizer.ggml.model \"llama\" (SentencePiece) in a {:?} file (only gemma3's \
                     and phi3's)",
                    arch.gguf_name()
                ),
            ));
        }
        model => {
            return Err(GgufError::unsupported(
                path,
                format!(
                    "tokenizer.ggml.model {model:?} (only byte-level BPE, \"gpt2\", and gemma3's \
                     and phi3's SentencePiece, \"llama\")"
                ),
            ));
        }
    };

    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let token_types = match file.value("tokenizer.ggml.token_type") {
        Some(_) => file.get_i64_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if token_types.len() != tokens.len() {
        return Err(GgufError::malformed(
            path,
            format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            ),
        ));
    }

    let bos_id = file.opt_u64("tokenizer.ggml.bos_token_id")?;
    let eos_id = file.opt_u64("tokenizer.ggml.eos_token_id")?;
    let unk_id = file.opt_u64("tokenizer.ggml.unknown_token_id")?;
    let pad_id = file.opt_u64("tokenizer.ggml.padding_token_id")?;
    let eot_id = file.opt_u64("tokenizer.ggml.eot_token_id")?;
    for (key, id) in [
        ("bos", bos_id),
        ("eos", eos_id),
        ("unknown", unk_id),
        ("padding", pad_id),
        ("eot", eot_id),
    ] {
        if let Some(id) = id
            && id_token(&tokens, Some(id)).is_none()
        {
            return Err(GgufError::malformed(
                path,
                format!(
                    "tokenizer.ggml.{key}_token_id {id} is outside the vocabulary of {}",
                    tokens.len()
                ),
            ));
        }
    }

    let built = match vocab_kind {
        Vocab::ByteLevel(pre) => byte_level(file, pre, &tokens, &token_types, &mut warnings)?,
        Vocab::SentencePiece(spm) => {
            let scores = match spm {
                Spm::Gemma => None,
                Spm::Phi3 { .. } => {
                    let scores = file.get_f64_array("tokenizer.ggml.scores")?;
                    if scores.len() != tokens.len() {
                        return Err(GgufError::malformed(
                            path,
                            format!(
                                "tokenizer.ggml.scores has {} entries for {} tokens",
                                scores.len(),
                                tokens.len()
                            ),
                        ));
                    }
                    Some(scores)
                }
            };
            sentencepiece(
                spm,
                &tokens,
                &token_types,
                scores.as_deref(),
                id_token(&tokens, unk_id),
                &mut warnings,
            )
        }
    };

    let add_bos = file
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(built.default_add_bos);
    let add_eos = file
        .opt_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);

    let post_processor = if add_bos || add_eos {
        let bos = id_token(&tokens, bos_id).filter(|_| add_bos);
        let eos = id_token(&tokens, eos_id).filter(|_| add_eos);
        if add_bos && bos.is_none() || add_eos && eos.is_none() {
            return Err(GgufError::malformed(
                path,
                "tokenizer.ggml.add_bos_token/add_eos_token is set but the token id is missing",
            ));
        }
        let template = template_processing(bos_id, bos, eos_id, eos);
        match built.post_processor {
            Some(first) => json!({"type": "Sequence", "processors": [first, template]}),
            None => template,
        }
    } else {
        built.post_processor.unwrap_or(Value::Null)
    };

    let mut added_tokens = Vec::new();
    let mut added_decoder = Map::new();
    for (id, content, special) in &built.added {
        added_tokens.push(json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": special,
        }));
        added_decoder.insert(
            id.to_string(),
            json!({
                "content": content, "lstrip": false, "normalized": false,
                "rstrip": false, "single_word": false, "special": special,
            }),
        );
    }

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": built.normalizer,
        "pre_tokenizer": built.pre_tokenizer,
        "post_processor": post_processor,
        "decoder": built.decoder,
        "model": built.model,
    });

    let chat_template = file.opt_str("tokenizer.chat_template")?.map(str::to_string);
    let mut config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "added_tokens_decoder": added_decoder,
        "bos_token": id_token(&tokens, bos_id),
        "eos_token": id_token(&tokens, eos_id),
        "pad_token": id_token(&tokens, pad_id),
        "unk_token": id_token(&tokens, unk_id),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let Some(n) = model_max_length {
        config["model_max_length"] = json!(n);
    }
    if let Some(t) = &chat_template {
        config["chat_template"] = json!(t);
    }

    // llama.cpp stops generating at EOS or EOT; HF lists both ids as `eos_token_id`.
    let eos_ids: Vec<u64> = eos_id
        .into_iter()
        .chain(eot_id.filter(|&e| Some(e) != eos_id))
        .collect();
    let mut generation = BTreeMap::new();
    if let Some(b) = bos_id {
        generation.insert("bos_token_id", json!(b));
    }
    match eos_ids.as_slice() {
        [] => {}
        [one] => {
            generation.insert("eos_token_id", json!(one));
        }
        many => {
            generation.insert("eos_token_id", json!(many));
        }
    }
    if let Some(p) = pad_id {
        generation.insert("pad_token_id", json!(p));
    }

    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config_json: config,
        generation_config_json: json!(generation),
        chat_template,
        warnings,
    })
}

/// Byte-level BPE: the file's merges, every token spelled in GPT-2's byte alphabet.
fn byte_level(
    file: &GgufFile,
    pre: PreTokenizer,
    tokens: &[&str],
    token_types: &[i64],
    warnings: &mut Vec<String>,
) -> Result<Built, GgufError> {
    let path = file.path();
    let merges = match file.value("tokenizer.ggml.merges") {
        Some(_) => file.get_str_array("tokenizer.ggml.merges")?,
        None => Vec::new(),
    };

    // Vocabulary: byte-level spelling. A normal token spelled with raw characters (a llama.cpp
    // mislabel) is respelled byte by byte, as transformers does; added tokens keep their text,
    // since llama.cpp matches them verbatim in the input.
    let table = byte_to_char();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(token_types).enumerate() {
        let is_added = ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED;
        let spelled = if is_added || is_byte_level(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| table[usize::from(b)]).collect()
        };
        if vocab.insert(spelled.clone(), json!(id)).is_some() {
            warnings.push(format!(
                "token {spelled:?} appears more than once; id {id} is the one kept"
            ));
        }
        if is_added {
            added.push((id, token.to_string(), ty == TOKEN_TYPE_CONTROL));
        }
    }

    // Merges: llama.cpp splits `"a b"` at the first space after the first byte (`find(' ', 1)`).
    // HF `tokenizers` refuses to load merges whose pieces or result are not in the vocabulary.
    let mut merge_pairs = Vec::with_capacity(merges.len());
    let mut unknown_merges = 0;
    for (i, m) in merges.iter().enumerate() {
        match m
            .as_bytes()
            .get(1..)
            .and_then(|rest| rest.iter().position(|&b| b == b' '))
        {
            Some(at) => {
                let (a, b) = (&m[..at + 1], &m[at + 2..]);
                let known = [a, b, &format!("{a}{b}")]
                    .iter()
                    .all(|t| vocab.contains_key(*t));
                if !known {
                    unknown_merges += 1;
                }
                merge_pairs.push(json!([a, b]));
            }
            None => {
                return Err(GgufError::malformed(
                    path,
                    format!("tokenizer.ggml.merges[{i}] = {m:?} is not two tokens"),
                ));
            }
        }
    }
    if unknown_merges > 0 {
        warnings.push(format!(
            "{unknown_merges} merges use tokens missing from the vocabulary; HF tokenizers will \
             refuse to load tokenizer.json"
        ));
    }

    Ok(Built {
        model: json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre.ignore_merges(),
            "vocab": vocab,
            "merges": merge_pairs,
        }),
        normalizer: pre.normalizer(),
        pre_tokenizer: pre.json(),
        decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
        post_processor: Some(
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
        ),
        added,
        default_add_bos: pre.default_add_bos(),
    })
}

/// SentencePiece BPE as transformers builds it from a GGUF: spaces become `▁` before BPE, bytes
/// without a token fall back to `<0xNN>`, and decoding reverses both.
///
/// Gemma (`GemmaTokenizer`): a token of spaces only is stored with real spaces (`"  "`) where the
/// vocabulary spells `"▁▁"`, so it is respelled first, as transformers' `gemma_tokenizer` does; the
/// merges follow the token order, since Gemma's scores do not. Phi-3 (`phi3_tokenizer`, the shape of
/// its own `tokenizer.json`): a normalizer prepends `▁` to every piece of text between special
/// tokens, no pre-tokenizer, and the merges follow `scores`, which the caller passes for Phi-3.
fn sentencepiece(
    spm: Spm,
    tokens: &[&str],
    token_types: &[i64],
    scores: Option<&[f64]>,
    unk: Option<&str>,
    warnings: &mut Vec<String>,
) -> Built {
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if spm == Spm::Gemma && t.contains(' ') && t.trim().is_empty() {
                SPACE_MARK.to_string().repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut vocab = Map::new();
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(spelled.len());
    for (id, token) in spelled.iter().enumerate() {
        if vocab.insert(token.clone(), json!(id)).is_some() {
            warnings.push(format!(
                "token {token:?} appears more than once; id {id} is the one kept"
            ));
        }
        ids.insert(token, id);
    }
    // Control tokens and the unknown token are special; user-defined ones are plain added tokens
    // unless respelled above (a run of spaces then stays an ordinary vocabulary entry).
    let added = tokens
        .iter()
        .zip(&spelled)
        .zip(token_types)
        .enumerate()
        .filter_map(|(id, ((&token, spelled), &ty))| {
            let special = ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_UNKNOWN;
            let user = ty == TOKEN_TYPE_USER_DEFINED && token == spelled;
            (special || user).then(|| (id, token.to_string(), special))
        })
        .collect();
    let merges: Vec<Value> = match scores {
        Some(scores) => spm_merges(&spelled, &ids, |id| scores[id]),
        None => spm_merges(&spelled, &ids, |id| -(id as f64)),
    }
    .into_iter()
    .map(|(a, b)| json!([a, b]))
    .collect();

    let space = SPACE_MARK.to_string();
    let spaces_to_marks = json!({"type": "Replace", "pattern": {"String": " "}, "content": space});
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    let (normalizer, pre_tokenizer) = match spm {
        Spm::Gemma => (
            spaces_to_marks,
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
        ),
        Spm::Phi3 { prefix_space } => {
            let normalizer = match prefix_space {
                true => json!({
                    "type": "Sequence",
                    "normalizers": [{"type": "Prepend", "prepend": space}, spaces_to_marks],
                }),
                false => spaces_to_marks,
            };
            if prefix_space {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (normalizer, Value::Null)
        }
    };

    Built {
        model: json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }),
        normalizer,
        pre_tokenizer,
        decoder: json!({"type": "Sequence", "decoders": decoders}),
        post_processor: None,
        added,
        // llama.cpp adds BOS for a SentencePiece vocabulary unless told otherwise.
        default_add_bos: true,
    }
}

/// The merges a BPE vocabulary without any implies, best first: every split of a token into two
/// tokens, ranked by the token's `score` (highest first), then by the longer left piece, then by
/// the longer right piece; ties keep the order in which tokens first appear. This is transformers'
/// `generate_merges` with scores; a token listed twice has the id, and so the score, of its last
/// place. Gemma's score is minus the position, as transformers' `gemma_tokenizer` ranks it.
fn spm_merges<'a>(
    tokens: &'a [String],
    ids: &HashMap<&str, usize>,
    score: impl Fn(usize) -> f64,
) -> Vec<(&'a str, &'a str)> {
    let mut seen = HashSet::with_capacity(tokens.len());
    // (score, left chars, right chars, first appearance, left, right)
    let mut merges = Vec::new();
    for (first, token) in tokens.iter().enumerate() {
        if !seen.insert(token.as_str()) {
            continue;
        }
        let s = score(ids[token.as_str()]);
        let n_chars = token.chars().count();
        for (k, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                merges.push((s, k, n_chars - k, first, left, right));
            }
        }
    }
    merges.sort_by(|a, b| {
        (b.0.total_cmp(&a.0))
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
            .then(a.3.cmp(&b.3))
    });
    merges.into_iter().map(|m| (m.4, m.5)).collect()
}

/// `TemplateProcessing` adding BOS in front of and/or EOS after each sequence, like HF's Llama 3
/// `tokenizer.json`.
fn template_processing(
    bos_id: Option<u64>,
    bos: Option<&str>,
    eos_id: Option<u64>,
    eos: Option<&str>,
) -> Value {
    let seq = |s: &str, type_id: u32| {
        let mut pieces = Vec::new();
        if let Some(b) = bos {
            pieces.push(json!({"SpecialToken": {"id": b, "type_id": type_id}}));
        }
        pieces.push(json!({"Sequence": {"id": s, "type_id": type_id}}));
        if let Some(e) = eos {
            pieces.push(json!({"SpecialToken": {"id": e, "type_id": type_id}}));
        }
        pieces
    };
    let mut special = Map::new();
    for (tok, id) in [(bos, bos_id), (eos, eos_id)] {
        if let (Some(t), Some(id)) = (tok, id) {
            special.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
        }
    }
    let mut pair = seq("A", 0);
    pair.extend(seq("B", 1));
    json!({
        "type": "TemplateProcessing",
        "single": seq("A", 0),
        "pair": pair,
        "special_tokens": special,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufValue;
    use crate::gguf::testing::{GgufBuilder, fixture};

    #[test]
    fn byte_table_is_gpt2() {
        let t = byte_to_char();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(t[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(t[0], 'Ā'); // U+0100
        assert_eq!(t[0xAD], 'Ń'); // U+0143, the last one
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
        assert!(t.iter().all(|c| is_byte_level(&c.to_string())));
        assert!(!is_byte_level(" "));
        assert!(!is_byte_level("é中"));
    }

    #[test]
    fn pre_tokenizer_names() {
        assert_eq!(
            PreTokenizer::from_gguf("smollm"),
            Some(PreTokenizer::Gpt2Digits)
        );
        assert_eq!(
            PreTokenizer::from_gguf("llama-bpe"),
            Some(PreTokenizer::Llama3)
        );
        assert_eq!(
            PreTokenizer::from_gguf("smaug-bpe"),
            Some(PreTokenizer::Smaug)
        );
        assert_eq!(PreTokenizer::from_gguf("gpt2"), Some(PreTokenizer::Gpt2));
        assert_eq!(PreTokenizer::from_gguf("qwen2"), Some(PreTokenizer::Qwen2));
        assert_eq!(PreTokenizer::from_gguf("default"), None);
    }

    fn files(b: &GgufBuilder) -> Result<TokenizerFiles, GgufError> {
        tokenizer_files(
            &GgufFile::from_bytes("tok.gguf", b.build()).unwrap(),
            Arch::Llama,
            Some(64),
        )
    }

    /// The rebuilt tokenizer.json has the same vocabulary, merges, added tokens and pipeline as
    /// the `tokenizers` tokenizer the fixture's vocabulary was trained with.
    #[test]
    fn tiny_llama_matches_trained_tokenizer() {
        let f = GgufFile::open(fixture("tiny-llama.gguf.bin")).unwrap();
        let ours = tokenizer_files(&f, Arch::Llama, Some(128)).unwrap();
        let original: Value =
            serde_json::from_slice(&std::fs::read(fixture("tiny-llama.tokenizer.json")).unwrap())
                .unwrap();
        let t = &ours.tokenizer_json;
        // GGUF lists every token in its vocabulary, including `<think>`, which `tokenizers` added
        // on top of the trained model's vocabulary.
        let mut vocab = original["model"]["vocab"].clone();
        vocab["<think>"] = json!(300);
        assert_eq!(t["model"]["vocab"], vocab);
        assert_eq!(t["model"]["merges"], original["model"]["merges"]);
        for key in ["pre_tokenizer", "post_processor", "decoder", "normalizer"] {
            assert_eq!(t[key], original[key], "{key}");
        }
        for key in [
            "type",
            "byte_fallback",
            "fuse_unk",
            "ignore_merges",
            "unk_token",
        ] {
            assert_eq!(t["model"][key], original["model"][key], "model.{key}");
        }
        let summary = |v: &Value| -> Vec<(Value, Value, Value)> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|a| (a["id"].clone(), a["content"].clone(), a["special"].clone()))
                .collect()
        };
        assert_eq!(
            summary(&t["added_tokens"]),
            summary(&original["added_tokens"])
        );
        assert!(ours.warnings.is_empty(), "{:?}", ours.warnings);

        let c = &ours.tokenizer_config_json;
        assert_eq!(c["bos_token"], "<|im_start|>");
        assert_eq!(c["eos_token"], "<|im_end|>");
        assert_eq!(c["pad_token"], "<|im_end|>");
        assert_eq!(c["unk_token"], "<|endoftext|>");
        assert_eq!(c["add_bos_token"], false);
        assert_eq!(c["model_max_length"], 128);
        assert_eq!(c["added_tokens_decoder"]["300"]["content"], "<think>");
        assert_eq!(c["added_tokens_decoder"]["300"]["special"], false);
        let template = ours.chat_template.as_deref().unwrap();
        assert!(template.starts_with("{% for message in messages %}"));
        assert_eq!(c["chat_template"], template);
        assert_eq!(
            ours.generation_config_json,
            json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
        );
    }

    /// The tokenizer files of `tiny-<name>.gguf.bin`, after checking that the Rust `tokenizers`
    /// crate, given the rebuilt tokenizer.json, encodes each text of `tiny-<name>.tokenizer-ids.json`
    /// to its ids (special tokens added as the file says).
    fn encodes_like_reference(name: &str, arch: Arch) -> TokenizerFiles {
        let f = GgufFile::open(fixture(&format!("tiny-{name}.gguf.bin"))).unwrap();
        let files = tokenizer_files(&f, arch, Some(128)).unwrap();
        let tok: tokenizers::Tokenizer = files.tokenizer_json.to_string().parse().unwrap();
        let cases: Vec<Value> = serde_json::from_slice(
            &std::fs::read(fixture(&format!("tiny-{name}.tokenizer-ids.json"))).unwrap(),
        )
        .unwrap();
        for c in &cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
            let ours = tok.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(ours, want, "{name}: {text:?}");
        }
        assert!(cases.len() >= 9, "{name}");
        files
    }

    /// Qwen2/Qwen3 (`"qwen2"`: NFC, then Qwen2's split), OLMo 2's SmolLM-style vocabulary and
    /// SmolLM3's Llama 3-style one (`"smaug-bpe"`, no BOS) encode every text as the trained
    /// `tokenizers` tokenizer does, decomposed accents and non-ASCII numerals included, and carry
    /// its pipeline.
    #[test]
    fn byte_level_families_encode_like_their_trained_tokenizer() {
        for (name, arch) in [
            ("qwen2", Arch::Qwen2),
            ("qwen3", Arch::Qwen3),
            ("olmo2", Arch::Olmo2),
            ("smollm3", Arch::Smollm3),
        ] {
            let files = encodes_like_reference(name, arch);
            assert!(files.warnings.is_empty(), "{name}: {:?}", files.warnings);
            let original: Value = serde_json::from_slice(
                &std::fs::read(fixture(&format!("tiny-{name}.tokenizer.json"))).unwrap(),
            )
            .unwrap();
            let t = &files.tokenizer_json;
            for key in ["normalizer", "pre_tokenizer", "decoder"] {
                assert_eq!(t[key], original[key], "{name}: {key}");
            }
            assert_eq!(t["model"]["merges"], original["model"]["merges"], "{name}");
            assert_eq!(
                t["model"]["ignore_merges"], original["model"]["ignore_merges"],
                "{name}"
            );
        }
        let smollm3 = encodes_like_reference("smollm3", Arch::Smollm3);
        assert_eq!(smollm3.tokenizer_config_json["add_bos_token"], false);
        assert_eq!(
            smollm3.tokenizer_json["post_processor"]["type"],
            "ByteLevel"
        );
    }

    /// The SentencePiece tokenizer imported for `family` encodes like its reference and has the
    /// reference tokenizer.json's pipeline, model fields and added tokens (those with an id inside
    /// the vocabulary); returns the import for the family's own checks.
    fn sentencepiece_matches_reference(
        family: &str,
        arch: Arch,
        model_keys: &[&str],
    ) -> TokenizerFiles {
        let files = encodes_like_reference(family, arch);
        assert!(files.warnings.is_empty(), "{:?}", files.warnings);
        let reference: Value = serde_json::from_slice(
            &std::fs::read(fixture(&format!("tiny-{family}.tokenizer.json"))).unwrap(),
        )
        .unwrap();
        let (t, r) = (&files.tokenizer_json, &reference);
        for key in ["normalizer", "pre_tokenizer", "decoder"] {
            assert_eq!(t[key], r[key], "{key}");
        }
        for key in model_keys {
            assert_eq!(t["model"][key], r["model"][key], "model.{key}");
        }
        let n_vocab = t["model"]["vocab"].as_object().unwrap().len() as u64;
        let added = |v: &Value| -> Vec<(Value, Value, Value)> {
            let mut a: Vec<_> = v
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["id"].as_u64() < Some(n_vocab))
                .map(|a| (a["id"].clone(), a["content"].clone(), a["special"].clone()))
                .collect();
            a.sort_by_key(|(id, ..)| id.as_u64());
            a
        };
        assert_eq!(added(&t["added_tokens"]), added(&r["added_tokens"]));
        files
    }

    /// Phi-3's SentencePiece vocabulary: ids as a tokenizer shaped like Phi-3's own tokenizer.json
    /// gives them (a `▁` before each piece of text between special tokens, BOS first), and the
    /// vocabulary, merges (by score) and pipeline transformers' GGUF loader builds from the file.
    #[test]
    fn phi3_sentencepiece_encodes_like_phi3_tokenizer() {
        let keys = [
            "vocab",
            "merges",
            "byte_fallback",
            "fuse_unk",
            "ignore_merges",
        ];
        let files = sentencepiece_matches_reference("phi3", Arch::Phi3, &keys);
        let c = &files.tokenizer_config_json;
        assert_eq!(
            (&c["bos_token"], &c["eos_token"], &c["unk_token"]),
            (&json!("<s>"), &json!("<|endoftext|>"), &json!("<unk>"))
        );
        assert_eq!(c["add_bos_token"], true);
        assert_eq!(files.tokenizer_json["model"]["unk_token"], "<unk>");
    }

    /// Gemma 3's SentencePiece vocabulary: ids as sentencepiece itself gives them (BOS first), and
    /// the vocabulary, merges and pipeline transformers' GGUF loader builds from the same file.
    /// (`GemmaTokenizer` also adds its default `<mask>` past the end of a vocabulary without one;
    /// a token the model has no embedding for is not one to copy.)
    #[test]
    fn gemma3_sentencepiece_encodes_like_sentencepiece() {
        let keys = [
            "vocab",
            "merges",
            "byte_fallback",
            "fuse_unk",
            "unk_token",
            "ignore_merges",
        ];
        let files = sentencepiece_matches_reference("gemma3", Arch::Gemma3, &keys);
        let c = &files.tokenizer_config_json;
        assert_eq!(
            (&c["bos_token"], &c["eos_token"]),
            (&json!("<bos>"), &json!("<eos>"))
        );
        assert_eq!(
            (&c["pad_token"], &c["unk_token"]),
            (&json!("<pad>"), &json!("<unk>"))
        );
        assert_eq!(c["add_bos_token"], true);
    }

    fn ids_of(tokens: &[String]) -> HashMap<&str, usize> {
        let mut ids = HashMap::new();
        for (id, t) in tokens.iter().enumerate() {
            ids.insert(t.as_str(), id);
        }
        ids
    }

    /// transformers' `generate_merges` by token position (Gemma): earlier tokens first, longer left
    /// pieces first within a token, only splits into two tokens; a duplicate counts at its last
    /// position.
    #[test]
    fn gemma_merges_by_position() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc", "b"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            spm_merges(&tokens, &ids_of(&tokens), |id| -(id as f64)),
            [("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]
        );
    }

    /// transformers' `generate_merges` by score (Phi-3): higher scores first wherever the token
    /// stands ("ba"); among equal scores the longer left piece, then the first-listed token.
    #[test]
    fn phi3_merges_by_score() {
        let tokens: Vec<String> = ["a", "b", "c", "d", "ab", "cd", "abc", "ba", "abcd"]
            .map(String::from)
            .to_vec();
        let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -3.0, -0.5, -1.0];
        assert_eq!(
            spm_merges(&tokens, &ids_of(&tokens), |id| scores[id]),
            [
                ("b", "a"),
                ("abc", "d"),
                ("ab", "cd"),
                ("a", "b"),
                ("c", "d"),
                ("ab", "c")
            ]
        );
    }

    /// `"smaug-bpe"` (SmolLM3's files) splits like Llama 3 and ignores merges as its
    /// tokenizer.json does, but llama.cpp adds BOS only where the file says so.
    #[test]
    fn smaug_bpe_adds_no_bos_by_default() {
        let b = GgufBuilder::tiny_llama().str("tokenizer.ggml.pre", "smaug-bpe");
        let out = files(&b).unwrap();
        let t = &out.tokenizer_json;
        assert_eq!(t["model"]["ignore_merges"], true);
        assert_eq!(
            t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"],
            LLAMA3_SPLIT
        );
        assert_eq!(t["post_processor"]["type"], "ByteLevel");
        assert_eq!(out.tokenizer_config_json["add_bos_token"], false);
        let b = b.kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(true));
        assert_eq!(
            files(&b).unwrap().tokenizer_config_json["add_bos_token"],
            true
        );
    }

    /// A Phi-3 SentencePiece vocabulary: `add_space_prefix = false` drops the `▁` prepended to
    /// each text (and its strip when decoding); the merges need the scores.
    #[test]
    fn phi3_sentencepiece_options() {
        let spm = GgufBuilder::tiny(Arch::Phi3)
            .str("tokenizer.ggml.model", "llama")
            .kv(
                "tokenizer.ggml.scores",
                GgufValue::Array(
                    [0.0, 0.0, -1.0, -2.0, -3.0, -4.0]
                        .map(GgufValue::F32)
                        .to_vec(),
                ),
            );
        let phi3 = |b: &GgufBuilder| {
            tokenizer_files(
                &GgufFile::from_bytes("tok.gguf", b.build()).unwrap(),
                Arch::Phi3,
                None,
            )
        };
        let out = phi3(&spm).unwrap();
        let t = &out.tokenizer_json;
        assert_eq!(t["normalizer"]["normalizers"][0]["type"], "Prepend");
        assert_eq!(t["pre_tokenizer"], Value::Null);
        assert_eq!(t["decoder"]["decoders"][3]["type"], "Strip");
        assert_eq!(t["model"]["merges"], json!([["a", "b"]]));
        assert_eq!(out.tokenizer_config_json["add_bos_token"], true);

        let out = phi3(
            &spm.clone()
                .kv("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false)),
        )
        .unwrap();
        assert_eq!(out.tokenizer_json["normalizer"]["type"], "Replace");
        assert_eq!(
            out.tokenizer_json["decoder"]["decoders"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );

        let mut no_scores = spm;
        no_scores.kvs.retain(|(k, _)| k != "tokenizer.ggml.scores");
        let e = phi3(&no_scores).unwrap_err().to_string();
        assert!(
            e.ends_with("metadata key tokenizer.ggml.scores is missing"),
            "{e}"
        );
    }

    #[test]
    fn llama3_style_adds_bos_and_lists_eot() {
        let b = GgufBuilder::tiny_llama()
            .str("tokenizer.ggml.pre", "llama-bpe")
            .u32("tokenizer.ggml.eot_token_id", 4);
        let out = files(&b).unwrap();
        let t = &out.tokenizer_json;
        assert_eq!(t["model"]["ignore_merges"], true);
        assert_eq!(t["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
        let post = &t["post_processor"];
        assert_eq!(post["type"], "Sequence");
        let template = &post["processors"][1];
        assert_eq!(template["single"][0]["SpecialToken"]["id"], "<s>");
        assert_eq!(template["special_tokens"]["<s>"]["ids"], json!([0]));
        assert_eq!(out.tokenizer_config_json["add_bos_token"], true);
        assert_eq!(out.generation_config_json["eos_token_id"], json!([1, 4]));

        let b = b.kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(false));
        assert_eq!(
            files(&b).unwrap().tokenizer_json["post_processor"]["type"],
            "ByteLevel"
        );
    }

    #[test]
    fn spelling_and_merges() {
        // A normal token with a raw space is respelled in the byte alphabet; an added one is not;
        // merges split at the first space after the first byte, even when that byte starts "é".
        let b = GgufBuilder::tiny_llama()
            .strs(
                "tokenizer.ggml.tokens",
                &["<s>", "</s>", "é", " x", "éa", "<t x>"],
            )
            .kv(
                "tokenizer.ggml.token_type",
                GgufValue::Array([3, 3, 1, 1, 1, 4].map(GgufValue::I32).to_vec()),
            )
            .strs("tokenizer.ggml.merges", &["é a", "  x"]);
        let out = files(&b).unwrap();
        let t = out.tokenizer_json;
        assert_eq!(t["model"]["vocab"]["Ġx"], 3);
        assert_eq!(t["model"]["vocab"]["é"], 2); // é is in the byte alphabet (U+00E9)
        assert_eq!(t["model"]["vocab"]["<t x>"], 5);
        assert_eq!(t["model"]["merges"], json!([["é", "a"], [" ", "x"]]));
        assert_eq!(t["added_tokens"][2]["content"], "<t x>");
        assert_eq!(t["added_tokens"][2]["special"], false);
        // Neither "a" nor " " is a token: `tokenizers` would reject both merges.
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].starts_with("2 merges use tokens missing"));
    }

    #[test]
    fn tokenizer_errors() {
        let e = files(&GgufBuilder::tiny_llama().str("tokenizer.ggml.model", "llama"))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "tokenizer.ggml.model \"llama\" (SentencePiece) in a \"llama\" file (only \
                 gemma3's and phi3's) is not supported"
            ),
            "{e}"
        );

        let e = files(&GgufBuilder::tiny_llama().str("tokenizer.ggml.model", "bert"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenizer.ggml.model \"bert\" (only byte-level"),
            "{e}"
        );

        let e = files(&GgufBuilder::tiny_llama().str("tokenizer.ggml.pre", "qwen35"))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("tokenizer.ggml.pre \"qwen35\" is not supported"),
            "{e}"
        );

        let e = files(&GgufBuilder::tiny_llama().strs("tokenizer.ggml.merges", &["ab"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenizer.ggml.merges[0] = \"ab\" is not two tokens"),
            "{e}"
        );

        let e = files(&GgufBuilder::tiny_llama().u32("tokenizer.ggml.eos_token_id", 6))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("eos_token_id 6 is outside the vocabulary of 6"),
            "{e}"
        );

        let e = files(&GgufBuilder::tiny_llama().strs("tokenizer.ggml.tokens", &["a"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_type has 6 entries for 1 tokens"), "{e}");

        let mut b = GgufBuilder::tiny_llama();
        b.kvs.retain(|(k, _)| k != "tokenizer.ggml.pre");
        let out = files(&b).unwrap();
        assert_eq!(out.tokenizer_json["pre_tokenizer"]["type"], "ByteLevel");
        assert_eq!(out.warnings.len(), 1);
    }
}
