//! The fused kernels on host memory: plain loops over contiguous f32 rows,
//! split over rayon's threads (the pool gemm uses) and compiled for the CPU's
//! widest SIMD through `pulp`'s runtime dispatch.
//!
//! Each forward reads its inputs once and writes its output once; each
//! backward does the same with the saved tensors. The unfused graphs they
//! replace make 4–8 passes over [rows, width], one thread each, and an exp
//! call per element.

use pulp::Arch;

use crate::config::Activation;
use rayon::prelude::*;

/// The number of rows of `width` in `len` values. Panics (naming `what`)
/// unless they divide exactly: every kernel walks whole rows.
fn rows_of(len: usize, width: usize, what: &str) -> usize {
    assert!(
        width > 0 && len.is_multiple_of(width),
        "{what} {width} does not divide the {len} values into rows"
    );
    len / width
}

/// Rows per rayon task: enough work to amortise the split (≥ 64 k elements).
fn rows_per_task(width: usize) -> usize {
    (65_536 / width.max(1)).max(1)
}

/// e^x for f32, vectorisable (no libm call, no branch): x = n·ln2 + r with
/// |r| ≤ ln2/2, e^r by Cephes' degree-6 polynomial (`expf.c`), 2^n from the
/// exponent bits. Relative error ≲ 2 ulp; 0 below −87.3 (where f32's
/// normals end) and +Inf above 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest with the 1.5·2²³ trick (no SSE4.1 `round` needed).
    const SHIFT: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let n = (xc * LOG2E + SHIFT) - SHIFT;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    let y = e * scale;
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else {
        y
    }
}

/// Σ a_i·b_i with 16 independent partial sums, so the loop vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// max over a row, 16 lanes at a time.
#[inline(always)]
fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = a.chunks_exact(16);
    let rest = chunks.remainder();
    for x in chunks {
        for i in 0..16 {
            acc[i] = acc[i].max(x[i]);
        }
    }
    rest.iter().fold(
        acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
        |m, &v| m.max(v),
    )
}

/// x_i ← e^(x_i − shift) in place; returns Σ x_i.
#[inline(always)]
fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for x in &mut chunks {
        for i in 0..16 {
            x[i] = exp(x[i] - shift);
            acc[i] += x[i];
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        tail += *x;
    }
    acc.iter().sum::<f32>() + tail
}

/// RMSNorm forward: y = x · r · w with r = 1/√(mean(x²) + ε) per row.
/// Returns y [rows, C] and r [rows] (kept for the backward).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let c = weight.len();
    rows_of(x.len(), c, "rms_norm: the weight's width");
    let rows = x.len() / c;
    let mut y = vec![0.0f32; x.len()];
    let mut r = vec![0.0f32; rows];
    let per = rows_per_task(c);
    y.par_chunks_mut(per * c)
        .zip(r.par_chunks_mut(per))
        .zip(x.par_chunks(per * c))
        .for_each(|((y, r), x)| {
            Arch::new().dispatch(|| {
                for ((y, r), x) in y
                    .chunks_exact_mut(c)
                    .zip(r.iter_mut())
                    .zip(x.chunks_exact(c))
                {
                    *r = 1.0 / (dot(x, x) / c as f32 + eps).sqrt();
                    let rr = *r;
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
                        *y = x * rr * w;
                    }
                }
            })
        });
    (y, r)
}

/// RMSNorm backward from the saved x, w and r and the output gradient g.
/// With u = g ⊙ w: ∂x = r·u − x·r³·(u·x)/C, ∂w = Σ_rows g ⊙ x · r.
pub fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    r: &[f32],
    g: &[f32],
    want_x: bool,
    want_w: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let c = weight.len();
    let rows = rows_of(x.len(), c, "rms_norm backward: the weight's width");
    assert!(
        g.len() == x.len() && r.len() == rows,
        "rms_norm backward: {} gradients and {} saved norms for {rows} rows of {c}",
        g.len(),
        r.len()
    );
    let per = rows_per_task(c);
    let gx = want_x.then(|| {
        let mut gx = vec![0.0f32; x.len()];
        gx.par_chunks_mut(per * c)
            .zip(x.par_chunks(per * c))
            .zip(g.par_chunks(per * c))
            .zip(r.par_chunks(per))
            .for_each(|(((gx, x), g), r)| {
                Arch::new().dispatch(|| {
                    let mut u = vec![0.0f32; c];
                    for (((gx, x), g), &r) in gx
                        .chunks_exact_mut(c)
                        .zip(x.chunks_exact(c))
                        .zip(g.chunks_exact(c))
                        .zip(r)
                    {
                        for ((u, &g), &w) in u.iter_mut().zip(g).zip(weight) {
                            *u = g * w;
                        }
                        let k = r * r * r * dot(&u, x) / c as f32;
                        for ((gx, &u), &x) in gx.iter_mut().zip(&u).zip(x) {
                            *gx = r * u - x * k;
                        }
                    }
                })
            });
        gx
    });
    let gw = want_w.then(|| {
        x.par_chunks(per * c)
            .zip(g.par_chunks(per * c))
            .zip(r.par_chunks(per))
            .map(|((x, g), r)| {
                Arch::new().dispatch(|| {
                    let mut acc = vec![0.0f32; c];
                    for ((x, g), &r) in x.chunks_exact(c).zip(g.chunks_exact(c)).zip(r) {
                        for ((a, &x), &g) in acc.iter_mut().zip(x).zip(g) {
                            *a += g * x * r;
                        }
                    }
                    acc
                })
            })
            // Partials in chunk order, summed left to right: rayon's `reduce`
            // pairs them as work stealing splits the range, which varies
            // from run to run and would make the sum (and exact resume)
            // depend on the machine's load.
            .collect::<Vec<_>>()
            .into_iter()
            .fold(vec![0.0f32; c], |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            })
    });
    (gx, gw)
}

