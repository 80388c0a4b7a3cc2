//! Checkpoints that survive a crash at any instant.
//!
//! ```text
//! checkpoints/step-N/model.safetensors + config.json        full fine-tune (HF layout, f32)
//!                   adapter_model.safetensors + adapter_config.json   LoRA (PEFT layout, f32)
//!                   optimizer.safetensors                   AdamW moments + update count
//!                   trainer_state.json                      step, scheduler position, RNG seed,
//!                                                           data cursor, guard and eval counters,
//!                                                           fingerprints of the base model and
//!                                                           of every other model the run reads
//! ```
//!
//! A checkpoint is written into `checkpoints/.tmp-step-N/`, every file
//! fsynced, `trainer_state.json` last, and then renamed to `step-N` (rename is
//! atomic on POSIX file systems) and the parent directory fsynced. A crash
//! mid-write leaves a `.tmp-*` directory that is ignored and later removed; the
//! previous checkpoint is never touched before the new one is in place.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError};
use crate::resume::{self, KeyChange, ResumeRecord};
use crate::tensors::write_synced;

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FORMAT: &str = "alignkit-trainer-state-1";

/// A complete checkpoint on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef {
    pub step: usize,
    pub path: PathBuf,
}

/// Where the data stream stands: the epoch and the index of the next
/// micro-batch in that epoch's (seeded) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataCursor {
    pub epoch: usize,
    pub micro_batch: usize,
}

impl DataCursor {
    /// The micro-batches of the next update: its epoch, the index range in
    /// that epoch's order, and the cursor after it. An update never spans two
    /// epochs (the last one of an epoch may accumulate fewer micro-batches).
    pub fn next_step(
        self,
        micro_per_epoch: usize,
        accum: usize,
    ) -> (usize, std::ops::Range<usize>, DataCursor) {
        let mut cur = self;
        if cur.micro_batch >= micro_per_epoch {
            cur = DataCursor {
                epoch: cur.epoch + 1,
                micro_batch: 0,
            };
        }
        let end = (cur.micro_batch + accum).min(micro_per_epoch);
        (
            cur.epoch,
            cur.micro_batch..end,
            DataCursor {
                epoch: cur.epoch,
                micro_batch: end,
            },
        )
    }
}

/// A data file and the SHA-256 of its bytes (recorded in the model card).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// A model a run reads besides its base model — a reward model, the model
/// its critic starts from, the DPO reference — under the config key that
/// names it, with its [`model_fingerprint`]. Compared on resume by content,
/// as data files are by SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInput {
    /// Dotted, arrays indexed: `rewards[0].path`, `ppo.value_model`, `ref_model`.
    pub key: String,
    pub path: PathBuf,
    pub fingerprint: String,
}

impl ModelInput {
    /// The model at `path` (a directory, or a symlink to one) as it is now;
    /// one that cannot be read is an error naming `key` and the file.
    pub fn read(key: &str, path: &Path) -> Result<Self> {
        let fingerprint = model_fingerprint(path).map_err(|e| {
            let chain: Vec<String> =
                std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect();
            TrainError::config(key, chain.join(": "))
        })?;
        Ok(Self {
            key: key.into(),
            path: path.to_path_buf(),
            fingerprint,
        })
    }
}

/// The best validation loss so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEval {
    pub step: usize,
    pub eval_loss: f64,
}

/// Which weights a checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightsKind {
    /// Every base weight (`model.safetensors`).
    Full,
    /// A LoRA adapter (`adapter_model.safetensors`) over the base model.
    Lora,
}

/// `trainer_state.json`: everything besides weights and optimizer moments
/// that a resumed run needs to continue exactly.
fn one_rank() -> usize {
    1
}

fn is_one_rank(n: &usize) -> bool {
    *n == 1
}

