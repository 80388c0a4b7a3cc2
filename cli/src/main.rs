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
mod frontier;
mod generate;
mod label;
mod launch;
mod logprobs;
mod parity;
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
    about = "Align open language models on your own hardware",
    after_help = examples::ROOT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch a known model into the cache and import it (idempotent).
    #[command(after_help = examples::PULL)]
    Pull(pull::PullArgs),
    /// Convert a GGUF file (llama, qwen2, qwen3, olmo2, gemma3, phi3, smollm3) into a Hugging Face
    /// model directory.
    #[command(after_help = examples::IMPORT_GGUF)]
    ImportGguf(pull::ImportArgs),
    /// Generate text from prompts, or a candidates file for `alignkit label` from
    /// one or more models.
    #[command(
        after_help = examples::GENERATE,
        mut_arg("max_new_tokens", help_if_missing(MAX_NEW_TOKENS)),
        mut_arg("seed", help_if_missing(SEED))
    )]
    Generate(generate::GenerateArgs),
    /// Win rates against a baseline (reward model, rule or human judges) and drift
    /// from the reference (KL, NLL on general text).
    #[command(subcommand, after_help = examples::EVAL)]
    #[command(mut_subcommand("winrate", |c| c.after_help(examples::EVAL_WINRATE)))]
    #[command(mut_subcommand("drift", |c| c.after_help(examples::EVAL_DRIFT)))]
    Eval(eval::EvalCommand),
    /// Chat interactively with a model.
    #[command(
        after_help = examples::CHAT,
        mut_arg("max_new_tokens", help_if_missing(MAX_NEW_TOKENS)),
        mut_arg("seed", help_if_missing(SEED))
    )]
    Chat(generate::ChatArgs),
    /// Per-token log-probabilities of a completion given a prompt.
    #[command(after_help = examples::LOGPROBS)]
    Logprobs(logprobs::LogprobsArgs),
    /// Measure forward, training-step and decode speed (optionally against PyTorch).
    #[command(after_help = examples::BENCH)]
    Bench(bench::BenchArgs),
    /// Logits of the tiny fixture models on a device against transformers'
    /// and the CPU backend's (the check of a GPU build).
    #[command(after_help = examples::PARITY)]
    Parity(parity::ParityArgs),
    /// Validate and inspect JSONL training data.
    #[command(subcommand, after_help = examples::DATA)]
    #[command(mut_subcommand("validate", |c| c.after_help(examples::DATA_VALIDATE)))]
    #[command(mut_subcommand("inspect", |c| c.after_help(examples::DATA_INSPECT)))]
    Data(data::DataCommand),
    /// Rank model responses in the terminal; export and summarise judgments.
    #[command(after_help = examples::LABEL)]
    #[command(mut_subcommand("export", |c| c.after_help(examples::LABEL_EXPORT)))]
    #[command(mut_subcommand("stats", |c| c.after_help(examples::LABEL_STATS)))]
    Label(label::LabelArgs),
    /// Reward models: train one on preference pairs; score data with one.
    #[command(subcommand, after_help = examples::REWARD)]
    #[command(mut_subcommand("train", |c| c.after_help(examples::REWARD_TRAIN)))]
    #[command(mut_subcommand("score", |c| c.after_help(examples::REWARD_SCORE)))]
    Reward(reward::RewardCommand),
    /// Supervised fine-tuning (full or LoRA) from a TOML config and flags.
    #[command(after_help = examples::SFT)]
    Sft(sft::SftArgs),
    /// Direct Preference Optimization (seven losses, full or LoRA) on
    /// preference pairs, from a TOML config and flags.
    #[command(after_help = examples::DPO)]
    Dpo(dpo::DpoArgs),
    /// GRPO: online RL on the policy's own samples, group-normalised
    /// advantages (reward model, rule and sentiment rewards), from a TOML
    /// config with a `[grpo]` table.
    #[command(after_help = examples::GRPO)]
    Grpo(rl::RlArgs),
    /// RLOO: online RL with a leave-one-out baseline, from a TOML config with
    /// an `[rloo]` table.
    #[command(after_help = examples::RLOO)]
    Rloo(rl::RlArgs),
    /// PPO: online RL with a learned critic (GAE, clipped policy and value
    /// losses, per-token KL penalty), from a TOML config with a `[ppo]` table.
    #[command(after_help = examples::PPO)]
    Ppo(rl::RlArgs),
    /// Data-parallel training: start the ranks of a trainer command on this
    /// machine (and, with --nnodes, others), torchrun's conventions.
    #[command(after_help = examples::LAUNCH)]
    Launch(launch::LaunchArgs),
    /// Export a run or checkpoint as a merged HF directory or a PEFT adapter.
    #[command(after_help = examples::EXPORT)]
    Export(export::ExportArgs),
    /// Run a staged pipeline (sft, reward, dpo, grpo, rloo, ppo, eval, export) from a
    /// TOML file, skipping finished stages and resuming interrupted ones.
    #[command(after_help = examples::RUN)]
    Run(pipeline::RunArgs),
    /// The quickstart: SFT, a reward model and DPO on SmolLM2 to answer in one
    /// sentence, with a before/after evaluation on held-out prompts.
    #[command(after_help = examples::DEMO)]
    Demo(demo::DemoArgs),
}

