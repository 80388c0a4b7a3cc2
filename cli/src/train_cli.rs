//! What the training commands (`alignkit sft`, `alignkit reward train`,
//! `alignkit dpo`) and the pipeline's training stages share: the config flags
//! and `--set`, Ctrl-C/SIGTERM, the step progress bar, the one-line summary,
//! the loss plot and the exit status of an interrupted run. It knows no
//! trainer: each trainer's command module (`sft.rs`, `reward.rs`, `dpo.rs`)
//! implements [`Trainer`] for its config, with its progress reports and
//! summary next to its command.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alignkit_train::output::Holder;
use alignkit_train::{
    KeyChange, LoopConfig, Outcome, RunOptions, StopReason, TrainDtype, list_checkpoints,
};
use alignkit_train::{World, WorldSpec, dist};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::pull::{KnownModel, ensure_model};

/// A trainer as the training commands and pipeline stages drive it.
pub trait Trainer: Clone + Send + 'static {
    /// What the loss plot is titled ("SFT", "DPO", ...).
    const NAME: &'static str;

    /// Metrics drawn one panel each in `RUN_DIR/curves.svg` (key, axis
    /// label); none: no such plot.
    const CURVES: &'static [(&'static str, &'static str)] = &[];

    /// The curves of this config (a trainer whose configs differ overrides it).
    fn curves(&self) -> &'static [(&'static str, &'static str)] {
        Self::CURVES
    }

    /// The config's `model`: empty when neither the file nor a flag set it,
    /// and the command then takes the default model.
    fn model_mut(&mut self) -> &mut PathBuf;

    /// The config's training loop (`train.*`).
    fn loop_mut(&mut self) -> &mut LoopConfig;

    /// The config's `lora.dropout` (0 without LoRA).
    fn lora_dropout(&self) -> f64;

    /// Train, reporting progress on `bar`; `describe` the outcome with
    /// [`ended`].
    fn train<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        options: RunOptions<'_>,
        bar: &StepBar,
    ) -> Result<Trained>;
}

/// How a run ended, whatever its trainer.
pub struct Trained {
    pub run_dir: PathBuf,
    pub stop: StopReason,
    pub steps: usize,
    /// The one-line summary (see [`summary`]).
    pub summary: String,
}

