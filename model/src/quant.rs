//! 4-bit weight quantization as bitsandbytes does it: NF4 and FP4 codes, one absmax per block,
//! and the optional double quantization of those absmax.
//!
//! See: Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (arXiv:2305.14314),
//! §3: a frozen base weight is stored as 4-bit NormalFloat codes, each block of 64 values scaled
//! by its absolute maximum ("4-bit NormalFloat Quantization"), and the absmax are themselves
//! quantized to 8 bits in blocks of 256 ("Double Quantization").
//!
//! Everything here reproduces, bit for bit, `bitsandbytes.functional.quantize_4bit` and
//! `dequantize_4bit` of bitsandbytes 0.50.2 running on the CPU (the fixture test
//! `model/tests/nf4.rs` checks it against `scripts/fixtures_nf4.py`):
//!
//! 1. The weight is flattened row-major and cut into blocks of `blocksize` values; each block
//!    keeps `absmax = max |w|` in f32 (`backends/default/ops.py`, `quantize_4bit`).
//! 2. Each value becomes `clamp(w · (1 / max(absmax, 1e-38)), -1, 1)`: a multiplication by the
//!    f32 reciprocal, not a division (the two round differently near a bound). An all-zero block
//!    keeps absmax 0 and scales to zeros.
//! 3. The scaled value goes to the bucket `torch.bucketize(x, midpoints)` picks: the number of
//!    midpoints between neighbouring sorted code values that lie strictly below `x`, so a value
//!    exactly on a midpoint goes to the lower code.
//! 4. Two codes share a byte, the first (even flat index) in the high nibble:
//!    `packed[i] = q[2i] << 4 | q[2i + 1]`; bitsandbytes returns them as a `[n / 2, 1]` uint8 tensor.
//! 5. Dequantization is `code[q] · absmax` in f32 (`csrc/cpu_ops.cpp`, `dequantizeBlockwise4bitCpu`).
//!
//! With double quantization (`compress_statistics=True` in `quantize_4bit`) the absmax vector
//! loses its mean, `offset = absmax.mean()` (torch's own f32 summation order, see
//! [`torch_mean`]), and `absmax - offset` goes through `quantize_blockwise(.., blocksize=256)`
//! with the signed 8-bit dynamic map ([`DYNAMIC_MAP`], see [`quantize_blockwise`] for how the CPU
//! kernel rounds); dequantizing gives `DYNAMIC_MAP[c] · absmax2 + offset`, two f32 roundings
//! (Rust never fuses them into one multiply-add).
//!
//! Blocks run over the flattened weight, as bitsandbytes' quantizer and its CUDA and PyTorch
//! dequantizers count them. Its AVX-512 CPU dequantizer instead indexes absmax as
//! `row · (cols / blocksize) + col / blocksize`, which is the same block only when `blocksize`
//! divides the row length; every fixture shape has that, and so do the layers of the models
//! alignkit loads.

use thiserror::Error;

/// Which 4-bit code table a weight uses (`quant_type` in bitsandbytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantType {
    /// NormalFloat4: quantiles of N(0, 1) scaled to [-1, 1], an exact zero, one more positive
    /// than negative value. See: QLoRA §3, "4-bit NormalFloat Quantization".
    Nf4,
    /// A 4-bit float with 1 sign, 2 exponent and 1 mantissa bit (bitsandbytes' `fp4`, the
    /// original `Linear4bit` default), scaled so its largest magnitude is 1.
    Fp4,
}

/// NF4 code values, indexed by the 4-bit code (`get_4bit_type("nf4")`, also `nf4_lut` in
/// `csrc/cpu_ops.cpp`), written as the shortest decimals of the f32 values bitsandbytes
/// lists to 16 digits (`-0.6961928009986877`, ...). Sorted, so the code is also the bucket.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
    1.0,
];

