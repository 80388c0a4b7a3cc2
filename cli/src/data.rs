//! `alignkit data validate|inspect` (glue over alignkit-datasets).

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum DataCommand {}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {}
}
