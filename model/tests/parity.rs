//! Parity with transformers on tiny random models (fixtures from
//! scripts/fixtures_model.py): logits within 1e-4, identical greedy tokens,
//! padding invariance, bit-identical save → load round trip.

use std::path::{Path, PathBuf};

use alignkit_model::checkpoint::named_tensors;
use alignkit_model::mask::{attention_mask, positions_from_mask};
use alignkit_model::{
    ForwardInput, LlamaForCausalLM, SamplingConfig, SaveDtype, generate, load_model, save_model,
};
use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn flat(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(items) => items.iter().for_each(|x| flat(x, out)),
        x => out.push(x.as_f64().unwrap() as f32),
    }
}

/// Logits [B, T, V] as a flat vector for a (possibly padded) batch.
fn logits(model: &LlamaForCausalLM<B>, rows: &[Vec<u32>], valid: &[Vec<bool>]) -> Vec<f32> {
    let device = Default::default();
    let (b, t) = (rows.len(), rows[0].len());
    let flat_ids: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    let positions: Vec<i64> = positions_from_mask(valid).concat();
    let input = ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(flat_ids, [b, t]), &device),
        positions: Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, t]), &device),
        mask: attention_mask::<B>(valid, t, None, &device),
    };
    model
        .forward(input, None)
        .into_data()
        .into_vec::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_fixture(name: &str) {
    let device = Default::default();
    let (_config, model) = load_model::<B>(&fixture(name), &device).unwrap();
    let exp = expected(name);
    let seqs: Vec<Vec<u32>> = exp["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();

    for (i, seq) in seqs.iter().enumerate() {
        let got = logits(&model, std::slice::from_ref(seq), &[vec![true; seq.len()]]);
        let mut want = Vec::new();
        flat(&exp["logits"][i], &mut want);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "{name}: sequence {i}: max |Δlogit| = {d}");
    }

    for side in ["left_padded", "right_padded"] {
        let e = &exp[side];
        let rows: Vec<Vec<u32>> = e["input_ids"].as_array().unwrap().iter().map(ids).collect();
        let valid: Vec<Vec<bool>> = e["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ids(m).into_iter().map(|x| x == 1).collect())
            .collect();
        let got = logits(&model, &rows, &valid);
        let mut want = Vec::new();
        flat(&e["logits"], &mut want);
        let v = model.model.embed_tokens.weight.dims()[0];
        let t = rows[0].len();
        // Padded positions' logits are meaningless; compare real tokens only.
        for (r, mask) in valid.iter().enumerate() {
            for (p, &real) in mask.iter().enumerate() {
                if real {
                    let off = (r * t + p) * v;
                    let d = max_abs_diff(&got[off..off + v], &want[off..off + v]);
                    assert!(
                        d <= 1e-4,
                        "{name}: {side}: row {r} pos {p}: max |Δlogit| = {d}"
                    );
                }
            }
        }
    }

    let prompt = ids(&exp["greedy"]["prompt"]);
    let want = ids(&exp["greedy"]["tokens"]);
    let config = SamplingConfig {
        max_new_tokens: want.len(),
        ..SamplingConfig::default()
    };
    let out = generate(
        &model,
        std::slice::from_ref(&prompt),
        &[],
        0,
        &config,
        |_, _| false,
        &device,
    )
    .unwrap();
    assert_eq!(
        out[0].tokens, want,
        "{name}: greedy tokens differ from transformers"
    );

    // The decode layout (contiguous weight copies) changes speed, not results.
    let fast = model.clone().for_decoding();
    let out = generate(&fast, &[prompt], &[], 0, &config, |_, _| false, &device).unwrap();
    assert_eq!(
        out[0].tokens, want,
        "{name}: for_decoding changed greedy tokens"
    );
    let seq = &seqs[0];
    let a = logits(&model, std::slice::from_ref(seq), &[vec![true; seq.len()]]);
    let b = logits(&fast, std::slice::from_ref(seq), &[vec![true; seq.len()]]);
    assert!(
        max_abs_diff(&a, &b) <= 1e-5,
        "{name}: for_decoding changed logits"
    );
}

#[test]
fn llama_matches_transformers() {
    check_fixture("llama");
}

#[test]
fn tied_llama_matches_transformers() {
    check_fixture("llama-tied");
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    check_fixture("llama3-scaled");
}

#[test]
fn qwen2_with_biases_matches_transformers() {
    check_fixture("qwen2");
}

#[test]
fn mistral_matches_transformers() {
    check_fixture("mistral");
}

#[test]
fn sharded_bf16_checkpoint_matches_transformers() {
    check_fixture("qwen2-bf16-sharded");
}

#[test]
fn f16_checkpoint_matches_transformers() {
    check_fixture("llama-f16");
}

#[test]
fn save_then_load_is_bit_identical() {
    let device = Default::default();
    for name in ["llama", "llama-tied", "qwen2", "llama3-scaled"] {
        let (config, model) = load_model::<B>(&fixture(name), &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_model(&model, &config, dir.path(), SaveDtype::F32).unwrap();
        let (config2, model2) = load_model::<B>(dir.path(), &device).unwrap();
        assert_eq!(
            config.to_json(),
            config2.to_json(),
            "{name}: config changed"
        );
        let a = named_tensors::<B, _>(&model);
        let b = named_tensors::<B, _>(&model2);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, (shape, data)) in &a {
            let (shape2, data2) = &b[k];
            assert_eq!(shape, shape2, "{name}: {k}");
            let bits: Vec<u32> = data.iter().map(|x| x.to_bits()).collect();
            let bits2: Vec<u32> = data2.iter().map(|x| x.to_bits()).collect();
            assert!(bits == bits2, "{name}: {k} not bit-identical");
        }
    }
}