/// FP4 code values, indexed by the 4-bit code: bit 3 is the sign, bits 2..0 an exponent and
/// mantissa with bias 2 (`get_4bit_type("fp4")`: `[0, 0.0625, 8, 12, 4, 6, 2, 3]`, then the
/// negatives, divided by 12 in f32). Code 8 is a second zero: bitsandbytes writes it as the Python
/// int `-0`, which is +0.0, as its AVX-512 CPU kernel's table does (the scalar CPU fallback has
/// -0.0, so there a code-8 value dequantizes to -0.0).
pub const FP4: [f32; 16] = [
    0.0,
    0.0625 / 12.0,
    8.0 / 12.0,
    1.0,
    4.0 / 12.0,
    6.0 / 12.0,
    2.0 / 12.0,
    3.0 / 12.0,
    0.0,
    -0.0625 / 12.0,
    -8.0 / 12.0,
    -1.0,
    -4.0 / 12.0,
    -6.0 / 12.0,
    -2.0 / 12.0,
    -3.0 / 12.0,
];

/// The FP4 codes in ascending order of value: `torch.argsort(code)` as bitsandbytes'
/// `_get_4bit_quantize_bounds` sees it. The two zeros tie and keep their index order (0 before
/// 8), so a scaled value in (0, 0.0026] lands in code 8 and exact zero or a small negative in code 0.
const FP4_BY_VALUE: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];

/// The signed 8-bit dynamic map of `create_dynamic_map()` (Dettmers 2015, "8-Bit Approximations
/// for Parallelism in Deep Learning"), sorted, as the f32 values bitsandbytes builds it from
/// (`torch.linspace` in f32, then scaled by powers of ten). Double quantization codes the absmax
/// with it.
pub const DYNAMIC_MAP: [f32; 256] = DYNAMIC_MAP_VALUES;

/// Block size of the second quantization level (`quantize_blockwise(.., blocksize=256)` in
/// `quantize_4bit`).
pub const DOUBLE_QUANT_BLOCKSIZE: usize = 256;

/// Block sizes `quantize_4bit` accepts.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

impl QuantType {
    /// The code table, indexed by the 4-bit code.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &NF4,
            QuantType::Fp4 => &FP4,
        }
    }

    /// The codes in ascending order of value (bucket → code).
    fn by_value(self) -> [u8; 16] {
        match self {
            QuantType::Nf4 => std::array::from_fn(|i| i as u8),
            QuantType::Fp4 => FP4_BY_VALUE,
        }
    }
}

/// What can be wrong with a weight handed to [`quantize`].
#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    #[error("shape {shape:?} holds {expected} values but the weight has {len}")]
    Shape {
        shape: [usize; 2],
        expected: usize,
        len: usize,
    },
    #[error("shape {shape:?} is empty: nothing to quantize")]
    Empty { shape: [usize; 2] },
    #[error(
        "shape {shape:?} holds {len} values, an odd count: 4-bit codes are packed two to a byte"
    )]
    OddLength { shape: [usize; 2], len: usize },
    #[error("blocksize {blocksize} is not one bitsandbytes accepts ({BLOCKSIZES:?})")]
    BlockSize { blocksize: usize },
    #[error("blocksize {blocksize} does not divide the {len} values of shape {shape:?}")]
    Indivisible {
        shape: [usize; 2],
        blocksize: usize,
        len: usize,
    },
    #[error("weight[{row}][{col}] is {value}: only finite values can be quantized")]
    NonFinite { row: usize, col: usize, value: f32 },
}

/// The scales of a 4-bit weight, one per block.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 absmax per block (`compress_statistics=False`).
    Plain(Vec<f32>),
    /// The absmax quantized once more (`compress_statistics=True`): block `b`'s absmax is
    /// `DYNAMIC_MAP[codes[b]] · absmax2[b / blocksize2] + offset`.
    Double {
        /// One 8-bit dynamic-map code per 4-bit block (bitsandbytes' `quant_state.absmax`).
        codes: Vec<u8>,
        /// One f32 scale per `blocksize2` codes (`quant_state.state2.absmax`).
        absmax2: Vec<f32>,
        /// The mean subtracted before the second quantization (`quant_state.offset`).
        offset: f32,
        /// Codes per second-level block (`quant_state.state2.blocksize`, 256).
        blocksize2: usize,
    },
}

/// A weight quantized to 4 bits, laid out as bitsandbytes stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized4 {
    pub kind: QuantType,
    /// The weight's shape, [out, in] for a linear layer.
    pub shape: [usize; 2],
    /// Values per absmax block, over the row-major flattened weight.
    pub blocksize: usize,
    /// Two codes per byte, the first in the high nibble; bitsandbytes' `[n / 2, 1]` uint8 tensor.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

