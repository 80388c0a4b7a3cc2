//! Each newer family (Qwen3, SmolLM3, OLMo 2, Gemma 3, Phi-3) through the
//! whole chain a user runs: LoRA SFT, DPO on the SFT model, a merged export
//! and a PEFT adapter, the merged model loaded back with its family's config (tiny random models; their
//! numerics against transformers and PEFT are model/tests/parity.rs and
//! sft/tests/sft_lora_interop.rs).

mod common;

use alignkit_model::{LlamaConfig, ModelType};
use common::{alignkit, ok, tiny_model_of, write_qa_prefs, write_qa_sft};

#[test]
fn newer_families_run_sft_then_dpo_then_export() {
    let tmp = tempfile::tempdir().unwrap();
    let (sft_data, prefs) = (tmp.path().join("sft.jsonl"), tmp.path().join("prefs.jsonl"));
    write_qa_sft(&sft_data);
    write_qa_prefs(&prefs);
    for family in [
        ModelType::Qwen3,
        ModelType::Smollm3,
        ModelType::Olmo2,
        ModelType::Gemma3,
        ModelType::Phi3,
    ] {
        let name = family.as_str();
        let model = tiny_model_of(&tmp.path().join(format!("{name}-model")), family);
        let dir = |what: &str| tmp.path().join(format!("{name}-{what}"));
        let path = |p: &std::path::Path| p.display().to_string();
        let train =
            |kind: &str, model: &std::path::Path, data: &std::path::Path, run: &std::path::Path| {
                let mut args: Vec<String> = vec![
                    kind.into(),
                    "--model".into(),
                    path(model),
                    "--train-file".into(),
                    path(data),
                    "--output-dir".into(),
                    path(run),
                    "--max-steps".into(),
                    "2".into(),
                    "--batch-size".into(),
                    "2".into(),
                    "--set".into(),
                    "learning_rate=0.01".into(),
                ];
                if kind == "sft" {
                    args.extend(["--lora-r".into(), "4".into()]);
                }
                ok(&alignkit(args));
            };
        train("sft", &model, &sft_data, &dir("sft"));
        let sft_final = dir("sft").join("final");
        train("dpo", &sft_final, &prefs, &dir("dpo"));
        let merged = dir("merged");
        for (flag, out) in [("--merged", &merged), ("--adapter", &dir("adapter"))] {
            ok(&alignkit([
                "export".to_string(),
                path(&dir("sft")),
                flag.into(),
                path(out),
            ]));
        }
        let config = LlamaConfig::load(&merged.join("config.json")).unwrap();
        assert_eq!(config.model_type, family, "{name}");
        assert!(dir("adapter").join("adapter_model.safetensors").is_file());
        // Phi-3's checkpoints and PEFT adapters use its fused projections.
        let fused = family == ModelType::Phi3;
        let peft = std::fs::read_to_string(dir("adapter").join("adapter_config.json")).unwrap();
        assert_eq!(peft.contains("qkv_proj"), fused, "{name}: {peft}");
        let weights = std::fs::read(merged.join("model.safetensors")).unwrap();
        let has = |needle: &str| {
            weights
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        assert_eq!(
            (has("gate_up_proj"), has("q_proj")),
            (fused, !fused),
            "{name}: merged tensor names"
        );
        let dpo_final = LlamaConfig::load(&dir("dpo").join("final/config.json")).unwrap();
        assert_eq!(dpo_final.model_type, family, "{name}");
        assert_eq!(dpo_final.rope_layers, config.rope_layers, "{name}");
        // Gemma 3's sliding layers, their RoPE base, GeGLU and score scale too.
        let tiny = LlamaConfig::tiny(family);
        for c in [&config, &dpo_final] {
            assert_eq!(
                (&c.sliding, c.sliding_window, c.local_rope_theta),
                (&tiny.sliding, tiny.sliding_window, tiny.local_rope_theta),
                "{name}"
            );
            assert_eq!(
                (c.activation, c.attention_scale),
                (tiny.activation, tiny.attention_scale),
                "{name}"
            );
        }
    }
}

/// A llama.cpp GGUF of each newer family (the tiny fixtures of
/// model/tests/fixtures/gguf) imports into a directory that the other
/// commands load as that family: the per-token log-probs of a completion
/// are finite and below zero.
#[test]
fn gguf_of_each_family_imports_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/gguf");
    for (family, model_type) in [
        ("qwen2", ModelType::Qwen2),
        ("qwen3", ModelType::Qwen3),
        ("olmo2", ModelType::Olmo2),
        ("gemma3", ModelType::Gemma3),
        ("phi3", ModelType::Phi3),
        ("smollm3", ModelType::Smollm3),
    ] {
        let gguf = fixtures.join(format!("tiny-{family}.gguf.bin"));
        let out = tmp.path().join(family);
        ok(&alignkit([
            "import-gguf",
            gguf.to_str().unwrap(),
            out.to_str().unwrap(),
        ]));
        let config = LlamaConfig::load(&out.join("config.json")).unwrap();
        assert_eq!(config.model_type, model_type, "{family}");
        let (stdout, _) = ok(&alignkit([
            "logprobs",
            "--model",
            out.to_str().unwrap(),
            "--prompt",
            "Hello",
            "--completion",
            " world",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let logps: Vec<f64> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        assert!(!logps.is_empty(), "{family}: {stdout}");
        assert!(
            logps.iter().all(|l| l.is_finite() && *l < 0.0),
            "{family}: {logps:?}"
        );
    }
}
