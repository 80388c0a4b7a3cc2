//! alignkit: align open language models on your own hardware.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod backend;
mod bench;
mod common;
mod data;
mod demo;
mod dpo;
mod eval;
mod export;
mod generate;
mod label;
mod logprobs;
mod pipeline;
mod pull;
mod reward;
mod rl;
mod sft;
mod train_cli;

#[derive(Parser)]
#[command(
    name = "alignkit",
    version,
    about = "Align open language models on your own hardware"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch a known model into the cache and import it (idempotent).
    Pull(pull::PullArgs),
    /// Convert a GGUF file into a Hugging Face model directory.
    ImportGguf(pull::ImportArgs),
    /// Generate text from prompts, or a candidates file for `alignkit label` from
    /// one or more models.
    Generate(generate::GenerateArgs),
    /// Win rates against a baseline (reward model, rule or human judges) and drift
    /// from the reference (KL, NLL on general text).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Chat interactively with a model.
    Chat(generate::ChatArgs),
    /// Per-token log-probabilities of a completion given a prompt.
    Logprobs(logprobs::LogprobsArgs),
    /// Measure forward, training-step and decode speed (optionally against PyTorch).
    Bench(bench::BenchArgs),
    /// Validate and inspect JSONL training data.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Rank model responses in the terminal; export and summarise judgments.
    Label(label::LabelArgs),
    /// Reward models: train one on preference pairs; score data with one.
    #[command(subcommand)]
    Reward(reward::RewardCommand),
    /// Supervised fine-tuning (full or LoRA) from a TOML config and flags.
    Sft(sft::SftArgs),
    /// Direct Preference Optimization (seven losses, full or LoRA) on
    /// preference pairs, from a TOML config and flags.
    Dpo(dpo::DpoArgs),
    /// GRPO: online RL on the policy's own samples, group-normalised
    /// advantages (reward model, rule and sentiment rewards), from a TOML
    /// config with a `[grpo]` table.
    Grpo(rl::RlArgs),
    /// RLOO: online RL with a leave-one-out baseline, from a TOML config with
    /// an `[rloo]` table.
    Rloo(rl::RlArgs),
    /// Export a run or checkpoint as a merged HF directory or a PEFT adapter.
    Export(export::ExportArgs),
    /// Run a staged pipeline (sft, reward, dpo, export) from a TOML file, skipping
    /// finished stages and resuming interrupted ones.
    Run(pipeline::RunArgs),
    /// The quickstart: SFT, a reward model and DPO on SmolLM2 to answer in one
    /// sentence, with a before/after evaluation on held-out prompts.
    Demo(demo::DemoArgs),
}

/// Keep freed tensor buffers in the process. By default glibc serves blocks
/// above 128 kB (adaptively up to 32 MB) with mmap and unmaps them on free,
/// so every fresh activation or gradient buffer pays page faults and kernel
/// zeroing: measured on SmolLM2 4 × 256, a CPU forward takes 3.3 s with
/// these settings instead of 4.9 s.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 0 {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        if let Some(interrupted) = err.downcast_ref::<train_cli::Interrupted>() {
            println!("{interrupted}");
            std::process::exit(train_cli::EXIT_INTERRUPTED);
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pull(args) => pull::run_pull(args),
        Command::ImportGguf(args) => pull::run_import(args),
        Command::Generate(args) => generate::run_generate(args),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Chat(args) => generate::run_chat(args),
        Command::Logprobs(args) => logprobs::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Label(args) => label::run(args),
        Command::Reward(cmd) => reward::run(cmd),
        Command::Sft(args) => sft::run(args),
        Command::Dpo(args) => dpo::run(args),
        Command::Grpo(args) => rl::run(rl::Algorithm::Grpo, args),
        Command::Rloo(args) => rl::run(rl::Algorithm::Rloo, args),
        Command::Export(args) => export::run(args),
        Command::Run(args) => pipeline::run(args),
        Command::Demo(args) => demo::run(args),
    }
}
