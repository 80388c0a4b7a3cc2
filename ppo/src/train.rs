//! The online-RL loop (GRPO and RLOO), written out in numbered steps:
//! 1. roll out  2. score  3. advantages  4. μ optimisation passes
//! 5. metrics  6. checkpoint.
//!
//! One step samples G completions for each of its prompts with the current
//! policy π_old, scores them, and then makes μ optimizer updates on that
//! rollout, each over all its completions (`train.batch_size` completions per
//! forward pass, gradients summed). π_old's log-probs are those of the first
//! pass, before any update: on that pass the ratio is exp(logp −
//! stop_grad(logp)) = 1 exactly (TRL does the same when it has no stored
//! old log-probs), and later passes reuse them.
//!
//! Exact resume: the rollout cursor is the data cursor, and every random draw
//! (the prompt order of an epoch, each completion's sampling, LoRA dropout) is
//! seeded by the run seed and its position (`alignkit_train::seed`), so seed +
//! step is the whole RNG state.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use alignkit_datasets::shuffled_batches;
use alignkit_model::{FinishReason, LlamaConfig, LlamaForCausalLM, load_model, lora};
use alignkit_train::checkpoint::OPTIMIZER_FILE;
use alignkit_train::export::{ModelCard, write_merged};
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::weights::{load_trainable, save_trained};
use alignkit_train::{
    AdamW, CheckpointRef, DataFile, Gradients, KeyChange, NanGuard, RunDir, RunIdentity,
    TrainError, TrainerState, Verdict, WeightsKind, first_non_finite, model_fingerprint,
    save_checkpoint, sha256_file, skip_reason, trainable_count, trainable_params,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::config::{Algorithm, RlConfig};
use crate::error::{Result, RlError};
use crate::loss::{
    Clip, GrpoInputs, LossType, PolicyLoss, ScaleRewards, eos_penalised, frac_zero_std,
    grpo_advantages, grpo_loss, is_trained, k1_sequence, kl_penalised, rloo_advantages, rloo_loss,
    token_weights,
};
use crate::metrics::{CompletionRecord, CompletionsLog, RlMetrics, mean_std};
use crate::reward::{self, Rewards};
use crate::rollout::{
    Completion, Prompt, RolloutSettings, ScoredTokens, check_head, load_prompts, roll_out,
    scaled_token_logprobs,
};

pub use alignkit_train::{RunOptions, StopReason};

/// Where the reference log-probs of the KL term come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// β = 0: no reference, no reference forward.
    None,
    /// A frozen copy of the starting model.
    FrozenModel,
    /// The LoRA policy with its adapters disabled (no second copy).
    AdaptersDisabled,
}

