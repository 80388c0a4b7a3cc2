//! The reward-model loop, written out: pairs → one forward over chosen and
//! rejected rows → Bradley–Terry loss → backward → clip → step → metrics →
//! eval/checkpoint.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use alignkit_model::LlamaConfig;
use alignkit_model::heads::RewardModel;
use alignkit_train::checkpoint::OPTIMIZER_FILE;
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::{
    AdamW, CheckpointRef, Gradients, KeyChange, NanGuard, RunDir, RunIdentity, TrainError,
    TrainerState, Verdict, WeightsKind, first_non_finite, model_fingerprint, save_checkpoint,
    skip_reason, trainable_count, trainable_params,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use crate::config::RewardConfig;
use crate::data::{self, RewardData, RewardPair};
use crate::error::{Result, RewardError};
use crate::loss::{RewardObjective, RewardSums, bradley_terry_loss};
use crate::metrics::RewardMetrics;
use crate::model::{Trainee, load_trainable, save_trained, write_final};
use crate::score::pair_rewards;

pub use alignkit_train::{RunOptions, StopReason};

const TRAINER: &str = "reward";
/// The config keys naming the data files, in the order `data::load` reads them.
const DATA_KEYS: &[&str] = &["data.train_file", "data.validation_file"];

/// What the run is about to do, reported once before the first step.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_dir: PathBuf,
    pub start_step: usize,
    pub total_steps: usize,
    pub train_pairs: usize,
    pub validation_pairs: usize,
    pub micro_batches_per_epoch: usize,
    pub trainable_params: usize,
    pub truncated: usize,
    /// Bookkeeping settings changed since the checkpoint resumed from.
    pub resumed_with: Vec<KeyChange>,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RunInfo),
    Step(&'a RewardMetrics),
    Checkpoint {
        step: usize,
        path: &'a std::path::Path,
    },
}

/// How the run ended. `final/` is a `*ForSequenceClassification` HF directory.
pub type RewardOutcome = alignkit_train::Outcome<RewardMetrics>;

struct Setup {
    config: RewardConfig,
    run: RunDir,
    data: RewardData,
    objective: RewardObjective,
    pad_id: u32,
    model_config: LlamaConfig,
    micro_per_epoch: usize,
    total_steps: usize,
}

