//! Each fused op against its composition of burn ops on the same backend:
//! values, and gradients of Σ y ⊙ R for a random R; which path a model's
//! training step and inference pass really take; the shape checks.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use super::*;
use crate::config::{LlamaConfig, ModelType};
use crate::logprobs::sequence_logprobs;
use crate::lora::{LoraConfig, TargetModules, attach};
use crate::mask::attention_mask;
use crate::transformer::{ForwardInput, LlamaForCausalLM};

type AD = Autodiff<Flex>;

/// N(0, 1) values from a host RNG seeded here, not burn's process-global
/// one (which a test running in parallel may draw from in between).
fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<AD, D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).expect("σ > 0");
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn values<const D: usize>(t: &Tensor<AD, D>) -> Vec<f32> {
    t.clone().into_data().to_vec().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: fused {g} vs ops {w}"
        );
    }
}

/// Value and input gradients of `op` on fresh leaves copied from `inputs`.
fn run<const D: usize>(
    inputs: Vec<Tensor<AD, D>>,
    weight: Option<&Tensor<AD, 1>>,
    op: impl Fn(&[Tensor<AD, D>], Option<Tensor<AD, 1>>) -> Tensor<AD, D>,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let leaves: Vec<_> = inputs
        .iter()
        .map(|t| t.clone().detach().require_grad())
        .collect();
    let w = weight.map(|w| w.clone().detach().require_grad());
    let y = op(&leaves, w.clone());
    let r = random(y.dims(), 99);
    let grads = (y.clone() * r).sum().backward();
    let mut g: Vec<Vec<f32>> = leaves
        .iter()
        .map(|l| l.grad(&grads).unwrap().into_data().to_vec().unwrap())
        .collect();
    if let Some(w) = w {
        g.push(w.grad(&grads).unwrap().into_data().to_vec().unwrap());
    }
    (values(&y), g)
}

#[test]
fn rms_norm_matches_ops_in_value_and_gradient() {
    let x = random([2, 5, 48], 1);
    let w = random([48], 2);
    let fused = run(vec![x.clone()], Some(&w), |x, w| {
        rms_norm(x[0].clone(), w.unwrap(), 1e-5)
    });
    let ops = run(vec![x], Some(&w), |x, w| {
        rms_norm_ops(x[0].clone(), w.unwrap(), 1e-5)
    });
    assert_close(&fused.0, &ops.0, 1e-5, "y");
    assert_close(&fused.1[0], &ops.1[0], 1e-4, "dx");
    assert_close(&fused.1[1], &ops.1[1], 1e-4, "dw");
}

#[test]
fn gated_activations_match_ops_in_value_and_gradient() {
    for act in [Activation::Silu, Activation::GeluTanh] {
        let a = random([3, 4, 40], 3).mul_scalar(4.0);
        let b = random([3, 4, 40], 4);
        let fused = run(vec![a.clone(), b.clone()], None, |t, _| {
            gated(t[0].clone(), t[1].clone(), act)
        });
        let ops = run(vec![a, b], None, |t, _| {
            gated_ops(t[0].clone(), t[1].clone(), act)
        });
        assert_close(&fused.0, &ops.0, 1e-5, "h");
        assert_close(&fused.1[0], &ops.1[0], 1e-5, "da");
        assert_close(&fused.1[1], &ops.1[1], 1e-5, "db");
    }
}

