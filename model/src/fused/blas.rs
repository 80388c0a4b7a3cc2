//! An optional system BLAS (OpenBLAS) for the large products of
//! [`super::gemm::matmul`], loaded at run time.
//!
//! On this project's CPU (a Xeon with AVX-512) OpenBLAS's SkylakeX `sgemm`
//! runs at about 1.7× the `gemm` crate's f32 kernels (≈ 200 vs 100–140
//! GFLOP/s on two cores, BENCHMARKS.md), and the dense layers' products are
//! most of a training step. The library is opened with `dlopen`, not linked,
//! so a build needs nothing installed and a machine without OpenBLAS (or
//! with `ALIGNKIT_BLAS=off`) runs the `gemm` crate as before; [`describe`]
//! says which one a process uses (`alignkit bench` prints it).
//!
//! Where it is looked for: `ALIGNKIT_BLAS=PATH` (a `libopenblas.so`), else
//! Debian/Ubuntu's `libopenblas.so.0` (package `libopenblas0`), else its
//! single-threaded variant. Threads are ours: OpenBLAS is asked for one
//! thread (`OPENBLAS_NUM_THREADS=1` before it loads, and
//! `openblas_set_num_threads(1)`), and [`super::gemm::matmul`] splits a
//! product's rows over rayon's threads, so no second thread pool spins
//! beside rayon's.
//!
//! OpenBLAS picks its kernels from the CPU model, and releases older than the
//! CPU fall back to a generic x86-64 kernel (Debian 12's 0.3.21 takes this
//! Emerald Rapids for a "Prescott" and runs at 35 GFLOP/s). So unless
//! `OPENBLAS_CORETYPE` is set already, it is set from the CPU's features
//! before loading (AVX-512 → SkylakeX, AVX2 + FMA → Haswell), and a library
//! that still reports a core without AVX2 on a CPU with it is not used.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

/// `cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// A loaded BLAS.
pub struct Blas {
    /// Kept open for the process's life: `sgemm` points into it.
    _lib: libloading::Library,
    sgemm: Sgemm,
    /// "OpenBLAS <config> (<core>) from <path>".
    name: String,
}

/// How a stored row-major matrix is read: as is or transposed, with its
/// leading dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    pub transposed: bool,
    pub ld: usize,
}

impl Blas {
    /// c [m, n] (row stride `ldc`) ← alpha · op(a) [m, k] · op(b) [k, n] + beta · c.
    ///
    /// # Safety
    /// The pointers must address matrices of these shapes and leading
    /// dimensions, and `c` must alias neither input.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: (*const f32, Operand),
        b: (*const f32, Operand),
        beta: f32,
        c: *mut f32,
        ldc: usize,
    ) {
        let int = |x: usize| c_int::try_from(x).expect("matrix dimension fits a C int");
        let trans = |o: Operand| if o.transposed { TRANS } else { NO_TRANS };
        // SAFETY: the caller's contract.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                trans(a.1),
                trans(b.1),
                int(m),
                int(n),
                int(k),
                alpha,
                a.0,
                int(a.1.ld),
                b.0,
                int(b.1.ld),
                beta,
                c,
                int(ldc),
            )
        }
    }
}

/// The candidates, in order, when `ALIGNKIT_BLAS` names none.
const CANDIDATES: [&str; 3] = [
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-serial/libopenblas.so.0",
];

/// OpenBLAS core names that use neither AVX2 nor AVX-512 kernels.
const GENERIC_CORES: [&str; 8] = [
    "Prescott",
    "Core2",
    "Penryn",
    "Dunnington",
    "Nehalem",
    "Atom",
    "Katmai",
    "Banias",
];

static LOADED: OnceLock<Result<Blas, String>> = OnceLock::new();

/// The process's BLAS, loaded on first use; `None`: the `gemm` crate.
pub fn get() -> Option<&'static Blas> {
    LOADED.get_or_init(load).as_ref().ok()
}

/// One line: which kernels run the large f32 products, and why.
pub fn describe() -> String {
    match LOADED.get_or_init(load) {
        Ok(blas) => blas.name.clone(),
        Err(why) => format!("gemm crate ({why})"),
    }
}

/// The core OpenBLAS should use on this CPU, from its features.
fn coretype() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            return Some("SkylakeX");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Some("Haswell");
        }
    }
    None
}

fn load() -> Result<Blas, String> {
    let chosen = std::env::var("ALIGNKIT_BLAS").ok();
    if matches!(chosen.as_deref(), Some("off" | "none" | "0")) {
        return Err("ALIGNKIT_BLAS=off".into());
    }
    for (key, value) in [
        ("OPENBLAS_CORETYPE", coretype()),
        ("OPENBLAS_NUM_THREADS", Some("1")),
    ] {
        if let (Err(_), Some(value)) = (std::env::var(key), value) {
            // SAFETY: std's own environment accesses are serialised by its
            // lock; the variables are only read by OpenBLAS's initialiser,
            // which runs inside the `dlopen` below, after this write.
            unsafe { std::env::set_var(key, value) };
        }
    }
    let paths: Vec<&str> = match &chosen {
        Some(path) => vec![path.as_str()],
        None => CANDIDATES.to_vec(),
    };
    let mut tried = Vec::new();
    for path in paths {
        // SAFETY: loading a shared library runs its initialisers; OpenBLAS's
        // only set up its kernel table and (unused) thread pool.
        match unsafe { libloading::Library::new(path) } {
            Ok(lib) => return open(lib, path),
            Err(e) => tried.push(format!("{path}: {e}")),
        }
    }
    Err(match chosen {
        Some(_) => format!("ALIGNKIT_BLAS: {}", tried.join("; ")),
        None => "no libopenblas.so.0; apt-get install libopenblas0 for faster f32 products".into(),
    })
}

fn open(lib: libloading::Library, path: &str) -> Result<Blas, String> {
    // SAFETY: the symbols have the C signatures declared here (cblas.h,
    // OpenBLAS's openblas_config.h).
    unsafe {
        let sgemm = *lib
            .get::<Sgemm>(b"cblas_sgemm\0")
            .map_err(|e| format!("{path}: {e}"))?;
        let text = |symbol: &[u8]| -> Option<String> {
            let f = lib
                .get::<unsafe extern "C" fn() -> *const c_char>(symbol)
                .ok()?;
            let s = f();
            (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().trim().to_string())
        };
        if let Ok(set_threads) =
            lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0")
        {
            set_threads(1);
        }
        let core = text(b"openblas_get_corename\0");
        if let (Some(core), Some(_)) = (&core, coretype())
            && GENERIC_CORES.iter().any(|g| g.eq_ignore_ascii_case(core))
        {
            return Err(format!(
                "{path} runs its generic {core} kernels on this AVX2/AVX-512 CPU"
            ));
        }
        let config = text(b"openblas_get_config\0").unwrap_or_else(|| "BLAS".into());
        let name = match core {
            Some(core) if !config.to_lowercase().contains(&core.to_lowercase()) => {
                format!("{config} ({core}) from {path}")
            }
            _ => format!("{config} from {path}"),
        };
        Ok(Blas {
            sgemm,
            _lib: lib,
            name,
        })
    }
}
