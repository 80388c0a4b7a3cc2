//! `alignkit demo`: the quickstart. SmolLM2-135M-Instruct, taught to answer
//! in exactly one sentence by the pipeline in `examples/demo/pipeline.toml`
//! (SFT with LoRA → a reward model on the SFT backbone → DPO with LoRA →
//! merged export), then judged against the base model on held-out prompts with
//! the one-sentence rule; the reward model's and DPO's held-out preference
//! accuracy and margin are printed with the table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alignkit_datasets::FieldMap;
use alignkit_eval::{Difference, Proportion, Rule};
use alignkit_model::{SamplingConfig, generate};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::common::Loaded;
use crate::pipeline::{Plan, StageKind};
use crate::pull::{KnownModel, ensure_model};

const FILES: [&str; 4] = ["pipeline.toml", "sft.jsonl", "prefs.jsonl", "heldout.jsonl"];

#[derive(Args)]
pub struct DemoArgs {
    /// Where the pipeline's stages and the evaluation go.
    #[arg(long, default_value = "alignkit-demo")]
    out: PathBuf,
    /// The demo's files: pipeline.toml, sft.jsonl, prefs.jsonl, heldout.jsonl.
    #[arg(long, default_value = "examples/demo")]
    examples: PathBuf,
    /// Base model (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda:N, vulkan:N or wgpu:N (among the backends compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Longest response, in tokens (greedy decoding).
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Held-out prompts generated together.
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    for f in FILES {
        let path = args.examples.join(f);
        if !path.is_file() {
            bail!(
                "{} not found: run `alignkit demo` from an alignkit checkout (cargo run --release -p alignkit -- demo), or pass --examples DIR",
                path.display()
            );
        }
    }
    let base = match &args.model {
        Some(m) => m.clone(),
        None => ensure_model(KnownModel::Smollm2)?,
    };
    let plan = Plan::load(
        &args.examples.join("pipeline.toml"),
        Some(&args.out),
        Some(&base),
    )?;
    eprint!("{}", plan.describe());
    plan.execute(args.device)?;
    let trained = started.elapsed();

    let aligned = plan.final_model().to_path_buf();
    let eval = dispatch(
        args.device,
        Evaluate {
            models: vec![("base".into(), base.clone()), ("aligned".into(), aligned)],
            prompts: args.examples.join("heldout.jsonl"),
            max_new_tokens: args.max_new_tokens,
            batch_size: args.batch_size.max(1),
        },
    )?;
    let responses = args.out.join("heldout-responses.jsonl");
    write_responses(&responses, &eval)?;

