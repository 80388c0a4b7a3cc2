//! PPO with a learned critic, written out in the numbered steps of every
//! trainer: 1. the rollout (sample, score, no-grad passes of policy,
//! reference and critic, token rewards, GAE, whitening) 2-3. `num_ppo_epochs`
//! × `num_mini_batches` updates of policy and critic 4. KL controller and
//! metrics 5. checkpoint 6. final/.
//!
//! Per completion of T tokens (see [`crate::gae`]): r_t = −β·kl_t, plus the
//! score at the last token; δ_t = r_t + γ·V_{t+1} − V_t; A_t = δ_t + γλ·A_{t+1};
//! returns R_t = A_t + V_t; advantages whitened over the batch's tokens. The
//! policy loss is PPO's clipped surrogate per token on exp(logp − old), the
//! value loss ½·max((V − R)², (clip(V, V_old ± c) − R)²), both token means over
//! a mini-batch; the critic's loss is weighted by `vf_coef`.
//!
//! The critic is a separate model (a reward-model backbone and score head read
//! at every position), initialised from a reward or value model, as Huang et
//! al. 2024 ("The N+ Implementation Details of RLHF with PPO", details 5–6)
//! and OpenRLHF do, or from the policy's weights with a fresh head. It trains
//! fully or with LoRA (the policy's `[lora]`, its head fully), with its own
//! AdamW. With `ppo.shared_backbone` the critic is instead a value head on the
//! policy's own final hidden states: one forward pass gives log-probs and
//! values, one backward pass of policy loss + `vf_coef` × value loss trains
//! the backbone (or its adapters) with the policy's AdamW and the head with
//! its own; a checkpoint's `critic/` then holds the head alone. Dropout is off in the rollout and every no-grad pass (burn's inner
//! backend), on in the updates.
//!
//! Exact resume: policy, critic, both optimizers and the KL coefficient are in
//! each checkpoint; the rollout cursor is the data cursor, the mini-batch order
//! and dropout are seeded by (seed, step, epoch), so seed + step is the whole
//! RNG state.

use std::path::Path;
use std::time::Instant;

use alignkit_model::LlamaForCausalLM;
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::skeleton::Run;
use alignkit_train::{AdamW, Gradients, TrainError, Verdict, skip_reason};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::collect::{
    EpochOrder, Rollout, StepWide, collect, pooled, pooled_at, rollout_tokens, token_spans,
};
use crate::config::{PpoParams, RlConfig};
use crate::critic::{Critic, CriticInit, CriticNow, token_values};
use crate::error::{Result, RlError};
use crate::gae::{AdaptiveKl, Whitening, gae, token_rewards};
use crate::loss::{Clip, GrpoInputs, grpo_loss, value_loss};
use crate::metrics::{PpoMetrics, RolloutStats, StepTimes, completion_records, mean_std};
use crate::rollout::{ScoredTokens, logprobs_and_values, scaled_token_logprobs};
use crate::run::{Event, Opened, Reference, Setup, finish, floats, host, open};

pub use alignkit_train::RunOptions;

/// How a PPO run ended.
pub type PpoOutcome = alignkit_train::Outcome<PpoMetrics>;

/// The critic's checkpoint folder inside a step's checkpoint.
pub const CRITIC_DIR: &str = "critic";
/// The KL controller's state inside a step's checkpoint.
pub const PPO_STATE_FILE: &str = "ppo_state.json";

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PpoState {
    kl_coef: f64,
}

/// One completion's per-token numbers from the no-grad passes and GAE.
#[derive(Debug, Clone, Default)]
struct TokenData {
    old_logp: Vec<f32>,
    values: Vec<f32>,
    advantages: Vec<f32>,
    returns: Vec<f32>,
}

/// Sums over every update of a step (token-weighted), for the averages.
#[derive(Debug, Default)]
struct UpdateSums {
    tokens: f64,
    approxkl: f64,
    clipped: f64,
    entropy: f64,
    policy_loss: f64,
    value_loss: f64,
    value_clipped: f64,
    ratio: f64,
    ratio_sq: f64,
    updates: usize,
    grad_norm: f64,
    critic_grad_norm: f64,
}

