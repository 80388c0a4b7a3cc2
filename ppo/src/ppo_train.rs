//! PPO with a learned critic, written out in numbered steps: 1. roll out,
//! 2. score, 3. no-grad passes (policy, reference, critic), 4. token rewards,
//! GAE, whitening, 5. `num_ppo_epochs` × `num_mini_batches` updates of policy
//! and critic, 6. KL controller and metrics, 7. checkpoint.
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use alignkit_model::LlamaConfig;
use alignkit_model::heads::is_sequence_classification;
use alignkit_train::checkpoint::OPTIMIZER_FILE;
use alignkit_train::reward_model::{
    Trainee, fresh_score, load_trainable as load_critic, read_score, save_trained as save_critic,
    write_score,
};
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::{AdamW, Gradients, TrainError, Verdict, skip_reason, trainable_params};
use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::collect::{EpochOrder, Rollout, collect, rollout_tokens, token_spans};
use crate::config::{PpoParams, RlConfig};
use crate::critic::{ValueHead, token_values};
use crate::error::{Result, RlError};
use crate::gae::{AdaptiveKl, gae, token_rewards, whiten};
use crate::loss::{Clip, GrpoInputs, grpo_loss, value_loss};
use crate::metrics::{PpoMetrics, RolloutStats, StepTimes, completion_records, mean_std};
use crate::reward::{RewardKind, same_tokenizer};
use crate::rollout::{ScoredTokens, logprobs_and_values, scaled_token_logprobs};
use crate::run::{Event, Opened, finish, floats, host, open};

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

/// Where the critic starts: a reward or value model, or the policy with a
/// fresh value head (a copy of it, or the policy itself under
/// `ppo.shared_backbone`).
#[derive(Debug, Clone, PartialEq)]
pub enum CriticInit {
    RewardModel(PathBuf),
    Policy(PathBuf),
    SharedBackbone,
}

impl CriticInit {
    /// `ppo.value_model`, else the one `kind = "model"` reward, else the policy.
    /// A directory that is not a reward/value model, or whose tokenizer differs
    /// from the policy's, is a one-line config error.
    pub fn resolve(config: &RlConfig, p: &PpoParams) -> Result<Self> {
        if p.shared_backbone {
            return Ok(CriticInit::SharedBackbone);
        }
        let models: Vec<&PathBuf> = config
            .rewards
            .iter()
            .filter_map(|r| match r {
                RewardKind::Model { path, .. } => Some(path),
                _ => None,
            })
            .collect();
        let (field, dir) = match (&p.value_model, models.as_slice()) {
            (Some(dir), _) => ("ppo.value_model", dir.clone()),
            (None, [one]) => ("rewards.path", (*one).clone()),
            (None, _) => return Ok(CriticInit::Policy(config.model.clone())),
        };
        let error = |message: String| RlError::Config {
            field: field.into(),
            message,
        };
        let model_config = LlamaConfig::load(&dir.join("config.json"))
            .map_err(|e| error(format!("{}: {e}", dir.display())))?;
        if !is_sequence_classification(&model_config) {
            return Err(error(format!(
                "{} is not a reward or value model (no *ForSequenceClassification architecture); the critic starts from one — leave ppo.value_model out to start it from the policy with a fresh value head",
                dir.display()
            )));
        }
        let policy = alignkit_datasets::Tokenizer::from_dir(&config.model)?;
        same_tokenizer(&policy, &dir).map_err(error)?;
        Ok(CriticInit::RewardModel(dir))
    }

    /// The model a separate critic starts from; none for a shared backbone.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            CriticInit::RewardModel(d) | CriticInit::Policy(d) => Some(d),
            CriticInit::SharedBackbone => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            CriticInit::RewardModel(d) => format!("the reward model {}", d.display()),
            CriticInit::Policy(_) => "the policy's weights with a fresh value head".into(),
            CriticInit::SharedBackbone => "a fresh value head on the policy's backbone".into(),
        }
    }
}

/// The critic a run trains (one per run: the variants' sizes do not matter).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Critic<B: AutodiffBackend> {
    /// A separate model: its own backbone and head (and adapters), with its
    /// config and the model it started from (for its checkpoints).
    Separate(Trainee<B>, Arc<(LlamaConfig, PathBuf)>),
    /// A value head on the policy's backbone.
    Shared(ValueHead<B>),
}

