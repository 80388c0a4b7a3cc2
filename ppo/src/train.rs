//! The online-RL loop (GRPO and RLOO), written out in the numbered steps of
//! every trainer: 1. the rollout (sample, score, advantages) 2-3. μ passes of
//! forward, loss, backward and update 4. metrics 5. checkpoint 6. final/.
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

use alignkit_model::LlamaForCausalLM;
use alignkit_train::seed::seed_backend;
use alignkit_train::skeleton::Run;
use alignkit_train::{Gradients, TrainError};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::collect::{
    EpochOrder, Rollout, StepWide, collect, pooled_at, rollout_tokens, token_spans,
};
use crate::config::{Algorithm, RlConfig};
use crate::error::{Result, RlError};
use crate::loss::{
    Clip, GrpoInputs, LossType, PolicyLoss, ScaleRewards, StepCounts, frac_zero_std,
    grpo_advantages, grpo_loss, k1_sequence, kl_penalised, rloo_advantages, rloo_loss,
    token_weights_over,
};
use crate::metrics::{RlMetrics, RolloutStats, StepTimes, completion_records};
use crate::rollout::{Completion, ScoredTokens, scaled_token_logprobs};
use crate::run::{Opened, Setup, finish, floats, host, open};

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
    let pass_settings = Passes {
        objective,
        passes,
        clip,
        beta,
        temperature: setup.settings.temperature,
        seed: run.state.seed,
    };

    let mut order = EpochOrder::default();
    let mut last_metrics = None;
    let mut stop = StopReason::Completed;
    while run.running() {
        if options.stop_requested() {
            stop = StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1. The rollout of this update: G completions for each of its prompts
        //    from the current policy (π_old), scored, and their advantages (with
        //    the reference's log-probs where β > 0). The micro-batches are fixed
        //    here for all passes; a masked (truncated) completion is a row
        //    without scored tokens.
        let (rollout, next_cursor) = collect(
            &setup, &run.world, &run.state, &mut order, &model, &rewards, device,
        )?;
        let scoring_started = Instant::now();
        let temperature = pass_settings.temperature;
        let ref_logps = reference.logps(&model.valid(), &rollout.batches, temperature, device);
        let (advantages, rloo_kl) = advantages(
            &run,
            objective,
            &rollout,
            ref_logps.as_deref(),
            setup.group,
            beta,
        )?;
        let scoring_time = scoring_started.elapsed().as_secs_f64();

        // 2-3. μ passes over the rollout: forward, loss, backward; then clip,
        //    guard and update after each pass.
        let optimization_started = Instant::now();
        let lr = run.learning_rate();
        let input = PassInput {
            rollout: &rollout,
            advantages: &advantages,
            ref_logps: ref_logps.as_deref(),
            weights: loss_weights(&run, objective, &rollout, c.rollout.max_completion_length)?,
        };
        let (sums, skipped, verdict);
        (model, sums, skipped, verdict) = optimise(&mut run, model, &pass_settings, &input, device);
        run.end_step();
        run.state.cursor = next_cursor;
        let optimization_time = optimization_started.elapsed().as_secs_f64();

        // 4. Metrics, a sample of completions, and the held-out evaluation when due.
        let tokens = rollout_tokens(&setup.prompts, &rollout.completions) as f64;
        run.state.num_tokens += run.sum(&[tokens], "counting the step's tokens")?[0] as u64;
        let times = StepTimes {
            started,
            generation: rollout.generation_time,
            scoring: scoring_time,
            optimization: optimization_time,
        };
        let step = StepRecord {
            rollout: &rollout,
            sums: &sums,
            rloo_kl,
            lr,
            times,
            skipped,
        };
        let m = metrics(&run, &setup, &pass_settings, rewards.names(), step)?;
        run.log(&m)?;
        let every = c.rollout.log_completions_steps;
        if every > 0 && run.state.step.is_multiple_of(every) {
            let records = completion_records(
                run.state.step,
                &setup.prompts,
                &rollout.completions,
                &rollout.total_rewards,
                rewards.names(),
                &rollout.scores.per_func,
                &advantages,
                c.rollout.num_completions_to_log,
            );
            completions_log.append(&records)?;
        }
        progress(Event::Step(&m));
        last_metrics = Some(m);
        verdict?;
        if let Some(ev) = evaluator.as_mut() {
            let step = run.state.step;
            ev.after_step(&setup, step, &model, &reference, &rewards, device, progress)?;
        }

        // 5. Checkpoint when due.
        if let Some(saved) = run.save_when_due(&model, &setup.weights(), false)?.saved {
            progress(Event::Checkpoint(&saved));
        }
    }

    // 6. The last checkpoint; unless interrupted, final/.
    finish(&setup, run, stop, last_metrics, model, |_| Ok(()), progress)
}

