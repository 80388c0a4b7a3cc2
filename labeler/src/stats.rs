//! Judgment statistics: counts and decision rates per annotator, position bias, and
//! inter-annotator agreement on overlapping items.
//!
//! Agreement is measured on units of (item, response pair). A pairwise judgment gives one
//! unit; a ranking of n responses gives n(n-1)/2. Each unit falls in one category: the
//! lower-indexed response is better, the higher-indexed one is, tie, or both bad. Skips and
//! flagged items are left out. Raw agreement is the mean, over units, of the share of
//! annotator pairs that agree; kappa is Cohen's for two annotators
//! (Cohen 1960, "A coefficient of agreement for nominal scales") and Fleiss' for more
//! (Fleiss 1971, "Measuring nominal scale agreement among many raters"; here with the
//! number of raters allowed to vary per unit).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::record::{Decision, Judgment, Ledger, Record};

/// Agreement categories of one (item, i < j) unit.
const FIRST: usize = 0;
const SECOND: usize = 1;
const TIE: usize = 2;
const BOTH_BAD: usize = 3;
const CATEGORIES: usize = 4;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PositionBias {
    /// Pairwise judgments where A (left) won.
    pub left_wins: usize,
    /// Pairwise judgments with a winner (A or B).
    pub decisive: usize,
    /// Rankings where the first shown response is alone at rank 1.
    pub first_best: usize,
    pub rankings: usize,
    /// Sum over rankings of 1/n: the expected `first_best` without position bias.
    pub first_best_expected: f64,
}

impl PositionBias {
    fn add(&mut self, j: &Judgment) {
        match &j.decision {
            Decision::A | Decision::B => {
                self.decisive += 1;
                self.left_wins += usize::from(j.decision == Decision::A);
            }
            Decision::Ranking(ranks) => {
                self.rankings += 1;
                self.first_best_expected += 1.0 / ranks.len() as f64;
                let alone_best = ranks[0] == 1 && ranks.iter().filter(|&&r| r == 1).count() == 1;
                self.first_best += usize::from(alone_best);
            }
            _ => {}
        }
    }

    /// How often the left response wins a decisive pairwise judgment (0.5 is unbiased).
    pub fn left_rate(&self) -> Option<f64> {
        ratio(self.left_wins, self.decisive)
    }

