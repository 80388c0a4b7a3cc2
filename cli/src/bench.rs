//! `alignkit bench`: forward, training step (forward + backward + AdamW) and
//! greedy decode speed, full / LoRA SFT and DPO steps as the trainers run
//! them, and batched sampled rollouts as GRPO draws them, optionally next to
//! PyTorch measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use alignkit_datasets::{Batch, PaddingSide, PreferenceExample, Sequence, collate, collate_pairs};
use alignkit_dpo::{DpoConfig, DpoObjective, Pair, completion_logps, dpo_loss, lora_reference};
use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::lora::{LoraConfig, TargetModules};
use alignkit_model::mask::attention_mask;
use alignkit_model::recompute::Granularity;
use alignkit_model::{
    ForwardInput, LlamaConfig, LlamaForCausalLM, SamplingConfig, generate, load_model, sample,
};
use alignkit_ppo::rollout::sample_seed;
use alignkit_sft::SftConfig;
use alignkit_sft::loss::{batch_loss, trained_positions};
use alignkit_train::weights::load_trainable;
use alignkit_train::{AdamW, Gradients, trainable_count};
use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::backend::{DeviceSpec, Task, device_memory_mb, dispatch};
use crate::common::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Rows per batch (for DPO: chosen + rejected rows, so batch / 2 pairs).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per row (for DPO: the first half is the prompt).
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Timed repetitions of each forward or step (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Tokens to decode greedily at batch 1.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Rollout rows: G = 8 samples of each prompt (16 = 2 prompts × 8).
    #[arg(long, default_value_t = 16)]
    pub rollout_rows: usize,
    /// Tokens of the longest rollout prompt; the others are shorter (left-padded).
    #[arg(long, default_value_t = 64)]
    pub rollout_prompt: usize,
    /// Tokens sampled for every rollout row (no EOS: each row gets all of them).
    #[arg(long, default_value_t = 64)]
    pub rollout_tokens: usize,
    /// Run only these measurements (comma-separated); all when absent.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Also run this PyTorch script on the same model and shapes and print ratios.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Random weights for this config.json instead of a model directory (for
    /// example Llama-3.2-1B's published config): speed and memory need no
    /// pretrained weights. Token ids are random below its vocab_size.
    #[arg(long, conflicts_with = "model")]
    pub model_config: Option<PathBuf>,
    /// Recompute each decoder layer in the backward pass of the SFT and DPO
    /// steps (`train.gradient_checkpointing`); PyTorch's side calls
    /// `gradient_checkpointing_enable()`.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// With --gradient-checkpointing, what each layer keeps
    /// (`train.recompute_granularity`): its input only, or also its
    /// projections' outputs. PyTorch's side, selective: its checkpoint keeps
    /// every matmul's output (`create_selective_checkpoint_contexts`).
    #[arg(
        long,
        value_enum,
        default_value = "full",
        requires = "gradient_checkpointing"
    )]
    pub recompute_granularity: Recompute,
}

/// [`BenchArgs::recompute_granularity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Recompute {
    Full,
    Selective,
}

impl Recompute {
    fn granularity(self) -> Granularity {
        match self {
            Recompute::Full => Granularity::Full,
            Recompute::Selective => Granularity::Selective,
        }
    }
}

/// Where the benchmarked weights come from.
enum Source {
    Dir(PathBuf),
    /// Random weights (N(0, 0.02), as `LlamaForCausalLM::init`) for the
    /// config.json `file`.
    Random {
        file: PathBuf,
        config: Box<LlamaConfig>,
    },
}

impl Source {
    fn of(args: &BenchArgs) -> Result<Self> {
        Ok(match &args.model_config {
            Some(file) => Source::Random {
                file: file.clone(),
                config: Box::new(LlamaConfig::load(file)?),
            },
            None => Source::Dir(args.model.dir()?),
        })
    }

    fn config(&self) -> Result<LlamaConfig> {
        match self {
            Source::Dir(dir) => Ok(LlamaConfig::load(&dir.join("config.json"))?),
            Source::Random { config, .. } => Ok(config.as_ref().clone()),
        }
    }

    fn model<B: Backend>(&self, device: &B::Device) -> Result<LlamaForCausalLM<B>> {
        match self {
            Source::Dir(dir) => Ok(load_model::<B>(dir, device)?.1),
            Source::Random { config, .. } => Ok(LlamaForCausalLM::init(config, device)),
        }
    }

