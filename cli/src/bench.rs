//! `alignkit bench`: forward, training step (forward + backward + AdamW) and
//! greedy decode speed, optionally next to PyTorch measured in the same run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, LlamaForCausalLM, SamplingConfig, generate, load_model};
use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::backend::{Task, dispatch};
use crate::common::ModelArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Timed repetitions of forward and training step (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Tokens to decode greedily at batch 1.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Also run this PyTorch script on the same model and shapes and print ratios.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Seconds per forward / training step, and decode throughput.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub forward_s: f64,
    pub train_step_s: f64,
    pub decode_tokens_per_s: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
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

impl Task for BenchArgs {
    type Output = BenchResult;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<BenchResult> {
        let dir = self.model.dir()?;
        let (config, model) = load_model::<B>(&dir, &device)?;
        let (b, t) = (self.batch, self.seq);
        if b == 0 || t < 2 || self.steps == 0 {
            bail!("--batch and --steps must be positive and --seq at least 2");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let ids: Vec<i64> = (0..b * t)
            .map(|_| rng.random_range(0..config.vocab_size as i64))
            .collect();

        // 1. forward (no autodiff)
        let inference = model.valid();
        let mut times = Vec::new();
        for i in 0..=self.steps {
            let start = Instant::now();
            let loss = nll(&inference, batch_input(&ids, b, t, &device));
            let _ = loss.into_scalar();
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        let forward_s = median(times);

        // 2. training step: forward + backward + AdamW
        let mut optim = AdamWConfig::new()
            .with_weight_decay(0.0)
            .init::<B, LlamaForCausalLM<B>>();
        let mut model = model;
        let mut times = Vec::new();
        for i in 0..=self.steps {
            let start = Instant::now();
            let loss = nll(&model, batch_input(&ids, b, t, &device));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-5, model, grads);
            B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        let train_step_s = median(times);

        // 3. greedy decode at batch 1, past a 16-token prompt
        let inference = model.valid().for_decoding();
        let prompt: Vec<u32> = ids[..16.min(t)].iter().map(|&x| x as u32).collect();
        let sampling = SamplingConfig {
            max_new_tokens: self.decode_tokens,
            ..SamplingConfig::default()
        };
        let start = Instant::now();
        let out = generate(
            &inference,
            &[prompt],
            &[],
            0,
            &sampling,
            |_, _| false,
            &device,
        )?;
        let decode_tokens_per_s = out[0].tokens.len() as f64 / start.elapsed().as_secs_f64();

        Ok(BenchResult {
            forward_s,
            train_step_s,
            decode_tokens_per_s,
        })
    }
}

fn run_torch(script: &PathBuf, args: &BenchArgs) -> Result<BenchResult> {
    let dir = args.model.dir()?;
    let output = Command::new("python3")
        .arg(script)
        .arg("--model")
        .arg(&dir)
        .args(["--batch", &args.batch.to_string()])
        .args(["--seq", &args.seq.to_string()])
        .args(["--steps", &args.steps.to_string()])
        .args(["--decode-tokens", &args.decode_tokens.to_string()])
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

pub fn run(args: BenchArgs) -> Result<()> {
    let torch = args.torch.clone();
    let json = args.json;
    let model = args.model.clone();
    let shape = format!("batch {} x {} tokens", args.batch, args.seq);
    let torch_args = BenchArgs {
        model: model.clone(),
        batch: args.batch,
        seq: args.seq,
        steps: args.steps,
        decode_tokens: args.decode_tokens,
        torch: None,
        json,
    };
    let ours = dispatch(model.device, args)?;
    let theirs = torch
        .map(|script| run_torch(&script, &torch_args))
        .transpose()?;
    if json {
        println!(
            "{}",
            serde_json::json!({"alignkit": ours, "pytorch": theirs})
        );
        return Ok(());
    }
    println!("{shape}, device {:?}", model.device);
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "measure", "alignkit", "pytorch", "ratio"
    );
    let row = |name: &str, a: f64, b: Option<f64>, unit: &str, lower_is_better: bool| {
        let (pt, ratio) = match b {
            Some(b) => (
                format!("{b:.3}{unit}"),
                format!("{:.2}", if lower_is_better { a / b } else { b / a }),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:<28} {:>12} {pt:>12} {ratio:>8}",
            format!("{a:.3}{unit}")
        );
    };
    row(
        "forward (s)",
        ours.forward_s,
        theirs.as_ref().map(|r| r.forward_s),
        "",
        true,
    );
    row(
        "fwd+bwd+AdamW step (s)",
        ours.train_step_s,
        theirs.as_ref().map(|r| r.train_step_s),
        "",
        true,
    );
    row(
        "greedy decode (tokens/s)",
        ours.decode_tokens_per_s,
        theirs.as_ref().map(|r| r.decode_tokens_per_s),
        "",
        false,
    );
    println!("ratio = alignkit time / pytorch time (≤ 1.0 means alignkit is as fast or faster)");
    Ok(())
}