impl UpdateSums {
    /// These sums over all ranks (the update count and gradient norms are
    /// the same on every rank).
    fn summed<B: AutodiffBackend>(&self, run: &Run<B>) -> Result<Self> {
        let local = [
            self.tokens,
            self.approxkl,
            self.clipped,
            self.entropy,
            self.policy_loss,
            self.value_loss,
            self.value_clipped,
            self.ratio,
            self.ratio_sq,
        ];
        let s = run.sum(&local, "summing the step's metrics")?;
        Ok(Self {
            tokens: s[0],
            approxkl: s[1],
            clipped: s[2],
            entropy: s[3],
            policy_loss: s[4],
            value_loss: s[5],
            value_clipped: s[6],
            ratio: s[7],
            ratio_sq: s[8],
            ..*self
        })
    }
}

/// Train a policy with PPO and a critic (the config's `[ppo]` table). Every
/// configuration, prompt, reward-model and critic problem is reported before
/// any rollout.
pub fn train_ppo<B: AutodiffBackend>(
    config: &RlConfig,
    device: &B::Device,
    options: RunOptions<'_>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<PpoOutcome> {
    // 0. Setup: what GRPO/RLOO open, then the critic, its optimizer and the
    //    KL coefficient.
    let Some(params) = config.ppo.clone() else {
        return Err(RlError::Config {
            field: "ppo".into(),
            message: "no [ppo] table".into(),
        });
    };
    config.validate()?;
    let critic_init = CriticInit::resolve(&config.with_absolute_paths()?, &params)?;
    let Opened {
        setup,
        mut model,
        reference,
        rewards,
        mut run,
        mut completions_log,
        mut evaluator,
        checkpoint,
        mut info,
    } = open::<B>(config, device, &options)?;
    let c = &setup.config;
    let seed = run.state.seed;
    let (mut critic, mut critic_opt, mut kl_coef) = open_critic(
        &critic_init,
        &setup,
        &model,
        checkpoint.as_deref(),
        &params,
        seed,
        device,
    )?;
    info.critic = Some(critic_init.describe());
    progress(Event::Started(&info));
    if let Some(ev) = evaluator.as_mut()
        && run.state.step == 0
    {
        ev.after_step(&setup, 0, &model, &reference, &rewards, device, progress)?;
    }
    let step_settings = StepSettings {
        params: &params,
        clip: Clip {
            low: params.cliprange,
            high: params.cliprange,
        },
        temperature: setup.settings.temperature,
        seed,
        per_mini: options.global_batch(c.completions_per_step()) / params.num_mini_batches,
        critic_lr_scale: params.critic_learning_rate.unwrap_or(c.learning_rate) / c.learning_rate,
    };

    let mut order = EpochOrder::default();
    let mut last_metrics = None;
    let mut stop = alignkit_train::StopReason::Completed;
    while run.running() {
        if options.stop_requested() {
            stop = alignkit_train::StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1. The rollout of this update: completions from π_old, scored; the
        //    no-grad passes (π_old's log-probs, the reference's, the critic's
        //    values); token rewards (−β·kl + score at the end), optional
        //    reward whitening, GAE, advantage whitening over trained tokens.
        let (rollout, next_cursor) = collect(
            &setup, &run.world, &run.state, &mut order, &model, &rewards, device,
        )?;
        let scoring_started = Instant::now();
        let temperature = step_settings.temperature;
        let (mut data, ref_logps) =
            no_grad_passes(&model, &critic, &reference, &rollout, temperature, device);
        let scored = advantages(&run, &mut data, &ref_logps, &rollout, &params, kl_coef)?;
        let scoring_time = scoring_started.elapsed().as_secs_f64();

        // 2-3. num_ppo_epochs × num_mini_batches updates of policy and critic:
        //    forward, losses, backward; clip, guard, update.
        let optimization_started = Instant::now();
        let lr = run.learning_rate();
        let lrs = (lr, lr * step_settings.critic_lr_scale);
        let updates = Updates {
            setup: &setup,
            s: &step_settings,
            rollout: &rollout,
            data: &data,
            layout: Layout::of(&run, &rollout)?,
        };
        let (sums, skipped, verdict);
        (model, critic, sums, skipped, verdict) =
            updates.run(&mut run, model, critic, &mut critic_opt, lrs, device);
        run.end_step();
        run.state.cursor = next_cursor;
        let optimization_time = optimization_started.elapsed().as_secs_f64();

        // 4. The KL controller, metrics, a sample of completions, and the
        //    held-out evaluation when due.
        let step_kl_coef = kl_coef;
        let wide = rollout.over_ranks(&run)?;
        let mean_kl = mean_std(&scored.seq_kl).0;
        if let Some(a) = &params.adaptive_kl {
            let mut ctl = AdaptiveKl {
                value: kl_coef,
                target: a.target,
                horizon: a.horizon,
            };
            ctl.update(mean_kl, wide.total_rewards.len());
            kl_coef = ctl.value;
        }
        let tokens = rollout_tokens(&setup.prompts, &rollout.completions) as f64;
        run.state.num_tokens += run.sum(&[tokens], "counting the step's tokens")?[0] as u64;
        let times = StepTimes {
            started,
            generation: rollout.generation_time,
            scoring: scoring_time,
            optimization: optimization_time,
        };
        let stats = RolloutStats::of(
            &wide.lengths,
            &wide.total_rewards,
            (rewards.names(), &wide.per_func),
            run.state.num_tokens,
            times,
            skipped,
        );
        let m = metrics(
            &run,
            &setup,
            (&wide, stats),
            &scored,
            &sums.summed(&run)?,
            lrs,
            step_kl_coef,
        );
        run.log(&m)?;
        let every = c.rollout.log_completions_steps;
        if every > 0 && run.state.step.is_multiple_of(every) {
            let mean_advantage: Vec<f64> = scored
                .advantages
                .iter()
                .map(|a| a.iter().sum::<f64>() / a.len().max(1) as f64)
                .collect();
            completions_log.append(&completion_records(
                run.state.step,
                &setup.prompts,
                &rollout.completions,
                &rollout.total_rewards,
                rewards.names(),
                &rollout.scores.per_func,
                &mean_advantage,
                c.rollout.num_completions_to_log,
            ))?;
        }
        progress(Event::PpoStep(&m));
        last_metrics = Some(m);
        verdict?;
        if let Some(ev) = evaluator.as_mut() {
            let step = run.state.step;
            ev.after_step(&setup, step, &model, &reference, &rewards, device, progress)?;
        }

        // 5. Checkpoint when due (with the critic and the KL coefficient).
        let extra = critic_and_kl(&critic, &critic_opt, c.lora.as_ref(), kl_coef);
        let due = run.save_when_due_with(&model, &setup.weights(), false, extra)?;
        if let Some(saved) = &due.saved {
            progress(Event::Checkpoint(saved));
        }
    }

    // 6. The last checkpoint; unless interrupted, final/.
    let extra = critic_and_kl(&critic, &critic_opt, c.lora.as_ref(), kl_coef);
    finish(&setup, run, stop, last_metrics, model, extra, progress)
}

/// The critic, its optimizer (both from the checkpoint on resume) and the KL
/// coefficient where the run stands.
fn open_critic<B: AutodiffBackend>(
    init: &CriticInit,
    setup: &Setup,
    model: &LlamaForCausalLM<B>,
    checkpoint: Option<&Path>,
    params: &PpoParams,
    seed: u64,
    device: &B::Device,
) -> Result<(Critic<B>, AdamW<B::InnerBackend>, f64)> {
    let c = &setup.config;
    let critic_ckpt = checkpoint.map(|d| d.join(CRITIC_DIR));
    let critic = Critic::<B>::load(
        init,
        c,
        model.model.embed_tokens.weight.dims()[1],
        critic_ckpt.as_deref(),
        derive_seed(seed, Stream::AdapterInit, 1, 0),
        device,
    )?;
    let mut critic_opt = critic.optimizer(&c.optim, critic_ckpt.as_deref(), device)?;
    let critic = critic.into_dtype(&mut critic_opt, c.train.dtype.dtype());
    let kl_coef = match checkpoint {
        Some(dir) => read_ppo_state(dir)?.kl_coef,
        None => params.kl_coef,
    };
    Ok((critic, critic_opt, kl_coef))
}

/// The PPO settings every step uses.
struct StepSettings<'a> {
    params: &'a PpoParams,
    clip: Clip,
    temperature: f32,
    seed: u64,
    /// Completions per mini-batch.
    per_mini: usize,
    /// The critic's learning rate over the policy's.
    critic_lr_scale: f64,
}

