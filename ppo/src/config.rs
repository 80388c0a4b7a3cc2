//! `RlConfig`: what `alignkit grpo --config grpo.toml` and `alignkit rloo
//! --config rloo.toml` read — one config for both critic-free algorithms,
//! told apart by which table is present, `[grpo]` or `[rloo]`. Unknown keys
//! are errors; every default is in the `Default` impls below (TRL's
//! `GRPOConfig` / `RLOOConfig` defaults where they have one, except GRPO's β,
//! 0.04 here because the reward is often a learned model) and written out in
//! `RUN_DIR/config.toml`.
//!
//! ```toml
//! model = "runs/sft/final"          # the policy's starting point (HF directory)
//! output_dir = "runs/grpo"
//! learning_rate = 1e-6
//!
//! [grpo]                            # or [rloo]
//! num_generations = 8               # G completions per prompt
//! beta = 0.04                       # KL to the reference; 0: no reference at all
//! loss_type = "dapo"                # grpo | dr_grpo | dapo | bnpo
//! scale_rewards = "group"           # group | batch | none
//!
//! [data]
//! train_file = "prompts.jsonl"      # {"prompt": ...} per line, extra fields kept
//!
//! [rollout]
//! max_completion_length = 256
//! temperature = 1.0
//!
//! [[rewards]]
//! kind = "rule"
//! rule = { json_keys = ["name", "age"] }
//!
//! [train]                           # alignkit_train::LoopConfig
//! batch_size = 8                    # completions per micro-batch
//! grad_accum = 2                    # 16 completions = 2 prompts × G per step
//! max_steps = 200
//!
//! [lora]                            # absent: full fine-tune with a frozen reference copy
//! r = 16
//! ```

use std::path::{Path, PathBuf};

use alignkit_datasets::{
    EncodeConfig, Encoder, PlainText, TemplateKwargs, TrainOn, TruncationSide,
};
use alignkit_model::lora::LoraConfig;
pub use alignkit_train::FinalDtype;
use alignkit_train::{AdamWConfig, LoopConfig, RunSettings, ScheduleConfig};
use serde::{Deserialize, Serialize};

use crate::critic::CriticInit;
use crate::error::{Result, RlError};
use crate::gae::KlEstimator;
use crate::loss::{Clip, LossType, ScaleRewards};
use crate::reward::{self, RewardKind};
use crate::rollout::RolloutSettings;

/// The `[grpo]` table: Group Relative Policy Optimization (Shao et al. 2024).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoParams {
    /// G, completions per prompt (at least 2). TRL: 8.
    pub num_generations: usize,
    /// Weight of the per-token k3 KL to the reference; 0 runs no reference
    /// forward at all. TRL: 0.0 (for verifiable rewards); 0.04 here.
    pub beta: f64,
    /// Lower clip range ε. TRL: 0.2.
    pub epsilon: f64,
    /// Upper clip range; absent: `epsilon` (DAPO recommends 0.28).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_high: Option<f64>,
    /// μ, optimisation passes over each rollout. TRL: 1.
    pub num_iterations: usize,
    pub loss_type: LossType,
    pub scale_rewards: ScaleRewards,
}

impl Default for GrpoParams {
    fn default() -> Self {
        Self {
            num_generations: 8,
            beta: 0.04,
            epsilon: 0.2,
            epsilon_high: None,
            num_iterations: 1,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
        }
    }
}

/// The `[rloo]` table: REINFORCE Leave-One-Out (Ahmadian et al. 2024).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlooParams {
    /// G, completions per prompt (at least 2). TRL: 2.
    pub num_generations: usize,
    /// Weight of the sequence k1 KL subtracted from the reward; 0 runs no
    /// reference forward at all. TRL: 0.05.
    pub beta: f64,
    /// Lower clip range ε of the sequence ratio. TRL: 0.2.
    pub epsilon: f64,
    /// Upper clip range; absent: `epsilon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_high: Option<f64>,
    /// μ, optimisation passes over each rollout. TRL: 1.
    pub num_iterations: usize,
    /// Standardise the advantages over the batch. TRL: false.
    pub normalize_advantages: bool,
}

