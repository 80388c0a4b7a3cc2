//! Parity with transformers on tiny random models (fixtures from
//! scripts/fixtures_model.py): logits within 1e-4, identical greedy tokens,
//! padding invariance, bit-identical save → load round trip.

use std::path::{Path, PathBuf};

use alignkit_model::checkpoint::named_tensors;
use alignkit_model::parity::{Fixture, max_abs_diff};
use alignkit_model::{SaveDtype, load_model, save_model};
use burn::backend::Flex;

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Logits at real positions within 1e-4 of transformers' (per batch: each
/// sequence alone, then left- and right-padded batches), transformers' greedy
/// tokens, and the decode layout (contiguous weight copies) changing nothing.
fn check_fixture(name: &str) {
    let device = Default::default();
    let (_config, model) = load_model::<B>(&fixture(name), &device).unwrap();
    let f = Fixture::read(&fixture(name)).unwrap();
    let got = f.logits(&model, &device).unwrap();
    assert_eq!(got.len(), f.expected.len());
    for (i, (a, b)) in got.iter().zip(&f.expected).enumerate() {
        let d = max_abs_diff(std::slice::from_ref(a), std::slice::from_ref(b));
        assert!(d <= 1e-4, "{name}: batch {i}: max |Δlogit| = {d}");
    }
    assert_eq!(
        f.greedy(&model, &device).unwrap(),
        f.greedy,
        "{name}: greedy tokens differ from transformers"
    );

    let fast = model.clone().for_decoding();
    assert_eq!(
        f.greedy(&fast, &device).unwrap(),
        f.greedy,
        "{name}: for_decoding changed greedy tokens"
    );
    let d = max_abs_diff(&f.logits(&fast, &device).unwrap(), &got);
    assert!(d <= 1e-5, "{name}: for_decoding changed logits by {d}");
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

/// Per-head q/k RMSNorm, head_dim 16 with hidden 32 and 4 heads, tied
/// embeddings.
#[test]
fn qwen3_matches_transformers() {
    check_fixture("qwen3");
}

/// Layer 1 is a NoPE layer (`no_rope_layers = [1, 0]`).
#[test]
fn smollm3_with_a_nope_layer_matches_transformers() {
    check_fixture("smollm3");
}

/// Post-norm blocks, q/k RMSNorm over the whole projections.
#[test]
fn olmo2_matches_transformers() {
    check_fixture("olmo2");
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
    for name in [
        "llama",
        "llama-tied",
        "qwen2",
        "llama3-scaled",
        "qwen3",
        "smollm3",
        "olmo2",
    ] {
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
