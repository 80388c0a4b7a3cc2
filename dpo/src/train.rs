//! The DPO loop, written out: pairs → one concatenated forward → reference
//! log-probs → loss → backward → clip → step → metrics → eval/checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use alignkit_datasets::{Batch, PaddingSide, PreferenceExample, collate_pairs};
use alignkit_model::precision::cast_model;
use alignkit_model::{LlamaConfig, LlamaForCausalLM, load_model};
use alignkit_train::checkpoint::OPTIMIZER_FILE;
use alignkit_train::export::{ModelCard, write_merged};
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::weights::{load_trainable, save_trained};
use alignkit_train::{
    AdamW, CheckpointRef, Gradients, KeyChange, NanGuard, RunDir, RunIdentity, TrainError,
    TrainerState, Verdict, WeightsKind, first_non_finite, model_fingerprint, save_checkpoint,
    sha256_file, skip_reason, trainable_count, trainable_params,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

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
    Checkpoint {
        step: usize,
        path: &'a Path,
    },
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

/// Everything a step needs that does not change during the run.
struct Setup {
    config: DpoConfig,
    run: RunDir,
    data: PairData,
    objective: DpoObjective,
    pad_id: u32,
    model_config: LlamaConfig,
    micro_per_epoch: usize,
    total_steps: usize,
}

/// Train a policy with DPO. Every configuration, data and checkpoint problem
/// (identical chosen/rejected included) is reported before the first step.
pub fn train<B: AutodiffBackend>(
    config: &DpoConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<DpoOutcome> {
    // 0. Setup: config, checkpoint, data, model, reference, optimizer.
    config.validate()?;
    let config = config.with_absolute_paths()?;
    let objective = config.objective()?;
    let fingerprint = model_fingerprint(&config.model)?;
    // Data first: a bad pair is reported before the run directory exists.
    let encoder = data::encoder(&config)?;
    let pairs = data::load(&config, &encoder)?;
    if pairs.train.is_empty() {
        return Err(DpoError::Config {
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
            bookkeeping: &["ref_cache_dir"],
            reread: alignkit_train::resume::reread::<DpoConfig>,
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
        return Err(DpoError::Config {
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
    let reference = reference::<B>(&config, &model, &pairs, pad_id, device, progress)?;
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
        reference: match reference {
            Reference::Precomputed { .. } => ReferenceKind::Precomputed,
            Reference::Frozen(_) => ReferenceKind::FrozenModel,
            Reference::AdaptersDisabled => ReferenceKind::AdaptersDisabled,
        },
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

        // 1. The pair micro-batches of this update, in the epoch's seeded order;
        //    chosen rows first, then rejected, in one batch each.
        let (epoch, range, next_cursor) = state
            .cursor
            .next_step(setup.micro_per_epoch, c.train.grad_accum);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let n = setup.data.train.len();
            order = Some((epoch, data::epoch_order(n, c.train.batch_size, seed, epoch)));
        }
        let (_, epoch_order) = order.as_ref().expect("set above");
        let micro: Vec<(&[usize], Batch)> = range
            .map(|i| {
                let idx = epoch_order[i].as_slice();
                (idx, pair_batch(&setup.data.train, idx, setup.pad_id))
            })
            .collect();
        // The step's loss is the mean over all its pairs (and, for RPO, over all
        // its chosen tokens), whatever the micro-batch split.
        let step_pairs = micro.iter().map(|(idx, _)| idx.len()).sum::<usize>() as f64;
        let step_chosen_tokens = micro
            .iter()
            .map(|(idx, b)| {
                CompletionTokens::of(b).per_row[..idx.len()]
                    .iter()
                    .sum::<usize>()
            })
            .sum::<usize>() as f64;

        // 2. Forward (policy and reference), loss, backward; gradients summed.
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut sums = DpoSums::default();
        let mut tokens = 0;
        for (k, (idx, batch)) in micro.iter().enumerate() {
            seed_backend::<B>(device, seed, state.step, k);
            let policy = completion_logps(&model, batch, device);
            let ref_logps = match &reference {
                Reference::Precomputed { train, .. } => train.batch::<B>(idx, device),
                Reference::Frozen(m) => to_autodiff::<B>(completion_logps(m, batch, device).logps),
                Reference::AdaptersDisabled => {
                    to_autodiff::<B>(completion_logps(&lora_reference(&model), batch, device).logps)
                }
            };
            let out = dpo_loss(&setup.objective, &policy.logps, &ref_logps, &policy.tokens);
            let loss = out.loss_normalized(step_pairs, step_chosen_tokens);
            grads.backward(&model, loss);
            sums += DpoSums::of(&out, &policy);
            tokens += batch.attention_mask.iter().filter(|&&m| m).count();
        }
        let step_metrics = PairMetrics::from(&sums);

        // 3. Clip, guard, update.
        let grad_norm = grads.clip_global_norm(c.train.max_grad_norm);
        let lr = schedule.lr_at(state.step);
        state.step += 1;
        state.cursor = next_cursor;
        state.num_tokens += tokens as u64;
        let verdict = guard.check(state.step, step_metrics.loss, grad_norm);
        if let Ok(Verdict::Update) = verdict {
            model = opt.step::<B, _>(model, grads, lr);
        }
        let skipped = skip_reason(&verdict);
        state.skipped_steps = guard.skipped();
        state.consecutive_bad_steps = guard.consecutive();

        // 4. Metrics, and evaluation when due.
        let epoch_f = state.cursor.epoch as f64
            + state.cursor.micro_batch as f64 / setup.micro_per_epoch as f64;
        let mut m = DpoMetrics::new(state.step, epoch_f, lr, grad_norm, &step_metrics);
        m.num_tokens = state.num_tokens;
        m.tokens_per_second = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        m.skipped = skipped;
        let mut new_best = false;
        if verdict.is_ok() && c.train.eval_due(state.step) {
            let e = PairMetrics::from(&evaluate_model::<B>(&setup, &model, &reference, device));
            m.set_eval(&e);
            new_best = state.record_eval(e.loss);
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
    Ok(DpoOutcome {
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

/// Chosen rows then rejected rows of the pairs `idx`, right-padded.
fn pair_batch(pairs: &[PreferenceExample], idx: &[usize], pad_id: u32) -> Batch {
    collate_pairs(idx.iter().map(|&i| &pairs[i]), pad_id, PaddingSide::Right)
}

fn to_autodiff<B: AutodiffBackend>(p: Pair<B::InnerBackend>) -> Pair<B> {
    Pair::new(Tensor::from_inner(p.chosen), Tensor::from_inner(p.rejected))
}

/// Set up the reference policy; with `precompute_ref_log_probs`, compute its
/// log-probs for both splits now, or read them from the cache.
fn reference<B: AutodiffBackend>(
    config: &DpoConfig,
    policy: &LlamaForCausalLM<B>,
    pairs: &PairData,
    pad_id: u32,
    device: &B::Device,
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
                cache.store(&key, &logps)?;
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

/// Loss and metrics over the validation pairs (no dropout, no gradients).
fn evaluate_model<B: AutodiffBackend>(
    setup: &Setup,
    model: &LlamaForCausalLM<B>,
    reference: &Reference<B::InnerBackend>,
    device: &B::Device,
) -> DpoSums {
    let policy = model.valid();
    let adapters_off =
        matches!(reference, Reference::AdaptersDisabled).then(|| lora_reference(model));
    let batch_size = setup.config.train.batch_size;
    let mut sums = DpoSums::default();
    for idx in data::in_order(setup.data.validation.len(), batch_size) {
        let batch = pair_batch(&setup.data.validation, &idx, setup.pad_id);
        let pol = completion_logps(&policy, &batch, device);
        let ref_logps = match (reference, &adapters_off) {
            (Reference::Precomputed { validation, .. }, _) => validation.batch(&idx, device),
            (Reference::Frozen(m), _) => completion_logps(m, &batch, device).logps,
            (Reference::AdaptersDisabled, Some(m)) => completion_logps(m, &batch, device).logps,
            (Reference::AdaptersDisabled, None) => unreachable!("built above"),
        };
        let out = dpo_loss(&setup.objective, &pol.logps, &ref_logps, &pol.tokens);
        sums += DpoSums::of(&out, &pol);
    }
    sums
}

fn save<B: AutodiffBackend>(
    setup: &Setup,
    state: &TrainerState,
    model: &LlamaForCausalLM<B>,
    opt: &AdamW<B::InnerBackend>,
) -> Result<CheckpointRef> {
    if let Some(name) = first_non_finite::<B, _>(model) {
        return Err(DpoError::Train(TrainError::checkpoint(
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
            // The f32 masters of a mixed-precision run.
            let model = opt.f32_weights::<B, _>(model.clone());
            save_trained(&model, &setup.model_config, c.lora.as_ref(), &c.model, dir)?;
            opt.save(&dir.join(OPTIMIZER_FILE))
        },
    )?)
}
