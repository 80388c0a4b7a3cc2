//! `alignkit eval winrate --judgments`: the labeler's records of the file
//! `--judge human` wrote, handed to [`alignkit_eval::human`] as plain values,
//! with the labeler's position bias and agreement beside the counts.

use std::collections::BTreeMap;
use std::path::Path;

use alignkit_eval::human::{Choice, HumanJudgment, Pair};
use alignkit_labeler::{
    Decision, Item, Judgment, Ledger, compute_stats, load_candidates, read_logs,
};
use anyhow::{Context, Result, bail};

use super::report::{HumanDetail, JudgeResult, WinrateReport};
use super::{BASELINE, LEVEL, POLICY, WinrateArgs};

/// `eval winrate --judgments`: what people decided, mapped from shown
/// positions back to policy and baseline.
pub(super) fn aggregate_human(args: &WinrateArgs) -> Result<WinrateReport> {
    // The files given first: a mistyped one is named, not the candidates
    // file that its absence would otherwise be blamed on.
    for path in &args.judgments {
        if path.is_dir() {
            bail!("--judgments {}: a directory, not a file", path.display());
        }
        if !path.is_file() {
            bail!("--judgments {}: the file does not exist", path.display());
        }
    }
    let candidates = args
        .candidates
        .clone()
        .unwrap_or_else(|| args.out_dir().join("human-candidates.jsonl"));
    if !candidates.is_file() {
        bail!(
            "{} not found: give --candidates FILE (the file `--judge human` wrote)",
            candidates.display()
        );
    }
    let loaded = load_candidates(&candidates)?;
    if let Some(p) = loaded.problems.first() {
        bail!("{p}");
    }
    let pairs: Vec<Pair> = loaded
        .items
        .iter()
        .map(|item| pair(item, &candidates))
        .collect::<Result<_>>()?;
    let read = read_logs(&args.judgments)?;
    for w in &read.warnings {
        eprintln!("warning: {w}");
    }
    let names = args
        .judgments
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let ledger = Ledger::from_records(read.records.iter().cloned());
    let judgments: Vec<HumanJudgment> = ledger.effective().into_iter().map(judgment).collect();
    let counted = alignkit_eval::human::aggregate(&candidates, &pairs, &judgments, LEVEL)
        .with_context(|| names)?;
    let stats = compute_stats(&read.records);
    let human = HumanDetail {
        judgments: judgments.len(),
        skipped: counted.skipped,
        flagged: counted.flagged,
        annotators: counted.annotators,
        first_shown_wins: alignkit_eval::winrate::position_bias(
            stats.position.left_wins,
            stats.position.decisive,
            LEVEL,
        ),
        agreement: stats.agreement,
    };
    Ok(WinrateReport {
        policy: POLICY.into(),
        baseline: BASELINE.into(),
        prompts: pairs.len(),
        settings: BTreeMap::new(),
        judges: vec![JudgeResult {
            judge: "human".into(),
            outcomes: counted.items.iter().map(|j| j.outcome).collect(),
            result: counted.result,
            scores: Vec::new(),
            pass_rates: None,
            mean_scores: None,
            human: Some(human),
        }],
        cached: BTreeMap::new(),
        human_candidates: None,
        judged_file: Some(candidates.display().to_string()),
        rows: Vec::new(),
    })
}

/// A candidates item as a policy/baseline pair, told apart by the `source`
/// of each response (written by `--judge human`).
fn pair(item: &Item, candidates: &Path) -> Result<Pair> {
    let sources: Vec<Option<&str>> = item.responses.iter().map(|r| r.source.as_deref()).collect();
    let policy = match sources.as_slice() {
        [Some(POLICY), Some(BASELINE)] => 0,
        [Some(BASELINE), Some(POLICY)] => 1,
        _ => bail!(
            "{}: item {:?} is not a policy/baseline pair; give the file `alignkit eval winrate --judge human` wrote",
            candidates.display(),
            item.id
        ),
    };
    Ok(Pair {
        id: item.id.clone(),
        texts: [0, 1].map(|i| item.responses[i].text.clone()),
        policy,
    })
}

/// A labeler judgment as the evaluation counts it.
fn judgment(j: &Judgment) -> HumanJudgment {
    HumanJudgment {
        item: j.item.clone(),
        annotator: j.annotator.clone(),
        texts: j.responses.iter().map(|r| r.text.clone()).collect(),
        choice: choice(j),
        flagged: j.flagged,
    }
}

/// The decision by the winner's index in the item: the labeler's preferences
/// already map shown positions back to it; none is a tie (tie, both bad, equal ranks).
fn choice(j: &Judgment) -> Choice {
    match (&j.decision, j.preferences().first()) {
        (Decision::Skip, _) => Choice::Skip,
        (_, Some(&(better, _))) => Choice::Won(better),
        (_, None) => Choice::Tie,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A judgment of two responses shown in `shown` order.
    fn judged(shown: [usize; 2], decision: Decision) -> Judgment {
        let mode = match decision {
            Decision::Ranking(_) => "rank",
            _ => "pairwise",
        };
        serde_json::from_value(json!({
            "rid": "1", "item": "x", "annotator": "al", "ts": "", "mode": mode, "seed": 0,
            "shown": shown, "decision": decision, "duration_ms": 0, "prompt": "p",
            "responses": [{"text": "r0"}, {"text": "r1"}],
        }))
        .unwrap()
    }

    #[test]
    fn decisions_map_from_shown_positions_to_the_items_responses() {
        let swapped = [1, 0];
        assert_eq!(choice(&judged(swapped, Decision::A)), Choice::Won(1));
        assert_eq!(choice(&judged(swapped, Decision::B)), Choice::Won(0));
        assert_eq!(choice(&judged([0, 1], Decision::A)), Choice::Won(0));
        // Ranks are of the shown positions: shown second ranked first.
        let second_best = Decision::Ranking(vec![2, 1]);
        assert_eq!(
            choice(&judged(swapped, second_best.clone())),
            Choice::Won(0)
        );
        assert_eq!(choice(&judged([0, 1], second_best)), Choice::Won(1));
        for tie in [
            Decision::Tie,
            Decision::BothBad,
            Decision::Ranking(vec![1, 1]),
        ] {
            assert_eq!(
                choice(&judged(swapped, tie.clone())),
                Choice::Tie,
                "{tie:?}"
            );
        }
        assert_eq!(choice(&judged(swapped, Decision::Skip)), Choice::Skip);
    }
}
