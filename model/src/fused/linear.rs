//! The dense layer y = x·Wᵀ + b + s·(x'·Aᵀ)·Bᵀ (x' = x, or x after LoRA
//! dropout) as one node, with gemm accumulating the adapter term into the
//! base product and the adapter's input gradient into the base's.
//!
//! Composed from burn ops, a LoRA layer adds two [N, out] / [N, in] tensors
//! per pass (forward output, backward input gradient), and the weight
//! gradient of x·Wᵀ comes out as the transpose of Wᵀ's, so it is copied
//! before the optimizer reads it. Here ∂W = gᵀ·x is formed in W's layout.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Shape, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::AdTensor;
use super::gemm::{Mat, matmul};
use super::tracked::{self, contiguous, f32s};

thread_local! {
    /// Base products x·Wᵀ formed on this thread so far ([`products_formed`]).
    static FORMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many base products x·Wᵀ this thread's fused layers have formed so far
/// (for tests: what activation checkpointing recomputes).
pub fn products_formed() -> u64 {
    FORMED.with(|f| f.get())
}

fn flex(values: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
    tracked::flex(values, Shape::new(shape))
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let s = t.shape();
    [s[0], s[1]]
}

/// The adapter's tensors: its input x' (`None`: x itself), A [r, in], B [out, r]
/// and the scale s.
#[derive(Debug, Clone)]
pub(super) struct Adapter<T> {
    pub input: Option<T>,
    pub a: T,
    pub b: T,
    pub scale: f32,
}

/// What the backward needs: x, W, and the adapter with h = x'·Aᵀ.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    w: FlexTensor,
    adapter: Option<(Adapter<FlexTensor>, FlexTensor)>,
}

/// Where the layer's output y comes from.
#[derive(Debug)]
pub(super) enum Output {
    /// Formed: x·Wᵀ + b + s·h·Bᵀ.
    Form,
    /// Zeros, for an output that is only differentiated through.
    Skip,
    /// Given: the same layer's output on the same input from an earlier pass.
    Given(FlexTensor),
}

/// y [N, out] (see [`Output`]) and, with an adapter, h = x'·Aᵀ [N, r].
fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    adapter: Option<&Adapter<FlexTensor>>,
    output: Output,
) -> (FlexTensor, Option<FlexTensor>) {
    let ([n, d_in], [d_out, _]) = (dims2(x), dims2(w));
    let h = adapter.map(|ad| {
        let r = dims2(&ad.a)[0];
        let input = ad.input.as_ref().unwrap_or(x);
        let mut h = vec![0.0f32; n * r];
        matmul(
            &mut h,
            Mat::rows(f32s(input), n, d_in),
            Mat::rows(f32s(&ad.a), r, d_in).t(),
            1.0,
            false,
        );
        (h, r)
    });
    let y = match output {
        Output::Given(y) => y,
        Output::Skip => flex(vec![0.0f32; n * d_out], [n, d_out]),
        Output::Form => {
            FORMED.with(|f| f.set(f.get() + 1));
            let mut y = vec![0.0f32; n * d_out];
            matmul(
                &mut y,
                Mat::rows(f32s(x), n, d_in),
                Mat::rows(f32s(w), d_out, d_in).t(),
                1.0,
                false,
            );
            if let Some(bias) = bias {
                let bias = f32s(bias);
                y.par_chunks_mut(d_out)
                    .for_each(|row| row.iter_mut().zip(bias).for_each(|(y, b)| *y += b));
            }
            if let (Some(ad), Some((h, r))) = (adapter, &h) {
                matmul(
                    &mut y,
                    Mat::rows(h, n, *r),
                    Mat::rows(f32s(&ad.b), d_out, *r).t(),
                    ad.scale,
                    true,
                );
            }
            flex(y, [n, d_out])
        }
    };
    (y, h.map(|(h, r)| flex(h, [n, r])))
}

/// y = x·Wᵀ + b + s·(x'·Aᵀ)·Bᵀ on `Flex` tensors (no graph).
pub(super) fn linear_plain(
    x: FlexTensor,
    w: FlexTensor,
    bias: Option<FlexTensor>,
    adapter: Option<Adapter<FlexTensor>>,
) -> FlexTensor {
    let adapter = adapter.map(|ad| Adapter {
        input: ad.input.map(contiguous),
        a: contiguous(ad.a),
        b: contiguous(ad.b),
        scale: ad.scale,
    });
    let bias = bias.map(contiguous);
    forward(
        &contiguous(x),
        &contiguous(w),
        bias.as_ref(),
        adapter.as_ref(),
        Output::Form,
    )
    .0
}

#[derive(Debug)]
struct LinearBackward;