/// Step 1's no-grad passes, split back per completion: π_old's log-probs and
/// the critic's values (in the token data), and the reference's log-probs
/// (π_old's own without a reference).
fn no_grad_passes<B: AutodiffBackend>(
    model: &LlamaForCausalLM<B>,
    critic: &Critic<B>,
    reference: &Reference<B::InnerBackend>,
    rollout: &Rollout,
    temperature: f32,
    device: &B::Device,
) -> (Vec<TokenData>, Vec<Vec<f32>>) {
    let Rollout {
        completions,
        trained,
        micro,
        batches,
        ..
    } = rollout;
    let policy = model.valid();
    let ref_logps = reference.logps(&policy, batches, temperature, device);
    let critic_now = match critic {
        Critic::Separate(model, _) => CriticNow::Separate(model.valid()),
        Critic::Shared(h) => CriticNow::Shared(h.valid()),
    };
    let mut data = vec![TokenData::default(); completions.len()];
    for (k, tokens) in batches.iter().enumerate() {
        if tokens.is_empty() {
            continue;
        }
        let (head, values) = match &critic_now {
            CriticNow::Separate(separate) => (
                scaled_token_logprobs(&policy, tokens, temperature, false, device),
                token_values(&separate.reward, tokens, device),
            ),
            CriticNow::Shared(h) => {
                logprobs_and_values(&policy, &h.score, tokens, temperature, false, device)
            }
        };
        let (logp, values) = (host(head.logp), host(values));
        for (i, span) in token_spans(micro[k].clone(), trained, completions) {
            data[i].old_logp = logp[span.clone()].to_vec();
            data[i].values = values[span].to_vec();
        }
    }
    let ref_per_completion: Vec<Vec<f32>> = match &ref_logps {
        None => data.iter().map(|d| d.old_logp.clone()).collect(),
        Some(r) => {
            let mut out = vec![Vec::new(); completions.len()];
            for (k, reference) in r.iter().enumerate() {
                for (i, span) in token_spans(micro[k].clone(), trained, completions) {
                    out[i] = reference[span].to_vec();
                }
            }
            out
        }
    };
    (data, ref_per_completion)
}