/// The critic as the no-grad passes read it (dropout off).
#[allow(clippy::large_enum_variant)]
enum CriticNow<B: burn::tensor::backend::Backend> {
    Separate(Trainee<B>),
    Shared(ValueHead<B>),
}

impl<B: AutodiffBackend> Critic<B> {
    /// The start of `init`, or the critic saved in checkpoint folder `saved`.
    fn load(
        init: &CriticInit,
        config: &RlConfig,
        hidden: usize,
        saved: Option<&Path>,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let config_error = |e: String| RlError::Config {
            field: "ppo.value_model".into(),
            message: e,
        };
        let Some(start) = init.dir() else {
            let score = match saved {
                Some(dir) => read_score(dir, hidden, device),
                None => Ok(fresh_score(hidden, seed, device)),
            }
            .map_err(|e| config_error(e.to_string()))?;
            return Ok(Critic::Shared(ValueHead { score }));
        };
        let (critic_config, mut model) =
            load_critic::<B>(start, config.lora.as_ref(), saved, seed, device)
                .map_err(|e| config_error(e.to_string()))?;
        config.train.checkpointing(&mut model.model)?;
        Ok(Critic::Separate(
            Trainee { reward: model },
            Arc::new((critic_config, start.to_path_buf())),
        ))
    }

    /// Its optimizer, fresh or as saved in `dir`.
    fn optimizer(
        &self,
        config: &alignkit_train::AdamWConfig,
        saved: Option<&Path>,
        device: &B::Device,
    ) -> Result<AdamW<B::InnerBackend>> {
        let Some(dir) = saved else {
            return Ok(AdamW::new(config.clone()));
        };
        let params = match self {
            Critic::Separate(model, _) => trainable_params::<B, _>(model),
            Critic::Shared(head) => trainable_params::<B, _>(head),
        };
        Ok(AdamW::load(
            config.clone(),
            &dir.join(OPTIMIZER_FILE),
            &params,
            device,
        )?)
    }

    /// Its weights in `dtype` (f32 masters kept by `opt`).
    fn into_dtype(self, opt: &mut AdamW<B::InnerBackend>, dtype: DType) -> Self {
        match self {
            Critic::Separate(model, info) => {
                Critic::Separate(opt.to_dtype::<B, _>(model, dtype), info)
            }
            Critic::Shared(head) => Critic::Shared(opt.to_dtype::<B, _>(head, dtype)),
        }
    }

    /// One optimizer step.
    fn step(
        self,
        opt: &mut AdamW<B::InnerBackend>,
        grads: Gradients<B::InnerBackend>,
        lr: f64,
    ) -> Self {
        match self {
            Critic::Separate(model, info) => {
                Critic::Separate(opt.step::<B, _>(model, grads, lr), info)
            }
            Critic::Shared(head) => Critic::Shared(opt.step::<B, _>(head, grads, lr)),
        }
    }