impl Default for RlooParams {
    fn default() -> Self {
        Self {
            num_generations: 2,
            beta: 0.05,
            epsilon: 0.2,
            epsilon_high: None,
            num_iterations: 1,
            normalize_advantages: false,
        }
    }
}

/// The `[ppo]` table: PPO with a learned critic (Schulman et al. 2017;
/// Ouyang et al. 2022), with the defaults of TRL's last `PPOConfig` and the
/// details of Huang et al. 2024, "The N+ Implementation Details of RLHF with
/// PPO".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoParams {
    /// Completions per prompt. TRL: 1.
    pub num_generations: usize,
    /// β of the per-token KL penalty in the reward (the adaptive controller's
    /// starting value when `adaptive_kl` is set). TRL: 0.05.
    pub kl_coef: f64,
    /// k1 (TRL's default) or k3.
    pub kl_estimator: KlEstimator,
    /// Ziegler et al.'s controller: move `kl_coef` so that the mean
    /// sequence KL approaches `target`; absent: `kl_coef` stays fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_kl: Option<AdaptiveKlConfig>,
    /// The critic's starting weights: a reward or value model directory
    /// (`*ForSequenceClassification`). Absent: the reward model of the
    /// `kind = "model"` reward when there is exactly one, else the policy's
    /// weights with a fresh value head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_model: Option<PathBuf>,
    /// The critic is a value head [1, C] on the policy's own backbone (TRL's
    /// old `AutoModelForCausalLMWithValueHead`) instead of a separate model:
    /// one forward pass gives log-probs and values, the backbone trains on
    /// the policy loss plus `vf_coef` × the value loss, and the head has its
    /// own AdamW at `critic_learning_rate`. Half the memory and compute of a
    /// separate critic; the value loss then also moves the policy. Default:
    /// false (a separate critic, as Huang et al. 2024 and OpenRLHF).
    pub shared_backbone: bool,
    /// The critic's peak learning rate; absent: `learning_rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critic_learning_rate: Option<f64>,
    /// Optimisation epochs over each rollout batch. TRL: 4.
    pub num_ppo_epochs: usize,
    /// Mini-batches (one optimizer update each) per epoch. TRL: 1.
    pub num_mini_batches: usize,
    /// ε of the clipped policy ratio. TRL: 0.2.
    pub cliprange: f64,
    /// How far a value may move from the rollout's value. TRL: 0.2.
    pub cliprange_value: f64,
    /// Weight of the value loss. TRL: 0.1.
    pub vf_coef: f64,
    /// GAE discount and λ. TRL: 1.0, 0.95.
    pub gamma: f64,
    pub lam: f64,
    /// Standardise the token rewards (mean kept) before GAE. TRL: false.
    pub whiten_rewards: bool,
}

impl Default for PpoParams {
    fn default() -> Self {
        Self {
            num_generations: 1,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            adaptive_kl: None,
            value_model: None,
            shared_backbone: false,
            critic_learning_rate: None,
            num_ppo_epochs: 4,
            num_mini_batches: 1,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lam: 0.95,
            whiten_rewards: false,
        }
    }
}

/// `[ppo.adaptive_kl]`: the KL target and the horizon (in samples) over
/// which the coefficient adapts. Ziegler et al. 2019: 6 and 10 000.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveKlConfig {
    pub target: f64,
    pub horizon: f64,
}

