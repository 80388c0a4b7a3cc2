//! `alignkit data validate|inspect|pairs` (glue over alignkit-datasets).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use alignkit_datasets::{
    DataKind, EncodeConfig, Encoder, FieldMap, Inspection, PlainText, TrainOn, TruncationSide,
    ValidateOptions,
};
use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::{Context, Result, bail};

use crate::common::{CompletionEndArg, TemplateArgs};
use clap::{Args, Subcommand, ValueEnum};

use crate::pull::{KnownModel, ensure_model};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Check a JSONL file against a model's tokenizer and chat template:
    /// counts, token-length histograms, truncation, duplicates, identical
    /// pairs, empty fields, missing EOS, over-long examples. Exits non-zero on errors.
    Validate(ValidateArgs),
    /// Show one record as the model sees it: the rendered text and every
    /// token, marked when it is trained on.
    Inspect(InspectArgs),
    /// Preference pairs from sampled candidates ranked by an automatic
    /// judge: every two responses of a prompt with different scores make a
    /// pair (4 samples → up to 6 pairs), the higher-scored one chosen.
    #[command(after_help = "Examples:
  alignkit generate --prompts examples/sentiment/train.jsonl --chat --num-samples 4 --out candidates.jsonl
  alignkit data pairs candidates.jsonl --judge sentiment --out pairs.jsonl")]
    Pairs(PairsArgs),
}

#[derive(Args)]
pub struct PairsArgs {
    /// A candidates file (`alignkit generate --num-samples N --out`).
    candidates: PathBuf,
    /// What scores each response: `sentiment` (VADER compound score).
    #[arg(long, value_enum)]
    judge: PairJudge,
    /// The preference JSONL to write (`{"prompt","chosen","rejected"}`).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PairJudge {
    /// The VADER compound score of the response's text.
    Sentiment,
}

#[derive(Args)]
pub struct DataArgs {
    /// JSON Lines file.
    file: PathBuf,
    /// Hugging Face model directory whose tokenizer and chat template to use
    /// (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Record kind; detected from the first record when omitted.
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Read a field from another key, e.g. `--field chosen=better` (repeatable).
    #[arg(long = "field", value_name = "FIELD=KEY")]
    fields: Vec<String>,
    /// Longest sequence in tokens.
    #[arg(long)]
    max_len: Option<usize>,
    /// Longest prompt in tokens (longer prompts keep their end).
    #[arg(long)]
    max_prompt_len: Option<usize>,
    /// Which end of an over-long sequence survives `--max-len`.
    #[arg(long, value_enum, default_value_t = Truncation::KeepStart)]
    truncation: Truncation,
    /// Which tokens carry loss.
    #[arg(long, value_enum, default_value_t = Train::Completion)]
    train_on: Train,
    /// Treat string prompts/completions as user/assistant messages.
    #[arg(long)]
    text_as_chat: bool,
    #[command(flatten)]
    template: TemplateArgs,
    /// Where a conversational preference/KTO completion ends.
    #[arg(long, value_enum, default_value_t)]
    completion_end: CompletionEndArg,
}

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Also fail on warnings.
    #[arg(long)]
    strict: bool,
    /// How many errors and examples per warning to list.
    #[arg(long, default_value_t = 10)]
    list: usize,
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Record number, counting non-blank lines from 0.
    #[arg(long)]
    index: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Sft,
    Prefs,
    Prompts,
    Kto,
}

#[derive(Clone, Copy, ValueEnum)]
enum Truncation {
    KeepStart,
    KeepEnd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Train {
    Completion,
    All,
}

impl DataArgs {
    fn kind(&self) -> Option<DataKind> {
        self.kind.map(|k| match k {
            Kind::Sft => DataKind::Sft,
            Kind::Prefs => DataKind::Preferences,
            Kind::Prompts => DataKind::Prompts,
            Kind::Kto => DataKind::Kto,
        })
    }