#[test]
fn masked_softmax_matches_ops_with_a_broadcast_mask() {
    let (b, k, g, t) = (2, 3, 2, 5);
    let scores = random([b, k, g, t, t], 5).mul_scalar(3.0);
    // Causal, plus the first key of batch row 1 padded out.
    let mut m = vec![0.0f32; b * t * t];
    for bi in 0..b {
        for q in 0..t {
            for s in 0..t {
                if s > q || (bi == 1 && s == 0 && q > 0) {
                    m[(bi * t + q) * t + s] = f32::MIN;
                }
            }
        }
    }
    let mask = Tensor::<AD, 5>::from_data(TensorData::new(m, [b, 1, 1, t, t]), &Default::default());
    let fused = run(vec![scores.clone()], None, |s, _| {
        masked_softmax(s[0].clone(), mask.clone())
    });
    let ops = run(vec![scores.clone()], None, |s, _| {
        masked_softmax_ops(s[0].clone(), mask.clone())
    });
    assert_close(&fused.0, &ops.0, 1e-6, "p");
    assert_close(&fused.1[0], &ops.1[0], 1e-5, "ds");
    // The same mask spread to the scores' shape gives the same result.
    let spread = Tensor::zeros([b, k, g, t, t], &Default::default()) + mask;
    let full = run(vec![scores], None, |s, _| {
        masked_softmax(s[0].clone(), spread.clone())
    });
    assert_close(&full.0, &fused.0, 0.0, "p with a full mask");
}

#[test]
fn inference_backend_takes_the_same_kernels() {
    // Above `SMALL` elements (below it inference takes burn's ops).
    let x = random([2, 96, 96], 6);
    let w = random([96], 7);
    take_tally();
    let tracked = values(&rms_norm(x.clone(), w.clone(), 1e-6));
    let plain: Vec<f32> = rms_norm(x.inner(), w.clone().inner(), 1e-6)
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(tracked, plain);
    let small = random([1, 1, 96], 8);
    let tracked = values(&rms_norm(small.clone(), w.clone(), 1e-6));
    let plain: Vec<f32> = rms_norm(small.inner(), w.inner(), 1e-6)
        .into_data()
        .to_vec()
        .unwrap();
    assert_close(&plain, &tracked, 1e-6, "small");
    // Two tracked calls, one large plain call; the small one took burn's ops.
    let tally = take_tally();
    let counts =
        [Some(Path::Tracked), Some(Path::Plain), None].map(|path| tally.count(Op::RmsNorm, path));
    assert_eq!(counts, [2, 1, 1]);
}

/// A tiny model with LoRA on the attention projections (the others plain).
fn tiny_model<B: Backend>() -> LlamaForCausalLM<B> {
    let config = LlamaConfig::tiny(ModelType::Llama);
    let device = Default::default();
    let lora = LoraConfig {
        r: 2,
        target_modules: TargetModules::parse("q_proj,v_proj").expect("valid targets"),
        ..Default::default()
    };
    attach(
        LlamaForCausalLM::<B>::init(&config, &device),
        &lora,
        5,
        &device,
    )
    .expect("valid LoRA config")
}

/// `rows` full rows of `len` tokens, causal.
fn model_input<B: Backend>(rows: usize, len: usize) -> ForwardInput<B> {
    let device = Default::default();
    let ids: Vec<i64> = (0..rows * len).map(|i| (i * 7 % 90 + 3) as i64).collect();
    let positions: Vec<i64> = (0..rows * len).map(|i| (i % len) as i64).collect();
    ForwardInput {
        input_ids: Tensor::from_data(TensorData::new(ids, [rows, len]), &device),
        positions: Tensor::from_data(TensorData::new(positions, [rows, len]), &device),
        mask: attention_mask(&vec![vec![true; len]; rows], len, None, &device),
    }
}

/// The ops a decoder pass with its LM head goes through.
const MODEL_OPS: [Op; 7] = [
    Op::Linear,
    Op::RmsNorm,
    Op::Permute,
    Op::Rope,
    Op::Glu,
    Op::MaskedSoftmax,
    Op::LogSoftmaxRows,
];

/// Every op of the model ran its kernel on `path` and none fell back.
fn assert_fused(tally: &Tally, path: Path) {
    for op in MODEL_OPS {
        let (fused, ops) = (tally.count(op, Some(path)), tally.count(op, None));
        assert!(
            fused > 0 && ops == 0,
            "{op:?}: {fused} calls on the {path:?} kernel, {ops} on burn's ops"
        );
    }
}

