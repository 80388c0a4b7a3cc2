//! Each fused op against its composition of burn ops on the same backend:
//! values, and gradients of Σ y ⊙ R for a random R.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor, TensorData};

use super::*;

type AD = Autodiff<Flex>;

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<AD, D> {
    Flex::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
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
fn swiglu_matches_ops_in_value_and_gradient() {
    let a = random([3, 4, 40], 3).mul_scalar(4.0);
    let b = random([3, 4, 40], 4);
    let fused = run(vec![a.clone(), b.clone()], None, |t, _| {
        swiglu(t[0].clone(), t[1].clone())
    });
    let ops = run(vec![a, b], None, |t, _| {
        swiglu_ops(t[0].clone(), t[1].clone())
    });
    assert_close(&fused.0, &ops.0, 1e-5, "h");
    assert_close(&fused.1[0], &ops.1[0], 1e-5, "da");
    assert_close(&fused.1[1], &ops.1[1], 1e-5, "db");
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
    let x = random([2, 3, 32], 6);
    let w = random([32], 7);
    let tracked = values(&rms_norm(x.clone(), w.clone(), 1e-6));
    let plain: Vec<f32> = rms_norm(x.inner(), w.inner(), 1e-6)
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(tracked, plain);
}
