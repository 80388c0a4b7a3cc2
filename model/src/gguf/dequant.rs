//! ggml block formats → f32.
//!
//! Each quantized type stores blocks of `block` elements in `type_size` bytes (see
//! [`GgmlType::block_layout`]). The formulas follow `dequantize_row_*` in ggml's `ggml-quants.c`
//! and gguf-py's `gguf/quants.py`, including the order of the float operations (`(d * sc) * q`,
//! `d * q + m`), so the results are bit-identical to both. Rust never fuses `a * b + c` into an
//! FMA on its own, which keeps that true.

use half::f16;

use super::reader::GgmlType;

/// Dequantizes a run of whole blocks: `data` holds `n` blocks, `out` their `n * block` values.
type Kernel = fn(&[u8], &mut [f32]);

/// Below this many elements a tensor is dequantized on the calling thread only.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Whether [`dequantize`] handles `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    kernel(ty).is_some()
}

fn kernel(ty: GgmlType) -> Option<Kernel> {
    Some(match ty {
        GgmlType::F32 => f32_le,
        GgmlType::F16 => f16_le,
        GgmlType::BF16 => bf16_le,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    })
}

/// Dequantize the blocks in `data` into `out`; `Err(ty)` when the type is not supported.
///
/// `data` should hold exactly `out.len() / block` blocks of `ty`; only whole blocks present in
/// both are converted. Large tensors are split across threads.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgmlType> {
    let kernel = kernel(ty).ok_or(ty)?;
    let (block, type_size) = ty.block_layout();
    let (block, type_size) = (block as usize, type_size as usize);
    let n_blocks = (data.len() / type_size).min(out.len() / block);
    let (data, out) = (&data[..n_blocks * type_size], &mut out[..n_blocks * block]);

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads <= 1 || out.len() < PARALLEL_MIN_ELEMENTS {
        kernel(data, out);
        return Ok(());
    }
    let blocks_per_thread = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        let chunks = data
            .chunks(blocks_per_thread * type_size)
            .zip(out.chunks_mut(blocks_per_thread * block));
        for (d, o) in chunks {
            s.spawn(move || kernel(d, o));
        }
    });
    Ok(())
}

fn half_to_f32(bytes: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(bytes)).to_f32()
}

fn f32_le(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.as_chunks::<4>().0.iter().zip(out.iter_mut()) {
        *y = f32::from_le_bytes(*b);
    }
}

fn f16_le(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.as_chunks::<2>().0.iter().zip(out.iter_mut()) {
        *y = half_to_f32(*b);
    }
}

/// bf16 is the top half of an f32.
fn bf16_le(data: &[u8], out: &mut [f32]) {
    for (b, y) in data.as_chunks::<2>().0.iter().zip(out.iter_mut()) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
    }
}

