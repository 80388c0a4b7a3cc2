//! Key/value cache for incremental decoding, passed explicitly to `forward`.
//!
//! Each layer keeps its keys and values in buffers with room for the whole
//! generation, laid out heads-first as attention reads them ([B, K, 1, S, D]:
//! the unit axis is the G query heads' broadcast). A decoding step writes its
//! new position in place and hands attention a view of the filled part, so
//! nothing is copied per token; appending by concatenation instead copied the
//! whole cache of every layer at every step (7% of a 16-row rollout's time).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::dtype::to_dtype;
use crate::fused::assign_positions;

/// Cached keys and values of one layer.
#[derive(Debug, Clone, Default)]
pub struct LayerCache<B: Backend> {
    /// Keys and values [B, K, 1, capacity, D]; positions `len..` are unused.
    buffers: Option<(Tensor<B, 5>, Tensor<B, 5>)>,
    len: usize,
    /// Positions to reserve when the buffers are first made.
    capacity: usize,
}

impl<B: Backend> LayerCache<B> {
    /// Append the new keys/values [B, K, 1, T, D] and return all of them
    /// [B, K, 1, S, D] (S = cached + T), as views of the buffers.
    pub fn append(
        &mut self,
        key: Tensor<B, 5>,
        value: Tensor<B, 5>,
    ) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let [b, k, g, t, d] = key.dims();
        let end = self.len + t;
        let (keys, values) = match self.buffers.take() {
            Some((keys, values)) if keys.dims()[3] >= end => (keys, values),
            old => {
                // First use, or out of room: a larger buffer (at least
                // double, so a cache without a capacity hint grows in
                // amortised constant time per position).
                let room = end.max(self.capacity).max(2 * self.len);
                let fresh = || {
                    to_dtype(
                        Tensor::<B, 5>::zeros([b, k, g, room, d], &key.device()),
                        key.dtype(),
                    )
                };
                let (mut keys, mut values) = (fresh(), fresh());
                if let Some((old_k, old_v)) = old {
                    let filled = |x: Tensor<B, 5>| x.narrow(3, 0, self.len);
                    keys = assign_positions(keys, 0, filled(old_k));
                    values = assign_positions(values, 0, filled(old_v));
                }
                (keys, values)
            }
        };
        // The buffers are the only holders of their storage here (the views
        // of the last step are gone), so these writes happen in place.
        let keys = assign_positions(keys, self.len, key);
        let values = assign_positions(values, self.len, value);
        self.len = end;
        let filled = (
            keys.clone().narrow(3, 0, end),
            values.clone().narrow(3, 0, end),
        );
        self.buffers = Some((keys, values));
        filled
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keep row `rows[i]` of the cache as its row i (rows may repeat).
    fn select_rows(&mut self, rows: &Tensor<B, 1, Int>) {
        self.buffers = self
            .buffers
            .take()
            .map(|(k, v)| (k.select(0, rows.clone()), v.select(0, rows.clone())));
    }
}

/// One [`LayerCache`] per decoder layer.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// A cache whose buffers start with room for `capacity` positions (the
    /// prompt width plus the tokens to generate); they grow if it runs out.
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        let layer = LayerCache {
            buffers: None,
            len: 0,
            capacity,
        };
        Self {
            layers: vec![layer; num_layers],
        }
    }

    pub fn layer(&mut self, i: usize) -> &mut LayerCache<B> {
        &mut self.layers[i]
    }

    /// Rebuild the batch from rows of the cached one: row i of the result is
    /// row `rows[i]` of every layer's keys and values. A prompt shared by
    /// several rows is prefilled once and then copied to each of them.
    pub fn select_rows(&mut self, rows: &Tensor<B, 1, Int>) {
        self.layers.iter_mut().for_each(|l| l.select_rows(rows));
    }

    /// Number of cached positions (S before the next forward).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    /// Keys [1, 2, 1, t, 3] whose values count up from `first`.
    fn positions(first: f32, t: usize) -> Tensor<Flex, 5> {
        let values: Vec<f32> = (0..2 * t * 3).map(|i| first + i as f32).collect();
        Tensor::from_data(
            TensorData::new(values, [1, 2, 1, t, 3]),
            &Default::default(),
        )
    }

    /// Appends past the reserved room (1 position) grow the buffers and keep
    /// what was cached: the views equal the concatenation of all appends.
    #[test]
    fn appends_past_the_capacity_keep_every_position() {
        let mut cache = KvCache::<Flex>::new(1, 1);
        let layer = cache.layer(0);
        let parts = [positions(0.0, 2), positions(100.0, 1), positions(200.0, 3)];
        for (i, part) in parts.iter().enumerate() {
            let (keys, values) = layer.append(part.clone(), part.clone() * 2.0);
            let want = Tensor::cat(parts[..=i].to_vec(), 3);
            keys.into_data().assert_eq(&want.clone().into_data(), true);
            values
                .into_data()
                .assert_eq(&(want * 2.0).into_data(), true);
        }
        assert_eq!(cache.len(), 6);
    }
}
