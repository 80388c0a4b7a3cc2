//! The run plumbing shared by the online-RL loops (GRPO/RLOO in
//! [`crate::train`], PPO in [`crate::ppo_train`]): what a run reports, its
//! reference policy, [`open`] (prompts, policy, reference, rewards, the run
//! skeleton's start) and [`finish`] (the last checkpoint and `final/`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use alignkit_datasets::Encoder;
use alignkit_model::precision::cast_model;
use alignkit_model::{DecodePanels, LlamaConfig, LlamaForCausalLM, load_model, lora};
use alignkit_train::skeleton::{self, Run, Start, Weights};
use alignkit_train::{
    CheckpointRef, DataFile, KeyChange, ModelInput, RunIdentity, TrainError, WeightsKind,
    model_fingerprint, sha256_file, trainable_count,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::config::RlConfig;
use crate::error::Result;
use crate::evaluator::{EvalRecord, Evaluator};
use crate::metrics::{CompletionsLog, EVAL_FILE, RlMetrics, StepLog};
use crate::reward::{self, RewardKind, Rewards};
use crate::rollout::{
    Prompt, RolloutSettings, ScoredTokens, check_head, load_prompts, read_prompts,
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
    /// `grpo`, `rloo` or `ppo`.
    pub algorithm: &'static str,
    pub start_step: usize,
    pub total_steps: usize,
    pub prompts: usize,
    /// Prompts cut to `data.max_prompt_len` (their end is kept).
    pub truncated_prompts: usize,
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
    /// The process whose lock on the run directory this run took over: it
    /// ended without removing it.
    pub lock_taken_over: Option<alignkit_train::output::Holder>,
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
    Checkpoint(&'a CheckpointRef),
}

/// How the run ended.
pub type RlOutcome = alignkit_train::Outcome<RlMetrics>;

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
    let (prompts, truncated_prompts) = read_prompts(&config.data.train_file, &encoder)?;
    reward::check_records(&config.rewards, &prompts)?;
    let tokenizer = encoder.tokenizer();
    let pad_id = tokenizer.pad_id();
    let fingerprint = model_fingerprint(&config.model)?;
    // train.batch_size is per rank: a step's prompts are dealt to the ranks,
    // whole groups each.
    let prompts_per_step = options.global_batch(config.completions_per_step()) / group;
    if prompts_per_step < options.world.size() {
        return Err(crate::RlError::Config {
            field: "train.batch_size".into(),
            message: format!(
                "a step samples {prompts_per_step} prompts, fewer than the {} ranks: raise train.batch_size or train.grad_accum",
                options.world.size()
            ),
        });
    }
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
    let models = models_read(&config)?;
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
            models: &models,
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
    let (model_config, model) = opening.load::<B, LlamaForCausalLM<B>>(
        &config.model,
        config.lora.as_ref(),
        &config.train,
        device,
    )?;
    check_head(&model, settings.temperature as f64)?;
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
    let writes = options.world.writes();
    let completions = run.root().join(crate::metrics::COMPLETIONS_FILE);
    let completions_log = CompletionsLog::open_as(&completions, resumed_step, writes)?;
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
            log: StepLog::open_as(&run.root().join(EVAL_FILE), resumed_step, writes)?,
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
        truncated_prompts,
        prompts_per_step,
        // Over every rank, as prompts_per_step.
        completions_per_step: prompts_per_step * group,
        trainable_params: trainable_count::<B, _>(&model),
        reference: reference.kind(),
        rewards: rewards.names().to_vec(),
        critic: None,
        resumed_with: run.resumed_with.clone(),
        lock_taken_over: run.dir.lock_taken_over().cloned(),
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

/// Every model the run reads besides its policy, under the key naming it:
/// the reward models (of training and of the evaluations, when on) and the critic's
/// starting model (`ppo.value_model`; without it the critic starts from the
/// one reward model or the policy, both checked already). A resume compares
/// them by content.
fn models_read(config: &RlConfig) -> Result<Vec<ModelInput>> {
    let rewards = |key: &'static str, specs: &[RewardKind]| {
        specs
            .iter()
            .enumerate()
            .filter_map(move |(i, r)| match r {
                RewardKind::Model { path, .. } => Some((format!("{key}[{i}].path"), path.clone())),
                RewardKind::Rule { .. } | RewardKind::Sentiment { .. } => None,
            })
            .collect::<Vec<_>>()
    };
    let mut dirs = rewards("rewards", &config.rewards);
    if config.eval.enabled() {
        dirs.extend(rewards("eval.rewards", &config.eval.rewards));
    }
    if let Some(dir) = config.ppo.as_ref().and_then(|p| p.value_model.as_ref()) {
        dirs.push(("ppo.value_model".into(), dir.clone()));
    }
    Ok(dirs
        .iter()
        .map(|(key, dir)| ModelInput::read(key, dir))
        .collect::<std::result::Result<_, _>>()?)
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
    let weights = setup.weights();
    if let Some(saved) = run.save_last_with(&model, &weights, stop, extra)? {
        progress(Event::Checkpoint(&saved));
    }
    let c = &setup.config;
    let mut final_dir = None;
    if stop != StopReason::Interrupted {
        let model = run.final_weights(model);
        let dtype = c.final_dtype.into();
        final_dir = Some(run.write_final(model, &weights, setup.trainer, dtype, c.to_toml())?);
    }
    Ok(run.outcome(stop, final_dir, last_metrics))
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

pub(crate) fn floats<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

pub(crate) fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above")
}