    /// The model a trainer would train: fresh adapters on a frozen base under
    /// LoRA, every weight otherwise; layers recomputed in the backward pass
    /// when `checkpointing` (keeping what it says).
    fn trainable<B: AutodiffBackend>(
        &self,
        lora: Option<&LoraConfig>,
        checkpointing: Option<Granularity>,
        device: &B::Device,
    ) -> Result<LlamaForCausalLM<B>> {
        let mut model = match (self, lora) {
            (Source::Dir(dir), lora) => load_trainable::<B>(dir, lora, None, 0, device)?.1,
            (Source::Random { config, .. }, None) => LlamaForCausalLM::init(config, device),
            (Source::Random { config, .. }, Some(lora)) => alignkit_model::lora::attach(
                LlamaForCausalLM::init(config, device).no_grad(),
                lora,
                0,
                device,
            )?,
        };
        if let Some(granularity) = checkpointing {
            alignkit_model::recompute::turn_on(&mut model.model, granularity)
                .map_err(|why| anyhow::anyhow!("--gradient-checkpointing {why}"))?;
        }
        Ok(model)
    }
}

/// Start a new peak-RSS measurement of this process (Linux: VmHWM is reset
/// by writing 5 to clear_refs); elsewhere a no-op.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident memory since [`reset_peak_rss`], in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One measurement of the bench; `--only` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Section {
    /// Next-token NLL of the batch, no autodiff.
    Forward,
    /// Forward + backward + burn's own AdamW on every weight.
    TrainStep,
    /// Greedy decode at batch 1 with the KV cache.
    Decode,
    /// The SFT trainer's step, every weight trained.
    SftFull,
    /// The SFT trainer's step, LoRA adapters on a frozen base.
    SftLora,
    /// The DPO trainer's step, every weight trained, frozen reference copy.
    DpoFull,
    /// The DPO trainer's step, LoRA; reference = the policy without adapters.
    DpoLora,
    /// GRPO-style rollouts: P prompts × G sampled completions in one batch.
    Rollout,
}

impl Section {
    /// The name `--only` takes here and in the PyTorch script.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Forward => "forward",
            Section::TrainStep => "train_step",
            Section::Decode => "decode",
            Section::SftFull => "sft_full",
            Section::SftLora => "sft_lora",
            Section::DpoFull => "dpo_full",
            Section::DpoLora => "dpo_lora",
            Section::Rollout => "rollout",
        }
    }
}

/// The LoRA setup both sides benchmark: PEFT's
/// `LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0)`.
fn bench_lora() -> LoraConfig {
    LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        target_modules: TargetModules::AllLinear,
        rslora: false,
    }
}

/// Seconds per optimizer step of a trainer's step, and what it trains.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub step_s: f64,
    /// Batch tokens (every row, prompt included) per second of step.
    pub tokens_per_s: f64,
    pub trainable_params: usize,
    /// Peak resident memory of the host process during the section (model
    /// load included), MB. Sections of one run share the process, and freed
    /// memory is not always returned to the system: measure memory with one
    /// section per run (`--only`). On a GPU this is host memory, not the
    /// device's.
    #[serde(default)]
    pub peak_rss_mb: Option<f64>,
    /// On a GPU: the most memory the allocator held on the device after a
    /// step of the section, MB (alignkit: the cubecl pool's reserved pages,
    /// emptied at the section's start; PyTorch: `max_memory_reserved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_mb: Option<f64>,
}

/// One batch of sampled rollouts, prefill included.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutResult {
    /// Seconds per batch.
    pub rollout_s: f64,
    /// Generated tokens (rows × new tokens) per second.
    pub tokens_per_s: f64,
    pub rows: usize,
    /// Tokens generated per batch, summed over its rows.
    pub generated_tokens: usize,
    /// On a GPU: as [`StepResult::device_memory_mb`] (the KV cache included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_memory_mb: Option<f64>,
}

/// The measurements that ran; the others are `null`. Seconds are medians.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BenchResult {
    pub forward_s: Option<f64>,
    pub train_step_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub sft_full: Option<StepResult>,
    pub sft_lora: Option<StepResult>,
    pub dpo_full: Option<StepResult>,
    pub dpo_lora: Option<StepResult>,
    pub rollout: Option<RolloutResult>,
    /// alignkit on the CPU only: what runs the large f32 products (a system
    /// OpenBLAS, or the `gemm` crate and why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_matmul: Option<String>,
    /// PyTorch side only: its version and intra-op threads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Records the time since `start` unless `i` is the warm-up (0).
