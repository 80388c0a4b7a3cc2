//! `alignkit label` (glue over alignkit-labeler).

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct LabelArgs {}

pub fn run(_args: LabelArgs) -> Result<()> {
    anyhow::bail!("the labeler is not wired yet")
}
