//! A bounds-checked wrapper over the `gemm` crate (the kernels burn's CPU
//! backend uses), for the products the fused linear layer needs that burn's
//! `matmul` cannot express: accumulation into an existing output
//! (C += s·A·B) and transposed operands read in place.

use gemm::Parallelism;
use rayon::prelude::*;

use super::blas::{self, Operand};

/// A read-only strided view of an f32 matrix: element (i, j) is at
/// `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major [rows, cols] matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "matrix [{rows}, {cols}] over {} values",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// How BLAS reads this view of row-major storage; `None` when neither
    /// stride is 1 (a view BLAS cannot express).
    fn operand(&self) -> Option<Operand> {
        if self.cs == 1 && (self.rs >= self.cols || self.rows == 1) {
            Some(Operand {
                transposed: false,
                ld: self.rs.max(self.cols),
            })
        } else if self.rs == 1 && (self.cs >= self.rows || self.cols == 1) {
            Some(Operand {
                transposed: true,
                ld: self.cs.max(self.rows),
            })
        } else {
            None
        }
    }

    /// Rows `start..start + rows` of the view.
    fn row_range(self, start: usize, rows: usize) -> Self {
        Self {
            data: &self.data[start * self.rs..],
            rows,
            ..self
        }
    }

    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// Products below this many multiply-adds run on one thread.
const PARALLEL_MIN: usize = 1 << 18;

/// dst [m, n] row-major ← (dst if `accumulate`, else 0) + scale · a [m, k] · b [k, n].
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions {k} and {}", b.rows);
    assert_eq!(
        dst.len(),
        m * n,
        "output [{m}, {n}] over {} values",
        dst.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    // Every element either view can address lies inside its slice.
    for v in [&a, &b] {
        assert!((v.rows - 1) * v.rs + (v.cols - 1) * v.cs < v.data.len());
    }
    let large = m * n * k >= PARALLEL_MIN;
    match (large.then(blas::get).flatten(), a.operand(), b.operand()) {
        (Some(blas), Some(oa), Some(ob)) => {
            blas_matmul(blas, dst, (a, oa), (b, ob), scale, accumulate)
        }
        _ => crate_matmul(dst, a, b, scale, accumulate, large),
    }
}

/// [`matmul`] by BLAS, one single-threaded call per rayon thread (one call
/// when called from inside a rayon task). Each call packs its own copy of the
/// operand the chunks share, so the split runs along the longer side of dst:
/// rows (sharing b) when m ≥ n, else columns (sharing a).
fn blas_matmul(
    blas: &blas::Blas,
    dst: &mut [f32],
    (a, oa): (Mat, Operand),
    (b, ob): (Mat, Operand),
    scale: f32,
    accumulate: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let threads = if rayon::current_thread_index().is_some() {
        1
    } else {
        rayon::current_num_threads().max(1)
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    if m >= n || threads == 1 {
        let rows = m.div_ceil(threads);
        dst.par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, chunk)| {
                let a = a.row_range(i * rows, chunk.len() / n);
                // SAFETY: a's rows of this chunk, all of b and this chunk of
                // dst (row-major, n columns) lie inside their slices
                // ([`matmul`]'s asserts); the chunk is borrowed mutably, so it
                // aliases neither input.
                unsafe {
                    blas.sgemm(
                        (a.rows, n, k),
                        scale,
                        (a.data.as_ptr(), oa),
                        (b.data.as_ptr(), ob),
                        beta,
                        chunk.as_mut_ptr(),
                        n,
                    )
                }
            });
    } else {
        let cols = n.div_ceil(threads);
        let out = SendPtr(dst.as_mut_ptr());
        (0..n.div_ceil(cols)).into_par_iter().for_each(|i| {
            let (start, width) = (i * cols, cols.min(n - i * cols));
            let b = b.t().row_range(start, width).t();
            let out = &out;
            // SAFETY: all of a and b's columns start..start + width lie
            // inside their slices ([`matmul`]'s asserts); the calls write
            // disjoint column ranges of dst (row stride n), which is
            // borrowed mutably for the whole loop, so no two calls and no
            // input alias what a call writes.
            unsafe {
                blas.sgemm(
                    (m, width, k),
                    scale,
                    (a.data.as_ptr(), oa),
                    (b.data.as_ptr(), ob),
                    beta,
                    out.0.add(start),
                    n,
                )
            }
        });
    }
}

/// dst's pointer, shared by the calls that write its disjoint column ranges.
struct SendPtr(*mut f32);
// SAFETY: only dereferenced by BLAS calls on disjoint parts of one buffer
// that outlives them (`blas_matmul`).
unsafe impl Sync for SendPtr {}

/// [`matmul`] by the `gemm` crate, on rayon's threads when `parallel`.
fn crate_matmul(dst: &mut [f32], a: Mat, b: Mat, scale: f32, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let parallelism = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: [`matmul`]'s asserts keep every address gemm forms for a, b
    // and dst (row-major, n columns) inside their slices; dst is borrowed
    // mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn products_with_transposed_views_and_accumulation() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        matmul(&mut c, Mat::rows(&a, m, k), Mat::rows(&b, k, n), 1.0, false);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // (bᵀ stored as [n, k]) viewed transposed gives b again; accumulate 2·a·b.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        matmul(
            &mut c,
            Mat::rows(&a, m, k),
            Mat::rows(&bt, n, k).t(),
            2.0,
            true,
        );
        for (x, y) in c.iter().zip(&want) {
            assert!((x - 3.0 * y).abs() < 1e-5);
        }
    }

    /// The BLAS path (when a BLAS loaded) equals the `gemm` crate's on
    /// products above the threshold, for every layout the layers use, with
    /// and without accumulation; `ALIGNKIT_REQUIRE_BLAS=1` (.ci/run) fails
    /// the test when no BLAS loaded.
    #[test]
    fn blas_products_equal_the_crate_kernels() {
        if std::env::var("ALIGNKIT_REQUIRE_BLAS").is_ok_and(|v| v == "1") {
            assert!(blas::get().is_some(), "{}", blas::describe());
        }
        eprintln!("large products: {}", blas::describe());
        // Split by rows (m ≥ n) and by columns (m < n).
        for (m, k, n) in [(67, 130, 45), (45, 130, 67)] {
            assert!(m * k * n >= PARALLEL_MIN);
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let views = [
                (Mat::rows(&a, m, k), Mat::rows(&b, k, n)),
                (Mat::rows(&a, m, k), Mat::rows(&bt, n, k).t()),
                (Mat::rows(&at, k, m).t(), Mat::rows(&b, k, n)),
                (Mat::rows(&at, k, m).t(), Mat::rows(&bt, n, k).t()),
            ];
            let start: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.13).cos()).collect();
            for (va, vb) in views {
                for accumulate in [false, true] {
                    let (mut got, mut want) = (start.clone(), start.clone());
                    matmul(&mut got, va, vb, 0.5, accumulate);
                    crate_matmul(&mut want, va, vb, 0.5, accumulate, true);
                    for (x, y) in got.iter().zip(&want) {
                        assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                    }
                }
            }
        }
        let (m, k, n) = (67, 130, 45);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let views = [(Mat::rows(&a, m, k), Mat::rows(&bt, n, k).t())];
        // Inside a rayon task: one chunk, same values.
        let (va, vb) = views[0];
        let mut got = vec![0.0; m * n];
        rayon::scope(|_| matmul(&mut got, va, vb, 1.0, false));
        let mut want = vec![0.0; m * n];
        crate_matmul(&mut want, va, vb, 1.0, false, false);
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
