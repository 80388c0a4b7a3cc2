//! What the training commands (`alignkit sft`, `alignkit reward train`) and
//! the pipeline's training stages share: the config flags and `--set`, Ctrl-C,
//! the step progress bar, the one-line summary and the loss plot. What is
//! particular to a trainer (its progress reports, its metrics) is next to its
//! command (`sft.rs`, `reward.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alignkit_reward::RewardConfig;
use alignkit_sft::SftConfig;
use alignkit_train::{Outcome, RunOptions, StopReason};
use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::{reward, sft};

/// A trainer and its config: what `alignkit sft`, `alignkit reward train`
/// and the pipeline's training stages run.
pub enum TrainerConfig {
    Sft(Box<SftConfig>),
    Reward(Box<RewardConfig>),
}

/// How a run ended, whatever its trainer.
pub struct Trained {
    pub run_dir: PathBuf,
    pub stop: StopReason,
    pub steps: usize,
    /// The one-line summary (see [`summary`]).
    pub summary: String,
}

/// Train with a [`StepBar`] (lines prefixed with `prefix`), then plot the
/// loss into the run directory.
pub fn train<B: AutodiffBackend>(
    config: &TrainerConfig,
    device: &B::Device,
    resume: bool,
    stop: &AtomicBool,
    prefix: &str,
) -> Result<Trained> {
    let bar = StepBar::new(prefix);
    let options = RunOptions {
        resume,
        stop: Some(stop),
    };
    let (name, trained) = match config {
        TrainerConfig::Sft(c) => {
            let o = alignkit_sft::train::<B>(c, device, options, &mut |e| sft::report(&bar, e));
            ("SFT", ended(o, sft::describe))
        }
        TrainerConfig::Reward(c) => {
            let o =
                alignkit_reward::train::<B>(c, device, options, &mut |e| reward::report(&bar, e));
            ("Reward model", ended(o, reward::describe))
        }
    };
    bar.finish();
    let trained = trained?;
    plot_run_loss(&trained.run_dir, &format!("{name} loss"))?;
    Ok(trained)
}

/// A trainer's result as [`Trained`]; `describe` says what the last step's
/// metrics were.
fn ended<M, E>(result: Result<Outcome<M>, E>, describe: fn(&M) -> String) -> Result<Trained>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let o = result?;
    let last = o.last_metrics.as_ref().map_or(String::new(), describe);
    Ok(Trained {
        summary: summary(&o, &last),
        run_dir: o.run_dir,
        stop: o.stop,
        steps: o.steps,
    })
}

/// A training command: config file and flags (`extra`: the command's own key
/// flags, see [`TrainArgs::overrides`]) → `load` → training with Ctrl-C →
/// the summary line.
pub fn run(
    args: &TrainArgs,
    extra: &[(&str, Option<String>)],
    load: impl FnOnce(Option<&Path>, &[(String, String)]) -> Result<TrainerConfig>,
) -> Result<()> {
    let overrides = args.overrides(extra)?;
    let task = TrainTask {
        config: load(args.config.as_deref(), &overrides)?,
        resume: args.resume,
        stop: stop_flag()?,
    };
    let trained = dispatch(args.device, task)?;
    println!("{}", trained.summary);
    Ok(())
}

struct TrainTask {
    config: TrainerConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
}

impl Task for TrainTask {
    type Output = Trained;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Trained> {
        train::<B>(&self.config, &device, self.resume, &self.stop, "")
    }
}

/// `--config`, `--set`, `--resume`, `--device` and shortcuts for common keys.
#[derive(Args)]
pub struct TrainArgs {
    /// TOML config (the trainer's config keys; unknown keys are errors).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from the newest complete checkpoint in output_dir.
    #[arg(long)]
    pub resume: bool,
    /// Set any config key, e.g. `--set train.eval_steps=50` or
    /// `--set lora.target_modules=q_proj,v_proj` (repeatable; after --config).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// cpu, cuda:N, vulkan:N or wgpu:N (among the backends compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Shortcuts for common keys (boxed: keeps the subcommand enums small).
    #[command(flatten)]
    pub keys: Box<KeyFlags>,
}

