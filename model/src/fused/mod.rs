//! Fused operations: the decoder's RMSNorm, RoPE, attention softmax and head
//! permutes, SwiGLU's gate, the dense/LoRA layer, the LM head's log-softmax
//! rows, and an in-place element-wise update for the optimizer.
//!
//! burn records these as chains of element-wise tensor ops (RMSNorm alone is
//! seven), and on the CPU backend each op is one single-threaded pass over
//! memory with a libm call per exp. Here, on burn's CPU backend (`Flex`, and
//! `Autodiff<Flex>` for training), each runs as one multi-threaded,
//! vectorised pass ([`cpu`]) registered in the autodiff graph as a single
//! node with its hand-derived backward (`tracked`, `linear`). On every other
//! backend (CUDA, wgpu, ndarray) the same functions compose burn's ops, so
//! the math is written once more, plainly, beside each fused path; tests
//! check the two agree in value and gradient.
//!
//! The backend is recognised by its type: the functions stay generic over
//! `B: Backend` like the rest of the model, and the CPU path is chosen when
//! `B` *is* `Flex` or `Autodiff<Flex>` ([`path_for`]). A silent fall-back to
//! the composed ops would only show as a slower run, so every call records
//! the path it took in a per-thread [`Tally`] that tests read
//! ([`take_tally`]).
//!
//! Each op asserts the shapes its kernel relies on (the RMSNorm weight's
//! width, the mask's broadcast, equal operand shapes) before dispatch, so a
//! wrong shape panics with the same message on every backend instead of
//! reading the wrong rows.

pub mod blas;
pub(crate) mod cpu;
mod gemm;
pub mod given;
mod head;
mod linear;
pub use linear::products_formed;
pub mod panels;
mod tracked;

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};

use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use crate::config::Activation;
use crate::dtype::{to_dtype, to_f32};

/// The autodiff tensor of `Autodiff<Flex>`.
type AdTensor = FloatTensor<Autodiff<Flex>>;

/// The fused path a backend takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `Flex`: the CPU kernel, no graph.
    Plain,
    /// `Autodiff<Flex>`: the CPU kernel, registered as one graph node with
    /// its own backward.
    Tracked,
}

/// The fused path of backend `B` for f32 tensors; `None`: burn's ops.
/// Every op dispatches through this function.
pub fn path_for<B: Backend>() -> Option<Path> {
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Some(Path::Plain)
    } else if id == TypeId::of::<Autodiff<Flex>>() {
        Some(Path::Tracked)
    } else {
        None
    }
}

/// [`path_for`] when every tensor is f32 (the kernels' only dtype).
fn path<B: Backend>(tensors: &[DType]) -> Option<Path> {
    if tensors.iter().any(|d| *d != DType::F32) {
        return None;
    }
    path_for::<B>()
}

/// The ops of this module, as counted in a [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Linear,
    RmsNorm,
    Permute,
    Rope,
    Glu,
    MaskedSoftmax,
    LogSoftmaxRows,
    HeadTerm,
    UpdateInPlace,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Linear,
        Op::RmsNorm,
        Op::Permute,
        Op::Rope,
        Op::Glu,
        Op::MaskedSoftmax,
        Op::LogSoftmaxRows,
        Op::HeadTerm,
        Op::UpdateInPlace,
    ];
}

/// How many calls of each op took each path on one thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// [op][Plain, Tracked, burn's ops]
    counts: [[u64; 3]; Op::ALL.len()],
}

impl Tally {
    /// Calls of `op` that took `path` (`None`: burn's ops).
    pub fn count(&self, op: Op, path: Option<Path>) -> u64 {
        self.counts[op as usize][Self::column(path)]
    }

    fn column(path: Option<Path>) -> usize {
        match path {
            Some(Path::Plain) => 0,
            Some(Path::Tracked) => 1,
            None => 2,
        }
    }
}

thread_local! {
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
}

