//! bitsandbytes parity for 4-bit quantization (issue 36): every case in
//! `fixtures/nf4/cases.safetensors` (written by `scripts/fixtures_nf4.py` with bitsandbytes
//! 0.50.2 on the CPU) must come out of `alignkit_model::quant` bit for bit: packed codes,
//! absmax (or the double-quantized codes, second-level absmax and offset) and the
//! dequantized weight.

use std::path::PathBuf;

use alignkit_model::quant::{
    self, Absmax, DYNAMIC_MAP, QuantError, QuantType, Quantized4, quantize,
};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

#[derive(Deserialize)]
struct Meta {
    cases: Vec<Case>,
    blockwise_lengths: Vec<usize>,
    mean_lengths: Vec<usize>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    matrix: String,
    shape: [usize; 2],
    quant_type: String,
    blocksize: usize,
    double: bool,
}

struct Fixture {
    bytes: Vec<u8>,
    meta: Meta,
}

impl Fixture {
    fn load() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4");
        let bytes = std::fs::read(dir.join("cases.safetensors")).expect("cases.safetensors");
        let meta = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
        let meta = serde_json::from_str(&meta).expect("cases.json parses");
        Fixture { bytes, meta }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let tensors = self.tensors();
        let view = tensors
            .tensor(name)
            .unwrap_or_else(|_| panic!("tensor {name}"));
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    fn u8s(&self, name: &str) -> Vec<u8> {
        let tensors = self.tensors();
        let view = tensors
            .tensor(name)
            .unwrap_or_else(|_| panic!("tensor {name}"));
        assert_eq!(view.dtype(), Dtype::U8, "{name}");
        view.data().to_vec()
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.tensors().tensor(name).expect(name).shape().to_vec()
    }
}

fn kind(name: &str) -> QuantType {
    match name {
        "nf4" => QuantType::Nf4,
        "fp4" => QuantType::Fp4,
        other => panic!("unknown quant_type {other}"),
    }
}

