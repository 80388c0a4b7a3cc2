//! The fused ops on `Flex` tensors, and as single nodes of `Autodiff<Flex>`'s
//! graph whose backward runs the matching [`cpu`] kernel.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Shape, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};

use super::AdTensor;
use super::cpu;
use crate::config::Activation;

/// A contiguous f32 view of a tensor (copied only if it is strided).
pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

pub(super) fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused kernels take contiguous f32 tensors")
}

pub(super) fn flex(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

// ---- RMSNorm ----------------------------------------------------------------

fn rms_norm_forward(x: &FlexTensor, w: &FlexTensor, eps: f64) -> (FlexTensor, FlexTensor) {
    let shape = x.shape();
    let c = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / c.max(1);
    let (y, r) = cpu::rms_norm(f32s(x), f32s(w), eps as f32);
    (flex(y, shape), flex(r, Shape::new([rows])))
}

pub(super) fn rms_norm_plain(x: FlexTensor, w: FlexTensor, eps: f64) -> FlexTensor {
    rms_norm_forward(&contiguous(x), &contiguous(w), eps).0
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// x, w, and r = 1/√(mean(x²) + ε) per row.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, w, r) = ops.state;
        let [node_x, node_w] = ops.parents;
        let (gx, gw) = cpu::rms_norm_backward(
            f32s(&x),
            f32s(&w),
            f32s(&r),
            f32s(&g),
            node_x.is_some(),
            node_w.is_some(),
        );
        if let (Some(node), Some(gx)) = (node_x, gx) {
            grads.register::<Flex>(node.id, flex(gx, x.shape()));
        }
        if let (Some(node), Some(gw)) = (node_w, gw) {
            grads.register::<Flex>(node.id, flex(gw, w.shape()));
        }
    }
}

pub(super) fn rms_norm(x: AdTensor, w: AdTensor, eps: f64) -> AdTensor {
    let (xp, wp) = (contiguous(x.primitive), contiguous(w.primitive));
    let (y, r) = rms_norm_forward(&xp, &wp, eps);
    match RmsNormBackward
        .prepare::<NoCheckpointing>([x.node, w.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xp, wp, r), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

// ---- Gated MLP activation ---------------------------------------------------

pub(super) fn glu_plain(a: FlexTensor, b: FlexTensor, act: Activation) -> FlexTensor {
    let (a, b) = (contiguous(a), contiguous(b));
    flex(cpu::glu(f32s(&a), f32s(&b), act), a.shape())
}

#[derive(Debug)]
struct GluBackward;

impl Backward<Flex, 2> for GluBackward {
    /// The inputs a and b, and the activation.
    type State = (FlexTensor, FlexTensor, Activation);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (a, b, act) = ops.state;
        let (ga, gb) = cpu::glu_backward(f32s(&a), f32s(&b), f32s(&g), act);
        let [node_a, node_b] = ops.parents;
        if let Some(node) = node_a {
            grads.register::<Flex>(node.id, flex(ga, a.shape()));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex(gb, b.shape()));
        }
    }
}

