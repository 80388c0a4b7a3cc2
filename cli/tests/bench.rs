//! `alignkit bench` on a tiny model: `--only` runs exactly the named sections,
//! the trainer steps train what they should (LoRA: adapters only), and the
//! PyTorch script gets the same sections and shapes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::tiny_model;

fn bench(model: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["bench", "--model"])
        .arg(model)
        .args(["--batch", "2", "--seq", "8", "--steps", "1"])
        .args(["--decode-tokens", "2", "--json"])
        .args(extra)
        .output()
        .unwrap()
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn only_runs_the_named_sections_and_lora_trains_adapters_only() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model(&root.path().join("m"));
    let v = json(&bench(
        &model,
        &["--only", "sft_full,sft_lora,dpo_full,dpo_lora"],
    ));
    let ours = &v["alignkit"];
    for skipped in ["forward_s", "train_step_s", "decode_tokens_per_s"] {
        assert!(ours[skipped].is_null(), "{skipped} ran: {v}");
    }
    assert!(v["pytorch"].is_null());
    for name in ["sft_full", "sft_lora", "dpo_full", "dpo_lora"] {
        let s = &ours[name];
        let step = s["step_s"].as_f64().unwrap();
        assert!(step > 0.0, "{name}: {s}");
        // 2 rows x 8 tokens per step.
        let tps = s["tokens_per_s"].as_f64().unwrap();
        assert!((tps * step - 16.0).abs() < 1e-6, "{name}: {s}");
    }
    let params = |name: &str| ours[name]["trainable_params"].as_u64().unwrap();
    assert_eq!(params("sft_full"), params("dpo_full"));
    assert_eq!(params("sft_lora"), params("dpo_lora"));
    // LlamaConfig::tiny: 2 layers, hidden 32, 4 heads / 2 KV heads of 8, MLP 64.
    // r = 16 on all seven projections: r · (in + out) each.
    let per_layer = 16 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32));
    assert_eq!(params("sft_lora"), 2 * per_layer);
    assert!(params("sft_full") > params("sft_lora"));

    let v = json(&bench(&model, &["--only", "forward"]));
    assert!(v["alignkit"]["forward_s"].as_f64().unwrap() > 0.0);
    assert!(v["alignkit"]["sft_full"].is_null());
    assert!(v["alignkit"]["decode_tokens_per_s"].is_null());
}

