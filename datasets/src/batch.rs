//! Batching and packing as plain vectors; trainers turn them into tensors.
//!
//! A [`Batch`] is row-major `[batch_size, seq_len]`. Attention is allowed from
//! query `q` to key `k` of a row when `k <= q` and both have the same non-zero
//! segment id ([`Batch::attends`]). Unpacked rows have segment 1 for tokens and
//! 0 for padding; packed rows number their examples 1, 2, ... and restart
//! position ids at 0 for each, so a packed row computes exactly what the
//! examples would compute one by one.

use std::collections::BTreeSet;

use crate::encode::{PreferenceExample, Sequence};
use crate::error::{DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Pad at the end (training).
    #[default]
    Right,
    /// Pad at the start (generation: every row's last token is aligned).
    Left,
}

/// A padded batch, each field row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    /// True for real tokens, false for padding.
    pub attention_mask: Vec<bool>,
    /// Position of each token within its example; 0 for padding.
    pub position_ids: Vec<i64>,
    /// See [`Sequence`]: true where the token is a training target.
    pub loss_mask: Vec<bool>,
    /// 0 for padding, 1.. for the example a token belongs to.
    pub segment_ids: Vec<u32>,
}

impl Batch {
    fn with_shape(batch_size: usize, seq_len: usize, pad_id: u32) -> Self {
        let n = batch_size * seq_len;
        Self {
            batch_size,
            seq_len,
            input_ids: vec![pad_id; n],
            attention_mask: vec![false; n],
            position_ids: vec![0; n],
            loss_mask: vec![false; n],
            segment_ids: vec![0; n],
        }
    }

    /// Whether query position `q` may attend to key position `k` in `row`:
    /// causal, and only within one example.
    pub fn attends(&self, row: usize, q: usize, k: usize) -> bool {
        let base = row * self.seq_len;
        let (sq, sk) = (self.segment_ids[base + q], self.segment_ids[base + k]);
        k <= q && sq != 0 && sq == sk
    }

    /// The `[seq_len, seq_len]` attention mask of one row (true = attend).
    pub fn attention_matrix(&self, row: usize) -> Vec<bool> {
        let t = self.seq_len;
        let mut m = vec![false; t * t];
        for q in 0..t {
            for k in 0..=q {
                m[q * t + k] = self.attends(row, q, k);
            }
        }
        m
    }

    /// Index within each row of its last real token, for left or right
    /// padding alike: where a reward or value head reads its score (never a
    /// pad token). `None` for a row of padding only.
    pub fn last_token_index(&self) -> Vec<Option<usize>> {
        (0..self.batch_size)
            .map(|r| {
                let row = &self.attention_mask[r * self.seq_len..(r + 1) * self.seq_len];
                row.iter().rposition(|&m| m)
            })
            .collect()
    }

    /// Index within each row of its last real token that is not `pad_id`,
    /// for left or right padding alike: where transformers'
    /// `*ForSequenceClassification` reads a sequence's score (the rightmost
    /// token ≠ `config.pad_token_id`), so that a reward model reads the same
    /// token here as there. With pad = EOS (SmolLM2's `<|im_end|>`) a
    /// trailing EOS is passed over. `None` for a row without such a token.
    pub fn score_index(&self, pad_id: u32) -> Vec<Option<usize>> {
        (0..self.batch_size)
            .map(|r| {
                let span = r * self.seq_len..(r + 1) * self.seq_len;
                let (ids, mask) = (&self.input_ids[span.clone()], &self.attention_mask[span]);
                (0..self.seq_len).rposition(|i| mask[i] && ids[i] != pad_id)
            })
            .collect()
    }

    /// The token ids of one row.
    pub fn row_ids(&self, row: usize) -> &[u32] {
        &self.input_ids[row * self.seq_len..(row + 1) * self.seq_len]
    }
}

/// Pad sequences to the longest one.
pub fn collate<'a>(
    rows: impl IntoIterator<Item = &'a Sequence>,
    pad_id: u32,
    side: PaddingSide,
) -> Batch {
    let rows: Vec<&Sequence> = rows.into_iter().collect();
    let seq_len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut b = Batch::with_shape(rows.len(), seq_len, pad_id);
    for (r, seq) in rows.iter().enumerate() {
        let offset = match side {
            PaddingSide::Right => 0,
            PaddingSide::Left => seq_len - seq.len(),
        };
        let base = r * seq_len + offset;
        for (i, (&id, &m)) in seq.input_ids.iter().zip(&seq.loss_mask).enumerate() {
            b.input_ids[base + i] = id;
            b.attention_mask[base + i] = true;
            b.position_ids[base + i] = i as i64;
            b.loss_mask[base + i] = m;
            b.segment_ids[base + i] = 1;
        }
    }
    b
}