fn record(times: &mut Vec<f64>, i: usize, start: Instant) {
    if i > 0 {
        times.push(start.elapsed().as_secs_f64());
    }
}

fn sync<B: Backend>(device: &B::Device) -> Result<()> {
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn batch_input<B: Backend>(ids: &[i64], b: usize, t: usize, device: &B::Device) -> ForwardInput<B> {
    let positions: Vec<i64> = (0..b).flat_map(|_| 0..t as i64).collect();
    ForwardInput {
        input_ids: Tensor::from_data(TensorData::new(ids.to_vec(), [b, t]), device),
        positions: Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, t]), device),
        mask: attention_mask::<B>(&vec![vec![true; t]; b], t, None, device),
    }
}

/// Mean next-token negative log-likelihood over the batch.
fn nll<B: Backend>(model: &LlamaForCausalLM<B>, input: ForwardInput<B>) -> Tensor<B, 1> {
    sequence_logprobs(model, input).mean().neg()
}

/// `b` rows of `t` random tokens, every token after the first trained (an SFT
/// `{"text"}` batch without padding).
fn sft_batch(ids: &[i64], b: usize, t: usize) -> Batch {
    let rows: Vec<Sequence> = ids
        .chunks(t)
        .take(b)
        .map(|row| Sequence {
            input_ids: row.iter().map(|&x| x as u32).collect(),
            loss_mask: vec![true; t],
        })
        .collect();
    collate(&rows, 0, PaddingSide::Right)
}

/// `b / 2` pairs: rows 0..b/2 of `ids` are prompt + chosen, rows b/2..b prompt
/// + rejected, with the prompt (the first `t / 2` tokens) shared by the pair.
fn dpo_batch(ids: &[i64], b: usize, t: usize) -> Batch {
    let n = b / 2;
    let p = t / 2;
    let row =
        |r: usize| -> Vec<u32> { ids[r * t..(r + 1) * t].iter().map(|&x| x as u32).collect() };
    let pairs: Vec<PreferenceExample> = (0..n)
        .map(|i| {
            let chosen = row(i);
            let rejected = row(n + i);
            PreferenceExample {
                prompt_ids: chosen[..p].to_vec(),
                chosen_ids: chosen[p..].to_vec(),
                rejected_ids: rejected[p..].to_vec(),
                chosen_has_eos: false,
                rejected_has_eos: false,
                chosen_truncation: Default::default(),
                rejected_truncation: Default::default(),
            }
        })
        .collect();
    collate_pairs(&pairs, 0, PaddingSide::Right)
}

/// The SFT trainer's step (`alignkit_sft::train`, steps 2 and 3, one
/// micro-batch): `batch_loss` over the trained tokens, `Gradients` of the
/// trainable parameters, global-norm clip, `alignkit_train` AdamW.
fn sft_steps<B: AutodiffBackend>(
    source: &Source,
    lora: Option<&LoraConfig>,
    checkpointing: Option<Granularity>,
    batch: &Batch,
    steps: usize,
    device: &B::Device,
) -> Result<StepResult> {
    reset_peak_rss();
    let mut device_mb = DeviceMemory::start::<B>(device)?;
    let config = SftConfig::default();
    let mut model = source.trainable::<B>(lora, checkpointing, device)?;
    let trainable_params = trainable_count::<B, _>(&model);
    let mut opt = AdamW::<B::InnerBackend>::new(config.optim.clone());
    let norm = trained_positions(batch).0.len().max(1) as f64;
    let mut times = Vec::new();
    for i in 0..=steps {
        let start = Instant::now();
        let mut grads = Gradients::<B::InnerBackend>::new();
        let (loss, _) = batch_loss(&model, batch, false, norm, device);
        grads.backward(&model, loss);
        grads.clip_global_norm(config.train.max_grad_norm);
        model = opt.step::<B, _>(model, grads, config.learning_rate);
        sync::<B>(device)?;
        record(&mut times, i, start);
        device_mb.sample(device);
    }
    Ok(step_result(times, batch, trainable_params, device_mb))
}