/// A training step's forward and backward on `Autodiff<Flex>` runs every
/// op as its tracked kernel: a fall-back to the composed ops (a type that
/// no longer matches, a dtype check gone wrong) fails here, not only as a
/// slower benchmark.
#[test]
fn training_on_autodiff_flex_takes_every_fused_kernel() {
    assert_eq!(path_for::<AD>(), Some(Path::Tracked));
    let model = tiny_model::<AD>();
    take_tally();
    let logp = sequence_logprobs(&model, model_input(2, 9));
    let grads = logp.sum().backward();
    let tally = take_tally();
    assert_fused(&tally, Path::Tracked);
    assert!(
        tally.count(Op::HeadTerm, Some(Path::Tracked)) > 0 && tally.count(Op::HeadTerm, None) == 0
    );
    let a = model.model.layers[0]
        .self_attn
        .q_proj
        .lora
        .as_ref()
        .expect("attached");
    assert!(
        a.lora_a.val().grad(&grads).is_some(),
        "the adapter is trained"
    );
}

/// Inference on `Flex` over tensors above `SMALL` runs every op as its
/// plain kernel; the optimizer's update does too.
#[test]
fn inference_on_flex_takes_every_fused_kernel() {
    assert_eq!(path_for::<Flex>(), Some(Path::Plain));
    // [4, 256, 32] hidden states, [4, 256, 2, 8] keys: each ≥ `SMALL`.
    let model = tiny_model::<Flex>();
    take_tally();
    sequence_logprobs(&model, model_input(4, 256));
    assert_fused(&take_tally(), Path::Plain);
    let t = || Tensor::<Flex, 1>::zeros([8], &Default::default());
    assert!(update_in_place([t(), t()], |_| {}).is_ok());
    assert_eq!(take_tally().count(Op::UpdateInPlace, Some(Path::Plain)), 1);
}

#[test]
#[should_panic(expected = "rms_norm: the weight has 47 elements, the input's last dimension is 48")]
fn rms_norm_refuses_a_weight_of_another_width() {
    rms_norm(random([2, 5, 48], 1), random([47], 2), 1e-5);
}

#[test]
#[should_panic(
    expected = "masked_softmax: mask [2, 1, 1, 5, 5] does not broadcast to scores [3, 2, 2, 5, 5]"
)]
fn masked_softmax_refuses_a_mask_that_does_not_broadcast() {
    masked_softmax(random([3, 2, 2, 5, 5], 1), random([2, 1, 1, 5, 5], 2));
}

#[test]
#[should_panic(expected = "rope: x [1, 3, 2, 8] needs cos and sin of its shape")]
fn rope_refuses_angles_of_another_shape() {
    let x = random([1, 3, 2, 8], 1);
    rope(x.clone(), random([1, 3, 1, 8], 2), x);
}

#[test]
fn log_softmax_rows_match_ops_with_statistics_and_coefficient() {
    use burn::tensor::Int;
    use burn::tensor::activation::{log_softmax, softmax};
    let (n, v) = (6, 53);
    let logits = random([n, v], 8).mul_scalar(3.0).detach();
    let ids: Vec<i64> = vec![0, 52, 7, 7, 30, 1];
    let targets =
        Tensor::<AD, 1, Int>::from_data(TensorData::new(ids.clone(), [n]), &Default::default());
    let rows = log_softmax_rows(logits.clone(), &targets, true, true).expect("CPU backend");
    let target = targets.clone().unsqueeze_dim::<2>(1);
    let logp = log_softmax(logits.clone(), 1)
        .gather(1, target.clone())
        .squeeze_dim::<1>(1);
    assert_close(&values(&rows.logp), &values(&logp), 1e-6, "logp");
    let probs = softmax(logits.clone(), 1);
    let [correct, entropy, mean] = rows.stats.expect("asked for");
    let want_correct = logits
        .clone()
        .argmax(1)
        .equal(target.clone())
        .float()
        .squeeze_dim::<1>(1);
    assert_close(&values(&correct), &values(&want_correct), 0.0, "correct");
    let want_entropy = (probs.clone() * log_softmax(logits.clone(), 1))
        .sum_dim(1)
        .neg()
        .squeeze_dim::<1>(1);
    assert_close(&values(&entropy), &values(&want_entropy), 1e-5, "entropy");
    assert_close(
        &values(&mean),
        &values(&logits.clone().mean_dim(1).squeeze_dim::<1>(1)),
        1e-6,
        "mean",
    );
    let one_hot = Tensor::<AD, 2>::zeros([n, v], &Default::default()).scatter(
        1,
        target,
        Tensor::ones([n, 1], &Default::default()),
        burn::tensor::IndexingUpdateOp::Add,
    );
    assert_close(
        &values(&rows.coeff.expect("asked for")),
        &values(&(one_hot - probs)),
        1e-6,
        "coeff",
    );
    // A target outside the vocabulary hands the logits back.
    let bad = Tensor::<AD, 1, Int>::from_data(
        TensorData::new(vec![0i64, 53, 0, 0, 0, 0], [n]),
        &Default::default(),
    );
    assert!(log_softmax_rows(logits, &bad, false, false).is_err());
}