/// Chosen and rejected of each pair in one batch (TRL's concatenated forward):
/// rows `0..n` are the chosen sequences, rows `n..2n` the rejected ones, all
/// padded to the longest.
pub fn collate_pairs<'a>(
    pairs: impl IntoIterator<Item = &'a PreferenceExample>,
    pad_id: u32,
    side: PaddingSide,
) -> Batch {
    let pairs: Vec<&PreferenceExample> = pairs.into_iter().collect();
    let mut rows: Vec<Sequence> = pairs.iter().map(|p| p.chosen()).collect();
    rows.extend(pairs.iter().map(|p| p.rejected()));
    collate(&rows, pad_id, side)
}

/// SplitMix64: a small, seedable, portable generator for shuffles.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// Shuffled batches of indices `0..n`; the last batch may be smaller.
pub fn shuffled_batches(n: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut idx);
    idx.chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Batches of similar lengths, to waste little on padding (transformers'
/// `group_by_length`): shuffle, cut into mega-batches of 50 batches, sort each
/// by length, cut into batches, shuffle the batches, and put the batch with the
/// longest example first so an out-of-memory shows at step one.
pub fn length_grouped_batches(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut rng = SplitMix64::new(seed);
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut idx);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for mega in idx.chunks_mut(batch_size * 50) {
        mega.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(mega.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    if let Some(longest) = (0..batches.len()).max_by_key(|&b| {
        (
            batches[b].iter().map(|&i| lengths[i]).max().unwrap_or(0),
            std::cmp::Reverse(b),
        )
    }) {
        batches.swap(0, longest);
    }
    batches
}

/// Several examples packed into one fixed-length row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
    /// Restart at 0 for each example; 0 on padding.
    pub position_ids: Vec<i64>,
    /// 1, 2, ... per example in the row; 0 on padding.
    pub segment_ids: Vec<u32>,
    /// Indices (into the packed slice) of the examples, in row order.
    pub examples: Vec<usize>,
}

impl PackedRow {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Causal attention within one example.
    pub fn attends(&self, q: usize, k: usize) -> bool {
        k <= q && self.segment_ids[q] != 0 && self.segment_ids[q] == self.segment_ids[k]
    }
}

/// Pack sequences into rows of exactly `row_len` tokens, best-fit decreasing
/// (deterministic: ties by index). Each sequence must fit in a row — truncate
/// with `max_len <= row_len` first. The loss mask of each example is kept as
/// is; since position 0 of an example is never a target, no token is ever
/// trained to be predicted from another example.
pub fn pack(seqs: &[Sequence], row_len: usize, pad_id: u32) -> Result<Vec<PackedRow>> {
    if row_len == 0 {
        return Err(DataError::config("packed row length must be positive"));
    }
    if let Some((i, s)) = seqs.iter().enumerate().find(|(_, s)| s.len() > row_len) {
        return Err(DataError::config(format!(
            "example {i} has {} tokens, more than the packed row length {row_len}; set max_len <= {row_len}",
            s.len()
        )));
    }
    let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].is_empty()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(seqs[i].len()), i));
    // (room left, row index): the best fit is the smallest room that suffices.
    let mut free: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let len = seqs[i].len();
        match free.range((len, 0)..).next().copied() {
            Some((room, row)) => {
                free.remove(&(room, row));
                members[row].push(i);
                if room > len {
                    free.insert((room - len, row));
                }
            }
            None => {
                members.push(vec![i]);
                if row_len > len {
                    free.insert((row_len - len, members.len() - 1));
                }
            }
        }
    }
    Ok(members
        .into_iter()
        .map(|examples| {
            let mut row = PackedRow {
                input_ids: Vec::with_capacity(row_len),
                loss_mask: Vec::with_capacity(row_len),
                position_ids: Vec::with_capacity(row_len),
                segment_ids: Vec::with_capacity(row_len),
                examples,
            };
            for (seg, &i) in row.examples.iter().enumerate() {
                let s = &seqs[i];
                row.input_ids.extend_from_slice(&s.input_ids);
                row.loss_mask.extend_from_slice(&s.loss_mask);
                row.position_ids.extend(0..s.len() as i64);
                row.segment_ids
                    .extend(std::iter::repeat_n(seg as u32 + 1, s.len()));
            }
            let pad = row_len - row.input_ids.len();
            row.input_ids.extend(std::iter::repeat_n(pad_id, pad));
            row.loss_mask.extend(std::iter::repeat_n(false, pad));
            row.position_ids.extend(std::iter::repeat_n(0, pad));
            row.segment_ids.extend(std::iter::repeat_n(0, pad));
            row
        })
        .collect())
}

