//! Generations cached on disk, so that judging again (another judge, another
//! tie margin) never samples again.
//!
//! The key is a SHA-256 over everything that decides what a model writes: the
//! model's files (a content fingerprint, not a path or a date), the prompt token
//! ids it was given (which already reflect the prompts file, the tokenizer and
//! the chat template) and the sampling settings.

use std::io::Read;
use std::path::{Path, PathBuf};

use alignkit_model::SamplingConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};

/// Sampling settings as recorded beside generations (transformers' names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSettings {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: u64,
    /// Text that ends a response (cut there).
    pub stop: Vec<String>,
    /// Prompts generated together. Part of the key: with sampling, the random
    /// stream is shared by a batch's rows.
    pub batch_size: usize,
}

impl GenerationSettings {
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        }
    }
}

/// Why a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Stop,
    Length,
}

impl From<alignkit_model::FinishReason> for Finish {
    fn from(f: alignkit_model::FinishReason) -> Self {
        match f {
            alignkit_model::FinishReason::Eos => Finish::Eos,
            alignkit_model::FinishReason::Stop => Finish::Stop,
            alignkit_model::FinishReason::Length => Finish::Length,
        }
    }
}

/// One response: its text (decoded, cut at a stop string), how many tokens
/// were generated, and why it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub text: String,
    pub tokens: usize,
    pub finish: Finish,
}

/// One model's responses to a list of prompts, in prompt order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generations {
    pub key: String,
    /// The model directory as it was given (for people; the key holds its fingerprint).
    pub model: String,
    pub fingerprint: String,
    pub settings: GenerationSettings,
    pub responses: Vec<Response>,
}

/// A SHA-256 of a model directory's files (every top-level, non-hidden regular
/// file: weights, config, tokenizer, chat template), by name and content.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let read_dir = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in read_dir {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        let name = entry.file_name();
        let hidden = name.to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in &files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let mut file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
        let len = file.metadata().map_err(|e| EvalError::io(path, e))?.len();
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        hash.update(len.to_le_bytes());
        loop {
            let n = file.read(&mut buf).map_err(|e| EvalError::io(path, e))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
    }
    Ok(hex(&hash.finalize()))
}

/// The cache key of a model's generations for `prompt_ids` under `settings`.
pub fn cache_key(
    fingerprint: &str,
    prompt_ids: &[Vec<u32>],
    settings: &GenerationSettings,
) -> String {
    let mut hash = Sha256::new();
    hash.update(b"alignkit-generations-v1\0");
    hash.update(fingerprint.as_bytes());
    hash.update((prompt_ids.len() as u64).to_le_bytes());
    for ids in prompt_ids {
        hash.update((ids.len() as u64).to_le_bytes());
        for id in ids {
            hash.update(id.to_le_bytes());
        }
    }
    let settings = serde_json::to_vec(settings).expect("settings serialise");
    hash.update(&settings);
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory of cached generations, one JSON file per key.
#[derive(Debug, Clone)]
pub struct GenerationCache {
    dir: PathBuf,
}

impl GenerationCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        GenerationCache { dir: dir.into() }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.json", &key[..key.len().min(24)]))
    }

    /// The cached generations for `key` holding `expected` responses, if any.
    /// A file that does not parse or does not match is a miss (it is rewritten).
    pub fn load(&self, key: &str, expected: usize) -> Result<Option<Generations>> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EvalError::io(&path, e)),
        };
        Ok(serde_json::from_slice::<Generations>(&bytes)
            .ok()
            .filter(|g| g.key == key && g.responses.len() == expected))
    }

    /// Writes `generations` atomically under its key.
    pub fn store(&self, generations: &Generations) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| EvalError::io(&self.dir, e))?;
        let path = self.path(&generations.key);
        let json = serde_json::to_vec_pretty(generations).expect("generations serialise");
        alignkit_model::checkpoint::write_atomic(&path, &json)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GenerationSettings {
        GenerationSettings {
            max_new_tokens: 16,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            stop: vec![],
            batch_size: 8,
        }
    }

    #[test]
    fn the_key_changes_with_the_model_the_prompts_and_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 3]).unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        let f1 = model_fingerprint(dir.path()).unwrap();
        // Hidden files (our own temporaries) do not count; content does.
        std::fs::write(dir.path().join(".hidden"), "y").unwrap();
        assert_eq!(model_fingerprint(dir.path()).unwrap(), f1);
        std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 4]).unwrap();
        let f2 = model_fingerprint(dir.path()).unwrap();
        assert_ne!(f1, f2);

        let prompts = vec![vec![1, 2, 3], vec![4]];
        let k = cache_key(&f1, &prompts, &settings());
        assert_eq!(k, cache_key(&f1, &prompts, &settings()));
        assert_ne!(k, cache_key(&f2, &prompts, &settings()));
        // [1, 2, 3], [4] and [1, 2], [3, 4] must not collide.
        assert_ne!(k, cache_key(&f1, &[vec![1, 2], vec![3, 4]], &settings()));
        let mut s = settings();
        s.max_new_tokens = 17;
        assert_ne!(k, cache_key(&f1, &prompts, &s));
    }

    #[test]
    fn stored_generations_load_back_and_mismatches_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = GenerationCache::new(dir.path().join("gen"));
        let g = Generations {
            key: "ab".repeat(32),
            model: "m".into(),
            fingerprint: "f".into(),
            settings: settings(),
            responses: vec![Response {
                text: "hi".into(),
                tokens: 2,
                finish: Finish::Eos,
            }],
        };
        assert!(cache.load(&g.key, 1).unwrap().is_none());
        cache.store(&g).unwrap();
        assert_eq!(cache.load(&g.key, 1).unwrap(), Some(g.clone()));
        assert!(cache.load(&g.key, 2).unwrap().is_none());
        std::fs::write(cache.path(&g.key), "not json").unwrap();
        assert!(cache.load(&g.key, 1).unwrap().is_none());
    }
}
