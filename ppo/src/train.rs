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
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use alignkit_datasets::{Encoder, shuffled_batches};
use alignkit_model::precision::cast_model;
use alignkit_model::{DecodePanels, LlamaConfig, LlamaForCausalLM, load_model, lora};
use alignkit_train::export::write_merged;
use alignkit_train::seed::{Stream, derive_seed, seed_backend};
use alignkit_train::skeleton::{self, Run, Start, Weights};
use alignkit_train::weights::load_trainable;
use alignkit_train::{
    DataFile, Gradients, KeyChange, RunIdentity, TrainError, TrainerState, WeightsKind,
    model_fingerprint, sha256_file, trainable_count,
};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::config::{Algorithm, RlConfig};
use crate::error::{Result, RlError};
use crate::loss::{
    GrpoInputs, LossType, PolicyLoss, ScaleRewards, eos_penalised, frac_zero_std, grpo_advantages,
    grpo_loss, is_trained, k1_sequence, kl_penalised, rloo_advantages, rloo_loss, token_weights,
};
use crate::metrics::{
    CompletionsLog, EVAL_FILE, RlMetrics, RolloutStats, StepLog, StepTimes, completion_records,
    length_stats, mean_std, per_function,
};
use crate::reward::{self, Rewards, Scores};
use crate::rollout::{
    Completion, Prompt, RolloutSettings, ScoredTokens, check_head, load_prompts, roll_out,
    scaled_token_logprobs,
};
use serde::Serialize;

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
    /// `grpo`, `rloo` or `ppo`.
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
    /// PPO: where the critic starts from.
    pub critic: Option<String>,
    /// Bookkeeping settings changed since the checkpoint resumed from.
    pub resumed_with: Vec<KeyChange>,
}

