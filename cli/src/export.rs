//! `alignkit export`: a run (or one of its checkpoints) as a merged Hugging
//! Face model directory or a PEFT adapter (glue over alignkit_train::export).

use std::path::PathBuf;

use alignkit_model::SaveDtype;
use alignkit_train::export::{ExportKind, convert_hf_dir, export};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, ValueEnum};

use crate::backend::{DeviceSpec, Task, dispatch};

#[derive(Args)]
pub struct ExportArgs {
    /// A run directory (its newest checkpoint), a checkpoint directory
    /// (RUN_DIR/checkpoints/step-N), or an HF directory such as RUN_DIR/final.
    source: PathBuf,
    /// Write a merged Hugging Face model directory (LoRA folded in) here.
    #[arg(long, conflicts_with = "adapter", required_unless_present = "adapter")]
    merged: Option<PathBuf>,
    /// Write a PEFT adapter directory here (LoRA runs only).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Weight dtype of --merged.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Replace the output directory if it exists and is not empty.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let dtype = match args.dtype {
        Dtype::F32 => SaveDtype::F32,
        Dtype::Bf16 => SaveDtype::Bf16,
    };
    let kind = match (&args.merged, &args.adapter) {
        (Some(_), _) => ExportKind::Merged(dtype),
        (None, Some(_)) => ExportKind::Adapter,
        (None, None) => bail!("pass --merged OUT_DIR or --adapter OUT_DIR"),
    };
    let out = dispatch(DeviceSpec::Cpu, ExportTask { args, kind })?;
    let what = match kind {
        ExportKind::Merged(_) => "merged model",
        ExportKind::Adapter => "PEFT adapter",
    };
    println!("wrote {what} to {}", out.display());
    Ok(())
}

struct ExportTask {
    args: ExportArgs,
    kind: ExportKind,
}

impl Task for ExportTask {
    type Output = PathBuf;
    /// Merging and converting are cheap: done on the CPU, without autodiff.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<PathBuf> {
        let ExportTask { args, kind } = self;
        let out = args
            .merged
            .clone()
            .or(args.adapter.clone())
            .expect("checked by the caller");
        let is_training_output = args.source.join("trainer_state.json").is_file()
            || args.source.join("checkpoints").is_dir();
        if is_training_output {
            export::<B::InnerBackend>(&args.source, &out, kind, args.overwrite, &device)
                .with_context(|| format!("exporting {}", args.source.display()))?;
        } else if args.source.join("config.json").is_file() {
            let ExportKind::Merged(dtype) = kind else {
                bail!(
                    "{} holds merged weights; export the adapter from the run directory or a checkpoint",
                    args.source.display()
                );
            };
            convert_hf_dir::<B::InnerBackend>(&args.source, &out, dtype, args.overwrite, &device)
                .with_context(|| format!("exporting {}", args.source.display()))?;
        } else {
            bail!(
                "{}: not a run directory, a checkpoint or a model directory",
                args.source.display()
            );
        }
        Ok(out)
    }
}