/// The settings of a step's optimisation passes.
struct Passes {
    objective: Objective,
    /// μ.
    passes: usize,
    clip: Clip,
    beta: f64,
    temperature: f32,
    seed: u64,
}

/// What the passes over one rollout train on.
struct PassInput<'a> {
    rollout: &'a Rollout,
    advantages: &'a [f64],
    ref_logps: Option<&'a [Vec<f32>]>,
    /// Each micro-batch's per-row loss weights.
    weights: Vec<Vec<f64>>,
}

/// Step 1's advantages: GRPO's group-normalised rewards, or RLOO's
/// leave-one-out baselines on KL-penalised rewards (k1 from the sampling
/// log-probs, which are π_old's), with RLOO's mean KL per token. In a
/// distributed run they are computed on every rank's rewards (batch
/// statistics over the whole step), and each rank keeps its own.
fn advantages<B: AutodiffBackend>(
    run: &Run<B>,
    objective: Objective,
    rollout: &Rollout,
    ref_logps: Option<&[Vec<f32>]>,
    group: usize,
    beta: f64,
) -> Result<(Vec<f64>, Option<f64>)> {
    let rewards = &rollout.total_rewards;
    // The step's values over all ranks, and where this rank's start.
    let global = |local: &[f64]| pooled_at(run, local, "gathering the step's rewards");
    let n = rewards.len();
    Ok(match objective {
        Objective::Grpo { scale, .. } => {
            let (all, start) = global(rewards)?;
            (
                grpo_advantages(&all, group, scale)[start..start + n].to_vec(),
                None,
            )
        }
        Objective::Rloo { normalize } => {
            let r = rollout;
            let kl = match ref_logps {
                Some(logps) => sequence_k1(&r.completions, &r.trained, &r.micro, &r.batches, logps),
                None => vec![0.0; r.completions.len()],
            };
            let penalised = kl_penalised(rewards, &kl, beta);
            let tokens: usize = r.batches.iter().map(ScoredTokens::len).sum();
            let [kl_sum, tokens] = run
                .sum(
                    &[kl.iter().sum::<f64>(), tokens as f64],
                    "summing the step's KL",
                )?
                .try_into()
                .expect("two sums");
            let kl_mean = kl_sum / tokens.max(1.0);
            let (all, start) = global(&penalised)?;
            (
                rloo_advantages(&all, group, normalize)[start..start + n].to_vec(),
                ref_logps.is_some().then_some(kl_mean),
            )
        }
    })
}

/// Each micro-batch's per-row loss weights: GRPO's loss normaliser over the
/// rows' trained tokens, or RLOO's mean over the rollout's completions (the
/// whole step's, over all ranks).
fn loss_weights<B: AutodiffBackend>(
    run: &Run<B>,
    objective: Objective,
    rollout: &Rollout,
    max_len: usize,
) -> Result<Vec<Vec<f64>>> {
    let active: Vec<Vec<usize>> = rollout
        .micro
        .iter()
        .map(|rows| {
            rows.clone()
                .map(|i| match rollout.trained[i] {
                    true => rollout.completions[i].tokens.len(),
                    false => 0,
                })
                .collect()
        })
        .collect();
    let counts = StepCounts::of(&active);
    let local = [counts.sequences, counts.tokens, counts.micro_batches];
    let [sequences, tokens, micro_batches] = run
        .sum(&local, "counting the step's completions")?
        .try_into()
        .expect("three sums");
    let step = StepCounts {
        sequences,
        tokens,
        micro_batches,
    };
    Ok(match objective {
        Objective::Grpo { loss_type, .. } => token_weights_over(loss_type, &active, max_len, step),
        Objective::Rloo { .. } => {
            let w = 1.0 / step.sequences.max(1.0);
            active.iter().map(|m| vec![w; m.len()]).collect()
        }
    })
}

