//! Gradient accumulation and global-norm clipping.
//!
//! burn's `GradientClipping::Norm` clips each tensor by its own norm; the
//! reference trainers (PyTorch `clip_grad_norm_`, used by transformers'
//! Trainer) clip all gradients together by the norm of their concatenation,
//! which keeps the update's direction. That is what this module does.

use std::collections::BTreeMap;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use crate::dist::{DistError, World};
use crate::params::{GradCollector, ParamInfo, PathStack, Trainable};

/// Gradients of the trainable parameters, summed over the micro-batches of one
/// optimizer step. Flattened to 1-D and keyed by parameter name, on the inner
/// (non-autodiff) backend.
#[derive(Debug)]
pub struct Gradients<B: Backend> {
    tensors: BTreeMap<String, Tensor<B, 1>>,
}

impl<B: Backend> Default for Gradients<B> {
    fn default() -> Self {
        Self {
            tensors: BTreeMap::new(),
        }
    }
}

impl<B: Backend> Gradients<B> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add the gradients of one backward pass. The micro-batch losses must
    /// already be scaled so that their sum is the step's loss (see the
    /// trainers: each divides by the token count of the whole step).
    pub fn accumulate<AB, M>(&mut self, model: &M, grads: AB::Gradients)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
    {
        self.collect(model, &grads);
    }

    /// Add `model`'s gradients from `grads` (which may hold other modules').
    fn collect<AB, M>(&mut self, model: &M, grads: &AB::Gradients)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
    {
        let mut collector = GradCollector::<AB> {
            path: PathStack::default(),
            grads,
            out: Vec::new(),
        };
        model.visit_trainable(&mut collector);
        for (name, grad) in collector.out {
            self.add(name, grad);
        }
    }

    /// Run the backward pass of `loss` (continued through the layers of any
    /// checkpointed forward pass it depends on, see
    /// [`alignkit_model::recompute`]) and add its gradients.
    pub fn backward<AB, M>(&mut self, model: &M, loss: Tensor<AB, 1>)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
    {
        for grads in alignkit_model::recompute::backward(loss) {
            self.accumulate(model, grads);
        }
    }

    /// The backward pass of a loss that two separately optimised modules
    /// share (a policy and a value head over its hidden states): `model`'s
    /// gradients added here, `other_model`'s to `other`.
    pub fn backward_shared<AB, M, N>(
        &mut self,
        model: &M,
        other: &mut Self,
        other_model: &N,
        loss: Tensor<AB, 1>,
    ) where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
        N: Trainable<AB>,
    {
        for grads in alignkit_model::recompute::backward(loss) {
            self.collect(model, &grads);
            other.collect(other_model, &grads);
        }
    }

    /// Add one flattened gradient by name.
    pub fn add(&mut self, name: String, grad: Tensor<B, 1>) {
        match self.tensors.remove(&name) {
            Some(sum) => self.tensors.insert(name, sum + grad),
            None => self.tensors.insert(name, grad),
        };
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor<B, 1>> {
        self.tensors.get(name)
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Tensor<B, 1>> {
        self.tensors.remove(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Sum these gradients over the ranks of `world` in place, as one
    /// flat tensor: `params` in order, a parameter this rank has no gradient
    /// for counting as zeros (its share of the step trained no token). One
    /// more element carries whether this rank's loss was not finite; the
    /// result says whether any rank's was.
    pub fn sum_over(
        &mut self,
        world: &World,
        params: &[ParamInfo],
        not_finite_here: bool,
        device: &B::Device,
    ) -> Result<bool, DistError> {
        let numel = |p: &ParamInfo| p.shape.iter().product::<usize>();
        let mut parts: Vec<Tensor<B, 1>> = params
            .iter()
            .map(|p| match self.tensors.remove(&p.name) {
                Some(g) => g,
                None => Tensor::zeros([numel(p)], device),
            })
            .collect();
        parts.push(Tensor::from_data([not_finite_here as u8 as f32], device));
        let flat = world.sum_tensor(Tensor::cat(parts, 0), "summing the gradients")?;
        let mut at = 0;
        for p in params {
            let n = numel(p);
            self.tensors
                .insert(p.name.clone(), flat.clone().slice(at..at + n));
            at += n;
        }
        let bad: f32 = flat.slice(at..at + 1).into_scalar().elem();
        Ok(bad != 0.0)
    }

    /// ‖g‖₂ over all gradients together: sqrt(Σ_p Σ_i g_pi²). NaN if any
    /// gradient is NaN, +Inf if one overflows.
    pub fn global_norm(&self) -> f64 {
        let squares: Vec<Tensor<B, 1>> = self
            .tensors
            .values()
            .map(|g| ordered_sum(g.clone().powi_scalar(2)))
            .collect();
        if squares.is_empty() {
            return 0.0;
        }
        let total: f64 = Tensor::cat(squares, 0).sum().into_scalar().elem();
        total.sqrt()
    }

    /// Scale every gradient by min(1, max_norm / (‖g‖ + 1e-6)) as PyTorch's
    /// `clip_grad_norm_` does. Returns the norm before clipping (what the
    /// reference trainers log as `grad_norm`). `max_norm <= 0` disables
    /// clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        if max_norm > 0.0 && norm.is_finite() {
            let coef = max_norm / (norm + 1e-6);
            if coef < 1.0 {
                let tensors = std::mem::take(&mut self.tensors);
                self.tensors = tensors
                    .into_iter()
                    .map(|(name, g)| (name, g.mul_scalar(coef)))
                    .collect();
            }
        }
        norm
    }
}

/// Elements per row of [`ordered_sum`]'s partial sums.
const SUM_ROW: usize = 1 << 16;

/// The sum of a 1-D tensor, its terms always added in the same order. burn-flex
/// sums a tensor of 4M elements or more in rayon tasks whose pairing follows
/// work stealing, so the last bits of, say, the squared gradient of SmolLM2's
/// 28M-element embedding would vary with the machine's load, and with them the
/// clipping factor and every weight (exact resume would hold only on an idle
/// machine). Rows of `SUM_ROW` elements are each summed by one task, then the
/// row sums (fewer than 4M) and the tail.
fn ordered_sum<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    let n = x.dims()[0];
    let rows = n / SUM_ROW;
    if rows < 2 {
        return x.sum();
    }
    let body = x
        .clone()
        .slice(0..rows * SUM_ROW)
        .reshape([rows, SUM_ROW])
        .sum_dim(1)
        .reshape([rows])
        .sum();
    if rows * SUM_ROW == n {
        body
    } else {
        body + x.slice(rows * SUM_ROW..n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    type B = Flex;

    fn t(v: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    /// Sums of large tensors: close to the f64 sum, with or without a tail,
    /// and the same bits every time, even from threads competing for rayon's
    /// workers (where burn-flex's own sum pairs its partials differently).
    #[test]
    fn ordered_sums_are_exact_enough_and_repeatable() {
        for n in [1000, 2 * SUM_ROW, 3 * SUM_ROW + 5, 4_500_000] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
            let want: f64 = v.iter().map(|&x| x as f64).sum();
            let got: f32 = ordered_sum(t(&v)).into_scalar();
            assert!(
                ((got as f64 - want) / want).abs() < 1e-5,
                "{n}: {got} vs {want}"
            );
        }
        let v: Vec<f32> = (0..4_500_000).map(|i| (i as f32 * 0.37).sin()).collect();
        let bits = || ordered_sum(t(&v)).into_scalar().to_bits();
        let first = bits();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..3).map(|_| bits()).collect::<Vec<_>>()))
                .collect();
            for h in handles {
                assert!(h.join().unwrap().iter().all(|&b| b == first));
            }
        });
    }

    fn values(g: &Gradients<B>, name: &str) -> Vec<f32> {
        g.get(name).unwrap().clone().into_data().to_vec().unwrap()
    }

    #[test]
    fn global_norm_clips_all_tensors_by_one_factor() {
        // ‖(3, 4) ⊕ (12)‖ = sqrt(9 + 16 + 144) = 13; max_norm 6.5 halves every
        // entry (coef = 6.5 / (13 + 1e-6) ≈ 0.5). Per-tensor clipping would have
        // scaled (3, 4) by 6.5/5 = 1.3 (i.e. not at all) and 12 by 6.5/12.
        let mut g = Gradients::<B>::new();
        g.add("a".into(), t(&[3.0, 4.0]));
        g.add("b".into(), t(&[12.0]));
        let norm = g.clip_global_norm(6.5);
        assert!((norm - 13.0).abs() < 1e-6);
        let a = values(&g, "a");
        assert!(
            (a[0] - 1.5).abs() < 1e-5 && (a[1] - 2.0).abs() < 1e-5,
            "{a:?}"
        );
        assert!((values(&g, "b")[0] - 6.0).abs() < 1e-5);
        assert!((g.global_norm() - 6.5).abs() < 1e-4);
    }

    #[test]
    fn small_gradients_are_not_scaled_up() {
        let mut g = Gradients::<B>::new();
        g.add("a".into(), t(&[0.3, 0.4]));
        let norm = g.clip_global_norm(1.0);
        assert!((norm - 0.5).abs() < 1e-6);
        assert_eq!(values(&g, "a"), vec![0.3, 0.4]);
    }

    #[test]
    fn accumulation_adds_by_name_and_nan_shows_in_the_norm() {
        let mut g = Gradients::<B>::new();
        g.add("a".into(), t(&[1.0, 2.0]));
        g.add("a".into(), t(&[0.5, -2.0]));
        assert_eq!(values(&g, "a"), vec![1.5, 0.0]);
        g.add("b".into(), t(&[f32::NAN]));
        assert!(g.global_norm().is_nan());
        // A non-finite norm never scales (the step is skipped by the guard).
        assert!(g.clip_global_norm(1.0).is_nan());
        assert_eq!(values(&g, "a"), vec![1.5, 0.0]);
    }
}
