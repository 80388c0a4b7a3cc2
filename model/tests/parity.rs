//! Parity with transformers on tiny random models (fixtures from
//! scripts/fixtures_model.py): logits within 1e-4, identical greedy tokens,
//! padding invariance, bit-identical save → load round trip, and per family
//! a PEFT LoRA's per-token log-probs, loss and adapter gradients.

use std::path::{Path, PathBuf};

use alignkit_model::checkpoint::named_tensors;
use alignkit_model::logprobs::sequence_logprobs;
use alignkit_model::lora::{FUSED_TARGETS, load_adapter, peft_gradients};
use alignkit_model::mask::attention_mask;
use alignkit_model::parity::{Fixture, max_abs_diff};
use alignkit_model::{ForwardInput, SaveDtype, load_model, save_model};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};

type B = Flex;
type Ad = Autodiff<Flex>;

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
fn gemma3_matches_transformers() {
    check_fixture("gemma3");
}

/// Qwen3 with its sliding window on from layer 1 (`max_window_layers`).
#[test]
fn qwen3_with_a_sliding_window_matches_transformers() {
    check_fixture("qwen3-sliding");
}

/// Gemma 3 from 4B up (`Gemma3ForConditionalGeneration`): the text model
/// out of `text_config` and `language_model.model.*`, the vision tower left
/// out; saved back, it is a text-only `gemma3_text` that loads the same.
#[test]
fn gemma3_image_text_checkpoint_loads_its_text_model() {
    check_fixture("gemma3-vision");
    let device = Default::default();
    let (config, model) = load_model::<B>(&fixture("gemma3-vision"), &device).unwrap();
    assert_eq!(config.model_type.as_str(), "gemma3_text");
    let dir = tempfile::tempdir().unwrap();
    save_model(&model, &config, dir.path(), SaveDtype::F32).unwrap();
    let (again, reloaded) = load_model::<B>(dir.path(), &device).unwrap();
    assert_eq!(again.to_json()["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(
        named_tensors::<B, _>(&model),
        named_tensors::<B, _>(&reloaded)
    );
}

/// Fused qkv_proj / gate_up_proj split at load, LongRoPE switching to its
/// long factors past the original context, a sliding window on every layer.
#[test]
fn phi3_matches_transformers() {
    check_fixture("phi3");
}

/// A PEFT LoRA (r 4 on every projection, random A and B) loaded onto the
/// fixture: the per-token log-probs, their mean NLL and its gradient with
/// respect to every adapter matrix equal PyTorch's within 1e-4 (relative to
/// the gradient's largest entry).
fn check_lora_gradient(name: &str) {
    let device = Default::default();
    let dir = fixture(name);
    let (_config, model) = load_model::<Ad>(&dir, &device).unwrap();
    let (_lora, model) = load_adapter(model.no_grad(), &dir.join("lora"), &device).unwrap();
    let text = std::fs::read_to_string(dir.join("lora/expected_grad.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let numbers = |v: &serde_json::Value| -> Vec<f32> {
        let mut out = Vec::new();
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
                other => out.push(other.as_f64().unwrap() as f32),
            }
        }
        out
    };
    let ids: Vec<i64> = numbers(&expected["input_ids"])
        .iter()
        .map(|&x| x as i64)
        .collect();
    let t = ids.len();
    let input = ForwardInput {
        input_ids: Tensor::<Ad, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device),
        positions: Tensor::arange(0..t as i64, &device).reshape([1, t]),
        mask: attention_mask(&[vec![true; t]], t, None, &device),
    };
    let logp = sequence_logprobs(&model, input);
    let got: Vec<f32> = logp.clone().into_data().into_vec().unwrap();
    let d = max_abs_diff(&[got], &[numbers(&expected["logprobs"])]);
    assert!(d <= 1e-4, "{name}: max |Δ log p| = {d}");
    let loss = logp.mean().neg();
    let value = loss.clone().into_scalar();
    let want = expected["loss"].as_f64().unwrap() as f32;
    assert!(
        (value - want).abs() <= 1e-4,
        "{name}: loss {value} vs {want}"
    );
    let grads = peft_gradients(&model, &loss.backward());
    let want = expected["grads"].as_object().unwrap();
    // PEFT trained the fused checkpoint's projections (Phi-3).
    let grads = match want.keys().any(|k| k.contains(".qkv_proj.")) {
        true => fused_gradients(grads),
        false => grads,
    };
    assert_eq!(
        grads.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{name}: adapter names"
    );
    for (key, (_, got)) in &grads {
        let want = numbers(&want[key]);
        let scale = want.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
        let d = max_abs_diff(std::slice::from_ref(got), &[want]);
        assert!(
            d <= 1e-4 * scale,
            "{name}: {key}: max |Δgrad| = {d} (largest {scale})"
        );
    }
}

/// The gradients of split adapters as those of the fused one they were
/// loaded from (Phi-3's `qkv_proj`, `gate_up_proj`): A is shared by the
/// parts, so its gradient is their sum; B's rows are the parts' stacked.
fn fused_gradients(mut grads: Grads) -> Grads {
    for (fused, parts) in FUSED_TARGETS {
        let layers: Vec<String> = grads
            .keys()
            .filter_map(|k| k.strip_suffix(&format!(".{}.lora_A.weight", parts[0])))
            .map(String::from)
            .collect();
        for prefix in layers {
            let mut a: Option<(Vec<usize>, Vec<f32>)> = None;
            let mut b: (Vec<usize>, Vec<f32>) = (vec![0, 0], Vec::new());
            for part in parts {
                let take = |grads: &mut Grads, m: &str| {
                    let key = format!("{prefix}.{part}.{m}.weight");
                    grads
                        .remove(&key)
                        .unwrap_or_else(|| panic!("{key}: no gradient"))
                };
                let (shape, ga) = take(&mut grads, "lora_A");
                a = Some(match a {
                    None => (shape, ga),
                    Some((s, sum)) => (s, sum.iter().zip(&ga).map(|(x, y)| x + y).collect()),
                });
                let (shape, gb) = take(&mut grads, "lora_B");
                b = (vec![b.0[0] + shape[0], shape[1]], [b.1, gb].concat());
            }
            grads.insert(format!("{prefix}.{fused}.lora_A.weight"), a.unwrap());
            grads.insert(format!("{prefix}.{fused}.lora_B.weight"), b);
        }
    }
    grads
}

type Grads = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;

#[test]
fn lora_gradients_match_peft_for_every_family() {
    for name in [
        "llama", "qwen2", "mistral", "qwen3", "smollm3", "olmo2", "gemma3", "phi3",
    ] {
        check_lora_gradient(name);
    }
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
        "gemma3",
        "qwen3-sliding",
        "phi3",
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