/// Train a reward model. Every configuration, data and checkpoint problem
/// (identical chosen/rejected included) is reported before the first step.
pub fn train<B: AutodiffBackend>(
    config: &RewardConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<RewardOutcome> {
    // 0. Setup: config, data, checkpoint, model, optimizer.
    config.validate()?;
    let config = config.with_absolute_paths()?;
    let objective = config.objective()?;
    let fingerprint = model_fingerprint(&config.model)?;
    // Data first: a bad pair is reported before the run directory exists.
    let encoder = data::encoder(
        &config.model,
        config.data.max_len,
        config.data.text_as_chat,
        config.data.completion_end,
    )?;
    let pairs = data::load(&config, &encoder)?;
    if pairs.train.is_empty() {
        return Err(RewardError::Config {
            field: "data.train_file".into(),
            message: format!("{}: no training pair", config.data.train_file.display()),
        });
    }
    let pad_id = encoder.tokenizer().pad_id();
    let micro_per_epoch = pairs.train.len().div_ceil(config.train.batch_size);
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
            data_files: &pairs.files,
            data_keys: DATA_KEYS,
            bookkeeping: &[],
            reread: alignkit_train::resume::reread::<RewardConfig>,
        },
        total_steps,
        seed,
    )?;

    let ckpt_path = resumed.as_ref().map(|r| r.checkpoint.path.clone());
    let (model_config, mut reward) = load_trainable::<B>(
        &config.model,
        config.lora.as_ref(),
        ckpt_path.as_deref(),
        derive_seed(seed, Stream::AdapterInit, 0, 0),
        device,
    )?;
    config.train.checkpointing(&mut reward.model)?;
    let vocab = encoder.tokenizer().vocab_size();
    if vocab > model_config.vocab_size {
        return Err(RewardError::Config {
            field: "model".into(),
            message: format!(
                "the tokenizer has {vocab} tokens but the model's embedding has {} rows",
                model_config.vocab_size
            ),
        });
    }
    let model = Trainee { reward };
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
        train_pairs: pairs.train.len(),
        validation_pairs: pairs.validation.len(),
        micro_batches_per_epoch: micro_per_epoch,
        trainable_params: trainable_count::<B, _>(&model),
        truncated: pairs.truncated,
        resumed_with: resumed.map(|r| r.changes).unwrap_or_default(),
    };
    progress(Event::Started(&info));
    let setup = Setup {
        config,
        run,
        data: pairs,
        objective,
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

        // 1. The pair micro-batches of this update, in the epoch's seeded order.
        let (epoch, range, next_cursor) = state
            .cursor
            .next_step(setup.micro_per_epoch, c.train.grad_accum);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let n = setup.data.train.len();
            order = Some((
                epoch,
                alignkit_datasets::shuffled_batches(
                    n,
                    c.train.batch_size,
                    derive_seed(seed, Stream::DataOrder, epoch as u64, 0),
                ),
            ));
        }
        let (_, epoch_order) = order.as_ref().expect("set above");
        let micro: Vec<&[usize]> = range.map(|i| epoch_order[i].as_slice()).collect();
        let step_pairs = micro.iter().map(|idx| idx.len()).sum::<usize>() as f64;

        // 2. Forward (chosen and rejected rows together), loss, backward.
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut sums = RewardSums::default();
        let mut tokens = 0;
        for (k, idx) in micro.iter().enumerate() {
            seed_backend::<B>(device, seed, state.step, k);
            let batch_pairs: Vec<&RewardPair> = idx.iter().map(|&i| &setup.data.train[i]).collect();
            let (chosen, rejected, batch) =
                pair_rewards(&model.reward, &batch_pairs, setup.pad_id, device);
            let out = bradley_terry_loss(
                &setup.objective,
                chosen.clone(),
                rejected.clone(),
                margins::<B>(&batch_pairs, device),
            );
            let loss = out.loss_normalized(step_pairs);
            grads.backward(&model, loss);
            sums += RewardSums::of(&out, chosen, rejected);
            tokens += batch.attention_mask.iter().filter(|&&m| m).count();
        }

        // 3. Clip, guard, update.
        let grad_norm = grads.clip_global_norm(c.train.max_grad_norm);
        let lr = schedule.lr_at(state.step);
        state.step += 1;
        state.cursor = next_cursor;
        state.num_tokens += tokens as u64;
        let verdict = guard.check(state.step, sums.loss(), grad_norm);
        if let Ok(Verdict::Update) = verdict {
            model = opt.step::<B, _>(model, grads, lr);
        }
        let skipped = skip_reason(&verdict);
        state.skipped_steps = guard.skipped();
        state.consecutive_bad_steps = guard.consecutive();

        // 4. Metrics, and evaluation when due.
        let epoch_f = state.cursor.epoch as f64
            + state.cursor.micro_batch as f64 / setup.micro_per_epoch as f64;
        let mut m = RewardMetrics::new(state.step, epoch_f, lr, grad_norm, &sums);
        m.num_tokens = state.num_tokens;
        m.tokens_per_second = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        m.skipped = skipped;
        let mut new_best = false;
        if verdict.is_ok() && c.train.eval_due(state.step) {
            let e = evaluate(
                &model.reward.valid(),
                &setup.objective,
                &setup.data.validation,
                c.train.batch_size,
                setup.pad_id,
                device,
            );
            m.set_eval(&e);
            let eval_loss = e.loss();
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
        let reward = match (stop, state.best) {
            // Early stopping keeps the best model, as transformers'
            // `load_best_model_at_end`.
            (StopReason::EarlyStopped, Some(best)) if best.step != state.step => {
                let dir = setup.run.checkpoint_dir(best.step);
                load_trainable::<B>(&c.model, c.lora.as_ref(), Some(&dir), 0, device)?.1
            }
            // The f32 masters of a mixed-precision run.
            _ => opt.to_dtype::<B, _>(model, DType::F32).reward,
        };
        let dir = setup.run.final_dir();
        write_final(
            reward,
            &setup.model_config,
            setup.pad_id,
            &c.model,
            &dir,
            c.final_dtype.into(),
        )?;
        final_dir = Some(dir);
    }
    Ok(RewardOutcome {
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

/// The pairs' margins (0 where a pair has none), or `None` when no pair has one.
fn margins<B: Backend>(pairs: &[&RewardPair], device: &B::Device) -> Option<Tensor<B, 1>> {
    pairs.iter().any(|p| p.margin.is_some()).then(|| {
        let m: Vec<f32> = pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect();
        Tensor::from_data(TensorData::new(m, [pairs.len()]), device)
    })
}

/// Loss and reward statistics over `pairs` (no dropout, no gradients).
pub fn evaluate<B: Backend>(
    model: &RewardModel<B>,
    objective: &RewardObjective,
    pairs: &[RewardPair],
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> RewardSums {
    let mut sums = RewardSums::default();
    for chunk in pairs.chunks(batch_size.max(1)) {
        let refs: Vec<&RewardPair> = chunk.iter().collect();
        let (chosen, rejected, _) = pair_rewards(model, &refs, pad_id, device);
        let out = bradley_terry_loss(
            objective,
            chosen.clone(),
            rejected.clone(),
            margins::<B>(&refs, device),
        );
        sums += RewardSums::of(&out, chosen, rejected);
    }
    sums
}

fn save<B: AutodiffBackend>(
    setup: &Setup,
    state: &TrainerState,
    model: &Trainee<B>,
    opt: &AdamW<B::InnerBackend>,
) -> Result<CheckpointRef> {
    if let Some(name) = first_non_finite::<B, _>(model) {
        return Err(RewardError::Train(TrainError::checkpoint(
            setup.run.checkpoints_dir(),
            format!("refusing to save: parameter `{name}` is not finite"),
        )));
    }
    let c = &setup.config;
    let mut result = Ok(());
    let saved = save_checkpoint(
        &setup.run.checkpoints_dir(),
        state,
        c.train.keep_last,
        state.best.map(|b| b.step),
        |dir| {
            // The f32 masters of a mixed-precision run.
            let model = opt.f32_weights::<B, _>(model.clone());
            if let Err(e) = save_trained(
                &model.reward,
                &setup.model_config,
                c.lora.as_ref(),
                &c.model,
                dir,
            ) {
                // save_checkpoint wants a TrainError; keep ours and fail the write.
                let msg = e.to_string();
                result = Err(e);
                return Err(TrainError::checkpoint(dir, msg));
            }
            opt.save(&dir.join(OPTIMIZER_FILE))
        },
    );
    result?;
    Ok(saved?)
}
