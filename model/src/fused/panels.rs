//! Decoding's dense products, y [m, out] = x [m, in] · Wᵀ with few rows (one
//! new token per sequence): each step streams every weight of the model from
//! memory once, so the product is bound by how fast the weights are read.
//!
//! gemm, given a [16, 576] · [576, 1536] product, packs the weight into its
//! own panel layout on every call and splits 16 rows into 6-column tiles;
//! measured here over the 211 weight matrices of SmolLM2 (cold caches, 16
//! rows) it runs at ~3 GB/s of weights. Laying the weight out once in column
//! panels ([`Panels`], by `for_decoding`) lets one pass read memory strictly
//! in order with the sums of [`ROWS`] rows × [`PANEL`] outputs in registers,
//! and software prefetches keep enough of the stream in flight: ~11 GB/s,
//! 48 ms instead of 166 ms for the products of one decoding step (a plain
//! read of the weights runs at ~14 GB/s on this 2-core machine). Wider
//! panels with fewer rows per pass (8 × 48) measured 55–65 ms.

use rayon::prelude::*;

/// Outputs per panel: one 16-lane vector.
pub const PANEL: usize = 16;
/// Rows of x whose sums a panel keeps in registers at once (16 vectors).
const ROWS: usize = 16;
/// How far ahead of the weight row being multiplied the kernel prefetches,
/// in weight rows of a panel (32 × 64 bytes).
const PREFETCH_ROWS: usize = 32;
/// Products with more rows than this (a long prefill) are left to gemm,
/// which blocks the rows for its caches; the panels re-read all of x once per
/// panel. Up to here the panels measured faster (256 rows: 0.58 s against
/// gemm's 0.82–1.2 s for the products of SmolLM2, cold weights).
pub const MAX_ROWS: usize = 256;

/// A [out, in] weight as ⌈out / PANEL⌉ column panels, panel p holding outputs
/// PANEL·p.. as [in][PANEL] (zero past `out`).
#[derive(Debug, Clone)]
pub struct Panels {
    data: Vec<f32>,
    d_in: usize,
    d_out: usize,
}

impl Panels {
    /// Lay out `w`, row-major [d_out, d_in] (transformers' layout).
    pub fn new(w: &[f32], d_out: usize, d_in: usize) -> Self {
        assert!(
            w.len() == d_out * d_in && d_in > 0,
            "weight [{d_out}, {d_in}] over {} values",
            w.len()
        );
        let panels = d_out.div_ceil(PANEL);
        let mut data = vec![0.0f32; panels * d_in * PANEL];
        data.par_chunks_mut(d_in * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..PANEL.min(d_out - p * PANEL) {
                    let row = &w[(p * PANEL + j) * d_in..][..d_in];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * PANEL + j] = v;
                    }
                }
            });
        Self { data, d_in, d_out }
    }

    pub fn dims(&self) -> [usize; 2] {
        [self.d_out, self.d_in]
    }

    /// x [m, in] (row-major) · Wᵀ (+ bias) → [m, out], row-major.
    pub fn matmul(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (d_in, d_out) = (self.d_in, self.d_out);
        assert_eq!(x.len(), m * d_in, "input [{m}, {d_in}]");
        if let Some(b) = bias {
            assert_eq!(b.len(), d_out, "bias for {d_out} outputs");
        }
        let kernel = Kernel::detect();
        // Panel-major sums, [panel][m][PANEL]: each task owns its panels.
        let mut sums = vec![0.0f32; self.data.len() / d_in * m];
        sums.par_chunks_mut(m * PANEL)
            .zip(self.data.par_chunks(d_in * PANEL))
            .with_min_len(4)
            .for_each(|(out, panel)| {
                for (rows, out) in x.chunks(ROWS * d_in).zip(out.chunks_mut(ROWS * PANEL)) {
                    kernel.run(rows, d_in, panel, out);
                }
            });
        let mut y = vec![0.0f32; m * d_out];
        y.par_chunks_mut(d_out).enumerate().for_each(|(r, row)| {
            for (p, cols) in row.chunks_mut(PANEL).enumerate() {
                let start = (p * m + r) * PANEL;
                cols.copy_from_slice(&sums[start..start + cols.len()]);
            }
            if let Some(b) = bias {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        });
        y
    }
}

/// Which inner loop this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// AVX-512 fused multiply-adds, sums in 16 vector registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Plain Rust the compiler vectorises for the build's target.
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Kernel::Avx512;
        }
        Kernel::Portable
    }

    /// out [rows][PANEL] = x [rows, k] · panel [k][PANEL], rows ≤ ROWS.
    fn run(self, x: &[f32], k: usize, panel: &[f32], out: &mut [f32]) {
        let rows = x.len() / k;
        assert!(
            (1..=ROWS).contains(&rows)
                && x.len() == rows * k
                && panel.len() == k * PANEL
                && out.len() == rows * PANEL,
            "panel kernel: {rows} rows of {k}, panel of {}, output of {}",
            panel.len(),
            out.len()
        );
        macro_rules! dispatch {
            ($f:ident) => {
                match rows {
                    1 => $f::<1>(x, k, panel, out),
                    2 => $f::<2>(x, k, panel, out),
                    3 => $f::<3>(x, k, panel, out),
                    4 => $f::<4>(x, k, panel, out),
                    5 => $f::<5>(x, k, panel, out),
                    6 => $f::<6>(x, k, panel, out),
                    7 => $f::<7>(x, k, panel, out),
                    8 => $f::<8>(x, k, panel, out),
                    9 => $f::<9>(x, k, panel, out),
                    10 => $f::<10>(x, k, panel, out),
                    11 => $f::<11>(x, k, panel, out),
                    12 => $f::<12>(x, k, panel, out),
                    13 => $f::<13>(x, k, panel, out),
                    14 => $f::<14>(x, k, panel, out),
                    15 => $f::<15>(x, k, panel, out),
                    _ => $f::<16>(x, k, panel, out),
                }
            };
        }
        match self {
            // SAFETY: AVX-512F is present (checked by `detect`), and the
            // lengths the kernel indexes by were asserted above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { dispatch!(avx512) },
            Kernel::Portable => dispatch!(portable),
        }
    }
}