/// What the run is about to do, reported once before the first step.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_dir: PathBuf,
    /// `grpo` or `rloo`.
    pub algorithm: &'static str,
    pub start_step: usize,
    pub total_steps: usize,
    pub prompts: usize,
    pub prompts_per_step: usize,
    pub completions_per_step: usize,
    pub trainable_params: usize,
    pub reference: ReferenceKind,
    /// The reward functions' names, as logged.
    pub rewards: Vec<String>,
    /// Bookkeeping settings changed since the checkpoint resumed from.
    pub resumed_with: Vec<KeyChange>,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RunInfo),
    Step(&'a RlMetrics),
    Checkpoint { step: usize, path: &'a Path },
}

/// How the run ended.
pub type RlOutcome = alignkit_train::Outcome<RlMetrics>;

/// The objective of a run, owned (the config's [`Algorithm`] borrows).
#[derive(Debug, Clone, Copy)]
enum Objective {
    Grpo {
        loss_type: LossType,
        scale: ScaleRewards,
    },
    Rloo {
        normalize: bool,
    },
}

enum Reference<IB: Backend> {
    None,
    Frozen(Box<LlamaForCausalLM<IB>>),
    AdaptersDisabled,
}

/// Everything a step needs that does not change during the run.
struct Setup {
    config: RlConfig,
    trainer: &'static str,
    objective: Objective,
    group: usize,
    beta: f64,
    passes: usize,
    clip: Clip,
    settings: RolloutSettings,
    run: RunDir,
    prompts: Vec<Prompt>,
    prompts_per_step: usize,
    batches_per_epoch: usize,
    total_steps: usize,
    model_config: LlamaConfig,
}

/// Train a policy with GRPO or RLOO (the config's `[grpo]` or `[rloo]`
/// table). Every configuration, prompt and reward-model problem is reported
/// before any rollout.
pub fn train<B: AutodiffBackend>(
    config: &RlConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<RlOutcome> {
    // 0. Setup: config, prompts, checkpoint, policy, reference, rewards, optimizer.
    config.validate()?;
    let config = config.with_absolute_paths()?;
    let algorithm = config.algorithm()?;
    let (trainer, group, beta, passes, clip) = (
        algorithm.name(),
        algorithm.num_generations(),
        algorithm.beta(),
        algorithm.num_iterations(),
        algorithm.clip(),
    );
    let objective = match algorithm {
        Algorithm::Grpo(p) => Objective::Grpo {
            loss_type: p.loss_type,
            scale: p.scale_rewards,
        },
        Algorithm::Rloo(p) => Objective::Rloo {
            normalize: p.normalize_advantages,
        },
    };
    let settings = config.rollout_settings()?;
    let encoder = config.encoder()?;
    let prompts = load_prompts(&config.data.train_file, &encoder)?;
    reward::check_records(&config.rewards, &prompts)?;
    let tokenizer = encoder.tokenizer();
    let pad_id = tokenizer.pad_id();
    let fingerprint = model_fingerprint(&config.model)?;
    let prompts_per_step = config.completions_per_step() / group;
    let batches_per_epoch = prompts.len().div_ceil(prompts_per_step);
    let total_steps = match config.train.max_steps {
        0 => config.train.epochs * batches_per_epoch,
        n => n,
    };
    let schedule = config.schedule.build(config.learning_rate, total_steps);
    let seed = config.train.seed;
    let data_files = [DataFile {
        path: config.data.train_file.clone(),
        sha256: sha256_file(&config.data.train_file)?,
    }];
    let (run, mut state, resumed) = RunDir::open(
        &config.output_dir,
        options.resume,
        &RunIdentity {
            trainer,
            base_model: &config.model,
            base_fingerprint: &fingerprint,
            weights: WeightsKind::of(config.lora.as_ref()),
            config: alignkit_train::resume::to_json(&config),
            data_files: &data_files,
            data_keys: &["data.train_file"],
            // How often completions are logged changes no update.
            bookkeeping: &[
                "rollout.log_completions_steps",
                "rollout.num_completions_to_log",
            ],
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
    let vocab = tokenizer.vocab_size();
    if vocab > model_config.vocab_size {
        return Err(RlError::Config {
            field: "model".into(),
            message: format!(
                "the tokenizer has {vocab} tokens but the model's embedding has {} rows",
                model_config.vocab_size
            ),
        });
    }
    check_head(&model)?;
    let reference: Reference<B::InnerBackend> = match (beta > 0.0, &config.lora) {
        (false, _) => Reference::None,
        (true, Some(_)) => Reference::AdaptersDisabled,
        (true, None) => Reference::Frozen(Box::new(
            load_model::<B::InnerBackend>(&config.model, device)?.1,
        )),
    };
    let rewards = Rewards::<B::InnerBackend>::load(
        &config.rewards,
        pad_id,
        encoder.turn_trailer(),
        config.train.batch_size,
        device,
    )?;

    let mut opt = match &ckpt_path {
        Some(dir) => AdamW::<B::InnerBackend>::load(
            config.optim.clone(),
            &dir.join(OPTIMIZER_FILE),
            &trainable_params::<B, _>(&model),
            device,
        )?,
        None => AdamW::new(config.optim.clone()),
    };
    let mut guard = NanGuard::resume(
        config.train.max_bad_steps,
        state.consecutive_bad_steps,
        state.skipped_steps,
    );
    run.write_config(&config.to_toml())?;
    let resumed_step = ckpt_path.as_ref().map(|_| state.step);
    let mut metrics = run.metrics(resumed_step)?;
    let mut completions_log = CompletionsLog::open(run.root(), resumed_step)?;
    let info = RunInfo {
        run_dir: run.root().to_path_buf(),
        algorithm: trainer,
        start_step: state.step,
        total_steps,
        prompts: prompts.len(),
        prompts_per_step,
        completions_per_step: config.completions_per_step(),
        trainable_params: trainable_count::<B, _>(&model),
        reference: match reference {
            Reference::None => ReferenceKind::None,
            Reference::Frozen(_) => ReferenceKind::FrozenModel,
            Reference::AdaptersDisabled => ReferenceKind::AdaptersDisabled,
        },
        rewards: rewards.names().to_vec(),
        resumed_with: resumed.map(|r| r.changes).unwrap_or_default(),
    };
    progress(Event::Started(&info));
    let setup = Setup {
        config,
        trainer,
        objective,
        group,
        beta,
        passes,
        clip,
        settings,
        run,
        prompts,
        prompts_per_step,
        batches_per_epoch,
        total_steps,
        model_config,
    };
    let c = &setup.config;
    let temperature = setup.settings.temperature;

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

        // 1. Roll out: G completions for each prompt of this step, sampled by
        //    the current policy (π_old) without gradients.
        let (epoch, range, next_cursor) = state.cursor.next_step(setup.batches_per_epoch, 1);
        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let epoch_seed = derive_seed(seed, Stream::DataOrder, epoch as u64, 0);
            order = Some((
                epoch,
                shuffled_batches(setup.prompts.len(), setup.prompts_per_step, epoch_seed),
            ));
        }
        let indices = order.as_ref().expect("set above").1[range.start].clone();
        let completions = {
            let sampler = model.valid().for_decoding();
            roll_out(
                &sampler,
                &setup.prompts,
                &indices,
                &setup.settings,
                tokenizer,
                seed,
                state.step,
                device,
            )?
        };
        let generation_time = started.elapsed().as_secs_f64();

        // 2. Score: each reward function, their weighted sum, the EOS penalty.
        let scoring_started = Instant::now();
        let scores = rewards.score(&setup.prompts, &completions, device)?;
        let total_rewards: Vec<f64> = scores
            .total
            .iter()
            .zip(&completions)
            .map(|(&r, comp)| eos_penalised(r, comp.terminated(), c.rollout.missing_eos_penalty))
            .collect();

        // 3. Advantages, with the reference's log-probs where β > 0. The
        //    micro-batches are fixed here for all passes; a masked (truncated)
        //    completion is a row without scored tokens.
        let trained: Vec<bool> = completions
            .iter()
            .map(|comp| is_trained(comp.terminated(), c.rollout.mask_truncated_completions))
            .collect();
        let micro: Vec<Range<usize>> = (0..completions.len())
            .step_by(c.train.batch_size)
            .map(|s| s..(s + c.train.batch_size).min(completions.len()))
            .collect();
        let batches: Vec<ScoredTokens> = micro
            .iter()
            .map(|r| {
                let rows: Vec<(&[u32], &[u32])> = completions[r.clone()]
                    .iter()
                    .map(|comp| {
                        (
                            setup.prompts[comp.prompt].ids.as_slice(),
                            comp.tokens.as_slice(),
                        )
                    })
                    .collect();
                ScoredTokens::new(&rows, &trained[r.clone()], pad_id)
            })
            .collect();
        let ref_logps: Option<Vec<Vec<f32>>> = match &reference {
            Reference::None => None,
            Reference::Frozen(m) => Some(reference_logps(m, &batches, temperature, device)),
            Reference::AdaptersDisabled => Some(reference_logps(
                &lora::detach_all(model.valid()),
                &batches,
                temperature,
                device,
            )),
        };
        let (advantages, rloo_kl) = match setup.objective {
            Objective::Grpo { scale, .. } => {
                (grpo_advantages(&total_rewards, setup.group, scale), None)
            }
            Objective::Rloo { normalize } => {
                // k1 from the sampling log-probs, which are π_old's.
                let kl = match &ref_logps {
                    Some(r) => sequence_k1(&completions, &trained, &micro, &batches, r),
                    None => vec![0.0; completions.len()],
                };
                let penalised = kl_penalised(&total_rewards, &kl, setup.beta);
                let tokens: usize = batches.iter().map(ScoredTokens::len).sum();
                let kl_mean = kl.iter().sum::<f64>() / tokens.max(1) as f64;
                (
                    rloo_advantages(&penalised, setup.group, normalize),
                    ref_logps.is_some().then_some(kl_mean),
                )
            }
        };
        let scoring_time = scoring_started.elapsed().as_secs_f64();

        // 4. μ optimisation passes over the rollout, one optimizer update each.
        let optimization_started = Instant::now();
        let active: Vec<Vec<usize>> = micro
            .iter()
            .map(|r| {
                r.clone()
                    .map(|i| {
                        if trained[i] {
                            completions[i].tokens.len()
                        } else {
                            0
                        }
                    })
                    .collect()
            })
            .collect();
        let weights = match setup.objective {
            Objective::Grpo { loss_type, .. } => {
                token_weights(loss_type, &active, c.rollout.max_completion_length)
            }
            Objective::Rloo { .. } => {
                let w = 1.0 / completions.len().max(1) as f64;
                active.iter().map(|m| vec![w; m.len()]).collect()
            }
        };
        let lr = schedule.lr_at(state.step);
        // π_old's values from the first pass: per token (GRPO) or per sequence (RLOO).
        let mut old: Vec<Vec<f32>> = vec![Vec::new(); batches.len()];
        let mut sums = PassSums::default();
        let mut verdict: std::result::Result<Verdict, TrainError> = Ok(Verdict::Update);
        let mut skipped = None;
        for pass in 0..setup.passes {
            let mut grads = Gradients::<B::InnerBackend>::new();
            let mut pass_loss = 0.0;
            for (k, tokens) in batches.iter().enumerate() {
                let rows = micro[k].len();
                if tokens.is_empty() {
                    // Every completion masked: no gradient, nothing clipped.
                    sums.clip_items += match setup.objective {
                        Objective::Grpo { .. } => 0,
                        Objective::Rloo { .. } => rows,
                    };
                    continue;
                }
                seed_backend::<B>(device, seed, state.step, pass * batches.len() + k);
                let head = scaled_token_logprobs(&model, tokens, temperature, pass == 0, device);
                let logp = head.logp;
                let n = tokens.len();
                let old_values = (pass > 0).then(|| floats::<B>(&old[k], device));
                let out: PolicyLoss<B> = match setup.objective {
                    Objective::Grpo { .. } => {
                        let per_token = |f: &dyn Fn(usize) -> f64| -> Tensor<B, 1> {
                            let v: Vec<f32> = tokens.row.iter().map(|&r| f(r) as f32).collect();
                            floats::<B>(&v, device)
                        };
                        let advantage = per_token(&|r| advantages[micro[k].start + r]);
                        let weight = per_token(&|r| weights[k][r]);
                        let ref_logp = ref_logps.as_ref().map(|v| floats::<B>(&v[k], device));
                        grpo_loss(
                            GrpoInputs {
                                logp: logp.clone(),
                                old_logp: old_values,
                                ref_logp,
                                advantage,
                                weight,
                            },
                            setup.clip,
                            setup.beta,
                        )
                    }
                    Objective::Rloo { .. } => {
                        let row = Tensor::<B, 1, Int>::from_data(
                            TensorData::new(
                                tokens.row.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                                [n],
                            ),
                            device,
                        );
                        let logp_sum = Tensor::<B, 1>::zeros([rows], device).select_assign(
                            0,
                            row,
                            logp.clone(),
                            IndexingUpdateOp::Add,
                        );
                        let advantage = floats::<B>(
                            &advantages[micro[k].clone()]
                                .iter()
                                .map(|&a| a as f32)
                                .collect::<Vec<_>>(),
                            device,
                        );
                        if pass == 0 {
                            old[k] = host(logp_sum.clone().detach());
                        }
                        rloo_loss(logp_sum, old_values, advantage, weights[k][0], setup.clip)
                    }
                };
                pass_loss += host(out.loss.clone())[0] as f64;
                sums.clip_low += host(out.low_clipped.clone().sum())[0] as f64;
                sums.clip_high += host(out.high_clipped.clone().sum())[0] as f64;
                sums.clip_items += out.ratio.dims()[0];
                if pass == 0 {
                    let values = host(logp.clone().detach());
                    sums.first_pass(
                        &values,
                        &completions[micro[k].clone()],
                        &trained[micro[k].clone()],
                    );
                    if let Some(stats) = head.stats {
                        sums.entropy += host(stats.entropy.sum())[0] as f64;
                    }
                    if let Some(kl) = &out.kl {
                        sums.kl += host(kl.clone().sum())[0] as f64;
                    }
                    if matches!(setup.objective, Objective::Grpo { .. }) {
                        old[k] = values;
                    }
                }
                grads.accumulate(&model, out.loss.backward());
            }
            let grad_norm = grads.clip_global_norm(c.train.max_grad_norm);
            sums.loss += pass_loss;
            sums.grad_norm += grad_norm;
            verdict = guard.check(state.step + 1, pass_loss, grad_norm);
            if let Ok(Verdict::Update) = verdict {
                model = opt.step::<B, _>(model, grads, lr);
            }
            skipped = skipped.or(skip_reason(&verdict));
            if verdict.is_err() {
                break;
            }
        }
        state.step += 1;
        state.cursor = next_cursor;
        state.skipped_steps = guard.skipped();
        state.consecutive_bad_steps = guard.consecutive();
        let optimization_time = optimization_started.elapsed().as_secs_f64();

        // 5. Metrics, and a sample of completions when due.
        let prompt_tokens: usize = completions
            .iter()
            .map(|comp| setup.prompts[comp.prompt].ids.len())
            .sum();
        let lengths: Vec<f64> = completions
            .iter()
            .map(|comp| comp.tokens.len() as f64)
            .collect();
        state.num_tokens += (prompt_tokens + lengths.iter().sum::<f64>() as usize) as u64;
        let (reward, reward_std) = mean_std(&total_rewards);
        let mut per_func = std::collections::BTreeMap::new();
        for (name, s) in rewards.names().iter().zip(&scores.per_func) {
            let (m, sd) = mean_std(s);
            per_func.insert(format!("rewards/{name}/mean"), m);
            per_func.insert(format!("rewards/{name}/std"), sd);
        }
        let passes_run = setup.passes as f64;
        let trained_tokens = sums.tokens.max(1) as f64;
        let clip_items = sums.clip_items.max(1) as f64;
        let m = RlMetrics {
            step: state.step,
            epoch: state.cursor.epoch as f64
                + state.cursor.micro_batch as f64 / setup.batches_per_epoch as f64,
            loss: sums.loss / passes_run,
            learning_rate: lr,
            grad_norm: sums.grad_norm / passes_run,
            reward,
            reward_std,
            rewards: per_func,
            frac_reward_zero_std: frac_zero_std(&total_rewards, setup.group),
            mean_length: mean_std(&lengths).0,
            min_length: lengths.iter().copied().fold(f64::INFINITY, f64::min),
            max_length: lengths.iter().copied().fold(0.0, f64::max),
            clipped_ratio: completions.iter().filter(|x| !x.terminated()).count() as f64
                / completions.len().max(1) as f64,
            kl: match setup.objective {
                Objective::Grpo { .. } => (setup.beta > 0.0).then(|| sums.kl / trained_tokens),
                Objective::Rloo { .. } => rloo_kl,
            },
            entropy: sums.entropy / trained_tokens,
            clip_low: sums.clip_low / clip_items,
            clip_high: sums.clip_high / clip_items,
            clip_region: (sums.clip_low + sums.clip_high) / clip_items,
            logp_diff_mean: sums.logp_diff / trained_tokens,
            logp_diff_max: sums.logp_diff_max,
            num_tokens: state.num_tokens,
            step_time: started.elapsed().as_secs_f64(),
            generation_time,
            scoring_time,
            optimization_time,
            skipped,
        };
        metrics.append(&m)?;
        let every = c.rollout.log_completions_steps;
        if every > 0 && state.step.is_multiple_of(every) {
            let records: Vec<CompletionRecord> = completions
                .iter()
                .enumerate()
                .take(c.rollout.num_completions_to_log)
                .map(|(i, comp)| CompletionRecord {
                    step: state.step,
                    at: setup.prompts[comp.prompt].at.to_string(),
                    prompt: serde_json::to_value(&setup.prompts[comp.prompt].prompt)
                        .unwrap_or_default(),
                    completion: comp.text.clone(),
                    reward: total_rewards[i],
                    rewards: rewards
                        .names()
                        .iter()
                        .zip(&scores.per_func)
                        .map(|(n, s)| (n.clone(), s[i]))
                        .collect(),
                    advantage: advantages[i],
                    finish: match comp.finish {
                        FinishReason::Eos => "eos",
                        FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                    }
                    .into(),
                })
                .collect();
            completions_log.append(&records)?;
        }
        progress(Event::Step(&m));
        last_metrics = Some(m);
        verdict?;

        // 6. Checkpoint when due.
        if c.train.save_due(state.step) || state.step == setup.total_steps {
            let saved = save(&setup, &state, &model, &opt)?;
            progress(Event::Checkpoint {
                step: saved.step,
                path: &saved.path,
            });
            last_saved = Some((saved.step, saved.path));
        }
    }

    // Interrupted: checkpoint and return. Finished: write final/.
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
        let dir = setup.run.final_dir();
        let card = ModelCard {
            base_model: c.model.clone(),
            trainer: setup.trainer.into(),
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
    Ok(RlOutcome {
        run_dir: setup.run.root().to_path_buf(),
        stop,
        steps: state.step,
        last_checkpoint: last_saved.map(|(_, p)| p),
        final_dir,
        last_metrics,
        best: None,
        skipped_steps: state.skipped_steps,
    })
}

/// Sums over the optimisation passes of a step (and, for the diagnostics of
/// π_old, over its first pass).
#[derive(Debug, Default)]
struct PassSums {
    loss: f64,
    grad_norm: f64,
    clip_low: f64,
    clip_high: f64,
    /// Tokens (GRPO) or sequences (RLOO) the clip ratios are over.
    clip_items: usize,
    /// Trained tokens of the first pass.
    tokens: usize,
    entropy: f64,
    kl: f64,
    logp_diff: f64,
    logp_diff_max: f64,
}

impl PassSums {
    /// Compare the first pass's log-probs (`values`, the scored tokens of
    /// `completions` in order) with the sampler's.
    fn first_pass(&mut self, values: &[f32], completions: &[Completion], trained: &[bool]) {
        let sampled = completions
            .iter()
            .zip(trained)
            .filter(|(_, t)| **t)
            .flat_map(|(comp, _)| comp.logprobs.iter());
        for (&v, &s) in values.iter().zip(sampled) {
            let d = (v as f64 - s as f64).abs();
            self.logp_diff += d;
            self.logp_diff_max = self.logp_diff_max.max(d);
        }
        self.tokens += values.len();
    }
}

/// The reference policy's log-probs of the scored tokens of each micro-batch,
/// temperature-scaled like the policy's.
fn reference_logps<IB: Backend>(
    reference: &LlamaForCausalLM<IB>,
    batches: &[ScoredTokens],
    temperature: f32,
    device: &IB::Device,
) -> Vec<Vec<f32>> {
    batches
        .iter()
        .map(|b| {
            if b.is_empty() {
                Vec::new()
            } else {
                host(scaled_token_logprobs(reference, b, temperature, false, device).logp)
            }
        })
        .collect()
}

/// RLOO's sequence k1 KL, Σ_t (sampling logp − reference logp), per
/// completion (0 for a masked one).
fn sequence_k1(
    completions: &[Completion],
    trained: &[bool],
    micro: &[Range<usize>],
    batches: &[ScoredTokens],
    ref_logps: &[Vec<f32>],
) -> Vec<f64> {
    let mut out = vec![0.0; completions.len()];
    for ((range, tokens), reference) in micro.iter().zip(batches).zip(ref_logps) {
        let mut start = 0;
        for (r, i) in range.clone().enumerate() {
            if !trained[i] {
                continue;
            }
            let n = completions[i].tokens.len();
            debug_assert!(tokens.row[start..start + n].iter().all(|&x| x == r));
            out[i] = k1_sequence(&completions[i].logprobs, &reference[start..start + n]);
            start += n;
        }
    }
    out
}

fn floats<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above")
}

fn save<B: AutodiffBackend>(
    setup: &Setup,
    state: &TrainerState,
    model: &LlamaForCausalLM<B>,
    opt: &AdamW<B::InnerBackend>,
) -> Result<CheckpointRef> {
    if let Some(name) = first_non_finite::<B, _>(model) {
        return Err(RlError::Train(TrainError::checkpoint(
            setup.run.checkpoints_dir(),
            format!("refusing to save: parameter `{name}` is not finite"),
        )));
    }
    let c = &setup.config;
    Ok(save_checkpoint(
        &setup.run.checkpoints_dir(),
        state,
        c.train.keep_last,
        None,
        |dir| {
            save_trained(model, &setup.model_config, c.lora.as_ref(), &c.model, dir)?;
            opt.save(&dir.join(OPTIMIZER_FILE))
        },
    )?)
}