#[test]
fn odd_batch_is_refused_for_dpo_and_unknown_sections_by_name() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model(&root.path().join("m"));
    let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["bench", "--model"])
        .arg(&model)
        .args(["--batch", "3", "--seq", "8", "--steps", "1"])
        .args(["--only", "dpo_lora"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("even --batch"));
    let out = bench(&model, &["--only", "sft"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'sft'"));
}

/// Whether python3 runs here. CI sets ALIGNKIT_REQUIRE_PYTHON=1, so that
/// there a missing python3 fails instead of skipping.
fn python3() -> bool {
    let found = Command::new("python3").arg("--version").output().is_ok();
    let required = std::env::var("ALIGNKIT_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        found || !required,
        "ALIGNKIT_REQUIRE_PYTHON=1 but no python3"
    );
    if !found {
        eprintln!("skipped: no python3");
    }
    found
}

/// A stand-in for scripts/bench_torch.py that reports the arguments it got.
#[test]
fn torch_script_gets_the_same_sections_and_its_json_is_read() {
    if !python3() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model(&root.path().join("m"));
    let script = root.path().join("fake_torch.py");
    std::fs::write(
        &script,
        r#"import json, sys
a = sys.argv[1:]
assert a[a.index("--only") + 1] == "sft_lora", a
assert a[a.index("--batch") + 1] == "2" and a[a.index("--seq") + 1] == "8", a
print("loading...")
print(json.dumps({"forward_s": None, "sft_lora": {"step_s": 2.0, "tokens_per_s": 8.0,
      "trainable_params": 7}, "torch": "fake", "threads": 1}))
"#,
    )
    .unwrap();
    let args = ["--only", "sft_lora", "--torch", script.to_str().unwrap()];
    let v = json(&bench(&model, &args));
    assert_eq!(v["pytorch"]["sft_lora"]["step_s"], 2.0);
    assert_eq!(v["pytorch"]["torch"], "fake");
    assert!(v["alignkit"]["sft_lora"]["step_s"].as_f64().unwrap() > 0.0);

    // The table prints the ratio row for the section that ran on both sides.
    let table = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["bench", "--model"])
        .arg(&model)
        .args(["--batch", "2", "--seq", "8", "--steps", "1"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("sft lora step (s)"), "{text}");
    assert!(!text.contains("forward (s)"), "{text}");
    assert!(text.contains("trainable parameters"), "{text}");
}

/// Rollouts: every row samples all its tokens (the tiny model's EOS, id 2 of
/// 96, would end most of 400 sampled tokens' rows early if it counted), the
/// shorter prompt is left-padded, and the PyTorch script gets the same shape.
#[test]
fn rollout_samples_every_row_to_full_length_and_torch_gets_its_shape() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model(&root.path().join("m"));
    // 10 rows = prompt 0 (8 tokens) × 8 + prompt 1 (7 tokens) × 2.
    let shape = [
        "--rollout-rows",
        "10",
        "--rollout-prompt",
        "8",
        "--rollout-tokens",
        "40",
    ];
    let v = json(&bench(
        &model,
        &[&["--only", "rollout"][..], &shape].concat(),
    ));
    let r = &v["alignkit"]["rollout"];
    assert_eq!(r["rows"], 10, "{v}");
    assert_eq!(r["generated_tokens"], 400, "{v}");
    let secs = r["rollout_s"].as_f64().unwrap();
    assert!((r["tokens_per_s"].as_f64().unwrap() * secs - 400.0).abs() < 1e-6);
    for skipped in ["forward_s", "decode_tokens_per_s", "sft_full", "dpo_lora"] {
        assert!(v["alignkit"][skipped].is_null(), "{skipped} ran: {v}");
    }

    if !python3() {
        return;
    }
    let script = root.path().join("fake_torch.py");
    std::fs::write(
        &script,
        r#"import json, sys
a = sys.argv[1:]
arg = lambda k: a[a.index(k) + 1]
assert arg("--only") == "rollout", a
assert (arg("--rollout-rows"), arg("--rollout-prompt"), arg("--rollout-tokens")) == ("10", "8", "40"), a
print(json.dumps({"rollout": {"rollout_s": 4.0, "tokens_per_s": 100.0, "rows": 10,
      "generated_tokens": 400}, "torch": "fake", "threads": 1}))
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["bench", "--model"])
        .arg(&model)
        .args(["--steps", "1", "--only", "rollout", "--torch"])
        .arg(&script)
        .args(shape)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ratio = alignkit time / PyTorch time: on tokens/s, PyTorch's 100 / ours.
    let line = text
        .lines()
        .find(|l| l.starts_with("rollout (tokens/s)"))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<f64> = line
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(cols.len(), 3, "{line}");
    assert_eq!(cols[1], 100.0, "{line}");
    assert!(
        (cols[2] - 100.0 / cols[0]).abs() < 0.01 + 1e-3 * cols[2],
        "{line}"
    );
    assert!(text.contains("rollout (s)"), "{text}");
    assert!(text.contains("10 rows (8 per prompt)"), "{text}");
}

/// `--model-config`: random weights for a config.json, no model directory;
/// `--gradient-checkpointing` reaches both sides, lowers nothing but memory,
/// and each step section reports its peak memory.
#[test]
fn model_config_and_gradient_checkpointing() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model(&root.path().join("m"));
    let config = model.join("config.json");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
            .args(["bench", "--model-config"])
            .arg(&config)
            .args(["--batch", "2", "--seq", "8", "--steps", "1", "--json"])
            .args(["--only", "sft_full,dpo_lora"])
            .args(extra)
            .output()
            .unwrap();
        json(&out)
    };
    let selective = [
        "--gradient-checkpointing",
        "--recompute-granularity",
        "selective",
    ];
    for extra in [&[][..], &["--gradient-checkpointing"][..], &selective[..]] {
        let v = run(extra);
        for name in ["sft_full", "dpo_lora"] {
            let s = &v["alignkit"][name];
            assert!(s["step_s"].as_f64().unwrap() > 0.0, "{name}: {s}");
            if cfg!(target_os = "linux") {
                assert!(s["peak_rss_mb"].as_f64().unwrap() > 1.0, "{name}: {s}");
            }
        }
    }
    // The full model's parameter count is the config's, as with the directory.
    let from_dir = json(&bench(&model, &["--only", "sft_full"]));
    let from_config = run(&[]);
    assert_eq!(
        from_dir["alignkit"]["sft_full"]["trainable_params"],
        from_config["alignkit"]["sft_full"]["trainable_params"]
    );

    // The PyTorch script gets both flags.
    if Command::new("python3").arg("--version").output().is_err() {
        return;
    }
    let script = root.path().join("fake_torch.py");
    std::fs::write(
        &script,
        r#"import json, sys
a = sys.argv[1:]
assert "--model" not in a and a[a.index("--model-config") + 1].endswith("config.json"), a
assert "--gradient-checkpointing" in a, a
assert a[a.index("--recompute-granularity") + 1] == "selective", a
print(json.dumps({"sft_full": {"step_s": 1.0, "tokens_per_s": 16.0, "trainable_params": 1,
      "peak_rss_mb": 10.0}}))
"#,
    )
    .unwrap();
    let v = run(&[&selective[..], &["--torch", script.to_str().unwrap()]].concat());
    assert_eq!(v["pytorch"]["sft_full"]["peak_rss_mb"], 10.0);
    // The granularity means nothing without checkpointing: refused.
    let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["bench", "--model-config"])
        .arg(&config)
        .args(["--recompute-granularity", "selective"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gradient-checkpointing"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_alignkit"))
        .args(["bench", "--model"])
        .arg(&model)
        .arg("--model-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