/// Note that a call of `op` took `path`, and hand the path on.
fn record(op: Op, path: Option<Path>) -> Option<Path> {
    TALLY.with(|t| t.borrow_mut().counts[op as usize][Tally::column(path)] += 1);
    path
}

/// The paths this thread's calls took since the last call, and a fresh count.
pub fn take_tally() -> Tally {
    TALLY.with(|t| std::mem::take(&mut *t.borrow_mut()))
}

/// Inference tensors below this many elements (one decoded token) take
/// burn's ops: handing a few hundred values to the thread pool costs more
/// than the passes it saves.
const SMALL: usize = 1 << 14;

/// [`path`], except that small untracked tensors take burn's ops.
fn sized(path: Option<Path>, elements: usize) -> Option<Path> {
    match path {
        Some(Path::Plain) if elements < SMALL => None,
        path => path,
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

/// x·w (+ b) over the last dimension, as one 2-D product.
///
/// burn's `module::linear` reshapes `w` to [1, in, out], which copies a
/// transposed weight on every call (the whole [V, C] embedding for a tied LM
/// head), and runs one single-threaded gemm per leading index. Flattening x to
/// [N, in] instead is free for contiguous x and gives gemm one large product
/// to split over its threads; a transposed weight is read in place.
///
/// Shapes: x [.., in], w [in, out], b [out] → [.., out].
pub fn dense<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    b: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [d_in, d_out] = w.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = x.reshape([rows, d_in]).matmul(w);
    let y = match b {
        Some(b) => y + b.unsqueeze::<2>(),
        None => y,
    };
    dims[D - 1] = d_out;
    y.reshape(dims)
}

/// `weight` [out, in] (transformers' layout) as column panels for the CPU
/// backend's few-rows kernel ([`panels`]), for decoding; `None` on other
/// backends.
pub fn decode_panels<B: Backend>(weight: Tensor<B, 2>) -> Option<Arc<panels::Panels>> {
    if path::<B>(&[weight.dtype()]) != Some(Path::Plain) {
        return None;
    }
    let [d_out, d_in] = weight.dims();
    let w = tracked::contiguous(primitive::<B, FlexTensor, 2>(weight));
    Some(Arc::new(panels::Panels::new(
        tracked::f32s(&w),
        d_out,
        d_in,
    )))
}

/// x·Wᵀ (+ b) over the last dimension with W laid out by [`decode_panels`],
/// or `None` when x has too many rows for the few-rows kernel (a prefill:
/// then use the layer's own weight).
///
/// Shapes: x [.., in], b [out] → [.., out].
pub fn panels_forward<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    panels: &panels::Panels,
    b: Option<Tensor<B, 1>>,
) -> Option<Tensor<B, D>> {
    let mut dims = x.dims();
    let [d_out, d_in] = panels.dims();
    assert_eq!(
        dims[D - 1],
        d_in,
        "decoding: the input's last dimension is {}, the weight [out, in] is [{d_out}, {d_in}]",
        dims[D - 1]
    );
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut dtypes = vec![x.dtype()];
    dtypes.extend(b.as_ref().map(|b| b.dtype()));
    if rows > panels::MAX_ROWS || path::<B>(&dtypes) != Some(Path::Plain) {
        return None;
    }
    let x = tracked::contiguous(primitive::<B, FlexTensor, 2>(
        x.clone().reshape([rows, d_in]),
    ));
    let b = b.map(|b| tracked::contiguous(primitive::<B, FlexTensor, 1>(b)));
    let y = panels.matmul(tracked::f32s(&x), rows, b.as_ref().map(tracked::f32s));
    dims[D - 1] = d_out;
    let y = tensor::<B, FlexTensor, 2>(tracked::flex(y, Shape::new([rows, d_out])));
    Some(y.reshape(dims))
}