/// The DPO trainer's step (`alignkit_dpo::train`, steps 2 and 3, one
/// micro-batch, reference run on every batch): the policy's completion
/// log-probs of chosen and rejected in one forward, the reference's without
/// gradients (full: a frozen copy; LoRA: the policy with adapters removed),
/// the sigmoid loss (β from `DpoConfig`'s defaults, 0.1), clip, AdamW.
fn dpo_steps<B: AutodiffBackend>(
    source: &Source,
    lora: Option<&LoraConfig>,
    checkpointing: Option<Granularity>,
    batch: &Batch,
    steps: usize,
    device: &B::Device,
) -> Result<StepResult> {
    reset_peak_rss();
    let mut device_mb = DeviceMemory::start::<B>(device)?;
    let config = DpoConfig::default();
    let objective = DpoObjective::new(
        config.loss_type,
        config.beta,
        config.label_smoothing,
        config.rpo_alpha,
    )?;
    let mut model = source.trainable::<B>(lora, checkpointing, device)?;
    let frozen = match lora {
        None => Some(source.model::<B::InnerBackend>(device)?),
        Some(_) => None,
    };
    let trainable_params = trainable_count::<B, _>(&model);
    let mut opt = AdamW::<B::InnerBackend>::new(config.optim.clone());
    let mut times = Vec::new();
    for i in 0..=steps {
        let start = Instant::now();
        let mut grads = Gradients::<B::InnerBackend>::new();
        let policy = completion_logps(&model, batch, device);
        let reference = match &frozen {
            Some(m) => completion_logps(m, batch, device).logps,
            None => completion_logps(&lora_reference(&model), batch, device).logps,
        };
        let reference = Pair::new(
            Tensor::from_inner(reference.chosen),
            Tensor::from_inner(reference.rejected),
        );
        let out = dpo_loss(&objective, &policy.logps, &reference, &policy.tokens);
        grads.backward(&model, out.loss());
        grads.clip_global_norm(config.train.max_grad_norm);
        model = opt.step::<B, _>(model, grads, config.learning_rate);
        sync::<B>(device)?;
        record(&mut times, i, start);
        device_mb.sample(device);
    }
    Ok(step_result(times, batch, trainable_params, device_mb))
}

fn step_result(
    times: Vec<f64>,
    batch: &Batch,
    trainable_params: usize,
    device_mb: DeviceMemory,
) -> StepResult {
    let step_s = median(times);
    StepResult {
        step_s,
        tokens_per_s: (batch.batch_size * batch.seq_len) as f64 / step_s,
        trainable_params,
        peak_rss_mb: peak_rss_mb(),
        device_memory_mb: device_mb.peak,
    }
}

/// The GPU allocator's peak over a section's steps ([`device_memory_mb`]).
struct DeviceMemory {
    peak: Option<f64>,
}

impl DeviceMemory {
    /// Empty the pool of what earlier sections left, then read it.
    fn start<B: Backend>(device: &B::Device) -> Result<Self> {
        sync::<B>(device)?;
        B::memory_cleanup(device);
        Ok(Self {
            peak: device_memory_mb(device),
        })
    }

    fn sample<D: 'static>(&mut self, device: &D) {
        if let Some(mb) = device_memory_mb(device) {
            self.peak = Some(self.peak.map_or(mb, |p| p.max(mb)));
        }
    }
}

/// Completions sampled per prompt in the rollout batch (GRPO's G).
const ROLLOUT_GROUP: usize = 8;

