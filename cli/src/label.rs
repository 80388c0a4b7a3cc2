//! `alignkit label` (glue over alignkit-labeler).
//!
//! ```text
//! alignkit label CANDIDATES.jsonl --judgments J.jsonl --annotator NAME [--mode pairwise|rank]
//!                [--guidelines FILE] [--overlap K] [--seed S] [--strict] [--show-source]
//! alignkit label --from-prefs PREFS.jsonl --judgments J.jsonl --annotator NAME ...
//! alignkit label export J.jsonl [J2.jsonl ...] --to PREFS.jsonl [--overwrite]
//! alignkit label stats J.jsonl [J2.jsonl ...] [--json]
//! ```

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use alignkit_labeler::{
    Input, JudgeMode, LabelOptions, Ledger, Session, compute_stats, export, read_logs,
};
use alignkit_model::checkpoint::write_atomic;
use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::common::lock_file;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LabelArgs {
    #[command(subcommand)]
    command: Option<LabelCommand>,

    /// Candidates JSONL: {"id","prompt","responses":[{"text","source"?}]}, 2..=9 responses.
    #[arg(
        value_name = "CANDIDATES.jsonl",
        required_unless_present = "from_prefs",
        conflicts_with = "from_prefs"
    )]
    candidates: Option<PathBuf>,

    /// Re-judge the pairs of a TRL preference file ({"prompt","chosen","rejected"}).
    #[arg(long, value_name = "PREFS.jsonl")]
    from_prefs: Option<PathBuf>,

    /// Judgments file: created if missing, appended to, never rewritten.
    #[arg(long, short = 'j', value_name = "JUDGMENTS.jsonl", required = true)]
    judgments: Option<PathBuf>,

    /// Your name, stored with every judgment.
    #[arg(long, short = 'a', value_name = "NAME", required = true)]
    annotator: Option<String>,

    /// How each item is judged.
    #[arg(long, value_enum, default_value_t = ModeArg::Pairwise)]
    mode: ModeArg,

    /// Text shown in a pane toggled with `g`.
    #[arg(long, value_name = "FILE")]
    guidelines: Option<PathBuf>,

    /// Each item is judged by at most K annotators sharing the judgments file.
    #[arg(long, value_name = "K")]
    overlap: Option<usize>,

    /// Seed of the response shuffle (stored with every judgment).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Refuse to start when any input line is malformed.
    #[arg(long)]
    strict: bool,

    /// Show which model wrote each response (judging is blind by default).
    #[arg(long)]
    show_source: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Two responses: A better, B better, tie, both bad, skip.
    Pairwise,
    /// Rank all responses best to worst, ties allowed.
    Rank,
}