/// Asserts two f32 slices hold the same bits, naming the first difference.
fn assert_bits(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
        panic!(
            "{what}[{i}]: alignkit {:e} ({:#010x}), bitsandbytes {:e} ({:#010x})",
            ours[i],
            ours[i].to_bits(),
            theirs[i],
            theirs[i].to_bits()
        );
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn quantize_case(fixture: &Fixture, case: &Case) -> Quantized4 {
    let weight = fixture.f32s(&format!("{}.weight", case.matrix));
    quantize(
        &weight,
        case.shape,
        kind(&case.quant_type),
        case.blocksize,
        case.double,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

#[test]
fn quantize_4bit_matches_bitsandbytes_bit_for_bit() {
    let fixture = Fixture::load();
    assert!(fixture.meta.cases.len() >= 8);
    for case in &fixture.meta.cases {
        let name = &case.name;
        let q = quantize_case(&fixture, case);
        let n = case.shape[0] * case.shape[1];
        assert_eq!(
            fixture.shape(&format!("{name}.packed")),
            [n / 2, 1],
            "{name}"
        );
        assert!(
            q.packed == fixture.u8s(&format!("{name}.packed")),
            "{name}: packed codes differ"
        );
        match (&q.absmax, case.double) {
            (Absmax::Plain(absmax), false) => {
                assert_bits(
                    &format!("{name}.absmax"),
                    absmax,
                    &fixture.f32s(&format!("{name}.absmax")),
                );
            }
            (
                Absmax::Double {
                    codes,
                    absmax2,
                    offset,
                    blocksize2,
                },
                true,
            ) => {
                assert_eq!(*blocksize2, 256);
                assert_bits(
                    &format!("{name}.offset"),
                    &[*offset],
                    &fixture.f32s(&format!("{name}.offset")),
                );
                assert_bits(
                    &format!("{name}.absmax2"),
                    absmax2,
                    &fixture.f32s(&format!("{name}.absmax2")),
                );
                assert!(
                    *codes == fixture.u8s(&format!("{name}.absmax_codes")),
                    "{name}: absmax codes differ"
                );
            }
            (absmax, double) => panic!("{name}: double = {double} but got {absmax:?}"),
        }
        assert_bits(
            &format!("{name}.dequantized"),
            &q.dequantize(),
            &fixture.f32s(&format!("{name}.dequantized")),
        );
    }
}

#[test]
fn dynamic_map_matches_bitsandbytes() {
    let fixture = Fixture::load();
    assert_bits("dynamic_map", &DYNAMIC_MAP, &fixture.f32s("dynamic_map"));
}

#[test]
fn blockwise_8bit_matches_bitsandbytes() {
    let fixture = Fixture::load();
    for (i, &len) in fixture.meta.blockwise_lengths.iter().enumerate() {
        let input = fixture.f32s(&format!("blockwise.{i}.input"));
        assert_eq!(input.len(), len);
        let (codes, absmax) = quant::quantize_blockwise(&input, 256);
        assert!(
            codes == fixture.u8s(&format!("blockwise.{i}.codes")),
            "blockwise.{i}: codes differ"
        );
        assert_bits(
            &format!("blockwise.{i}.absmax"),
            &absmax,
            &fixture.f32s(&format!("blockwise.{i}.absmax")),
        );
        assert_bits(
            &format!("blockwise.{i}.dequantized"),
            &quant::dequantize_blockwise(&codes, &absmax, 256),
            &fixture.f32s(&format!("blockwise.{i}.dequantized")),
        );
    }
}

#[test]
fn mean_matches_torch() {
    let fixture = Fixture::load();
    for (i, &len) in fixture.meta.mean_lengths.iter().enumerate() {
        let input = fixture.f32s(&format!("mean.{i}.input"));
        assert_eq!(input.len(), len);
        assert_bits(
            &format!("mean.{i} (n = {len})"),
            &[quant::torch_mean(&input)],
            &fixture.f32s(&format!("mean.{i}.mean")),
        );
    }
    // The same values summed left to right differ somewhere: the order matters.
    let differs = fixture
        .meta
        .mean_lengths
        .iter()
        .enumerate()
        .any(|(i, &len)| {
            let input = fixture.f32s(&format!("mean.{i}.input"));
            let naive = input.iter().fold(0.0f32, |s, v| s + v) / len as f32;
            naive.to_bits() != quant::torch_mean(&input).to_bits()
        });
    assert!(
        differs,
        "no case tells torch's summation order from a plain loop"
    );
}

/// Negative controls: the comparison above must catch a wrong nibble order, the wrong code
/// table, or a double-quantization offset one ulp off.
#[test]
fn wrong_variants_fail_the_comparison() {
    let fixture = Fixture::load();
    let case = fixture
        .meta
        .cases
        .iter()
        .find(|c| c.quant_type == "nf4" && !c.double)
        .expect("a plain NF4 case");
    let name = &case.name;
    let q = quantize_case(&fixture, case);
    let packed = fixture.u8s(&format!("{name}.packed"));
    let dequantized = fixture.f32s(&format!("{name}.dequantized"));

    let swapped: Vec<u8> = q.packed.iter().map(|b| b.rotate_left(4)).collect();
    assert!(
        swapped != packed,
        "swapping the nibbles must change the bytes"
    );
    let swapped = Quantized4 {
        packed: swapped,
        ..q.clone()
    };
    assert!(!same_bits(&swapped.dequantize(), &dequantized));

    let fp4_table = Quantized4 {
        kind: QuantType::Fp4,
        ..q.clone()
    };
    assert!(!same_bits(&fp4_table.dequantize(), &dequantized));

    let weight = fixture.f32s(&format!("{}.weight", case.matrix));
    let fp4 = quantize(&weight, case.shape, QuantType::Fp4, case.blocksize, false).unwrap();
    assert!(fp4.packed != packed, "FP4 codes must differ from NF4's");

    // An offset one ulp away must show in the dequantized weight.
    let case = fixture.meta.cases.iter().find(|c| c.double).unwrap();
    let mut q = quantize_case(&fixture, case);
    let Absmax::Double { offset, .. } = &mut q.absmax else {
        unreachable!("a double-quantized case")
    };
    *offset = f32::from_bits(offset.to_bits() + 1);
    let dequantized = fixture.f32s(&format!("{}.dequantized", case.name));
    assert!(!same_bits(&q.dequantize(), &dequantized));
}

#[test]
fn double_quantized_absmax_is_close_to_plain() {
    let fixture = Fixture::load();
    let case = fixture.meta.cases.iter().find(|c| c.double).unwrap();
    let weight = fixture.f32s(&format!("{}.weight", case.matrix));
    let kind = kind(&case.quant_type);
    let plain = quantize(&weight, case.shape, kind, case.blocksize, false).unwrap();
    let double = quantize(&weight, case.shape, kind, case.blocksize, true).unwrap();
    assert_eq!(
        plain.packed, double.packed,
        "the 4-bit codes do not depend on it"
    );
    let exact = plain.absmax.values();
    let approx = double.absmax.values();
    let largest = exact.iter().fold(0.0f32, |m, a| m.max(*a));
    for (e, a) in exact.iter().zip(&approx) {
        // 8-bit dynamic codes near the top of the range are ~1% apart.
        assert!((e - a).abs() <= 0.02 * largest, "{e} vs {a}");
    }
}

#[test]
fn rejects_bad_inputs_with_clear_errors() {
    let w = vec![0.5f32; 128];
    assert_eq!(
        quantize(&w, [2, 65], QuantType::Nf4, 64, false),
        Err(QuantError::Shape {
            shape: [2, 65],
            expected: 130,
            len: 128
        })
    );
    assert_eq!(
        quantize(&w[..63], [1, 63], QuantType::Nf4, 64, false),
        Err(QuantError::OddLength {
            shape: [1, 63],
            len: 63
        })
    );
    assert_eq!(
        quantize(&w, [2, 64], QuantType::Nf4, 48, false),
        Err(QuantError::BlockSize { blocksize: 48 })
    );
    assert_eq!(
        quantize(&w[..96], [1, 96], QuantType::Nf4, 64, false),
        Err(QuantError::Indivisible {
            shape: [1, 96],
            blocksize: 64,
            len: 96
        })
    );
    assert_eq!(
        quantize(&[], [0, 64], QuantType::Fp4, 64, true),
        Err(QuantError::Empty { shape: [0, 64] })
    );
    let mut bad = w.clone();
    bad[64 + 3] = f32::NAN;
    let err = quantize(&bad, [2, 64], QuantType::Nf4, 64, false).unwrap_err();
    assert!(
        matches!(err, QuantError::NonFinite { row: 1, col: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("weight[1][3]"), "{err}");
    bad[64 + 3] = f32::NEG_INFINITY;
    assert!(quantize(&bad, [2, 64], QuantType::Nf4, 64, true).is_err());
}
