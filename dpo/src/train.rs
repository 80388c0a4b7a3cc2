//! The DPO loop, written out: pairs → one concatenated forward → reference
//! log-probs → loss → backward → clip → step → metrics → eval/checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use alignkit_datasets::{Batch, PaddingSide, PreferenceExample, collate_pairs};
use alignkit_model::precision::cast_model;
use alignkit_model::{LlamaForCausalLM, load_model};
use alignkit_train::seed::seed_backend;
use alignkit_train::skeleton::{self, EpochOrder, Start, Weights};
use alignkit_train::{
    CheckpointRef, Gradients, KeyChange, ModelInput, RunIdentity, WeightsKind, model_fingerprint,
    sha256_file, trainable_count,
};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::DpoConfig;
use crate::data::{self, PairData};
use crate::error::{DpoError, Result};
use crate::logps::{CompletionTokens, completion_logps};
use crate::loss::{DpoObjective, Pair, dpo_loss};
use crate::metrics::{DpoMetrics, DpoSums, PairMetrics};
use crate::reference::{
    CacheStatus, ReferenceCache, ReferenceKey, ReferenceLogps, lora_reference, precompute,
};

pub use alignkit_train::{RunOptions, StopReason};

const TRAINER: &str = "dpo";
/// The config keys naming the data files, in the order `data::load` reads them.
const DATA_KEYS: &[&str] = &["data.train_file", "data.validation_file"];