/// Step 1's advantages and what the metrics need of the token rewards.
struct Scored {
    /// Per completion (this rank's), per token, whitened.
    advantages: Vec<Vec<f64>>,
    /// Per trained completion of every rank: its KL to the reference,
    /// −log-prob sum, and −β·KL.
    seq_kl: Vec<f64>,
    seq_entropy: Vec<f64>,
    non_score: Vec<f64>,
}

/// Step 1's token rewards, GAE and whitening: fills each completion's
/// advantages and returns into `data`. Whitening pools the tokens of every
/// rank, as one process pools those of its batch.
fn advantages<B: AutodiffBackend>(
    run: &Run<B>,
    data: &mut [TokenData],
    ref_logps: &[Vec<f32>],
    rollout: &Rollout,
    params: &PpoParams,
    kl_coef: f64,
) -> Result<Scored> {
    let n = data.len();
    let mut token_r: Vec<Vec<f64>> = Vec::with_capacity(n);
    let (mut seq_kl, mut seq_entropy) = (Vec::new(), Vec::new());
    for (i, d) in data.iter().enumerate() {
        let logp: Vec<f64> = d.old_logp.iter().map(|&x| x as f64).collect();
        let reference: Vec<f64> = ref_logps[i].iter().map(|&x| x as f64).collect();
        let score = rollout.total_rewards[i];
        let r = token_rewards(&logp, &reference, params.kl_estimator, kl_coef, score);
        if rollout.trained[i] {
            let kl: f64 = logp
                .iter()
                .zip(&reference)
                .map(|(&l, &q)| params.kl_estimator.at(l, q))
                .sum();
            seq_kl.push(kl);
            seq_entropy.push(-logp.iter().sum::<f64>());
        }
        token_r.push(r);
    }
    if params.whiten_rewards {
        let all = pooled(run, &token_r.concat(), "whitening the step's rewards")?;
        whiten_ragged(&mut token_r, &all, false);
    }
    let mut advantages: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut returns: Vec<Vec<f64>> = Vec::with_capacity(n);
    for (i, d) in data.iter().enumerate() {
        let values: Vec<f64> = d.values.iter().map(|&x| x as f64).collect();
        let (a, r) = gae(&token_r[i], &values, params.gamma, params.lam);
        advantages.push(a);
        returns.push(r);
    }
    let all = pooled(run, &advantages.concat(), "whitening the step's advantages")?;
    whiten_ragged(&mut advantages, &all, true);
    for (i, d) in data.iter_mut().enumerate() {
        d.advantages = advantages[i].iter().map(|&x| x as f32).collect();
        d.returns = returns[i].iter().map(|&x| x as f32).collect();
    }
    let what = "gathering the step's KL";
    let seq_kl = pooled(run, &seq_kl, what)?;
    Ok(Scored {
        advantages,
        non_score: seq_kl.iter().map(|kl| -kl_coef * kl).collect(),
        seq_kl,
        seq_entropy: pooled(run, &seq_entropy, what)?,
    })
}