/// Train with a [`StepBar`] (lines prefixed with `prefix`) on the backend
/// `spec` names, then plot the loss into the run directory. `peer`: which
/// of its process's local peers this call trains as (0 in a process that is
/// one rank).
pub fn train<B: AutodiffBackend, T: Trainer>(
    trainer: &T,
    (spec, peer): (DeviceSpec, usize),
    device: &B::Device,
    resume: bool,
    stop: &AtomicBool,
    prefix: &str,
) -> Result<Trained> {
    // Under `alignkit launch`: join the other ranks first (a wrong world, an
    // unreachable master: one line, before any training).
    let world = match WorldSpec::from_env()? {
        Some(w) => {
            // Started by a scheduler rather than `alignkit launch`: rank 0
            // serves the orchestrator itself.
            let launched = std::env::var_os(dist::ENV_LAUNCHED).is_some();
            if w.rank == 0 && peer == 0 && w.processes() > 1 && !launched {
                dist::start_orchestrator(w.master_port)?;
            }
            if w.peers() > 1 && trainer.lora_dropout() > 0.0 {
                bail!(
                    "lora.dropout = {}: the local peers of one process (--devices) share the backend's one random generator, so their dropout masks would not be reproducible; use one process per device (--nproc-per-node) or lora.dropout = 0",
                    trainer.lora_dropout()
                );
            }
            World::join::<B::InnerBackend>(w, peer, device)?
        }
        None => World::single(),
    };
    let bar = StepBar::new(prefix);
    let bar = match world.writes() {
        true => bar,
        false => bar.muted(),
    };
    let settled = settle_dtype(trainer, spec);
    if settled.is_some() {
        bar.println(&format!(
            "train.dtype = \"bf16\" trains on CUDA only: this run (--device {spec}) trains in f32"
        ));
    }
    let trainer = settled.as_ref().unwrap_or(trainer);
    let options = RunOptions {
        resume,
        stop: Some(stop),
        world: &world,
    };
    let trained = trainer.train::<B>(device, options, &bar);
    bar.finish();
    let rank = format!("rank {}", world.rank());
    let trained = trained.map_err(|e| match world.is_distributed() {
        true if !e.to_string().starts_with(&rank) => e.context(rank),
        _ => e,
    })?;
    if !world.writes() {
        return Ok(trained);
    }
    plot_run_loss(&trained.run_dir, &format!("{} loss", T::NAME))?;
    let metrics = trained.run_dir.join(alignkit_train::run::METRICS_FILE);
    let curves = trainer.curves();
    if !curves.is_empty() && metrics.is_file() {
        let svg = trained.run_dir.join("curves.svg");
        write_curves_plot(&metrics, &svg, T::NAME, curves)
            .with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok(trained)
}

/// The trainer as it runs on `spec`: a bf16 config on a backend that does
/// not train in bf16 ([`DeviceSpec::trains_bf16`]) becomes an f32 one (its
/// run directory then records `train.dtype = "f32"`); `None`: unchanged.
fn settle_dtype<T: Trainer>(trainer: &T, spec: DeviceSpec) -> Option<T> {
    let mut settled = trainer.clone();
    let dtype = &mut settled.loop_mut().dtype;
    if *dtype == TrainDtype::F32 || spec.trains_bf16() {
        return None;
    }
    *dtype = TrainDtype::F32;
    Some(settled)
}

/// A trainer's result as [`Trained`]; `describe` says what the last step's
/// metrics were.
pub fn ended<M, E>(result: Result<Outcome<M>, E>, describe: fn(&M) -> String) -> Result<Trained>
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

/// The process exits with this status after an interrupted run saved its
/// checkpoint (128 + SIGINT, as shells report a Ctrl-C), so that
/// `alignkit sft ... && alignkit export ...` stops there.
pub const EXIT_INTERRUPTED: i32 = 130;

/// An error that is not a failure to report but an interruption already
/// reported: `main` exits with [`EXIT_INTERRUPTED`] and prints this line.
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// A training command: config file and flags (`extra`: the command's own key
/// flags, see [`TrainArgs::overrides`]) → `load` → training with Ctrl-C →
/// the summary line; an interrupted run ends in [`Interrupted`].
pub fn run<T: Trainer>(
    args: &TrainArgs,
    extra: &[(&str, Option<String>)],
    load: impl FnOnce(Option<&Path>, &[(String, String)]) -> Result<T>,
) -> Result<()> {
    let overrides = args.overrides(extra)?;
    let mut trainer = load(args.config.as_deref(), &overrides)?;
    if trainer.model_mut().as_os_str().is_empty() {
        *trainer.model_mut() = ensure_model(KnownModel::Smollm2)?;
    }
    let task = TrainTask {
        trainer,
        spec: args.device,
        peer: 0,
        resume: args.resume,
        stop: stop_flag()?,
    };
    let devices = dist::local_devices();
    let trained = match devices.is_empty() {
        true => dispatch(args.device, task)?,
        false => train_peers(&devices, task)?,
    };
    if trained.stop == StopReason::Interrupted {
        return Err(Interrupted(trained.summary).into());
    }
    println!("{}", trained.summary);
    Ok(())
}

#[derive(Clone)]
struct TrainTask<T> {
    trainer: T,
    spec: DeviceSpec,
    /// Which local peer of the process this is.
    peer: usize,
    resume: bool,
    stop: Arc<AtomicBool>,
}

/// One rank per device of `devices`, each a thread of this process (the
/// local peers `alignkit launch --devices` asks for): rank 0's outcome, or
/// the first error of any peer (the others would wait for it in vain).
fn train_peers<T: Trainer>(devices: &[String], task: TrainTask<T>) -> Result<Trained> {
    let specs = crate::backend::peer_devices(devices)
        .map_err(|e| anyhow::anyhow!("{} = {e}", dist::ENV_DEVICES))?;
    let (sender, results) = std::sync::mpsc::channel();
    for (peer, spec) in specs.into_iter().enumerate() {
        let task = TrainTask {
            spec,
            peer,
            ..task.clone()
        };
        let sender = sender.clone();
        std::thread::Builder::new()
            .name(format!("alignkit-peer-{peer}"))
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(spec, task)))
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("local peer {peer} panicked")));
                let _ = sender.send((peer, outcome));
            })
            .context("starting a local peer's thread")?;
    }
    drop(sender);
    let mut first = None;
    for (peer, outcome) in results {
        match outcome {
            Err(e) => return Err(e),
            Ok(trained) if peer == 0 => first = Some(trained),
            Ok(_) => {}
        }
    }
    first.context("local peer 0 ended without an outcome")
}

