//! Running a plan: each stage in order, its manifest written before and
//! after, training stages through the same [`Trainer`] code as their commands
//! and eval stages through `alignkit eval winrate`'s.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use alignkit_train::StopReason;
use alignkit_train::export::ExportKind;
use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};

use super::manifest::{Inputs, Manifest, Outputs, Status, now};
use super::plan::{Action, Plan, Stage};
use super::stage::{EvalConfig, ExportDtype, ExportFormat, StageConfig, StageKind, StageLaunch};
use crate::backend::{DeviceSpec, Task, dispatch};
use crate::common::SamplingArgs;
use crate::eval::WinrateArgs;
use crate::train_cli::{Interrupted, Trainer, stop_flag};

impl Plan {
    /// Run the plan's stages in order on the backend `device` names.
    pub fn execute(&self, device: DeviceSpec) -> Result<()> {
        self.check_cleared()?;
        let stop = stop_flag()?;
        dispatch(
            device,
            Execute {
                plan: self,
                stop,
                device,
            },
        )
    }
}

impl Plan {
    /// No stage directory that a fresh run clears holds one of the
    /// pipeline's inputs: its file, data, or a model no stage produces.
    fn check_cleared(&self) -> Result<()> {
        let mut inputs: Vec<&Path> = vec![&self.file, &self.base_model];
        for stage in &self.stages {
            let i = &stage.inputs;
            inputs.extend(i.data.iter().map(|d| d.path.as_path()));
            let models = std::iter::once(&i.model).chain(i.models.values());
            inputs.extend(
                models
                    .filter(|m| m.from.is_none())
                    .map(|m| m.path.as_path()),
            );
        }
        for stage in &self.stages {
            if let Action::Run(_) = stage.action {
                ensure_distinct(&stage.dir, Writes::Tree, &inputs)
                    .with_context(|| format!("stage `{}`", stage.name))?;
            }
        }
        Ok(())
    }
}

struct Execute<'a> {
    plan: &'a Plan,
    stop: Arc<AtomicBool>,
    /// What `device` was chosen by (an eval stage's `WinrateArgs` carry it).
    device: DeviceSpec,
}

/// How a stage's work ended.
struct Ran {
    interrupted: bool,
    steps: Option<usize>,
    /// An eval stage's win-rate report (its manifest's `final_metrics`).
    report: Option<serde_json::Value>,
}

impl Task for Execute<'_> {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let total = self.plan.stages.len();
        for (k, stage) in self.plan.stages.iter().enumerate() {
            let prefix = format!("[{}/{total} {}]", k + 1, stage.name);
            let resume = match &stage.action {
                Action::Skip(why) => {
                    eprintln!("{prefix} skip: {why}");
                    continue;
                }
                Action::Resume(_) => true,
                Action::Run(_) => false,
            };
            eprintln!(
                "{prefix} {}: {}",
                stage.action.word(),
                stage.action.reason()
            );
            if !resume && stage.dir.exists() {
                clear(stage)?;
            }
            std::fs::create_dir_all(&stage.dir)
                .with_context(|| format!("creating {}", stage.dir.display()))?;
            let mut manifest = Manifest {
                stage: stage.name.clone(),
                kind: stage.kind,
                status: Status::Running,
                sha256: stage.sha256.clone(),
                config_sha256: stage.config_sha256.clone(),
                config: stage.config.to_json(),
                ranks: stage.ranks(),
                inputs: Inputs {
                    // Read now: the stages before it have written their models.
                    fingerprints: stage.fingerprints(),
                    ..stage.inputs.clone()
                },
                outputs: None,
                final_metrics: None,
                error: None,
                started_at: now(),
                finished_at: None,
            };
            manifest.write(&stage.dir)?;
            let result = run_stage::<B>(stage, resume, &prefix, &self.stop, self.device, &device);
            manifest.finished_at = Some(now());
            match result {
                Err(e) => {
                    manifest.status = Status::Failed;
                    manifest.error = Some(format!("{e:#}"));
                    manifest.write(&stage.dir)?;
                    return Err(e.context(format!("stage `{}`", stage.name)));
                }
                Ok(ran) if ran.interrupted => {
                    manifest.status = Status::Interrupted;
                    manifest.write(&stage.dir)?;
                    return Err(Interrupted(format!(
                        "interrupted during stage `{}`; run the same command again to resume it",
                        stage.name
                    ))
                    .into());
                }
                Ok(ran) => {
                    manifest.status = Status::Completed;
                    let eval = stage.kind == StageKind::Eval;
                    manifest.outputs = Some(Outputs {
                        model: (!eval).then(|| stage.output.clone()),
                        report: eval.then(|| stage.output.clone()),
                        steps: ran.steps,
                    });
                    let metrics = stage.dir.join(alignkit_train::run::METRICS_FILE);
                    if metrics.is_file() {
                        manifest.final_metrics = alignkit_train::run::read_metrics(&metrics)?.pop();
                    }
                    if ran.report.is_some() {
                        manifest.final_metrics = ran.report;
                    }
                    manifest.write(&stage.dir)?;
                    eprintln!("{prefix} done: {}", stage.output.display());
                }
            }
        }
        Ok(())
    }
}