/// Steps 2-3 of one PPO step: what the updates train on.
struct Updates<'a> {
    setup: &'a Setup,
    s: &'a StepSettings<'a>,
    rollout: &'a Rollout,
    data: &'a [TokenData],
    layout: Layout,
}

/// The step's completions over all ranks, in rank order (one process: its
/// own): each one's trained tokens (0 when masked), and where this rank's
/// start. A mini-batch is drawn from all of them, as one process draws it;
/// each rank computes the gradients of its own completions in it.
struct Layout {
    tokens: Vec<usize>,
    start: usize,
}

impl Layout {
    fn of<B: AutodiffBackend>(run: &Run<B>, rollout: &Rollout) -> Result<Self> {
        let local: Vec<f64> = (rollout.completions.iter().zip(&rollout.trained))
            .map(|(c, &t)| if t { c.tokens.len() as f64 } else { 0.0 })
            .collect();
        let (all, start) = pooled_at(run, &local, "gathering the step's completions")?;
        Ok(Self {
            start,
            tokens: all.into_iter().map(|t| t as usize).collect(),
        })
    }

    /// This rank's completions among `mini` (indices over all ranks), as
    /// indices into its own.
    fn local(&self, mini: &[usize], here: usize) -> Vec<usize> {
        let range = self.start..self.start + here;
        (mini.iter())
            .filter(|i| range.contains(i))
            .map(|i| i - self.start)
            .collect()
    }
}

/// What one mini-batch's forward and backward passes give.
struct MiniBatch<B: AutodiffBackend> {
    grads: Gradients<B::InnerBackend>,
    critic_grads: Gradients<B::InnerBackend>,
    policy_loss: f64,
    value_loss: f64,
}