/// How [`linear_case`] forms the layer.
#[derive(Clone, Copy, PartialEq)]
enum LinearPath {
    Fused,
    /// [`LinearOutput::Skip`]: zeros out, [`linear`]'s gradients.
    GradientOnly,
    /// [`LinearOutput::Given`] with a stand-in value: that value out,
    /// [`linear`]'s gradients, no base product formed.
    Given,
    Ops,
}

/// Value and gradients (x, W, bias, A, B, and the adapter input when given)
/// of one linear layer, fused or composed, its tensors in `dtype` (f32: the
/// CPU kernels; any other: burn's ops, and [`given::linear`]'s node for a
/// given or skipped output).
fn linear_case(path: LinearPath, adapter_input: bool, dtype: DType) -> Vec<Vec<f32>> {
    let (n, d_in, d_out, r) = (7, 12, 9, 3);
    let typed = |t: Tensor<AD, 3>| t.cast(dtype).detach();
    let leaf = |shape: [usize; 2], seed| random(shape, seed).cast(dtype).detach().require_grad();
    let x = typed(random([1, n, d_in], 10)).require_grad();
    let w = leaf([d_out, d_in], 11);
    let bias = random([d_out], 12).cast(dtype).detach().require_grad();
    let a = leaf([r, d_in], 13);
    let b = leaf([d_out, r], 14);
    let input = adapter_input.then(|| typed(random([1, n, d_in], 15)).require_grad());
    let term = LoraTerm {
        input: input.clone(),
        a: a.clone(),
        b: b.clone(),
        scale: 0.7,
    };
    let not_formed = || (products_formed(), given::products_taken_as_given());
    let y = match path {
        LinearPath::Fused => linear(x.clone(), w.clone(), Some(bias.clone()), Some(term)),
        LinearPath::GradientOnly => linear_as(
            x.clone(),
            w.clone(),
            Some(bias.clone()),
            Some(term),
            LinearOutput::Skip,
        ),
        LinearPath::Given => {
            let before = not_formed();
            let given = typed(random([1, n, d_out], 17));
            let y = linear_as(
                x.clone(),
                w.clone(),
                Some(bias.clone()),
                Some(term),
                LinearOutput::Given(given),
            );
            let after = not_formed();
            assert_eq!(after.0, before.0, "no base product formed");
            let taken = (dtype != DType::F32) as u64;
            assert_eq!(after.1, before.1 + taken, "taken as given");
            y
        }
        LinearPath::Ops => {
            dense(x.clone(), w.clone().transpose(), Some(bias.clone())) + term.apply(x.clone())
        }
    };
    let r = typed(random([1, n, d_out], 16));
    let grads = (y.clone() * r).sum().backward();
    let read = |t: Tensor<Flex, 2>| t.cast(DType::F32).into_data().to_vec::<f32>().unwrap();
    let g2 = |t: &Tensor<AD, 2>| read(t.grad(&grads).unwrap());
    let g3 = |t: &Tensor<AD, 3>| read(t.grad(&grads).unwrap().reshape([n, d_in]));
    let mut out = vec![
        values(&y.clone().cast(DType::F32)),
        g3(&x),
        g2(&w),
        read(bias.grad(&grads).unwrap().unsqueeze()),
        g2(&a),
        g2(&b),
    ];
    if let Some(i) = input {
        out.push(g3(&i));
    }
    out
}