/// Flags for the most used config keys; `--set` reaches every other one.
#[derive(Args)]
pub struct KeyFlags {
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

impl TrainArgs {
    /// The flags as `key=value` overrides, in the order they apply: the
    /// shortcuts, then the command's own `extra` ones, then `--set`.
    pub fn overrides(&self, extra: &[(&str, Option<String>)]) -> Result<Vec<(String, String)>> {
        let mut out = self.keys.overrides();
        for (k, v) in extra {
            if let Some(v) = v {
                out.push((k.to_string(), v.clone()));
            }
        }
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

/// Set by Ctrl-C. First press: the running trainer finishes its step, saves a
/// checkpoint and returns. Second press: exit now.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    let presses = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("\ninterrupted again: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nCtrl-C: finishing this step and saving a checkpoint (press again to quit now)"
        );
        handler_flag.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;
    Ok(FLAG.get_or_init(|| flag).clone())
}

/// The progress bar of a training run (step, message, ETA) on standard
/// error; hidden until the trainer reports its first progress, so that an
/// error during setup leaves no spinner behind.
pub struct StepBar {
    bar: ProgressBar,
    prefix: String,
}

impl StepBar {
    /// `prefix` goes before every line (a pipeline stage's `[k/n name]`).
    pub fn new(prefix: &str) -> Self {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix} ")
        };
        let bar = ProgressBar::hidden();
        bar.set_prefix(prefix.clone());
        Self { bar, prefix }
    }

    /// Show the bar, counting `what` ("step " or nothing).
    fn show(&self, what: &str) {
        self.bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix}}{{spinner}} {what}{{pos}}/{{len}} [{{bar:30}}] {{msg}} eta {{eta}}"
            ))
            .expect("a valid template")
            .progress_chars("=> "),
        );
        if self.bar.is_hidden() {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(250));
        }
    }

    /// Work before the first step (`done` of `total`), such as DPO's
    /// reference log-probs.
    pub fn work(&self, done: usize, total: usize, what: String) {
        self.show("");
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        self.bar.set_message(what);
    }

    /// The run starts (or resumes) at `start_step` of `total_steps`; `what`
    /// describes it (data, parameters) on a line above the bar.
    pub fn start(&self, start_step: usize, total_steps: usize, what: &str) {
        self.show("step ");
        self.bar.set_length(total_steps as u64);
        self.bar.set_position(start_step as u64);
        self.bar.reset_eta();
        self.bar.set_message("");
        let resuming = if start_step > 0 {
            format!(" (resuming from step {start_step})")
        } else {
            String::new()
        };
        self.println(&format!("{what}, {total_steps} steps{resuming}"));
    }

    /// A step finished; `skipped` says why its update was skipped.
    pub fn step(&self, step: usize, message: String, skipped: Option<&String>) {
        self.bar.set_position(step as u64);
        self.bar.set_message(message);
        if let Some(reason) = skipped {
            self.println(&format!("step {step}: skipped ({reason})"));
        }
    }

    /// A line above the bar, with the prefix.
    pub fn println(&self, line: &str) {
        self.bar
            .suspend(|| eprintln!("{}{line}", self.prefix.as_str()));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The one-line summary of a run; `last` describes its last step.
pub fn summary<M>(o: &Outcome<M>, last: &str) -> String {
    let ended = match o.stop {
        StopReason::Completed => "done",
        StopReason::EarlyStopped => "stopped early",
        StopReason::Interrupted => "interrupted",
    };
    let mut s = format!("{ended}: {} steps{last}", o.steps);
    if let Some(b) = o.best {
        s.push_str(&format!(
            ", best eval_loss {:.4} at step {}",
            b.eval_loss, b.step
        ));
    }
    if o.skipped_steps > 0 {
        s.push_str(&format!(", {} steps skipped (non-finite)", o.skipped_steps));
    }
    match (&o.final_dir, &o.last_checkpoint) {
        (Some(d), _) => s.push_str(&format!("; model in {}", d.display())),
        (None, Some(c)) => s.push_str(&format!(
            "; checkpoint {} (continue with --resume)",
            c.display()
        )),
        (None, None) => {}
    }
    s
}

/// `RUN_DIR/loss.svg` from `RUN_DIR/metrics.jsonl`, when the run logged a step.
pub fn plot_run_loss(run_dir: &Path, title: &str) -> Result<()> {
    let metrics = run_dir.join(alignkit_train::run::METRICS_FILE);
    if !metrics.is_file() {
        return Ok(());
    }
    let svg = run_dir.join("loss.svg");
    write_loss_plot(&metrics, &svg, title).with_context(|| format!("writing {}", svg.display()))
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