/// Which algorithm a config runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm<'a> {
    Grpo(&'a GrpoParams),
    Rloo(&'a RlooParams),
    Ppo(&'a PpoParams),
}

impl Algorithm<'_> {
    /// The trainer's name (command, checkpoints).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Grpo(_) => "grpo",
            Algorithm::Rloo(_) => "rloo",
            Algorithm::Ppo(_) => "ppo",
        }
    }

    pub fn num_generations(self) -> usize {
        match self {
            Algorithm::Grpo(p) => p.num_generations,
            Algorithm::Rloo(p) => p.num_generations,
            Algorithm::Ppo(p) => p.num_generations,
        }
    }

    /// The KL weight (PPO: the starting `kl_coef`).
    pub fn beta(self) -> f64 {
        match self {
            Algorithm::Grpo(p) => p.beta,
            Algorithm::Rloo(p) => p.beta,
            Algorithm::Ppo(p) => p.kl_coef,
        }
    }

    pub fn num_iterations(self) -> usize {
        match self {
            Algorithm::Grpo(p) => p.num_iterations,
            Algorithm::Rloo(p) => p.num_iterations,
            Algorithm::Ppo(p) => p.num_ppo_epochs,
        }
    }

    pub fn clip(self) -> Clip {
        let (low, high) = match self {
            Algorithm::Grpo(p) => (p.epsilon, p.epsilon_high),
            Algorithm::Rloo(p) => (p.epsilon, p.epsilon_high),
            Algorithm::Ppo(p) => (p.cliprange, None),
        };
        Clip {
            low,
            high: high.unwrap_or(low),
        }
    }
}

/// The `[data]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// JSONL: `{"prompt"}` per line, a string or a message list; other fields
    /// are kept for the rewards.
    pub train_file: PathBuf,
    /// Longest prompt in tokens (its end is kept). TRL: 512.
    pub max_prompt_len: usize,
    /// Treat string prompts as a user turn through the chat template.
    pub text_as_chat: bool,
    /// Variables the chat template is rendered with, as
    /// `apply_chat_template(..., **kwargs)` passes them (Qwen3:
    /// `{ enable_thinking = false }`).
    #[serde(skip_serializing_if = "TemplateKwargs::is_empty")]
    pub chat_template_kwargs: TemplateKwargs,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train_file: PathBuf::new(),
            max_prompt_len: 512,
            text_as_chat: false,
            chat_template_kwargs: TemplateKwargs::new(),
        }
    }
}

/// The `[rollout]` table: how completions are sampled and treated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// TRL: 512 (GRPO) — 256 here, for CPU runs.
    pub max_completion_length: usize,
    /// Sampling temperature; the trainer divides its logits by it too. TRL: 1.0.
    pub temperature: f64,
    /// 0 disables. TRL: 0.
    pub top_k: usize,
    /// 1 disables. TRL: 1.0.
    pub top_p: f64,
    /// Strings that end a completion (excluded from the text the rewards read).
    pub stop: Vec<String>,
    /// Leave completions cut at `max_completion_length` out of the loss.
    pub mask_truncated_completions: bool,
    /// Subtracted from the reward of a completion that did not end (the "EOS
    /// trick"); absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing_eos_penalty: Option<f64>,
    /// Rows per sampler call.
    pub generation_batch_size: usize,
    /// Append a sample of completions with their rewards to
    /// `RUN_DIR/completions.jsonl` every this many steps; 0: never.
    pub log_completions_steps: usize,
    /// Completions per such sample.
    pub num_completions_to_log: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            max_completion_length: 256,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            stop: Vec::new(),
            mask_truncated_completions: false,
            missing_eos_penalty: None,
            generation_batch_size: 64,
            log_completions_steps: 10,
            num_completions_to_log: 8,
        }
    }
}

/// The `[eval]` table: held-out prompts sampled by the policy at step 0 and
/// every `steps` steps (and at the last), each completion scored by the run's
/// rewards and its sequence KL to the reference estimated from the sample
/// (Σ_t log π − log π_ref, at the rollout temperature): one reward-versus-KL
/// point per evaluation in `RUN_DIR/eval.jsonl`. Changes no update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Prompts JSONL, as `data.train_file`; empty: no evaluation.
    pub file: PathBuf,
    /// Every this many steps; 0: no evaluation.
    pub steps: usize,
    /// Completions sampled per prompt.
    pub num_samples: usize,
    /// Absent: `rollout.max_completion_length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_length: Option<usize>,
    /// What scores the evaluations (`[[eval.rewards]]`, as `[[rewards]]`);
    /// empty: the run's rewards. A run trained on a learned reward model is
    /// judged here by the true reward.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<RewardKind>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            file: PathBuf::new(),
            steps: 0,
            num_samples: 1,
            max_completion_length: None,
            rewards: Vec::new(),
        }
    }
}

