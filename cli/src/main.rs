//! alignkit: align open language models on your own hardware.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod data;
mod label;

#[derive(Parser)]
#[command(name = "alignkit", version, about = "Align open language models on your own hardware")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and inspect JSONL training data.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Rank model responses in the terminal; export and summarise judgments.
    Label(label::LabelArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Label(args) => label::run(args),
    }
}