/// Progress reports; the library never prints.
#[derive(Debug)]
pub enum Event<'a> {
    Started(&'a RunInfo),
    Step(&'a RlMetrics),
    /// A PPO step.
    PpoStep(&'a crate::metrics::PpoMetrics),
    /// A held-out evaluation (`[eval]`), at step 0 and when due.
    Eval(&'a EvalRecord),
    Checkpoint {
        step: usize,
        path: &'a Path,
    },
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

pub(crate) enum Reference<IB: Backend> {
    None,
    Frozen(Box<LlamaForCausalLM<IB>>),
    AdaptersDisabled,
}

impl<IB: Backend> Reference<IB> {
    fn kind(&self) -> ReferenceKind {
        match self {
            Reference::None => ReferenceKind::None,
            Reference::Frozen(_) => ReferenceKind::FrozenModel,
            Reference::AdaptersDisabled => ReferenceKind::AdaptersDisabled,
        }
    }

    /// The reference's log-probs of each micro-batch's scored tokens; `None`
    /// without a reference. `policy` is the policy's no-grad view (its
    /// adapters are disabled for the LoRA reference).
    pub(crate) fn logps(
        &self,
        policy: &LlamaForCausalLM<IB>,
        batches: &[ScoredTokens],
        temperature: f32,
        device: &IB::Device,
    ) -> Option<Vec<Vec<f32>>> {
        match self {
            Reference::None => None,
            Reference::Frozen(m) => Some(reference_logps(m, batches, temperature, device)),
            Reference::AdaptersDisabled => Some(reference_logps(
                &lora::detach_all(policy.clone()),
                batches,
                temperature,
                device,
            )),
        }
    }
}

/// Everything a step needs that does not change during the run.
pub(crate) struct Setup {
    pub config: RlConfig,
    pub trainer: &'static str,
    pub group: usize,
    pub settings: RolloutSettings,
    pub encoder: Encoder,
    pub prompts: Vec<Prompt>,
    pub prompts_per_step: usize,
    pub batches_per_epoch: usize,
    pub total_steps: usize,
    pub model_config: LlamaConfig,
    /// Under LoRA, the decoding panels of the frozen base, laid out by the
    /// first rollout and kept for the run.
    pub base_panels: Mutex<Option<DecodePanels>>,
}

impl Setup {
    /// What a checkpoint of the policy holds ([`Run::save`]).
    pub fn weights(&self) -> Weights<'_> {
        Weights {
            model_config: &self.model_config,
            lora: self.config.lora.as_ref(),
            base: &self.config.model,
        }
    }

    /// The policy laid out for sampling ([`LlamaForCausalLM::for_decoding`]).
    /// Under LoRA the base weights do not change during the run, so their
    /// panels are laid out once (about a second a step for SmolLM2).
    pub fn sampler<B: Backend>(&self, policy: LlamaForCausalLM<B>) -> LlamaForCausalLM<B> {
        if self.config.lora.is_none() {
            return policy.for_decoding();
        }
        let mut kept = self
            .base_panels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sampler = policy.for_decoding_with(kept.as_ref().unwrap_or(&DecodePanels::default()));
        if kept.is_none() {
            *kept = Some(sampler.decode_panels());
        }
        sampler
    }
}

/// A run opened by [`open`]: the policy, its reference, rewards and optimizer,
/// resumed from the latest checkpoint when asked.
pub(crate) struct Opened<B: AutodiffBackend> {
    pub setup: Setup,
    pub model: LlamaForCausalLM<B>,
    pub reference: Reference<B::InnerBackend>,
    pub rewards: Rewards<B::InnerBackend>,
    /// The run directory, state, optimizer and metrics ([`skeleton::Run`]).
    pub run: Run<B>,
    pub completions_log: CompletionsLog,
    pub evaluator: Option<Evaluator<B::InnerBackend>>,
    /// The checkpoint resumed from.
    pub checkpoint: Option<PathBuf>,
    pub info: RunInfo,
}

/// Setup shared by every online-RL loop: prompts, checkpoint, policy,
/// reference (when `beta` > 0), rewards, optimizer, from a config the caller
/// has validated ([`RlConfig::validate`]). Every prompt and reward-model
/// problem is reported here, before any rollout.
pub(crate) fn open<B: AutodiffBackend>(
    config: &RlConfig,
    device: &B::Device,
    options: &RunOptions<'_>,
) -> Result<Opened<B>> {
    let config = config.with_absolute_paths()?;
    let algorithm = config.algorithm()?;
    let (trainer, group, beta) = (
        algorithm.name(),
        algorithm.num_generations(),
        algorithm.beta(),
    );
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
    let seed = config.train.seed;
    let data_files = [DataFile {
        path: config.data.train_file.clone(),
        sha256: sha256_file(&config.data.train_file)?,
    }];
    let opening = skeleton::open(
        &config.output_dir,
        options,
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
                "eval.file",
                "eval.steps",
                "eval.num_samples",
                "eval.max_completion_length",
            ],
            reread: alignkit_train::resume::reread::<RlConfig>,
        },
        total_steps,
        seed,
    )?;

    let ckpt_path = opening.checkpoint().map(Path::to_path_buf);
    let (model_config, mut model) = load_trainable::<B>(
        &config.model,
        config.lora.as_ref(),
        ckpt_path.as_deref(),
        derive_seed(seed, Stream::AdapterInit, 0, 0),
        device,
    )?;
    config.train.checkpointing(&mut model.model)?;
    check_head(&model)?;
    // The evaluations' KL needs a reference even when the objective does not.
    let reference: Reference<B::InnerBackend> =
        match (beta > 0.0 || config.eval.enabled(), &config.lora) {
            (false, _) => Reference::None,
            (true, Some(_)) => Reference::AdaptersDisabled,
            // In the run's dtype, as the policy.
            (true, None) => Reference::Frozen(Box::new(cast_model(
                load_model::<B::InnerBackend>(&config.model, device)?.1,
                config.train.dtype.dtype(),
            ))),
        };
    let rewards = Rewards::<B::InnerBackend>::load(
        &config.rewards,
        pad_id,
        encoder.turn_trailer(),
        config.train.batch_size,
        device,
    )?;

    let (run, model) = opening.start(
        model,
        Start {
            train: &config.train,
            optim: &config.optim,
            schedule: config.schedule.build(config.learning_rate, total_steps),
            tokenizer_vocab: tokenizer.vocab_size(),
            model_vocab: model_config.vocab_size,
            config_toml: config.to_toml(),
        },
        device,
    )?;
    let resumed_step = ckpt_path.as_ref().map(|_| run.state.step);
    let completions_log = CompletionsLog::open(run.root(), resumed_step)?;
    let evaluator = if config.eval.enabled() {
        let prompts = load_prompts(&config.eval.file, &encoder)?;
        let own = !config.eval.rewards.is_empty();
        let specs = if own {
            &config.eval.rewards
        } else {
            &config.rewards
        };
        reward::check_records(specs, &prompts)?;
        let rewards = own
            .then(|| {
                Rewards::<B::InnerBackend>::load(
                    specs,
                    pad_id,
                    encoder.turn_trailer(),
                    config.train.batch_size,
                    device,
                )
            })
            .transpose()?;
        let mut settings = settings.clone();
        settings.num_generations = config.eval.num_samples;
        if let Some(n) = config.eval.max_completion_length {
            settings.max_completion_length = n;
        }
        Some(Evaluator {
            prompts,
            rewards,
            settings,
            log: StepLog::open_file(&run.root().join(EVAL_FILE), resumed_step)?,
        })
    } else {
        None
    };
    let info = RunInfo {
        run_dir: run.root().to_path_buf(),
        algorithm: trainer,
        start_step: run.start_step(),
        total_steps,
        prompts: prompts.len(),
        prompts_per_step,
        completions_per_step: config.completions_per_step(),
        trainable_params: trainable_count::<B, _>(&model),
        reference: reference.kind(),
        rewards: rewards.names().to_vec(),
        critic: None,
        resumed_with: run.resumed_with.clone(),
    };
    Ok(Opened {
        setup: Setup {
            config,
            trainer,
            group,
            settings,
            encoder,
            prompts,
            prompts_per_step,
            batches_per_epoch,
            total_steps,
            model_config,
            base_panels: Mutex::new(None),
        },
        model,
        reference,
        rewards,
        run,
        completions_log,
        evaluator,
        checkpoint: ckpt_path,
        info,
    })
}

/// The held-out evaluations of a run (`[eval]`).
pub(crate) struct Evaluator<IB: Backend> {
    prompts: Vec<Prompt>,
    /// `eval.rewards`; `None`: the run's.
    rewards: Option<Rewards<IB>>,
    settings: RolloutSettings,
    log: StepLog,
}

/// One `eval.jsonl` record.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    pub step: usize,
    /// Mean and sample std of the total reward of the sampled completions.
    #[serde(rename = "eval/reward")]
    pub reward: f64,
    #[serde(rename = "eval/reward_std")]
    pub reward_std: f64,
    /// `eval/rewards/{name}/mean` and `.../std`.
    #[serde(flatten)]
    pub rewards: std::collections::BTreeMap<String, f64>,
    /// Mean over completions of Σ_t (log π − log π_ref): the Monte-Carlo
    /// estimate of the sequence KL(π ‖ π_ref), and its standard error.
    #[serde(rename = "eval/kl")]
    pub kl: f64,
    #[serde(rename = "eval/kl_sem")]
    pub kl_sem: f64,
    #[serde(rename = "eval/mean_length")]
    pub mean_length: f64,
    /// Signs of reward hacking in the completions' texts.
    #[serde(rename = "eval/text")]
    pub text: alignkit_eval::TextStats,
    #[serde(rename = "eval/completions")]
    pub completions: usize,
    #[serde(rename = "eval/time")]
    pub time: f64,
}