impl<T: Trainer> Task for TrainTask<T> {
    type Output = Trained;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Trained> {
        train::<B, T>(
            &self.trainer,
            (self.spec, self.peer),
            &device,
            self.resume,
            &self.stop,
            "",
        )
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
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    /// `train.dtype = "bf16"` (mixed precision, f32 masters) applies on cuda
    /// only: the CPU and wgpu backends keep f32.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Shortcuts for common keys (boxed: keeps the subcommand enums small).
    #[command(flatten)]
    pub keys: Box<KeyFlags>,
}

/// Flags for the most used config keys every trainer has; `--set` reaches
/// every other one. Numbers are read even when negative (`--max-steps -1`,
/// `--learning-rate -1e-4`: clap takes only the former for a number), so
/// that the refusal names the flag or key rather than an unknown argument.
#[derive(Args)]
pub struct KeyFlags {
    /// = model: Hugging Face model directory (default: SmolLM2-135M-Instruct,
    /// fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// = output_dir: the run directory.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// = data.train_file
    #[arg(long)]
    train_file: Option<PathBuf>,
    /// = learning_rate
    #[arg(long, allow_hyphen_values = true)]
    learning_rate: Option<f64>,
    /// = train.batch_size
    #[arg(long, allow_negative_numbers = true)]
    batch_size: Option<i128>,
    /// = train.grad_accum
    #[arg(long, allow_negative_numbers = true)]
    grad_accum: Option<i128>,
    /// = train.epochs
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<i128>,
    /// = train.max_steps
    #[arg(long, allow_negative_numbers = true)]
    max_steps: Option<i128>,
    /// = train.seed
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<i128>,
    /// = train.save_steps
    #[arg(long, allow_negative_numbers = true)]
    save_steps: Option<i128>,
    /// = lora.r (any lora.* key turns LoRA on)
    #[arg(long, allow_negative_numbers = true)]
    lora_r: Option<i128>,
    /// = lora.alpha
    #[arg(long, allow_hyphen_values = true)]
    lora_alpha: Option<f64>,
    /// = lora.dropout
    #[arg(long, allow_hyphen_values = true)]
    lora_dropout: Option<f64>,
    /// = lora.target_modules: `all-linear` or names, comma-separated.
    #[arg(long)]
    lora_target_modules: Option<String>,
}

/// The flags of the trainers that learn from fixed examples (SFT, reward,
/// DPO): a validation set, the sequence length and evaluations. The online-RL
/// commands have none of these keys and do not offer them.
#[derive(Args)]
pub struct SupervisedFlags {
    /// = data.validation_file
    #[arg(long)]
    validation_file: Option<PathBuf>,
    /// = data.validation_split
    #[arg(long, allow_hyphen_values = true)]
    validation_split: Option<f64>,
    /// = data.max_len
    #[arg(long, allow_negative_numbers = true)]
    max_len: Option<i128>,
    /// = train.eval_steps
    #[arg(long, allow_negative_numbers = true)]
    eval_steps: Option<i128>,
}

/// [`TrainArgs`] and [`SupervisedFlags`]: `alignkit sft`, `alignkit reward
/// train` and `alignkit dpo`.
#[derive(Args)]
pub struct SupervisedArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    /// Boxed: keeps the subcommand enums small.
    #[command(flatten)]
    pub data: Box<SupervisedFlags>,
}

