//! The run skeleton: the plain functions every trainer calls from its
//! written-out loop, so that a run is opened, updated, saved and finished the
//! same way everywhere (and a distributed run changes these, not the
//! trainers). No callbacks: the trainer holds the loop and calls in.
//!
//! ```text
//! 0. open        run dir, resume check, RNG seed        -> Opening
//!    (the trainer loads its model from Opening::checkpoint)
//!    start       vocabulary check, optimizer load-or-new, dtype, NaN guard,
//!                config.toml, metrics.jsonl             -> Run
//! 1-2. the trainer's batches, loss and backward
//! 3. update      clip, guard, optimizer step, step count
//! 4. the trainer's metrics and evaluation (Run::log)
//! 5. save        guarded checkpoint (never a non-finite weight)
//! 6. save_last, keep, outcome: the last checkpoint, the model to keep, the result
//! ```
//!
//! In a distributed run ([`crate::dist`]) these functions are where the ranks
//! meet: each rank takes its share of every global micro-batch
//! ([`Run::micro_batches`]), the gradients are summed over the ranks before
//! clipping ([`Run::apply`]), a stop is agreed on ([`Run::stop_requested`]),
//! and only rank 0 writes `config.toml`, `metrics.jsonl`, checkpoints and
//! `final/`. A trainer sums what it normalises by and logs with [`Run::sum`].

use std::path::{Path, PathBuf};

use alignkit_model::lora::LoraConfig;
use alignkit_model::transformer::LlamaModel;
use alignkit_model::{LlamaConfig, LlamaForCausalLM, SaveDtype};
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::checkpoint::{
    CheckpointRef, DataCursor, OPTIMIZER_FILE, RunIdentity, TrainerState, save_checkpoint,
};
use crate::config::LoopConfig;
use crate::dist::World;
use crate::error::{Result, TrainError};
use crate::export::{ModelCard, write_merged};
use crate::grads::Gradients;
use crate::guard::{NanGuard, Verdict, skip_reason};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::{Trainable, first_non_finite, trainable_params};
use crate::resume::KeyChange;
use crate::run::{MetricsLog, Outcome, Resumed, RunDir, RunOptions, StopReason};
use crate::schedule::Schedule;
use crate::seed::{Stream, derive_seed};

/// What a run trains, as a checkpoint holds it.
pub trait Checkpointed<B: AutodiffBackend>: Trainable<B> + Clone {
    /// Write the trained weights into checkpoint directory `dir`, in f32 so
    /// that a resume restores the exact values.
    fn write_trained(&self, weights: &Weights<'_>, dir: &Path) -> Result<()>;

    /// The model to train: `base` (with fresh adapters seeded by
    /// `adapter_seed` under LoRA), or a checkpoint's weights.
    fn load(
        base: &Path,
        lora: Option<&LoraConfig>,
        checkpoint: Option<&Path>,
        adapter_seed: u64,
        device: &B::Device,
    ) -> Result<(LlamaConfig, Self)>;

    /// The decoder whose layers activation checkpointing recomputes.
    fn backbone_mut(&mut self) -> &mut LlamaModel<B>;

    /// Read back what [`Checkpointed::write_trained`] wrote into `dir`.
    fn read_trained(w: &Weights<'_>, dir: &Path, device: &B::Device) -> Result<Self> {
        Ok(Self::load(w.base, w.lora, Some(dir), 0, device)?.1)
    }
}

/// Where a run's weights come from and what kind they are.
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub model_config: &'a LlamaConfig,
    pub lora: Option<&'a LoraConfig>,
    /// The base model directory (named in a PEFT adapter's config).
    pub base: &'a Path,
}

impl<B: AutodiffBackend> Checkpointed<B> for LlamaForCausalLM<B> {
    fn write_trained(&self, w: &Weights<'_>, dir: &Path) -> Result<()> {
        crate::weights::save_trained(self, w.model_config, w.lora, w.base, dir)
    }

    fn load(
        base: &Path,
        lora: Option<&LoraConfig>,
        checkpoint: Option<&Path>,
        adapter_seed: u64,
        device: &B::Device,
    ) -> Result<(LlamaConfig, Self)> {
        crate::weights::load_trainable(base, lora, checkpoint, adapter_seed, device)
    }