/// `buffer` [B, K, G, S, D] with positions `start..start + T` of axis 3
/// replaced by `values` [B, K, G, T, D].
///
/// On the CPU backend the write happens in place when `buffer` is the only
/// holder of its storage (burn-flex's `slice_assign` 0.21 always copies the
/// whole tensor: it keeps the input alive beside its contiguous clone, so
/// the copy-on-write sees two owners).
pub fn assign_positions<B: Backend>(
    buffer: Tensor<B, 5>,
    start: usize,
    values: Tensor<B, 5>,
) -> Tensor<B, 5> {
    let ([b, k, g, s, d], [vb, vk, vg, t, vd]) = (buffer.dims(), values.dims());
    assert!(
        [vb, vk, vg, vd] == [b, k, g, d] && start + t <= s,
        "assign_positions: values {:?} at {start} into {:?}",
        values.dims(),
        buffer.dims()
    );
    if path::<B>(&[buffer.dtype(), values.dtype()]) != Some(Path::Plain) {
        return buffer.slice_assign([0..b, 0..k, 0..g, start..start + t, 0..d], values);
    }
    let mut target = tracked::contiguous(primitive::<B, FlexTensor, 5>(buffer));
    let values = tracked::contiguous(primitive::<B, FlexTensor, 5>(values));
    let dst = target.storage_mut::<f32>();
    for (i, src) in tracked::f32s(&values).chunks_exact(t * d).enumerate() {
        let at = (i * s + start) * d;
        dst[at..at + t * d].copy_from_slice(src);
    }
    tensor::<B, FlexTensor, 5>(target)
}

/// A LoRA adapter's term s·(x'·Aᵀ)·Bᵀ in [`linear`].
#[derive(Debug, Clone)]
pub struct LoraTerm<B: Backend, const D: usize> {
    /// The adapter's input when it differs from the layer's (after dropout).
    pub input: Option<Tensor<B, D>>,
    /// A [r, in].
    pub a: Tensor<B, 2>,
    /// B [out, r].
    pub b: Tensor<B, 2>,
    pub scale: f64,
}

impl<B: Backend, const D: usize> LoraTerm<B, D> {
    /// s·(x'·Aᵀ)·Bᵀ as burn ops, on the layer's input x.
    pub fn apply(self, x: Tensor<B, D>) -> Tensor<B, D> {
        let h = dense(self.input.unwrap_or(x), self.a.transpose(), None);
        // The scale goes on B [out, r], not on the [.., out] output.
        dense(h, self.b.mul_scalar(self.scale).transpose(), None)
    }
}

/// A dense layer in transformers' layout: y = x·Wᵀ + b + s·(x'·Aᵀ)·Bᵀ.
///
/// On the CPU backend one node: gemm accumulates the adapter's product into
/// the base output and its input gradient into the base's, and forms ∂W in
/// W's own layout ([`linear`](self::linear) module). Elsewhere: [`dense`]
/// products and an add.
///
/// Shapes: x, x' [.., in], weight [out, in], bias [out], A [r, in], B [out, r]
/// → [.., out].
///
/// Panics if the shapes do not fit together so.
pub fn linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<LoraTerm<B, D>>,
) -> Tensor<B, D> {
    linear_with(x, weight, bias, lora, LinearOutput::Form)
}

/// Where [`linear_as`]'s output comes from.
pub enum LinearOutput<B: Backend, const D: usize> {
    /// Formed, as [`linear`].
    Form,
    /// Zeros: for an output whose value is never read, only differentiated
    /// through (the last product of a layer recomputed for activation
    /// checkpointing). The base product x·Wᵀ is not formed.
    Skip,
    /// This tensor: the same layer's output on the same input, kept from an
    /// earlier pass (a recomputed layer whose checkpointed forward pass kept
    /// its projections' outputs). The base product is not formed; the
    /// adapter's small product x'·Aᵀ, which the backward pass needs, is.
    Given(Tensor<B, D>),
}