fn portable<const R: usize>(x: &[f32], k: usize, panel: &[f32], out: &mut [f32]) {
    let mut acc = [[0.0f32; PANEL]; R];
    for (kk, w) in panel.chunks_exact(PANEL).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = x[r * k + kk];
            for (a, &w) in acc.iter_mut().zip(w) {
                *a += xv * w;
            }
        }
    }
    for (out, acc) in out.chunks_exact_mut(PANEL).zip(&acc) {
        out.copy_from_slice(acc);
    }
}

/// # Safety
/// The CPU has AVX-512F; `x` holds R rows of `k`, `panel` k × PANEL values
/// and `out` R × PANEL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const R: usize>(x: &[f32], k: usize, panel: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (xp, wp, op) = (x.as_ptr(), panel.as_ptr(), out.as_mut_ptr());
    let mut acc = [_mm512_setzero_ps(); R];
    for kk in 0..k {
        // SAFETY (all pointer reads and writes): within the lengths the
        // caller guarantees; a prefetch of an address past them is a hint
        // that never faults.
        let w = unsafe { wp.add(kk * PANEL) };
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH_ROWS * PANEL) as *const i8);
        let w = unsafe { _mm512_loadu_ps(w) };
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(unsafe { *xp.add(r * k + kk) });
            *acc = _mm512_fmadd_ps(xv, w, *acc);
        }
    }
    for (r, &a) in acc.iter().enumerate() {
        unsafe { _mm512_storeu_ps(op.add(r * PANEL), a) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                (h >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// x · Wᵀ + b in f64, for reference.
    fn reference(x: &[f32], w: &[f32], b: &[f32], m: usize, d_out: usize, d_in: usize) -> Vec<f64> {
        let mut y = vec![0.0; m * d_out];
        for r in 0..m {
            for o in 0..d_out {
                y[r * d_out + o] = b[o] as f64
                    + (0..d_in)
                        .map(|k| x[r * d_in + k] as f64 * w[o * d_in + k] as f64)
                        .sum::<f64>();
            }
        }
        y
    }

    /// Outputs that fill no whole panel (100 = 6·16 + 4), row counts up to
    /// past two row groups, with and without bias; both inner loops.
    #[test]
    fn panel_products_equal_the_plain_product() {
        let (d_out, d_in) = (100, 37);
        let w = values(d_out * d_in, 1);
        let panels = Panels::new(&w, d_out, d_in);
        assert_eq!(panels.dims(), [d_out, d_in]);
        for m in [1, 3, 8, 16, 17, 35] {
            let x = values(m * d_in, m as u32);
            let b = values(d_out, 7);
            let want = reference(&x, &w, &b, m, d_out, d_in);
            let got = panels.matmul(&x, m, Some(&b));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < 1e-5,
                    "m {m}, output {i}: {g} vs {w}"
                );
            }
            let zero = vec![0.0; d_out];
            let want = reference(&x, &w, &zero, m, d_out, d_in);
            let got = panels.matmul(&x, m, None);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| (*g as f64 - w).abs() < 1e-5)
            );
        }
        // The portable loop on one panel, whatever this CPU runs by default.
        let x = values(5 * d_in, 3);
        let mut out = vec![0.0; 5 * PANEL];
        Kernel::Portable.run(&x, d_in, &panels.data[..d_in * PANEL], &mut out);
        let want = reference(&x, &w, &[0.0; 100], 5, d_out, d_in);
        for r in 0..5 {
            for j in 0..PANEL {
                let (g, w) = (out[r * PANEL + j] as f64, want[r * d_out + j]);
                assert!(
                    (g - w).abs() < 1e-5,
                    "portable row {r}, output {j}: {g} vs {w}"
                );
            }
        }
    }

    /// A row's outputs do not depend on the other rows of the batch: the
    /// same sums in the same order.
    #[test]
    fn each_row_is_computed_as_it_would_be_alone() {
        let (d_out, d_in) = (96, 64);
        let panels = Panels::new(&values(d_out * d_in, 2), d_out, d_in);
        let x = values(11 * d_in, 5);
        let batch = panels.matmul(&x, 11, None);
        for r in 0..11 {
            let alone = panels.matmul(&x[r * d_in..(r + 1) * d_in], 1, None);
            assert_eq!(alone, batch[r * d_out..(r + 1) * d_out], "row {r}");
        }
    }
}
