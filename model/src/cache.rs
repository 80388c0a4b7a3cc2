//! Key/value cache for incremental decoding, passed explicitly to `forward`.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Cached keys and values of one layer.
///
/// Shapes: keys and values [B, S, K, D].
#[derive(Debug, Clone, Default)]
pub struct LayerCache<B: Backend> {
    kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> LayerCache<B> {
    /// Append the new keys/values [B, T, K, D] and return all of them [B, S, K, D].
    pub fn append(
        &mut self,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (key, value) = match self.kv.take() {
            None => (key, value),
            Some((k, v)) => (Tensor::cat(vec![k, key], 1), Tensor::cat(vec![v, value], 1)),
        };
        self.kv = Some((key.clone(), value.clone()));
        (key, value)
    }

    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[1])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One [`LayerCache`] per decoder layer.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerCache { kv: None }).collect(),
        }
    }

    pub fn layer(&mut self, i: usize) -> &mut LayerCache<B> {
        &mut self.layers[i]
    }

    /// Number of cached positions (S before the next forward).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