/// The rollout batch's prompts, one per row: row r samples prompt r / G, and
/// prompt p has `len - (p % 4) * len / 8` random tokens (64, 56, 48, 40, ...),
/// so shorter rows are left-padded. scripts/bench_torch.py builds the same shape.
fn rollout_prompts(rows: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(1);
    let prompts: Vec<Vec<u32>> = (0..rows.div_ceil(ROLLOUT_GROUP))
        .map(|p| {
            (0..len - (p % 4) * len / 8)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect();
    (0..rows)
        .map(|r| prompts[r / ROLLOUT_GROUP].clone())
        .collect()
}

/// Sampled rollouts as GRPO's step 1 draws them (`alignkit_ppo::rollout`):
/// the inference model prepared for decoding, one `sample` call over every
/// row, temperature 1 without top-k/top-p, each row with its own seed, each
/// token's log-prob recorded. No EOS and no stop condition, so every row
/// generates `tokens`.
fn rollout_steps<B: Backend>(
    source: &Source,
    prompts: &[Vec<u32>],
    tokens: usize,
    steps: usize,
    device: &B::Device,
) -> Result<RolloutResult> {
    let mut device_mb = DeviceMemory::start::<B>(device)?;
    let model = source.model::<B>(device)?.for_decoding();
    let config = SamplingConfig {
        max_new_tokens: tokens,
        temperature: 1.0,
        ..SamplingConfig::default()
    };
    let mut times = Vec::new();
    let mut generated_tokens = 0;
    for i in 0..=steps {
        let seeds: Vec<u64> = (0..prompts.len())
            .map(|r| sample_seed(0, i, r / ROLLOUT_GROUP, r % ROLLOUT_GROUP, ROLLOUT_GROUP))
            .collect();
        let start = Instant::now();
        let out = sample(
            &model,
            prompts,
            &[],
            0,
            &config,
            &seeds,
            |_, _| false,
            device,
        )?;
        record(&mut times, i, start);
        device_mb.sample(device);
        generated_tokens = out.iter().map(|s| s.generation.tokens.len()).sum();
    }
    let rollout_s = median(times);
    Ok(RolloutResult {
        rollout_s,
        tokens_per_s: generated_tokens as f64 / rollout_s,
        rows: prompts.len(),
        generated_tokens,
        device_memory_mb: device_mb.peak,
    })
}

impl BenchArgs {
    fn runs(&self, section: Section) -> bool {
        self.only.is_empty() || self.only.contains(&section)
    }

    /// The forward, burn-AdamW step and decode measurements on one model.
    fn core<B: AutodiffBackend>(
        &self,
        source: &Source,
        ids: &[i64],
        device: &B::Device,
        out: &mut BenchResult,
    ) -> Result<()> {
        let model = source.model::<B>(device)?;
        let (b, t) = (self.batch, self.seq);

        // 1. forward (no autodiff)
        if self.runs(Section::Forward) {
            let inference = model.valid();
            let mut times = Vec::new();
            for i in 0..=self.steps {
                let start = Instant::now();
                let loss = nll(&inference, batch_input(ids, b, t, device));
                let _ = loss.into_scalar();
                record(&mut times, i, start);
            }
            out.forward_s = Some(median(times));
        }

        // 2. training step: forward + backward + burn's AdamW
        let mut model = model;
        if self.runs(Section::TrainStep) {
            let mut optim = AdamWConfig::new()
                .with_weight_decay(0.0)
                .init::<B, LlamaForCausalLM<B>>();
            let mut times = Vec::new();
            for i in 0..=self.steps {
                let start = Instant::now();
                let loss = nll(&model, batch_input(ids, b, t, device));
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(1e-5, model, grads);
                sync::<B>(device)?;
                record(&mut times, i, start);
            }
            out.train_step_s = Some(median(times));
        }

        // 3. greedy decode at batch 1, past a 16-token prompt
        if self.runs(Section::Decode) {
            let inference = model.valid().for_decoding();
            let prompt: Vec<u32> = ids[..16.min(t)].iter().map(|&x| x as u32).collect();
            let sampling = SamplingConfig {
                max_new_tokens: self.decode_tokens,
                ..SamplingConfig::default()
            };
            let start = Instant::now();
            let generated = generate(
                &inference,
                &[prompt],
                &[],
                0,
                &sampling,
                |_, _| false,
                device,
            )?;
            out.decode_tokens_per_s =
                Some(generated[0].tokens.len() as f64 / start.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

impl Task for BenchArgs {
    type Output = BenchResult;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<BenchResult> {
        let source = Source::of(&self)?;
        let config = source.config()?;
        let (b, t) = (self.batch, self.seq);
        if b == 0 || t < 2 || self.steps == 0 {
            bail!("--batch and --steps must be positive and --seq at least 2");
        }
        let dpo = self.runs(Section::DpoFull) || self.runs(Section::DpoLora);
        if dpo && (b % 2 != 0 || t < 4) {
            bail!("DPO needs an even --batch (chosen + rejected rows) and --seq at least 4");
        }
        let rollout = self.runs(Section::Rollout);
        if rollout
            && (self.rollout_rows == 0 || self.rollout_prompt == 0 || self.rollout_tokens == 0)
        {
            bail!("--rollout-rows, --rollout-prompt and --rollout-tokens must be positive");
        }
        let mut rng = StdRng::seed_from_u64(0);
        let ids: Vec<i64> = (0..b * t)
            .map(|_| rng.random_range(0..config.vocab_size as i64))
            .collect();

        let mut out = BenchResult::default();
        if [Section::Forward, Section::TrainStep, Section::Decode]
            .iter()
            .any(|&s| self.runs(s))
        {
            self.core::<B>(&source, &ids, &device, &mut out)?;
        }
        let lora = bench_lora();
        let sft = sft_batch(&ids, b, t);
        let ckpt = self
            .gradient_checkpointing
            .then(|| self.recompute_granularity.granularity());
        if self.runs(Section::SftFull) {
            out.sft_full = Some(sft_steps::<B>(
                &source, None, ckpt, &sft, self.steps, &device,
            )?);
        }
        if self.runs(Section::SftLora) {
            out.sft_lora = Some(sft_steps::<B>(
                &source,
                Some(&lora),
                ckpt,
                &sft,
                self.steps,
                &device,
            )?);
        }
        if dpo {
            let pairs = dpo_batch(&ids, b, t);
            if self.runs(Section::DpoFull) {
                out.dpo_full = Some(dpo_steps::<B>(
                    &source, None, ckpt, &pairs, self.steps, &device,
                )?);
            }
            if self.runs(Section::DpoLora) {
                out.dpo_lora = Some(dpo_steps::<B>(
                    &source,
                    Some(&lora),
                    ckpt,
                    &pairs,
                    self.steps,
                    &device,
                )?);
            }
        }
        if rollout {
            let prompts =
                rollout_prompts(self.rollout_rows, self.rollout_prompt, config.vocab_size);
            out.rollout = Some(rollout_steps::<B::InnerBackend>(
                &source,
                &prompts,
                self.rollout_tokens,
                self.steps,
                &device,
            )?);
        }
        Ok(out)
    }
}

/// The arguments of the PyTorch script: same model, shapes and sections.
fn torch_args(source: &Source, args: &BenchArgs) -> Vec<String> {
    let mut out: Vec<String> = match source {
        Source::Dir(dir) => vec!["--model".into(), dir.display().to_string()],
        Source::Random { file, .. } => vec!["--model-config".into(), file.display().to_string()],
    };
    if args.gradient_checkpointing {
        out.push("--gradient-checkpointing".into());
        if args.recompute_granularity == Recompute::Selective {
            out.extend(["--recompute-granularity".into(), "selective".into()]);
        }
    }
    if let DeviceSpec::Cuda(index) = args.model.device {
        out.extend(["--device".into(), format!("cuda:{index}")]);
    }
    out.extend([
        "--batch".into(),
        args.batch.to_string(),
        "--seq".into(),
        args.seq.to_string(),
        "--steps".into(),
        args.steps.to_string(),
        "--decode-tokens".into(),
        args.decode_tokens.to_string(),
        "--rollout-rows".into(),
        args.rollout_rows.to_string(),
        "--rollout-prompt".into(),
        args.rollout_prompt.to_string(),
        "--rollout-tokens".into(),
        args.rollout_tokens.to_string(),
    ]);
    if !args.only.is_empty() {
        let names: Vec<&str> = args.only.iter().map(|s| s.as_str()).collect();
        out.push("--only".into());
        out.push(names.join(","));
    }
    out
}

fn run_torch(script: &Path, args: &[String]) -> Result<BenchResult> {
    let output = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run python3 {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .with_context(|| format!("unexpected output from {}: {last}", script.display()))
}

/// One table row; `time` says whether the unit is a time (lower is better) or
/// a rate, so that the ratio is always alignkit time / PyTorch time.
fn row(name: &str, ours: Option<f64>, theirs: Option<f64>, time: bool) {
    let Some(a) = ours else { return };
    let (pt, ratio) = match theirs {
        Some(b) => (
            format!("{b:.3}"),
            format!("{:.2}", if time { a / b } else { b / a }),
        ),
        None => ("-".into(), "-".into()),
    };
    println!("{name:<30} {:>12} {pt:>12} {ratio:>8}", format!("{a:.3}"));
}

pub fn run(args: BenchArgs) -> Result<()> {
    let json = args.json;
    let device = args.model.device;
    let shape = format!("batch {} x {} tokens", args.batch, args.seq);
    let rollout_shape = format!(
        "rollout: {} rows ({} per prompt), prompts of up to {} tokens, {} sampled tokens, temperature 1",
        args.rollout_rows, ROLLOUT_GROUP, args.rollout_prompt, args.rollout_tokens
    );
    let torch = args
        .torch
        .clone()
        .map(|script| Ok::<_, anyhow::Error>((script, torch_args(&Source::of(&args)?, &args))))
        .transpose()?;
    let mut ours = dispatch(device, args)?;
    if device == DeviceSpec::Cpu {
        ours.cpu_matmul = Some(alignkit_model::fused::blas::describe());
    }
    let theirs = torch
        .map(|(script, a)| run_torch(&script, &a))
        .transpose()?;
    if json {
        println!(
            "{}",
            serde_json::json!({"alignkit": ours, "pytorch": theirs})
        );
        return Ok(());
    }
    println!("{shape}, device {device:?}");
    if let Some(matmul) = &ours.cpu_matmul {
        println!("alignkit f32 products: {matmul}");
    }
    if ours.rollout.is_some() {
        println!("{rollout_shape}");
    }
    if let Some(t) = &theirs {
        println!(
            "pytorch {} ({} threads)",
            t.torch.as_deref().unwrap_or("?"),
            t.threads.map_or("?".into(), |n| n.to_string())
        );
    }
    println!(
        "{:<30} {:>12} {:>12} {:>8}",
        "measure", "alignkit", "pytorch", "ratio"
    );
    let pt = theirs.as_ref();
    row(
        "forward (s)",
        ours.forward_s,
        pt.and_then(|r| r.forward_s),
        true,
    );
    row(
        "fwd+bwd+AdamW step (s)",
        ours.train_step_s,
        pt.and_then(|r| r.train_step_s),
        true,
    );
    row(
        "greedy decode (tokens/s)",
        ours.decode_tokens_per_s,
        pt.and_then(|r| r.decode_tokens_per_s),
        false,
    );
    type Get = fn(&BenchResult) -> Option<&StepResult>;
    let steps: [(&str, Get); 4] = [
        ("sft full", |r| r.sft_full.as_ref()),
        ("sft lora", |r| r.sft_lora.as_ref()),
        ("dpo full", |r| r.dpo_full.as_ref()),
        ("dpo lora", |r| r.dpo_lora.as_ref()),
    ];
    for (name, get) in steps {
        let (a, b) = (get(&ours), pt.and_then(get));
        row(
            &format!("{name} step (s)"),
            a.map(|s| s.step_s),
            b.map(|s| s.step_s),
            true,
        );
        row(
            &format!("{name} (tokens/s)"),
            a.map(|s| s.tokens_per_s),
            b.map(|s| s.tokens_per_s),
            false,
        );
        row(
            &format!("{name} peak RSS (MB)"),
            a.and_then(|s| s.peak_rss_mb),
            b.and_then(|s| s.peak_rss_mb),
            true,
        );
        row(
            &format!("{name} GPU memory (MB)"),
            a.and_then(|s| s.device_memory_mb),
            b.and_then(|s| s.device_memory_mb),
            true,
        );
    }
    let (a, b) = (ours.rollout.as_ref(), pt.and_then(|r| r.rollout.as_ref()));
    row(
        "rollout (s)",
        a.map(|r| r.rollout_s),
        b.map(|r| r.rollout_s),
        true,
    );
    row(
        "rollout (tokens/s)",
        a.map(|r| r.tokens_per_s),
        b.map(|r| r.tokens_per_s),
        false,
    );
    row(
        "rollout GPU memory (MB)",
        a.and_then(|r| r.device_memory_mb),
        b.and_then(|r| r.device_memory_mb),
        true,
    );
    println!(
        "ratio = alignkit time / pytorch time (≤ 1.0 means alignkit is as fast or faster); for memory, alignkit MB / pytorch MB"
    );
    for (name, get) in steps {
        if let Some(a) = get(&ours) {
            let b = pt.and_then(get).map(|s| s.trainable_params.to_string());
            println!(
                "{name}: trainable parameters {} (pytorch {})",
                a.trainable_params,
                b.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}