/// Parents: x, W, bias, x', A, B (absent ones are untracked placeholders).
impl Backward<Flex, 6> for LinearBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 6>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let Saved { x, w, adapter } = ops.state;
        let [node_x, node_w, node_bias, node_input, node_a, node_b] = ops.parents;
        let ([n, d_in], [d_out, _]) = (dims2(&x), dims2(&w));
        let gm = Mat::rows(f32s(&g), n, d_out);

        // ∂h = s·g·B [N, r], for ∂x' and ∂A.
        let adapter_on_x = adapter.as_ref().is_some_and(|(ad, _)| ad.input.is_none());
        let gh = adapter.as_ref().and_then(|(ad, _)| {
            let wanted =
                node_a.is_some() || node_input.is_some() || (adapter_on_x && node_x.is_some());
            wanted.then(|| {
                let r = dims2(&ad.a)[0];
                let mut gh = vec![0.0f32; n * r];
                matmul(
                    &mut gh,
                    gm,
                    Mat::rows(f32s(&ad.b), d_out, r),
                    ad.scale,
                    false,
                );
                gh
            })
        });
        let adapter_input_grad = |dst: &mut [f32], accumulate: bool| {
            if let (Some((ad, _)), Some(gh)) = (&adapter, &gh) {
                let r = dims2(&ad.a)[0];
                matmul(
                    dst,
                    Mat::rows(gh, n, r),
                    Mat::rows(f32s(&ad.a), r, d_in),
                    1.0,
                    accumulate,
                );
            }
        };
        if let Some(node) = node_x {
            let mut gx = vec![0.0f32; n * d_in];
            matmul(&mut gx, gm, Mat::rows(f32s(&w), d_out, d_in), 1.0, false);
            if adapter_on_x {
                adapter_input_grad(&mut gx, true);
            }
            grads.register::<Flex>(node.id, flex(gx, [n, d_in]));
        }
        if let Some(node) = node_w {
            let mut gw = vec![0.0f32; d_out * d_in];
            matmul(&mut gw, gm.t(), Mat::rows(f32s(&x), n, d_in), 1.0, false);
            grads.register::<Flex>(node.id, flex(gw, [d_out, d_in]));
        }
        if let Some(node) = node_bias {
            let ones = vec![1.0f32; n];
            let mut gb = vec![0.0f32; d_out];
            matmul(&mut gb, Mat::rows(&ones, 1, n), gm, 1.0, false);
            grads.register::<Flex>(node.id, tracked::flex(gb, Shape::new([d_out])));
        }
        let Some((ad, h)) = &adapter else {
            return;
        };
        let r = dims2(&ad.a)[0];
        if let (Some(node), false) = (node_input, adapter_on_x) {
            let mut gi = vec![0.0f32; n * d_in];
            adapter_input_grad(&mut gi, false);
            grads.register::<Flex>(node.id, flex(gi, [n, d_in]));
        }
        if let (Some(node), Some(gh)) = (node_a, &gh) {
            let input = ad.input.as_ref().unwrap_or(&x);
            let mut ga = vec![0.0f32; r * d_in];
            matmul(
                &mut ga,
                Mat::rows(gh, n, r).t(),
                Mat::rows(f32s(input), n, d_in),
                1.0,
                false,
            );
            grads.register::<Flex>(node.id, flex(ga, [r, d_in]));
        }
        if let Some(node) = node_b {
            let mut gb = vec![0.0f32; d_out * r];
            matmul(&mut gb, gm.t(), Mat::rows(f32s(h), n, r), ad.scale, false);
            grads.register::<Flex>(node.id, flex(gb, [d_out, r]));
        }
    }
}

/// An untracked stand-in for an absent input.
fn placeholder() -> AdTensor {
    <Autodiff<Flex> as AutodiffBackend>::from_inner(flex(Vec::new(), [0, 0]))
}

/// y = x·Wᵀ + b + s·(x'·Aᵀ)·Bᵀ as one `Autodiff<Flex>` node.
///
/// With [`Output::Skip`] the node's output is zeros and its base product is
/// never formed, while its backward pass is the layer's: for an output that
/// only flows into a backward pass (the last product of a layer recomputed
/// for activation checkpointing). With [`Output::Given`] the output is the
/// one given, again without the base product (a recomputed layer whose
/// forward pass kept its projections' outputs).
///
/// Shapes: x, x' [N, in], W [out, in], b [out], A [r, in], B [out, r] → [N, out].
pub(super) fn linear(
    x: AdTensor,
    w: AdTensor,
    bias: Option<AdTensor>,
    adapter: Option<Adapter<AdTensor>>,
    output: Output,
) -> AdTensor {
    let xp = contiguous(x.primitive.clone());
    let wp = contiguous(w.primitive.clone());
    let bp = bias.as_ref().map(|b| contiguous(b.primitive.clone()));
    let ap = adapter.as_ref().map(|ad| Adapter {
        input: ad.input.as_ref().map(|i| contiguous(i.primitive.clone())),
        a: contiguous(ad.a.primitive.clone()),
        b: contiguous(ad.b.primitive.clone()),
        scale: ad.scale,
    });
    let (y, h) = forward(&xp, &wp, bp.as_ref(), ap.as_ref(), output);
    let node = |t: Option<&AdTensor>| t.cloned().unwrap_or_else(placeholder).node;
    let parents = [
        x.node,
        w.node,
        node(bias.as_ref()),
        node(adapter.as_ref().and_then(|ad| ad.input.as_ref())),
        node(adapter.as_ref().map(|ad| &ad.a)),
        node(adapter.as_ref().map(|ad| &ad.b)),
    ];
    match LinearBackward
        .prepare::<NoCheckpointing>(parents)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                x: xp,
                w: wp,
                adapter: ap.zip(h),
            };
            prep.finish(saved, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
