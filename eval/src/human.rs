//! People's judgments of a policy against a baseline, counted as a win rate.
//!
//! `alignkit eval winrate --judge human` writes a blind candidates file (per
//! prompt both responses, order shuffled) that people judge in `alignkit label`.
//! Each judgment names the response that won by its index in the item, which
//! [`aggregate`] maps to a win or loss of the policy. Items are the independent
//! units: an item's verdict is the mean of its annotators' verdicts (a win above
//! ½, a loss below, a tie at ½), and the win rate is over items. Each
//! annotator's own win rate is reported beside it.
//!
//! The judgments come in as plain values ([`HumanJudgment`]), not the labeler's
//! records, so that this crate does not depend on the labeler.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::winrate::{Judged, Outcome, WinRate};

/// A candidates item: two responses in the file's order, one of them the policy's.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub id: String,
    pub texts: [String; 2],
    /// The index into `texts` of the policy's response (0 or 1); the other is the baseline's.
    pub policy: usize,
}

/// What an annotator decided about an item, by the index of each response in
/// the item (not the position it was shown in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The response at this index was better.
    Won(usize),
    /// Neither was better: a tie, both bad, or equal ranks.
    Tie,
    /// The annotator passed on the item.
    Skip,
}

/// One annotator's effective judgment of one item.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanJudgment {
    pub item: String,
    pub annotator: String,
    /// The texts of the responses judged, in the item's order; they must be the item's.
    pub texts: Vec<String>,
    pub choice: Choice,
    /// The annotator marked the prompt itself as bad: counted, but left out.
    pub flagged: bool,
}

/// What people decided, from the policy's side.
#[derive(Debug, Clone, PartialEq)]
pub struct HumanWinRate {
    /// One verdict per item judged, in item-id order.
    pub items: Vec<Judged>,
    /// The win rate over `items`.
    pub result: WinRate,
    /// Each annotator's win rate over their own judgments, in name order.
    pub annotators: Vec<(String, WinRate)>,
    pub skipped: usize,
    pub flagged: usize,
}

/// Judgments that cannot be counted against the candidates given.
#[derive(Debug, thiserror::Error)]
pub enum HumanError {
    #[error("no judgments")]
    NoJudgments,
    #[error(
        "item {item:?} is not in {}: these judgments are from another candidates file",
        candidates.display()
    )]
    UnknownItem { item: String, candidates: PathBuf },
    #[error(
        "item {item:?} holds other responses than in {}: these judgments are from another candidates file",
        candidates.display()
    )]
    OtherResponses { item: String, candidates: PathBuf },
    #[error("every judgment was skipped or flagged; nothing to count")]
    NothingCounted,
}

impl Pair {
    /// `outcome` with both responses' lengths in characters.
    fn judged(&self, outcome: Outcome) -> Judged {
        Judged {
            outcome,
            policy_len: self.texts[self.policy].chars().count(),
            baseline_len: self.texts[1 - self.policy].chars().count(),
        }
    }
}

