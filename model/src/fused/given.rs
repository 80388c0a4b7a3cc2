//! The dense layer's given-output node for composed-op autodiff backends
//! (CUDA, wgpu, ndarray; `Autodiff<Flex>` for tensors not in f32): what lets
//! activation checkpointing's recomputed layers skip their projections there
//! as the CPU kernels' tracked node does ([`super::linear`]).
//!
//! The node's output is a value it is handed (the same layer's output kept
//! by the checkpointed forward pass, or zeros for an output only
//! differentiated through), and its backward pass is exactly the one burn
//! records for the composed layer `(x·Wᵀ + b)`: ∂x = g·(Wᵀ)ᵀ and
//! ∂W = (xᵀ·g)ᵀ with the same products on the same operands, ∂b = Σ_rows g.
//! So the gradients equal the plain pass's bit for bit, while the forward
//! product x·Wᵀ is never formed.
//!
//! Any backend `Autodiff<I>` qualifies, but layer code is generic over
//! `B: Backend` and cannot name `I`: [`enable`] (called by activation
//! checkpointing's `enable`, which knows `B: AutodiffBackend`) registers the
//! node for `B`, and [`linear`] finds it by `B`'s type.

use std::any::{Any, TypeId};
use std::cell::Cell;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorPrimitive};

use crate::by_type::ByType;

/// The node for one backend, type-erased: [`Operands<B>`] → `Tensor<B, 2>`.
type Erased = fn(Box<dyn Any>) -> Box<dyn Any>;

/// The backends [`enable`] registered the node for.
static ENABLED: ByType<Erased> = ByType::new();

thread_local! {
    /// Base products this thread's composed layers took as given.
    static TAKEN: Cell<u64> = const { Cell::new(0) };
}

/// How many base products x·Wᵀ this thread's composed-op layers did not form
/// because their output was given or skipped (for tests: what activation
/// checkpointing saves off the CPU kernels).
pub fn products_taken_as_given() -> u64 {
    TAKEN.with(|t| t.get())
}

/// Let [`linear`] run on backend `B`, when `B` is burn's `Autodiff<I>` (with
/// its default checkpointing strategy); other backends are left out.
pub(crate) fn enable<B: AutodiffBackend>() {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<B::InnerBackend>>() {
        return;
    }
    ENABLED.insert::<B>(erased::<B::InnerBackend>);
}

/// Whether [`linear`] runs on backend `B`.
pub(crate) fn enabled<B: Backend>() -> bool {
    ENABLED.get::<B>().is_some()
}

/// The node's operands.
struct Operands<B: Backend> {
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    value: Tensor<B, 2>,
}

/// `value`, recorded as the output of x·Wᵀ + b: its backward pass is the
/// composed layer's, the product is not formed. `None` when the node is not
/// [`enable`]d for `B`.
///
/// Shapes: x [N, in], weight [out, in], bias [out], value [N, out].
pub(crate) fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    value: Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let node = ENABLED.get::<B>()?;
    let operands = Operands {
        x,
        weight,
        bias,
        value,
    };
    let out = node(Box::new(operands));
    TAKEN.with(|t| t.set(t.get() + 1));
    Some(*out.downcast::<Tensor<B, 2>>().expect("registered for B"))
}

fn erased<I: Backend>(operands: Box<dyn Any>) -> Box<dyn Any> {
    let Operands {
        x,
        weight,
        bias,
        value,
    } = *operands
        .downcast::<Operands<Autodiff<I>>>()
        .expect("registered for Autodiff<I>");
    let prim = |t: Tensor<Autodiff<I>, 2>| t.into_primitive().tensor();
    let bias = bias.map(|b| b.into_primitive().tensor());
    let y = given::<I>(prim(x), prim(weight), bias, prim(value));
    Box::new(Tensor::<Autodiff<I>, 2>::from_primitive(
        TensorPrimitive::Float(y),
    )) as Box<dyn Any>
}

/// What the backward pass needs: x, and W as the composed layer's Wᵀ view.
#[derive(Debug, Clone)]
struct Saved<I: Backend> {
    x: FloatTensor<I>,
    w_t: FloatTensor<I>,
    bias: Option<Shape>,
}

#[derive(Debug)]
struct GivenBackward;

/// Parents: x, W, bias (an untracked stand-in when absent).
impl<I: Backend> Backward<I, 3> for GivenBackward {
    type State = Saved<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<I>(&ops.node);
        let Saved { x, w_t, bias } = ops.state;
        let [node_x, node_w, node_bias] = ops.parents;
        // As burn's matmul backward for x [N, in] · Wᵀ [in, out], then the
        // transpose's backward for W.
        if let Some(node) = node_x {
            let gx = I::float_matmul(g.clone(), I::float_transpose(w_t));
            grads.register::<I>(node.id, gx);
        }
        if let Some(node) = node_w {
            let gw_t = I::float_matmul(I::float_transpose(x), g.clone());
            grads.register::<I>(node.id, I::float_transpose(gw_t));
        }
        // As the broadcast add's backward for b [1, out], then the
        // unsqueeze's.
        if let (Some(node), Some(shape)) = (node_bias, bias) {
            grads.register::<I>(node.id, I::float_reshape(I::float_sum_dim(g, 0), shape));
        }
    }
}

fn given<I: Backend>(
    x: FloatTensor<Autodiff<I>>,
    w: FloatTensor<Autodiff<I>>,
    bias: Option<FloatTensor<Autodiff<I>>>,
    value: FloatTensor<Autodiff<I>>,
) -> FloatTensor<Autodiff<I>> {
    use burn::tensor::TensorMetadata;
    let bias_shape = bias.as_ref().map(|b| b.primitive.shape());
    // An untracked stand-in for an absent bias: W's values, not read.
    let bias_node = bias
        .map(|b| b.node)
        .unwrap_or_else(|| <Autodiff<I> as AutodiffBackend>::from_inner(w.primitive.clone()).node);
    let parents = [x.node, w.node.clone(), bias_node];
    match GivenBackward
        .prepare::<NoCheckpointing>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                x: x.primitive,
                w_t: I::float_transpose(w.primitive),
                bias: bias_shape,
            };
            prep.finish(saved, value.primitive)
        }
        OpsKind::UnTracked(prep) => prep.finish(value.primitive),
    }
}
