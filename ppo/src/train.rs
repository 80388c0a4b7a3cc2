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
use std::time::Instant;

use alignkit_train::seed::seed_backend;
use alignkit_train::{Gradients, TrainError};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::collect::{EpochOrder, Rollout, collect, rollout_tokens, token_spans};
use crate::config::{Algorithm, RlConfig};
use crate::error::{Result, RlError};
use crate::loss::{
    Clip, GrpoInputs, LossType, PolicyLoss, ScaleRewards, frac_zero_std, grpo_advantages,
    grpo_loss, k1_sequence, kl_penalised, rloo_advantages, rloo_loss, token_weights,
};
use crate::metrics::{RlMetrics, RolloutStats, StepTimes, completion_records};
use crate::rollout::{Completion, ScoredTokens, scaled_token_logprobs};
use crate::run::{Opened, finish, floats, host, open};

pub use crate::evaluator::EvalRecord;
pub use crate::run::{Event, ReferenceKind, RlOutcome, RunInfo, RunOptions, StopReason};

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

/// Train a policy with GRPO or RLOO (the config's `[grpo]` or `[rloo]`
/// table; `[ppo]` trains with [`crate::ppo_train::train_ppo`]). Every
/// configuration, prompt and reward-model problem is reported before any
/// rollout.
pub fn train<B: AutodiffBackend>(
    config: &RlConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<RlOutcome> {
    // 0. Setup: config, prompts, checkpoint, policy, reference, rewards, optimizer.
    config.validate()?;
    let Opened {
        setup,
        mut model,
        reference,
        rewards,
        mut run,
        mut completions_log,
        mut evaluator,
        checkpoint: _,
        info,
    } = open::<B>(config, device, &options)?;
    progress(Event::Started(&info));
    if let Some(ev) = evaluator.as_mut()
        && run.state.step == 0
    {
        ev.after_step(&setup, 0, &model, &reference, &rewards, device, progress)?;
    }
    let c = &setup.config;
    let algorithm = c.algorithm()?;
    let (beta, passes, clip) = (
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
        Algorithm::Ppo(_) => {
            return Err(RlError::Config {
                field: "ppo".into(),
                message: "a [ppo] config trains with alignkit_ppo::train_ppo".into(),
            });
        }
    };
    let seed = run.state.seed;
    let temperature = setup.settings.temperature;

    let mut order = EpochOrder::default();
    let mut last_metrics = None;
    let mut stop = StopReason::Completed;
    while run.running() {
        if options.stop_requested() {
            stop = StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1-2. Roll out G completions for each prompt of this step with the
        //    current policy (π_old), and score them.
        let (rollout, next_cursor) =
            collect(&setup, &run.state, &mut order, &model, &rewards, device)?;
        let Rollout {
            completions,
            scores,
            total_rewards,
            trained,
            micro,
            batches,
            generation_time,
        } = rollout;
        let scoring_started = Instant::now();

        // 3. Advantages, with the reference's log-probs where β > 0. The
        //    micro-batches are fixed here for all passes; a masked (truncated)
        //    completion is a row without scored tokens.
        let ref_logps = reference.logps(&model.valid(), &batches, temperature, device);
        let (advantages, rloo_kl) = match objective {
            Objective::Grpo { scale, .. } => {
                (grpo_advantages(&total_rewards, setup.group, scale), None)
            }
            Objective::Rloo { normalize } => {
                // k1 from the sampling log-probs, which are π_old's.
                let kl = match &ref_logps {
                    Some(r) => sequence_k1(&completions, &trained, &micro, &batches, r),
                    None => vec![0.0; completions.len()],
                };
                let penalised = kl_penalised(&total_rewards, &kl, beta);
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
        let weights = match objective {
            Objective::Grpo { loss_type, .. } => {
                token_weights(loss_type, &active, c.rollout.max_completion_length)
            }
            Objective::Rloo { .. } => {
                let w = 1.0 / completions.len().max(1) as f64;
                active.iter().map(|m| vec![w; m.len()]).collect()
            }
        };
        let lr = run.learning_rate();
        // π_old's values from the first pass: per token (GRPO) or per sequence (RLOO).
        let mut old: Vec<Vec<f32>> = vec![Vec::new(); batches.len()];
        let mut sums = PassSums::default();
        let mut verdict: std::result::Result<(), TrainError> = Ok(());
        let mut skipped = None;
        for pass in 0..passes {
            let mut grads = Gradients::<B::InnerBackend>::new();
            let mut pass_loss = 0.0;
            for (k, tokens) in batches.iter().enumerate() {
                let rows = micro[k].len();
                if tokens.is_empty() {
                    // Every completion masked: no gradient, nothing clipped.
                    sums.clip_items += match objective {
                        Objective::Grpo { .. } => 0,
                        Objective::Rloo { .. } => rows,
                    };
                    continue;
                }
                seed_backend::<B>(device, seed, run.state.step, pass * batches.len() + k);
                let head = scaled_token_logprobs(&model, tokens, temperature, pass == 0, device);
                let logp = head.logp;
                let old_values = (pass > 0).then(|| floats::<B>(&old[k], device));
                let out: PolicyLoss<B> = match objective {
                    Objective::Grpo { .. } => grpo_pass(
                        tokens,
                        logp.clone(),
                        old_values,
                        &advantages[micro[k].clone()],
                        &weights[k],
                        ref_logps.as_ref().map(|v| v[k].as_slice()),
                        (clip, beta),
                        device,
                    ),
                    Objective::Rloo { .. } => {
                        let (out, logp_sum) = rloo_pass(
                            tokens,
                            rows,
                            logp.clone(),
                            old_values,
                            &advantages[micro[k].clone()],
                            weights[k][0],
                            clip,
                            device,
                        );
                        if pass == 0 {
                            old[k] = logp_sum;
                        }
                        out
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
                    if matches!(objective, Objective::Grpo { .. }) {
                        old[k] = values;
                    }
                }
                grads.backward(&model, out.loss);
            }
            let update;
            (model, update) = run.apply(model, grads, pass_loss);
            sums.loss += pass_loss;
            sums.grad_norm += update.grad_norm;
            skipped = skipped.or(update.skipped.clone());
            verdict = update.verdict();
            if verdict.is_err() {
                break;
            }
        }
        run.end_step();
        run.state.cursor = next_cursor;
        let optimization_time = optimization_started.elapsed().as_secs_f64();

        // 5. Metrics, and a sample of completions when due.
        run.state.num_tokens += rollout_tokens(&setup.prompts, &completions);
        let state = &run.state;
        let passes_run = passes as f64;
        let trained_tokens = sums.tokens.max(1) as f64;
        let clip_items = sums.clip_items.max(1) as f64;
        let m = RlMetrics {
            step: state.step,
            epoch: state.cursor.epoch as f64
                + state.cursor.micro_batch as f64 / setup.batches_per_epoch as f64,
            loss: sums.loss / passes_run,
            learning_rate: lr,
            grad_norm: sums.grad_norm / passes_run,
            rollout: RolloutStats::new(
                &completions,
                &total_rewards,
                (rewards.names(), &scores.per_func),
                state.num_tokens,
                StepTimes {
                    started,
                    generation: generation_time,
                    scoring: scoring_time,
                    optimization: optimization_time,
                },
                skipped,
            ),
            frac_reward_zero_std: frac_zero_std(&total_rewards, setup.group),
            kl: match objective {
                Objective::Grpo { .. } => (beta > 0.0).then(|| sums.kl / trained_tokens),
                Objective::Rloo { .. } => rloo_kl,
            },
            entropy: sums.entropy / trained_tokens,
            clip_low: sums.clip_low / clip_items,
            clip_high: sums.clip_high / clip_items,
            clip_region: (sums.clip_low + sums.clip_high) / clip_items,
            logp_diff_mean: sums.logp_diff / trained_tokens,
            logp_diff_max: sums.logp_diff_max,
        };
        run.log(&m)?;
        let every = c.rollout.log_completions_steps;
        if every > 0 && run.state.step.is_multiple_of(every) {
            let records = completion_records(
                run.state.step,
                &setup.prompts,
                &completions,
                &total_rewards,
                rewards.names(),
                &scores.per_func,
                &advantages,
                c.rollout.num_completions_to_log,
            );
            completions_log.append(&records)?;
        }
        progress(Event::Step(&m));
        last_metrics = Some(m);
        verdict?;
        if let Some(ev) = evaluator.as_mut() {
            ev.after_step(
                &setup,
                run.state.step,
                &model,
                &reference,
                &rewards,
                device,
                progress,
            )?;
        }

        // 6. Checkpoint when due.
        if run.checkpoint_due(false, false) {
            let saved = run.save(&model, &setup.weights())?;
            progress(Event::Checkpoint {
                step: saved.step,
                path: &saved.path,
            });
        }
    }
    finish(&setup, run, stop, last_metrics, model, |_| Ok(()), progress)
}

/// GRPO's loss on one micro-batch of a pass: per-token advantages (each
/// token takes its completion's, `advantages` indexed by row) and loss
/// weights, the reference's log-probs where β > 0.
#[allow(clippy::too_many_arguments)]
fn grpo_pass<B: AutodiffBackend>(
    tokens: &ScoredTokens,
    logp: Tensor<B, 1>,
    old_logp: Option<Tensor<B, 1>>,
    advantages: &[f64],
    weights: &[f64],
    ref_logp: Option<&[f32]>,
    (clip, beta): (Clip, f64),
    device: &B::Device,
) -> PolicyLoss<B> {
    let per_token = |f: &dyn Fn(usize) -> f64| -> Tensor<B, 1> {
        let v: Vec<f32> = tokens.row.iter().map(|&r| f(r) as f32).collect();
        floats::<B>(&v, device)
    };
    grpo_loss(
        GrpoInputs {
            logp,
            old_logp,
            ref_logp: ref_logp.map(|v| floats::<B>(v, device)),
            advantage: per_token(&|r| advantages[r]),
            weight: per_token(&|r| weights[r]),
        },
        clip,
        beta,
    )
}

/// RLOO's loss on one micro-batch of a pass (`rows` completions): the
/// sequence log-prob of each row, its sequence advantage. Also returns the
/// sequence log-probs (π_old's on the first pass).
#[allow(clippy::too_many_arguments)]
fn rloo_pass<B: AutodiffBackend>(
    tokens: &ScoredTokens,
    rows: usize,
    logp: Tensor<B, 1>,
    old_logp_sum: Option<Tensor<B, 1>>,
    advantages: &[f64],
    weight: f64,
    clip: Clip,
    device: &B::Device,
) -> (PolicyLoss<B>, Vec<f32>) {
    let row = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            tokens.row.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [tokens.len()],
        ),
        device,
    );
    let logp_sum =
        Tensor::<B, 1>::zeros([rows], device).select_assign(0, row, logp, IndexingUpdateOp::Add);
    let advantage = floats::<B>(
        &advantages.iter().map(|&a| a as f32).collect::<Vec<_>>(),
        device,
    );
    let sums = host(logp_sum.clone().detach());
    (
        rloo_loss(logp_sum, old_logp_sum, advantage, weight, clip),
        sums,
    )
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
        for (i, span) in token_spans(range.clone(), trained, completions) {
            debug_assert!(
                tokens.row[span.clone()]
                    .iter()
                    .all(|&x| x == i - range.start)
            );
            out[i] = k1_sequence(&completions[i].logprobs, &reference[span]);
        }
    }
    out
}