    /// Save into checkpoint folder `dir` (the f32 masters of a
    /// mixed-precision run), with its optimizer.
    fn save(
        &self,
        opt: &AdamW<B::InnerBackend>,
        lora: Option<&alignkit_model::lora::LoraConfig>,
        dir: &Path,
    ) -> std::result::Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let saved = match self {
            Critic::Separate(model, info) => {
                let model = opt.f32_weights::<B, _>(model.clone());
                save_critic(&model.reward, &info.0, lora, &info.1, dir)
            }
            Critic::Shared(head) => write_score(&opt.f32_weights::<B, _>(head.clone()).score, dir),
        };
        saved.map_err(|e| TrainError::checkpoint(dir, e.to_string()))?;
        opt.save(&dir.join(OPTIMIZER_FILE))
    }
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
    let critic_ckpt = checkpoint.as_ref().map(|d| d.join(CRITIC_DIR));
    let critic = Critic::<B>::load(
        &critic_init,
        c,
        model.model.embed_tokens.weight.dims()[1],
        critic_ckpt.as_deref(),
        derive_seed(seed, Stream::AdapterInit, 1, 0),
        device,
    )?;
    let mut critic_opt = critic.optimizer(&c.optim, critic_ckpt.as_deref(), device)?;
    let mut critic = critic.into_dtype(&mut critic_opt, c.train.dtype.dtype());
    let mut kl_coef = match &checkpoint {
        Some(dir) => read_ppo_state(dir)?.kl_coef,
        None => params.kl_coef,
    };
    info.critic = Some(critic_init.describe());
    progress(Event::Started(&info));
    if let Some(ev) = evaluator.as_mut()
        && run.state.step == 0
    {
        ev.after_step(&setup, 0, &model, &reference, &rewards, device, progress)?;
    }
    let temperature = setup.settings.temperature;
    let clip = Clip {
        low: params.cliprange,
        high: params.cliprange,
    };
    let critic_lr_scale = params.critic_learning_rate.unwrap_or(c.learning_rate) / c.learning_rate;
    let per_mini = c.completions_per_step() / params.num_mini_batches;

    let mut order = EpochOrder::default();
    let mut last_metrics = None;
    let mut stop = alignkit_train::StopReason::Completed;
    while run.running() {
        if options.stop_requested() {
            stop = alignkit_train::StopReason::Interrupted;
            break;
        }
        let started = Instant::now();

        // 1-2. Roll out with π_old and score.
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

        // 3. No-grad passes: π_old's log-probs (and entropy), the reference's,
        //    the critic's values — split back per completion.
        let policy = model.valid();
        let ref_logps = reference.logps(&policy, &batches, temperature, device);
        let critic_now = match &critic {
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
            for (i, span) in token_spans(micro[k].clone(), &trained, &completions) {
                data[i].old_logp = logp[span.clone()].to_vec();
                data[i].values = values[span].to_vec();
            }
        }
        let ref_per_completion: Vec<Vec<f32>> = match &ref_logps {
            None => data.iter().map(|d| d.old_logp.clone()).collect(),
            Some(r) => {
                let mut out = vec![Vec::new(); completions.len()];
                for (k, reference) in r.iter().enumerate() {
                    for (i, span) in token_spans(micro[k].clone(), &trained, &completions) {
                        out[i] = reference[span].to_vec();
                    }
                }
                out
            }
        };

        // 4. Token rewards (−β·kl + score at the end), optional reward
        //    whitening, GAE, advantage whitening over all trained tokens.
        let mut token_r: Vec<Vec<f64>> = Vec::with_capacity(completions.len());
        let (mut seq_kl, mut seq_entropy, mut non_score) = (Vec::new(), Vec::new(), Vec::new());
        for (i, d) in data.iter().enumerate() {
            let logp: Vec<f64> = d.old_logp.iter().map(|&x| x as f64).collect();
            let reference: Vec<f64> = ref_per_completion[i].iter().map(|&x| x as f64).collect();
            let r = token_rewards(
                &logp,
                &reference,
                params.kl_estimator,
                kl_coef,
                total_rewards[i],
            );
            if trained[i] {
                let kl: f64 = logp
                    .iter()
                    .zip(&reference)
                    .map(|(&l, &q)| params.kl_estimator.at(l, q))
                    .sum();
                seq_kl.push(kl);
                non_score.push(-kl_coef * kl);
                seq_entropy.push(-logp.iter().sum::<f64>());
            }
            token_r.push(r);
        }
        if params.whiten_rewards {
            whiten_ragged(&mut token_r, false);
        }
        let mut advantages: Vec<Vec<f64>> = Vec::with_capacity(completions.len());
        let mut returns: Vec<Vec<f64>> = Vec::with_capacity(completions.len());
        for (i, d) in data.iter().enumerate() {
            let values: Vec<f64> = d.values.iter().map(|&x| x as f64).collect();
            let (a, r) = gae(&token_r[i], &values, params.gamma, params.lam);
            advantages.push(a);
            returns.push(r);
        }
        whiten_ragged(&mut advantages, true);
        for (i, d) in data.iter_mut().enumerate() {
            d.advantages = advantages[i].iter().map(|&x| x as f32).collect();
            d.returns = returns[i].iter().map(|&x| x as f32).collect();
        }
        let scoring_time = scoring_started.elapsed().as_secs_f64();

        // 5. num_ppo_epochs × num_mini_batches updates of policy and critic.
        let optimization_started = Instant::now();
        let lr = run.learning_rate();
        let critic_lr = lr * critic_lr_scale;
        let pad_id = setup.encoder.tokenizer().pad_id();
        let mut sums = UpdateSums::default();
        let mut verdict: std::result::Result<Verdict, TrainError> = Ok(Verdict::Update);
        let mut skipped = None;
        'epochs: for epoch in 0..params.num_ppo_epochs {
            let mut perm: Vec<usize> = (0..completions.len()).collect();
            perm.shuffle(&mut StdRng::seed_from_u64(derive_seed(
                seed,
                Stream::MiniBatchOrder,
                run.state.step as u64,
                epoch as u64,
            )));
            for (mb, mini) in perm.chunks(per_mini).enumerate() {
                let mb_tokens: usize = mini
                    .iter()
                    .filter(|&&i| trained[i])
                    .map(|&i| completions[i].tokens.len())
                    .sum();
                if mb_tokens == 0 {
                    continue;
                }
                let weight = 1.0 / mb_tokens as f32;
                let mut grads = Gradients::<B::InnerBackend>::new();
                let mut critic_grads = Gradients::<B::InnerBackend>::new();
                let (mut pg_total, mut vf_total) = (0.0, 0.0);
                for (m, rows) in mini.chunks(c.train.batch_size).enumerate() {
                    let tokens = ScoredTokens::of(
                        &setup.prompts,
                        &completions,
                        rows.iter().copied(),
                        &trained,
                        pad_id,
                    );
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
                    let update = (epoch * params.num_mini_batches + mb) * per_mini + m;
                    seed_backend::<B>(device, seed, run.state.step, update);
                    let (head, values) = match &critic {
                        Critic::Separate(critic, _) => (
                            scaled_token_logprobs(&model, &tokens, temperature, true, device),
                            token_values(&critic.reward, &tokens, device),
                        ),
                        Critic::Shared(h) => logprobs_and_values(
                            &model,
                            &h.score,
                            &tokens,
                            temperature,
                            true,
                            device,
                        ),
                    };
                    let pg = grpo_loss(
                        GrpoInputs {
                            logp: head.logp.clone(),
                            old_logp: Some(floats::<B>(&old, device)),
                            ref_logp: None,
                            advantage: floats::<B>(&gather(&|d| &d.advantages), device),
                            weight: floats::<B>(&vec![weight; n], device),
                        },
                        clip,
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
                    let pg_loss = host(pg.loss.clone())[0] as f64;
                    let vf_loss = host(vf.loss.clone())[0] as f64;
                    pg_total += pg_loss;
                    vf_total += vf_loss;
                    let vf_loss = vf.loss.mul_scalar(params.vf_coef);
                    match &critic {
                        Critic::Separate(critic, _) => {
                            grads.backward(&model, pg.loss);
                            critic_grads.backward(critic, vf_loss);
                        }
                        // One backward pass: the backbone gets both losses'
                        // gradients, the head the value loss's.
                        Critic::Shared(h) => {
                            grads.backward_shared(&model, &mut critic_grads, h, pg.loss + vf_loss)
                        }
                    }
                }
                let grad_norm = grads.clip_global_norm(c.train.max_grad_norm);
                let critic_grad_norm = critic_grads.clip_global_norm(c.train.max_grad_norm);
                sums.policy_loss += pg_total;
                sums.value_loss += vf_total;
                sums.grad_norm += grad_norm;
                sums.critic_grad_norm += critic_grad_norm;
                sums.updates += 1;
                verdict = run.check(
                    pg_total + params.vf_coef * vf_total,
                    grad_norm.hypot(critic_grad_norm),
                );
                if let Ok(Verdict::Update) = verdict {
                    model = run.opt.step::<B, _>(model, grads, lr);
                    critic = critic.step(&mut critic_opt, critic_grads, critic_lr);
                }
                skipped = skipped.or(skip_reason(&verdict));
                if verdict.is_err() {
                    break 'epochs;
                }
            }
        }
        run.end_step();
        run.state.cursor = next_cursor;
        let optimization_time = optimization_started.elapsed().as_secs_f64();

        // 6. The KL controller, metrics, a sample of completions.
        let step_kl_coef = kl_coef;
        let mean_kl = mean_std(&seq_kl).0;
        if let Some(a) = &params.adaptive_kl {
            let mut ctl = AdaptiveKl {
                value: kl_coef,
                target: a.target,
                horizon: a.horizon,
            };
            ctl.update(mean_kl, completions.len());
            kl_coef = ctl.value;
        }
        run.state.num_tokens += rollout_tokens(&setup.prompts, &completions);
        let rollout = RolloutStats::new(
            &completions,
            &total_rewards,
            (rewards.names(), &scores.per_func),
            run.state.num_tokens,
            StepTimes {
                started,
                generation: generation_time,
                scoring: scoring_time,
                optimization: optimization_time,
            },
            skipped,
        );
        let tokens = sums.tokens.max(1.0);
        let updates = sums.updates.max(1) as f64;
        let ratio_mean = sums.ratio / tokens;
        let non_score_reward = mean_std(&non_score).0;
        let m = PpoMetrics {
            step: run.state.step,
            epoch: run.state.cursor.epoch as f64
                + run.state.cursor.micro_batch as f64 / setup.batches_per_epoch as f64,
            episode: run.state.step * c.completions_per_step(),
            learning_rate: lr,
            critic_learning_rate: critic_lr,
            kl: mean_kl,
            entropy: mean_std(&seq_entropy).0,
            non_score_reward,
            rlhf_reward: rollout.reward + non_score_reward,
            scores: rollout.reward,
            kl_coef: step_kl_coef,
            approxkl: sums.approxkl / tokens,
            clipfrac: sums.clipped / tokens,
            policy_entropy: sums.entropy / tokens,
            policy_loss: sums.policy_loss / updates,
            value_loss: sums.value_loss / updates,
            value_clipfrac: sums.value_clipped / tokens,
            ratio: ratio_mean,
            ratio_var: (sums.ratio_sq / tokens - ratio_mean * ratio_mean).max(0.0),
            num_eos_tokens: completions.iter().filter(|x| x.terminated()).count(),
            grad_norm: sums.grad_norm / updates,
            critic_grad_norm: sums.critic_grad_norm / updates,
            rollout,
        };
        run.log(&m)?;
        let every = c.rollout.log_completions_steps;
        if every > 0 && run.state.step.is_multiple_of(every) {
            let mean_advantage: Vec<f64> = advantages
                .iter()
                .map(|a| a.iter().sum::<f64>() / a.len().max(1) as f64)
                .collect();
            completions_log.append(&completion_records(
                run.state.step,
                &setup.prompts,
                &completions,
                &total_rewards,
                rewards.names(),
                &scores.per_func,
                &mean_advantage,
                c.rollout.num_completions_to_log,
            ))?;
        }
        progress(Event::PpoStep(&m));
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

        // 7. Checkpoint when due.
        if run.checkpoint_due(false, false) {
            let extra = critic_and_kl(&critic, &critic_opt, c.lora.as_ref(), kl_coef);
            let saved = run.save_with(&model, &setup.weights(), extra)?;
            progress(Event::Checkpoint {
                step: saved.step,
                path: &saved.path,
            });
        }
    }
    let extra = critic_and_kl(&critic, &critic_opt, c.lora.as_ref(), kl_coef);
    finish(&setup, run, stop, last_metrics, model, extra, progress)
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

/// [`whiten`] over the tokens of every completion together (TRL's
/// `masked_whiten` over the unpadded tokens of the batch).
fn whiten_ragged(rows: &mut [Vec<f64>], shift_mean: bool) {
    let mut flat: Vec<f64> = rows.iter().flatten().copied().collect();
    whiten(&mut flat, shift_mean);
    let mut it = flat.into_iter();
    for row in rows.iter_mut() {
        for v in row.iter_mut() {
            *v = it.next().expect("same count");
        }
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
        whiten_ragged(&mut rows, true);
        let s = (5.0f64 / 3.0 + 1e-8).sqrt();
        let want = [[-1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s]];
        assert!(rows[1].is_empty());
        for (got, want) in [&rows[0], &rows[2]].iter().zip(want) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{rows:?}");
            }
        }
        let mut kept = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        whiten_ragged(&mut kept, false);
        let mean: f64 = kept.iter().flatten().sum::<f64>() / 4.0;
        assert!((mean - 2.5).abs() < 1e-12);
    }
}
