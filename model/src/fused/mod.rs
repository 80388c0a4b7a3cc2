//! Fused operations of the decoder: RMSNorm, SwiGLU's gate and the attention
//! softmax, each one forward and one backward kernel.
//!
//! burn records these as chains of element-wise tensor ops (RMSNorm alone is
//! seven), and on the CPU backend each op is one single-threaded pass over
//! memory with a libm call per exp. Here, on burn's CPU backend (`Flex`, and
//! `Autodiff<Flex>` for training), each runs as one multi-threaded,
//! vectorised pass ([`cpu`]) registered in the autodiff graph as a single
//! node with its hand-derived backward ([`tracked`]). On every other backend
//! (CUDA, wgpu, ndarray) the same functions compose burn's ops, so the math
//! is written once more, plainly, beside each fused path; tests check the two
//! agree in value and gradient.
//!
//! The backend is recognised by its type: the functions stay generic over
//! `B: Backend` like the rest of the model, and the CPU path is chosen when
//! `B` *is* `Flex` or `Autodiff<Flex>`.

pub(crate) mod cpu;
mod tracked;

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};

/// The autodiff tensor of `Autodiff<Flex>`.
type AdTensor = FloatTensor<Autodiff<Flex>>;

/// Which fused path `B` takes.
enum Path {
    /// `Flex`: compute, no graph.
    Plain,
    /// `Autodiff<Flex>`: compute and register a backward step.
    Tracked,
}

fn path<B: Backend>(tensors: &[DType]) -> Option<Path> {
    if tensors.iter().any(|d| *d != DType::F32) {
        return None;
    }
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Some(Path::Plain)
    } else if id == TypeId::of::<Autodiff<Flex>>() {
        Some(Path::Tracked)
    } else {
        None
    }
}

/// Move a value to the type it is known to have (checked by [`path`]).
fn cast<S: 'static, T: 'static>(value: S) -> T {
    match (Box::new(value) as Box<dyn Any>).downcast::<T>() {
        Ok(t) => *t,
        Err(_) => unreachable!("backend type checked by TypeId"),
    }
}

fn primitive<B: Backend, T: 'static, const D: usize>(t: Tensor<B, D>) -> T {
    cast(t.into_primitive().tensor())
}

fn tensor<B: Backend, T: 'static, const D: usize>(p: T) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(cast::<T, FloatTensor<B>>(p)))
}

/// RMSNorm: x / √(mean(x²) + ε) ⊙ w over the last dimension, in f32.
///
/// Shapes: x [B, T, C], weight [C] → [B, T, C].
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    match path::<B>(&[x.dtype(), weight.dtype()]) {
        Some(Path::Plain) => tensor::<B, FlexTensor, 3>(tracked::rms_norm_plain(
            primitive::<B, FlexTensor, 3>(x),
            primitive::<B, FlexTensor, 1>(weight),
            eps,
        )),
        Some(Path::Tracked) => tensor::<B, AdTensor, 3>(tracked::rms_norm(
            primitive::<B, AdTensor, 3>(x),
            primitive::<B, AdTensor, 1>(weight),
            eps,
        )),
        None => rms_norm_ops(x, weight, eps),
    }
}

fn rms_norm_ops<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let variance = x.clone().powi_scalar(2).mean_dim(2);
    let x = x * (variance + eps).sqrt().recip();
    x * weight.unsqueeze::<3>()
}

/// SwiGLU's gate (Shazeer 2020): silu(a) ⊙ b.
///
/// Shapes: a, b [B, T, F] → [B, T, F].
pub fn swiglu<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    match path::<B>(&[a.dtype(), b.dtype()]) {
        Some(Path::Plain) => tensor::<B, FlexTensor, 3>(tracked::swiglu_plain(
            primitive::<B, FlexTensor, 3>(a),
            primitive::<B, FlexTensor, 3>(b),
        )),
        Some(Path::Tracked) => tensor::<B, AdTensor, 3>(tracked::swiglu(
            primitive::<B, AdTensor, 3>(a),
            primitive::<B, AdTensor, 3>(b),
        )),
        None => swiglu_ops(a, b),
    }
}

fn swiglu_ops<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    silu(a) * b
}

/// softmax(scores + mask) over the last dimension. The mask is additive and
/// constant (no gradient flows to it); each of its dimensions either equals
/// the scores' or is 1 (broadcast).
///
/// Shapes: scores [B, K, G, T, S], mask [B | 1, K | 1, G | 1, T | 1, S] →
/// [B, K, G, T, S].
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 5> {
    match path::<B>(&[scores.dtype(), mask.dtype()]) {
        Some(Path::Plain) => tensor::<B, FlexTensor, 5>(tracked::masked_softmax_plain(
            primitive::<B, FlexTensor, 5>(scores),
            primitive::<B, FlexTensor, 5>(mask),
        )),
        Some(Path::Tracked) => tensor::<B, AdTensor, 5>(tracked::masked_softmax(
            primitive::<B, AdTensor, 5>(scores),
            primitive::<B, AdTensor, 5>(mask),
        )),
        None => masked_softmax_ops(scores, mask),
    }
}

fn masked_softmax_ops<B: Backend>(scores: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 5> {
    softmax(scores + mask, 4)
}

#[cfg(test)]
mod tests;
