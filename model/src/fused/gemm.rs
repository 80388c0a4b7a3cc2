//! A bounds-checked wrapper over the `gemm` crate (the kernels burn's CPU
//! backend uses), for the products the fused linear layer needs that burn's
//! `matmul` cannot express: accumulation into an existing output
//! (C += s·A·B) and transposed operands read in place.

use gemm::Parallelism;

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
    let parallelism = if m * n * k >= PARALLEL_MIN {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every address gemm forms for a, b and
    // dst (row-major, n columns) inside their slices; dst is borrowed
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
}
