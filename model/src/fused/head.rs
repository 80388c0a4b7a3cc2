//! The LM head's gradient term s = Σₖ h ⊙ (c·W) per row as one
//! `Autodiff<Flex>` node (`crate::logprobs`' analytic head gradient).
//!
//! c [N, V] is a constant (e_y − softmax, untracked); the node's gradients
//! are ∂s/∂h = g ⊙ (c·W) per row and ∂s/∂W = cᵀ·(g ⊙ h). Composed from burn
//! ops, both products run on the `gemm` crate and the W-gradient of a
//! frozen (tied, LoRA) head is still formed by burn's matmul backward when
//! `h` needs one; here both go through [`super::gemm::matmul`] (BLAS when
//! loaded) and only what a tracked parent needs is computed.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Shape, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::AdTensor;
use super::gemm::{Mat, matmul};
use super::tracked::{contiguous, f32s, flex};

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let s = t.shape();
    [s[0], s[1]]
}

/// What the backward needs: c·W for h's gradient; c and h for W's.
#[derive(Debug, Clone)]
struct Saved {
    cw: Option<FlexTensor>,
    c_h: Option<(FlexTensor, FlexTensor)>,
}

#[derive(Debug)]
struct HeadTermBackward;

/// Parents: h [N, C], W [V, C].
impl Backward<Flex, 2> for HeadTermBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let g = f32s(&g);
        let [node_h, node_w] = ops.parents;
        let Saved { cw, c_h } = ops.state;
        if let (Some(node), Some(cw)) = (node_h, cw) {
            let [n, width] = dims2(&cw);
            let mut gh = f32s(&cw).to_vec();
            gh.par_chunks_mut(width)
                .zip(g)
                .for_each(|(row, g)| row.iter_mut().for_each(|x| *x *= g));
            grads.register::<Flex>(node.id, flex(gh, Shape::new([n, width])));
        }
        if let (Some(node), Some((c, h))) = (node_w, c_h) {
            let ([n, vocab], [_, width]) = (dims2(&c), dims2(&h));
            let mut gscaled = f32s(&h).to_vec();
            gscaled
                .par_chunks_mut(width)
                .zip(g)
                .for_each(|(row, g)| row.iter_mut().for_each(|x| *x *= g));
            let mut gw = vec![0.0f32; vocab * width];
            matmul(
                &mut gw,
                Mat::rows(f32s(&c), n, vocab).t(),
                Mat::rows(&gscaled, n, width),
                1.0,
                false,
            );
            grads.register::<Flex>(node.id, flex(gw, Shape::new([vocab, width])));
        }
    }
}

/// s [N] with s_i = Σₖ h_ik (c·W)_ik; c is read as a constant.
///
/// Shapes: h [N, C], c [N, V], W [V, C] → [N].
pub(super) fn head_term(h: AdTensor, c: AdTensor, w: AdTensor) -> AdTensor {
    let (hp, cp, wp) = (
        contiguous(h.primitive),
        contiguous(c.primitive),
        contiguous(w.primitive),
    );
    let ([n, width], [_, vocab]) = (dims2(&hp), dims2(&cp));
    let mut cw = vec![0.0f32; n * width];
    matmul(
        &mut cw,
        Mat::rows(f32s(&cp), n, vocab),
        Mat::rows(f32s(&wp), vocab, width),
        1.0,
        false,
    );
    let s: Vec<f32> = cw
        .par_chunks(width)
        .zip(f32s(&hp).par_chunks(width))
        .map(|(p, h)| p.iter().zip(h).map(|(p, h)| p * h).sum())
        .collect();
    let s = flex(s, Shape::new([n]));
    let (want_h, want_w) = (!h.node.requirement.is_none(), !w.node.requirement.is_none());
    match HeadTermBackward
        .prepare::<NoCheckpointing>([h.node, w.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                cw: want_h.then(|| flex(cw, Shape::new([n, width]))),
                c_h: want_w.then_some((cp, hp)),
            };
            prep.finish(saved, s)
        }
        OpsKind::UnTracked(prep) => prep.finish(s),
    }
}