impl SupervisedArgs {
    /// [`train_cli::run`](run) with the supervised flags before the command's
    /// own `extra` ones.
    pub fn run<T: Trainer>(
        &self,
        extra: &[(&str, Option<String>)],
        load: impl FnOnce(Option<&Path>, &[(String, String)]) -> Result<T>,
    ) -> Result<()> {
        let mut keys: Vec<(&str, Option<String>)> = self.data.overrides()?;
        keys.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        run(&self.train, &keys, load)
    }
}

impl SupervisedFlags {
    fn overrides(&self) -> Result<Vec<(&'static str, Option<String>)>> {
        let quote = |p: &Path| format!("{:?}", p.display().to_string());
        Ok(vec![
            (
                "data.validation_file",
                self.validation_file.as_deref().map(quote),
            ),
            (
                "data.validation_split",
                self.validation_split.map(|v| v.to_string()),
            ),
            ("data.max_len", unsigned("--max-len", self.max_len)?),
            (
                "train.eval_steps",
                unsigned("--eval-steps", self.eval_steps)?,
            ),
        ])
    }
}

/// An integer flag's value for a key that holds a non-negative integer.
pub fn unsigned(flag: &str, value: Option<i128>) -> Result<Option<String>> {
    match value {
        Some(v) if v < 0 => bail!("{flag} must be a non-negative integer, got {v}"),
        v => Ok(v.map(|v| v.to_string())),
    }
}

impl TrainArgs {
    /// The flags as `key=value` overrides, in the order they apply: the
    /// shortcuts, then the command's own `extra` ones, then `--set`.
    pub fn overrides(&self, extra: &[(&str, Option<String>)]) -> Result<Vec<(String, String)>> {
        let mut out = self.keys.overrides()?;
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
    fn overrides(&self) -> Result<Vec<(String, String)>> {
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
            "learning_rate",
            self.learning_rate.map(|v| format!("{v:e}")),
        );
        push(
            "train.batch_size",
            unsigned("--batch-size", self.batch_size)?,
        );
        push(
            "train.grad_accum",
            unsigned("--grad-accum", self.grad_accum)?,
        );
        push("train.epochs", unsigned("--epochs", self.epochs)?);
        push("train.max_steps", unsigned("--max-steps", self.max_steps)?);
        push("train.seed", unsigned("--seed", self.seed)?);
        push(
            "train.save_steps",
            unsigned("--save-steps", self.save_steps)?,
        );
        push("lora.r", unsigned("--lora-r", self.lora_r)?);
        push("lora.alpha", self.lora_alpha.map(|v| format!("{v:?}")));
        push("lora.dropout", self.lora_dropout.map(|v| format!("{v:?}")));
        push(
            "lora.target_modules",
            self.lora_target_modules.as_ref().map(|v| format!("{v:?}")),
        );
        Ok(out)
    }
}

/// The run directory of the run in progress, for the message of a second
/// interrupt (set when a trainer reports its start).
fn current_run() -> &'static Mutex<Option<PathBuf>> {
    static RUN: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    RUN.get_or_init(|| Mutex::new(None))
}

/// Set by Ctrl-C, SIGTERM (what `timeout` and job schedulers send) or
/// SIGHUP. First signal: the running trainer finishes its step, saves a
/// checkpoint and returns. Second: exit now, keeping the newest complete
/// checkpoint (a save in progress is atomic, so it is either complete or
/// discarded) and saying which one that is.
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
            eprintln!("\ninterrupted again: exiting now; {}", kept_checkpoint());
            alignkit_train::output::remove_held();
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!(
            "\ninterrupted: finishing this step and saving a checkpoint (interrupt again to quit now)"
        );
        handler_flag.store(true, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C/SIGTERM handler")?;
    Ok(FLAG.get_or_init(|| flag).clone())
}

/// Which checkpoint a run interrupted twice resumes from.
fn kept_checkpoint() -> String {
    let run = current_run().lock().ok().and_then(|r| r.clone());
    let Some(run) = run else {
        return "no run had started".into();
    };
    let newest = list_checkpoints(&run.join(alignkit_train::run::CHECKPOINTS_DIR))
        .ok()
        .and_then(|mut c| c.pop());
    match newest {
        Some(c) => format!(
            "the run resumes from {} with --resume (a checkpoint being written is discarded)",
            c.path.display()
        ),
        None => format!(
            "{} has no complete checkpoint yet; the run must start over",
            run.display()
        ),
    }
}

