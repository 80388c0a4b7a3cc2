//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, plus
//! what transformers reads beside it: special tokens and `add_bos_token` from
//! `tokenizer_config.json`, the chat template (`chat_template.jinja`, which wins,
//! or `chat_template` in `tokenizer_config.json`), extra end-of-sequence ids from
//! `generation_config.json`, and the context length from `config.json`.
//!
//! BOS policy: the tokenizer "wants" a BOS when `add_bos_token` says so, or,
//! when the config is silent, when `tokenizer.json`'s post-processor adds one.
//! [`Tokenizer::encode`] then puts exactly one BOS in front — none is added
//! when the text already starts with it (a chat template that renders
//! `{{ bos_token }}`), and a doubled one is collapsed.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{DataError, Result};

/// Well-known end-of-turn markers of chat templates. When one of them is a
/// special token of the vocabulary, it ends an assistant turn.
const END_OF_TURN_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
    "<|eom_id|>",
];

/// A token's bytes in the text it was read from: [start, end).
pub type ByteRange = (usize, usize);

/// What transformers reads besides `tokenizer.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// `None`: decided by `tokenizer.json`'s post-processor.
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// The Jinja source of the chat template, if the model has one.
    pub chat_template: Option<String>,
    /// Extra end-of-sequence ids (`generation_config.json` `eos_token_id`).
    pub extra_eos_ids: Vec<u32>,
    /// `max_position_embeddings` from `config.json`.
    pub context_length: Option<usize>,
}

impl TokenizerConfig {
    /// Read `tokenizer_config.json` (required), and `chat_template.jinja`,
    /// `generation_config.json` and `config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let tc = read_json(&path)?;
        let mut cfg = TokenizerConfig {
            bos_token: special_token(&tc, "bos_token", &path)?,
            eos_token: special_token(&tc, "eos_token", &path)?,
            pad_token: special_token(&tc, "pad_token", &path)?,
            unk_token: special_token(&tc, "unk_token", &path)?,
            add_bos_token: optional_bool(&tc, "add_bos_token", &path)?,
            add_eos_token: optional_bool(&tc, "add_eos_token", &path)?,
            chat_template: chat_template_field(&tc, &path)?,
            ..Default::default()
        };
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let src = fs::read_to_string(&jinja).map_err(|error| DataError::Io {
                path: jinja.clone(),
                error,
            })?;
            cfg.chat_template = Some(src);
        }
        let gen_path = dir.join("generation_config.json");
        if gen_path.exists() {
            let gen_cfg = read_json(&gen_path)?;
            cfg.extra_eos_ids = match gen_cfg.get("eos_token_id") {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => id_list(v).ok_or_else(|| {
                    DataError::model(
                        &gen_path,
                        "field `eos_token_id`: expected an integer or a list of integers",
                    )
                })?,
            };
        }
        let config_path = dir.join("config.json");
        if config_path.exists() {
            let config = read_json(&config_path)?;
            cfg.context_length = match config.get("max_position_embeddings") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().map(|n| n as usize).ok_or_else(|| {
                    DataError::model(
                        &config_path,
                        "field `max_position_embeddings`: expected a positive integer",
                    )
                })?),
            };
        }
        Ok(cfg)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|error| DataError::Io {
        path: path.to_owned(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|e| DataError::model(path, format!("malformed JSON: {e}")))
}

/// A special token is a string or an `AddedToken` object `{"content": ...}`.
fn special_token(cfg: &Value, field: &str, path: &Path) -> Result<Option<String>> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(DataError::model(
                path,
                format!("field `{field}`: an AddedToken object needs a string `content`"),
            )),
        },
        Some(_) => Err(DataError::model(
            path,
            format!("field `{field}`: expected a string or an AddedToken object"),
        )),
    }
}

fn optional_bool(cfg: &Value, field: &str, path: &Path) -> Result<Option<bool>> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(DataError::model(
            path,
            format!("field `{field}`: expected true or false"),
        )),
    }
}

/// `chat_template` is a string or a list of `{"name", "template"}`; from a
/// list, transformers uses the one named `default`.
fn chat_template_field(cfg: &Value, path: &Path) -> Result<Option<String>> {
    match cfg.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_owned())),
                    (Some(n), Some(_)) => names.push(n.to_owned()),
                    _ => {
                        return Err(DataError::model(
                            path,
                            "field `chat_template`: list entries need string `name` and `template`",
                        ));
                    }
                }
            }
            Err(DataError::model(
                path,
                format!(
                    "field `chat_template`: no template named `default` (found: {})",
                    names.join(", ")
                ),
            ))
        }
        Some(_) => Err(DataError::model(
            path,
            "field `chat_template`: expected a string or a list of named templates",
        )),
    }
}

fn id_list(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| vec![n as u32]),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_u64().map(|n| n as u32))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
}

/// A special token and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub text: String,
    pub id: u32,
}