    fn encoder(&self) -> Result<Encoder> {
        let config = EncodeConfig {
            max_len: self.max_len,
            max_prompt_len: self.max_prompt_len,
            truncation: match self.truncation {
                Truncation::KeepStart => TruncationSide::KeepStart,
                Truncation::KeepEnd => TruncationSide::KeepEnd,
            },
            train_on: match self.train_on {
                Train::Completion => TrainOn::Completion,
                Train::All => TrainOn::All,
            },
            plain_text: if self.text_as_chat {
                PlainText::Chat
            } else {
                PlainText::Raw
            },
            completion_end: self.completion_end.into(),
            template_kwargs: self.template.kwargs()?,
        };
        let model = match &self.model {
            Some(dir) => dir.clone(),
            None => ensure_model(KnownModel::Smollm2)?,
        };
        Encoder::from_dir(&model, config)
            .with_context(|| format!("loading the tokenizer of {}", model.display()))
    }
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Validate(args) => validate(args),
        DataCommand::Inspect(args) => inspect(args),
        DataCommand::Pairs(args) => pairs(args),
    }
}

/// Every two responses of an item with different scores, the higher chosen;
/// (items, pairs, equal-score pairs skipped).
fn rank_pairs(
    items: &[alignkit_labeler::candidates::Item],
    score: impl Fn(&str) -> f64,
) -> (Vec<serde_json::Value>, usize) {
    let mut out = Vec::new();
    let mut ties = 0;
    for item in items {
        let scores: Vec<f64> = item.responses.iter().map(|r| score(&r.text)).collect();
        for i in 0..scores.len() {
            for j in i + 1..scores.len() {
                let (hi, lo) = match scores[i].partial_cmp(&scores[j]) {
                    Some(std::cmp::Ordering::Greater) => (i, j),
                    Some(std::cmp::Ordering::Less) => (j, i),
                    _ => {
                        ties += 1;
                        continue;
                    }
                };
                // A conversational prompt takes assistant turns, a text one text.
                let reply = |text: &str| match &item.prompt {
                    alignkit_datasets::Turns::Messages(_) => {
                        serde_json::json!([{"role": "assistant", "content": text}])
                    }
                    alignkit_datasets::Turns::Text(_) => serde_json::json!(text),
                };
                out.push(serde_json::json!({
                    "prompt": item.prompt,
                    "chosen": reply(&item.responses[hi].text),
                    "rejected": reply(&item.responses[lo].text),
                    "score_chosen": scores[hi],
                    "score_rejected": scores[lo],
                }));
            }
        }
    }
    (out, ties)
}

fn pairs(args: PairsArgs) -> Result<()> {
    ensure_distinct(&args.out, Writes::Path, &[&args.candidates])?;
    crate::common::refuse_overwrite("--out", &args.out, args.overwrite)?;
    let loaded = alignkit_labeler::candidates::load_candidates(&args.candidates)?;
    if let Some(problem) = loaded.problems.first() {
        bail!("{problem}");
    }
    if loaded.items.is_empty() {
        bail!("{}: no candidates", args.candidates.display());
    }
    let vader = alignkit_eval::Sentiment::new();
    let (pairs, ties) = match args.judge {
        PairJudge::Sentiment => rank_pairs(&loaded.items, |t| vader.score(t)),
    };
    let mut text = String::new();
    for p in &pairs {
        text.push_str(&p.to_string());
        text.push('\n');
    }
    alignkit_model::checkpoint::write_atomic(&args.out, text.as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} prompts → {} pairs ({ties} with equal scores skipped) → {}",
        loaded.items.len(),
        pairs.len(),
        args.out.display()
    );
    Ok(())
}