/// Quantizes a row-major `shape` weight to 4 bits as
/// `bitsandbytes.functional.quantize_4bit(w, blocksize=blocksize, compress_statistics=double,
/// quant_type=kind)` does on the CPU.
///
/// `blocksize` must be one bitsandbytes accepts and divide the element count (bitsandbytes
/// would close the flattened weight with a shorter block; alignkit does not need that case).
pub fn quantize(
    weights: &[f32],
    shape: [usize; 2],
    kind: QuantType,
    blocksize: usize,
    double: bool,
) -> Result<Quantized4, QuantError> {
    check(weights, shape, blocksize)?;
    let by_value = kind.by_value();
    let code = kind.code();
    // `_get_4bit_quantize_bounds`: midpoints of the sorted code, in f32.
    let bounds: [f32; 15] = std::array::from_fn(|i| {
        (code[by_value[i] as usize] + code[by_value[i + 1] as usize]) / 2.0
    });
    let mut packed = Vec::with_capacity(weights.len() / 2);
    let mut absmax = Vec::with_capacity(weights.len() / blocksize);
    for block in weights.chunks_exact(blocksize) {
        let max = block.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        // See: bitsandbytes backends/default/ops.py, `A_com * (1.0 / absmax.clamp(min=1e-38))`;
        // the min is the f64 1e-38 rounded to f32 (a subnormal).
        let scale = 1.0 / max.max(1e-38_f64 as f32);
        let bucket = |w: f32| {
            let x = (w * scale).clamp(-1.0, 1.0);
            by_value[bounds.partition_point(|&b| b < x)]
        };
        for pair in block.chunks_exact(2) {
            packed.push((bucket(pair[0]) << 4) | bucket(pair[1]));
        }
        absmax.push(max);
    }
    let absmax = if double {
        double_quantize(&absmax)
    } else {
        Absmax::Plain(absmax)
    };
    Ok(Quantized4 {
        kind,
        shape,
        blocksize,
        packed,
        absmax,
    })
}

fn check(weights: &[f32], shape: [usize; 2], blocksize: usize) -> Result<(), QuantError> {
    let len = weights.len();
    let expected = shape[0] * shape[1];
    if len != expected {
        return Err(QuantError::Shape {
            shape,
            expected,
            len,
        });
    }
    if len == 0 {
        return Err(QuantError::Empty { shape });
    }
    if !len.is_multiple_of(2) {
        return Err(QuantError::OddLength { shape, len });
    }
    if !BLOCKSIZES.contains(&blocksize) {
        return Err(QuantError::BlockSize { blocksize });
    }
    if !len.is_multiple_of(blocksize) {
        return Err(QuantError::Indivisible {
            shape,
            blocksize,
            len,
        });
    }
    if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
        return Err(QuantError::NonFinite {
            row: i / shape[1],
            col: i % shape[1],
            value: weights[i],
        });
    }
    Ok(())
}

impl Quantized4 {
    /// The weight back in f32, row-major: `code[q] · absmax` per value, as
    /// `bitsandbytes.functional.dequantize_4bit` returns it.
    ///
    /// Panics if the fields disagree with each other (more codes than absmax blocks, say);
    /// [`quantize`] never builds such a value.
    pub fn dequantize(&self) -> Vec<f32> {
        let code = self.kind.code();
        let absmax = self.absmax.values();
        let per_block = self.blocksize / 2;
        let mut out = Vec::with_capacity(self.packed.len() * 2);
        for (bytes, &scale) in self.packed.chunks(per_block).zip(&absmax) {
            for &byte in bytes {
                out.push(code[usize::from(byte >> 4)] * scale);
                out.push(code[usize::from(byte & 0x0f)] * scale);
            }
        }
        out
    }
}

impl Absmax {
    /// One f32 scale per 4-bit block; with double quantization, dequantized as
    /// `dequantize_blockwise(codes, state2) + offset` (two f32 roundings, no fused multiply-add).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(values) => values.clone(),
            Absmax::Double {
                codes,
                absmax2,
                offset,
                blocksize2,
            } => dequantize_blockwise(codes, absmax2, *blocksize2)
                .into_iter()
                .map(|a| a + offset)
                .collect(),
        }
    }
}

