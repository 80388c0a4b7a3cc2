//! `alignkit reward train`: glue over alignkit-reward's trainer (flags,
//! progress bar, Ctrl-C, summary, loss plot: see `train_cli`).
//! `alignkit reward score`: each record's reward under a reward model.

use std::io::Write;
use std::path::PathBuf;

use alignkit_model::checkpoint::write_atomic;
use alignkit_model::heads::load_reward_model;
use alignkit_reward::{Event, RewardConfig, RewardMetrics, Score, score};
use alignkit_train::RunOptions;
use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::common::CompletionEndArg;
use crate::train_cli::{self, StepBar, SupervisedArgs, Trained, Trainer};

#[derive(Subcommand)]
pub enum RewardCommand {
    /// Train a reward model on preference pairs (Bradley–Terry), full or
    /// LoRA, from a TOML config (keys of alignkit_reward::RewardConfig) and flags.
    Train(SupervisedArgs),
    /// Score every record of a JSONL file (completions, conversations or
    /// preference pairs); prints or writes one JSON object per record.
    Score(ScoreArgs),
}

#[derive(Args)]
pub struct ScoreArgs {
    /// Reward model directory (an HF `*ForSequenceClassification` export).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL records to score.
    #[arg(long)]
    pub data: PathBuf,
    /// Write the scores here (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Records scored together in one forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Longer sequences lose the start of their prompt.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Where a conversation's sequence ends (the model's `data.completion_end`).
    #[arg(long, value_enum, default_value_t)]
    pub completion_end: CompletionEndArg,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

impl Task for ScoreArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        if let Some(out) = &self.out {
            ensure_distinct(out, Writes::Path, &[&self.data, &self.model])?;
        }
        let (_config, model) = load_reward_model::<B::InnerBackend>(&self.model, &device)?;
        let scored = score(
            &model,
            &self.model,
            &self.data,
            self.batch_size,
            self.max_len,
            self.completion_end.into(),
            &device,
        )?;
        let mut text = String::new();
        for record in &scored {
            let line = match record.score {
                Score::Single(reward) => {
                    serde_json::json!({"line": record.at.line, "reward": reward})
                }
                Score::Pair { chosen, rejected } => serde_json::json!({
                    "line": record.at.line, "chosen": chosen, "rejected": rejected,
                    "margin": chosen - rejected,
                }),
            };
            text.push_str(&line.to_string());
            text.push('\n');
        }
        match &self.out {
            Some(path) => write_atomic(path, text.as_bytes())?,
            None => std::io::stdout().write_all(text.as_bytes())?,
        }
        Ok(())
    }
}

pub fn run(cmd: RewardCommand) -> Result<()> {
    match cmd {
        RewardCommand::Train(args) => {
            args.run(&[], |path, keys| Ok(RewardConfig::load(path, keys)?))
        }
        RewardCommand::Score(args) => dispatch(args.device, args),
    }
}

impl Trainer for RewardConfig {
    const NAME: &'static str = "Reward model";

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
        let o = alignkit_reward::train::<B>(self, device, options, &mut |e| report(bar, e));
        train_cli::ended(o, describe)
    }
}

/// A progress report on the bar.
fn report(bar: &StepBar, event: Event<'_>) {
    match event {
        Event::Started(info) => {
            let what = format!(
                "{} pairs ({} validation, {} truncated), {} trainable parameters",
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
            let eval = match (m.eval_loss, m.eval_accuracy) {
                (Some(l), Some(a)) => format!(" eval {l:.4} acc {a:.2}"),
                _ => String::new(),
            };
            let msg = format!(
                "loss {:.4} acc {:.2} lr {:.2e} {:.0} tok/s{eval}",
                m.loss, m.accuracy, m.learning_rate, m.tokens_per_second
            );
            bar.step(m.step, msg, m.skipped.as_ref());
        }
        Event::Checkpoint { .. } => {}
    }
}

/// The last step's metrics in the summary line.
fn describe(m: &RewardMetrics) -> String {
    let mut s = format!(", loss {:.4}, accuracy {:.2}", m.loss, m.accuracy);
    if let (Some(a), Some(g)) = (m.eval_accuracy, m.eval_margin) {
        s.push_str(&format!(", eval accuracy {a:.2}, eval margin {g:+.3}"));
    }
    s
}