    fn backbone_mut(&mut self) -> &mut LlamaModel<B> {
        &mut self.model
    }
}

/// A run directory opened (or resumed), before its model is loaded.
#[derive(Debug)]
pub struct Opening {
    world: World,
    run: RunDir,
    state: TrainerState,
    resumed: Option<Resumed>,
}

/// Step 0: open the run at `root`: a fresh directory, or with
/// [`RunOptions::resume`] the newest checkpoint after the resume contract's
/// check ([`crate::resume`]).
pub fn open(
    root: &Path,
    options: &RunOptions<'_>,
    id: &RunIdentity<'_>,
    total_steps: usize,
    seed: u64,
) -> Result<Opening> {
    let world = options.world;
    let (run, state, resumed) = RunDir::open(root, options.resume, id, total_steps, seed, world)?;
    Ok(Opening {
        world: world.clone(),
        run,
        state,
        resumed,
    })
}

/// What [`Opening::start`] needs besides the model.
#[derive(Debug)]
pub struct Start<'a> {
    pub train: &'a LoopConfig,
    pub optim: &'a AdamWConfig,
    pub schedule: Schedule,
    /// Tokens the tokenizer can produce, and rows of the model's embedding.
    pub tokenizer_vocab: usize,
    pub model_vocab: usize,
    /// The resolved config, every default written out (`config.toml`).
    pub config_toml: String,
}

impl Opening {
    /// The checkpoint to load the model from (`None`: a fresh run).
    pub fn checkpoint(&self) -> Option<&Path> {
        self.resumed.as_ref().map(|r| r.checkpoint.path.as_path())
    }

    /// The model to train, from the checkpoint on resume: `base` (with fresh
    /// adapters under LoRA, seeded by the run's seed), with activation
    /// checkpointing as `train` asks.
    pub fn load<B, M>(
        &self,
        base: &Path,
        lora: Option<&LoraConfig>,
        train: &LoopConfig,
        device: &B::Device,
    ) -> Result<(LlamaConfig, M)>
    where
        B: AutodiffBackend,
        M: Checkpointed<B>,
    {
        let adapter_seed = derive_seed(self.state.seed, Stream::AdapterInit, 0, 0);
        let (config, mut model) = M::load(base, lora, self.checkpoint(), adapter_seed, device)?;
        train
            .checkpointing(model.backbone_mut())
            .map_err(|i| TrainError::config(i.field, i.message))?;
        Ok((config, model))
    }