#[test]
fn linear_matches_ops_in_value_and_every_gradient() {
    for adapter_input in [false, true] {
        let fused = linear_case(LinearPath::Fused, adapter_input, DType::F32);
        let ops = linear_case(LinearPath::Ops, adapter_input, DType::F32);
        let names = ["y", "dx", "dW", "db", "dA", "dB", "dx'"];
        for ((f, o), name) in fused.iter().zip(&ops).zip(names) {
            assert_close(f, o, 1e-5, name);
        }
        assert_eq!(fused.len(), ops.len());
        // Gradient-only: no output value, the very same gradients.
        let only = linear_case(LinearPath::GradientOnly, adapter_input, DType::F32);
        assert!(only[0].iter().all(|&y| y == 0.0), "no value is formed");
        assert_eq!(only[1..], fused[1..]);
        // Given: that value, the very same gradients.
        let given = linear_case(LinearPath::Given, adapter_input, DType::F32);
        assert_eq!(given[0], values(&random([1, 7, 9], 17)));
        assert_eq!(given[1..], fused[1..]);
    }
}

/// Off the CPU kernels (here: f64 tensors, which burn's ops compute), a
/// given or skipped output is [`given::linear`]'s node once enabled: that
/// value, and bit for bit the composed layer's gradients.
#[test]
fn composed_given_and_skipped_outputs_keep_the_composed_gradients() {
    given::enable::<AD>();
    for adapter_input in [false, true] {
        let ops = linear_case(LinearPath::Ops, adapter_input, DType::F64);
        let fused = linear_case(LinearPath::Fused, adapter_input, DType::F64);
        assert_eq!(fused, ops, "f64 takes burn's ops");
        let before = given::products_taken_as_given();
        let only = linear_case(LinearPath::GradientOnly, adapter_input, DType::F64);
        assert_eq!(given::products_taken_as_given(), before + 1);
        assert!(only[0].iter().all(|&y| y == 0.0), "no value is formed");
        assert_eq!(only[1..], ops[1..]);
        let given = linear_case(LinearPath::Given, adapter_input, DType::F64);
        let want = random([1, 7, 9], 17).cast(DType::F64).cast(DType::F32);
        assert_eq!(given[0], values(&want));
        assert_eq!(given[1..], ops[1..]);
    }
}

/// The LM head's gradient term against burn's ops: value, ∂h and ∂W, and no
/// ∂W work for a frozen head.
#[test]
fn head_term_matches_ops_in_value_and_gradient() {
    let (n, c, v) = (5, 12, 37);
    let coeff = random([n, v], 20).detach();
    let ops = |h: Tensor<AD, 2>, w: Tensor<AD, 2>| {
        (h * coeff.clone().matmul(w)).sum_dim(1).squeeze_dim::<1>(1)
    };
    for train_head in [true, false] {
        let h = random([n, c], 21).detach().require_grad();
        let w = random([v, c], 22).detach();
        let w = if train_head { w.require_grad() } else { w };
        let r = random([n], 23);
        let mut out = Vec::new();
        for fused in [true, false] {
            take_tally();
            let s = if fused {
                head_term(h.clone(), coeff.clone(), w.clone())
            } else {
                ops(h.clone(), w.clone())
            };
            if fused {
                assert_eq!(take_tally().count(Op::HeadTerm, Some(Path::Tracked)), 1);
            }
            let grads = (s.clone() * r.clone()).sum().backward();
            let gw = w
                .grad(&grads)
                .map(|g| g.into_data().to_vec::<f32>().unwrap());
            let gh: Vec<f32> = h.grad(&grads).unwrap().into_data().to_vec().unwrap();
            out.push((values(&s), gh, gw));
        }
        let (f, o) = (&out[0], &out[1]);
        assert_close(&f.0, &o.0, 1e-5, "s");
        assert_close(&f.1, &o.1, 1e-5, "dh");
        assert_eq!(f.2.is_some(), train_head, "dW only for a trained head");
        if let (Some(fw), Some(ow)) = (&f.2, &o.2) {
            assert_close(fw, ow, 1e-5, "dW");
        }
    }
}