/// Stack packed rows (all of one length) into a batch.
pub fn collate_packed<'a>(rows: impl IntoIterator<Item = &'a PackedRow>) -> Batch {
    let rows: Vec<&PackedRow> = rows.into_iter().collect();
    let seq_len = rows.first().map_or(0, |r| r.len());
    let mut b = Batch {
        batch_size: rows.len(),
        seq_len,
        ..Default::default()
    };
    for r in rows {
        assert_eq!(r.len(), seq_len, "packed rows must have one length");
        b.input_ids.extend_from_slice(&r.input_ids);
        b.attention_mask
            .extend(r.segment_ids.iter().map(|&s| s != 0));
        b.position_ids.extend_from_slice(&r.position_ids);
        b.loss_mask.extend_from_slice(&r.loss_mask);
        b.segment_ids.extend_from_slice(&r.segment_ids);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(ids: &[u32], trained_from: usize) -> Sequence {
        Sequence {
            input_ids: ids.to_vec(),
            loss_mask: (0..ids.len()).map(|i| i >= trained_from && i > 0).collect(),
        }
    }

    #[test]
    fn right_and_left_padding() {
        let a = seq(&[5, 6, 7], 1);
        let b = seq(&[8], 0);
        let r = collate([&a, &b], 0, PaddingSide::Right);
        assert_eq!(r.input_ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(r.attention_mask, vec![true, true, true, true, false, false]);
        assert_eq!(r.position_ids, vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(r.loss_mask, vec![false, true, true, false, false, false]);
        let l = collate([&a, &b], 0, PaddingSide::Left);
        assert_eq!(l.input_ids, vec![5, 6, 7, 0, 0, 8]);
        assert_eq!(l.position_ids, vec![0, 1, 2, 0, 0, 0]);
        assert_eq!(l.attention_mask, vec![true, true, true, false, false, true]);
        assert!(l.attends(1, 2, 2) && !l.attends(1, 2, 1));
        assert_eq!(r.last_token_index(), vec![Some(2), Some(0)]);
        assert_eq!(l.last_token_index(), vec![Some(2), Some(2)]);
    }

    #[test]
    fn score_index_passes_over_trailing_pad_ids_as_transformers_does() {
        // Pad id 7: row 0 ends with it (an EOS that is also the pad token),
        // row 1 holds it only inside, row 2 is nothing but it.
        let rows = [seq(&[5, 7, 6, 7], 1), seq(&[7, 8], 1), seq(&[7], 0)];
        let r = collate(&rows, 7, PaddingSide::Right);
        assert_eq!(r.score_index(7), vec![Some(2), Some(1), None]);
        let l = collate(&rows, 7, PaddingSide::Left);
        assert_eq!(l.score_index(7), vec![Some(2), Some(3), None]);
        // Another pad id: the last real token.
        assert_eq!(r.score_index(0), vec![Some(3), Some(1), Some(0)]);
    }

    #[test]
    fn pack_errors_on_long_examples() {
        let err = pack(&[seq(&[1, 2, 3], 0)], 2, 0).unwrap_err();
        assert!(err.to_string().contains("example 0 has 3 tokens"), "{err}");
    }

    #[test]
    fn length_grouping_puts_longest_first_and_covers_all() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 512).collect();
        let batches = length_grouped_batches(&lengths, 8, 3);
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let max = *lengths.iter().max().unwrap();
        assert!(batches[0].iter().any(|&i| lengths[i] == max));
        // Grouping wastes far less padding than random batches.
        let waste = |bs: &[Vec<usize>]| -> usize {
            bs.iter()
                .map(|b| {
                    let m = b.iter().map(|&i| lengths[i]).max().unwrap();
                    b.iter().map(|&i| m - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        assert!(waste(&batches) * 5 < waste(&shuffled_batches(1000, 8, 3)));
        assert_eq!(batches, length_grouped_batches(&lengths, 8, 3));
    }
}
