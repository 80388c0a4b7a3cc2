//! `alignkit sft`: glue over alignkit-sft — flags to config keys, a progress
//! bar, Ctrl-C, a one-line summary and a loss plot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use alignkit_sft::{Event, RunOptions, SftConfig, SftOutcome, StopReason};
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{DeviceSpec, Task, dispatch};

#[derive(Args)]
pub struct SftArgs {
    /// TOML config (keys of alignkit_sft::SftConfig; unknown keys are errors).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in output_dir.
    #[arg(long)]
    resume: bool,
    /// Set any config key, e.g. `--set train.eval_steps=50` or
    /// `--set lora.target_modules=q_proj,v_proj` (repeatable; after --config).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// cpu, cuda:N, vulkan:N or wgpu:N (among the backends compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Shortcuts for common keys (boxed: keeps the subcommand enum small).
    #[command(flatten)]
    keys: Box<KeyFlags>,
}

/// Flags for the most used config keys; `--set` reaches every other one.
#[derive(Args)]
struct KeyFlags {
    /// = model: Hugging Face model directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// = output_dir: the run directory.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// = data.train_file
    #[arg(long)]
    train_file: Option<PathBuf>,
    /// = data.validation_file
    #[arg(long)]
    validation_file: Option<PathBuf>,
    /// = data.validation_split
    #[arg(long)]
    validation_split: Option<f64>,
    /// = data.max_len
    #[arg(long)]
    max_len: Option<usize>,
    /// = data.packing
    #[arg(long)]
    packing: Option<bool>,
    /// = learning_rate
    #[arg(long)]
    learning_rate: Option<f64>,
    /// = train.batch_size
    #[arg(long)]
    batch_size: Option<usize>,
    /// = train.grad_accum
    #[arg(long)]
    grad_accum: Option<usize>,
    /// = train.epochs
    #[arg(long)]
    epochs: Option<usize>,
    /// = train.max_steps
    #[arg(long)]
    max_steps: Option<usize>,
    /// = train.seed
    #[arg(long)]
    seed: Option<u64>,
    /// = train.save_steps
    #[arg(long)]
    save_steps: Option<usize>,
    /// = train.eval_steps
    #[arg(long)]
    eval_steps: Option<usize>,
    /// = lora.r (any lora.* key turns LoRA on)
    #[arg(long)]
    lora_r: Option<usize>,
    /// = lora.alpha
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// = lora.dropout
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// = lora.target_modules: `all-linear` or names, comma-separated.
    #[arg(long)]
    lora_target_modules: Option<String>,
}

impl SftArgs {
    /// The flags as `key=value` overrides, in the order they apply.
    fn overrides(&self) -> Result<Vec<(String, String)>> {
        let mut out = self.keys.overrides();
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv}: expected KEY=VALUE"))?;
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
        Ok(out)
    }
}

impl KeyFlags {
    fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let quote = |p: &Path| format!("{:?}", p.display().to_string());
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k.to_string(), v));
            }
        };
        push("model", self.model.as_deref().map(quote));
        push("output_dir", self.output_dir.as_deref().map(quote));
        push("data.train_file", self.train_file.as_deref().map(quote));
        push(
            "data.validation_file",
            self.validation_file.as_deref().map(quote),
        );
        push(
            "data.validation_split",
            self.validation_split.map(|v| v.to_string()),
        );
        push("data.max_len", self.max_len.map(|v| v.to_string()));
        push("data.packing", self.packing.map(|v| v.to_string()));
        push(
            "learning_rate",
            self.learning_rate.map(|v| format!("{v:e}")),
        );
        push("train.batch_size", self.batch_size.map(|v| v.to_string()));
        push("train.grad_accum", self.grad_accum.map(|v| v.to_string()));
        push("train.epochs", self.epochs.map(|v| v.to_string()));
        push("train.max_steps", self.max_steps.map(|v| v.to_string()));
        push("train.seed", self.seed.map(|v| v.to_string()));
        push("train.save_steps", self.save_steps.map(|v| v.to_string()));
        push("train.eval_steps", self.eval_steps.map(|v| v.to_string()));
        push("lora.r", self.lora_r.map(|v| v.to_string()));
        push("lora.alpha", self.lora_alpha.map(|v| format!("{v:?}")));
        push("lora.dropout", self.lora_dropout.map(|v| format!("{v:?}")));
        push(
            "lora.target_modules",
            self.lora_target_modules.as_ref().map(|v| format!("{v:?}")),
        );
        out
    }
}

