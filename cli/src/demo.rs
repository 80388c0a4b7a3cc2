//! `alignkit demo`: the quickstart. SmolLM2-135M-Instruct, taught to answer
//! in exactly one sentence by the pipeline in `examples/demo/pipeline.toml`
//! (SFT with LoRA → a reward model on the SFT backbone → DPO with LoRA →
//! merged export), then judged against the base model on held-out prompts with
//! the one-sentence rule; the reward model's and DPO's held-out preference
//! accuracy and margin are printed with the table, then the aligned model's win
//! rate against the base (judged by the demo's reward model and by the rule,
//! through `alignkit eval winrate`) and what alignment cost (`alignkit eval drift`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use alignkit_eval::{Difference, Proportion, Rule};
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::backend::{DeviceSpec, dispatch};
use crate::common::SamplingArgs;
use crate::eval::{DriftArgs, Judge, WinrateArgs, WinrateReport};
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
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Longest response, in tokens (greedy decoding).
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Held-out prompts generated together.
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// General text for the forgetting measure (NLL before/after); skipped if absent.
    #[arg(long, default_value = "examples/general-text.txt")]
    text: PathBuf,
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
    let heldout = args.examples.join("heldout.jsonl");
    let reward_model = plan
        .stages
        .iter()
        .find(|s| s.kind == StageKind::Reward)
        .map(|s| s.output.clone());
    let rule = Rule::OneSentence;
    let mut judges = vec![Judge::Rule(rule.clone()).to_string()];
    judges.extend(
        reward_model
            .iter()
            .map(|dir| Judge::Reward(dir.clone()).to_string()),
    );
    // The held-out responses of both models, judged: exactly what
    // `alignkit eval winrate` does (and caches) with these settings.
    let eval_dir = args.out.join("eval");
    let winrate = WinrateArgs {
        policy: Some(aligned.clone()),
        baseline: Some(base.clone()),
        prompts: Some(heldout.clone()),
        judges,
        tie_margin: 0.0,
        judgments: Vec::new(),
        candidates: None,
        out: Some(eval_dir.clone()),
        template: Default::default(),
        chat: false,
        batch_size: args.batch_size.max(1),
        sampling: SamplingArgs {
            max_new_tokens: args.max_new_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            stop: Vec::new(),
        },
        json: false,
        device: args.device,
    };
    let report = dispatch(args.device, winrate.clone())?;
    report.write_files(&eval_dir)?;
    let responses = args.out.join("heldout-responses.jsonl");
    write_responses(&responses, &report)?;

    let pass = |texts: &mut dyn Iterator<Item = &String>| {
        texts
            .filter(|t| rule.check_response(t).unwrap_or(false))
            .count()
    };
    let n = report.rows.len();
    let before = Proportion::new(pass(&mut report.rows.iter().map(|r| &r.baseline)), n, 0.95);
    let after = Proportion::new(pass(&mut report.rows.iter().map(|r| &r.policy)), n, 0.95);
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
    println!();
    println!("win rate of the aligned model against the base (the same held-out responses):");
    print!("{}", report.table());
    println!(
        "  reproduce: alignkit eval winrate --policy {} --baseline {} --prompts {}{} --max-new-tokens {} --batch-size {} --out {}",
        aligned.display(),
        base.display(),
        heldout.display(),
        winrate
            .judges
            .iter()
            .map(|j| format!(" --judge {j}"))
            .collect::<String>(),
        args.max_new_tokens,
        args.batch_size.max(1),
        eval_dir.display()
    );

    let text = args.text.is_file().then(|| args.text.clone());
    let drift = dispatch(
        args.device,
        DriftArgs {
            policy: aligned.clone(),
            reference: base.clone(),
            prompts: heldout.clone(),
            text: text.clone(),
            num_samples: 2,
            max_new_tokens: args.max_new_tokens,
            seed: 0,
            template: Default::default(),
            chat: false,
            batch_size: args.batch_size.max(1),
            window: None,
            score: None,
            json: false,
            device: args.device,
        },
    )?;
    println!();
    println!("what alignment cost (aligned vs base):");
    print!("{}", drift.table());
    if text.is_none() {
        println!(
            "  (no NLL on general text: {} not found; pass --text FILE)",
            args.text.display()
        );
    }
    println!(
        "  reproduce: alignkit eval drift --policy {} --reference {} --prompts {}{} --num-samples 2 --max-new-tokens {} --batch-size {}",
        aligned.display(),
        base.display(),
        heldout.display(),
        text.map(|t| format!(" --text {}", t.display()))
            .unwrap_or_default(),
        args.max_new_tokens,
        args.batch_size.max(1)
    );
    println!(
        "aligned model: {}\nresponses: {}\ntime: {:.0}s training, {:.0}s total",
        plan.final_model().display(),
        responses.display(),
        trained.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Both models' held-out responses with the rule's verdicts.
fn write_responses(path: &Path, report: &WinrateReport) -> Result<()> {
    let rule = Rule::OneSentence;
    let pass = |t: &str| rule.check_response(t).unwrap_or(false);
    let mut text = String::new();
    for row in &report.rows {
        let line = serde_json::json!({
            "prompt": row.prompt,
            "base": row.baseline, "base_pass": pass(&row.baseline),
            "aligned": row.policy, "aligned_pass": pass(&row.policy),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    alignkit_model::checkpoint::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