/// Counts `judgments` of the items `pairs` read from the file `candidates`
/// (named in errors), with intervals at confidence `level`.
pub fn aggregate(
    candidates: &Path,
    pairs: &[Pair],
    judgments: &[HumanJudgment],
    level: f64,
) -> Result<HumanWinRate, HumanError> {
    if judgments.is_empty() {
        return Err(HumanError::NoJudgments);
    }
    let by_id: HashMap<&str, &Pair> = pairs.iter().map(|p| (p.id.as_str(), p)).collect();
    // Each counted judgment's value (win 1, tie ½, loss 0), per item.
    let mut per_item: BTreeMap<&str, (&Pair, Vec<f64>)> = BTreeMap::new();
    let mut per_annotator: BTreeMap<&str, Vec<Judged>> = BTreeMap::new();
    let (mut skipped, mut flagged) = (0, 0);
    for j in judgments {
        let Some(&pair) = by_id.get(j.item.as_str()) else {
            return Err(HumanError::UnknownItem {
                item: j.item.clone(),
                candidates: candidates.to_path_buf(),
            });
        };
        if j.texts != pair.texts {
            return Err(HumanError::OtherResponses {
                item: j.item.clone(),
                candidates: candidates.to_path_buf(),
            });
        }
        if j.flagged {
            flagged += 1;
            continue;
        }
        let outcome = match j.choice {
            Choice::Won(i) if i == pair.policy => Outcome::Win,
            Choice::Won(_) => Outcome::Loss,
            Choice::Tie => Outcome::Tie,
            Choice::Skip => {
                skipped += 1;
                continue;
            }
        };
        per_item
            .entry(&pair.id)
            .or_insert_with(|| (pair, Vec::new()))
            .1
            .push(outcome.value());
        per_annotator
            .entry(&j.annotator)
            .or_default()
            .push(pair.judged(outcome));
    }
    let items: Vec<Judged> = per_item
        .values()
        .map(|(pair, values)| pair.judged(mean_verdict(values)))
        .collect();
    let result = WinRate::compute(&items, level).ok_or(HumanError::NothingCounted)?;
    let annotators = per_annotator
        .into_iter()
        .filter_map(|(a, judged)| Some((a.to_string(), WinRate::compute(&judged, level)?)))
        .collect();
    Ok(HumanWinRate {
        items,
        result,
        annotators,
        skipped,
        flagged,
    })
}