/// A training stage run data parallel: its resolved config written next to
/// its run, then `alignkit launch ... -- KIND --config FILE` (the stage's
/// command through the launcher, as a user would type it).
fn launched_stage(
    stage: &Stage,
    launch: &StageLaunch,
    resume: bool,
    spec: DeviceSpec,
) -> Result<Ran> {
    std::fs::create_dir_all(&stage.dir)
        .with_context(|| format!("creating {}", stage.dir.display()))?;
    let config = stage.dir.join("launch-config.toml");
    alignkit_model::checkpoint::write_atomic(&config, stage.config.to_toml().as_bytes())
        .with_context(|| format!("writing {}", config.display()))?;
    let exe = std::env::current_exe().context("finding the alignkit executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["launch", "--nproc-per-node"])
        .arg(launch.nproc_per_node.to_string());
    if !launch.devices.is_empty() {
        cmd.arg("--devices").arg(launch.devices.join(","));
    }
    cmd.arg("--master-port")
        .arg(launch.master_port.to_string())
        .arg("--timeout")
        .arg(launch.timeout.to_string())
        .arg("--")
        .args(match stage.kind {
            StageKind::Reward => &["reward", "train"][..],
            StageKind::Dpo => &["dpo"][..],
            StageKind::Grpo => &["grpo"][..],
            StageKind::Rloo => &["rloo"][..],
            StageKind::Ppo => &["ppo"][..],
            _ => &["sft"][..],
        })
        .arg("--config")
        .arg(&config)
        .arg("--device")
        .arg(spec.to_string());
    if resume {
        cmd.arg("--resume");
    }
    let status = cmd.status().context("starting alignkit launch")?;
    let interrupted = status.code() == Some(crate::train_cli::EXIT_INTERRUPTED);
    if !status.success() && !interrupted {
        bail!("stage `{}`: the launched run failed ({status})", stage.name);
    }
    let metrics = stage.dir.join(alignkit_train::run::METRICS_FILE);
    let steps = alignkit_train::run::read_metrics(&metrics)?
        .last()
        .and_then(|m| m["step"].as_u64())
        .map(|s| s as usize);
    Ok(Ran {
        interrupted,
        steps,
        report: None,
    })
}

/// A training stage, through the same code as its command.
fn train_stage<B: AutodiffBackend, T: Trainer>(
    trainer: &T,
    spec: DeviceSpec,
    resume: bool,
    prefix: &str,
    stop: &AtomicBool,
    device: &B::Device,
) -> Result<Ran> {
    let trained =
        crate::train_cli::train::<B, T>(trainer, (spec, 0), device, resume, stop, prefix)?;
    Ok(Ran {
        interrupted: trained.stop == StopReason::Interrupted,
        steps: Some(trained.steps),
        report: None,
    })
}

/// Empty a stage's directory for a fresh run. An eval stage keeps its
/// `generations/`: they are cached by model content, prompts and settings,
/// so a re-run samples only what changed.
fn clear(stage: &Stage) -> Result<()> {
    let clearing = |e| anyhow::Error::new(e).context(format!("clearing {}", stage.dir.display()));
    if stage.kind != StageKind::Eval {
        return std::fs::remove_dir_all(&stage.dir).map_err(clearing);
    }
    for entry in std::fs::read_dir(&stage.dir).map_err(clearing)? {
        let path = entry.map_err(clearing)?.path();
        if path.file_name().is_some_and(|n| n == "generations") {
            continue;
        }
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(clearing)?;
    }
    Ok(())
}

/// `alignkit eval winrate` of the stage's input policy against its baseline,
/// into the stage directory, as `eval winrate --out` writes it.
fn eval_stage<B: AutodiffBackend>(
    config: &EvalConfig,
    stage: &Stage,
    spec: DeviceSpec,
    device: &B::Device,
) -> Result<Ran> {
    let judges = config
        .judges
        .iter()
        .enumerate()
        .map(
            |(i, judge)| match stage.inputs.models.get(&format!("judges[{i}]")) {
                Some(m) => format!("reward:{}", m.path.display()),
                None => judge.clone(),
            },
        )
        .collect();
    let args = WinrateArgs {
        policy: Some(stage.inputs.model.path.clone()),
        baseline: Some(stage.inputs.models["baseline"].path.clone()),
        prompts: Some(config.prompts.clone()),
        judges,
        tie_margin: config.tie_margin,
        judgments: Vec::new(),
        candidates: None,
        out: Some(stage.dir.clone()),
        template: Default::default(),
        chat: config.chat,
        batch_size: config.batch_size,
        sampling: SamplingArgs {
            max_new_tokens: config.max_new_tokens,
            temperature: config.temperature,
            top_k: config.top_k,
            top_p: config.top_p,
            min_p: config.min_p,
            seed: config.seed,
            stop: config.stop.clone(),
        },
        json: false,
        device: spec,
    };
    let mut report = crate::eval::winrate::<B::InnerBackend>(&args, device)?;
    // Judges as the pipeline file names them (`reward:rm`, not its path);
    // the stage refuses `human`, so each judge has its result.
    for (result, judge) in report.judges.iter_mut().zip(&config.judges) {
        result.judge = judge.clone();
    }
    report.write_files(&stage.dir)?;
    print!("{}", report.table());
    Ok(Ran {
        interrupted: false,
        steps: None,
        report: Some(serde_json::to_value(&report)?),
    })
}

fn run_stage<B: AutodiffBackend>(
    stage: &Stage,
    resume: bool,
    prefix: &str,
    stop: &AtomicBool,
    spec: DeviceSpec,
    device: &B::Device,
) -> Result<Ran> {
    if let Some(launch) = &stage.launch {
        return launched_stage(stage, launch, resume, spec);
    }
    match &stage.config {
        StageConfig::Sft(c) => train_stage::<B, _>(c.as_ref(), spec, resume, prefix, stop, device),
        StageConfig::Reward(c) => {
            train_stage::<B, _>(c.as_ref(), spec, resume, prefix, stop, device)
        }
        StageConfig::Dpo(c) => train_stage::<B, _>(c.as_ref(), spec, resume, prefix, stop, device),
        StageConfig::Rl(c) => train_stage::<B, _>(c.as_ref(), spec, resume, prefix, stop, device),
        StageConfig::Eval(c) => eval_stage::<B>(c, stage, spec, device),
        StageConfig::Export(config) => {
            let dtype = match config.dtype {
                ExportDtype::F32 => alignkit_model::SaveDtype::F32,
                ExportDtype::Bf16 => alignkit_model::SaveDtype::Bf16,
            };
            let kind = match config.format {
                ExportFormat::Merged => ExportKind::Merged(dtype),
                ExportFormat::Adapter => ExportKind::Adapter,
            };
            let bar = ProgressBar::new_spinner().with_prefix(prefix.to_string());
            bar.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {msg}").expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar.set_message(format!("writing {}", stage.output.display()));
            let inner = device;
            let result = match &stage.from_run {
                Some(run) => alignkit_train::export::export::<B::InnerBackend>(
                    run,
                    &stage.output,
                    kind,
                    true,
                    inner,
                ),
                None if kind == ExportKind::Adapter => {
                    bar.finish_and_clear();
                    bail!("an adapter export needs a LoRA training stage as its `from`");
                }
                None => alignkit_train::export::convert_hf_dir::<B::InnerBackend>(
                    &stage.inputs.model.path,
                    &stage.output,
                    dtype,
                    true,
                    inner,
                ),
            };
            bar.finish_and_clear();
            result?;
            Ok(Ran {
                interrupted: false,
                steps: None,
                report: None,
            })
        }
    }
}