/// Elements per rayon task for element-wise kernels.
const ELEMS_PER_TASK: usize = 32_768;

/// The gated MLP's product: h = act(a) ⊙ b, SwiGLU (act = silu) or GeGLU
/// (act = tanh-approximated GELU).
pub fn glu(a: &[f32], b: &[f32], act: Activation) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "glu: gate and up differ in length");
    let mut h = vec![0.0f32; a.len()];
    h.par_chunks_mut(ELEMS_PER_TASK)
        .zip(a.par_chunks(ELEMS_PER_TASK))
        .zip(b.par_chunks(ELEMS_PER_TASK))
        .for_each(|((h, a), b)| {
            Arch::new().dispatch(|| match act {
                Activation::Silu => {
                    for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
                        *h = a / (1.0 + exp(-a)) * b;
                    }
                }
                Activation::GeluTanh => {
                    for ((h, &a), &b) in h.iter_mut().zip(a).zip(b) {
                        *h = gelu_tanh(a).0 * b;
                    }
                }
            })
        });
    h
}

/// √(2/π), GELU's tanh approximation's slope.
const GELU_BETA: f32 = 0.797_884_6;
/// The cubic term's weight in GELU's tanh approximation.
const GELU_KAPPA: f32 = 0.044_715;

/// tanh u = 1 − 2 / (e^{2u} + 1) through [`exp`], vectorisable (libm's
/// `tanhf` is a call per element); ±1 where e^{2u} under- or overflows.
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// gelu(a) = ½·a·(1 + tanh u), u = √(2/π)·(a + κa³) (Hendrycks & Gimpel
/// 2016; PyTorch's `gelu(approximate="tanh")`), and its derivative.
#[inline(always)]
fn gelu_tanh(a: f32) -> (f32, f32) {
    let t = tanh(GELU_BETA * (a + GELU_KAPPA * a * a * a));
    let du = GELU_BETA * (1.0 + 3.0 * GELU_KAPPA * a * a);
    (
        0.5 * a * (1.0 + t),
        0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du,
    )
}

