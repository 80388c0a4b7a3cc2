//! Deterministic train/validation/test split by content hash.
//!
//! An example's split depends only on the seed and its own content digest, so
//! appending records to a file never moves an existing example to another
//! split, and reordering the file changes nothing.

use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

/// Fractions of the validation and test splits; the rest is training data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitConfig {
    seed: u64,
    validation: f64,
    test: f64,
}

impl SplitConfig {
    pub fn new(seed: u64, validation: f64, test: f64) -> Result<Self> {
        let ok = |f: f64| (0.0..=1.0).contains(&f);
        if !ok(validation) || !ok(test) || validation + test > 1.0 {
            return Err(DataError::config(format!(
                "split fractions must be in [0, 1] and sum to at most 1 (validation {validation}, test {test})"
            )));
        }
        Ok(Self {
            seed,
            validation,
            test,
        })
    }

    /// The split of an example with content digest `digest`
    /// (see [`crate::Record::digest`]).
    pub fn assign(&self, digest: &[u8; 32]) -> Split {
        let mut h = Sha256::new();
        h.update(self.seed.to_le_bytes());
        h.update(digest);
        let out = h.finalize();
        let mut word = [0u8; 8];
        word.copy_from_slice(&out[..8]);
        // 53 random bits → a uniform float in [0, 1).
        let u = (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64;
        if u < self.test {
            Split::Test
        } else if u < self.test + self.validation {
            Split::Validation
        } else {
            Split::Train
        }
    }

    /// Partition items by split, keeping their order.
    pub fn partition<T>(&self, items: Vec<T>, digest: impl Fn(&T) -> &[u8; 32]) -> SplitSets<T> {
        let mut sets = SplitSets {
            train: Vec::new(),
            validation: Vec::new(),
            test: Vec::new(),
        };
        for item in items {
            match self.assign(digest(&item)) {
                Split::Train => sets.train.push(item),
                Split::Validation => sets.validation.push(item),
                Split::Test => sets.test.push(item),
            }
        }
        sets
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSets<T> {
    pub train: Vec<T>,
    pub validation: Vec<T>,
    pub test: Vec<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u32) -> [u8; 32] {
        Sha256::digest(i.to_le_bytes()).into()
    }

    #[test]
    fn fractions_are_respected_and_stable_as_the_file_grows() {
        let cfg = SplitConfig::new(7, 0.1, 0.05).unwrap();
        let small: Vec<Split> = (0..1000).map(|i| cfg.assign(&digest(i))).collect();
        let large: Vec<Split> = (0..20_000).map(|i| cfg.assign(&digest(i))).collect();
        assert_eq!(&large[..1000], &small[..], "appending moved examples");
        let count = |s| large.iter().filter(|&&x| x == s).count() as f64 / 20_000.0;
        assert!((count(Split::Validation) - 0.1).abs() < 0.01);
        assert!((count(Split::Test) - 0.05).abs() < 0.01);
        let other = SplitConfig::new(8, 0.1, 0.05).unwrap();
        assert!((0..1000).any(|i| other.assign(&digest(i)) != small[i as usize]));
    }

    #[test]
    fn rejects_bad_fractions() {
        assert!(SplitConfig::new(0, 0.6, 0.5).is_err());
        assert!(SplitConfig::new(0, -0.1, 0.0).is_err());
    }

    #[test]
    fn partition_keeps_order() {
        let cfg = SplitConfig::new(1, 0.3, 0.3).unwrap();
        let items: Vec<(u32, [u8; 32])> = (0..100).map(|i| (i, digest(i))).collect();
        let sets = cfg.partition(items, |x| &x.1);
        assert_eq!(
            sets.train.len() + sets.validation.len() + sets.test.len(),
            100
        );
        assert!(sets.train.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