impl EvalConfig {
    pub fn enabled(&self) -> bool {
        self.steps > 0
    }
}

/// Online RL (GRPO, RLOO or PPO) configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// The policy's starting point and its reference: an HF model directory.
    pub model: PathBuf,
    /// The run directory.
    pub output_dir: PathBuf,
    /// Peak learning rate. TRL: 1e-6.
    pub learning_rate: f64,
    /// dtype of the exported `final/` weights.
    pub final_dtype: FinalDtype,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpo: Option<GrpoParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rloo: Option<RlooParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppo: Option<PpoParams>,
    pub data: DataConfig,
    pub rollout: RolloutConfig,
    pub rewards: Vec<RewardKind>,
    pub eval: EvalConfig,
    /// `batch_size` counts completions per micro-batch; `batch_size ×
    /// grad_accum` completions (a multiple of G) make one step.
    pub train: LoopConfig,
    pub optim: AdamWConfig,
    pub schedule: ScheduleConfig,
    /// Present: train a LoRA adapter; the reference is the policy with its
    /// adapters disabled. Absent: full fine-tune with a frozen reference copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            output_dir: PathBuf::new(),
            learning_rate: 1e-6,
            final_dtype: FinalDtype::F32,
            grpo: None,
            rloo: None,
            ppo: None,
            data: DataConfig::default(),
            rollout: RolloutConfig::default(),
            rewards: Vec::new(),
            eval: EvalConfig::default(),
            train: LoopConfig::default(),
            optim: AdamWConfig::default(),
            schedule: ScheduleConfig::default(),
            lora: None,
        }
    }
}

impl RlConfig {
    /// GRPO with every default.
    pub fn grpo() -> Self {
        Self {
            grpo: Some(GrpoParams::default()),
            ..Default::default()
        }
    }

    /// RLOO with every default.
    pub fn rloo() -> Self {
        Self {
            rloo: Some(RlooParams::default()),
            ..Default::default()
        }
    }

    /// PPO with every default.
    pub fn ppo() -> Self {
        Self {
            ppo: Some(PpoParams::default()),
            ..Default::default()
        }
    }

    /// Read a TOML file, then apply `overrides` (`key=value`, as given by
    /// `--set` or the CLI's flags). Unknown keys are errors.
    pub fn load(path: Option<&Path>, overrides: &[(String, String)]) -> Result<Self> {
        Ok(alignkit_train::load_config(path, overrides)?)
    }