/// [`glu`]'s backward: ∂a = g·b·act'(a), ∂b = g·act(a); for silu, with
/// s = σ(a), act' = s·(1 + a·(1 − s)).
pub fn glu_backward(a: &[f32], b: &[f32], g: &[f32], act: Activation) -> (Vec<f32>, Vec<f32>) {
    assert!(
        a.len() == b.len() && a.len() == g.len(),
        "glu backward: gate, up and gradient differ in length"
    );
    let mut ga = vec![0.0f32; a.len()];
    let mut gb = vec![0.0f32; a.len()];
    ga.par_chunks_mut(ELEMS_PER_TASK)
        .zip(gb.par_chunks_mut(ELEMS_PER_TASK))
        .zip(a.par_chunks(ELEMS_PER_TASK))
        .zip(
            b.par_chunks(ELEMS_PER_TASK)
                .zip(g.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(((ga, gb), a), (b, g))| {
            let rows = ga.iter_mut().zip(gb.iter_mut()).zip(a).zip(b).zip(g);
            Arch::new().dispatch(|| match act {
                Activation::Silu => {
                    for ((((ga, gb), &a), &b), &g) in rows {
                        let s = 1.0 / (1.0 + exp(-a));
                        *ga = g * b * s * (1.0 + a * (1.0 - s));
                        *gb = g * a * s;
                    }
                }
                Activation::GeluTanh => {
                    for ((((ga, gb), &a), &b), &g) in rows {
                        let (value, slope) = gelu_tanh(a);
                        *ga = g * b * slope;
                        *gb = g * value;
                    }
                }
            })
        });
    (ga, gb)
}

/// Row-wise softmax(s + mask) over rows of width S. Row i of `scores` adds
/// mask row `mask_row(i)`.
pub fn masked_softmax(
    scores: &[f32],
    mask: &[f32],
    width: usize,
    mask_row: impl Fn(usize) -> usize + Sync,
) -> Vec<f32> {
    rows_of(scores.len(), width, "masked_softmax: the key count");
    let mask_rows = rows_of(mask.len(), width, "masked_softmax: the mask's key count");
    let mask_row = |i: usize| {
        let m = mask_row(i);
        assert!(
            m < mask_rows,
            "masked_softmax: score row {i} maps to mask row {m} of {mask_rows}"
        );
        m
    };
    let mut p = vec![0.0f32; scores.len()];
    let per = rows_per_task(width);
    p.par_chunks_mut(per * width)
        .zip(scores.par_chunks(per * width))
        .enumerate()
        .for_each(|(task, (p, s))| {
            Arch::new().dispatch(|| {
                for (j, (p, s)) in p
                    .chunks_exact_mut(width)
                    .zip(s.chunks_exact(width))
                    .enumerate()
                {
                    let m = mask_row(task * per + j) * width;
                    let m = &mask[m..m + width];
                    for ((p, &s), &m) in p.iter_mut().zip(s).zip(m) {
                        *p = s + m;
                    }
                    let top = max(p);
                    if top == f32::NEG_INFINITY {
                        // Every key masked with −inf: no distribution; zeros
                        // (the additive masks here are finite, so this is
                        // only a guard against NaN).
                        p.fill(0.0);
                        continue;
                    }
                    let inv = 1.0 / exp_shifted(p, top);
                    p.iter_mut().for_each(|v| *v *= inv);
                }
            })
        });
    p
}

/// Softmax backward from the output p: ∂s = p ⊙ (g − Σ g⊙p) per row.
pub fn softmax_backward(p: &[f32], g: &[f32], width: usize) -> Vec<f32> {
    rows_of(p.len(), width, "softmax backward: the key count");
    assert_eq!(p.len(), g.len(), "softmax backward: gradient length");
    let mut gs = vec![0.0f32; p.len()];
    let per = rows_per_task(width);
    gs.par_chunks_mut(per * width)
        .zip(p.par_chunks(per * width))
        .zip(g.par_chunks(per * width))
        .for_each(|((gs, p), g)| {
            Arch::new().dispatch(|| {
                for ((gs, p), g) in gs
                    .chunks_exact_mut(width)
                    .zip(p.chunks_exact(width))
                    .zip(g.chunks_exact(width))
                {
                    let k = dot(g, p);
                    for ((gs, &p), &g) in gs.iter_mut().zip(p).zip(g) {
                        *gs = p * (g - k);
                    }
                }
            })
        });
    gs
}

/// Per-row results of [`log_softmax_rows`].
#[derive(Debug, Default)]
pub struct RowStats {
    /// z_y − logsumexp(z).
    pub logp: Vec<f32>,
    /// 1.0 where the first maximal logit is the target's (0 unless `stats`).
    pub correct: Vec<f32>,
    /// −Σ p·log p = lse − Σ p·z.
    pub entropy: Vec<f32>,
    /// Σ z / V.
    pub mean_logit: Vec<f32>,
}

/// Log-softmax of the target in each row of logits z [n, V], with the
/// distribution's statistics when `stats`, and — when `coeff` — z
/// overwritten in place by the gradient coefficient c = e_y − softmax(z)
/// (see `crate::logprobs`). Three passes over each row while it sits in
/// cache: max (and sum), exp-sum, and the coefficient write.
pub fn log_softmax_rows(
    z: &mut [f32],
    width: usize,
    targets: &[usize],
    stats: bool,
    coeff: bool,
) -> RowStats {
    let n = targets.len();
    let mut out = vec![[0.0f32; 4]; n];
    z.par_chunks_mut(width)
        .zip(out.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|((row, out), &y)| {
            Arch::new().dispatch(|| {
                let zy = row[y];
                let top = max(row);
                if stats {
                    out[1] = f32::from(row.iter().position(|&v| v == top) == Some(y));
                }
                // Σ e^(z − max), Σ e^(z − max)·z and Σ z, 16 lanes each.
                let (mut se, mut sez, mut sz) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
                let mut chunks = row.chunks_exact_mut(16);
                for z in &mut chunks {
                    for i in 0..16 {
                        let e = exp(z[i] - top);
                        se[i] += e;
                        sez[i] += e * z[i];
                        sz[i] += z[i];
                        if coeff {
                            z[i] = e;
                        }
                    }
                }
                let (mut se_t, mut sez_t, mut sz_t) = (0.0f32, 0.0f32, 0.0f32);
                for z in chunks.into_remainder() {
                    let e = exp(*z - top);
                    se_t += e;
                    sez_t += e * *z;
                    sz_t += *z;
                    if coeff {
                        *z = e;
                    }
                }
                let total = |lanes: [f32; 16], tail: f32| lanes.iter().sum::<f32>() + tail;
                let sum = total(se, se_t);
                let lse = top + sum.ln();
                out[0] = zy - lse;
                out[2] = lse - total(sez, sez_t) / sum;
                out[3] = total(sz, sz_t) / width as f32;
                if coeff {
                    let scale = -1.0 / sum;
                    row.iter_mut().for_each(|v| *v *= scale);
                    row[y] += 1.0;
                }
            })
        });
    let column = |k: usize| out.iter().map(|o| o[k]).collect::<Vec<f32>>();
    RowStats {
        logp: column(0),
        correct: column(1),
        entropy: column(2),
        mean_logit: column(3),
    }
}

/// Rotary embedding in the rotate-half layout over rows of width D (h = D/2):
/// y_i = x_i·cos_i − x_{i+h}·sin_i (i < h), y_i = x_i·cos_i + x_{i−h}·sin_i
/// (i ≥ h). With `backward`, x is the output gradient and the transpose is
/// applied: ∂x_j = g_j·cos_j + g_{j+h}·sin_{j+h} (j < h), g_j·cos_j −
/// g_{j−h}·sin_{j−h} (j ≥ h).
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], width: usize, backward: bool) -> Vec<f32> {
    rows_of(x.len(), width, "rope: the head dimension");
    assert!(
        width.is_multiple_of(2) && cos.len() == x.len() && sin.len() == x.len(),
        "rope: {} values of width {width} need an even width and as many cos ({}) and sin ({})",
        x.len(),
        cos.len(),
        sin.len()
    );
    let h = width / 2;
    let mut y = vec![0.0f32; x.len()];
    let per = rows_per_task(width);
    y.par_chunks_mut(per * width)
        .zip(x.par_chunks(per * width))
        .zip(cos.par_chunks(per * width).zip(sin.par_chunks(per * width)))
        .for_each(|((y, x), (c, s))| {
            Arch::new().dispatch(|| {
                for (((y, x), c), s) in y
                    .chunks_exact_mut(width)
                    .zip(x.chunks_exact(width))
                    .zip(c.chunks_exact(width))
                    .zip(s.chunks_exact(width))
                {
                    let (y1, y2) = y.split_at_mut(h);
                    let (x1, x2) = x.split_at(h);
                    let (c1, c2) = c.split_at(h);
                    let (s1, s2) = s.split_at(h);
                    for i in 0..h {
                        if backward {
                            y1[i] = x1[i] * c1[i] + x2[i] * s2[i];
                            y2[i] = x2[i] * c2[i] - x1[i] * s1[i];
                        } else {
                            y1[i] = x1[i] * c1[i] - x2[i] * s1[i];
                            y2[i] = x2[i] * c2[i] + x1[i] * s2[i];
                        }
                    }
                }
            })
        });
    y
}

/// Copy a strided view (non-negative strides) into a new row-major buffer,
/// one output row — the last axis — at a time, rows in parallel. `offset`
/// and `strides` address `src`.
pub fn gather(src: &[f32], offset: usize, shape: &[usize], strides: &[usize]) -> Vec<f32> {
    let n = shape.len();
    let width = shape[n - 1];
    let inner = strides[n - 1];
    let total: usize = shape.iter().product();
    let mut out = vec![0.0f32; total];
    if total == 0 {
        return out;
    }
    let per = rows_per_task(width);
    out.par_chunks_mut(per * width)
        .enumerate()
        .for_each(|(task, rows)| {
            for (j, row) in rows.chunks_exact_mut(width).enumerate() {
                // Source offset of output row `task·per + j`.
                let (mut r, mut at) = (task * per + j, offset);
                for axis in (0..n - 1).rev() {
                    at += (r % shape[axis]) * strides[axis];
                    r /= shape[axis];
                }
                if inner == 1 {
                    row.copy_from_slice(&src[at..at + width]);
                } else {
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = src[at + i * inner];
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(1e9), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }
}
