//! `alignkit sft`: glue over alignkit-sft — flags to config keys, a progress
//! bar, Ctrl-C, a one-line summary and a loss plot (see `train_cli`).

use alignkit_sft::{Event, SftConfig, SftMetrics};
use alignkit_train::RunOptions;
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::train_cli::{self, StepBar, SupervisedArgs, Trained, Trainer};

#[derive(Args)]
pub struct SftArgs {
    #[command(flatten)]
    train: SupervisedArgs,
    /// = data.packing
    #[arg(long)]
    packing: Option<bool>,
}

pub fn run(args: SftArgs) -> Result<()> {
    let packing = args.packing.map(|v| v.to_string());
    args.train.run(&[("data.packing", packing)], |path, keys| {
        Ok(SftConfig::load(path, keys)?)
    })
}

impl Trainer for SftConfig {
    const NAME: &'static str = "SFT";

    fn model_mut(&mut self) -> &mut std::path::PathBuf {
        &mut self.model
    }

    fn loop_mut(&mut self) -> &mut alignkit_train::LoopConfig {
        &mut self.train
    }

    fn lora_dropout(&self) -> f64 {
        self.lora.as_ref().map_or(0.0, |l| l.dropout)
    }

    fn train<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        options: RunOptions<'_>,
        bar: &StepBar,
    ) -> Result<Trained> {
        let o = alignkit_sft::train::<B>(self, device, options, &mut |e| report(bar, e));
        train_cli::ended(o, describe)
    }
}

/// A progress report on the bar.
fn report(bar: &StepBar, event: Event<'_>) {
    match event {
        Event::Started(info) => bar.start(
            &info.run_dir,
            info.start_step,
            info.total_steps,
            &info.resumed_with,
            info.lock_taken_over.as_ref(),
            &format!(
                "{} examples ({} validation, {} truncated, {} without trained tokens), {} trainable of {} parameters",
                info.train_examples,
                info.validation_examples,
                info.truncated,
                info.without_targets,
                info.trainable_params,
                info.total_params,
            ),
        ),
        Event::Step(m) => {
            let mut msg = format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                m.loss, m.learning_rate, m.tokens_per_second
            );
            if let Some(e) = m.eval_loss {
                msg.push_str(&format!(" eval {e:.4}"));
            }
            bar.step(m.step, msg, m.skipped.as_ref());
        }
        Event::Checkpoint { .. } => {}
    }
}

/// The last step's metrics in the summary line.
fn describe(m: &SftMetrics) -> String {
    format!(", loss {:.4}", m.loss)
}