/// Steps 2-3: the μ passes over a rollout, one optimizer update each (they
/// stop at the NaN guard's error): the model, the passes' sums, why an update
/// was skipped, and the guard's verdict.
fn optimise<B: AutodiffBackend>(
    run: &mut Run<B>,
    mut model: LlamaForCausalLM<B>,
    p: &Passes,
    input: &PassInput<'_>,
    device: &B::Device,
) -> (
    LlamaForCausalLM<B>,
    PassSums,
    Option<String>,
    std::result::Result<(), TrainError>,
) {
    let batches = &input.rollout.batches;
    // π_old's values from the first pass: per token (GRPO) or per sequence (RLOO).
    let mut old: Vec<Vec<f32>> = vec![Vec::new(); batches.len()];
    let mut sums = PassSums::default();
    let mut verdict = Ok(());
    let mut skipped = None;
    for pass in 0..p.passes {
        let mut grads = Gradients::<B::InnerBackend>::new();
        let mut pass_loss = 0.0;
        for k in 0..batches.len() {
            seed_backend::<B>(device, p.seed, run.state.step, pass * batches.len() + k);
            let Some(loss) =
                micro_batch_loss(&model, p, input, (pass, k), &mut old, &mut sums, device)
            else {
                continue;
            };
            pass_loss += host(loss.clone())[0] as f64;
            grads.backward(&model, loss);
        }
        let update;
        let shared_loss = match run.share_gradients(&model, &mut grads, pass_loss) {
            Ok(loss) => loss,
            Err(e) => return (model, sums, skipped, Err(e)),
        };
        (model, update) = run.apply_shared(model, grads, shared_loss);
        sums.loss += pass_loss;
        sums.grad_norm += update.grad_norm;
        skipped = skipped.or(update.skipped.clone());
        verdict = update.verdict();
        if verdict.is_err() {
            break;
        }
    }
    (model, sums, skipped, verdict)
}

/// The loss of micro-batch `k` in pass `pass` (`None` when every completion
/// in it is masked: no gradient, nothing clipped), its clip counts added to
/// `sums`; the first pass records π_old's values in `old` and the
/// diagnostics of π_old.
fn micro_batch_loss<B: AutodiffBackend>(
    model: &LlamaForCausalLM<B>,
    p: &Passes,
    input: &PassInput<'_>,
    (pass, k): (usize, usize),
    old: &mut [Vec<f32>],
    sums: &mut PassSums,
    device: &B::Device,
) -> Option<Tensor<B, 1>> {
    let rollout = input.rollout;
    let (tokens, rows) = (&rollout.batches[k], rollout.micro[k].clone());
    if tokens.is_empty() {
        sums.clip_items += match p.objective {
            Objective::Grpo { .. } => 0,
            Objective::Rloo { .. } => rows.len(),
        };
        return None;
    }
    let head = scaled_token_logprobs(model, tokens, p.temperature, pass == 0, device);
    let logp = head.logp;
    let old_values = (pass > 0).then(|| floats::<B>(&old[k], device));
    let advantages = &input.advantages[rows.clone()];
    let out: PolicyLoss<B> = match p.objective {
        Objective::Grpo { .. } => grpo_pass(
            tokens,
            logp.clone(),
            old_values,
            advantages,
            &input.weights[k],
            input.ref_logps.map(|v| v[k].as_slice()),
            (p.clip, p.beta),
            device,
        ),
        Objective::Rloo { .. } => {
            let weight = input.weights[k][0];
            let (out, logp_sum) = rloo_pass(
                tokens,
                rows.len(),
                logp.clone(),
                old_values,
                advantages,
                weight,
                p.clip,
                device,
            );
            if pass == 0 {
                old[k] = logp_sum;
            }
            out
        }
    };
    sums.clip_low += host(out.low_clipped.clone().sum())[0] as f64;
    sums.clip_high += host(out.high_clipped.clone().sum())[0] as f64;
    sums.clip_items += out.ratio.dims()[0];
    if pass == 0 {
        let values = host(logp.detach());
        sums.first_pass(
            &values,
            &rollout.completions[rows.clone()],
            &rollout.trained[rows],
        );
        if let Some(stats) = head.stats {
            sums.entropy += host(stats.entropy.sum())[0] as f64;
        }
        if let Some(kl) = &out.kl {
            sums.kl += host(kl.clone().sum())[0] as f64;
        }
        if matches!(p.objective, Objective::Grpo { .. }) {
            old[k] = values;
        }
    }
    Some(out.loss)
}

