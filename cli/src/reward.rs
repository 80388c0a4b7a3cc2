//! `alignkit reward score`: each record's reward under a reward model.

use std::io::Write;
use std::path::PathBuf;

use alignkit_model::checkpoint::write_atomic;
use alignkit_model::heads::load_reward_model;
use alignkit_reward::{Score, score};
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};

use crate::backend::{DeviceSpec, Task, dispatch};

#[derive(Subcommand)]
pub enum RewardCommand {
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
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Longer sequences lose the start of their prompt.
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

impl Task for ScoreArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let (_config, model) = load_reward_model::<B::InnerBackend>(&self.model, &device)?;
        let scored = score(
            &model,
            &self.model,
            &self.data,
            self.batch_size,
            self.max_len,
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
        RewardCommand::Score(args) => dispatch(args.device, args),
    }
}
