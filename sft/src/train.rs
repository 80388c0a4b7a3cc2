//! The SFT loop, written out: batch → forward → loss → backward → clip → step
//! → metrics → eval/checkpoint.

use std::path::PathBuf;
use std::time::Instant;

use alignkit_datasets::Batch;
use alignkit_model::LlamaForCausalLM;
use alignkit_train::seed::seed_backend;
use alignkit_train::skeleton::{self, EpochOrder, Start, Weights};
use alignkit_train::{
    CheckpointRef, Gradients, KeyChange, RunIdentity, WeightsKind, model_fingerprint,
    trainable_count,
};
use burn::module::{AutodiffModule, Module};
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
    /// The process whose lock on the run directory this run took over: it
    /// ended without removing it.
    pub lock_taken_over: Option<alignkit_train::output::Holder>,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RunInfo),
    Step(&'a SftMetrics),
    Checkpoint(&'a CheckpointRef),
}

/// How the run ended.
pub type SftOutcome = alignkit_train::Outcome<SftMetrics>;

/// Train with supervised fine-tuning. Every configuration, data and
/// checkpoint problem is reported before the first step.
pub fn train<B: AutodiffBackend>(
    config: &SftConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<SftOutcome> {
    // 0. Setup: config, data, run directory, model, optimizer.
    config.validate()?;
    let c = &config.with_absolute_paths()?;
    let fingerprint = model_fingerprint(&c.model)?;
    let encoder = data::encoder(c)?;
    let sft_data = data::load(c, &encoder)?;
    if sft_data.train.is_empty() {
        return Err(SftError::Config {
            field: "data.train_file".into(),
            message: format!(
                "{}: no example with a trained token",
                c.data.train_file.display()
            ),
        });
    }
    let pad_id = encoder.tokenizer().pad_id();
    let (train_examples, validation_examples) = (sft_data.train.len(), sft_data.validation.len());
    let rows = Rows::new(sft_data.train, c.data.packing, c.data.max_len, pad_id)?;
    let eval_rows = Rows::new(sft_data.validation, false, c.data.max_len, pad_id)?;
    // train.batch_size is per rank; a global micro-batch deals one to each.
    let global_batch = options.global_batch(c.train.batch_size);
    let micro_per_epoch = rows.micro_batches(global_batch);
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
            data_files: &sft_data.files,
            data_keys: DATA_KEYS,
            models: &[],
            bookkeeping: &[],
            reread: alignkit_train::resume::reread::<SftConfig>,
        },
        total_steps,
        seed,
    )?;
    let (model_config, model) =
        opening.load::<B, LlamaForCausalLM<B>>(&c.model, c.lora.as_ref(), &c.train, device)?;
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
        train_examples,
        validation_examples,
        rows: rows.len(),
        micro_batches_per_epoch: micro_per_epoch,
        trainable_params: trainable_count::<B, _>(&model),
        total_params: model.num_params() + lora_params(&model),
        truncated: sft_data.truncated,
        without_targets: sft_data.without_targets,
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

        // 1. The micro-batches of this update, in the epoch's seeded order.
        let (micro, next_cursor) = run.micro_batches(&mut order, micro_per_epoch, |epoch| {
            rows.epoch_order(global_batch, seed, epoch)
        });
        let batches: Vec<Batch> = micro.iter().map(|idx| rows.collate(idx, pad_id)).collect();
        let targets = batches.iter().map(count_targets).sum::<usize>() as f64;
        let norm = run.sum(&[targets], "counting the step's trained tokens")?[0].max(1.0);

        // 2. Forward, loss, backward; gradients summed over micro-batches.
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut sums = BatchSums::default();
        for (k, batch) in batches.iter().enumerate() {
            seed_backend::<B>(device, seed, run.state.step, run.stream(k));
            let (loss, s) = batch_loss(&model, batch, rows.packed(), norm, device);
            if s.targets > 0 {
                grads.backward(&model, loss);
            }
            sums += s;
        }
        let sums = summed(&run, sums)?;
        let loss = sums.nll / norm;

        // 3. Clip, guard, update (the gradients summed over the ranks first).
        let update;
        (model, update) = run.update(model, grads, loss)?;
        run.state.cursor = next_cursor;
        run.state.num_tokens += sums.tokens as u64;

        // 4. Metrics, and evaluation when due.
        let epoch = run.epoch(micro_per_epoch);
        let mut m = SftMetrics::new(run.state.step, epoch, loss, &update, &sums);
        m.num_tokens = run.state.num_tokens;
        m.tokens_per_second = sums.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let mut new_best = false;
        if update.ok() && c.train.eval_due(run.state.step) {
            let e = evaluate(
                &model.valid(),
                &eval_rows,
                c.train.batch_size,
                pad_id,
                device,
            );
            m.set_eval(&e);
            new_best = run.state.record_eval(m.eval_loss.unwrap_or(f64::NAN));
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
        let model = run.kept(model, stop, &weights, device)?;
        let dtype = c.final_dtype.into();
        final_dir = Some(run.write_final(model, &weights, TRAINER, dtype, c.to_toml())?);
    }
    Ok(run.outcome(stop, final_dir, last_metrics))
}

/// The step's sums over all ranks.
fn summed<B: AutodiffBackend>(run: &skeleton::Run<B>, s: BatchSums) -> Result<BatchSums> {
    let local = [
        s.nll,
        s.correct,
        s.entropy,
        s.targets as f64,
        s.tokens as f64,
    ];
    let [nll, correct, entropy, targets, tokens] = run
        .sum(&local, "summing the step's metrics")?
        .try_into()
        .expect("five sums");
    Ok(BatchSums {
        nll,
        correct,
        entropy,
        targets: targets as usize,
        tokens: tokens as usize,
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
