//! The SFT loop, written out: batch → forward → loss → backward → clip → step
//! → metrics → eval/checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use alignkit_datasets::Batch;
use alignkit_model::{LlamaConfig, LlamaForCausalLM};
use alignkit_train::checkpoint::OPTIMIZER_FILE;
use alignkit_train::export::{ModelCard, write_merged};
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::weights::{load_trainable, save_trained};
use alignkit_train::{
    AdamW, CheckpointRef, Gradients, KeyChange, NanGuard, RunDir, RunIdentity, TrainError,
    TrainerState, Verdict, WeightsKind, first_non_finite, model_fingerprint, save_checkpoint,
    skip_reason, trainable_count, trainable_params,
};
use burn::module::{AutodiffModule, Module};
use burn::tensor::DType;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::SftConfig;
use crate::data::{self, Rows};
use crate::error::{Result, SftError};
use crate::loss::{BatchSums, batch_loss};
use crate::metrics::SftMetrics;

pub use alignkit_train::{RunOptions, StopReason};

const TRAINER: &str = "sft";
/// The config keys naming the data files, in the order `data::load` reads them.
const DATA_KEYS: &[&str] = &["data.train_file", "data.validation_file"];

/// What the run is about to do, reported once before the first step.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_dir: PathBuf,
    pub start_step: usize,
    pub total_steps: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    /// Rows per epoch (examples, or packed rows).
    pub rows: usize,
    pub micro_batches_per_epoch: usize,
    pub trainable_params: usize,
    pub total_params: usize,
    pub truncated: usize,
    pub without_targets: usize,
    /// Bookkeeping settings changed since the checkpoint resumed from.
    pub resumed_with: Vec<KeyChange>,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RunInfo),
    Step(&'a SftMetrics),
    Checkpoint { step: usize, path: &'a Path },
}

/// How the run ended.
pub type SftOutcome = alignkit_train::Outcome<SftMetrics>;

/// Everything a step needs that does not change during the run.
struct Setup {
    config: SftConfig,
    run: RunDir,
    rows: Rows,
    eval_rows: Rows,
    pad_id: u32,
    model_config: LlamaConfig,
    micro_per_epoch: usize,
    total_steps: usize,
}

/// Train with supervised fine-tuning. Every configuration, data and
/// checkpoint problem is reported before the first step.
pub fn train<B: AutodiffBackend>(
    config: &SftConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<SftOutcome> {
    // 0. Setup: config, checkpoint, data, model, optimizer.
    config.validate()?;
    let config = config.with_absolute_paths()?;
    let fingerprint = model_fingerprint(&config.model)?;
    let encoder = data::encoder(&config)?;
    let sft_data = data::load(&config, &encoder)?;
    if sft_data.train.is_empty() {
        return Err(SftError::Config {
            field: "data.train_file".into(),
            message: format!(
                "{}: no example with a trained token",
                config.data.train_file.display()
            ),
        });
    }
    let pad_id = encoder.tokenizer().pad_id();
    let (train_examples, validation_examples) = (sft_data.train.len(), sft_data.validation.len());
    let rows = Rows::new(
        sft_data.train,
        config.data.packing,
        config.data.max_len,
        pad_id,
    )?;
    let eval_rows = Rows::new(sft_data.validation, false, config.data.max_len, pad_id)?;
    let micro_per_epoch = rows.micro_batches(config.train.batch_size);
    let total_steps = config.train.total_steps(micro_per_epoch);
    let schedule = config.schedule.build(config.learning_rate, total_steps);
    let seed = config.train.seed;
    let (run, mut state, resumed) = RunDir::open(
        &config.output_dir,
        options.resume,
        &RunIdentity {
            trainer: TRAINER,
            base_model: &config.model,
            base_fingerprint: &fingerprint,
            weights: WeightsKind::of(config.lora.as_ref()),
            config: alignkit_train::resume::to_json(&config),
            data_files: &sft_data.files,
            data_keys: DATA_KEYS,
            bookkeeping: &[],
            reread: alignkit_train::resume::reread::<SftConfig>,
        },
        total_steps,
        seed,
    )?;

    let ckpt_path = resumed.as_ref().map(|r| r.checkpoint.path.clone());
    let (model_config, mut model) = load_trainable::<B>(
        &config.model,
        config.lora.as_ref(),
        ckpt_path.as_deref(),
        derive_seed(seed, Stream::AdapterInit, 0, 0),
        device,
    )?;
    config.train.checkpointing(&mut model.model)?;
    let vocab = encoder.tokenizer().vocab_size();
    if vocab > model_config.vocab_size {
        return Err(SftError::Config {
            field: "model".into(),
            message: format!(
                "the tokenizer has {vocab} tokens but the model's embedding has {} rows",
                model_config.vocab_size
            ),
        });
    }
    let mut opt = match &ckpt_path {
        Some(dir) => AdamW::<B::InnerBackend>::load(
            config.optim.clone(),
            &dir.join(OPTIMIZER_FILE),
            &trainable_params::<B, _>(&model),
            device,
        )?,
        None => AdamW::new(config.optim.clone()),
    };
    let mut model = opt.to_dtype::<B, _>(model, config.train.dtype.dtype());
    let mut guard = NanGuard::resume(
        config.train.max_bad_steps,
        state.consecutive_bad_steps,
        state.skipped_steps,
    );
    run.write_config(&config.to_toml())?;
    let resumed_step = ckpt_path.as_ref().map(|_| state.step);
    let mut metrics = run.metrics(resumed_step)?;
    let info = RunInfo {
        run_dir: run.root().to_path_buf(),
        start_step: state.step,
        total_steps,
        train_examples,
        validation_examples,
        rows: rows.len(),
        micro_batches_per_epoch: micro_per_epoch,
        trainable_params: trainable_count::<B, _>(&model),
        total_params: model.num_params() + lora_params(&model),
        truncated: sft_data.truncated,
        without_targets: sft_data.without_targets,
        resumed_with: resumed.map(|r| r.changes).unwrap_or_default(),
    };
    progress(Event::Started(&info));
    let setup = Setup {
        config,
        run,
        rows,
        eval_rows,
        pad_id,
        model_config,
        micro_per_epoch,
        total_steps,
    };
    let c = &setup.config;

    let mut order: Option<(usize, Vec<Vec<usize>>)> = None;
    let mut last_saved = resumed_step.zip(ckpt_path.clone());
    let mut last_metrics = None;
    let mut stop = StopReason::Completed;
    while state.step < setup.total_steps {
        if options.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            stop = StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1. The micro-batches of this update, in the epoch's seeded order.
        let (epoch, range, next_cursor) = state
            .cursor
            .next_step(setup.micro_per_epoch, c.train.grad_accum);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            order = Some((
                epoch,
                setup.rows.epoch_order(c.train.batch_size, seed, epoch),
            ));
        }
        let batches: Vec<Batch> = range
            .map(|i| {
                let (_, o) = order.as_ref().expect("set above");
                setup.rows.collate(&o[i], setup.pad_id)
            })
            .collect();
        let norm = batches.iter().map(count_targets).sum::<usize>().max(1) as f64;

        // 2. Forward, loss, backward; gradients summed over micro-batches.
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut sums = BatchSums::default();
        for (k, batch) in batches.iter().enumerate() {
            seed_backend::<B>(device, seed, state.step, k);
            let (loss, s) = batch_loss(&model, batch, setup.rows.packed(), norm, device);
            if s.targets > 0 {
                grads.backward(&model, loss);
            }
            sums += s;
        }
        let loss = sums.nll / norm;

        // 3. Clip, guard, update.
        let grad_norm = grads.clip_global_norm(c.train.max_grad_norm);
        let lr = schedule.lr_at(state.step);
        state.step += 1;
        state.cursor = next_cursor;
        state.num_tokens += sums.tokens as u64;
        let verdict = guard.check(state.step, loss, grad_norm);
        if let Ok(Verdict::Update) = verdict {
            model = opt.step::<B, _>(model, grads, lr);
        }
        let skipped = skip_reason(&verdict);
        state.skipped_steps = guard.skipped();
        state.consecutive_bad_steps = guard.consecutive();

        // 4. Metrics, and evaluation when due.
        let targets = sums.targets.max(1) as f64;
        let mut m = SftMetrics {
            step: state.step,
            epoch: state.cursor.epoch as f64
                + state.cursor.micro_batch as f64 / setup.micro_per_epoch as f64,
            loss,
            learning_rate: lr,
            grad_norm,
            num_tokens: state.num_tokens,
            mean_token_accuracy: sums.correct / targets,
            entropy: sums.entropy / targets,
            tokens_per_second: sums.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            skipped,
            eval_loss: None,
            eval_mean_token_accuracy: None,
            eval_entropy: None,
        };
        let mut new_best = false;
        if verdict.is_ok() && c.train.eval_due(state.step) {
            let e = evaluate(
                &model.valid(),
                &setup.eval_rows,
                c.train.batch_size,
                setup.pad_id,
                device,
            );
            m.eval_loss = Some(e.nll / e.targets.max(1) as f64);
            m.eval_mean_token_accuracy = Some(e.correct / e.targets.max(1) as f64);
            m.eval_entropy = Some(e.entropy / e.targets.max(1) as f64);
            let eval_loss = m.eval_loss.unwrap_or(f64::NAN);
            new_best = state.record_eval(eval_loss);
        }
        metrics.append(&m)?;
        progress(Event::Step(&m));
        last_metrics = Some(m);
        verdict?;

        // 5. Checkpoint when due (and the best model, which keep-last never deletes).
        let early_stop = c.train.patience_exhausted(state.evals_without_improvement);
        let due = c.train.save_due(state.step);
        if due || new_best || early_stop || state.step == setup.total_steps {
            let saved = save(&setup, &state, &model, &opt)?;
            progress(Event::Checkpoint {
                step: saved.step,
                path: &saved.path,
            });
            last_saved = Some((saved.step, saved.path));
        }
        if early_stop {
            stop = StopReason::EarlyStopped;
            break;
        }
    }

    // 6. Interrupted: checkpoint and return. Finished: write final/.
    if stop == StopReason::Interrupted || last_saved.as_ref().is_none_or(|(s, _)| *s != state.step)
    {
        let saved = save(&setup, &state, &model, &opt)?;
        progress(Event::Checkpoint {
            step: saved.step,
            path: &saved.path,
        });
        last_saved = Some((saved.step, saved.path));
    }
    let mut final_dir = None;
    if stop != StopReason::Interrupted {
        let model = match (stop, state.best) {
            // Early stopping keeps the best model, as transformers'
            // `load_best_model_at_end`.
            (StopReason::EarlyStopped, Some(best)) if best.step != state.step => {
                let dir = setup.run.checkpoint_dir(best.step);
                load_trainable::<B>(&c.model, c.lora.as_ref(), Some(&dir), 0, device)?.1
            }
            // The f32 masters of a mixed-precision run.
            _ => opt.to_dtype::<B, _>(model, DType::F32),
        };
        let dir = setup.run.final_dir();
        let card = ModelCard {
            base_model: c.model.clone(),
            trainer: TRAINER.into(),
            lora: c.lora.clone(),
            data_files: state.data_files.clone(),
            config_toml: Some(c.to_toml()),
            final_metrics: alignkit_train::run::read_metrics(&setup.run.metrics_path())?.pop(),
            step: state.step,
        };
        write_merged(
            model,
            &setup.model_config,
            &c.model,
            &dir,
            c.final_dtype.into(),
            &card,
            true,
        )?;
        final_dir = Some(dir);
    }
    Ok(SftOutcome {
        run_dir: setup.run.root().to_path_buf(),
        stop,
        steps: state.step,
        last_checkpoint: last_saved.map(|(_, p)| p),
        final_dir,
        last_metrics,
        best: state.best,
        skipped_steps: state.skipped_steps,
    })
}

/// Trained targets of a batch (position 0 of a row is never one).
fn count_targets(batch: &Batch) -> usize {
    batch
        .loss_mask
        .iter()
        .enumerate()
        .filter(|&(i, &m)| m && i % batch.seq_len != 0)
        .count()
}

/// Parameters of attached adapters (burn's `num_params` does not see them).
fn lora_params<B: Backend>(model: &LlamaForCausalLM<B>) -> usize {
    alignkit_model::lora::peft_tensors(model)
        .values()
        .map(|(s, _)| s.iter().product::<usize>())
        .sum()
}

fn save<B: AutodiffBackend>(
    setup: &Setup,
    state: &TrainerState,
    model: &LlamaForCausalLM<B>,
    opt: &AdamW<B::InnerBackend>,
) -> Result<CheckpointRef> {
    if let Some(name) = first_non_finite::<B, _>(model) {
        return Err(SftError::Train(TrainError::checkpoint(
            setup.run.checkpoints_dir(),
            format!("refusing to save: parameter `{name}` is not finite"),
        )));
    }
    let c = &setup.config;
    Ok(save_checkpoint(
        &setup.run.checkpoints_dir(),
        state,
        c.train.keep_last,
        state.best.map(|b| b.step),
        |dir| {
            // The f32 masters of a mixed-precision run (resuming rebuilds
            // them from these weights).
            let model = opt.f32_weights::<B, _>(model.clone());
            save_trained(&model, &setup.model_config, c.lora.as_ref(), &c.model, dir)?;
            opt.save(&dir.join(OPTIMIZER_FILE))
        },
    )?)
}

/// Sums of the loss and diagnostics over the validation rows (no dropout, no
/// gradients).
pub fn evaluate<B: Backend>(
    model: &LlamaForCausalLM<B>,
    rows: &Rows,
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> BatchSums {
    let mut sums = BatchSums::default();
    for idx in rows.in_order(batch_size) {
        let batch = rows.collate(&idx, pad_id);
        sums += batch_loss(model, &batch, rows.packed(), 1.0, device).1;
    }
    sums
}