pub fn run(args: SftArgs) -> Result<()> {
    let overrides = args.overrides()?;
    let config = SftConfig::load(args.config.as_deref(), &overrides)?;
    let stop = Arc::new(AtomicBool::new(false));
    install_ctrl_c(stop.clone())?;
    let task = SftTask {
        config,
        resume: args.resume,
        stop,
    };
    let outcome = dispatch(args.device, task)?;
    summarize(&outcome);
    Ok(())
}

struct SftTask {
    config: SftConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
}

impl Task for SftTask {
    type Output = SftOutcome;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<SftOutcome> {
        train_on::<B>(&self.config, &device, self.resume, &self.stop)
    }
}

/// First Ctrl-C: finish the step, save a checkpoint, exit. Second: exit now.
fn install_ctrl_c(stop: Arc<AtomicBool>) -> Result<()> {
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("\ninterrupted again: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing this step and saving a checkpoint (press again to quit now)"
        );
        stop.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")
}

fn train_on<B: AutodiffBackend>(
    config: &SftConfig,
    device: &B::Device,
    resume: bool,
    stop: &AtomicBool,
) -> Result<SftOutcome> {
    let bar = ProgressBar::hidden();
    let outcome = alignkit_sft::train::<B>(
        config,
        device,
        RunOptions {
            resume,
            stop: Some(stop),
        },
        &mut |event| match event {
            Event::Started(info) => {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(info.total_steps as u64);
                bar.set_position(info.start_step as u64);
                bar.reset_eta();
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} step {pos}/{len} [{bar:30}] {msg} eta {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                bar.enable_steady_tick(Duration::from_millis(250));
                bar.println(format!(
                    "{} {} examples ({} validation, {} truncated, {} without trained tokens), {} trainable of {} parameters, {} steps{}",
                    if info.start_step > 0 { "resuming:" } else { "training:" },
                    info.train_examples,
                    info.validation_examples,
                    info.truncated,
                    info.without_targets,
                    info.trainable_params,
                    info.total_params,
                    info.total_steps,
                    if info.start_step > 0 {
                        format!(" (from step {})", info.start_step)
                    } else {
                        String::new()
                    }
                ));
            }
            Event::Step(m) => {
                bar.set_position(m.step as u64);
                let mut msg = format!(
                    "loss {:.4} lr {:.2e} {:.0} tok/s",
                    m.loss, m.learning_rate, m.tokens_per_second
                );
                if let Some(e) = m.eval_loss {
                    msg.push_str(&format!(" eval {e:.4}"));
                }
                bar.set_message(msg);
                if let Some(reason) = &m.skipped {
                    bar.println(format!("step {}: skipped ({reason})", m.step));
                }
            }
            Event::Checkpoint { .. } => {}
        },
    );
    bar.finish_and_clear();
    let outcome = outcome?;
    let metrics = outcome.run_dir.join(alignkit_train::run::METRICS_FILE);
    if metrics.is_file() {
        let svg = outcome.run_dir.join("loss.svg");
        write_loss_plot(&metrics, &svg, "SFT loss")
            .with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok(outcome)
}

fn summarize(o: &SftOutcome) {
    let last = o.last_metrics.as_ref();
    let loss = last.map_or(String::new(), |m| format!(", loss {:.4}", m.loss));
    let eval = o.best.map_or(String::new(), |b| {
        format!(", best eval_loss {:.4} at step {}", b.eval_loss, b.step)
    });
    let skipped = if o.skipped_steps > 0 {
        format!(", {} steps skipped (non-finite)", o.skipped_steps)
    } else {
        String::new()
    };
    let what = match o.stop {
        StopReason::Completed => "done",
        StopReason::EarlyStopped => "stopped early",
        StopReason::Interrupted => "interrupted",
    };
    let where_ = match (&o.final_dir, &o.last_checkpoint) {
        (Some(f), _) => format!("model in {}", f.display()),
        (None, Some(c)) => format!("checkpoint {} (continue with --resume)", c.display()),
        (None, None) => String::new(),
    };
    println!("{what}: {} steps{loss}{eval}{skipped}; {where_}", o.steps);
}

/// Plot `loss` (and `eval_loss` where present) from a metrics.jsonl into an SVG.
pub fn write_loss_plot(metrics: &Path, svg: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    let records = alignkit_train::run::read_metrics(metrics)?;
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| {
                let step = r.get("step")?.as_f64()?;
                let v = r.get(key)?.as_f64()?;
                v.is_finite().then_some((step, v))
            })
            .collect()
    };
    let train = series("loss");
    let eval = series("eval_loss");
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.iter().chain(&eval).map(|p| p.0).fold(1.0, f64::max);
    let max_loss = train.iter().chain(&eval).map(|p| p.1).fold(0.0, f64::max) * 1.05;
    let root = SVGBackend::new(svg, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_step, 0f64..max_loss.max(1e-6))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval, &RED))?
            .label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