    /// The rest of step 0, with the model loaded: the vocabulary check, the
    /// optimizer (restored on resume), the model in the run's dtype, the NaN
    /// guard where it stopped, `config.toml` and `metrics.jsonl`.
    pub fn start<B, M>(self, model: M, s: Start<'_>, device: &B::Device) -> Result<(Run<B>, M)>
    where
        B: AutodiffBackend,
        M: Trainable<B>,
    {
        if s.tokenizer_vocab > s.model_vocab {
            return Err(TrainError::config(
                "model",
                format!(
                    "the tokenizer has {} tokens but the model's embedding has {} rows",
                    s.tokenizer_vocab, s.model_vocab
                ),
            ));
        }
        let checkpoint = self.checkpoint().map(Path::to_path_buf);
        let mut opt = match &checkpoint {
            Some(dir) => AdamW::<B::InnerBackend>::load(
                s.optim.clone(),
                &dir.join(OPTIMIZER_FILE),
                &trainable_params::<B, _>(&model),
                device,
            )?,
            None => AdamW::new(s.optim.clone()),
        };
        let model = opt.to_dtype::<B, _>(model, s.train.dtype.dtype());
        let state = self.state;
        let world = self.world;
        world.agree::<B::InnerBackend>(
            state.step as u64,
            "the step to start at (do all ranks see the same output_dir?)",
            device,
        )?;
        world.agree::<B::InnerBackend>(world.size() as u64, "WORLD_SIZE", device)?;
        let guard = NanGuard::resume(
            s.train.max_bad_steps,
            state.consecutive_bad_steps,
            state.skipped_steps,
        );
        let resumed_step = checkpoint.as_ref().map(|_| state.step);
        let metrics = match world.writes() {
            true => {
                self.run.write_config(&s.config_toml)?;
                Some(self.run.metrics(resumed_step)?)
            }
            false => None,
        };
        let last_saved = checkpoint.map(|path| CheckpointRef {
            step: state.step,
            path,
        });
        let resumed_with = self.resumed.map(|r| r.changes).unwrap_or_default();
        let run = Run {
            world,
            device: device.clone(),
            dir: self.run,
            start_step: state.step,
            state,
            opt,
            schedule: s.schedule,
            guard,
            metrics,
            train: s.train.clone(),
            resumed_with,
            last_saved,
        };
        Ok((run, model))
    }
}

/// A started run: its directory, state, optimizer and logs.
pub struct Run<B: AutodiffBackend> {
    /// The ranks training together.
    pub world: World,
    device: B::Device,
    pub dir: RunDir,
    pub state: TrainerState,
    pub opt: AdamW<B::InnerBackend>,
    /// Bookkeeping settings changed since the checkpoint resumed from.
    pub resumed_with: Vec<KeyChange>,
    start_step: usize,
    schedule: Schedule,
    guard: NanGuard,
    /// `None` on ranks other than 0.
    metrics: Option<MetricsLog>,
    train: LoopConfig,
    last_saved: Option<CheckpointRef>,
}

/// What step 3 did.
#[derive(Debug)]
pub struct Update {
    pub learning_rate: f64,
    pub grad_norm: f64,
    /// Why the update was skipped (a non-finite loss or gradient).
    pub skipped: Option<String>,
    /// An error once the NaN guard gives up (after the step's metrics are
    /// logged, see [`Update::verdict`]).
    verdict: Result<Verdict>,
}

impl Update {
    /// Whether the weights are good to evaluate and save.
    pub fn ok(&self) -> bool {
        self.verdict.is_ok()
    }

    /// The NaN guard's verdict: an error stops the run (its last checkpoint
    /// holds the last good weights).
    pub fn verdict(self) -> Result<()> {
        self.verdict.map(|_| ())
    }
}

/// What step 5 did.
#[derive(Debug)]
pub struct Due {
    /// The checkpoint written, if one was due.
    pub saved: Option<CheckpointRef>,
    /// The validation loss stopped improving for good: stop now.
    pub early_stop: bool,
}

/// The micro-batches of one update: step 1's schedule.
#[derive(Debug, Default)]
pub struct EpochOrder {
    epoch: Option<usize>,
    order: Vec<Vec<usize>>,
}

impl<B: AutodiffBackend> Run<B> {
    pub fn root(&self) -> &Path {
        self.dir.root()
    }

    /// The step the run started (or resumed) at.
    pub fn start_step(&self) -> usize {
        self.start_step
    }

    /// Whether updates remain.
    pub fn running(&self) -> bool {
        self.state.step < self.state.total_steps
    }

    /// Step 3: clip the summed gradients to the global norm, ask the NaN guard,
    /// apply the optimizer unless it says skip, and count the step. `loss`
    /// is the step's loss (only its finiteness matters here).
    pub fn update<M: Trainable<B>>(
        &mut self,
        model: M,
        grads: Gradients<B::InnerBackend>,
        loss: f64,
    ) -> Result<(M, Update)> {
        let out = self.apply(model, grads, loss)?;
        self.end_step();
        Ok(out)
    }

    /// One optimizer update within the current step (online RL takes
    /// several per rollout): [`Run::update`] without counting the step.
    ///
    /// In a distributed run each rank's gradients (of its share, normalised
    /// by the whole step's count) are summed over the ranks first, so that
    /// every rank clips and applies the same update; a loss that is not
    /// finite on any rank skips the update everywhere.
    pub fn apply<M: Trainable<B>>(
        &mut self,
        model: M,
        mut grads: Gradients<B::InnerBackend>,
        loss: f64,
    ) -> Result<(M, Update)> {
        let loss = self.share_gradients(&model, &mut grads, loss)?;
        Ok(self.apply_shared(model, grads, loss))
    }