/// Where the reference log-probs of a run come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// Precomputed once (or read from the cache) before the first step.
    Precomputed,
    /// A frozen copy of the reference model, run on every batch.
    FrozenModel,
    /// The LoRA policy with its adapters removed, run on every batch.
    AdaptersDisabled,
}

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
    pub reference: ReferenceKind,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    /// Reference log-probs of a split (`train` / `validation`): computed
    /// (`done` of `total` pairs so far) ...
    ReferenceProgress {
        split: &'a str,
        done: usize,
        total: usize,
    },
    /// ... and where they came from.
    Reference {
        split: &'a str,
        status: CacheStatus,
        path: &'a Path,
    },
    Started(&'a RunInfo),
    Step(&'a DpoMetrics),
    Checkpoint(&'a CheckpointRef),
}

/// How the run ended.
pub type DpoOutcome = alignkit_train::Outcome<DpoMetrics>;

/// The reference policy of a run (see [`ReferenceKind`]).
enum Reference<IB: Backend> {
    Precomputed {
        train: ReferenceLogps,
        validation: ReferenceLogps,
    },
    Frozen(Box<LlamaForCausalLM<IB>>),
    AdaptersDisabled,
}

/// Train a policy with DPO. Every configuration, data and checkpoint problem
/// (identical chosen/rejected included) is reported before the first step.
pub fn train<B: AutodiffBackend>(
    config: &DpoConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<DpoOutcome> {
    // 0. Setup: config, data, run directory, model, optimizer, reference.
    config.validate()?;
    let c = &config.with_absolute_paths()?;
    let objective = c.objective()?;
    let fingerprint = model_fingerprint(&c.model)?;
    let models = match &c.ref_model {
        Some(dir) => vec![ModelInput::read("ref_model", dir)?],
        None => Vec::new(),
    };
    // Data first: a bad pair is reported before the run directory exists.
    let encoder = data::encoder(c)?;
    let pairs = data::load(c, &encoder)?;
    if pairs.train.is_empty() {
        return Err(DpoError::Config {
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
            models: &models,
            bookkeeping: &["ref_cache_dir"],
            reread: alignkit_train::resume::reread::<DpoConfig>,
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
    let writes = options.world.writes();
    let reference = reference::<B>(c, &model, &pairs, pad_id, device, writes, progress)?;
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
        reference: match reference {
            Reference::Precomputed { .. } => ReferenceKind::Precomputed,
            Reference::Frozen(_) => ReferenceKind::FrozenModel,
            Reference::AdaptersDisabled => ReferenceKind::AdaptersDisabled,
        },
    }));
    let eval_setup = EvalSetup {
        pairs: &pairs.validation,
        objective: &objective,
        batch_size: c.train.batch_size,
        pad_id,
    };

    let mut order = EpochOrder::default();
    let mut last_metrics = None;
    let mut stop = StopReason::Completed;
    while run.running() {
        if run.stop_requested(&options)? {
            stop = StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1. The pair micro-batches of this update, in the epoch's seeded order;
        //    chosen rows first, then rejected, in one batch each.
        let (micro, next_cursor) = run.micro_batches(&mut order, micro_per_epoch, |epoch| {
            data::epoch_order(pairs.train.len(), global_batch, seed, epoch)
        });
        let micro: Vec<(&[usize], Batch)> = micro
            .iter()
            .map(|idx| (idx.as_slice(), pair_batch(&pairs.train, idx, pad_id)))
            .collect();
        // The step's loss is the mean over all its pairs (and, for RPO, over all
        // its chosen tokens), whatever the micro-batch split.
        let step_pairs = micro.iter().map(|(idx, _)| idx.len()).sum::<usize>() as f64;
        let chosen_tokens = micro
            .iter()
            .map(|(idx, b)| {
                CompletionTokens::of(b).per_row[..idx.len()]
                    .iter()
                    .sum::<usize>()
            })
            .sum::<usize>() as f64;
        let [step_pairs, step_chosen_tokens] = run
            .sum(&[step_pairs, chosen_tokens], "counting the step's pairs")?
            .try_into()
            .expect("two sums");

        // 2. Forward (policy and reference), loss, backward; gradients summed.
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut sums = DpoSums::default();
        let mut tokens = 0;
        for (k, (idx, batch)) in micro.iter().enumerate() {
            seed_backend::<B>(device, seed, run.state.step, run.stream(k));
            let policy = completion_logps(&model, batch, device);
            let ref_logps = match &reference {
                Reference::Precomputed { train, .. } => train.batch::<B>(idx, device),
                Reference::Frozen(m) => to_autodiff::<B>(completion_logps(m, batch, device).logps),
                Reference::AdaptersDisabled => {
                    to_autodiff::<B>(completion_logps(&lora_reference(&model), batch, device).logps)
                }
            };
            let out = dpo_loss(&objective, &policy.logps, &ref_logps, &policy.tokens);
            let loss = out.loss_normalized(step_pairs, step_chosen_tokens);
            grads.backward(&model, loss);
            sums += DpoSums::of(&out, &policy);
            tokens += batch.attention_mask.iter().filter(|&&m| m).count();
        }
        let sums = sums.summed(|v| run.sum(v, "summing the step's metrics"))?;
        let tokens = run.sum(&[tokens as f64], "counting the step's tokens")?[0] as usize;
        let step_metrics = PairMetrics::from(&sums);

        // 3. Clip, guard, update (the gradients summed over the ranks first).
        let update;
        (model, update) = run.update(model, grads, step_metrics.loss)?;
        run.state.cursor = next_cursor;
        run.state.num_tokens += tokens as u64;

        // 4. Metrics, and evaluation when due.
        let epoch = run.epoch(micro_per_epoch);
        let (lr, norm) = (update.learning_rate, update.grad_norm);
        let mut m = DpoMetrics::new(run.state.step, epoch, lr, norm, &step_metrics);
        m.num_tokens = run.state.num_tokens;
        m.tokens_per_second = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        m.skipped = update.skipped.clone();
        let mut new_best = false;
        if update.ok() && c.train.eval_due(run.state.step) {
            let e = PairMetrics::from(&evaluate_model::<B>(
                &eval_setup,
                &model,
                &reference,
                device,
            ));
            m.set_eval(&e);
            new_best = run.state.record_eval(e.loss);
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

/// Chosen rows then rejected rows of the pairs `idx`, right-padded.
fn pair_batch(pairs: &[PreferenceExample], idx: &[usize], pad_id: u32) -> Batch {
    collate_pairs(idx.iter().map(|&i| &pairs[i]), pad_id, PaddingSide::Right)
}

fn to_autodiff<B: AutodiffBackend>(p: Pair<B::InnerBackend>) -> Pair<B> {
    Pair::new(Tensor::from_inner(p.chosen), Tensor::from_inner(p.rejected))
}

/// Set up the reference policy; with `precompute_ref_log_probs`, compute its
/// log-probs for both splits now, or read them from the cache (which only
/// `writes`, rank 0 of a distributed run, fills).
fn reference<B: AutodiffBackend>(
    config: &DpoConfig,
    policy: &LlamaForCausalLM<B>,
    pairs: &PairData,
    pad_id: u32,
    device: &B::Device,
    writes: bool,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<Reference<B::InnerBackend>> {
    // In the run's dtype, as the policy.
    let dtype = config.train.dtype.dtype();
    let frozen = || -> Result<LlamaForCausalLM<B::InnerBackend>> {
        let dir = config.ref_model.as_ref().unwrap_or(&config.model);
        Ok(cast_model(
            load_model::<B::InnerBackend>(dir, device)?.1,
            dtype,
        ))
    };
    if !config.precompute_ref_log_probs {
        return Ok(match (&config.lora, &config.ref_model) {
            (Some(_), None) => Reference::AdaptersDisabled,
            _ => Reference::Frozen(Box::new(frozen()?)),
        });
    }
    // One model for both splits, dropped once they are computed.
    let mut model: Option<LlamaForCausalLM<B::InnerBackend>> = None;
    let ref_dir = config.ref_model.as_ref().unwrap_or(&config.model);
    let weights = weights_digest(ref_dir)?;
    let tokenizer = tokenizer_digest(&config.model)?;
    let settings = format!(
        "{} {} lora-reference={}",
        <B::InnerBackend as Backend>::name(device),
        format!("{dtype:?}").to_lowercase(),
        config.lora.is_some() && config.ref_model.is_none()
    );
    let cache = ReferenceCache::new(config.reference_cache_dir());
    let mut split = |name: &str, examples: &[PreferenceExample]| -> Result<ReferenceLogps> {
        let refs: Vec<&PreferenceExample> = examples.iter().collect();
        if refs.is_empty() {
            return Ok(ReferenceLogps {
                chosen: Vec::new(),
                rejected: Vec::new(),
            });
        }
        let key = ReferenceKey {
            weights: &weights,
            tokenizer: &tokenizer,
            examples: &refs,
            settings: &settings,
        }
        .digest();
        let (logps, status) = match cache.load(&key, refs.len())? {
            Some(hit) => (hit, CacheStatus::Hit),
            None => {
                if model.is_none() {
                    model = Some(match (&config.lora, &config.ref_model) {
                        (Some(_), None) => lora_reference(policy),
                        _ => frozen()?,
                    });
                }
                let m = model.as_ref().expect("loaded above");
                let logps = precompute(
                    m,
                    &refs,
                    config.train.batch_size,
                    pad_id,
                    device,
                    |done, total| {
                        progress(Event::ReferenceProgress {
                            split: name,
                            done,
                            total,
                        })
                    },
                );
                if writes {
                    cache.store(&key, &logps)?;
                }
                (logps, CacheStatus::Computed)
            }
        };
        progress(Event::Reference {
            split: name,
            status,
            path: &cache.path(&key),
        });
        Ok(logps)
    };
    let train = split("train", &pairs.train)?;
    let validation = split("validation", &pairs.validation)?;
    Ok(Reference::Precomputed { train, validation })
}

/// SHA-256 over the bytes of a model directory's `config.json` and weight files.
fn weights_digest(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DpoError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n == "config.json" || (n.starts_with("model") && n.ends_with(".safetensors"))
            })
        })
        .collect();
    files.sort();
    let mut parts = Vec::new();
    for f in files {
        parts.push(sha256_file(&f)?);
    }
    Ok(parts.join(","))
}

/// SHA-256 of the tokenizer files (and the chat template, when separate).
fn tokenizer_digest(dir: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        let path = dir.join(name);
        if path.is_file() {
            parts.push(format!("{name}:{}", sha256_file(&path)?));
        }
    }
    Ok(parts.join(","))
}

/// What an evaluation over the validation pairs needs.
struct EvalSetup<'a> {
    pairs: &'a [PreferenceExample],
    objective: &'a DpoObjective,
    batch_size: usize,
    pad_id: u32,
}

/// Loss and metrics over the validation pairs (no dropout, no gradients).
fn evaluate_model<B: AutodiffBackend>(
    setup: &EvalSetup<'_>,
    model: &LlamaForCausalLM<B>,
    reference: &Reference<B::InnerBackend>,
    device: &B::Device,
) -> DpoSums {
    let policy = model.valid();
    let adapters_off =
        matches!(reference, Reference::AdaptersDisabled).then(|| lora_reference(model));
    let mut sums = DpoSums::default();
    for idx in data::in_order(setup.pairs.len(), setup.batch_size) {
        let batch = pair_batch(setup.pairs, &idx, setup.pad_id);
        let pol = completion_logps(&policy, &batch, device);
        let ref_logps = match (reference, &adapters_off) {
            (Reference::Precomputed { validation, .. }, _) => validation.batch(&idx, device),
            (Reference::Frozen(m), _) => completion_logps(m, &batch, device).logps,
            (Reference::AdaptersDisabled, Some(m)) => completion_logps(m, &batch, device).logps,
            (Reference::AdaptersDisabled, None) => unreachable!("built above"),
        };
        let out = dpo_loss(setup.objective, &pol.logps, &ref_logps, &pol.tokens);
        sums += DpoSums::of(&out, &pol);
    }
    sums
}