/// [`linear`] with its output as `out` says, its backward pass always
/// [`linear`]'s. On `Autodiff<Flex>` in f32 the CPU kernels' node; on other
/// autodiff backends [`given::linear`]'s, once activation checkpointing
/// enabled it for the backend; elsewhere the same as [`linear`] (the product
/// is formed, a given value unused).
pub fn linear_as<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<LoraTerm<B, D>>,
    out: LinearOutput<B, D>,
) -> Tensor<B, D> {
    if let LinearOutput::Given(value) = &out {
        let mut want = x.dims();
        want[D - 1] = weight.dims()[0];
        assert_eq!(
            value.dims(),
            want,
            "linear: the given output's shape differs from the layer's"
        );
    }
    linear_with(x, weight, bias, lora, out)
}

/// Whether [`linear_as`] takes a [`LinearOutput::Given`] output for tensors
/// of `dtype` on backend `B` instead of forming the product (the CPU kernels'
/// tracked path, or [`given::linear`] where enabled): what selective
/// activation checkpointing needs to save time.
pub fn linear_takes_given<B: Backend>(dtype: DType) -> bool {
    path::<B>(&[dtype]) == Some(Path::Tracked) || given::enabled::<B>()
}

/// [`linear_as`], unchecked.
fn linear_with<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<LoraTerm<B, D>>,
    out: LinearOutput<B, D>,
) -> Tensor<B, D> {
    let ([d_out, d_in], x_in) = (weight.dims(), x.dims()[D - 1]);
    assert_eq!(
        x_in, d_in,
        "linear: the input's last dimension is {x_in}, the weight [out, in] is [{d_out}, {d_in}]"
    );
    if let Some(b) = &bias {
        assert_eq!(b.dims(), [d_out], "linear: bias for {d_out} outputs");
    }
    if let Some(l) = &lora {
        let ([r, a_in], [b_out, b_r]) = (l.a.dims(), l.b.dims());
        assert!(
            a_in == d_in && b_out == d_out && b_r == r,
            "linear: LoRA A [{r}, {a_in}] and B [{b_out}, {b_r}] do not fit a [{d_out}, {d_in}] layer"
        );
        if let Some(i) = &l.input {
            assert_eq!(
                i.dims(),
                x.dims(),
                "linear: LoRA input differs from x in shape"
            );
        }
    }
    let mut dtypes = vec![x.dtype(), weight.dtype()];
    dtypes.extend(bias.as_ref().map(|b| b.dtype()));
    if let Some(l) = &lora {
        dtypes.extend([l.a.dtype(), l.b.dtype()]);
        dtypes.extend(l.input.as_ref().map(|i| i.dtype()));
    }
    let Some(path) = record(Op::Linear, path::<B>(&dtypes)) else {
        return composed_linear(x, weight, bias, lora, out);
    };
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    dims[D - 1] = weight.dims()[0];
    let flat = |t: Tensor<B, D>| t.reshape([rows, d_in]);
    let y: Tensor<B, 2> = match path {
        Path::Plain => tensor::<B, FlexTensor, 2>(linear::linear_plain(
            primitive::<B, FlexTensor, 2>(flat(x)),
            primitive::<B, FlexTensor, 2>(weight),
            bias.map(primitive::<B, FlexTensor, 1>),
            lora.map(|l| adapter::<B, FlexTensor, D>(l, flat)),
        )),
        Path::Tracked => {
            let out = match out {
                LinearOutput::Form => linear::Output::Form,
                LinearOutput::Skip => linear::Output::Skip,
                LinearOutput::Given(value) => {
                    let value = value.reshape([rows, dims[D - 1]]);
                    let value = primitive::<B, AdTensor, 2>(value).primitive;
                    linear::Output::Given(tracked::contiguous(value))
                }
            };
            tensor::<B, AdTensor, 2>(linear::linear(
                primitive::<B, AdTensor, 2>(flat(x)),
                primitive::<B, AdTensor, 2>(weight),
                bias.map(primitive::<B, AdTensor, 1>),
                lora.map(|l| adapter::<B, AdTensor, D>(l, flat)),
                out,
            ))
        }
    };
    y.reshape(dims)
}