fn validate(args: ValidateArgs) -> Result<()> {
    let encoder = args.data.encoder()?;
    let opts = ValidateOptions {
        kind: args.data.kind(),
        fields: FieldMap::parse(&args.data.fields)?,
        max_listed: args.list,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("reading");
        bar
    });
    let report = alignkit_datasets::validate::validate_with_progress(
        &args.data.file,
        &encoder,
        &opts,
        |n| {
            if let Some(bar) = &bar {
                bar.set_message(format!("{n} records"));
                bar.tick();
            }
        },
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    emit(&report.to_string())?;
    if report.records == 0
        && let Some(e) = report.errors.first()
    {
        // The file as a whole is unusable (empty, a JSON array): no count.
        bail!("{e}");
    }
    if report.has_errors() {
        bail!(
            "{}: {} of {} records have errors",
            args.data.file.display(),
            report.error_count,
            report.records
        );
    }
    if args.strict && report.warning_count() > 0 {
        bail!(
            "{}: {} warnings (--strict)",
            args.data.file.display(),
            report.warning_count()
        );
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> Result<()> {
    let encoder = args.data.encoder()?;
    let fields = FieldMap::parse(&args.data.fields)?;
    let ins = alignkit_datasets::inspect(
        &args.data.file,
        &encoder,
        args.data.kind(),
        &fields,
        args.index,
    )?;
    if std::io::stdout().is_terminal() {
        emit(&coloured(&ins))
    } else {
        emit(&ins.to_string())
    }
}

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

const RESET: &str = "\x1b[0m";

/// Every token in place, trained ones green, the rest grey, alternating
/// shades so token boundaries show; special tokens bold.
fn coloured(ins: &Inspection) -> String {
    let mut out = format!("{} ({})\n", ins.at, ins.kind);
    if let Some(rule) = ins.rule {
        out.push_str(&format!("{rule}\n"));
    }
    for s in &ins.sections {
        out.push_str(&format!(
            "\n\x1b[1m== {}: {} tokens, {} trained ==\x1b[0m\n",
            s.title,
            s.tokens.len(),
            s.trained()
        ));
        if s.truncation.any() {
            out.push_str(&format!(
                "\x1b[33mtruncated from {} tokens: {} prompt, {} completion tokens dropped{}\x1b[0m\n",
                s.truncation.original_len,
                s.truncation.prompt_dropped,
                s.truncation.completion_dropped,
                if s.truncation.eos_dropped {
                    ", EOS dropped"
                } else {
                    ""
                }
            ));
        }
        for (i, t) in s.tokens.iter().enumerate() {
            let colour = match (t.trained, i % 2 == 0) {
                (true, true) => "\x1b[32m",
                (true, false) => "\x1b[92m",
                (false, true) => "\x1b[90m",
                (false, false) => "\x1b[37m",
            };
            let bold = if t.special { "\x1b[1m" } else { "" };
            let text = t.text.replace('\n', "↵\n");
            out.push_str(&format!("{colour}{bold}{text}{RESET}"));
        }
        out.push_str(
            "\n\n\x1b[32mtrained\x1b[0m  \x1b[90mnot trained\x1b[0m  \x1b[1mspecial\x1b[0m\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alignkit_labeler::candidates::{Item, Response};

    /// Scores (0.5, −0.2, 0.5, 0.9): of the 6 pairs one is a tie; the rest
    /// put the higher score first.
    #[test]
    fn pairs_rank_every_two_responses_and_skip_ties() {
        let item = Item {
            id: "1".into(),
            prompt: alignkit_datasets::Turns::Text("p".into()),
            responses: ["a", "b", "c", "d"]
                .iter()
                .map(|t| Response {
                    text: (*t).into(),
                    source: None,
                })
                .collect(),
        };
        let score = |t: &str| match t {
            "a" | "c" => 0.5,
            "b" => -0.2,
            _ => 0.9,
        };
        let (pairs, ties) = rank_pairs(&[item], score);
        assert_eq!(ties, 1);
        let got: Vec<(String, String)> = pairs
            .iter()
            .map(|p| {
                (
                    p["chosen"].as_str().unwrap().into(),
                    p["rejected"].as_str().unwrap().into(),
                )
            })
            .collect();
        let want = [("a", "b"), ("d", "a"), ("c", "b"), ("d", "b"), ("d", "c")];
        assert_eq!(
            got,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        assert_eq!(pairs[0]["prompt"], "p");
        assert_eq!(pairs[1]["score_chosen"], 0.9);

        // A chat prompt (generate --chat) gets assistant turns.
        let chat = Item {
            id: "2".into(),
            prompt: alignkit_datasets::Turns::Messages(vec![alignkit_datasets::Message::new(
                alignkit_datasets::Role::User,
                "p",
            )]),
            responses: ["a", "b"]
                .iter()
                .map(|t| Response {
                    text: (*t).into(),
                    source: None,
                })
                .collect(),
        };
        let (pairs, _) = rank_pairs(&[chat], score);
        assert_eq!(
            pairs[0]["chosen"],
            serde_json::json!([{"role": "assistant", "content": "a"}])
        );
        assert_eq!(pairs[0]["prompt"][0]["role"], "user");
    }
}
