//! Additive attention masks built from padding, causality and packing segments.
//!
//! The mask is [B, 1, T, S]: 0 where query t may attend to key s, [`MASKED`]
//! elsewhere. Query t sits at cache index `past + t`; it sees key s when
//! `s <= past + t`, key s is a real token, and (for packed rows) both belong
//! to the same segment.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Added to the scores of masked keys. Finite, so a query with no visible key
/// (a padding position) yields a uniform row instead of NaN; small enough that
/// exp() of it is exactly 0 in f32 and bf16.
pub const MASKED: f32 = -1e30;

/// Build the mask for `t` new queries over `key_valid[b].len()` keys.
///
/// `key_valid[b][s]`: key s of row b is a real token (not padding).
/// `segments`: optional segment id per key; queries attend within their segment.
pub fn attention_mask<B: Backend>(
    key_valid: &[Vec<bool>],
    t: usize,
    segments: Option<&[Vec<u32>]>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let b = key_valid.len();
    let s = key_valid.first().map_or(0, Vec::len);
    assert!(s >= t, "attention_mask: {s} keys cannot hold {t} queries");
    let past = s - t;
    let mut data = vec![MASKED; b * t * s];
    for (row, valid) in key_valid.iter().enumerate() {
        assert_eq!(valid.len(), s, "attention_mask: ragged key_valid");
        for q in 0..t {
            let q_index = past + q;
            let out = &mut data[(row * t + q) * s..(row * t + q + 1) * s];
            for (k, slot) in out.iter_mut().enumerate().take(q_index + 1) {
                let same_segment = segments.is_none_or(|seg| seg[row][k] == seg[row][q_index]);
                if valid[k] && same_segment {
                    *slot = 0.0;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [b, 1, t, s]), device)
}

/// Position ids of a padded batch: each real token's position is the number of
/// real tokens before it (transformers' `attention_mask.cumsum(-1) - 1`), so a
/// left-padded row matches its unpadded self. Pads get 0; nothing attends to them.
pub fn positions_from_mask(valid: &[Vec<bool>]) -> Vec<Vec<i64>> {
    valid
        .iter()
        .map(|row| {
            let mut n = 0i64;
            row.iter()
                .map(|&v| {
                    let p = if v { n } else { 0 };
                    n += v as i64;
                    p
                })
                .collect()
        })
        .collect()
}