/// `config` with `train.batch_size` as the global batch of `world_size`
/// ranks (what the resume contract compares).
fn global_batch(mut config: serde_json::Value, world_size: usize) -> serde_json::Value {
    if let Some(b) = config.pointer_mut("/train/batch_size")
        && let Some(per_rank) = b.as_u64()
    {
        *b = (per_rank * world_size as u64).into();
    }
    config
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    pub format: String,
    /// Which trainer wrote it (`sft`, `dpo`, ...).
    pub trainer: String,
    /// Updates done, skipped ones included; also the scheduler position.
    pub step: usize,
    pub total_steps: usize,
    pub cursor: DataCursor,
    /// Every random stream is derived from this seed and the step (see
    /// [`crate::seed`]), so seed + step is the whole RNG state.
    pub seed: u64,
    /// Tokens seen (real tokens, padding excluded), for `num_tokens`.
    pub num_tokens: u64,
    pub skipped_steps: usize,
    pub consecutive_bad_steps: usize,
    pub best: Option<BestEval>,
    pub evals_without_improvement: usize,
    pub weights: WeightsKind,
    /// The base model directory and its fingerprint (see [`model_fingerprint`]).
    pub base_model: PathBuf,
    pub base_fingerprint: String,
    pub data_files: Vec<DataFile>,
    /// The other models the run reads; absent in checkpoints of older
    /// versions, which then resume unchecked (they recorded nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelInput>,
    /// The resolved config the run was trained under (JSON), compared on
    /// resume (see [`crate::resume`]); absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// The bookkeeping changes each resume brought, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumes: Vec<ResumeRecord>,
    /// Ranks of the run that wrote it (`train.batch_size` is per rank).
    #[serde(default = "one_rank", skip_serializing_if = "is_one_rank")]
    pub world_size: usize,
}

impl TrainerState {
    pub fn format() -> &'static str {
        STATE_FORMAT
    }

    /// The state of a fresh run of `id`, before its first update.
    pub fn new(id: &RunIdentity<'_>, total_steps: usize, seed: u64) -> Self {
        Self {
            format: STATE_FORMAT.into(),
            trainer: id.trainer.into(),
            step: 0,
            total_steps,
            cursor: DataCursor::default(),
            seed,
            num_tokens: 0,
            skipped_steps: 0,
            consecutive_bad_steps: 0,
            best: None,
            evals_without_improvement: 0,
            weights: id.weights,
            base_model: id.base_model.to_path_buf(),
            base_fingerprint: id.base_fingerprint.to_string(),
            data_files: id.data_files.to_vec(),
            models: id.models.to_vec(),
            config: Some(id.config.clone()),
            resumes: Vec::new(),
            world_size: 1,
        }
    }

    /// Record an evaluation at the current step: a lower `eval_loss` than the
    /// best so far becomes the best (true is returned) and resets the
    /// early-stopping count; any other value (NaN included) adds to it.
    pub fn record_eval(&mut self, eval_loss: f64) -> bool {
        if self.best.is_none_or(|b| eval_loss < b.eval_loss) {
            self.best = Some(BestEval {
                step: self.step,
                eval_loss,
            });
            self.evals_without_improvement = 0;
            true
        } else {
            self.evals_without_improvement += 1;
            false
        }
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        let state: Self = serde_json::from_str(&text).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        if state.format != STATE_FORMAT {
            return Err(TrainError::checkpoint(
                path,
                format!("format `{}`, expected `{STATE_FORMAT}`", state.format),
            ));
        }
        Ok(state)
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| TrainError::Json {
            path: path.clone(),
            source,
        })?;
        write_synced(&path, text.as_bytes())
    }

    /// Refuse to resume a checkpoint of another trainer, base model or kind
    /// of weights, one whose other models hold different weights now, or one
    /// whose config or data differ from `id`'s in a way that changes the run
    /// (see [`crate::resume`]); `fallback_config` is the run directory's
    /// `config.toml`, for checkpoints that predate the config in the state.
    /// On success the state takes `id`'s config, data and models, and the
    /// allowed changes (a model moved elsewhere among them) are recorded and
    /// returned.
    ///
    /// `world_size` is the resuming run's: its global batch
    /// (`train.batch_size` × ranks) must be the checkpoint's, and another
    /// split of it over ranks is a change that is allowed but not bit-exact.
    pub fn resume_as(
        &mut self,
        checkpoint: &Path,
        id: &RunIdentity<'_>,
        fallback_config: Option<serde_json::Value>,
        world_size: usize,
    ) -> Result<Vec<KeyChange>> {
        if self.trainer != id.trainer {
            return Err(TrainError::checkpoint(
                checkpoint,
                format!(
                    "written by the {} trainer, not {}",
                    self.trainer, id.trainer
                ),
            ));
        }
        if self.base_fingerprint != id.base_fingerprint {
            return Err(TrainError::checkpoint(
                checkpoint,
                format!(
                    "made from a different model ({}), not {}",
                    self.base_model.display(),
                    id.base_model.display()
                ),
            ));
        }
        if self.weights != id.weights {
            return Err(TrainError::checkpoint(
                checkpoint,
                format!(
                    "holds {:?} weights but the config asks for {:?} training",
                    self.weights, id.weights
                ),
            ));
        }
        let replaced = resume::replaced_models(&self.models, id.models);
        if !replaced.is_empty() {
            return Err(TrainError::checkpoint(
                checkpoint,
                resume::replaced_message(&replaced),
            ));
        }
        let old_config = self
            .config
            .clone()
            .or(fallback_config)
            .map(|c| (id.reread)(&c).unwrap_or(c));
        let (old_config, moved) = resume::follow_moved_models(
            old_config.as_ref().unwrap_or(&id.config),
            &id.config,
            &self.models,
            id.models,
        );
        let old_config = global_batch(old_config, self.world_size);
        let new_config = global_batch(id.config.clone(), world_size);
        let mut comparison = resume::compare(
            &old_config,
            &new_config,
            &self.data_files,
            id.data_files,
            id.data_keys,
            id.bookkeeping,
        );
        if !comparison.refused.is_empty() {
            return Err(TrainError::checkpoint(
                checkpoint,
                resume::refusal_message(&comparison.refused),
            ));
        }
        comparison.allowed.extend(moved);
        if world_size != self.world_size {
            comparison.allowed.push(KeyChange {
                key: "world_size (same global batch; no longer bit-exact)".into(),
                old: self.world_size.to_string(),
                new: world_size.to_string(),
            });
            self.world_size = world_size;
        }
        comparison.allowed.sort_by(|a, b| a.key.cmp(&b.key));
        self.config = Some(id.config.clone());
        self.base_model = id.base_model.to_path_buf();
        self.data_files = id.data_files.to_vec();
        self.models = id.models.to_vec();
        if !comparison.allowed.is_empty() {
            self.resumes.push(ResumeRecord {
                step: self.step,
                changes: comparison.allowed.clone(),
            });
        }
        Ok(comparison.allowed)
    }
}