    /// How often the first shown response is ranked best, and what chance predicts.
    pub fn first_best_rate(&self) -> Option<(f64, f64)> {
        let rate = ratio(self.first_best, self.rankings)?;
        Some((rate, self.first_best_expected / self.rankings as f64))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AnnotatorStats {
    pub annotator: String,
    /// Effective judgments (after corrections).
    pub judgments: usize,
    pub flagged: usize,
    /// Correction (undo) records.
    pub corrections: usize,
    /// Decision name to count.
    pub decisions: BTreeMap<&'static str, usize>,
    pub median_duration_ms: Option<u64>,
    pub position: PositionBias,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Kappa {
    Cohen(Option<f64>),
    Fleiss(Option<f64>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// (item, response pair) units judged by at least two annotators.
    pub units: usize,
    pub annotators: usize,
    pub raw: f64,
    pub kappa: Kappa,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub annotators: Vec<AnnotatorStats>,
    pub position: PositionBias,
    pub agreement: Option<Agreement>,
}

pub fn compute(records: &[Record]) -> Stats {
    let ledger = Ledger::from_records(records.iter().cloned());
    let effective = ledger.effective();

    let mut corrections: HashMap<&str, usize> = HashMap::new();
    for r in records {
        if let Record::Correction(c) = r {
            *corrections.entry(&c.annotator).or_default() += 1;
        }
    }
    let names: BTreeSet<&str> = effective
        .iter()
        .map(|j| j.annotator.as_str())
        .chain(corrections.keys().copied())
        .collect();

    let mut position = PositionBias::default();
    let annotators = names
        .into_iter()
        .map(|name| {
            let mine: Vec<&&Judgment> = effective.iter().filter(|j| j.annotator == name).collect();
            let mut s = AnnotatorStats {
                annotator: name.to_string(),
                judgments: mine.len(),
                flagged: mine.iter().filter(|j| j.flagged).count(),
                corrections: corrections.get(name).copied().unwrap_or(0),
                decisions: BTreeMap::new(),
                median_duration_ms: None,
                position: PositionBias::default(),
            };
            let mut durations: Vec<u64> = mine.iter().map(|j| j.duration_ms).collect();
            durations.sort_unstable();
            s.median_duration_ms = durations.get(durations.len() / 2).copied();
            for j in &mine {
                *s.decisions.entry(j.decision.name()).or_default() += 1;
                s.position.add(j);
                position.add(j);
            }
            s
        })
        .collect();

    Stats {
        annotators,
        position,
        agreement: agreement(&effective),
    }
}

/// The agreement units of one judgment: ((item, i, j), category) with i < j.
fn units(j: &Judgment) -> Vec<(Unit<'_>, usize)> {
    let key = |a: usize, b: usize| (j.item.as_str(), a.min(b), a.max(b));
    // Category of "x is better than y".
    let better = |x: usize, y: usize| if x < y { FIRST } else { SECOND };
    let (s0, s1) = (j.shown[0], j.shown[1]);
    match &j.decision {
        Decision::A => vec![(key(s0, s1), better(s0, s1))],
        Decision::B => vec![(key(s0, s1), better(s1, s0))],
        Decision::Tie => vec![(key(s0, s1), TIE)],
        Decision::BothBad => vec![(key(s0, s1), BOTH_BAD)],
        Decision::Skip => Vec::new(),
        Decision::Ranking(ranks) => {
            let mut out = Vec::new();
            for a in 0..ranks.len() {
                for b in a + 1..ranks.len() {
                    let (x, y) = (j.shown[a], j.shown[b]);
                    let cat = match ranks[a].cmp(&ranks[b]) {
                        std::cmp::Ordering::Less => better(x, y),
                        std::cmp::Ordering::Greater => better(y, x),
                        std::cmp::Ordering::Equal => TIE,
                    };
                    out.push((key(x, y), cat));
                }
            }
            out
        }
    }
}

/// (item, response i, response j) with i < j.
type Unit<'a> = (&'a str, usize, usize);

fn agreement(effective: &[&Judgment]) -> Option<Agreement> {
    let mut by_unit: BTreeMap<Unit, Vec<(&str, usize)>> = BTreeMap::new();
    for j in effective.iter().filter(|j| !j.flagged) {
        for (unit, cat) in units(j) {
            by_unit.entry(unit).or_default().push((&j.annotator, cat));
        }
    }
    by_unit.retain(|_, raters| raters.len() >= 2);
    if by_unit.is_empty() {
        return None;
    }
    let raters: BTreeSet<&str> = by_unit.values().flatten().map(|(a, _)| *a).collect();
    let counts: Vec<[usize; CATEGORIES]> = by_unit
        .values()
        .map(|raters| {
            let mut c = [0; CATEGORIES];
            for (_, cat) in raters {
                c[*cat] += 1;
            }
            c
        })
        .collect();
    let kappa = if raters.len() == 2 {
        let first = raters.first().copied();
        let pairs: Vec<(usize, usize)> = by_unit
            .values()
            .map(|r| {
                let (a, b) = (r[0], r[1]);
                if Some(a.0) == first {
                    (a.1, b.1)
                } else {
                    (b.1, a.1)
                }
            })
            .collect();
        Kappa::Cohen(cohen_kappa(&pairs, CATEGORIES))
    } else {
        Kappa::Fleiss(fleiss_kappa(&counts))
    };
    Some(Agreement {
        units: by_unit.len(),
        annotators: raters.len(),
        raw: raw_agreement(&counts),
        kappa,
    })
}

/// Mean over units of the share of rater pairs that agree (Fleiss' P̄).
pub fn raw_agreement<const K: usize>(counts: &[[usize; K]]) -> f64 {
    let per_unit = |c: &[usize; K]| {
        let n: usize = c.iter().sum();
        let agree: usize = c.iter().map(|&x| x * x.saturating_sub(1)).sum();
        agree as f64 / (n * (n - 1)) as f64
    };
    counts.iter().map(per_unit).sum::<f64>() / counts.len() as f64
}

/// Cohen's kappa of two raters over `(rater 1 category, rater 2 category)` pairs:
/// κ = (p_o − p_e) / (1 − p_e), p_e = Σ_k p1_k · p2_k. `None` when p_e = 1.
pub fn cohen_kappa(pairs: &[(usize, usize)], categories: usize) -> Option<f64> {
    let n = pairs.len() as f64;
    let mut m1 = vec![0.0; categories];
    let mut m2 = vec![0.0; categories];
    let mut agree = 0.0;
    for &(a, b) in pairs {
        m1[a] += 1.0;
        m2[b] += 1.0;
        if a == b {
            agree += 1.0;
        }
    }
    let p_o = agree / n;
    let p_e: f64 = m1.iter().zip(&m2).map(|(a, b)| a / n * b / n).sum();
    kappa(p_o, p_e)
}

/// Fleiss' kappa from per-unit category counts (`counts[i][k]` raters put unit i in k):
/// P_i = (Σ_k n_ik² − n_i) / (n_i (n_i − 1)), p_k = Σ_i n_ik / Σ_i n_i,
/// κ = (P̄ − P_e) / (1 − P_e) with P_e = Σ_k p_k². `None` when P_e = 1.
pub fn fleiss_kappa<const K: usize>(counts: &[[usize; K]]) -> Option<f64> {
    let total: usize = counts.iter().flatten().sum();
    let p_e: f64 = (0..K)
        .map(|k| {
            let p = counts.iter().map(|c| c[k]).sum::<usize>() as f64 / total as f64;
            p * p
        })
        .sum();
    kappa(raw_agreement(counts), p_e)
}

fn kappa(p_o: f64, p_e: f64) -> Option<f64> {
    (p_e < 1.0 - 1e-12).then(|| (p_o - p_e) / (1.0 - p_e))
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn percent(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
}

const DECISIONS: [&str; 6] = ["a", "b", "tie", "both_bad", "skip", "ranking"];

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<16} {:>7} {:>7} {:>6}",
            "annotator", "judged", "flagged", "undone"
        )?;
        for d in DECISIONS {
            write!(f, " {d:>8}")?;
        }
        writeln!(f, " {:>10} {:>9}", "left wins", "median s")?;
        for a in &self.annotators {
            write!(
                f,
                "{:<16} {:>7} {:>7} {:>6}",
                a.annotator, a.judgments, a.flagged, a.corrections
            )?;
            for d in DECISIONS {
                let n = a.decisions.get(d).copied().unwrap_or(0);
                write!(f, " {:>8}", percent(ratio(n, a.judgments)))?;
            }
            let median = a
                .median_duration_ms
                .map_or("–".into(), |ms| format!("{:.1}", ms as f64 / 1000.0));
            writeln!(f, " {:>10} {median:>9}", percent(a.position.left_rate()))?;
        }
        let p = &self.position;
        writeln!(f)?;
        writeln!(
            f,
            "position bias: the left response won {} of {} decisive pairwise judgments (no bias: 50%)",
            percent(p.left_rate()),
            p.decisive
        )?;
        if let Some((rate, chance)) = p.first_best_rate() {
            writeln!(
                f,
                "               the first shown response was ranked best in {} of {} rankings (no bias: {})",
                percent(Some(rate)),
                p.rankings,
                percent(Some(chance))
            )?;
        }
        match &self.agreement {
            None => writeln!(f, "agreement: no item judged by two or more annotators"),
            Some(a) => {
                let (name, value) = match a.kappa {
                    Kappa::Cohen(k) => ("Cohen's kappa", k),
                    Kappa::Fleiss(k) => ("Fleiss' kappa", k),
                };
                let value = value.map_or("undefined (one category only)".into(), |k| {
                    format!("{k:.3}")
                });
                writeln!(
                    f,
                    "agreement: {} units (item × response pair) judged by {} annotators: raw {}, {name} {value}",
                    a.units,
                    a.annotators,
                    percent(Some(a.raw))
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::judgment;
    use crate::record::{Correction, Decision as D};

    fn pairwise(annotator: &str, decisions: &[D]) -> Vec<Record> {
        decisions
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Record::Judgment(judgment(
                    &format!("{annotator}{i}"),
                    &format!("item{i}"),
                    annotator,
                    d.clone(),
                ))
            })
            .collect()
    }

    #[test]
    fn cohen_kappa_of_two_annotators_matches_the_hand_computation() {
        // Ten items, shown [0, 1], so A = FIRST, B = SECOND.
        //   alice: A A A A A A B B T T
        //   bob:   A A A A B B B B T A
        // Agree on items 1-4, 7, 8, 9: p_o = 7/10 = 0.7.
        // Marginals: alice FIRST 6, SECOND 2, TIE 2 -> .6 .2 .2
        //            bob   FIRST 5, SECOND 4, TIE 1 -> .5 .4 .1
        // p_e = .6·.5 + .2·.4 + .2·.1 = .30 + .08 + .02 = .40
        // κ = (.7 − .4) / (1 − .4) = .3 / .6 = 0.5
        let mut records = pairwise(
            "alice",
            &[
                D::A,
                D::A,
                D::A,
                D::A,
                D::A,
                D::A,
                D::B,
                D::B,
                D::Tie,
                D::Tie,
            ],
        );
        records.extend(pairwise(
            "bob",
            &[D::A, D::A, D::A, D::A, D::B, D::B, D::B, D::B, D::Tie, D::A],
        ));
        let stats = compute(&records);
        let a = stats.agreement.unwrap();
        assert_eq!((a.units, a.annotators), (10, 2));
        assert!((a.raw - 0.7).abs() < 1e-12);
        let Kappa::Cohen(Some(k)) = a.kappa else {
            panic!("{:?}", a.kappa)
        };
        assert!((k - 0.5).abs() < 1e-12, "{k}");
    }

    #[test]
    fn fleiss_kappa_of_three_annotators_matches_the_hand_computation() {
        // Four units rated by three annotators (F = first better, S = second, T = tie):
        //   unit 1: F F F -> P = (9 − 3) / 6 = 1
        //   unit 2: F F S -> P = (4 + 1 − 3) / 6 = 1/3
        //   unit 3: S S S -> P = 1
        //   unit 4: F S T -> P = (1 + 1 + 1 − 3) / 6 = 0
        // P̄ = (1 + 1/3 + 1 + 0) / 4 = 7/12
        // p_F = 6/12, p_S = 5/12, p_T = 1/12; P_e = (36 + 25 + 1) / 144 = 31/72
        // κ = (7/12 − 31/72) / (1 − 31/72) = (11/72) / (41/72) = 11/41 ≈ 0.268293
        let mut records = pairwise("ann", &[D::A, D::A, D::B, D::A]);
        records.extend(pairwise("ben", &[D::A, D::A, D::B, D::B]));
        records.extend(pairwise("cat", &[D::A, D::B, D::B, D::Tie]));
        let a = compute(&records).agreement.unwrap();
        assert_eq!((a.units, a.annotators), (4, 3));
        assert!((a.raw - 7.0 / 12.0).abs() < 1e-12);
        let Kappa::Fleiss(Some(k)) = a.kappa else {
            panic!("{:?}", a.kappa)
        };
        assert!((k - 11.0 / 41.0).abs() < 1e-12, "{k}");
    }

    #[test]
    fn shown_order_is_undone_before_comparing_and_rankings_give_pair_units() {
        // alice sees [1, 0] and picks A (response 1); bob sees [0, 1] and picks B (also 1).
        let mut al = judgment("a1", "x", "alice", D::A);
        al.shown = vec![1, 0];
        let bo = judgment("b1", "x", "bob", D::B);
        // A ranking over 3 agrees on 2 of its 3 pairs with the other's.
        let r1 = judgment("a2", "y", "alice", D::Ranking(vec![1, 2, 3]));
        let r2 = judgment("b2", "y", "bob", D::Ranking(vec![1, 3, 2]));
        let records: Vec<Record> = [al, bo, r1, r2].into_iter().map(Record::Judgment).collect();
        let a = compute(&records).agreement.unwrap();
        assert_eq!(a.units, 4);
        assert!((a.raw - 0.75).abs() < 1e-12, "{}", a.raw);
    }

    #[test]
    fn counts_rates_position_bias_and_corrections() {
        let mut records = pairwise("al", &[D::A, D::A, D::B, D::Skip]);
        records.push(Record::Correction(Correction {
            rid: "c".into(),
            item: "item3".into(),
            annotator: "al".into(),
            ts: String::new(),
            undoes: "al3".into(),
        }));
        let s = compute(&records);
        let al = &s.annotators[0];
        assert_eq!((al.judgments, al.corrections), (3, 1));
        assert_eq!(al.decisions["a"], 2);
        assert_eq!(al.position.left_rate(), Some(2.0 / 3.0));
        assert!(s.agreement.is_none());
        let text = s.to_string();
        assert!(text.contains("66.7%"), "{text}");
    }
}