impl Updates<'_> {
    /// `num_ppo_epochs` × `num_mini_batches` updates of policy and critic (they
    /// stop at the NaN guard's error), at learning rates `(lr, critic_lr)`:
    /// both models, the updates' sums, why an update was skipped, the verdict.
    #[allow(clippy::type_complexity)]
    fn run<B: AutodiffBackend>(
        &self,
        run: &mut Run<B>,
        mut model: LlamaForCausalLM<B>,
        mut critic: Critic<B>,
        critic_opt: &mut AdamW<B::InnerBackend>,
        (lr, critic_lr): (f64, f64),
        device: &B::Device,
    ) -> (
        LlamaForCausalLM<B>,
        Critic<B>,
        UpdateSums,
        Option<String>,
        std::result::Result<Verdict, TrainError>,
    ) {
        let params = self.s.params;
        let max_grad_norm = self.setup.config.train.max_grad_norm;
        let mut sums = UpdateSums::default();
        let mut verdict = Ok(Verdict::Update);
        let mut skipped = None;
        'epochs: for epoch in 0..params.num_ppo_epochs {
            let mut perm: Vec<usize> = (0..self.layout.tokens.len()).collect();
            let step = run.state.step as u64;
            let order_seed = derive_seed(self.s.seed, Stream::MiniBatchOrder, step, epoch as u64);
            perm.shuffle(&mut StdRng::seed_from_u64(order_seed));
            for (mb, mini) in perm.chunks(self.s.per_mini).enumerate() {
                let first = (epoch * params.num_mini_batches + mb) * self.s.per_mini;
                let Some(mut out) =
                    self.mini_batch(run, &model, &critic, mini, first, &mut sums, device)
                else {
                    continue;
                };
                // Both models' gradients summed over the ranks (a rank with
                // no completion in this mini-batch adds zeros).
                let shared = run
                    .share_gradients(&model, &mut out.grads, out.policy_loss)
                    .and_then(|p| {
                        Ok((
                            p,
                            critic.share_gradients(run, &mut out.critic_grads, out.value_loss)?,
                        ))
                    });
                let (policy_loss, value_loss) = match shared {
                    Ok(losses) => losses,
                    Err(e) => {
                        verdict = Err(e);
                        break 'epochs;
                    }
                };
                let grad_norm = out.grads.clip_global_norm(max_grad_norm);
                let critic_grad_norm = out.critic_grads.clip_global_norm(max_grad_norm);
                sums.policy_loss += out.policy_loss;
                sums.value_loss += out.value_loss;
                sums.grad_norm += grad_norm;
                sums.critic_grad_norm += critic_grad_norm;
                sums.updates += 1;
                verdict = run.check(
                    policy_loss + params.vf_coef * value_loss,
                    grad_norm.hypot(critic_grad_norm),
                );
                if let Ok(Verdict::Update) = verdict {
                    model = run.opt.step::<B, _>(model, out.grads, lr);
                    critic = critic.step(critic_opt, out.critic_grads, critic_lr);
                }
                skipped = skipped.or(skip_reason(&verdict));
                if verdict.is_err() {
                    break 'epochs;
                }
            }
        }
        (model, critic, sums, skipped, verdict)
    }

    /// This rank's gradients and losses of mini-batch `mini` (completion
    /// indices over all ranks), in forward passes of `train.batch_size`
    /// completions numbered from `first` (for the dropout seed); `None` on
    /// every rank when it has no trained token.
    #[allow(clippy::too_many_arguments)]
    fn mini_batch<B: AutodiffBackend>(
        &self,
        run: &Run<B>,
        model: &LlamaForCausalLM<B>,
        critic: &Critic<B>,
        mini: &[usize],
        first: usize,
        sums: &mut UpdateSums,
        device: &B::Device,
    ) -> Option<MiniBatch<B>> {
        let (params, rollout, data) = (self.s.params, self.rollout, self.data);
        let (completions, trained) = (&rollout.completions, &rollout.trained);
        let mb_tokens: usize = mini.iter().map(|&i| self.layout.tokens[i]).sum();
        if mb_tokens == 0 {
            return None;
        }
        let mine = self.layout.local(mini, completions.len());
        let weight = 1.0 / mb_tokens as f32;
        let pad_id = self.setup.encoder.tokenizer().pad_id();
        let mut out = MiniBatch {
            grads: Gradients::<B::InnerBackend>::new(),
            critic_grads: Gradients::<B::InnerBackend>::new(),
            policy_loss: 0.0,
            value_loss: 0.0,
        };
        let batch_size = self.setup.config.train.batch_size;
        for (m, rows) in mine.chunks(batch_size).enumerate() {
            let prompts = &self.setup.prompts;
            let tokens =
                ScoredTokens::of(prompts, completions, rows.iter().copied(), trained, pad_id);
            if tokens.is_empty() {
                continue;
            }
            let gather = |f: &dyn Fn(&TokenData) -> &Vec<f32>| -> Vec<f32> {
                rows.iter()
                    .filter(|&&i| trained[i])
                    .flat_map(|&i| f(&data[i]).iter().copied())
                    .collect()
            };
            let old = gather(&|d| &d.old_logp);
            let n = old.len();
            seed_backend::<B>(device, self.s.seed, run.state.step, run.stream(first + m));
            let temperature = self.s.temperature;
            let (head, values) = match critic {
                Critic::Separate(critic, _) => (
                    scaled_token_logprobs(model, &tokens, temperature, true, device),
                    token_values(&critic.reward, &tokens, device),
                ),
                Critic::Shared(h) => {
                    logprobs_and_values(model, &h.score, &tokens, temperature, true, device)
                }
            };
            let pg = grpo_loss(
                GrpoInputs {
                    logp: head.logp.clone(),
                    old_logp: Some(floats::<B>(&old, device)),
                    ref_logp: None,
                    advantage: floats::<B>(&gather(&|d| &d.advantages), device),
                    weight: floats::<B>(&vec![weight; n], device),
                },
                self.s.clip,
                0.0,
            );
            let vf = value_loss(
                values,
                floats::<B>(&gather(&|d| &d.values), device),
                floats::<B>(&gather(&|d| &d.returns), device),
                floats::<B>(&vec![weight; n], device),
                params.cliprange_value,
            );
            let logp = host(head.logp.detach());
            let ratio = host(pg.ratio.clone());
            sums.tokens += n as f64;
            sums.approxkl += logp
                .iter()
                .zip(&old)
                .map(|(&a, &b)| 0.5 * ((a - b) as f64).powi(2))
                .sum::<f64>();
            sums.clipped += host(pg.low_clipped.clone().sum())[0] as f64
                + host(pg.high_clipped.clone().sum())[0] as f64;
            sums.ratio += ratio.iter().map(|&r| r as f64).sum::<f64>();
            sums.ratio_sq += ratio.iter().map(|&r| (r as f64).powi(2)).sum::<f64>();
            sums.value_clipped += host(vf.clipped.clone().sum())[0] as f64;
            if let Some(stats) = head.stats {
                sums.entropy += host(stats.entropy.sum())[0] as f64;
            }
            out.policy_loss += host(pg.loss.clone())[0] as f64;
            out.value_loss += host(vf.loss.clone())[0] as f64;
            let vf_loss = vf.loss.mul_scalar(params.vf_coef);
            match critic {
                Critic::Separate(critic, _) => {
                    out.grads.backward(model, pg.loss);
                    out.critic_grads.backward(critic, vf_loss);
                }
                // One backward pass: the backbone gets both losses'
                // gradients, the head the value loss's.
                Critic::Shared(h) => {
                    out.grads
                        .backward_shared(model, &mut out.critic_grads, h, pg.loss + vf_loss)
                }
            }
        }
        Some(out)
    }
}

