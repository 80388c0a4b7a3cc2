//! `alignkit run pipeline.toml`: staged training (SFT → DPO → export, ...),
//! each stage in its own run directory with a `manifest.json`. A stage whose
//! inputs and config are unchanged since it completed is skipped, an
//! interrupted one resumes from its newest checkpoint, and a stage re-runs when
//! anything upstream of it changed.
//!
//! ```toml
//! model = "models/SmolLM2-135M-Instruct"   # the first stage's input (relative: to this file)
//! output_dir = "runs/demo"                 # RUN: stage `x` writes RUN/x/
//!
//! [[stage]]
//! name = "sft"
//! kind = "sft"                             # sft | reward | dpo | grpo | rloo | ppo | eval | export
//! [stage.config]                           # the stage's own config (SftConfig here),
//! learning_rate = 2e-4                     # without `model` and `output_dir`
//! data.train_file = "sft.jsonl"
//!
//! [[stage]]
//! name = "rm"
//! kind = "reward"                          # a reward model on the SFT backbone
//! [stage.config]                           # (RewardConfig)
//! data.train_file = "prefs.jsonl"
//!
//! [[stage]]
//! name = "dpo"
//! kind = "dpo"                             # input: the previous policy stage's model,
//! from = "sft"                             # or the named stage's
//! [stage.config]
//! data.train_file = "prefs.jsonl"
//!
//! [[stage]]
//! name = "grpo"
//! kind = "grpo"                            # or "rloo", "ppo": RlConfig; no [grpo] table: its defaults
//! [stage.config]
//! data.train_file = "prompts.jsonl"
//! [[stage.config.rewards]]
//! kind = "model"
//! stage = "rm"                             # the reward stage's model (or path = "DIR")
//!
//! [[stage]]
//! name = "eval"
//! kind = "eval"                            # `alignkit eval winrate` of its input policy
//! [stage.config]
//! prompts = "heldout.jsonl"
//! judges = ["rule:one-sentence", "reward:rm"]   # reward:NAME (a reward stage) or reward:DIR
//! baseline = "sft"                         # a stage or a directory; default: the base model
//! max_new_tokens = 64                      # and the other flags of `eval winrate`
//! ```
//!
//! A `reward` stage's output is a reward model (an HF
//! `*ForSequenceClassification` directory), not a policy: a stage without
//! `from` takes the last *policy* stage's model, so the stage after a reward
//! stage trains the policy before it. Only another `reward` stage (to train it
//! further) or a merged `export` (`from = "rm"`) may name a reward stage as
//! its `from`; an RL stage reads it as a reward (`stage = "rm"` in a
//! `[[stage.config.rewards]]` of kind `model`, a pipeline-only key that becomes
//! its `path`) and an eval stage as a judge (`reward:rm`).
//!
//! An `eval` stage writes what `alignkit eval winrate --out` writes into its
//! directory (`winrate.json`/`.svg`, `responses.jsonl`, the `generations/`
//! cache, kept across re-runs), prints the table and records the report as its
//! manifest's `final_metrics`. It outputs no model: a stage after it takes the
//! policy before it, and none may take its model `from` it. People cannot
//! judge in a pipeline (`alignkit eval winrate --judge human`).
//!
//! Stage identity: SHA-256 over the stage kind, its resolved config (every
//! default written out), the SHA-256 of each data file, its input model's
//! identity — the base model's fingerprint, or the upstream stage's identity —
//! and those of the other models it reads (reward models, judges, baseline).
//! The chain makes a change anywhere upstream reach every later stage; a stage
//! runs after every stage whose model it reads. The manifest also records the
//! content fingerprint of every model the stage read (its input, those
//! models, a DPO `ref_model`, a PPO `ppo.value_model`): one that holds other
//! weights now (another stage's `final/` replaced, say) re-runs the stage, and
//! so the stages after it. A stage whose finished run
//! differs from it only in what cannot change its result keeps that run's
//! identity (`plan::keep_equivalent_identity`): config keys added to alignkit
//! since (read at their defaults), activation checkpointing, and paths whose
//! content the identity holds anyway (a moved project).

mod execute;
mod manifest;
mod plan;
mod stage;
mod validate;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::backend::DeviceSpec;

pub use manifest::Manifest;
pub use plan::Plan;
pub use stage::StageKind;

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file (`[[stage]]` entries).
    pub pipeline: PathBuf,
    /// The pipeline's run directory (default: `output_dir` in the file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The first stage's input model (default: `model` in the file, else
    /// SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print the plan (run / skip / resume per stage, and why) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn run(args: RunArgs) -> Result<()> {
    let load = || Plan::load(&args.pipeline, args.out.as_deref(), args.model.as_deref());
    if args.dry_run {
        print!("{}", load()?.describe());
        return Ok(());
    }
    // One pipeline at a time plans and runs in a run directory.
    let out = Plan::out_dir(&args.pipeline, args.out.as_deref())?;
    let created = !out.exists();
    let lock = crate::common::lock_dir(&out)?;
    let plan = match load() {
        Ok(plan) => plan,
        Err(e) => {
            // Bad input does no work, not even an empty run directory.
            drop(lock);
            if created {
                let _ = std::fs::remove_dir(&out);
            }
            return Err(e);
        }
    };
    print!("{}", plan.describe());
    plan.execute(args.device)?;
    Ok(())
}