    /// The first half of [`Run::apply`]: `grads` summed over the ranks (no
    /// change in one process), and `loss` as the update sees it (NaN when it
    /// was not finite on some rank).
    pub fn share_gradients<M: Trainable<B>>(
        &self,
        model: &M,
        grads: &mut Gradients<B::InnerBackend>,
        loss: f64,
    ) -> Result<f64> {
        if !self.world.is_distributed() {
            return Ok(loss);
        }
        let params = trainable_params::<B, _>(model);
        let bad = grads.sum_over(&self.world, &params, !loss.is_finite(), &self.device)?;
        Ok(if bad { f64::NAN } else { loss })
    }

    /// The second half of [`Run::apply`], on shared gradients.
    pub fn apply_shared<M: Trainable<B>>(
        &mut self,
        model: M,
        mut grads: Gradients<B::InnerBackend>,
        loss: f64,
    ) -> (M, Update) {
        let grad_norm = grads.clip_global_norm(self.train.max_grad_norm);
        let verdict = self.check(loss, grad_norm);
        let learning_rate = self.learning_rate();
        let model = match verdict {
            Ok(Verdict::Update) => self.opt.step::<B, _>(model, grads, learning_rate),
            _ => model,
        };
        let update = Update {
            learning_rate,
            grad_norm,
            skipped: skip_reason(&verdict),
            verdict,
        };
        (model, update)
    }

    /// The sums of `values` over the ranks (themselves in one process):
    /// what a step normalises by, and its metrics. `what` names the values
    /// in a timeout's message.
    pub fn sum(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        Ok(self
            .world
            .sum::<B::InnerBackend>(values, what, &self.device)?)
    }

    /// Every rank's `values`, by rank (extremes over the ranks).
    pub fn gather(&self, values: &[f64], what: &str) -> Result<Vec<Vec<f64>>> {
        Ok(self
            .world
            .gather::<B::InnerBackend>(values, what, &self.device)?)
    }

    /// Every rank's `values`, by rank, when their numbers differ; one
    /// process: its own.
    pub fn gather_ragged(&self, values: &[f64], what: &str) -> Result<Vec<Vec<f64>>> {
        Ok(self
            .world
            .gather_ragged::<B::InnerBackend>(values, what, &self.device)?)
    }

    /// Whether the stop flag asks the run to save and return, on any rank
    /// (all ranks stop at the same step).
    pub fn stop_requested(&self, options: &RunOptions<'_>) -> Result<bool> {
        let flag = options.stop_requested() as u8 as f64;
        Ok(self.sum(&[flag], "agreeing on a stop")?[0] > 0.0)
    }

    /// The stream index of micro-batch `k` of a step for this rank's random
    /// draws (dropout, sampling): `k` in one process.
    pub fn stream(&self, k: usize) -> usize {
        k * self.world.size() + self.world.rank()
    }

    /// The NaN guard's verdict on an update of the current step, for a
    /// trainer that clips and steps more than one model (PPO's critic).
    pub fn check(&mut self, loss: f64, grad_norm: f64) -> Result<Verdict> {
        let verdict = self.guard.check(self.state.step + 1, loss, grad_norm);
        self.state.skipped_steps = self.guard.skipped();
        self.state.consecutive_bad_steps = self.guard.consecutive();
        verdict
    }

    /// The learning rate of the current step.
    pub fn learning_rate(&self) -> f64 {
        self.schedule.lr_at(self.state.step)
    }

    /// Step 1: the example indices of this update's micro-batches, in the
    /// epoch's seeded order (`order_of(epoch)`, computed once per epoch), and
    /// the data cursor after them (set it once the update is done).
    ///
    /// In a distributed run `order_of` deals global micro-batches (of
    /// [`RunOptions::global_batch`] examples) and each rank gets its share
    /// of each ([`World::share`]); a share that is empty is left out.
    pub fn micro_batches(
        &self,
        order: &mut EpochOrder,
        micro_per_epoch: usize,
        order_of: impl FnOnce(usize) -> Vec<Vec<usize>>,
    ) -> (Vec<Vec<usize>>, DataCursor) {
        let (epoch, range, next) = self
            .state
            .cursor
            .next_step(micro_per_epoch, self.train.grad_accum);
        if order.epoch != Some(epoch) {
            order.order = order_of(epoch);
            order.epoch = Some(epoch);
        }
        let shares = range
            .map(|i| {
                let global = &order.order[i];
                global[self.world.share(global.len())].to_vec()
            })
            .filter(|share| !share.is_empty())
            .collect();
        (shares, next)
    }

