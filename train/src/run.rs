//! The run directory:
//!
//! ```text
//! RUN_DIR/config.toml            the resolved config, every default written out
//! RUN_DIR/metrics.jsonl          one JSON object per update (TRL metric names)
//! RUN_DIR/checkpoints/step-N/    see crate::checkpoint
//! RUN_DIR/final/                 the trained model as an HF directory
//! ```
//!
//! and how a trainer's run is driven ([`RunOptions`]) and ends ([`Outcome`]).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use alignkit_model::checkpoint::write_atomic;
use serde::Serialize;

use crate::checkpoint::{BestEval, CheckpointRef, RunIdentity, TrainerState, list_checkpoints};
use crate::dist::World;
use crate::error::{Result, TrainError};
use crate::output::{Holder, Lock};
use crate::resume::KeyChange;

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const FINAL_DIR: &str = "final";

/// How a run is started and stopped from outside.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions<'a> {
    /// Continue from the newest complete checkpoint of `output_dir`.
    pub resume: bool,
    /// Set (e.g. by a Ctrl-C handler) to save a checkpoint and return.
    pub stop: Option<&'a AtomicBool>,
    /// The ranks training together ([`World::single`]: this process alone).
    pub world: &'a World,
}

/// The world of a run that trains alone.
pub static SINGLE: World = World::single();

impl Default for RunOptions<'_> {
    fn default() -> Self {
        Self {
            resume: false,
            stop: None,
            world: &SINGLE,
        }
    }
}

impl RunOptions<'_> {
    /// The examples of one global micro-batch: `per_rank` on every rank.
    pub fn global_batch(&self, per_rank: usize) -> usize {
        per_rank * self.world.size()
    }

    /// Whether the stop flag asks the run to save and return.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::SeqCst))
    }
}

impl RunOptions<'static> {
    /// Resume from the newest checkpoint, with no stop flag.
    pub const RESUME: RunOptions<'static> = RunOptions {
        resume: true,
        stop: None,
        world: &SINGLE,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Completed,
    /// Stopped by [`RunOptions::stop`]; a checkpoint was saved.
    Interrupted,
    /// The validation loss stopped improving.
    EarlyStopped,
}

/// How a run ended; `M` is the trainer's per-step metrics record.
#[derive(Debug, Clone)]
pub struct Outcome<M> {
    pub run_dir: PathBuf,
    pub stop: StopReason,
    pub steps: usize,
    pub last_checkpoint: Option<PathBuf>,
    /// `RUN_DIR/final`, written when the run completes (or stops early).
    pub final_dir: Option<PathBuf>,
    pub last_metrics: Option<M>,
    pub best: Option<BestEval>,
    pub skipped_steps: usize,
}

/// A resumed run: the checkpoint it continues from and the bookkeeping
/// settings that changed since (allowed, and recorded in the state).
#[derive(Debug, Clone)]
pub struct Resumed {
    pub checkpoint: CheckpointRef,
    pub changes: Vec<KeyChange>,
}

/// A run directory, locked against other processes while this value lives
/// ([`crate::output::Lock`]).
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    /// `None` for a rank other than 0 of a distributed run: it reads the
    /// directory, rank 0 holds it and writes.
    lock: Option<Lock>,
}

impl RunDir {
    /// A run directory for a fresh run. Refuses one that already holds
    /// checkpoints, so that a forgotten `--resume` never overwrites a run.
    /// `checkpoints/` appears with the first checkpoint, so a run that fails
    /// before it leaves none behind. A reader (`writes` false: a rank other
    /// than 0) only checks.
    fn create(root: &Path, writes: bool) -> Result<Self> {
        if writes {
            std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
        }
        let run = Self {
            root: root.to_path_buf(),
            lock: writes.then(|| Lock::dir(root)).transpose()?,
        };
        if !list_checkpoints(&run.checkpoints_dir())?.is_empty() {
            return Err(TrainError::RunExists {
                dir: root.to_path_buf(),
            });
        }
        let metrics = run.metrics_path();
        if writes && metrics.exists() {
            // Left by a run that stopped before its first checkpoint.
            std::fs::remove_file(&metrics).map_err(|e| TrainError::io(&metrics, e))?;
        }
        Ok(run)
    }

