//! Running a plan: each stage in order, its manifest written before and
//! after, training stages through the same [`Trainer`] code as their commands.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use alignkit_train::StopReason;
use alignkit_train::export::ExportKind;
use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};

use super::manifest::{Manifest, Outputs, Status, now};
use super::plan::{Action, Plan, Stage};
use super::stage::{ExportDtype, ExportFormat, StageConfig};
use crate::backend::{DeviceSpec, Task, dispatch};
use crate::train_cli::{Interrupted, Trainer, stop_flag};

impl Plan {
    /// Run the plan's stages in order on the backend `device` names.
    pub fn execute(&self, device: DeviceSpec) -> Result<()> {
        let stop = stop_flag()?;
        dispatch(device, Execute { plan: self, stop })
    }
}

struct Execute<'a> {
    plan: &'a Plan,
    stop: Arc<AtomicBool>,
}

/// How a stage's work ended.
struct Ran {
    interrupted: bool,
    steps: Option<usize>,
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
                std::fs::remove_dir_all(&stage.dir)
                    .with_context(|| format!("clearing {}", stage.dir.display()))?;
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
                inputs: stage.inputs.clone(),
                outputs: None,
                final_metrics: None,
                error: None,
                started_at: now(),
                finished_at: None,
            };
            manifest.write(&stage.dir)?;
            let result = run_stage::<B>(stage, resume, &prefix, &self.stop, &device);
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
                    manifest.outputs = Some(Outputs {
                        model: stage.output_model.clone(),
                        steps: ran.steps,
                    });
                    let metrics = stage.dir.join(alignkit_train::run::METRICS_FILE);
                    if metrics.is_file() {
                        manifest.final_metrics = alignkit_train::run::read_metrics(&metrics)?.pop();
                    }
                    manifest.write(&stage.dir)?;
                    eprintln!("{prefix} done: {}", stage.output_model.display());
                }
            }
        }
        Ok(())
    }
}

/// A training stage, through the same code as its command.
fn train_stage<B: AutodiffBackend, T: Trainer>(
    trainer: &T,
    resume: bool,
    prefix: &str,
    stop: &AtomicBool,
    device: &B::Device,
) -> Result<Ran> {
    let trained = crate::train_cli::train::<B, T>(trainer, device, resume, stop, prefix)?;
    Ok(Ran {
        interrupted: trained.stop == StopReason::Interrupted,
        steps: Some(trained.steps),
    })
}

fn run_stage<B: AutodiffBackend>(
    stage: &Stage,
    resume: bool,
    prefix: &str,
    stop: &AtomicBool,
    device: &B::Device,
) -> Result<Ran> {
    match &stage.config {
        StageConfig::Sft(c) => train_stage::<B, _>(c.as_ref(), resume, prefix, stop, device),
        StageConfig::Reward(c) => train_stage::<B, _>(c.as_ref(), resume, prefix, stop, device),
        StageConfig::Dpo(c) => train_stage::<B, _>(c.as_ref(), resume, prefix, stop, device),
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
            bar.set_message(format!("writing {}", stage.output_model.display()));
            let inner = device;
            let result = match &stage.from_run {
                Some(run) => alignkit_train::export::export::<B::InnerBackend>(
                    run,
                    &stage.output_model,
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
                    &stage.output_model,
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
            })
        }
    }
}