/// [`linear_with`] from burn's ops. A given or skipped output becomes
/// [`given::linear`]'s node where it is enabled for `B`, the adapter's term
/// then entering as t − detach(t): zero in value, its gradients in the graph.
fn composed_linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    lora: Option<LoraTerm<B, D>>,
    out: LinearOutput<B, D>,
) -> Tensor<B, D> {
    let value = match out {
        LinearOutput::Form => None,
        LinearOutput::Skip if given::enabled::<B>() => {
            let mut dims = x.dims();
            dims[D - 1] = weight.dims()[0];
            Some(Tensor::zeros(dims, (&x.device(), x.dtype())))
        }
        LinearOutput::Skip => None,
        LinearOutput::Given(value) => Some(value),
    };
    let taken = value.and_then(|value| {
        let (mut dims, d_in) = (value.dims(), weight.dims()[1]);
        let rows = dims[..D - 1].iter().product::<usize>();
        let d_out = dims[D - 1];
        let y = given::linear(
            x.clone().reshape([rows, d_in]),
            weight.clone(),
            bias.clone(),
            value.reshape([rows, d_out]),
        )?;
        dims[D - 1] = d_out;
        Some(y.reshape(dims))
    });
    match (taken, lora) {
        (Some(y), None) => y,
        (Some(y), Some(l)) => {
            let term = l.apply(x);
            y + (term.clone() - term.detach())
        }
        (None, lora) => {
            let base = dense(x.clone(), weight.transpose(), bias);
            match lora {
                None => base,
                Some(l) => base + l.apply(x),
            }
        }
    }
}

/// A LoRA term's tensors as the primitives `T` of the fused layer, its
/// input flattened to [N, in] by `flat`.
fn adapter<B: Backend, T: 'static, const D: usize>(
    term: LoraTerm<B, D>,
    flat: impl Fn(Tensor<B, D>) -> Tensor<B, 2>,
) -> linear::Adapter<T> {
    linear::Adapter {
        input: term.input.map(|i| primitive::<B, T, 2>(flat(i))),
        a: primitive::<B, T, 2>(term.a),
        b: primitive::<B, T, 2>(term.b),
        scale: term.scale as f32,
    }
}

/// RMSNorm: x / √(mean(x²) + ε) ⊙ w over the last dimension, in f32.
///
/// Shapes: x [B, T, C], weight [C] → [B, T, C].
///
/// Panics if the weight's length is not the last dimension of x.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let ([.., width], [len]) = (x.dims(), weight.dims());
    assert_eq!(
        len, width,
        "rms_norm: the weight has {len} elements, the input's last dimension is {width}"
    );
    let path = sized(
        path::<B>(&[x.dtype(), weight.dtype()]),
        x.shape().num_elements(),
    );
    match record(Op::RmsNorm, path) {
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

/// In f32 whatever the input's dtype, back to it before the weight
/// multiplies (transformers' `LlamaRMSNorm`).
fn rms_norm_ops<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let variance = x.clone().powi_scalar(2).mean_dim(2);
    let x = to_dtype(x * (variance + eps).sqrt().recip(), dtype);
    x * weight.unsqueeze::<3>()
}

/// `x.permute(axes)` in its own contiguous buffer (its gradient too): the
/// copy a later reshape or element-wise op would make anyway, done as one
/// parallel row copy instead of burn-flex's scalar strided walk.
pub fn permute<B: Backend, const D: usize>(x: Tensor<B, D>, axes: [usize; D]) -> Tensor<B, D> {
    let path = sized(path::<B>(&[x.dtype()]), x.shape().num_elements());
    match record(Op::Permute, path) {
        Some(Path::Plain) => tensor::<B, FlexTensor, D>(tracked::permute_plain(
            primitive::<B, FlexTensor, D>(x),
            &axes,
        )),
        Some(Path::Tracked) => {
            tensor::<B, AdTensor, D>(tracked::permute(primitive::<B, AdTensor, D>(x), &axes))
        }
        None => x.permute(axes),
    }
}