impl<IB: Backend> Evaluator<IB> {
    /// Evaluate after update `step` (0: before training) when it is due — at
    /// step 0, every `eval.steps` steps and at the last step — and report
    /// the record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn after_step<B: AutodiffBackend<InnerBackend = IB>>(
        &mut self,
        setup: &Setup,
        step: usize,
        model: &LlamaForCausalLM<B>,
        reference: &Reference<IB>,
        rewards: &Rewards<IB>,
        device: &IB::Device,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<()> {
        let every = setup.config.eval.steps;
        if step == 0 || step.is_multiple_of(every) || step == setup.total_steps {
            let record = self.run(setup, step, model, reference, rewards, device)?;
            progress(Event::Eval(&record));
        }
        Ok(())
    }

    /// Sample the held-out prompts with the policy (the same seeds every
    /// time), score them and estimate their sequence KL; append the record.
    pub(crate) fn run<B: AutodiffBackend<InnerBackend = IB>>(
        &mut self,
        setup: &Setup,
        step: usize,
        model: &LlamaForCausalLM<B>,
        reference: &Reference<IB>,
        rewards: &Rewards<IB>,
        device: &IB::Device,
    ) -> Result<EvalRecord> {
        let rewards = self.rewards.as_ref().unwrap_or(rewards);
        let started = Instant::now();
        let policy = model.valid();
        let seed = derive_seed(setup.config.train.seed, Stream::Evaluation, 0, 0);
        let indices: Vec<usize> = (0..self.prompts.len()).collect();
        let completions = roll_out(
            &setup.sampler(policy.clone()),
            &self.prompts,
            &indices,
            &self.settings,
            setup.encoder.tokenizer(),
            seed,
            0,
            device,
        )?;
        let scores = rewards.score(&self.prompts, &completions, device)?;
        let pad_id = setup.encoder.tokenizer().pad_id();
        let chunk = setup.config.train.batch_size.max(1);
        let all = vec![true; completions.len()];
        let batches: Vec<ScoredTokens> = (0..completions.len())
            .step_by(chunk)
            .map(|s| {
                let rows = s..(s + chunk).min(completions.len());
                ScoredTokens::of(&self.prompts, &completions, rows, &all, pad_id)
            })
            .collect();
        let temperature = self.settings.temperature;
        let ref_logps = reference
            .logps(&policy, &batches, temperature, device)
            .expect("a run with [eval] has a reference");
        let reference: Vec<f32> = ref_logps.into_iter().flatten().collect();
        let mut kl = Vec::with_capacity(completions.len());
        let mut at = 0;
        for c in &completions {
            let n = c.tokens.len();
            kl.push(k1_sequence(&c.logprobs, &reference[at..at + n]));
            at += n;
        }
        let (kl_mean, kl_std) = mean_std(&kl);
        let (reward, reward_std) = mean_std(&scores.total);
        let record = EvalRecord {
            step,
            reward,
            reward_std,
            rewards: per_function(rewards.names(), &scores.per_func)
                .into_iter()
                .map(|(k, v)| (format!("eval/{k}"), v))
                .collect(),
            kl: kl_mean,
            kl_sem: kl_std / (kl.len().max(1) as f64).sqrt(),
            mean_length: length_stats(&completions).0,
            text: alignkit_eval::TextStats::of(
                &completions
                    .iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>(),
            ),
            completions: completions.len(),
            time: started.elapsed().as_secs_f64(),
        };
        self.log.append(std::slice::from_ref(&record))?;
        Ok(record)
    }
}