    /// The run directory of an interrupted run and its newest complete
    /// checkpoint.
    /// `writes` false: without the lock (a rank other than 0).
    fn open_for_resume(root: &Path, writes: bool) -> Result<(Self, CheckpointRef)> {
        let none = || TrainError::NoCheckpoint {
            dir: root.to_path_buf(),
        };
        if !root.is_dir() {
            return Err(none());
        }
        let run = Self {
            root: root.to_path_buf(),
            lock: writes.then(|| Lock::dir(root)).transpose()?,
        };
        let latest = list_checkpoints(&run.checkpoints_dir())?
            .pop()
            .ok_or_else(none)?;
        Ok((run, latest))
    }

    /// A fresh run directory and state for `id`, or with `resume` the
    /// interrupted run's directory, newest checkpoint and state, after the
    /// resume contract's check (see [`crate::resume`]): same trainer, base
    /// model and kind of weights, and no change to the config or data that
    /// alters the run.
    ///
    /// `writes` false (a rank other than 0 of a distributed run): the same
    /// checks and state, without the lock or any change to the directory.
    pub fn open(
        root: &Path,
        resume: bool,
        id: &RunIdentity<'_>,
        total_steps: usize,
        seed: u64,
        world: &World,
    ) -> Result<(Self, TrainerState, Option<Resumed>)> {
        let writes = world.writes();
        if writes {
            remove_stale_temps(root);
        }
        if !resume {
            return Ok((
                Self::create(root, writes)?,
                TrainerState {
                    world_size: world.size(),
                    ..TrainerState::new(id, total_steps, seed)
                },
                None,
            ));
        }
        let (run, checkpoint) = Self::open_for_resume(root, writes)?;
        let mut state = TrainerState::read(&checkpoint.path)?;
        let changes = state.resume_as(&checkpoint.path, id, run.previous_config(), world.size())?;
        state.total_steps = total_steps;
        Ok((
            run,
            state,
            Some(Resumed {
                checkpoint,
                changes,
            }),
        ))
    }

    /// `config.toml` of the run as JSON, if it reads.
    fn previous_config(&self) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(self.root.join(CONFIG_FILE)).ok()?;
        let table: toml::Table = toml::from_str(&text).ok()?;
        serde_json::to_value(table).ok()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Who held the lock of this directory before, having ended without
    /// removing it (killed, crashed): worth a note.
    pub fn lock_taken_over(&self) -> Option<&Holder> {
        self.lock.as_ref().and_then(Lock::taken_over)
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join(CHECKPOINTS_DIR)
    }

    /// The checkpoint saved after update `step`.
    pub fn checkpoint_dir(&self, step: usize) -> PathBuf {
        self.checkpoints_dir().join(format!("step-{step}"))
    }

    pub fn final_dir(&self) -> PathBuf {
        self.root.join(FINAL_DIR)
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    /// Write `config.toml` (atomically).
    pub fn write_config(&self, toml_text: &str) -> Result<()> {
        Ok(write_atomic(
            &self.root.join(CONFIG_FILE),
            toml_text.as_bytes(),
        )?)
    }

    /// Open `metrics.jsonl` for appending. On resume from `resumed_step`,
    /// records of later steps (written after that checkpoint by the
    /// interrupted process) are dropped first, so the file reads as one run.
    pub fn metrics(&self, resumed_step: Option<usize>) -> Result<MetricsLog> {
        let path = self.metrics_path();
        if let Some(step) = resumed_step
            && path.exists()
        {
            truncate_metrics(&path, step)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }
}

/// Remove what atomic writes killed mid-way left in the run directory
/// `root`: `.NAME.tmp-PID` files and directories (`final/` is written as
/// `.final.tmp-PID`, see `export::write_dir`; files through
/// `alignkit_model::checkpoint::write_atomic`) whose process no longer runs.
/// Best effort: a leftover that cannot be removed stays, harmless, and is
/// tried again at the next open.
fn remove_stale_temps(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with('.'))
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if process_running(pid) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// Whether process `pid` runs on this machine (this process does); without
/// `/proc` nothing tells, and it is taken to run.
fn process_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid == std::process::id() || !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Keep the records whose `step` is at most `step` (and any line that does
/// not parse, which the interrupted writer may have cut short, is dropped).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let file = File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut kept = String::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|s| s as usize <= step)
        {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    Ok(write_atomic(path, kept.as_bytes())?)
}

/// `metrics.jsonl`: one JSON object per line, flushed per record.
#[derive(Debug)]
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|source| TrainError::Json {
            path: self.path.clone(),
            source,
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read every record of a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| TrainError::Json {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect()
}