/// Rotary position embedding in transformers' rotate-half layout:
/// x·cos + rotate_half(x)·sin with rotate_half(x) = (−x₂, x₁) over the
/// halves of the last dimension. cos and sin are constants (no gradient).
/// See: Su et al. 2021, "RoFormer", eq. 34; transformers `apply_rotary_pos_emb`.
///
/// Shapes: x, cos, sin [B, T, N, D] → [B, T, N, D].
///
/// Panics if cos or sin differ from x in shape, or D is odd.
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let shape = x.dims();
    assert!(
        cos.dims() == shape && sin.dims() == shape && shape[3].is_multiple_of(2),
        "rope: x {shape:?} needs cos and sin of its shape (got {:?}, {:?}) and an even last dimension",
        cos.dims(),
        sin.dims()
    );
    let path = sized(
        path::<B>(&[x.dtype(), cos.dtype(), sin.dtype()]),
        x.shape().num_elements(),
    );
    match record(Op::Rope, path) {
        Some(Path::Plain) => tensor::<B, FlexTensor, 4>(tracked::rope_plain(
            primitive::<B, FlexTensor, 4>(x),
            primitive::<B, FlexTensor, 4>(cos),
            primitive::<B, FlexTensor, 4>(sin),
        )),
        Some(Path::Tracked) => tensor::<B, AdTensor, 4>(tracked::rope(
            primitive::<B, AdTensor, 4>(x),
            primitive::<B, AdTensor, 4>(cos),
            primitive::<B, AdTensor, 4>(sin),
        )),
        None => rope_ops(x, cos, sin),
    }
}

fn rope_ops<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let rotated = Tensor::cat(
        vec![
            x.clone().narrow(3, half, half).neg(),
            x.clone().narrow(3, 0, half),
        ],
        3,
    );
    x * cos + rotated * sin
}

/// The gated MLP's product (Shazeer 2020): act(a) ⊙ b, SwiGLU (silu) or
/// GeGLU (tanh-approximated GELU).
///
/// Shapes: a, b [B, T, F] → [B, T, F].
///
/// Panics if a and b differ in shape.
pub fn gated<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>, act: Activation) -> Tensor<B, 3> {
    assert_eq!(
        a.dims(),
        b.dims(),
        "gated: gate and up projections differ in shape"
    );
    let path = sized(path::<B>(&[a.dtype(), b.dtype()]), a.shape().num_elements());
    match record(Op::Glu, path) {
        Some(Path::Plain) => tensor::<B, FlexTensor, 3>(tracked::glu_plain(
            primitive::<B, FlexTensor, 3>(a),
            primitive::<B, FlexTensor, 3>(b),
            act,
        )),
        Some(Path::Tracked) => tensor::<B, AdTensor, 3>(tracked::glu(
            primitive::<B, AdTensor, 3>(a),
            primitive::<B, AdTensor, 3>(b),
            act,
        )),
        None => gated_ops(a, b, act),
    }
}

fn gated_ops<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>, act: Activation) -> Tensor<B, 3> {
    let gate = match act {
        Activation::Silu => silu(a),
        // ½·a·(1 + tanh(√(2/π)·(a + 0.044715·a³))), as PyTorch's
        // gelu(approximate="tanh").
        Activation::GeluTanh => {
            let inner = (a.clone() + a.clone().powi_scalar(3).mul_scalar(0.044715))
                .mul_scalar((2.0 / std::f64::consts::PI).sqrt());
            a.mul_scalar(0.5) * (inner.tanh() + 1.0)
        }
    };
    gate * b
}