#[derive(Subcommand)]
enum LabelCommand {
    /// Write TRL preference pairs ({"prompt","chosen","rejected"}): rankings become every
    /// strictly ordered pair, ties are dropped, corrections applied, flagged items left out.
    Export(ExportArgs),
    /// Per-annotator counts and decision rates, position bias, inter-annotator agreement.
    Stats(StatsArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// Judgments files (read in order, as one log).
    #[arg(value_name = "JUDGMENTS.jsonl", required = true)]
    judgments: Vec<PathBuf>,
    /// Preference JSONL to write (written whole, then renamed into place).
    #[arg(long, value_name = "PREFS.jsonl")]
    to: PathBuf,
    /// Replace --to if it exists.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Args)]
struct StatsArgs {
    /// Judgments files (read in order, as one log).
    #[arg(value_name = "JUDGMENTS.jsonl", required = true)]
    judgments: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: LabelArgs) -> Result<()> {
    match args.command {
        Some(LabelCommand::Export(a)) => run_export(a),
        Some(LabelCommand::Stats(a)) => run_stats(a),
        None => run_labeler(args),
    }
}

fn run_labeler(args: LabelArgs) -> Result<()> {
    let input = match (args.candidates, args.from_prefs) {
        (Some(c), None) => Input::Candidates(c),
        (None, Some(p)) => Input::Prefs(p),
        _ => bail!("give a candidates file or --from-prefs PREFS.jsonl"),
    };
    let (Some(judgments), Some(annotator)) = (args.judgments, args.annotator) else {
        bail!("--judgments and --annotator are required");
    };
    let read = match &input {
        Input::Candidates(p) | Input::Prefs(p) => p,
    };
    let inputs: Vec<&Path> = std::iter::once(read.as_path())
        .chain(args.guidelines.as_deref())
        .collect();
    ensure_distinct(&judgments, Writes::Path, &inputs)?;
    // Annotators may share a judgments file; one annotator judges in one
    // process at a time. Where the file cannot be created, opening the
    // session says so.
    let parent = judgments.parent().filter(|p| !p.as_os_str().is_empty());
    let _lock = match parent.is_none_or(Path::is_dir) {
        true => Some(lock_file(&judgments, Some(&annotator))?),
        false => None,
    };
    let session = Session::open(LabelOptions {
        input,
        judgments: judgments.clone(),
        annotator,
        mode: match args.mode {
            ModeArg::Pairwise => JudgeMode::Pairwise,
            ModeArg::Rank => JudgeMode::Rank,
        },
        guidelines: args.guidelines,
        overlap: args.overlap,
        seed: args.seed,
        strict: args.strict,
        show_source: args.show_source,
    })?;
    for w in session.warnings() {
        eprintln!("warning: {w}");
    }
    if !std::io::stdout().is_terminal() {
        session.discard()?;
        bail!("alignkit label needs a terminal (stdout is not one)");
    }
    let outcome = session.run()?;
    eprintln!(
        "{} judgment(s) saved this session; {}/{} items done; in {}",
        outcome.judged_this_session,
        outcome.progress.done,
        outcome.progress.total,
        judgments.display()
    );
    let n = outcome.unsaved.len();
    match outcome.recovery {
        None => Ok(()),
        Some(Ok(recovery)) => bail!(
            "{n} record(s) could NOT be saved to {j}; they are in {r}: append them once {j} is writable again (cat {r} >> {j})",
            j = judgments.display(),
            r = recovery.display()
        ),
        Some(Err(e)) => {
            let e = anyhow::Error::new(e);
            // Nowhere to write them: the terminal is the last copy.
            for record in &outcome.unsaved {
                println!("{}", serde_json::to_string(record)?);
            }
            bail!(
                "{n} record(s) could NOT be saved to {} nor to a recovery file ({e:#}); they are printed above, one judgments line each",
                judgments.display()
            )
        }
    }
}

fn read(paths: &[PathBuf]) -> Result<Ledger> {
    let read = read_logs(paths)?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    Ok(Ledger::from_records(read.records))
}

fn run_export(args: ExportArgs) -> Result<()> {
    let inputs: Vec<&Path> = args.judgments.iter().map(PathBuf::as_path).collect();
    ensure_distinct(&args.to, Writes::Path, &inputs)?;
    if args.to.is_dir() {
        bail!("--to {}: is a directory", args.to.display());
    }
    crate::common::refuse_overwrite("--to", &args.to, args.overwrite)?;
    let ledger = read(&args.judgments)?;
    let mut bytes = Vec::new();
    let summary = export(&ledger, &mut bytes).context("serialising the preference pairs")?;
    // Written whole beside the target and renamed: an interrupted export never
    // leaves a half-written file, nor destroys the one it replaces.
    write_atomic(&args.to, &bytes)?;
    eprintln!(
        "{} preference pair(s) from {} judgment(s) written to {} ({} flagged left out, {} without a preference)",
        summary.pairs,
        summary.judgments,
        args.to.display(),
        summary.flagged,
        summary.no_preference
    );
    Ok(())
}

fn run_stats(args: StatsArgs) -> Result<()> {
    let read = read_logs(&args.judgments)?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    let stats = compute_stats(&read.records);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{stats}");
    }
    Ok(())
}