#[test]
fn frozen_base_gets_no_gradient_and_inference_matches() {
    let x = random([2, 3, 8], 20);
    let w = random([5, 8], 21);
    let a = random([2, 8], 22).require_grad();
    let b = random([5, 2], 23).require_grad();
    let term = || LoraTerm {
        input: None,
        a: a.clone(),
        b: b.clone(),
        scale: 2.0,
    };
    let y = linear(x.clone(), w.clone(), None, Some(term()));
    let grads = y.clone().sum().backward();
    assert!(w.grad(&grads).is_none() && x.grad(&grads).is_none());
    assert!(a.grad(&grads).is_some() && b.grad(&grads).is_some());
    let plain = linear(
        x.inner(),
        w.inner(),
        None,
        Some(LoraTerm {
            input: None,
            a: a.inner(),
            b: b.inner(),
            scale: 2.0,
        }),
    );
    assert_eq!(values(&y), plain.into_data().to_vec::<f32>().unwrap());
}

#[test]
fn permute_copies_match_views_in_value_and_gradient() {
    let x = random([2, 5, 3, 4], 30);
    let axes = [0, 2, 1, 3];
    // Gradients arrive both contiguous and as a transposed view (the keys'
    // path: permute, then swap the last two axes for the product).
    for swap in [false, true] {
        let case = |fused_path: bool| {
            let leaf = x.clone().detach().require_grad();
            let y = if fused_path {
                permute(leaf.clone(), axes)
            } else {
                leaf.clone().permute(axes)
            };
            let y = if swap { y.swap_dims(2, 3) } else { y };
            let r = random(y.dims(), 31);
            let grads = (y.clone() * r).sum().backward();
            let g: Vec<f32> = leaf.grad(&grads).unwrap().into_data().to_vec().unwrap();
            (values(&y), g)
        };
        let (fused, ops) = (case(true), case(false));
        assert_close(&fused.0, &ops.0, 0.0, "y");
        assert_close(&fused.1, &ops.1, 0.0, "dx");
    }
}

#[test]
fn update_in_place_covers_every_chunk_and_refuses_ragged_input() {
    let n = UPDATE_CHUNK * 2 + 17;
    let a =
        Tensor::<Flex, 1>::from_data(TensorData::new(vec![1.0f32; n], [n]), &Default::default());
    let b = Tensor::<Flex, 1>::from_data(
        TensorData::new((0..n).map(|i| i as f32).collect::<Vec<_>>(), [n]),
        &Default::default(),
    );
    let [a, b] = update_in_place([a, b], |[a, b]| {
        for (a, b) in a.iter_mut().zip(b.iter()) {
            *a += b;
        }
    })
    .expect("CPU backend");
    let a: Vec<f32> = a.into_data().to_vec().unwrap();
    assert!(a.iter().enumerate().all(|(i, &v)| v == 1.0 + i as f32));
    let short = Tensor::<Flex, 1>::zeros([3], &Default::default());
    assert!(update_in_place([b, short], |_| {}).is_err());
}

#[test]
fn rope_matches_rotate_half_in_value_and_gradient() {
    let x = random([2, 3, 4, 8], 40);
    let cos = random([2, 3, 4, 8], 41);
    let sin = random([2, 3, 4, 8], 42);
    let fused = run(vec![x.clone()], None, |t, _| {
        rope(t[0].clone(), cos.clone(), sin.clone())
    });
    let ops = run(vec![x], None, |t, _| {
        rope_ops(t[0].clone(), cos.clone(), sin.clone())
    });
    assert_close(&fused.0, &ops.0, 1e-6, "y");
    assert_close(&fused.1[0], &ops.1[0], 1e-6, "dx");
}
