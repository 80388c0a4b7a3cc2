//! Bad input to the model commands: a one-line error naming the file and the
//! problem, a non-zero exit, and no panic.

use std::path::{Path, PathBuf};

mod common;
use common::{alignkit, ok, refused};

/// `alignkit ARGS` fails with one line holding each of `must_contain`.
fn assert_clean_error(args: &[&str], must_contain: &[&str]) {
    let line = refused(&alignkit(args));
    for needle in must_contain {
        assert!(
            line.contains(needle),
            "{args:?}: `{needle}` missing from: {line}"
        );
    }
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/llama")
}

/// A model dir with a real tokenizer and the tiny llama weights, so commands get
/// past tokenizer loading; `edit` then breaks one file.
fn model_dir(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_model().join(f), dir.path().join(f)).unwrap();
    }
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/tests/fixtures/smollm2");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.path().join(f)).unwrap();
    }
    edit(dir.path());
    dir
}

#[test]
fn missing_model_directory() {
    assert_clean_error(
        &[
            "logprobs",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "a",
            "--completion",
            "b",
        ],
        &["/nonexistent/model/config.json"],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = model_dir(|d| {
        let path = d.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    });
    let model = dir.path().to_str().unwrap();
    assert_clean_error(
        &[
            "logprobs",
            "--model",
            model,
            "--prompt",
            "a",
            "--completion",
            "b",
        ],
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn unknown_model_type() {
    let dir = model_dir(|d| {
        let path = d.join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"llama\"", "\"gpt_neox\"")).unwrap();
    });
    let model = dir.path().to_str().unwrap();
    assert_clean_error(
        &["generate", "--model", model, "--prompt", "hi"],
        &["config.json", "model_type", "gpt_neox"],
    );
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = model_dir(|d| {
        let path = d.join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
        )
        .unwrap();
    });
    let model = dir.path().to_str().unwrap();
    assert_clean_error(
        &["generate", "--model", model, "--prompt", "hi"],
        &["model.layers.0.mlp", "shape"],
    );
}

#[test]
fn gguf_with_unsupported_tensor_type() {
    // The committed quantisation fixture holds a Q2_K tensor, which we do not dequantise.
    let gguf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/gguf/quants.gguf.bin");
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("imported");
    assert_clean_error(
        &[
            "import-gguf",
            gguf.to_str().unwrap(),
            target.to_str().unwrap(),
        ],
        &["quants.gguf.bin"],
    );
    assert!(
        !target.exists(),
        "a failed import must leave nothing behind"
    );
}

#[test]
fn missing_gguf_file() {
    let out = tempfile::tempdir().unwrap();
    assert_clean_error(
        &[
            "import-gguf",
            "/nonexistent/x.gguf",
            out.path().join("m").to_str().unwrap(),
        ],
        &["/nonexistent/x.gguf"],
    );
}

#[test]
fn bad_sampling_flags() {
    let dir = model_dir(|_| {});
    let model = dir.path().to_str().unwrap();
    assert_clean_error(
        &[
            "generate", "--model", model, "--prompt", "hi", "--top-p", "0",
        ],
        &["--top-p"],
    );
}

/// `--device cuda:0` on a machine without the NVIDIA driver: one line, no
/// panic (cudarc's own failure is two panics with backtraces). Built only
/// with `--features cuda`; without it the command says it lacks CUDA.
#[test]
fn cuda_without_a_driver_is_one_line() {
    let model = fixture_model();
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
        "--device",
        "cuda:0",
    ];
    if cfg!(feature = "cuda") {
        let has_driver = [
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            "/usr/lib64/libcuda.so.1",
        ]
        .iter()
        .any(|p| Path::new(p).exists());
        if !has_driver {
            assert_clean_error(&args, &["CUDA requested but no NVIDIA driver (libcuda.so)"]);
        }
    } else {
        assert_clean_error(&args, &["built without CUDA"]);
    }
}

/// `--device wgpu:N` past the discrete GPUs wgpu sees is one line pointing at
/// `wgpu:cpu` (cubecl panics in its runtime thread otherwise). Built only with
/// `--features wgpu`; without it the command says it lacks wgpu.
#[test]
fn wgpu_without_that_gpu_is_one_line() {
    let fixture = fixture_model();
    let args = ["parity", fixture.to_str().unwrap(), "--device", "wgpu:7"];
    if cfg!(feature = "wgpu") {
        let out = alignkit(args);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        // lavapipe may print an XDG_RUNTIME_DIR warning of its own.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("wgpu:7")).collect();
        assert_eq!(ours.len(), 1, "{stderr}");
        assert!(ours[0].contains("--device wgpu:cpu"), "{stderr}");
    } else {
        assert_clean_error(&args, &["built without wgpu"]);
    }
}

/// bf16 on a wgpu or Vulkan device is one line (their shader compilers have
/// no bf16 type; cubecl panicked in its runtime thread), whatever the build.
#[test]
fn bf16_on_wgpu_is_one_line() {
    let fixture = fixture_model();
    for device in ["wgpu:cpu", "wgpu:0", "vulkan:0"] {
        let args = [
            "parity",
            fixture.to_str().unwrap(),
            "--device",
            device,
            "--dtype",
            "bf16",
        ];
        assert_clean_error(&args, &["--dtype bf16 runs on cpu or cuda:N", device]);
    }
}

/// `alignkit parity` on the committed fixtures: within 1e-4 of transformers
/// and equal to the CPU backend on the CPU; a directory without
/// expected.json is one line naming the file.
#[test]
fn parity_checks_the_fixtures_and_names_a_missing_file() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures");
    // `alignkit parity NAMES... FLAGS... --json`, which must pass.
    let parity = |names: &[&str], flags: &[&str]| -> serde_json::Value {
        let mut args: Vec<std::ffi::OsString> = vec!["parity".into()];
        args.extend(names.iter().map(|n| fixtures.join(n).into_os_string()));
        args.extend(flags.iter().chain(&["--json"]).map(|f| f.into()));
        let (stdout, _) = ok(&alignkit(args));
        serde_json::from_str(&stdout).unwrap()
    };
    let v = parity(&["llama", "qwen2"], &["--tolerance", "1e-4"]);
    let results = v["fixtures"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert!(r["vs_transformers"].as_f64().unwrap() <= 1e-4, "{r}");
        assert_eq!(r["vs_cpu"].as_f64().unwrap(), 0.0, "{r}");
        assert_eq!(r["greedy_matches"], true, "{r}");
    }
    // In bf16 the logits move by bf16's rounding (the largest logit is ≈ 4),
    // not more; the references stay f32.
    let v = parity(&["llama"], &["--dtype", "bf16", "--tolerance", "0.15"]);
    assert_eq!(v["dtype"], "bf16");
    let r = &v["fixtures"][0];
    let gap = r["vs_transformers"].as_f64().unwrap();
    assert!(gap > 1e-3 && gap <= 0.15, "{r}");
    assert!((r["vs_cpu"].as_f64().unwrap() - gap).abs() < 1e-3, "{r}");
    let dir = model_dir(|_| {});
    assert_clean_error(
        &["parity", dir.path().to_str().unwrap()],
        &["expected.json"],
    );
}
