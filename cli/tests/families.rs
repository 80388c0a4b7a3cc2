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