/// A tokenizer with the model's special-token conventions.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: TokenizerConfig,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    add_bos: bool,
    add_eos: bool,
    end_of_turn: Vec<u32>,
    special_ids: Vec<u32>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Load from a Hugging Face model directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let bytes = fs::read(&path).map_err(|error| DataError::Io {
            path: path.clone(),
            error,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| DataError::model(&path, format!("cannot load: {e}")))?;
        Self::new(inner, TokenizerConfig::from_dir(dir)?, path)
    }

    /// Build from `tokenizer.json` bytes and a config (tests, embedded use).
    pub fn from_json(tokenizer_json: &[u8], config: TokenizerConfig) -> Result<Self> {
        let path = PathBuf::from("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| DataError::model(&path, format!("cannot load: {e}")))?;
        Self::new(inner, config, path)
    }

    fn new(inner: tokenizers::Tokenizer, config: TokenizerConfig, source: PathBuf) -> Result<Self> {
        let lookup = |name: &str, tok: &Option<String>| -> Result<Option<SpecialToken>> {
            let Some(text) = tok else { return Ok(None) };
            match inner.token_to_id(text) {
                Some(id) => Ok(Some(SpecialToken {
                    text: text.clone(),
                    id,
                })),
                None => Err(DataError::model(
                    &source,
                    format!("{name} `{text}` is not in the vocabulary"),
                )),
            }
        };
        let bos = lookup("bos_token", &config.bos_token)?;
        let eos = lookup("eos_token", &config.eos_token)?;
        let pad = config.pad_token.as_ref().and_then(|t| {
            inner.token_to_id(t).map(|id| SpecialToken {
                text: t.clone(),
                id,
            })
        });

        // Does the post-processor add BOS/EOS? (Llama-3's TemplateProcessing does.)
        let probe = |special: bool| -> Vec<u32> {
            inner
                .encode("a", special)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        let (with, without) = (probe(true), probe(false));
        let post_bos = bos
            .as_ref()
            .is_some_and(|b| with.first() == Some(&b.id) && without.first() != Some(&b.id));
        let post_eos = eos
            .as_ref()
            .is_some_and(|e| with.last() == Some(&e.id) && without.last() != Some(&e.id));
        let add_bos = bos.is_some() && config.add_bos_token.unwrap_or(post_bos);
        let add_eos = eos.is_some() && config.add_eos_token.unwrap_or(post_eos);

        let mut end_of_turn: Vec<u32> = eos.iter().map(|e| e.id).collect();
        end_of_turn.extend(&config.extra_eos_ids);
        let specials = inner.get_added_tokens_decoder();
        for marker in END_OF_TURN_MARKERS {
            if let Some(id) = inner.token_to_id(marker)
                && specials.get(&id).is_some_and(|t| t.special)
            {
                end_of_turn.push(id);
            }
        }
        end_of_turn.sort_unstable();
        end_of_turn.dedup();
        let mut special_ids: Vec<u32> = specials
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| *id)
            .collect();
        special_ids.sort_unstable();

        Ok(Self {
            inner,
            config,
            bos,
            eos,
            pad,
            add_bos,
            add_eos,
            end_of_turn,
            special_ids,
            source,
        })
    }

    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn bos(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }

    pub fn eos(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }

    pub fn pad(&self) -> Option<&SpecialToken> {
        self.pad.as_ref()
    }

    /// The id to pad batches with: `pad_token`, else `eos_token`, else 0.
    /// Padded positions are masked out, so the value only has to be valid.
    pub fn pad_id(&self) -> u32 {
        self.pad.as_ref().or(self.eos.as_ref()).map_or(0, |t| t.id)
    }

    /// Whether encoding puts a BOS in front.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Ids that end an assistant turn or a generation: EOS, the
    /// generation config's EOS ids and known end-of-turn special tokens.
    pub fn end_of_turn_ids(&self) -> &[u32] {
        &self.end_of_turn
    }

    pub fn is_end_of_turn(&self, id: u32) -> bool {
        self.end_of_turn.binary_search(&id).is_ok()
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.config.chat_template.as_deref()
    }

    pub fn context_length(&self) -> Option<usize> {
        self.config.context_length
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// [`Self::encode_raw`] with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteRange>)> {
        self.inner
            .encode(text, false)
            .map(|e| (e.get_ids().to_vec(), e.get_offsets().to_vec()))
            .map_err(|e| DataError::example(None, format!("tokenizer: {e}")))
    }

    /// Token ids of `text`, special tokens in the text recognised, nothing added.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| DataError::example(None, format!("tokenizer: {e}")))
    }

    /// Token ids of `text`; with `add_special_tokens`, exactly one BOS in front
    /// when the tokenizer wants one, and EOS at the end when `add_eos_token`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = self.encode_raw(text)?;
        if add_special_tokens {
            self.ensure_bos(&mut ids);
            if let Some(eos) = &self.eos
                && self.add_eos
                && ids.last() != Some(&eos.id)
            {
                ids.push(eos.id);
            }
        }
        Ok(ids)
    }

    /// Make `ids` start with exactly one BOS if the tokenizer wants one;
    /// leave them alone otherwise.
    pub fn ensure_bos(&self, ids: &mut Vec<u32>) {
        let Some(bos) = self.bos.as_ref().filter(|_| self.add_bos) else {
            return;
        };
        let leading = ids.iter().take_while(|&&i| i == bos.id).count();
        match leading {
            0 => ids.insert(0, bos.id),
            1 => {}
            n => {
                ids.drain(..n - 1);
            }
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| DataError::example(None, format!("tokenizer: {e}")))
    }

    /// A readable piece for one token: its decoded text, or the raw vocabulary
    /// entry when the token is part of a multi-byte character.
    pub fn token_text(&self, id: u32) -> String {
        match self.inner.decode(&[id], false) {
            Ok(s) if !s.contains('\u{FFFD}') => s,
            _ => self
                .inner
                .id_to_token(id)
                .unwrap_or_else(|| format!("<{id}>")),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special added token (`<|im_start|>`, BOS, ...).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }
}