/// `offset = absmax.mean()`, then `quantize_blockwise(absmax - offset, blocksize=256)`.
fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = torch_mean(absmax);
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let (codes, absmax2) = quantize_blockwise(&centred, DOUBLE_QUANT_BLOCKSIZE);
    Absmax::Double {
        codes,
        absmax2,
        offset,
        blocksize2: DOUBLE_QUANT_BLOCKSIZE,
    }
}

/// Blockwise 8-bit quantization with [`DYNAMIC_MAP`], returning one code per value and one
/// absmax per block: `bitsandbytes.functional.quantize_blockwise(values, blocksize=blocksize)`
/// as its CPU kernel computes it (`csrc/cpu_ops.cpp`, `quantize_cpu_impl`).
///
/// Per block: the absmax; then each value times the f32 `1 / absmax`, clamped to [-1, 1], is
/// snapped to a grid of 65536 points (`norm_to_lut_index`), and the grid point takes the code
/// whose midpoint interval holds it (`build_quantize_lut`, a point on a midpoint going to the
/// lower code). The grid makes this slightly coarser than nearest-code rounding, so it is
/// mirrored step by step. A block of zeros keeps absmax 0 and codes 0; the last block may be
/// shorter. Panics if `blocksize` is 0.
pub fn quantize_blockwise(values: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let midpoints: [f32; 255] =
        std::array::from_fn(|i| 0.5 * (DYNAMIC_MAP[i] + DYNAMIC_MAP[i + 1]));
    const GRID: f32 = 65535.0;
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(blocksize));
    for block in values.chunks(blocksize) {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(max);
        if max == 0.0 {
            codes.extend(std::iter::repeat_n(0, block.len()));
            continue;
        }
        let inv = 1.0 / max;
        for &v in block {
            let x = (v * inv).clamp(-1.0, 1.0);
            // `(val + 1.0f) * 0.5f * (kLUTSize - 1) + 0.5f`, truncated to uint16.
            let index = ((x + 1.0) * 0.5 * GRID + 0.5) as u16;
            // `build_quantize_lut`: the grid point's value, then how many midpoints lie below it.
            let point = -1.0 + (2.0 * f32::from(index)) / GRID;
            codes.push(midpoints.partition_point(|&m| m < point) as u8);
        }
    }
    (codes, absmax)
}

/// Inverse of [`quantize_blockwise`]: `DYNAMIC_MAP[code] · absmax` per value in f32, as
/// `dequantize_blockwise` (`dequantizeBlockwise8bitCpu`). Panics if `absmax` has fewer entries
/// than `codes` has blocks.
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], blocksize: usize) -> Vec<f32> {
    codes
        .chunks(blocksize)
        .enumerate()
        .flat_map(|(b, block)| {
            let scale = absmax[b];
            block
                .iter()
                .map(move |&c| DYNAMIC_MAP[usize::from(c)] * scale)
        })
        .collect()
}

/// `torch.mean` of a contiguous f32 vector on the CPU: `torch_sum` below, then a division by the
/// count in f32 (ATen's `mean_out` on the CPU is `sum_out(..).div_(numel)`). It is the
/// double-quantization offset, so its last bit matters.
pub fn torch_mean(values: &[f32]) -> f32 {
    torch_sum(values) / values.len() as f32
}

/// `torch.sum` of a contiguous f32 vector on the CPU, as PyTorch's `cascade_sum`
/// (`aten/src/ATen/native/cpu/SumKernel.cpp`) adds it up on one thread: 8-lane vectors
/// (`Vectorized<float>` of its sum kernel on x86, AVX-512 machines included: checked against
/// torch 2.15 for every length up to 300 and a few up to 32767) summed by `row_sum` (four
/// interleaved accumulators, each a 4-level cascade), then the scalar tail, then the 8 lanes in
/// order. Below 8 values the same `row_sum` runs on scalars. torch splits sums of 32768 or more
/// values over its threads, so for absmax vectors that long (weights of 2M values at
/// blocksize 64) bitsandbytes' own offset depends on `torch.get_num_threads()`, in the last
/// bit; this follows the single-thread order.
fn torch_sum(values: &[f32]) -> f32 {
    const LANES: usize = 8;
    let total = if values.len() >= LANES {
        let vectors = values.len() / LANES;
        let lanes = row_sum::<LANES>(
            |i| std::array::from_fn(|lane| values[i * LANES + lane]),
            vectors,
        );
        let mut total = 0.0f32;
        for &v in &values[vectors * LANES..] {
            total += v;
        }
        for lane in lanes {
            total += lane;
        }
        total
    } else {
        row_sum::<1>(|i| [values[i]], values.len())[0]
    };
    // The output starts at zero and the sum is accumulated into it.
    0.0 + total
}

