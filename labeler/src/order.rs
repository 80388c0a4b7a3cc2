//! Seeded shuffles: the order responses are shown in, and the order an annotator meets items.
//!
//! Each shuffle is a pure function of the seed and names, so a restart shows the same order,
//! and the stored `shown` field records it for position-bias statistics. The generator is
//! SplitMix64 seeded through FNV-1a, written out here so the orders never change with a
//! dependency's version.

use crate::candidates::fnv1a;
use crate::record::JudgeMode;

/// SplitMix64 (Steele, Lea, Flood 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn from_parts(seed: u64, parts: &[&str]) -> SplitMix64 {
        let mut bytes = seed.to_le_bytes().to_vec();
        for p in parts {
            bytes.extend_from_slice(p.as_bytes());
            bytes.push(0);
        }
        SplitMix64(fnv1a(&bytes))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≤ 9 here, so the modulo bias is below 1e-17).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Fisher–Yates.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, self.below(i + 1));
        }
        p
    }
}

/// The response indices shown, in display order. Ranking shows all `n` responses. Pairwise
/// shows two: which two depends only on (seed, item), so every annotator compares the same
/// pair; their left/right order also depends on the annotator, so position bias averages out
/// across annotators.
pub fn shown_order(
    seed: u64,
    item: &str,
    annotator: &str,
    n: usize,
    mode: JudgeMode,
) -> Vec<usize> {
    match mode {
        JudgeMode::Rank => SplitMix64::from_parts(seed, &[item, annotator]).permutation(n),
        JudgeMode::Pairwise => {
            let pair = SplitMix64::from_parts(seed, &[item]).permutation(n);
            let (a, b) = (pair[0], pair[1]);
            if SplitMix64::from_parts(seed, &[item, annotator]).below(2) == 0 {
                vec![a, b]
            } else {
                vec![b, a]
            }
        }
    }
}

/// The order `annotator` meets the `n` items in. With an overlap limit, annotators sharing a
/// file start in different places so they rarely judge the same item at the same moment;
/// without one, everybody goes in file order.
pub fn item_order(seed: u64, annotator: &str, n: usize, spread: bool) -> Vec<usize> {
    if spread {
        SplitMix64::from_parts(seed, &["items", annotator]).permutation(n)
    } else {
        (0..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_that_depend_on_seed_and_names_only() {
        let a = shown_order(7, "item-1", "alice", 9, JudgeMode::Rank);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..9).collect::<Vec<_>>());
        assert_eq!(a, shown_order(7, "item-1", "alice", 9, JudgeMode::Rank));
        let others: Vec<_> = (0..20)
            .map(|s| shown_order(s, "item-1", "alice", 9, JudgeMode::Rank))
            .collect();
        assert!(others.iter().any(|o| *o != a), "the seed changes the order");
    }

    #[test]
    fn pairwise_shows_the_same_pair_to_everyone_in_both_orders() {
        let mut left_first = 0;
        for item in 0..200 {
            let id = format!("i{item}");
            let al = shown_order(3, &id, "alice", 4, JudgeMode::Pairwise);
            let bo = shown_order(3, &id, "bob", 4, JudgeMode::Pairwise);
            let (mut x, mut y) = (al.clone(), bo.clone());
            x.sort_unstable();
            y.sort_unstable();
            assert_eq!(x, y);
            assert_ne!(al[0], al[1]);
            left_first += usize::from(al[0] < al[1]);
        }
        assert!((70..130).contains(&left_first), "{left_first} of 200");
    }
}