/// One step's rollout, scored: G completions per prompt, their rewards
/// (EOS-penalised), which are trained, and their micro-batches.
pub(crate) struct Rollout {
    pub completions: Vec<Completion>,
    pub scores: Scores,
    pub total_rewards: Vec<f64>,
    /// False for a truncated completion left out of the loss.
    pub trained: Vec<bool>,
    /// `train.batch_size` completions per forward pass, fixed for the step.
    pub micro: Vec<Range<usize>>,
    pub batches: Vec<ScoredTokens>,
    pub generation_time: f64,
}

/// The prompt order of the epochs, rebuilt when the epoch changes.
#[derive(Default)]
pub(crate) struct EpochOrder(Option<(usize, Vec<Vec<usize>>)>);

impl EpochOrder {
    fn prompts(&mut self, setup: &Setup, seed: u64, epoch: usize, batch: usize) -> Vec<usize> {
        if self.0.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let epoch_seed = derive_seed(seed, Stream::DataOrder, epoch as u64, 0);
            self.0 = Some((
                epoch,
                shuffled_batches(setup.prompts.len(), setup.prompts_per_step, epoch_seed),
            ));
        }
        self.0.as_ref().expect("set above").1[batch].clone()
    }
}

/// Roll out the prompts of the step at `state`'s cursor with the current
/// policy (π_old, no gradients) and score them. Returns the cursor after the step.
pub(crate) fn collect<B: AutodiffBackend>(
    setup: &Setup,
    state: &TrainerState,
    order: &mut EpochOrder,
    model: &LlamaForCausalLM<B>,
    rewards: &Rewards<B::InnerBackend>,
    device: &B::Device,
) -> Result<(Rollout, alignkit_train::DataCursor)> {
    let started = Instant::now();
    let c = &setup.config;
    let (epoch, range, next_cursor) = state.cursor.next_step(setup.batches_per_epoch, 1);
    let indices = order.prompts(setup, state.seed, epoch, range.start);
    let completions = {
        let sampler = setup.sampler(model.valid());
        roll_out(
            &sampler,
            &setup.prompts,
            &indices,
            &setup.settings,
            setup.encoder.tokenizer(),
            state.seed,
            state.step,
            device,
        )?
    };
    let generation_time = started.elapsed().as_secs_f64();
    let scores = rewards.score(&setup.prompts, &completions, device)?;
    let total_rewards: Vec<f64> = scores
        .total
        .iter()
        .zip(&completions)
        .map(|(&r, comp)| eos_penalised(r, comp.terminated(), c.rollout.missing_eos_penalty))
        .collect();
    let trained: Vec<bool> = completions
        .iter()
        .map(|comp| is_trained(comp.terminated(), c.rollout.mask_truncated_completions))
        .collect();
    let micro: Vec<Range<usize>> = (0..completions.len())
        .step_by(c.train.batch_size)
        .map(|s| s..(s + c.train.batch_size).min(completions.len()))
        .collect();
    let pad_id = setup.encoder.tokenizer().pad_id();
    let batches = micro
        .iter()
        .map(|r| ScoredTokens::of(&setup.prompts, &completions, r.clone(), &trained, pad_id))
        .collect();
    Ok((
        Rollout {
            completions,
            scores,
            total_rewards,
            trained,
            micro,
            batches,
            generation_time,
        },
        next_cursor,
    ))
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
        if Run::<B>::stop_requested(&options) {
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
                let n = tokens.len();
                let old_values = (pass > 0).then(|| floats::<B>(&old[k], device));
                let out: PolicyLoss<B> = match objective {
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
                            clip,
                            beta,
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
                        rloo_loss(logp_sum, old_values, advantage, weights[k][0], clip)
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

/// The end of a run: a checkpoint of the last step unless one exists (always
/// when interrupted; `extra` writes what else the trainer keeps, as in
/// [`Run::save_with`]), and, unless interrupted, the merged policy in `final/`.
pub(crate) fn finish<B: AutodiffBackend, M>(
    setup: &Setup,
    mut run: Run<B>,
    stop: StopReason,
    last_metrics: Option<M>,
    model: LlamaForCausalLM<B>,
    extra: impl FnOnce(&Path) -> std::result::Result<(), TrainError>,
    progress: &mut dyn FnMut(Event<'_>),
) -> Result<alignkit_train::Outcome<M>> {
    if let Some(saved) = run.save_last_with(&model, &setup.weights(), stop, extra)? {
        progress(Event::Checkpoint {
            step: saved.step,
            path: &saved.path,
        });
    }
    let c = &setup.config;
    let mut final_dir = None;
    if stop != StopReason::Interrupted {
        let model = run.final_weights(model);
        let dir = run.dir.final_dir();
        let card = run.card(setup.trainer, &c.model, c.lora.as_ref(), c.to_toml())?;
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
    Ok(run.outcome(stop, final_dir, last_metrics))
}

/// Prompt and completion tokens of a rollout.
pub(crate) fn rollout_tokens(prompts: &[Prompt], completions: &[Completion]) -> u64 {
    completions
        .iter()
        .map(|comp| (prompts[comp.prompt].ids.len() + comp.tokens.len()) as u64)
        .sum()
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

/// The trained completions of a micro-batch (`range` of the step's
/// completions), each with the span of its tokens in the micro-batch's
/// scored tokens (row by row, masked rows holding none).
pub(crate) fn token_spans(
    range: Range<usize>,
    trained: &[bool],
    completions: &[Completion],
) -> Vec<(usize, Range<usize>)> {
    let mut start = 0;
    range
        .filter(|&i| trained[i])
        .map(|i| {
            let n = completions[i].tokens.len();
            start += n;
            (i, start - n..start)
        })
        .collect()
}

pub(crate) fn floats<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

pub(crate) fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above")
}