/// The progress bar of a training run (step, message, ETA) on standard
/// error; hidden until the trainer reports its first progress, so that an
/// error during setup leaves no spinner behind.
pub struct StepBar {
    bar: ProgressBar,
    prefix: String,
    /// Shows nothing (a rank other than 0 of a distributed run).
    muted: bool,
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
        Self {
            bar,
            prefix,
            muted: false,
        }
    }

    /// This bar, showing nothing.
    pub fn muted(self) -> Self {
        Self {
            muted: true,
            ..self
        }
    }

    /// Show the bar, counting `what` ("step " or nothing).
    fn show(&self, what: &str) {
        if self.muted {
            return;
        }
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

    /// The run in `run_dir` starts (or resumes, with the bookkeeping
    /// `changes` since its checkpoint) at `start_step` of `total_steps`,
    /// having taken over the lock a process that ended left (`taken_over`);
    /// `what` describes it (data, parameters) on a line above the bar.
    pub fn start(
        &self,
        run_dir: &Path,
        start_step: usize,
        total_steps: usize,
        changes: &[KeyChange],
        taken_over: Option<&Holder>,
        what: &str,
    ) {
        if let Ok(mut run) = current_run().lock() {
            *run = Some(run_dir.to_path_buf());
        }
        if let Some(holder) = taken_over {
            self.println(&crate::common::taken_over_note(run_dir, holder));
        }
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
        if !changes.is_empty() {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            self.println(&format!(
                "changed since the checkpoint: {}",
                list.join("; ")
            ));
        }
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
        if self.muted {
            return;
        }
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
    // Policy-gradient losses go below zero.
    let min_loss = train.iter().chain(&eval).map(|p| p.1).fold(0.0, f64::min) * 1.05;
    let root = SVGBackend::new(svg, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..max_step, min_loss..max_loss.max(min_loss + 1e-6))?;
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

/// One panel per metric of `curves` (key, axis label) against the step, from
/// a metrics.jsonl into an SVG; a metric never logged draws an empty panel.
pub fn write_curves_plot(
    metrics: &Path,
    svg: &Path,
    title: &str,
    curves: &[(&str, &str)],
) -> Result<()> {
    use plotters::prelude::*;
    let records = alignkit_train::run::read_metrics(metrics)?;
    let root = SVGBackend::new(svg, (800, 260 * curves.len() as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let max_step = records
        .iter()
        .filter_map(|r| r.get("step")?.as_f64())
        .fold(1.0, f64::max);
    for (panel, &(key, label)) in root.split_evenly((curves.len(), 1)).iter().zip(curves) {
        let points: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| {
                let v = r.get(key)?.as_f64()?;
                v.is_finite().then_some((r.get("step")?.as_f64()?, v))
            })
            .collect();
        let (lo, hi) = points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
        let (lo, hi) = if points.is_empty() {
            (0.0, 1.0)
        } else {
            let pad = ((hi - lo) * 0.05).max(1e-6);
            (lo - pad, hi + pad)
        };
        let mut chart = ChartBuilder::on(panel)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..max_step, lo..hi)?;
        chart.configure_mesh().x_desc("step").y_desc(label).draw()?;
        chart.draw_series(LineSeries::new(points, &BLUE))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a second interrupt says: the newest complete checkpoint, never
    /// one being written, or that there is none.
    #[test]
    fn a_second_interrupt_names_the_checkpoint_the_run_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        *current_run().lock().unwrap() = Some(run.clone());
        let line = kept_checkpoint();
        assert!(
            line.ends_with("has no complete checkpoint yet; the run must start over"),
            "{line}"
        );
        let done = run.join("checkpoints/step-2");
        std::fs::create_dir_all(&done).unwrap();
        std::fs::write(done.join("trainer_state.json"), "{}").unwrap();
        std::fs::create_dir_all(run.join("checkpoints/.tmp-step-3")).unwrap();
        let line = kept_checkpoint();
        assert!(
            line.starts_with(&format!("the run resumes from {}", done.display())),
            "{line}"
        );
    }
}