pub(super) fn glu(a: AdTensor, b: AdTensor, act: Activation) -> AdTensor {
    let (ap, bp) = (contiguous(a.primitive), contiguous(b.primitive));
    let h = flex(cpu::glu(f32s(&ap), f32s(&bp), act), ap.shape());
    match GluBackward
        .prepare::<NoCheckpointing>([a.node, b.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((ap, bp, act), h),
        OpsKind::UnTracked(prep) => prep.finish(h),
    }
}

// ---- Attention softmax ------------------------------------------------------

fn masked_softmax_forward(scores: &FlexTensor, mask: &FlexTensor) -> FlexTensor {
    let shape = scores.shape();
    let mask_shape = mask.shape();
    let d = shape.num_dims();
    let width = shape[d - 1];
    assert_eq!(
        mask_shape[d - 1],
        width,
        "attention mask covers {} keys, scores {width}",
        mask_shape[d - 1]
    );
    // Row i of the scores → its row of the (broadcast) mask.
    let (dims, mdims): (Vec<usize>, Vec<usize>) =
        (0..d - 1).map(|i| (shape[i], mask_shape[i])).unzip();
    let mask_row = |mut i: usize| {
        let (mut row, mut stride) = (0, 1);
        for (&n, &m) in dims.iter().zip(&mdims).rev() {
            if m != 1 {
                row += (i % n) * stride;
                stride *= m;
            }
            i /= n;
        }
        row
    };
    flex(
        cpu::masked_softmax(f32s(scores), f32s(mask), width, mask_row),
        shape,
    )
}

pub(super) fn masked_softmax_plain(scores: FlexTensor, mask: FlexTensor) -> FlexTensor {
    masked_softmax_forward(&contiguous(scores), &contiguous(mask))
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The output probabilities.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let p = ops.state;
        let [node] = ops.parents;
        if let Some(node) = node {
            let shape = p.shape();
            let width = shape[shape.num_dims() - 1];
            let gs = cpu::softmax_backward(f32s(&p), f32s(&g), width);
            grads.register::<Flex>(node.id, flex(gs, shape));
        }
    }
}

pub(super) fn masked_softmax(scores: AdTensor, mask: AdTensor) -> AdTensor {
    let p = masked_softmax_forward(&contiguous(scores.primitive), &contiguous(mask.primitive));
    match SoftmaxBackward
        .prepare::<NoCheckpointing>([scores.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(p.clone(), p),
        OpsKind::UnTracked(prep) => prep.finish(p),
    }
}

// ---- Permuted copy ----------------------------------------------------------

/// `t.permute(axes)` copied into its own row-major buffer.
fn permute_copy(t: &FlexTensor, axes: &[usize]) -> FlexTensor {
    let view = t.permute(axes);
    let layout = view.layout();
    let shape = view.shape();
    if layout.strides().iter().any(|&s| s < 0) {
        return view.to_contiguous();
    }
    let strides: Vec<usize> = layout.strides().iter().map(|&s| s as usize).collect();
    let dims: Vec<usize> = (0..shape.num_dims()).map(|i| shape[i]).collect();
    flex(
        cpu::gather(t.storage::<f32>(), layout.start_offset(), &dims, &strides),
        shape,
    )
}

pub(super) fn permute_plain(t: FlexTensor, axes: &[usize]) -> FlexTensor {
    permute_copy(&t, axes)
}

#[derive(Debug)]
struct PermuteBackward;

impl Backward<Flex, 1> for PermuteBackward {
    /// The inverse permutation.
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let [node] = ops.parents;
        if let Some(node) = node {
            grads.register::<Flex>(node.id, permute_copy(&g, &ops.state));
        }
    }
}

pub(super) fn permute(t: AdTensor, axes: &[usize]) -> AdTensor {
    let out = permute_copy(&t.primitive, axes);
    let mut inverse = vec![0; axes.len()];
    for (i, &a) in axes.iter().enumerate() {
        inverse[a] = i;
    }
    match PermuteBackward
        .prepare::<NoCheckpointing>([t.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(inverse, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ---- Rotary embedding -------------------------------------------------------

fn rope_forward(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, backward: bool) -> FlexTensor {
    let shape = x.shape();
    let width = shape[shape.num_dims() - 1];
    flex(
        cpu::rope(f32s(x), f32s(cos), f32s(sin), width, backward),
        shape,
    )
}

pub(super) fn rope_plain(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
    rope_forward(&contiguous(x), &contiguous(cos), &contiguous(sin), false)
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    /// cos and sin.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let (cos, sin) = ops.state;
        let [node] = ops.parents;
        if let Some(node) = node {
            grads.register::<Flex>(node.id, rope_forward(&g, &cos, &sin, true));
        }
    }
}

pub(super) fn rope(x: AdTensor, cos: AdTensor, sin: AdTensor) -> AdTensor {
    let (cos, sin) = (contiguous(cos.primitive), contiguous(sin.primitive));
    let y = rope_forward(&contiguous(x.primitive), &cos, &sin, false);
    match RopeBackward
        .prepare::<NoCheckpointing>([x.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
