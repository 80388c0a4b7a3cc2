//! alignkit-train: the plumbing every trainer shares. Each trainer writes its
//! own loop (batch → forward → loss → backward → clip → step → metrics →
//! eval/checkpoint) out of these parts:
//!
//! - [`optim`]: AdamW (Loshchilov & Hutter 2019) with a decay and a no-decay
//!   group, state as named tensors that round-trip bit-exactly.
//! - [`schedule`]: constant / linear / cosine learning rates with warmup and a
//!   floor, as transformers computes them.
//! - [`grads`]: gradient accumulation and global-norm clipping across all
//!   parameters (PyTorch's `clip_grad_norm_`, not burn's per-tensor clipping).
//! - [`guard`]: the NaN/Inf guard.
//! - [`params`]: which parameters train (full model or LoRA adapters) and their names.
//! - [`run`], [`checkpoint`]: the run directory, `metrics.jsonl`, atomic
//!   checkpoints with keep-last-K and exact resume.
//! - [`resume`]: the resume contract — which config changes a resumed run
//!   accepts, and the one-line refusal naming the others.
//! - [`output`]: where a command writes: an advisory lock per run directory
//!   or appended file, and the rule that an output is none of its inputs.
//! - [`skeleton`]: the run skeleton every trainer's loop calls: open, start,
//!   update (clip, guard, step), guarded save, the end of a run.
//! - [`dist`]: data parallelism on burn-collective: ranks, the gradient sum
//!   before clipping, rank-0 writes.
//! - [`seed`]: every random stream derived from the run seed and a position.
//! - [`reward_model`]: a reward model (or PPO critic) as a run trains,
//!   checkpoints and exports it.
//! - [`weights`]: saving and loading what a run trains (full weights or an adapter).
//! - [`export`]: merged HF directories and PEFT adapters with a model card.
//! - `testutil` (feature `test-support`): tiny-model and data helpers for the
//!   trainers' tests.

pub mod checkpoint;
pub mod config;
pub mod dist;
pub mod error;
pub mod export;
pub mod grads;
pub mod guard;
pub mod optim;
pub mod output;
pub mod params;
pub mod resume;
pub mod reward_model;
pub mod run;
pub mod schedule;
pub mod seed;
pub mod skeleton;
pub mod tensors;
#[cfg(feature = "test-support")]
pub mod testutil;
pub mod weights;

pub use checkpoint::{
    BestEval, CheckpointRef, DataCursor, DataFile, ModelInput, RunIdentity, TrainerState,
    WeightsKind, list_checkpoints, model_fingerprint, save_checkpoint, sha256_file,
};
pub use config::{
    ConfigIssue, FinalDtype, LoadError, LoopConfig, RunSettings, TrainDtype, check_validation_set,
    config_origin, load_config, set_key, toml_error_position,
};
pub use dist::{World, WorldSpec};
pub use error::TrainError;
pub use grads::Gradients;
pub use guard::{NanGuard, Verdict, skip_reason};
pub use optim::{AdamW, AdamWConfig, ParamGroup};
pub use params::{ParamInfo, Trainable, first_non_finite, trainable_count, trainable_params};
pub use resume::KeyChange;
pub use run::{MetricsLog, Outcome, Resumed, RunDir, RunOptions, StopReason};
pub use schedule::{Schedule, ScheduleConfig, ScheduleKind};