    /// Epochs done so far, fractional (the `epoch` metric).
    pub fn epoch(&self, micro_per_epoch: usize) -> f64 {
        let cursor = &self.state.cursor;
        cursor.epoch as f64 + cursor.micro_batch as f64 / micro_per_epoch as f64
    }

    /// Count the step as done.
    pub fn end_step(&mut self) {
        self.state.step += 1;
    }

    /// Step 4: append the step's metrics to `metrics.jsonl` (flushed).
    pub fn log<T: Serialize>(&mut self, record: &T) -> Result<()> {
        match &mut self.metrics {
            Some(metrics) => metrics.append(record),
            None => Ok(()),
        }
    }

    /// Whether step 5 saves now: when due, at a new best evaluation (which
    /// keep-last never deletes), before an early stop, and after the last step.
    pub fn checkpoint_due(&self, new_best: bool, early_stop: bool) -> bool {
        self.train.save_due(self.state.step)
            || new_best
            || early_stop
            || self.state.step == self.state.total_steps
    }

    /// Whether the validation loss stopped improving for good.
    pub fn early_stop(&self) -> bool {
        self.train
            .patience_exhausted(self.state.evals_without_improvement)
    }

    /// Step 5: a checkpoint when [`Run::checkpoint_due`], and whether to stop early.
    pub fn save_when_due<M: Checkpointed<B>>(
        &mut self,
        model: &M,
        w: &Weights<'_>,
        new_best: bool,
    ) -> Result<Due> {
        self.save_when_due_with(model, w, new_best, |_| Ok(()))
    }