    let rule = Rule::OneSentence;
    let pass = |texts: &[String]| texts.iter().filter(|t| rule.check_response(t).unwrap_or(false)).count();
    let n = eval.base.len();
    let before = Proportion::new(pass(&eval.base), n, 0.95);
    let after = Proportion::new(pass(&eval.aligned), n, 0.95);
    let diff = Difference::new(&after, &before);
    let pct = |x: f64| format!("{:5.1}%", 100.0 * x);
    println!();
    println!("rule: {} — {n} held-out prompts, greedy", rule.describe());
    println!(
        "  {:8} {:>7} {:>7}  95% CI (Wilson)",
        "model", "pass", "rate"
    );
    for (name, p) in [("base", &before), ("aligned", &after)] {
        println!(
            "  {:8} {:>7} {:>7}  [{}, {}]",
            name,
            format!("{}/{}", p.successes, p.trials),
            pct(p.rate),
            pct(p.low).trim(),
            pct(p.high).trim()
        );
    }
    println!(
        "  {:8} {:>7} {:>+6.1}pt [{:+.1}, {:+.1}] pt (Newcombe 95% CI){}",
        "change",
        "",
        100.0 * diff.delta,
        100.0 * diff.low,
        100.0 * diff.high,
        if diff.significant() {
            ": better by more than the uncertainty"
        } else {
            ": not significant"
        }
    );
    // The last step's metrics of a stage, by the names its trainer logs.
    let last = |kind: StageKind, keys: [&str; 5]| {
        let stage = plan.stages.iter().find(|s| s.kind == kind)?;
        let m = crate::pipeline::Manifest::read(&stage.dir)?.final_metrics?;
        Some(keys.map(|k| m.get(k).and_then(serde_json::Value::as_f64)))
    };
    let fmt = |acc: Option<f64>, margin: Option<f64>| match (acc, margin) {
        (Some(a), Some(g)) => format!("accuracy {a:.2}, mean margin {g:+.3}"),
        _ => "n/a".into(),
    };
    if let Some([step, acc, margin, eval_acc, eval_margin]) = last(
        StageKind::Reward,
        ["step", "accuracy", "margin", "eval_accuracy", "eval_margin"],
    ) {
        println!(
            "reward model (step {}): held-out {}; train {}",
            step.unwrap_or(0.0),
            fmt(eval_acc, eval_margin),
            fmt(acc, margin),
        );
    }
    if let Some([step, acc, margin, eval_acc, eval_margin]) = last(
        StageKind::Dpo,
        [
            "step",
            "rewards/accuracies",
            "rewards/margins",
            "eval_rewards/accuracies",
            "eval_rewards/margins",
        ],
    ) {
        println!(
            "DPO (step {}): implicit reward held-out {}; train {}",
            step.unwrap_or(0.0),
            fmt(eval_acc, eval_margin),
            fmt(acc, margin),
        );
    }
    println!(
        "aligned model: {}\nresponses: {}\ntime: {:.0}s training, {:.0}s total",
        plan.final_model().display(),
        responses.display(),
        trained.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Responses of both models to the held-out prompts.
struct Responses {
    /// As the held-out file has them (a string or a message list).
    prompts: Vec<serde_json::Value>,
    base: Vec<String>,
    aligned: Vec<String>,
}

fn write_responses(path: &Path, r: &Responses) -> Result<()> {
    let rule = Rule::OneSentence;
    let mut text = String::new();
    for ((p, b), a) in r.prompts.iter().zip(&r.base).zip(&r.aligned) {
        let line = serde_json::json!({
            "prompt": p,
            "base": b, "base_pass": rule.check_response(b).unwrap_or(false),
            "aligned": a, "aligned_pass": rule.check_response(a).unwrap_or(false),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    alignkit_model::checkpoint::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

struct Evaluate {
    /// (label, model directory): the base model first, then the aligned one.
    models: Vec<(String, PathBuf)>,
    prompts: PathBuf,
    max_new_tokens: usize,
    batch_size: usize,
}

impl Task for Evaluate {
    type Output = Responses;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Responses> {
        let sampling = SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
        };
        let mut outputs = Vec::new();
        let text = std::fs::read_to_string(&self.prompts)
            .with_context(|| format!("reading {}", self.prompts.display()))?;
        let prompts = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .map(|v| v.get("prompt").cloned().unwrap_or_default())
            })
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("reading {}", self.prompts.display()))?;
        for (label, dir) in &self.models {
            let loaded = Loaded::<B::InnerBackend>::load(dir, &device)?;
            let encoded = loaded
                .encoder
                .encode_prompt_file(&self.prompts, &FieldMap::default())?;
            let ids: Vec<Vec<u32>> = encoded.into_iter().map(|e| e.example.prompt_ids).collect();
            let bar = ProgressBar::new(ids.len() as u64).with_prefix(format!("[eval {label}]"));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {spinner} {pos}/{len} [{bar:30}] {msg} eta {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            let stop_ids = loaded.stop_ids();
            let tokenizer = loaded.tokenizer();
            let mut texts = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(self.batch_size) {
                let gens = generate(
                    &loaded.model,
                    chunk,
                    &stop_ids,
                    tokenizer.pad_id(),
                    &sampling,
                    |_, _| false,
                    &device,
                )?;
                for g in gens {
                    texts.push(tokenizer.decode(&g.tokens, true)?);
                }
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            outputs.push(texts);
        }
        let aligned = outputs.pop().expect("two models");
        let base = outputs.pop().expect("two models");
        Ok(Responses {
            prompts,
            base,
            aligned,
        })
    }
}
