//! Interop with PEFT and transformers on committed fixtures.
//!
//! `sft/tests/fixtures/lora/` holds, over the tiny Qwen2 of the model parity
//! fixtures (`model/tests/fixtures/qwen2`, which has q/k/v biases), and
//! `lora-qwen3/`, `lora-smollm3/`, `lora-olmo2/`, `lora-gemma3/` over those
//! families' fixtures (q/k norms, a NoPE layer, post-norms, Gemma 3's offset
//! sandwich norms, GeGLU and sliding layers), and `lora-phi3/` (Phi-3's fused
//! `qkv_proj` / `gate_up_proj`: the adapters of their parts exported as one
//! of the summed rank, with PEFT's `rank_pattern` / `alpha_pattern`):
//! - `adapter/`: a LoRA adapter exported by alignkit (PEFT layout),
//! - `merged/`: the same adapter merged by alignkit (HF layout),
//! - `alignkit_logits.json`: alignkit's logits for both,
//! - `reference_logits.json`: the logits PEFT computes with `adapter/` on the
//!   base, transformers with `merged/`, and PEFT's own `merge_and_unload`.
//!
//! Regenerate: `cargo test -p alignkit-sft --test sft_lora_interop -- --ignored`
//! (writes the alignkit files), then `python scripts/fixtures_lora.py`.

use std::path::{Path, PathBuf};

use alignkit_model::lora::{self, LoraConfig};
use alignkit_model::mask::attention_mask;
use alignkit_model::{ForwardInput, LlamaForCausalLM, SaveDtype, load_model, save_model};
use burn::backend::Flex;
use burn::module::{ModuleMapper, Param};
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::{Value, json};

type B = Flex;

/// (fixture folder under sft/tests/fixtures, base model fixture under
/// model/tests/fixtures).
const FAMILIES: [(&str, &str); 6] = [
    ("lora", "qwen2"),
    ("lora-qwen3", "qwen3"),
    ("lora-smollm3", "smollm3"),
    ("lora-olmo2", "olmo2"),
    ("lora-gemma3", "gemma3"),
    ("lora-phi3", "phi3"),
];

fn root(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture)
}

fn base_dir(base: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(base)
}

const INPUT_IDS: [i64; 10] = [5, 17, 99, 3, 42, 64, 8, 120, 31, 77];

fn logits(model: &LlamaForCausalLM<B>) -> Vec<Vec<f32>> {
    let device = Default::default();
    let n = INPUT_IDS.len();
    let input = ForwardInput {
        input_ids: Tensor::<B, 2, Int>::from_data(
            TensorData::new(INPUT_IDS.to_vec(), [1, n]),
            &device,
        ),
        positions: Tensor::<B, 2, Int>::from_data(
            TensorData::new((0..n as i64).collect::<Vec<_>>(), [1, n]),
            &device,
        ),
        mask: attention_mask(&[vec![true; n]], n, None, &device),
    };
    let out = model.forward(input, None);
    let v = out.dims()[2];
    let flat: Vec<f32> = out.into_data().to_vec().unwrap();
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[Vec<f32>], b: &Value) -> f32 {
    let b: Vec<Vec<f32>> = serde_json::from_value(b.clone()).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// alignkit's adapter on the base, through PEFT, gives alignkit's logits;
/// alignkit's merged export, through transformers, gives them too; for
/// every family.
#[test]
fn peft_and_transformers_reproduce_alignkit_logits() {
    let device = Default::default();
    for (fixture, base_name) in FAMILIES {
        let root = root(fixture);
        let reference = read(&root.join("reference_logits.json"));
        let (_, base) = load_model::<B>(&base_dir(base_name), &device).unwrap();
        let (_, adapted) = lora::load_adapter(base, &root.join("adapter"), &device).unwrap();
        let ours = logits(&adapted);
        let d_peft = max_diff(&ours, &reference["peft"]);
        assert!(
            d_peft < 1e-4,
            "{fixture}: PEFT vs alignkit adapter logits: {d_peft}"
        );
        let (_, merged) = load_model::<B>(&root.join("merged"), &device).unwrap();
        let d_merged = max_diff(&logits(&merged), &reference["transformers_merged"]);
        assert!(
            d_merged < 1e-4,
            "{fixture}: transformers vs alignkit merged logits: {d_merged}"
        );
        let d_peft_merge = max_diff(&ours, &reference["peft_merge_and_unload"]);
        assert!(
            d_peft_merge < 1e-4,
            "{fixture}: PEFT merge_and_unload vs alignkit: {d_peft_merge}"
        );
        // The adapter matters: it moves the logits far more than the tolerance.
        let moved = max_diff(&ours, &reference["base"]);
        assert!(moved > 1e-1, "{fixture}: adapter effect {moved}");
    }
}

/// Writes the alignkit half of the fixtures.
#[test]
#[ignore = "regenerates committed fixtures"]
fn write_lora_fixture() {
    struct Fill(u64);
    impl ModuleMapper<B> for Fill {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            // A and B both non-trivial (B is zero after init), from a fixed LCG.
            let (id, t, mapper) = p.consume();
            let shape = t.shape();
            let v: Vec<f32> = (0..shape.num_elements())
                .map(|_| {
                    self.0 = self
                        .0
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
                })
                .collect();
            Param::from_mapped_value(
                id,
                Tensor::from_data(TensorData::new(v, shape), &t.device()),
                mapper,
            )
        }
    }
    let device = Default::default();
    for (fixture, base_name) in FAMILIES {
        let (config, base) = load_model::<B>(&base_dir(base_name), &device).unwrap();
        let base_logits = logits(&base);
        let lora_config = LoraConfig {
            r: 4,
            alpha: 8.0,
            rslora: true,
            ..Default::default()
        };
        let adapted = lora::attach(base, &lora_config, 1, &device).unwrap();
        let adapted = lora::map_adapters(adapted, &mut Fill(7));
        let out = root(fixture);
        std::fs::create_dir_all(&out).unwrap();
        lora::export_adapter(
            &adapted,
            &lora_config,
            &config,
            &format!("model/tests/fixtures/{base_name}"),
            &out.join("adapter"),
            SaveDtype::F32,
        )
        .unwrap();
        let adapter_logits = logits(&adapted);
        let merged = lora::merge(adapted);
        save_model(&merged, &config, &out.join("merged"), SaveDtype::F32).unwrap();
        let record = json!({
            "input_ids": INPUT_IDS,
            "base": base_logits,
            "adapter": adapter_logits,
            "merged": logits(&merged),
        });
        std::fs::write(out.join("alignkit_logits.json"), record.to_string()).unwrap();
    }
}