/// softmax(scores + mask) over the last dimension. The mask is additive and
/// constant (no gradient flows to it); each of its dimensions either equals
/// the scores' or is 1 (broadcast).
///
/// Shapes: scores [B, K, G, T, S], mask [B | 1, K | 1, G | 1, T | 1, S] →
/// [B, K, G, T, S].
///
/// Panics if the mask does not broadcast so: the kernel maps each row of
/// scores to a row of the mask by that rule.
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 5> {
    let (s, m) = (scores.dims(), mask.dims());
    assert!(
        m[4] == s[4] && (0..4).all(|i| m[i] == s[i] || m[i] == 1),
        "masked_softmax: mask {m:?} does not broadcast to scores {s:?} (each dimension equal or 1, the last equal)"
    );
    let path = sized(
        path::<B>(&[scores.dtype(), mask.dtype()]),
        scores.shape().num_elements(),
    );
    match record(Op::MaskedSoftmax, path) {
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

/// In f32 whatever the scores' dtype, the probabilities back in it
/// (transformers' eager attention).
fn masked_softmax_ops<B: Backend>(scores: Tensor<B, 5>, mask: Tensor<B, 5>) -> Tensor<B, 5> {
    let dtype = scores.dtype();
    to_dtype(softmax(to_f32(scores) + to_f32(mask), 4), dtype)
}

/// [`log_softmax_rows`]' results.
#[derive(Debug)]
pub struct LogSoftmaxRows<B: Backend> {
    /// log p(target) = z_y − logsumexp(z). [n]
    pub logp: Tensor<B, 1>,
    /// correct (argmax = target), entropy and mean logit, when asked for. [n] each
    pub stats: Option<[Tensor<B, 1>; 3]>,
    /// c = e_y − softmax(z), when asked for. [n, V]
    pub coeff: Option<Tensor<B, 2>>,
}

/// The LM head's per-row log-softmax of the targets, with statistics and the
/// gradient coefficient (see [`crate::logprobs`]), over logits that take no
/// part in the autodiff graph: one pass per row on the CPU backend instead of
/// ten burn ops over [n, V]. Gives the logits back on other backends (or for
/// a target outside the vocabulary), where the caller composes burn ops.
///
/// Shapes: logits [n, V], targets [n] → [n] (and [n, V]).
pub fn log_softmax_rows<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &Tensor<B, 1, Int>,
    stats: bool,
    coeff: bool,
) -> Result<LogSoftmaxRows<B>, Tensor<B, 2>> {
    let Some(path) = path::<B>(&[logits.dtype()]) else {
        record(Op::LogSoftmaxRows, None);
        return Err(logits);
    };
    let [n, width] = logits.dims();
    let ids: Vec<i64> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec()
        .unwrap_or_default();
    if ids.len() != n || ids.iter().any(|&y| y < 0 || y as usize >= width) {
        record(Op::LogSoftmaxRows, None);
        return Err(logits);
    }
    record(Op::LogSoftmaxRows, Some(path));
    let ids: Vec<usize> = ids.into_iter().map(|y| y as usize).collect();
    let flex = match path {
        Path::Plain => primitive::<B, FlexTensor, 2>(logits),
        Path::Tracked => primitive::<B, AdTensor, 2>(logits).primitive,
    };
    let mut flex = tracked::contiguous(flex);
    let rows = cpu::log_softmax_rows(flex.storage_mut::<f32>(), width, &ids, stats, coeff);
    fn lift<B: Backend, const D: usize>(path: &Path, t: FlexTensor) -> Tensor<B, D> {
        match path {
            Path::Plain => tensor::<B, FlexTensor, D>(t),
            Path::Tracked => {
                tensor::<B, AdTensor, D>(<Autodiff<Flex> as AutodiffBackend>::from_inner(t))
            }
        }
    }
    let column = |v: Vec<f32>| lift::<B, 1>(&path, tracked::flex(v, Shape::new([n])));
    Ok(LogSoftmaxRows {
        logp: column(rows.logp),
        stats: stats.then(|| {
            [
                column(rows.correct),
                column(rows.entropy),
                column(rows.mean_logit),
            ]
        }),
        coeff: coeff.then(|| lift::<B, 2>(&path, flex)),
    })
}

/// The LM head's gradient term s_i = Σₖ h_ik (c·W)_ik, with the
/// coefficients c read as a constant: ∂s/∂h = c·W, ∂s/∂W = cᵀ·h
/// ([`crate::logprobs`] adds s − stop_grad(s) to the log-probs). On
/// `Autodiff<Flex>` one node whose two products run on
/// [`gemm::matmul`] (BLAS when loaded) and that forms W's gradient only when
/// W is trained; elsewhere (and in bf16) burn's ops, products in W's dtype
/// and the sum in f32.
///
/// Shapes: hidden [n, C], coeff [n, V], weight [V, C] → [n].
pub fn head_term<B: Backend>(
    hidden: Tensor<B, 2>,
    coeff: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let ([n, width], [cn, vocab], [wv, wc]) = (hidden.dims(), coeff.dims(), weight.dims());
    assert!(
        cn == n && wv == vocab && wc == width,
        "head_term: hidden [{n}, {width}], coeff [{cn}, {vocab}] and weight [{wv}, {wc}] do not fit"
    );
    let dtypes = [hidden.dtype(), coeff.dtype(), weight.dtype()];
    match record(Op::HeadTerm, path::<B>(&dtypes)) {
        Some(Path::Tracked) => tensor::<B, AdTensor, 1>(head::head_term(
            primitive::<B, AdTensor, 2>(hidden),
            primitive::<B, AdTensor, 2>(coeff.detach()),
            primitive::<B, AdTensor, 2>(weight),
        )),
        _ => {
            let coeff = to_dtype(coeff.detach(), weight.dtype());
            to_f32(hidden * coeff.matmul(weight))
                .sum_dim(1)
                .squeeze_dim::<1>(1)
        }
    }
}

/// Elements per task of [`update_in_place`].
const UPDATE_CHUNK: usize = 1 << 16;

/// An element-wise in-place update of equally long 1-D f32 tensors on the
/// CPU backend (an optimizer step): `f` runs over aligned chunks of all of
/// them, chunks in parallel, and the tensors come back updated. A tensor
/// whose buffer is shared is copied first. On other backends the tensors
/// come back untouched as `Err`, for the caller to use burn's ops.
pub fn update_in_place<B: Backend, const N: usize>(
    tensors: [Tensor<B, 1>; N],
    f: impl Fn([&mut [f32]; N]) + Sync,
) -> Result<[Tensor<B, 1>; N], [Tensor<B, 1>; N]> {
    let dtypes = tensors.each_ref().map(|t| t.dtype());
    let len = tensors[0].dims()[0];
    if !matches!(path::<B>(&dtypes), Some(Path::Plain))
        || tensors.iter().any(|t| t.dims()[0] != len)
    {
        record(Op::UpdateInPlace, None);
        return Err(tensors);
    }
    record(Op::UpdateInPlace, Some(Path::Plain));
    let mut flex = tensors.map(|t| tracked::contiguous(primitive::<B, FlexTensor, 1>(t)));
    let mut chunks: Vec<Vec<&mut [f32]>> = flex
        .iter_mut()
        .map(|t| {
            t.storage_mut::<f32>()[..len]
                .chunks_mut(UPDATE_CHUNK)
                .rev()
                .collect()
        })
        .collect();
    let tasks: Vec<[&mut [f32]; N]> = (0..len.div_ceil(UPDATE_CHUNK))
        .map(|_| {
            let parts: Vec<&mut [f32]> = chunks
                .iter_mut()
                .map(|c| c.pop().expect("same length"))
                .collect();
            match parts.try_into() {
                Ok(parts) => parts,
                Err(_) => unreachable!("one chunk per tensor"),
            }
        })
        .collect();
    tasks.into_par_iter().for_each(&f);
    Ok(flex.map(tensor::<B, FlexTensor, 1>))
}

#[cfg(test)]
mod tests;
