//! `alignkit dpo`: glue over alignkit-dpo — flags to config keys, a progress
//! bar, Ctrl-C, a one-line summary and a loss plot (see `train_cli`); the
//! pipeline's `dpo` stage runs through the same [`Trainer`] impl.

use alignkit_dpo::{CacheStatus, DpoConfig, DpoMetrics, Event, ReferenceKind};
use alignkit_train::RunOptions;
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::train_cli::{self, StepBar, SupervisedArgs, Trained, Trainer};

#[derive(Args)]
pub struct DpoArgs {
    #[command(flatten)]
    train: SupervisedArgs,
    /// = beta: inverse temperature of the implicit reward.
    #[arg(long)]
    beta: Option<f64>,
    /// = loss_type: sigmoid, ipo, hinge, robust, sigmoid_norm, apo_zero or apo_down.
    #[arg(long)]
    loss_type: Option<String>,
    /// = ref_model: the reference policy's HF directory (default: the starting model).
    #[arg(long)]
    ref_model: Option<std::path::PathBuf>,
    /// = precompute_ref_log_probs: one reference pass before training, cached on disk.
    #[arg(long)]
    precompute_ref_log_probs: Option<bool>,
}

pub fn run(args: DpoArgs) -> Result<()> {
    let extra = [
        ("beta", args.beta.map(|v| format!("{v:?}"))),
        ("loss_type", args.loss_type.map(|v| format!("{v:?}"))),
        (
            "ref_model",
            args.ref_model
                .map(|p| format!("{:?}", p.display().to_string())),
        ),
        (
            "precompute_ref_log_probs",
            args.precompute_ref_log_probs.map(|v| v.to_string()),
        ),
    ];
    args.train
        .run(&extra, |path, keys| Ok(DpoConfig::load(path, keys)?))
}

impl Trainer for DpoConfig {
    const NAME: &'static str = "DPO";

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
        let o = alignkit_dpo::train::<B>(self, device, options, &mut |e| report(bar, e));
        train_cli::ended(o, describe)
    }
}

/// A progress report on the bar.
fn report(bar: &StepBar, event: Event<'_>) {
    match event {
        Event::ReferenceProgress { split, done, total } => {
            bar.work(done, total, format!("reference log-probs ({split})"));
        }
        Event::Reference {
            split,
            status,
            path,
        } => {
            let how = match status {
                CacheStatus::Hit => "read from the cache",
                CacheStatus::Computed => "computed and cached",
            };
            bar.println(&format!(
                "reference log-probs ({split}): {how} ({})",
                path.display()
            ));
        }
        Event::Started(info) => {
            let reference = match info.reference {
                ReferenceKind::Precomputed => "precomputed",
                ReferenceKind::FrozenModel => "a frozen copy",
                ReferenceKind::AdaptersDisabled => "the policy without its adapters",
            };
            let what = format!(
                "{} pairs ({} validation, {} truncated), {} trainable parameters, reference: {reference}",
                info.train_pairs, info.validation_pairs, info.truncated, info.trainable_params,
            );
            bar.start(
                &info.run_dir,
                info.start_step,
                info.total_steps,
                &info.resumed_with,
                info.lock_taken_over.as_ref(),
                &what,
            );
        }
        Event::Step(m) => {
            let mut msg = format!(
                "loss {:.4} acc {:.2} margin {:+.3} {:.0} tok/s",
                m.loss, m.rewards_accuracies, m.rewards_margins, m.tokens_per_second
            );
            if let (Some(l), Some(a)) = (m.eval_loss, m.eval_rewards_accuracies) {
                msg.push_str(&format!(" eval {l:.4} acc {a:.2}"));
            }
            bar.step(m.step, msg, m.skipped.as_ref());
        }
        Event::Checkpoint { .. } => {}
    }
}

/// The last step's metrics in the summary line.
fn describe(m: &DpoMetrics) -> String {
    let mut s = format!(
        ", loss {:.4}, accuracy {:.2}, margin {:+.3}",
        m.loss, m.rewards_accuracies, m.rewards_margins
    );
    if let (Some(a), Some(g)) = (m.eval_rewards_accuracies, m.eval_rewards_margins) {
        s.push_str(&format!(", eval accuracy {a:.2}, eval margin {g:+.3}"));
    }
    s
}