/// An item's verdict from its annotators' values: a win above ½, a loss below, a tie at ½.
fn mean_verdict(values: &[f64]) -> Outcome {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    if mean > 0.5 {
        Outcome::Win
    } else if mean < 0.5 {
        Outcome::Loss
    } else {
        Outcome::Tie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVEL: f64 = 0.95;

    /// Item `id` with the policy's response "policy!" at index `policy` and the
    /// baseline's "base" at the other.
    fn pair(id: &str, policy: usize) -> Pair {
        let mut texts = ["policy!".to_string(), "base".to_string()];
        if policy == 1 {
            texts.swap(0, 1);
        }
        Pair {
            id: id.into(),
            texts,
            policy,
        }
    }

    fn judgment(pair: &Pair, annotator: &str, choice: Choice) -> HumanJudgment {
        HumanJudgment {
            item: pair.id.clone(),
            annotator: annotator.into(),
            texts: pair.texts.to_vec(),
            choice,
            flagged: false,
        }
    }

    fn count(pairs: &[Pair], judgments: &[HumanJudgment]) -> Result<HumanWinRate, HumanError> {
        aggregate(Path::new("c.jsonl"), pairs, judgments, LEVEL)
    }

    fn outcomes(h: &HumanWinRate) -> Vec<Outcome> {
        h.items.iter().map(|j| j.outcome).collect()
    }

    #[test]
    fn the_winning_index_maps_to_the_policy_wherever_it_is_in_the_item() {
        // Policy first in x, second in y: index 0 wins x for the policy and
        // loses y; index 1 the other way round.
        let pairs = [pair("x", 0), pair("y", 1)];
        let h = count(
            &pairs,
            &[
                judgment(&pairs[0], "al", Choice::Won(0)),
                judgment(&pairs[1], "al", Choice::Won(0)),
                judgment(&pairs[0], "bo", Choice::Won(1)),
                judgment(&pairs[1], "bo", Choice::Won(1)),
            ],
        )
        .unwrap();
        let al = &h.annotators[0];
        let bo = &h.annotators[1];
        assert_eq!(
            (al.0.as_str(), al.1.wins, al.1.losses),
            ("al", 1, 1),
            "{al:?}"
        );
        assert_eq!(
            (bo.0.as_str(), bo.1.wins, bo.1.losses),
            ("bo", 1, 1),
            "{bo:?}"
        );
        // A win and a loss on each item: ties.
        assert_eq!(outcomes(&h), [Outcome::Tie, Outcome::Tie]);
        // Lengths are the policy's and the baseline's, not the shown order's.
        let lengths: Vec<_> = h
            .items
            .iter()
            .map(|j| (j.policy_len, j.baseline_len))
            .collect();
        assert_eq!(lengths, [(7, 4), (7, 4)]);
    }

    #[test]
    fn an_items_verdict_is_the_mean_of_its_annotators() {
        let pairs = [pair("a", 0), pair("b", 1), pair("c", 0), pair("d", 1)];
        let policy = |p: &Pair| Choice::Won(p.policy);
        let baseline = |p: &Pair| Choice::Won(1 - p.policy);
        let h = count(
            &pairs,
            &[
                // a: two wins and a loss → win.
                judgment(&pairs[0], "al", policy(&pairs[0])),
                judgment(&pairs[0], "bo", policy(&pairs[0])),
                judgment(&pairs[0], "cy", baseline(&pairs[0])),
                // b: a win and a loss → tie.
                judgment(&pairs[1], "al", policy(&pairs[1])),
                judgment(&pairs[1], "bo", baseline(&pairs[1])),
                // c: a loss and a tie → loss.
                judgment(&pairs[2], "al", baseline(&pairs[2])),
                judgment(&pairs[2], "bo", Choice::Tie),
                // d: one annotator's tie → tie.
                judgment(&pairs[3], "cy", Choice::Tie),
            ],
        )
        .unwrap();
        assert_eq!(
            outcomes(&h),
            [Outcome::Win, Outcome::Tie, Outcome::Loss, Outcome::Tie]
        );
        let r = &h.result;
        assert_eq!((r.n, r.wins, r.ties, r.losses), (4, 1, 2, 1));
        assert_eq!(r.win_rate, 0.5);
        let per: Vec<_> = h
            .annotators
            .iter()
            .map(|(a, r)| (a.as_str(), r.wins, r.ties, r.losses))
            .collect();
        assert_eq!(per, [("al", 2, 0, 1), ("bo", 1, 1, 1), ("cy", 0, 1, 1)]);
    }

    #[test]
    fn skipped_and_flagged_judgments_are_counted_and_left_out() {
        let pairs = [pair("x", 0), pair("y", 0)];
        let mut flagged_win = judgment(&pairs[0], "al", Choice::Won(0));
        flagged_win.flagged = true;
        // Flagged and skipped at once counts as flagged.
        let mut flagged_skip = judgment(&pairs[1], "bo", Choice::Skip);
        flagged_skip.flagged = true;
        let h = count(
            &pairs,
            &[
                flagged_win,
                flagged_skip,
                judgment(&pairs[0], "bo", Choice::Skip),
                judgment(&pairs[1], "al", Choice::Won(1)),
            ],
        )
        .unwrap();
        assert_eq!((h.skipped, h.flagged), (1, 2));
        // Only al's loss on y is counted: x has no verdict, bo no win rate.
        assert_eq!(outcomes(&h), [Outcome::Loss]);
        assert_eq!(h.annotators.len(), 1);
        assert_eq!(h.annotators[0].0, "al");
        assert_eq!(h.annotators[0].1.n, 1);
    }

    #[test]
    fn nothing_to_count_is_an_error() {
        let pairs = [pair("x", 0)];
        let err = count(&pairs, &[]).unwrap_err();
        assert!(matches!(err, HumanError::NoJudgments), "{err}");
        let mut flagged = judgment(&pairs[0], "bo", Choice::Won(0));
        flagged.flagged = true;
        let err = count(&pairs, &[judgment(&pairs[0], "al", Choice::Skip), flagged]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "every judgment was skipped or flagged; nothing to count"
        );
    }

    #[test]
    fn judgments_of_another_candidates_file_are_refused() {
        let pairs = [pair("x", 0)];
        let mut stranger = judgment(&pairs[0], "al", Choice::Won(0));
        stranger.item = "z".into();
        let err = count(&pairs, &[stranger]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "item \"z\" is not in c.jsonl: these judgments are from another candidates file"
        );
        // Same id, other texts: another run's file with the same ids.
        let mut other = judgment(&pairs[0], "al", Choice::Won(0));
        other.texts[1] = "another base".into();
        let err = count(&pairs, &[judgment(&pairs[0], "bo", Choice::Tie), other]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "item \"x\" holds other responses than in c.jsonl: these judgments are from another candidates file"
        );
    }
}