/// `row_sum` of SumKernel.cpp: the row read as `[size / 4, 4]`, each column summed by
/// `multi_row_sum`, the leftover rows added to column 0, then columns 1..3 into column 0.
fn row_sum<const W: usize>(load: impl Fn(usize) -> [f32; W], size: usize) -> [f32; W] {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut partial = multi_row_sum(|row, k| load(row * ILP + k), rows);
    for i in rows * ILP..size {
        add(&mut partial[0], load(i));
    }
    for k in 1..ILP {
        let column = partial[k];
        add(&mut partial[0], column);
    }
    partial[0]
}

/// `multi_row_sum` of SumKernel.cpp with four columns: a running sum per column that is
/// pushed up a 4-level cascade every `2^level_power` rows, so only partial sums of similar
/// size meet.
fn multi_row_sum<const W: usize>(
    load: impl Fn(usize, usize) -> [f32; W],
    size: usize,
) -> [[f32; W]; 4] {
    const LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1 << level_power;
    let level_mask = level_step - 1;
    let add_row = |sums: &mut [[f32; W]; 4], i: usize| {
        for (k, column) in sums.iter_mut().enumerate() {
            add(column, load(i, k));
        }
    };
    // acc[level][column]
    let mut acc = [[[0.0f32; W]; 4]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = std::mem::replace(&mut acc[j - 1], [[0.0; W]; 4]);
            add_columns(&mut acc[j], lower);
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    for i in i..size {
        add_row(&mut acc[0], i);
    }
    let [mut total, upper @ ..] = acc;
    for level in upper {
        add_columns(&mut total, level);
    }
    total
}

/// `utils::CeilLog2` of ATen: 1 up to 2, else the bit width of `x - 1`.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 {
        1
    } else {
        (usize::BITS - (x - 1).leading_zeros()) as usize
    }
}

fn add<const W: usize>(acc: &mut [f32; W], v: [f32; W]) {
    for (a, v) in acc.iter_mut().zip(v) {
        *a += v;
    }
}

fn add_columns<const W: usize>(acc: &mut [[f32; W]; 4], other: [[f32; W]; 4]) {
    for (a, v) in acc.iter_mut().zip(other) {
        add(a, v);
    }
}