/// Step 4's record: the updates' means, the KL and rewards of the rollout,
/// TRL's PPO diagnostics.
fn metrics<B: AutodiffBackend>(
    run: &Run<B>,
    setup: &Setup,
    (wide, stats): (&StepWide, RolloutStats),
    scored: &Scored,
    sums: &UpdateSums,
    (lr, critic_lr): (f64, f64),
    kl_coef: f64,
) -> PpoMetrics {
    let tokens = sums.tokens.max(1.0);
    let updates = sums.updates.max(1) as f64;
    let ratio_mean = sums.ratio / tokens;
    let non_score_reward = mean_std(&scored.non_score).0;
    PpoMetrics {
        step: run.state.step,
        epoch: run.epoch(setup.batches_per_epoch),
        // Samples so far, over every rank (TRL's episode).
        episode: run.state.step * setup.prompts_per_step * setup.group,
        learning_rate: lr,
        critic_learning_rate: critic_lr,
        kl: mean_std(&scored.seq_kl).0,
        entropy: mean_std(&scored.seq_entropy).0,
        non_score_reward,
        rlhf_reward: stats.reward + non_score_reward,
        scores: stats.reward,
        kl_coef,
        approxkl: sums.approxkl / tokens,
        clipfrac: sums.clipped / tokens,
        policy_entropy: sums.entropy / tokens,
        policy_loss: sums.policy_loss / updates,
        value_loss: sums.value_loss / updates,
        value_clipfrac: sums.value_clipped / tokens,
        ratio: ratio_mean,
        ratio_var: (sums.ratio_sq / tokens - ratio_mean * ratio_mean).max(0.0),
        num_eos_tokens: wide.lengths.terminated.iter().sum::<f64>() as usize,
        grad_norm: sums.grad_norm / updates,
        critic_grad_norm: sums.critic_grad_norm / updates,
        rollout: stats,
    }
}