/// What a trainer's run is, as checked on resume against its checkpoint.
#[derive(Debug, Clone)]
pub struct RunIdentity<'a> {
    /// `sft`, `dpo`, ...
    pub trainer: &'a str,
    pub base_model: &'a Path,
    pub base_fingerprint: &'a str,
    pub weights: WeightsKind,
    /// The resolved config, every default written out, as JSON.
    pub config: serde_json::Value,
    /// The data files read (train first, then validation) ...
    pub data_files: &'a [DataFile],
    /// ... and the config keys that name them, in the same order.
    pub data_keys: &'a [&'a str],
    /// Every other model the run reads (reward models, the critic's start,
    /// the reference), each under its config key.
    pub models: &'a [ModelInput],
    /// The trainer's own keys that may change on resume, beyond
    /// [`resume::BOOKKEEPING`]; everything else refuses.
    pub bookkeeping: &'a [&'a str],
    /// The checkpoint's config re-read with this version's config type
    /// (`resume::reread::<Config>`): keys added since it was written take
    /// their defaults instead of refusing as `absent → default`.
    pub reread: fn(&serde_json::Value) -> Option<serde_json::Value>,
}

fn step_of(name: &str) -> Option<usize> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Complete checkpoints under `checkpoints_dir`, oldest first. A directory
/// counts only once renamed into place with its `trainer_state.json`.
pub fn list_checkpoints(checkpoints_dir: &Path) -> Result<Vec<CheckpointRef>> {
    let entries = match std::fs::read_dir(checkpoints_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(checkpoints_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(checkpoints_dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(step_of) else {
            continue;
        };
        let path = entry.path();
        if path.join(STATE_FILE).is_file() {
            out.push(CheckpointRef { step, path });
        }
    }
    out.sort_by_key(|c| c.step);
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(dir, e))
}

/// Write checkpoint `state.step` atomically. `write_files` writes the weights
/// and optimizer state into the directory it is given (fsynced, e.g. with
/// [`crate::tensors::write_synced`]); `trainer_state.json` is written after
/// it. Then keeps the newest `keep_last` checkpoints (0: all) plus `protect`
/// (the best one).
///
/// A step is saved once: when `step-N` already exists (Ctrl-C right after a
/// periodic save, or a resumed run stopped at once) it holds the same
/// weights, and is kept rather than swapped, so no instant exists at which
/// the run has no complete checkpoint. A write that fails removes its
/// temporary directory (and `checkpoints/` when that leaves it empty).
pub fn save_checkpoint(
    checkpoints_dir: &Path,
    state: &TrainerState,
    keep_last: usize,
    protect: Option<usize>,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<CheckpointRef> {
    let name = format!("step-{}", state.step);
    let dest = checkpoints_dir.join(&name);
    if dest.join(STATE_FILE).is_file() {
        return Ok(CheckpointRef {
            step: state.step,
            path: dest,
        });
    }
    std::fs::create_dir_all(checkpoints_dir).map_err(|e| TrainError::io(checkpoints_dir, e))?;
    let tmp = checkpoints_dir.join(format!(".tmp-{name}"));
    let written = (|| {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        if dest.exists() {
            // A step directory without its state: not a checkpoint (an
            // interrupted write of an older version); replace it.
            std::fs::remove_dir_all(&dest).map_err(|e| TrainError::io(&dest, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        write_files(&tmp)?;
        state.write(&tmp)?;
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))
    })();
    if let Err(e) = written {
        // Best effort: a failed write (disk full, say) leaves nothing behind.
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir(checkpoints_dir);
        return Err(e);
    }
    sync_dir(checkpoints_dir)?;
    prune(checkpoints_dir, keep_last, protect)?;
    Ok(CheckpointRef {
        step: state.step,
        path: dest,
    })
}

/// Delete all but the newest `keep_last` complete checkpoints (never
/// `protect`), and leftovers of interrupted writes.
fn prune(checkpoints_dir: &Path, keep_last: usize, protect: Option<usize>) -> Result<()> {
    let entries =
        std::fs::read_dir(checkpoints_dir).map_err(|e| TrainError::io(checkpoints_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(checkpoints_dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tmp-") || name.starts_with(".old-") {
            let p = entry.path();
            std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        }
    }
    if keep_last == 0 {
        return Ok(());
    }
    let all = list_checkpoints(checkpoints_dir)?;
    let n = all.len();
    for c in all.into_iter().take(n.saturating_sub(keep_last)) {
        if Some(c.step) != protect {
            std::fs::remove_dir_all(&c.path).map_err(|e| TrainError::io(&c.path, e))?;
        }
    }
    Ok(())
}

/// SHA-256 of a file's bytes, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| TrainError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Identifies a model directory cheaply: SHA-256 over `config.json`'s
/// architecture, each weight file's safetensors header and length, and 16
/// evenly spaced 4 KiB samples of its data — under 100 KiB read per weight
/// file, whatever the model's size, where hashing every byte of a 16 GB
/// model would take a minute on each run and resume. Two different
/// checkpoints of one architecture differ in the samples (trained weights
/// change everywhere); the same files moved elsewhere do not. Symlinks are
/// followed: a link to a directory, or to weight files (the Hugging Face
/// cache's layout), is fingerprinted by what it points at.
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    use std::io::{Seek, SeekFrom};
    let config = alignkit_model::LlamaConfig::load(&dir.join("config.json"))?;
    let mut hasher = Sha256::new();
    hasher.update(
        format!(
            "{} v{} c{} f{} l{} h{} k{} d{} tie{}",
            config.model_type.as_str(),
            config.vocab_size,
            config.hidden_size,
            config.intermediate_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            config.tie_word_embeddings
        )
        .as_bytes(),
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TrainError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("model"))
        })
        .collect();
    files.sort();
    for path in files {
        let mut f = std::fs::File::open(&path).map_err(|e| TrainError::io(&path, e))?;
        let len = f.metadata().map_err(|e| TrainError::io(&path, e))?.len();
        let mut header_len = [0u8; 8];
        f.read_exact(&mut header_len)
            .map_err(|e| TrainError::io(&path, e))?;
        let n = u64::from_le_bytes(header_len).min(len.saturating_sub(8));
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header)
            .map_err(|e| TrainError::io(&path, e))?;
        hasher.update(len.to_le_bytes());
        hasher.update(&header);
        let data_start = 8 + n;
        let data_len = len - data_start;
        let mut sample = vec![0u8; 4096];
        for i in 0..16u64 {
            let offset = data_start + data_len * i / 16;
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| TrainError::io(&path, e))?;
            let take = (len - offset).min(4096) as usize;
            f.read_exact(&mut sample[..take])
                .map_err(|e| TrainError::io(&path, e))?;
            hasher.update(&sample[..take]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainerState {
        TrainerState {
            format: STATE_FORMAT.into(),
            trainer: "sft".into(),
            step,
            total_steps: 10,
            cursor: DataCursor::default(),
            seed: 1,
            num_tokens: 0,
            skipped_steps: 0,
            consecutive_bad_steps: 0,
            best: None,
            evals_without_improvement: 0,
            weights: WeightsKind::Full,
            base_model: "m".into(),
            base_fingerprint: "f".into(),
            data_files: vec![],
            models: vec![],
            config: None,
            resumes: Vec::new(),
            world_size: 1,
        }
    }

    fn reward_model(path: &str, fingerprint: &str) -> ModelInput {
        ModelInput {
            key: "rewards[0].path".into(),
            path: path.into(),
            fingerprint: fingerprint.into(),
        }
    }

    /// Resume `state` as a run reading `models`, its config naming the
    /// reward model's path.
    fn resume(state: &mut TrainerState, models: &[ModelInput]) -> Result<Vec<KeyChange>> {
        let config = serde_json::json!({
            "rewards": [{"kind": "model", "path": models[0].path, "weight": 1.0}]
        });
        let id = RunIdentity {
            trainer: "sft",
            base_model: Path::new("m"),
            base_fingerprint: "f",
            weights: WeightsKind::Full,
            config,
            data_files: &[],
            data_keys: &[],
            models,
            bookkeeping: &[],
            reread: |c| Some(c.clone()),
        };
        state.resume_as(Path::new("ckpt"), &id, None, 1)
    }

    /// A model replaced under its key refuses in one line naming the key and
    /// path; the same model moved elsewhere resumes, the move recorded; a
    /// checkpoint of an older version, which recorded no models, resumes as
    /// before and records them from then on.
    #[test]
    fn a_resume_compares_the_other_models_by_content() {
        let started = [reward_model("/a/rm", "f1")];
        let mut s = state(2);
        s.models = started.to_vec();
        s.config = Some(serde_json::json!({
            "rewards": [{"kind": "model", "path": "/a/rm", "weight": 1.0}]
        }));

        let err = resume(&mut s.clone(), &[reward_model("/a/rm", "f2")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "ckpt: rewards[0].path /a/rm holds a different model than when the run started (fingerprint changed); start a fresh run or restore it"
        );

        let mut moved = s.clone();
        let changes = resume(&mut moved, &[reward_model("/b/rm", "f1")]).unwrap();
        let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(changes, ["rewards[0].path \"/a/rm\" → \"/b/rm\""]);
        assert_eq!(moved.models, [reward_model("/b/rm", "f1")]);
        // Another model at another path is a config change too.
        let err = resume(&mut s.clone(), &[reward_model("/b/rm", "f2")]).unwrap_err();
        assert!(err.to_string().contains("/b/rm holds a different model"));

        // Written before models were recorded: no `models` in its JSON.
        let mut old = state(2);
        old.config = s.config.clone();
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("\"models\""), "{json}");
        let mut old: TrainerState = serde_json::from_str(&json).unwrap();
        assert_eq!(
            resume(&mut old, &[reward_model("/a/rm", "f2")]).unwrap(),
            []
        );
        assert_eq!(old.models, [reward_model("/a/rm", "f2")]);
    }

    fn write_marker(text: &'static str) -> impl FnOnce(&Path) -> Result<()> {
        move |dir| write_synced(&dir.join("weights"), text.as_bytes())
    }

    #[test]
    fn an_eval_is_a_new_best_only_when_strictly_lower() {
        let mut s = state(2);
        assert!(s.record_eval(1.0));
        s.step = 4;
        assert!(!s.record_eval(1.0));
        s.step = 6;
        assert!(!s.record_eval(f64::NAN));
        assert_eq!(s.evals_without_improvement, 2);
        s.step = 8;
        assert!(s.record_eval(0.5));
        assert_eq!(
            (s.best, s.evals_without_improvement),
            (
                Some(BestEval {
                    step: 8,
                    eval_loss: 0.5
                }),
                0
            )
        );
    }

    #[test]
    fn keeps_last_k_and_the_protected_one() {
        let dir = tempfile::tempdir().unwrap();
        for step in [1, 2, 3, 4] {
            save_checkpoint(dir.path(), &state(step), 2, Some(1), write_marker("w")).unwrap();
        }
        let steps: Vec<usize> = list_checkpoints(dir.path())
            .unwrap()
            .iter()
            .map(|c| c.step)
            .collect();
        assert_eq!(steps, vec![1, 3, 4]);
    }

    /// A writer that fails half-way (as a crash would) leaves the previous
    /// checkpoint intact and the partial one invisible.
    #[test]
    fn crash_mid_write_leaves_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &state(2), 0, None, write_marker("good")).unwrap();
        let err = save_checkpoint(dir.path(), &state(4), 0, None, |d| {
            write_synced(&d.join("weights"), b"partial")?;
            Err(TrainError::config("test", "simulated crash"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated crash"));
        // A failed write cleans up after itself ...
        assert!(!dir.path().join(".tmp-step-4").exists());
        // ... a kill -9 at that instant leaves its .tmp directory.
        std::fs::create_dir_all(dir.path().join(".tmp-step-4")).unwrap();
        std::fs::write(dir.path().join(".tmp-step-4/weights"), b"partial").unwrap();
        let all = list_checkpoints(dir.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].step, 2);
        let w = std::fs::read_to_string(all[0].path.join("weights")).unwrap();
        assert_eq!(w, "good");
        assert_eq!(TrainerState::read(&all[0].path).unwrap().step, 2);
        // The next successful save cleans the leftover up.
        save_checkpoint(dir.path(), &state(6), 0, None, write_marker("w")).unwrap();
        assert!(!dir.path().join(".tmp-step-4").exists());
    }

    #[test]
    fn a_step_directory_without_state_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("step-9")).unwrap();
        assert!(list_checkpoints(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_step_is_saved_once() {
        let dir = tempfile::tempdir().unwrap();
        save_checkpoint(dir.path(), &state(3), 0, None, write_marker("a")).unwrap();
        let c = save_checkpoint(dir.path(), &state(3), 0, None, write_marker("b")).unwrap();
        assert_eq!(
            std::fs::read_to_string(c.path.join("weights")).unwrap(),
            "a"
        );
    }

    #[test]
    fn a_failed_first_save_leaves_no_checkpoints_directory() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = dir.path().join("checkpoints");
        save_checkpoint(&checkpoints, &state(1), 0, None, |_| {
            Err(TrainError::config("test", "disk full"))
        })
        .unwrap_err();
        assert!(!checkpoints.exists());
    }

    #[test]
    fn cursor_wraps_epochs_and_never_spans_two() {
        let c = DataCursor::default();
        // 5 micro-batches per epoch, accumulate 2: updates take 2, 2, 1.
        let (e, r, c) = c.next_step(5, 2);
        assert_eq!((e, r), (0, 0..2));
        let (_, r, c) = c.next_step(5, 2);
        assert_eq!(r, 2..4);
        let (e, r, c) = c.next_step(5, 2);
        assert_eq!((e, r), (0, 4..5));
        let (e, r, _) = c.next_step(5, 2);
        assert_eq!((e, r), (1, 0..2));
    }
}