    /// The algorithm of the `[grpo]`, `[rloo]` or `[ppo]` table.
    pub fn algorithm(&self) -> Result<Algorithm<'_>> {
        let mut tables = Vec::new();
        if let Some(g) = &self.grpo {
            tables.push(("grpo", Algorithm::Grpo(g)));
        }
        if let Some(r) = &self.rloo {
            tables.push(("rloo", Algorithm::Rloo(r)));
        }
        if let Some(p) = &self.ppo {
            tables.push(("ppo", Algorithm::Ppo(p)));
        }
        match tables.as_slice() {
            [(_, a)] => Ok(*a),
            [] => Err(self.error(
                "grpo",
                "no algorithm: add a [grpo], an [rloo] or a [ppo] table",
            )),
            [.., (last, _)] => {
                let names: Vec<String> = tables.iter().map(|(n, _)| format!("[{n}]")).collect();
                Err(self.error(last, format!("{}: keep one", names.join(" and "))))
            }
        }
    }

    fn error(&self, field: &str, message: impl Into<String>) -> RlError {
        RlError::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Completions per step: `train.batch_size × train.grad_accum`.
    pub fn completions_per_step(&self) -> usize {
        self.train.batch_size * self.train.grad_accum
    }

    /// Check every setting that can be checked without reading data or
    /// weights (the tokenizers and `config.json` of reward and value models
    /// are read: each must be a sequence classifier with the policy's
    /// tokenizer); paths must exist.
    pub fn validate(&self) -> Result<()> {
        // Before the shared checks, which would blame data.max_prompt_len
        // for the room a zero-length completion leaves.
        if self.rollout.max_completion_length == 0 {
            return Err(self.error("rollout.max_completion_length", "must be at least 1"));
        }
        RunSettings {
            model_dirs: &[("model", Some(self.model.as_path()))],
            output_dir: &self.output_dir,
            train_file: &self.data.train_file,
            validation_file: None,
            validation_split: 0.0,
            max_len: self.data.max_prompt_len + self.rollout.max_completion_length,
            max_prompt_len: Some(self.data.max_prompt_len),
            learning_rate: self.learning_rate,
            eval_steps: self.train.eval_steps,
        }
        .check()?;
        let algorithm = self.algorithm()?;
        let table = algorithm.name();
        let g = algorithm.num_generations();
        if let Algorithm::Ppo(p) = algorithm {
            self.validate_ppo(p)?;
        } else if g < 2 {
            return Err(self.error(
                &format!("{table}.num_generations"),
                format!("{g}: group-relative advantages need at least 2 completions per prompt"),
            ));
        }
        if !self.completions_per_step().is_multiple_of(g) {
            return Err(self.error(
                "train.batch_size",
                format!(
                    "batch_size × grad_accum = {} completions per step is not a multiple of {table}.num_generations = {g}",
                    self.completions_per_step()
                ),
            ));
        }
        if !(algorithm.beta().is_finite() && algorithm.beta() >= 0.0) {
            return Err(self.error(&format!("{table}.beta"), "must be a non-negative number"));
        }
        let clip = algorithm.clip();
        if !(clip.low.is_finite() && clip.low >= 0.0 && clip.low < 1.0) {
            return Err(self.error(
                &format!("{table}.epsilon"),
                format!("{} is not in [0, 1)", clip.low),
            ));
        }
        if !(clip.high.is_finite() && clip.high >= 0.0) {
            return Err(self.error(
                &format!("{table}.epsilon_high"),
                "must be a non-negative number",
            ));
        }
        if algorithm.num_iterations() == 0 {
            return Err(self.error(&format!("{table}.num_iterations"), "must be at least 1"));
        }
        let r = &self.rollout;
        if !(r.temperature.is_finite() && r.temperature > 0.0) {
            return Err(self.error(
                "rollout.temperature",
                format!("{}: sampling needs a positive temperature", r.temperature),
            ));
        }
        if !(r.top_p > 0.0 && r.top_p <= 1.0) {
            return Err(self.error("rollout.top_p", format!("{} is not in (0, 1]", r.top_p)));
        }
        if r.stop.iter().any(String::is_empty) {
            return Err(self.error(
                "rollout.stop",
                "an empty stop string would end every completion",
            ));
        }
        if r.missing_eos_penalty.is_some_and(|p| !p.is_finite()) {
            return Err(self.error("rollout.missing_eos_penalty", "must be a finite number"));
        }
        if r.generation_batch_size == 0 {
            return Err(self.error("rollout.generation_batch_size", "must be at least 1"));
        }
        if self.eval.enabled() {
            if !self.eval.file.is_file() {
                return Err(self.error(
                    "eval.file",
                    format!("{}: no such file", self.eval.file.display()),
                ));
            }
            if self.eval.num_samples == 0 {
                return Err(self.error("eval.num_samples", "must be at least 1"));
            }
            if self.eval.max_completion_length == Some(0) {
                return Err(self.error("eval.max_completion_length", "must be at least 1"));
            }
            if !self.eval.rewards.is_empty() {
                let tokenizer = alignkit_datasets::Tokenizer::from_dir(&self.model)?;
                reward::validate(&self.eval.rewards, Some(&tokenizer)).map_err(|e| match e {
                    RlError::Config { field, message } => RlError::Config {
                        field: format!("eval.{field}"),
                        message,
                    },
                    other => other,
                })?;
            }
        }
        if self.train.eval_steps > 0 {
            return Err(self.error(
                "train.eval_steps",
                "online RL has no validation loss; leave it 0 (held-out prompts: the [eval] table)",
            ));
        }
        self.train.validate()?;
        self.optim.validate()?;
        self.schedule.validate()?;
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        let tokenizer = alignkit_datasets::Tokenizer::from_dir(&self.model)?;
        reward::validate(&self.rewards, Some(&tokenizer))?;
        if let Algorithm::Ppo(p) = algorithm {
            // The critic's model: a reward or value model with the policy's tokenizer.
            CriticInit::resolve(self, p)?;
        }
        Ok(())
    }

    /// PPO's own settings.
    fn validate_ppo(&self, p: &PpoParams) -> Result<()> {
        if p.num_generations == 0 {
            return Err(self.error("ppo.num_generations", "must be at least 1"));
        }
        if !(p.kl_coef.is_finite() && p.kl_coef >= 0.0) {
            return Err(self.error("ppo.kl_coef", "must be a non-negative number"));
        }
        if let Some(a) = &p.adaptive_kl {
            if !(a.target.is_finite() && a.target > 0.0) {
                return Err(self.error("ppo.adaptive_kl.target", "must be a positive number"));
            }
            if !(a.horizon.is_finite() && a.horizon > 0.0) {
                return Err(self.error("ppo.adaptive_kl.horizon", "must be a positive number"));
            }
            if p.kl_coef == 0.0 {
                return Err(self.error(
                    "ppo.kl_coef",
                    "the adaptive controller scales kl_coef, which must then be positive",
                ));
            }
        }
        if p.shared_backbone && p.value_model.is_some() {
            return Err(self.error(
                "ppo.value_model",
                "a critic on the policy's backbone (ppo.shared_backbone = true) starts from the policy with a fresh value head; leave ppo.value_model out",
            ));
        }
        if let Some(lr) = p.critic_learning_rate
            && !(lr.is_finite() && lr > 0.0)
        {
            return Err(self.error("ppo.critic_learning_rate", "must be a positive number"));
        }
        if p.num_ppo_epochs == 0 {
            return Err(self.error("ppo.num_ppo_epochs", "must be at least 1"));
        }
        let per_step = self.completions_per_step();
        if p.num_mini_batches == 0 || !per_step.is_multiple_of(p.num_mini_batches) {
            return Err(self.error(
                "ppo.num_mini_batches",
                format!(
                    "{}: the {per_step} completions of a step (train.batch_size × train.grad_accum) do not split into that many equal mini-batches",
                    p.num_mini_batches
                ),
            ));
        }
        let mini = per_step / p.num_mini_batches;
        if !mini.is_multiple_of(self.train.batch_size) {
            return Err(self.error(
                "ppo.num_mini_batches",
                format!(
                    "{}: a mini-batch of {mini} completions is not a whole number of micro-batches of train.batch_size = {}",
                    p.num_mini_batches, self.train.batch_size
                ),
            ));
        }
        for (key, v) in [
            ("ppo.cliprange", p.cliprange),
            ("ppo.cliprange_value", p.cliprange_value),
            ("ppo.vf_coef", p.vf_coef),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(self.error(key, "must be a positive number"));
            }
        }
        if p.cliprange >= 1.0 {
            return Err(self.error("ppo.cliprange", format!("{} is not in (0, 1)", p.cliprange)));
        }
        for (key, v) in [("ppo.gamma", p.gamma), ("ppo.lam", p.lam)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(self.error(key, format!("{v} is not in [0, 1]")));
            }
        }
        Ok(())
    }

    /// The same config with every path absolute (so a run resumes from any
    /// working directory).
    pub fn with_absolute_paths(&self) -> Result<Self> {
        let abs = |p: &Path| {
            std::path::absolute(p).map_err(|e| RlError::Io {
                path: p.to_path_buf(),
                source: e,
            })
        };
        let mut c = self.clone();
        c.model = abs(&self.model)?;
        c.output_dir = abs(&self.output_dir)?;
        c.data.train_file = abs(&self.data.train_file)?;
        if self.eval.enabled() {
            c.eval.file = abs(&self.eval.file)?;
        }
        for r in &mut c.eval.rewards {
            if let RewardKind::Model { path, .. } = r {
                *path = abs(path)?;
            }
        }
        for r in &mut c.rewards {
            if let RewardKind::Model { path, .. } = r {
                *path = abs(path)?;
            }
        }
        if let Some(p) = &mut c.ppo
            && let Some(v) = &mut p.value_model
        {
            *v = abs(v)?;
        }
        Ok(c)
    }

    /// The resolved config as TOML, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("RlConfig serializes to TOML")
    }

    /// The tokenizer and chat template of the policy, cutting prompts to
    /// `data.max_prompt_len` (their end is kept).
    pub fn encoder(&self) -> Result<Encoder> {
        Ok(Encoder::from_dir(
            &self.model,
            EncodeConfig {
                max_len: None,
                max_prompt_len: Some(self.data.max_prompt_len),
                truncation: TruncationSide::KeepEnd,
                train_on: TrainOn::Completion,
                plain_text: if self.data.text_as_chat {
                    PlainText::Chat
                } else {
                    PlainText::Raw
                },
                template_kwargs: self.data.chat_template_kwargs.clone(),
                // Only prompts are encoded here; completions are sampled.
                ..EncodeConfig::default()
            },
        )?)
    }

    /// The sampling settings of the rollouts.
    pub fn rollout_settings(&self) -> Result<RolloutSettings> {
        Ok(RolloutSettings {
            num_generations: self.algorithm()?.num_generations(),
            max_completion_length: self.rollout.max_completion_length,
            temperature: self.rollout.temperature as f32,
            top_k: self.rollout.top_k,
            top_p: self.rollout.top_p as f32,
            stop: self.rollout.stop.clone(),
            generation_batch_size: self.rollout.generation_batch_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_config_round_trips_with_all_defaults() {
        for mut c in [RlConfig::grpo(), RlConfig::rloo()] {
            c.model = "m".into();
            c.output_dir = "o".into();
            c.rewards = vec![
                RewardKind::Rule {
                    rule: alignkit_eval::Rule::JsonKeys(vec!["a".into()]),
                    name: None,
                    weight: 1.0,
                },
                RewardKind::Sentiment {
                    name: Some("vader".into()),
                    weight: 0.5,
                },
            ];
            c.lora = Some(LoraConfig::default());
            let text = c.to_toml();
            assert!(text.contains("num_generations = "), "{text}");
            assert!(text.contains("kind = \"sentiment\""), "{text}");
            let back: RlConfig = toml::from_str(&text).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn defaults_follow_trl_per_algorithm() {
        let g = RlConfig::grpo();
        let a = g.algorithm().unwrap();
        assert_eq!((a.name(), a.num_generations(), a.beta()), ("grpo", 8, 0.04));
        let r = RlConfig::rloo();
        let a = r.algorithm().unwrap();
        assert_eq!((a.name(), a.num_generations(), a.beta()), ("rloo", 2, 0.05));
        assert_eq!(
            a.clip(),
            Clip {
                low: 0.2,
                high: 0.2
            }
        );
        let err = RlConfig::default().algorithm().unwrap_err().to_string();
        assert!(err.starts_with("config: `grpo`: no algorithm"), "{err}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_one_line_errors_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grpo.toml");
        std::fs::write(
            &path,
            "model = \"m\"\n[grpo]\nbeta = 0.1\nnum_generation = 4\n",
        )
        .unwrap();
        let err = RlConfig::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("grpo.toml:4:1:"), "{err}");
        assert!(err.contains("unknown field `num_generation`"), "{err}");
        std::fs::write(
            &path,
            "model = \"m\"\n[grpo]\n[[rewards]]\nkind = \"length\"\n",
        )
        .unwrap();
        let err = RlConfig::load(Some(&path), &[]).unwrap_err().to_string();
        assert!(err.contains("grpo.toml:"), "{err}");
        assert!(err.contains("unknown variant `length`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