/// What step 4 reports of a step besides the run's state.
struct StepRecord<'a> {
    rollout: &'a Rollout,
    sums: &'a PassSums,
    rloo_kl: Option<f64>,
    lr: f64,
    times: StepTimes,
    skipped: Option<String>,
}

/// Step 4's record: the passes' means, the rollout's statistics and TRL's
/// diagnostics.
fn metrics<B: AutodiffBackend>(
    run: &Run<B>,
    setup: &Setup,
    p: &Passes,
    reward_names: &[String],
    step: StepRecord<'_>,
) -> Result<RlMetrics> {
    let (rollout, sums) = (step.rollout, &step.sums.summed(run)?);
    let StepWide {
        lengths,
        total_rewards,
        per_func,
    } = rollout.over_ranks(run)?;
    let passes_run = p.passes as f64;
    let trained_tokens = sums.tokens.max(1) as f64;
    let clip_items = sums.clip_items.max(1) as f64;
    Ok(RlMetrics {
        step: run.state.step,
        epoch: run.epoch(setup.batches_per_epoch),
        loss: sums.loss / passes_run,
        learning_rate: step.lr,
        grad_norm: sums.grad_norm / passes_run,
        rollout: RolloutStats::of(
            &lengths,
            &total_rewards,
            (reward_names, &per_func),
            run.state.num_tokens,
            step.times,
            step.skipped,
        ),
        frac_reward_zero_std: frac_zero_std(&total_rewards, setup.group),
        kl: match p.objective {
            Objective::Grpo { .. } => (p.beta > 0.0).then(|| sums.kl / trained_tokens),
            Objective::Rloo { .. } => step.rloo_kl,
        },
        entropy: sums.entropy / trained_tokens,
        clip_low: sums.clip_low / clip_items,
        clip_high: sums.clip_high / clip_items,
        clip_region: (sums.clip_low + sums.clip_high) / clip_items,
        logp_diff_mean: sums.logp_diff / trained_tokens,
        logp_diff_max: sums.logp_diff_max,
    })
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
    /// These sums over all ranks (the gradient norm is the same on every
    /// rank, the largest log-prob difference their maximum).
    fn summed<B: AutodiffBackend>(&self, run: &Run<B>) -> Result<Self> {
        let local = [
            self.loss,
            self.clip_low,
            self.clip_high,
            self.clip_items as f64,
            self.tokens as f64,
            self.entropy,
            self.kl,
            self.logp_diff,
        ];
        let s = run.sum(&local, "summing the step's metrics")?;
        let max = run.gather(
            &[self.logp_diff_max],
            "the step's largest log-prob difference",
        )?;
        Ok(Self {
            loss: s[0],
            grad_norm: self.grad_norm,
            clip_low: s[1],
            clip_high: s[2],
            clip_items: s[3] as usize,
            tokens: s[4] as usize,
            entropy: s[5],
            kl: s[6],
            logp_diff: s[7],
            logp_diff_max: max.iter().map(|v| v[0]).fold(self.logp_diff_max, f64::max),
        })
    }

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