    /// [`Run::save_when_due`] with [`Run::save_with`]'s `extra`.
    pub fn save_when_due_with<M: Checkpointed<B>>(
        &mut self,
        model: &M,
        w: &Weights<'_>,
        new_best: bool,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Due> {
        let early_stop = self.early_stop();
        let saved = match self.checkpoint_due(new_best, early_stop) {
            true => Some(self.save_with(model, w, extra)?),
            false => None,
        };
        Ok(Due { saved, early_stop })
    }

    /// Save checkpoint `step-N`: the trained weights (the f32 masters of a
    /// mixed-precision run), the optimizer and the state, atomically and one
    /// tensor at a time. Refuses a non-finite weight.
    pub fn save<M: Checkpointed<B>>(
        &mut self,
        model: &M,
        w: &Weights<'_>,
    ) -> Result<CheckpointRef> {
        self.save_with(model, w, |_| Ok(()))
    }

    /// [`Run::save`], and `extra` writes what else the trainer keeps into the
    /// same directory (PPO: its critic).
    pub fn save_with<M: Checkpointed<B>>(
        &mut self,
        model: &M,
        w: &Weights<'_>,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<CheckpointRef> {
        if !self.world.writes() {
            // Rank 0 writes it meanwhile.
            self.world.expect_save();
            let saved = CheckpointRef {
                step: self.state.step,
                path: self.dir.checkpoint_dir(self.state.step),
            };
            self.last_saved = Some(saved.clone());
            return Ok(saved);
        }
        if let Some(name) = first_non_finite::<B, _>(model) {
            return Err(TrainError::checkpoint(
                self.dir.checkpoints_dir(),
                format!("refusing to save: parameter `{name}` is not finite"),
            ));
        }
        let opt = &self.opt;
        let saved = save_checkpoint(
            &self.dir.checkpoints_dir(),
            &self.state,
            self.train.keep_last,
            self.state.best.map(|b| b.step),
            |dir| {
                opt.f32_weights::<B, _>(model.clone())
                    .write_trained(w, dir)?;
                opt.save(&dir.join(OPTIMIZER_FILE))?;
                extra(dir)
            },
        )?;
        self.last_saved = Some(saved.clone());
        Ok(saved)
    }

    /// Step 6: the checkpoint of the last step, unless it was just saved (always
    /// saved when interrupted, so that `--resume` continues there). `Some`
    /// when this call wrote one.
    pub fn save_last<M: Checkpointed<B>>(
        &mut self,
        model: &M,
        w: &Weights<'_>,
        stop: StopReason,
    ) -> Result<Option<CheckpointRef>> {
        self.save_last_with(model, w, stop, |_| Ok(()))
    }

    /// [`Run::save_last`] with [`Run::save_with`]'s `extra`.
    pub fn save_last_with<M: Checkpointed<B>>(
        &mut self,
        model: &M,
        w: &Weights<'_>,
        stop: StopReason,
        extra: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Option<CheckpointRef>> {
        let saved_now = self
            .last_saved
            .as_ref()
            .is_some_and(|c| c.step == self.state.step);
        if stop == StopReason::Interrupted || !saved_now {
            return self.save_with(model, w, extra).map(Some);
        }
        Ok(None)
    }

    /// The checkpoint whose model the run keeps instead of its last one: the
    /// best evaluation's after early stopping, as transformers'
    /// `load_best_model_at_end`.
    pub fn best_checkpoint(&self, stop: StopReason) -> Option<PathBuf> {
        match (stop, self.state.best) {
            (StopReason::EarlyStopped, Some(best)) if best.step != self.state.step => {
                Some(self.dir.checkpoint_dir(best.step))
            }
            _ => None,
        }
    }

    /// Step 6: the model to keep as `final/`: the best evaluation's checkpoint
    /// after an early stop ([`Run::best_checkpoint`]), else the f32 masters
    /// of `model`.
    pub fn kept<M: Checkpointed<B>>(
        &mut self,
        model: M,
        stop: StopReason,
        w: &Weights<'_>,
        device: &B::Device,
    ) -> Result<M> {
        if !self.world.writes() {
            return Ok(model);
        }
        match self.best_checkpoint(stop) {
            Some(best) => M::read_trained(w, &best, device),
            None => Ok(self.final_weights(model)),
        }
    }

    /// Step 6 for a policy: `model` (adapters merged) as the HF directory
    /// `final/`, with its model card.
    pub fn write_final(
        &self,
        model: LlamaForCausalLM<B>,
        w: &Weights<'_>,
        trainer: &str,
        dtype: SaveDtype,
        config_toml: String,
    ) -> Result<PathBuf> {
        let dir = self.dir.final_dir();
        if !self.world.writes() {
            self.world.expect_save();
            return Ok(dir);
        }
        let card = self.card(trainer, w.base, w.lora, config_toml)?;
        write_merged(model, w.model_config, w.base, &dir, dtype, &card, true)?;
        Ok(dir)
    }

    /// The model to write as `final/`: its f32 masters.
    pub fn final_weights<M: Trainable<B>>(&mut self, model: M) -> M {
        self.opt.to_dtype::<B, _>(model, DType::F32)
    }

    /// The model card of `final/`, with the last metrics record.
    pub fn card(
        &self,
        trainer: &str,
        base_model: &Path,
        lora: Option<&LoraConfig>,
        config_toml: String,
    ) -> Result<ModelCard> {
        Ok(ModelCard {
            base_model: base_model.to_path_buf(),
            trainer: trainer.into(),
            lora: lora.cloned(),
            data_files: self.state.data_files.clone(),
            config_toml: Some(config_toml),
            final_metrics: crate::run::read_metrics(&self.dir.metrics_path())?.pop(),
            step: self.state.step,
        })
    }

    /// How the run ended.
    pub fn outcome<M>(
        self,
        stop: StopReason,
        final_dir: Option<PathBuf>,
        last_metrics: Option<M>,
    ) -> Outcome<M> {
        Outcome {
            run_dir: self.dir.root().to_path_buf(),
            stop,
            steps: self.state.step,
            last_checkpoint: self.last_saved.map(|c| c.path),
            final_dir,
            last_metrics,
            best: self.state.best,
            skipped_steps: self.state.skipped_steps,
        }
    }
}