// `create_dynamic_map()` of bitsandbytes 0.50.2 as shortest f32 decimals; the fixture test
// checks it bit for bit against the map bitsandbytes stores with a double-quantized weight.
const DYNAMIC_MAP_VALUES: [f32; 256] = [
    -0.99296874,
    -0.9789063,
    -0.96484375,
    -0.9507812,
    -0.93671876,
    -0.92265624,
    -0.9085938,
    -0.89453125,
    -0.8804687,
    -0.86640626,
    -0.85234374,
    -0.8382813,
    -0.82421875,
    -0.8101562,
    -0.79609376,
    -0.78203124,
    -0.7679688,
    -0.75390625,
    -0.7398437,
    -0.72578126,
    -0.7117188,
    -0.6976563,
    -0.68359375,
    -0.6695312,
    -0.65546876,
    -0.6414063,
    -0.6273438,
    -0.61328125,
    -0.5992187,
    -0.58515626,
    -0.5710938,
    -0.5570313,
    -0.54296875,
    -0.5289062,
    -0.5148437,
    -0.50078124,
    -0.4867187,
    -0.47265625,
    -0.45859373,
    -0.44453126,
    -0.43046874,
    -0.41640624,
    -0.40234375,
    -0.38828123,
    -0.37421876,
    -0.36015624,
    -0.34609374,
    -0.33203125,
    -0.31796873,
    -0.30390626,
    -0.28984374,
    -0.27578127,
    -0.26171875,
    -0.24765624,
    -0.23359375,
    -0.21953125,
    -0.20546874,
    -0.19140625,
    -0.17734376,
    -0.16328125,
    -0.14921875,
    -0.13515624,
    -0.12109375,
    -0.107031256,
    -0.09859375,
    -0.09578126,
    -0.092968754,
    -0.09015625,
    -0.08734375,
    -0.08453125,
    -0.08171876,
    -0.07890625,
    -0.07609375,
    -0.07328125,
    -0.070468746,
    -0.067656256,
    -0.06484375,
    -0.06203125,
    -0.059218753,
    -0.05640625,
    -0.05359375,
    -0.05078125,
    -0.04796875,
    -0.04515625,
    -0.042343747,
    -0.03953125,
    -0.036718752,
    -0.03390625,
    -0.03109375,
    -0.028281251,
    -0.02546875,
    -0.02265625,
    -0.019843752,
    -0.01703125,
    -0.01421875,
    -0.01140625,
    -0.00971875,
    -0.009156249,
    -0.00859375,
    -0.00803125,
    -0.00746875,
    -0.00690625,
    -0.00634375,
    -0.00578125,
    -0.0052187503,
    -0.0046562497,
    -0.00409375,
    -0.0035312497,
    -0.00296875,
    -0.00240625,
    -0.00184375,
    -0.0012812499,
    -0.0009437501,
    -0.00083125,
    -0.00071875006,
    -0.0006062501,
    -0.00049375003,
    -0.00038125002,
    -0.00026875004,
    -0.00015625001,
    -8.875e-05,
    -6.625e-05,
    -4.375e-05,
    -2.1249998e-05,
    -7.75e-06,
    -3.2500002e-06,
    -5.5000004e-07,
    0.0,
    5.5000004e-07,
    3.2500002e-06,
    7.75e-06,
    2.1249998e-05,
    4.375e-05,
    6.625e-05,
    8.875e-05,
    0.00015625001,
    0.00026875004,
    0.00038125002,
    0.00049375003,
    0.0006062501,
    0.00071875006,
    0.00083125,
    0.0009437501,
    0.0012812499,
    0.00184375,
    0.00240625,
    0.00296875,
    0.0035312497,
    0.00409375,
    0.0046562497,
    0.0052187503,
    0.00578125,
    0.00634375,
    0.00690625,
    0.00746875,
    0.00803125,
    0.00859375,
    0.009156249,
    0.00971875,
    0.01140625,
    0.01421875,
    0.01703125,
    0.019843752,
    0.02265625,
    0.02546875,
    0.028281251,
    0.03109375,
    0.03390625,
    0.036718752,
    0.03953125,
    0.042343747,
    0.04515625,
    0.04796875,
    0.05078125,
    0.05359375,
    0.05640625,
    0.059218753,
    0.06203125,
    0.06484375,
    0.067656256,
    0.070468746,
    0.07328125,
    0.07609375,
    0.07890625,
    0.08171876,
    0.08453125,
    0.08734375,
    0.09015625,
    0.092968754,
    0.09578126,
    0.09859375,
    0.107031256,
    0.12109375,
    0.13515624,
    0.14921875,
    0.16328125,
    0.17734376,
    0.19140625,
    0.20546874,
    0.21953125,
    0.23359375,
    0.24765624,
    0.26171875,
    0.27578127,
    0.28984374,
    0.30390626,
    0.31796873,
    0.33203125,
    0.34609374,
    0.36015624,
    0.37421876,
    0.38828123,
    0.40234375,
    0.41640624,
    0.43046874,
    0.44453126,
    0.45859373,
    0.47265625,
    0.4867187,
    0.50078124,
    0.5148437,
    0.5289062,
    0.54296875,
    0.5570313,
    0.5710938,
    0.58515626,
    0.5992187,
    0.61328125,
    0.6273438,
    0.6414063,
    0.65546876,
    0.6695312,
    0.68359375,
    0.6976563,
    0.7117188,
    0.72578126,
    0.7398437,
    0.75390625,
    0.7679688,
    0.78203124,
    0.79609376,
    0.8101562,
    0.82421875,
    0.8382813,
    0.85234374,
    0.86640626,
    0.8804687,
    0.89453125,
    0.9085938,
    0.92265624,
    0.93671876,
    0.9507812,
    0.96484375,
    0.9789063,
    0.99296874,
    1.0,
];