/// `block_q4_0 { f16 d; u8 qs[16]; }`: x = (q - 8) * d; low nibbles are elements 0..16,
/// high nibbles 16..32.
fn q4_0(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<18>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<32>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        for j in 0..16 {
            let q = b[2 + j];
            y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
            y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16]; }`: x = q * d + m.
fn q4_1(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<20>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<32>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        let m = half_to_f32([b[2], b[3]]);
        for j in 0..16 {
            let q = b[4 + j];
            y[j] = f32::from(q & 0x0F) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    }
}

/// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }`: the fifth bit of element i is bit i of qh;
/// x = (q - 16) * d.
fn q5_0(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<22>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<32>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let q = b[6 + j];
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            y[j] = ((u32::from(q & 0x0F) | h0) as i32 - 16) as f32 * d;
            y[j + 16] = ((u32::from(q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// `block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }`: x = q * d + m.
fn q5_1(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<24>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<32>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        let m = half_to_f32([b[2], b[3]]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..16 {
            let q = b[8 + j];
            let h0 = ((qh >> j) & 1) << 4;
            let h1 = ((qh >> (j + 16)) & 1) << 4;
            y[j] = (u32::from(q & 0x0F) | h0) as f32 * d + m;
            y[j + 16] = (u32::from(q >> 4) | h1) as f32 * d + m;
        }
    }
}

/// `block_q8_0 { f16 d; i8 qs[32]; }`: x = q * d.
fn q8_0(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<34>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<32>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        for j in 0..32 {
            y[j] = f32::from(b[2 + j] as i8) * d;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in 12 bytes (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

fn scales12(b: &[u8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s.copy_from_slice(&b[4..16]);
    s
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`: 8 sub-blocks of 32, each
/// x = (d * sc) * q - dmin * m; each 32 bytes of qs hold two sub-blocks (low, then high nibbles).
fn q4_k(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<144>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<256>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        let dmin = half_to_f32([b[2], b[3]]);
        let scales = scales12(b);
        let qs = &b[16..144];
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &scales);
            let (d1, m1) = (d * sc1, dmin * m1);
            let (d2, m2) = (d * sc2, dmin * m2);
            let q = &qs[32 * c..32 * c + 32];
            let y = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0x0F) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

/// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`: as Q4_K with a fifth
/// bit from qh (bit 2c for the low-nibble sub-block of chunk c, bit 2c+1 for the high one).
fn q5_k(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<176>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<256>().0)
    {
        let d = half_to_f32([b[0], b[1]]);
        let dmin = half_to_f32([b[2], b[3]]);
        let scales = scales12(b);
        let qh = &b[16..48];
        let qs = &b[48..176];
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &scales);
            let (d1, m1) = (d * sc1, dmin * m1);
            let (d2, m2) = (d * sc2, dmin * m2);
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let q = &qs[32 * c..32 * c + 32];
            let y = &mut y[64 * c..64 * c + 64];
            for l in 0..32 {
                let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * f32::from((q[l] & 0x0F) + h1) - m1;
                y[l + 32] = d2 * f32::from((q[l] >> 4) + h2) - m2;
            }
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`: 6-bit q = 4 low bits from ql,
/// 2 high bits from qh, x = (d * scale) * (q - 32), one scale per 16 elements.
fn q6_k(data: &[u8], out: &mut [f32]) {
    for (b, y) in data
        .as_chunks::<210>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<256>().0)
    {
        let d = half_to_f32([b[208], b[209]]);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                let s = |k: usize| d * f32::from(sc[k] as i8);
                y[l] = s(is) * q1 as f32;
                y[l + 32] = s(is + 2) * q2 as f32;
                y[l + 64] = s(is + 4) * q3 as f32;
                y[l + 96] = s(is + 6) * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::GgufFile;
    use crate::gguf::testing::{f32s, fixture};

    /// Every supported type against gguf-py's numpy dequantizers on random blocks (see
    /// `scripts/fixtures_gguf.py`): bit-identical, including the signs of zeros.
    #[test]
    fn matches_gguf_py_bit_for_bit() {
        let f = GgufFile::open(fixture("quants.gguf.bin")).unwrap();
        let expected = std::fs::read(fixture("quants.expected.safetensors")).unwrap();
        let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
        let mut checked = 0;
        for info in f.tensors() {
            if !is_supported(info.ggml_type) {
                assert_eq!(info.ggml_type, GgmlType::Q2_K);
                continue;
            }
            let ours = f.tensor_f32(&info.name).unwrap();
            let want = f32s(expected.tensor(&info.name).unwrap().data());
            assert_eq!(ours.len(), want.len(), "{}", info.name);
            for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{} [{i}]: {a} vs {b}", info.name);
            }
            checked += 1;
        }
        assert_eq!(checked, 11);
    }

    /// Hand-derived values, one block each.
    #[test]
    fn golden_blocks() {
        // Q4_0: d = 0.5 (f16 0x3800); qs[0] = 0x1F → element 0 = (0xF - 8) * 0.5 = 3.5 and
        // element 16 = (0x1 - 8) * 0.5 = -3.5; all other nibbles 8 → 0.
        let mut b = vec![0x00, 0x38];
        b.extend([0x88; 16]);
        b[2] = 0x1F;
        let mut y = [1.0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1], y[31]), (3.5, -3.5, 0.0, 0.0));

        // Q4_1: d = 2 (0x4000), m = -1 (0xBC00); q = 3 → 3 * 2 - 1 = 5.
        let mut b = vec![0x00, 0x40, 0x00, 0xBC];
        b.extend([0x33; 16]);
        dequantize(GgmlType::Q4_1, &b, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 5.0));

        // Q5_0: d = 1; element 31 has high bit 1 (qh bit 31) and nibble 0xF → (31 - 16) = 15;
        // element 0 has nibble 0, high bit 0 → -16.
        let mut b = vec![0x00, 0x3C, 0x00, 0x00, 0x00, 0x80];
        b.extend([0xF0; 16]);
        dequantize(GgmlType::Q5_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[31]), (-16.0, -1.0, 15.0));

        // Q8_0: d = 2, q = -3 → -6.
        let mut b = vec![0x00, 0x40];
        b.extend([(-3i8) as u8; 32]);
        dequantize(GgmlType::Q8_0, &b, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == -6.0));

        // BF16 0x3FC0 is 1.5; F16 0x3E00 is 1.5.
        let mut one = [0.0f32; 1];
        dequantize(GgmlType::BF16, &[0xC0, 0x3F], &mut one).unwrap();
        assert_eq!(one[0], 1.5);
        dequantize(GgmlType::F16, &[0x00, 0x3E], &mut one).unwrap();
        assert_eq!(one[0], 1.5);

        assert_eq!(
            dequantize(GgmlType::Q2_K, &[0; 84], &mut [0.0; 256]),
            Err(GgmlType::Q2_K)
        );
    }

    /// The threaded path gives what one kernel call over the whole buffer gives.
    #[test]
    fn threads_do_not_change_results() {
        let n_blocks = 4 * PARALLEL_MIN_ELEMENTS / 256 + 3;
        let mut state = 1u32;
        let mut data: Vec<u8> = (0..n_blocks * 210)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        for b in data.chunks_mut(210) {
            b[208..210].copy_from_slice(&[0x00, 0x3C]); // d = 1, keeps values finite
        }
        let mut serial = vec![0.0; n_blocks * 256];
        q6_k(&data, &mut serial);
        let mut threaded = vec![0.0; n_blocks * 256];
        dequantize(GgmlType::Q6_K, &data, &mut threaded).unwrap();
        assert_eq!(serial, threaded);
    }
}