/// What a checkpoint holds besides the policy: the critic and the KL
/// controller's state.
fn critic_and_kl<'a, B: AutodiffBackend>(
    critic: &'a Critic<B>,
    critic_opt: &'a AdamW<B::InnerBackend>,
    lora: Option<&'a alignkit_model::lora::LoraConfig>,
    kl_coef: f64,
) -> impl FnOnce(&Path) -> std::result::Result<(), TrainError> + 'a {
    move |dir| {
        critic.save(critic_opt, lora, &dir.join(CRITIC_DIR))?;
        let path = dir.join(PPO_STATE_FILE);
        let text = serde_json::to_string(&PpoState { kl_coef }).expect("serializes");
        std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
    }
}

fn read_ppo_state(checkpoint: &Path) -> Result<PpoState> {
    let path = checkpoint.join(PPO_STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| RlError::Io {
        path: path.clone(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|e| {
        RlError::Train(TrainError::checkpoint(
            checkpoint,
            format!("{PPO_STATE_FILE}: {e}"),
        ))
    })
}

/// [`crate::gae::whiten`] over the tokens of every completion together
/// (TRL's `masked_whiten` over the unpadded tokens of the batch): the
/// statistics of `pooled` (every rank's tokens; one process: `rows`'
/// own), applied to `rows`.
fn whiten_ragged(rows: &mut [Vec<f64>], pooled: &[f64], shift_mean: bool) {
    if let Some(w) = Whitening::of(pooled) {
        rows.iter_mut().for_each(|row| w.apply(row, shift_mean));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitening with masks: only the tokens of the completions take part
    /// (a masked completion has none), and the statistics are those of all
    /// tokens pooled, not per row. Tokens (1, 2) and (3, 4): μ = 2.5,
    /// unbiased σ² = 5/3, as `gae::whiten` on (1, 2, 3, 4).
    #[test]
    fn ragged_whitening_pools_the_tokens_of_every_completion() {
        let mut rows = vec![vec![1.0, 2.0], vec![], vec![3.0, 4.0]];
        let all = rows.concat();
        whiten_ragged(&mut rows, &all, true);
        let s = (5.0f64 / 3.0 + 1e-8).sqrt();
        let want = [[-1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s]];
        assert!(rows[1].is_empty());
        for (got, want) in [&rows[0], &rows[2]].iter().zip(want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{rows:?}");
            }
        }
        let mut kept = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        let all = kept.concat();
        whiten_ragged(&mut kept, &all, false);
        let mean: f64 = kept.iter().flatten().sum::<f64>() / 4.0;
        assert!((mean - 2.5).abs() < 1e-12);
        // A rank's share, whitened with the statistics of every rank's
        // tokens, equals its part of the whole whitened in one process.
        let mut share = vec![vec![3.0, 4.0]];
        whiten_ragged(&mut share, &[1.0, 2.0, 3.0, 4.0], true);
        assert_eq!(share[0], rows[2]);
    }
}
