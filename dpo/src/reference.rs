//! The reference policy π_ref of DPO: where its log-probs come from.
//!
//! - A frozen model, run on each batch without gradients (any inference
//!   backend: the autodiff backend's inner one).
//! - With LoRA, the policy itself with its adapters removed
//!   ([`lora_reference`]): the base weights are shared, not copied.
//! - Precomputed once for the whole data set ([`precompute`]) and cached on
//!   disk ([`ReferenceCache`]) under a hash of everything they depend on, so a
//!   second run — or a re-run of a pipeline stage — does no reference forward.
//!   TRL's `precompute_ref_log_probs`, with a cache that outlives the run.

use std::path::{Path, PathBuf};

use alignkit_datasets::{PaddingSide, PreferenceExample, collate_pairs};
use alignkit_model::LlamaForCausalLM;
use alignkit_model::checkpoint::write_atomic;
use alignkit_model::lora;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DpoError, Result};
use crate::logps::completion_logps;
use crate::loss::Pair;

/// The reference of a LoRA policy: the same base weights without adapters, on
/// the inner (no-gradient) backend. No weight is copied: the tensors are
/// shared with the policy.
pub fn lora_reference<B: AutodiffBackend>(
    policy: &LlamaForCausalLM<B>,
) -> LlamaForCausalLM<B::InnerBackend> {
    lora::detach_all(policy.valid())
}

/// Reference log-prob sums of every pair of a data set, by example index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLogps {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
}

impl ReferenceLogps {
    pub fn len(&self) -> usize {
        self.chosen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }

    /// The values of the examples `indices`, in that order, as tensors.
    ///
    /// Shapes: → [N] each, N = `indices.len()`.
    pub fn batch<B: Backend>(&self, indices: &[usize], device: &B::Device) -> Pair<B> {
        let pick = |v: &[f32]| -> Tensor<B, 1> {
            let data: Vec<f32> = indices.iter().map(|&i| v[i]).collect();
            Tensor::from_data(TensorData::new(data, [indices.len()]), device)
        };
        Pair::new(pick(&self.chosen), pick(&self.rejected))
    }
}

/// Run `reference` over every example, `batch_size` pairs at a time (padding
/// within a batch changes the sums only at float-rounding level).
/// `progress(done, total)` is called after each batch.
pub fn precompute<B: Backend>(
    reference: &LlamaForCausalLM<B>,
    examples: &[&PreferenceExample],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> ReferenceLogps {
    let mut out = ReferenceLogps {
        chosen: Vec::with_capacity(examples.len()),
        rejected: Vec::with_capacity(examples.len()),
    };
    let host = |t: Tensor<B, 1>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32 above")
    };
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = collate_pairs(chunk.iter().copied(), pad_id, PaddingSide::Right);
        let logps = completion_logps(reference, &batch, device).logps;
        out.chosen.extend(host(logps.chosen));
        out.rejected.extend(host(logps.rejected));
        progress(out.len(), examples.len());
    }
    out
}

/// What the reference log-probs depend on; its [`ReferenceKey::digest`] names
/// the cache entry.
#[derive(Debug, Clone)]
pub struct ReferenceKey<'a> {
    /// Hash of the reference weights (e.g. SHA-256 of its safetensors files).
    pub weights: &'a str,
    /// Hash of the tokenizer files.
    pub tokenizer: &'a str,
    /// The encoded pairs: their token ids carry the data, the chat template
    /// and the truncation settings.
    pub examples: &'a [&'a PreferenceExample],
    /// Anything else that changes the numbers (backend, dtype), as text.
    pub settings: &'a str,
}

impl ReferenceKey<'_> {
    /// SHA-256 hex of every part, each length-prefixed so that no two
    /// different keys hash the same bytes.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(b"alignkit-dpo reference logps v1");
        part(self.weights.as_bytes());
        part(self.tokenizer.as_bytes());
        part(self.settings.as_bytes());
        part(&(self.examples.len() as u64).to_le_bytes());
        for ex in self.examples {
            for ids in [&ex.prompt_ids, &ex.chosen_ids, &ex.rejected_ids] {
                let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
                part(&bytes);
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Whether reference log-probs came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from the cache: no reference forward pass ran.
    Hit,
    /// Computed now (and stored).
    Computed,
}

/// One file per key in a directory, written atomically.
#[derive(Debug, Clone)]
pub struct ReferenceCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: String,
    key: String,
    #[serde(flatten)]
    logps: ReferenceLogps,
}

const CACHE_FORMAT: &str = "alignkit-dpo-reference-logps-v1";

impl ReferenceCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a key.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("reference-logps-{key}.json"))
    }

    /// The cached values of `key`, if present and whole (`expected` pairs).
    /// A file that does not parse, names another key or has another length
    /// is treated as absent and will be overwritten.
    pub fn load(&self, key: &str, expected: usize) -> Result<Option<ReferenceLogps>> {
        let path = self.path(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DpoError::Io { path, source }),
        };
        Ok(serde_json::from_str::<CacheFile>(&text)
            .ok()
            .filter(|f| {
                f.format == CACHE_FORMAT
                    && f.key == key
                    && f.logps.chosen.len() == expected
                    && f.logps.rejected.len() == expected
            })
            .map(|f| f.logps))
    }

    pub fn store(&self, key: &str, logps: &ReferenceLogps) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| DpoError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let file = CacheFile {
            format: CACHE_FORMAT.into(),
            key: key.into(),
            logps: logps.clone(),
        };
        let text = serde_json::to_string(&file).map_err(|e| DpoError::Cache {
            path: self.path(key),
            message: e.to_string(),
        })?;
        write_atomic(&self.path(key), text.as_bytes())?;
        Ok(())
    }

    /// The cached values of `key`, or `compute()` them and store them.
    pub fn get_or_compute(
        &self,
        key: &str,
        expected: usize,
        compute: impl FnOnce() -> ReferenceLogps,
    ) -> Result<(ReferenceLogps, CacheStatus)> {
        if let Some(hit) = self.load(key, expected)? {
            return Ok((hit, CacheStatus::Hit));
        }
        let logps = compute();
        self.store(key, &logps)?;
        Ok((logps, CacheStatus::Computed))
    }
}