/// Flags of the sampling arguments, described here while their definitions
/// have no description of their own.
const MAX_NEW_TOKENS: &str = "Longest continuation, in new tokens.";
const SEED: &str = "Seed of the sampling RNG (with --temperature above 0).";

/// Give `arg` the description `help` unless it has one.
fn help_if_missing(help: &'static str) -> impl FnOnce(clap::Arg) -> clap::Arg {
    move |arg| {
        if arg.get_help().is_some() {
            arg
        } else {
            arg.help(help)
        }
    }
}

/// What `--help` ends with: commands that work as written.
mod examples {
    pub const ROOT: &str = "\
Examples:
  alignkit demo                                   the quickstart: SFT, reward model, DPO
  alignkit generate --prompt \"Why is the sky blue?\" --chat
  alignkit sft --config sft.toml                  fine-tune on your own data
  alignkit sft --help                             flags and examples of a command";
    pub const PULL: &str = "\
Examples:
  alignkit pull                                   fetch SmolLM2-135M-Instruct into the cache
  ALIGNKIT_CACHE=/data/alignkit alignkit pull     ... into another cache";
    pub const IMPORT_GGUF: &str = "\
Example:
  alignkit import-gguf model.Q8_0.gguf models/my-model";
    pub const GENERATE: &str = "\
Examples:
  alignkit generate --prompt \"Why is the sky blue?\" --chat
  alignkit generate --model runs/sft/final --prompt \"Once upon\" --prompt \"The end\" --json
  alignkit generate --prompt \"List three colours:\" --temperature 0.7 --top-p 0.9 --seed 1";
    pub const CHAT: &str = "\
Examples:
  alignkit chat
  alignkit chat --model runs/dpo/final --system \"Answer in one sentence.\"";
    pub const LOGPROBS: &str = "\
Examples:
  alignkit logprobs --prompt \"The capital of France is\" --completion \" Paris.\"
  alignkit logprobs --prompt \"What is 2+2?\" --completion \"4\" --chat --json";
    pub const BENCH: &str = "\
Examples:
  alignkit bench
  alignkit bench --batch 8 --seq 512 --only forward,sft_full --json
  alignkit bench --model-config examples/bench/llama-3.2-1b-config.json --only sft_lora --gradient-checkpointing";
    pub const PARITY: &str = "\
Examples:
  alignkit parity model/tests/fixtures/llama model/tests/fixtures/qwen2 --device cuda:0
  alignkit parity model/tests/fixtures/llama --device wgpu:cpu --tolerance 1e-4 --json
  alignkit parity model/tests/fixtures/llama --dtype bf16 --tolerance 0.05";
    pub const DATA: &str = "\
Examples:
  alignkit data validate prefs.jsonl --kind prefs
  alignkit data inspect sft.jsonl --index 0 --model runs/sft/final";
    pub const DATA_VALIDATE: &str = "\
Examples:
  alignkit data validate sft.jsonl
  alignkit data validate prefs.jsonl --kind prefs --max-len 1024 --strict
  alignkit data validate mine.jsonl --field chosen=better --field rejected=worse";
    pub const DATA_INSPECT: &str = "\
Examples:
  alignkit data inspect sft.jsonl --index 0
  alignkit data inspect prefs.jsonl --index 3 --model runs/sft/final --max-len 256";
    pub const LABEL: &str = "\
Examples:
  alignkit label candidates.jsonl --judgments judgments.jsonl --annotator ada
  alignkit label candidates.jsonl -j judgments.jsonl -a ada --mode rank --guidelines rules.md
  alignkit label --from-prefs prefs.jsonl -j rejudged.jsonl -a ada
  alignkit label export judgments.jsonl --to prefs.jsonl
  alignkit label stats judgments.jsonl";
    pub const LABEL_EXPORT: &str = "\
Examples:
  alignkit label export judgments.jsonl --to prefs.jsonl
  alignkit label export ada.jsonl bob.jsonl --to prefs.jsonl --overwrite";
    pub const LABEL_STATS: &str = "\
Examples:
  alignkit label stats judgments.jsonl
  alignkit label stats ada.jsonl bob.jsonl --json";
    pub const REWARD: &str = "\
Examples:
  alignkit reward train --config reward.toml
  alignkit reward score --model runs/reward/final --data prefs.jsonl";
    pub const REWARD_TRAIN: &str = "\
Examples:
  alignkit reward train --config reward.toml
  alignkit reward train --model runs/sft/final --train-file prefs.jsonl --output-dir runs/reward
  alignkit reward train --config reward.toml --resume";
    pub const REWARD_SCORE: &str = "\
Examples:
  alignkit reward score --model runs/reward/final --data prefs.jsonl
  alignkit reward score --model runs/reward/final --data samples.jsonl --out scores.jsonl";
    pub const LAUNCH: &str = "\
Examples:
  alignkit launch --nproc-per-node 2 -- sft --config sft.toml
  alignkit launch --nproc-per-node 8 -- dpo --config dpo.toml --device cuda
  alignkit launch --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --nproc-per-node 8 -- sft --config sft.toml
  alignkit launch --nproc-per-node 2 -- sft --config sft.toml --resume";
    pub const SFT: &str = "\
Examples:
  alignkit sft --config sft.toml
  alignkit sft --train-file sft.jsonl --output-dir runs/sft --lora-r 16 --max-steps 200
  alignkit sft --config sft.toml --set train.eval_steps=50 --validation-split 0.1
  alignkit sft --config sft.toml --resume         continue after Ctrl-C";
    pub const DPO: &str = "\
Examples:
  alignkit dpo --config examples/dpo.toml
  alignkit dpo --config dpo.toml --beta 0.2 --loss-type ipo --max-steps 100
  alignkit dpo --config dpo.toml --resume          continue after Ctrl-C or SIGTERM";
    pub const GRPO: &str = "\
Examples:
  alignkit grpo --config grpo.toml                 a config with a [grpo] table and [[rewards]]
  alignkit grpo --config grpo.toml --num-generations 8 --beta 0 --max-steps 100
  alignkit grpo --config grpo.toml --resume";
    pub const RLOO: &str = "\
Examples:
  alignkit rloo --config rloo.toml                 a config with an [rloo] table and [[rewards]]
  alignkit rloo --config rloo.toml --num-generations 4 --resume";
    pub const PPO: &str = "\
Examples:
  alignkit ppo --config examples/sentiment/ppo.toml   sentiment reward, critic from the policy
  alignkit ppo --config ppo.toml --beta 0.1 --max-steps 50   --beta sets ppo.kl_coef
  alignkit ppo --config ppo.toml --resume";
    pub const EVAL: &str = "\
Examples:
  alignkit eval winrate --policy runs/dpo/final --baseline runs/sft/final --prompts heldout.jsonl --judge rule:one-sentence
  alignkit eval drift --policy runs/dpo/final --reference runs/sft/final --prompts heldout.jsonl";
    pub const EVAL_WINRATE: &str = "\
Examples:
  alignkit eval winrate --policy runs/dpo/final --baseline runs/sft/final --prompts heldout.jsonl --judge reward:runs/reward/final
  alignkit eval winrate --policy runs/dpo/final --baseline runs/sft/final --prompts heldout.jsonl --judge rule:one-sentence
  alignkit eval winrate --policy runs/dpo/final --baseline runs/sft/final --prompts heldout.jsonl --judge human --out eval-h";
    pub const EVAL_DRIFT: &str = "\
Examples:
  alignkit eval drift --policy runs/dpo/final --reference runs/sft/final --prompts heldout.jsonl
  alignkit eval drift --policy runs/dpo/final --reference runs/sft/final --prompts heldout.jsonl --text examples/general-text.txt
  alignkit eval drift --policy runs/sentiment-ppo/final --reference BASE --prompts examples/sentiment/test.jsonl --chat --score sentiment";
    pub const EVAL_FRONTIER: &str = "\
Examples:
  alignkit eval frontier runs/frontier/* --out runs/frontier   reward against KL of every run, frontier.svg + frontier.md
  alignkit eval frontier runs/ppo runs/grpo --out report --budgets 1,2,5";
    pub const EXPORT: &str = "\
Examples:
  alignkit export runs/sft --merged models/sft-merged
  alignkit export runs/sft/checkpoints/step-200 --adapter adapters/sft --overwrite
  alignkit export runs/reward/final --merged models/reward-bf16 --dtype bf16";
    pub const RUN: &str = "\
Examples:
  alignkit run pipeline.toml --dry-run            what would run, skip or resume, and why
  alignkit run pipeline.toml
  alignkit run examples/demo/pipeline.toml --out runs/demo --model models/base";
    pub const DEMO: &str = "\
Examples:
  alignkit demo
  alignkit demo --out runs/demo --device cuda:0";
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
        Command::Parity(args) => parity::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Label(args) => label::run(args),
        Command::Reward(cmd) => reward::run(cmd),
        Command::Sft(args) => sft::run(args),
        Command::Dpo(args) => dpo::run(args),
        Command::Grpo(args) => rl::run(rl::Algorithm::Grpo, args),
        Command::Rloo(args) => rl::run(rl::Algorithm::Rloo, args),
        Command::Ppo(args) => rl::run(rl::Algorithm::Ppo, args),
        Command::Launch(args) => launch::run(args),
        Command::Export(args) => export::run(args),
        Command::Run(args) => pipeline::run(args),
        Command::Demo(args) => demo::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// Every command (and subcommand) ends its help with an example, and
    /// every argument has a description (issue 12.10).
    #[test]
    fn every_command_has_an_example_and_every_argument_a_description() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let after = cmd
                .get_after_help()
                .or(cmd.get_after_long_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            if !(after.starts_with("Example") && after.contains(&format!("{path} "))) {
                missing.push(format!("`{path}`: no example"));
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!(
                        "`{path}`: argument `{}` has no description",
                        arg.get_id()
                    ));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "alignkit", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// A command line as a shell splits it (double quotes only), without the
    /// comment that follows two spaces.
    fn words(line: &str) -> Vec<String> {
        let (mut words, mut word, mut quoted, mut spaces) = (Vec::new(), String::new(), false, 0);
        for c in line.chars() {
            if !quoted && c == ' ' {
                spaces += 1;
                if spaces == 2 {
                    break;
                }
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                continue;
            }
            spaces = 0;
            match c {
                '"' => quoted = !quoted,
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        words
    }

    /// Every example in the help parses: its flags and values exist.
    #[test]
    fn every_example_parses() {
        fn walk(cmd: &clap::Command, lines: &mut Vec<String>) {
            if let Some(after) = cmd.get_after_help() {
                lines.extend(
                    after.to_string().lines().filter_map(|l| {
                        l.trim_start().strip_prefix("alignkit ").map(str::to_owned)
                    }),
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, lines);
            }
        }
        let mut lines = Vec::new();
        walk(&Cli::command(), &mut lines);
        assert!(lines.len() > 30, "{lines:?}");
        for line in lines {
            let argv = std::iter::once("alignkit".to_string()).chain(words(&line));
            if let Err(e) = Cli::try_parse_from(argv) {
                assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp,
                    "`alignkit {line}`: {e}"
                );
            }
        }
    }
}
