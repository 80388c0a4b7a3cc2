//! The reward-model loop, written out: pairs → one forward over chosen and
//! rejected rows → Bradley–Terry loss → backward → clip → step → metrics →
//! eval/checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use alignkit_datasets::shuffled_batches;
use alignkit_model::heads::RewardModel;
use alignkit_train::reward_model::{Trainee, write_final};
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::skeleton::{self, EpochOrder, Start, Weights};
use alignkit_train::{
    CheckpointRef, Gradients, KeyChange, RunIdentity, WeightsKind, model_fingerprint,
    trainable_count,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::config::RewardConfig;
use crate::data::{self, RewardPair};
use crate::error::{Result, RewardError};
use crate::loss::{RewardObjective, RewardSums, bradley_terry_loss};
use crate::metrics::RewardMetrics;
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
    /// The process whose lock on the run directory this run took over: it
    /// ended without removing it.
    pub lock_taken_over: Option<alignkit_train::output::Holder>,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RunInfo),
    Step(&'a RewardMetrics),
    Checkpoint(&'a CheckpointRef),
}

/// How the run ended. `final/` is a `*ForSequenceClassification` HF directory.
pub type RewardOutcome = alignkit_train::Outcome<RewardMetrics>;

/// Train a reward model. Every configuration, data and checkpoint problem
/// (identical chosen/rejected included) is reported before the first step.
pub fn train<B: AutodiffBackend>(
    config: &RewardConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<RewardOutcome> {
    // 0. Setup: config, data, run directory, model, optimizer.
    config.validate()?;
    let c = &config.with_absolute_paths()?;
    let objective = c.objective()?;
    let fingerprint = model_fingerprint(&c.model)?;
    // Data first: a bad pair is reported before the run directory exists.
    let encoder = data::encoder(
        &c.model,
        c.data.max_len,
        c.data.text_as_chat,
        c.data.completion_end,
        &c.data.chat_template_kwargs,
    )?;
    let pairs = data::load(c, &encoder)?;
    if pairs.train.is_empty() {
        return Err(RewardError::Config {
            field: "data.train_file".into(),
            message: format!("{}: no training pair", c.data.train_file.display()),
        });
    }
    let pad_id = encoder.tokenizer().pad_id();
    // train.batch_size is per rank; a global micro-batch deals one to each.
    let global_batch = options.global_batch(c.train.batch_size);
    let micro_per_epoch = pairs.train.len().div_ceil(global_batch);
    let total_steps = c.train.total_steps(micro_per_epoch);
    let seed = c.train.seed;
    let opening = skeleton::open(
        &c.output_dir,
        &options,
        &RunIdentity {
            trainer: TRAINER,
            base_model: &c.model,
            base_fingerprint: &fingerprint,
            weights: WeightsKind::of(c.lora.as_ref()),
            config: alignkit_train::resume::to_json(c),
            data_files: &pairs.files,
            data_keys: DATA_KEYS,
            models: &[],
            bookkeeping: &[],
            reread: alignkit_train::resume::reread::<RewardConfig>,
        },
        total_steps,
        seed,
    )?;
    let (model_config, model) =
        opening.load::<B, Trainee<B>>(&c.model, c.lora.as_ref(), &c.train, device)?;
    let (mut run, mut model) = opening.start(
        model,
        Start {
            train: &c.train,
            optim: &c.optim,
            schedule: c.schedule.build(c.learning_rate, total_steps),
            tokenizer_vocab: encoder.tokenizer().vocab_size(),
            model_vocab: model_config.vocab_size,
            config_toml: c.to_toml(),
        },
        device,
    )?;
    let weights = Weights {
        model_config: &model_config,
        lora: c.lora.as_ref(),
        base: &c.model,
    };
    progress(Event::Started(&RunInfo {
        run_dir: run.root().to_path_buf(),
        start_step: run.start_step(),
        total_steps,
        train_pairs: pairs.train.len(),
        validation_pairs: pairs.validation.len(),
        micro_batches_per_epoch: micro_per_epoch,
        trainable_params: trainable_count::<B, _>(&model),
        truncated: pairs.truncated,
        resumed_with: run.resumed_with.clone(),
        lock_taken_over: run.dir.lock_taken_over().cloned(),
    }));

    let mut order = EpochOrder::default();
    let mut last_metrics = None;
    let mut stop = StopReason::Completed;
    while run.running() {
        if run.stop_requested(&options)? {
            stop = StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1. The pair micro-batches of this update, in the epoch's seeded order.
        let (micro, next_cursor) = run.micro_batches(&mut order, micro_per_epoch, |epoch| {
            let order_seed = derive_seed(seed, Stream::DataOrder, epoch as u64, 0);
            shuffled_batches(pairs.train.len(), global_batch, order_seed)
        });
        let local_pairs = micro.iter().map(|idx| idx.len()).sum::<usize>() as f64;
        let step_pairs = run.sum(&[local_pairs], "counting the step's pairs")?[0];

        // 2. Forward (chosen and rejected rows together), loss, backward.
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut sums = RewardSums::default();
        let mut tokens = 0;
        for (k, idx) in micro.iter().enumerate() {
            seed_backend::<B>(device, seed, run.state.step, run.stream(k));
            let batch_pairs: Vec<&RewardPair> = idx.iter().map(|&i| &pairs.train[i]).collect();
            let (chosen, rejected, batch) =
                pair_rewards(&model.reward, &batch_pairs, pad_id, device);
            let out = bradley_terry_loss(
                &objective,
                chosen.clone(),
                rejected.clone(),
                margins::<B>(&batch_pairs, device),
            );
            let loss = out.loss_normalized(step_pairs);
            grads.backward(&model, loss);
            sums += RewardSums::of(&out, chosen, rejected);
            tokens += batch.attention_mask.iter().filter(|&&m| m).count();
        }

        let tokens = run.sum(&[tokens as f64], "counting the step's tokens")?[0] as usize;
        let sums = sums.summed(
            |v| run.sum(v, "summing the step's metrics"),
            |v| run.gather(v, "the step's extreme rewards"),
        )?;

        // 3. Clip, guard, update (the gradients summed over the ranks first).
        let update;
        (model, update) = run.update(model, grads, sums.loss())?;
        run.state.cursor = next_cursor;
        run.state.num_tokens += tokens as u64;

        // 4. Metrics, and evaluation when due.
        let epoch = run.epoch(micro_per_epoch);
        let (lr, norm) = (update.learning_rate, update.grad_norm);
        let mut m = RewardMetrics::new(run.state.step, epoch, lr, norm, &sums);
        m.num_tokens = run.state.num_tokens;
        m.tokens_per_second = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        m.skipped = update.skipped.clone();
        let mut new_best = false;
        if update.ok() && c.train.eval_due(run.state.step) {
            let e = evaluate(
                &model.reward.valid(),
                &objective,
                &pairs.validation,
                c.train.batch_size,
                pad_id,
                device,
            );
            m.set_eval(&e);
            new_best = run.state.record_eval(e.loss());
        }
        run.log(&m)?;
        progress(Event::Step(&m));
        last_metrics = Some(m);
        update.verdict()?;

        // 5. Checkpoint when due.
        let due = run.save_when_due(&model, &weights, new_best)?;
        if let Some(saved) = &due.saved {
            progress(Event::Checkpoint(saved));
        }
        if due.early_stop {
            stop = StopReason::EarlyStopped;
            break;
        }
    }

    // 6. The last checkpoint; unless interrupted, final/.
    if let Some(saved) = run.save_last(&model, &weights, stop)? {
        progress(Event::Checkpoint(&saved));
    }
    let mut final_dir = None;
    if stop != StopReason::Interrupted {
        let reward = run.kept(model, stop, &weights, device)?.reward;
        let dir = run.dir.final_dir();
        write_final(
            reward,
            &model_config,
            pad_id,
            &c.model,
            &dir,
            c.final_dtype.into(),
        )?;
        final_dir = Some(dir);
    }
    Ok(run.outcome(stop, final_dir, last_metrics))
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
