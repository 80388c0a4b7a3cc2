//! The GPU code path without a GPU: burn's cubecl kernels (what
//! `--device cuda` runs; none of the fused CPU kernels) on burn's wgpu backend
//! over a CPU Vulkan adapter (Mesa's lavapipe, Debian `mesa-vulkan-drivers`,
//! which .ci/run installs; `--device wgpu:cpu` on the command line).
//!
//! - the model parity fixtures: logits within 1e-4 of transformers', the
//!   same greedy tokens;
//! - a few steps of each trainer (SFT full, LoRA and with activation
//!   checkpointing, DPO, reward model, GRPO, PPO with a critic) on the tiny
//!   model: losses and gradient norms equal the CPU path's within 1e-3
//!   relative (different kernels sum in different orders).
//!
//! Without a lavapipe ICD the tests say so and pass, unless
//! `ALIGNKIT_REQUIRE_WGPU=1` (.ci/run sets it): then they fail.

use std::path::{Path, PathBuf};

use alignkit_model::load_model;
use alignkit_model::parity::{Fixture, max_abs_diff};
use alignkit_train::testutil::*;
use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu};

type Cpu = Autodiff<Flex>;
type Gpu = Autodiff<Wgpu>;

/// Whether the wgpu tests can run here; panics when they must but cannot.
fn lavapipe() -> bool {
    let found = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"));
    let required = std::env::var("ALIGNKIT_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    assert!(
        found || !required,
        "ALIGNKIT_REQUIRE_WGPU=1 but no lavapipe ICD: apt-get install mesa-vulkan-drivers"
    );
    if !found {
        eprintln!("skipped: no lavapipe Vulkan ICD (apt-get install mesa-vulkan-drivers)");
    }
    found
}

fn gpu() -> WgpuDevice {
    WgpuDevice::Cpu
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../model/tests/fixtures")
        .join(name)
}

#[test]
fn fixture_logits_and_greedy_tokens_match_transformers_on_wgpu() {
    if !lavapipe() {
        return;
    }
    for name in ["llama", "llama-tied", "llama3-scaled", "qwen2", "mistral"] {
        let f = Fixture::read(&fixture(name)).unwrap();
        let (_, model) = load_model::<Wgpu>(&f.dir, &gpu()).unwrap();
        let d = max_abs_diff(&f.logits(&model, &gpu()).unwrap(), &f.expected);
        assert!(d <= 1e-4, "{name}: max |Δlogit| = {d} against transformers");
        assert_eq!(
            f.greedy(&model, &gpu()).unwrap(),
            f.greedy,
            "{name}: greedy"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Cpu,
    Wgpu,
}

/// Run a trainer on each side into its own directory with `run(side, dir)`;
/// each metric in `keys` within 1e-3 relative of the CPU's, step by step
/// (different kernels sum in different orders).
fn compare(tmp: &Path, what: &str, keys: &[&str], run: impl Fn(Side, PathBuf)) {
    let series_of = |side: Side| {
        let dir = tmp.join(format!("{what}-{side:?}"));
        run(side, dir.clone());
        keys.iter().map(|k| series(&dir, k)).collect::<Vec<_>>()
    };
    let (cpu, gpu) = (series_of(Side::Cpu), series_of(Side::Wgpu));
    for ((key, a), b) in keys.iter().zip(&cpu).zip(&gpu) {
        assert_eq!(a.len(), b.len(), "{what} {key}: {a:?} vs {b:?}");
        assert!(!a.is_empty(), "{what} {key}: no steps");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let tol = 1e-3 * x.abs().max(1.0);
            assert!(
                (x - y).abs() <= tol,
                "{what} {key}, step {}: cpu {x} vs wgpu {y}",
                i + 1
            );
        }
    }
}

/// A trainer's `train::<B>(config, device, options, progress)` on `side`.
macro_rules! on {
    ($side:expr, $($train:ident)::+, $config:expr, $options:expr) => {
        match $side {
            Side::Cpu => {
                $($train)::+::<Cpu>($config, &Default::default(), $options, &mut |_| {}).map(drop)
            }
            Side::Wgpu => $($train)::+::<Gpu>($config, &gpu(), $options, &mut |_| {}).map(drop),
        }
        .unwrap()
    };
}

#[test]
fn sft_full_and_lora_steps_match_the_cpu_path() {
    if !lavapipe() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.jsonl");
    write_chat_data(&data, &PAIRS);
    let mut c = alignkit_sft::SftConfig {
        model: tiny_model_dir(&tmp.path().join("model")),
        learning_rate: 1e-2,
        ..Default::default()
    };
    c.data.train_file = data;
    c.data.max_len = 64;
    c.train.batch_size = 2;
    c.train.max_steps = 3;
    c.train.save_steps = 0;
    c.optim.weight_decay = 0.0;
    // Full, LoRA, full with full activation checkpointing (the recomputing
    // backward pass on wgpu) and LoRA with selective checkpointing (kept
    // projections taken as given: `alignkit_model::fused::given`).
    use alignkit_model::recompute::Granularity::{self, Full, Selective};
    let cases: [(bool, Option<Granularity>); 4] = [
        (false, None),
        (true, None),
        (false, Some(Full)),
        (true, Some(Selective)),
    ];
    let taken_as_given = alignkit_model::fused::given::products_taken_as_given;
    // Products the wgpu side's recomputation took as given, by case.
    let mut taken = Vec::new();
    for (lora, checkpointing) in cases {
        c.lora = lora.then(alignkit_model::lora::LoraConfig::default);
        c.train.gradient_checkpointing = checkpointing.is_some();
        c.train.recompute_granularity = checkpointing.unwrap_or_default();
        let what = format!("sft-lora-{lora}-checkpointing-{checkpointing:?}");
        let wgpu_taken = std::cell::Cell::new(0);
        compare(tmp.path(), &what, &["loss", "grad_norm"], |side, dir| {
            let c = alignkit_sft::SftConfig {
                output_dir: dir,
                ..c.clone()
            };
            let before = taken_as_given();
            on!(
                side,
                alignkit_sft::train,
                &c,
                alignkit_sft::RunOptions::default()
            );
            if let Side::Wgpu = side {
                wgpu_taken.set(taken_as_given() - before);
            }
        });
        taken.push(wgpu_taken.get());
    }
    // Full recomputation skips each recomputed layer's down projection;
    // selective takes all seven of its projections as given.
    assert_eq!(taken[..2], [0, 0]);
    assert!(taken[2] > 0, "{taken:?}");
    assert_eq!(taken[3], 7 * taken[2], "{taken:?}");
}

#[test]
fn dpo_and_reward_steps_match_the_cpu_path() {
    if !lavapipe() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&tmp.path().join("model"));
    let data = tmp.path().join("prefs.jsonl");
    write_prefs(&data, &PREFS);

    let mut dpo = alignkit_dpo::DpoConfig {
        model: model.clone(),
        learning_rate: 5e-3,
        ..Default::default()
    };
    dpo.data.train_file = data.clone();
    dpo.data.max_len = 64;
    dpo.data.max_prompt_len = 32;
    dpo.train.batch_size = 2;
    dpo.train.max_steps = 3;
    dpo.train.save_steps = 0;
    compare(tmp.path(), "dpo", &["loss", "grad_norm"], |side, dir| {
        let c = alignkit_dpo::DpoConfig {
            output_dir: dir,
            ..dpo.clone()
        };
        on!(
            side,
            alignkit_dpo::train,
            &c,
            alignkit_dpo::RunOptions::default()
        );
    });

    let mut rm = alignkit_reward::RewardConfig {
        model,
        learning_rate: 5e-3,
        ..Default::default()
    };
    rm.data.train_file = data;
    rm.data.max_len = 64;
    rm.train.batch_size = 3;
    rm.train.max_steps = 3;
    rm.train.save_steps = 0;
    compare(tmp.path(), "reward", &["loss", "grad_norm"], |side, dir| {
        let c = alignkit_reward::RewardConfig {
            output_dir: dir,
            ..rm.clone()
        };
        on!(
            side,
            alignkit_reward::train,
            &c,
            alignkit_reward::RunOptions::default()
        );
    });
}

/// GRPO (`ppo: false`) or PPO with a critic over the tiny model with a rule reward.
fn rl_config(tmp: &Path, ppo: bool) -> alignkit_ppo::RlConfig {
    let prompts = tmp.join("prompts.jsonl");
    let lines: Vec<String> = [
        "sky", "grass", "snow", "coal", "sun", "sea", "moon", "blood",
    ]
    .iter()
    .map(|w| {
        serde_json::json!({"prompt": [{"role": "user", "content": format!("{w}?")}]}).to_string()
    })
    .collect();
    std::fs::write(&prompts, lines.join("\n") + "\n").unwrap();
    let mut c = match ppo {
        true => alignkit_ppo::RlConfig::ppo(),
        false => alignkit_ppo::RlConfig::grpo(),
    };
    c.model = tiny_model_dir(&tmp.join("model"));
    c.learning_rate = 3e-3;
    c.data.train_file = prompts;
    c.data.max_prompt_len = 32;
    c.rollout.max_completion_length = 6;
    c.rewards = vec![alignkit_ppo::RewardKind::Rule {
        rule: "regex=a".parse().unwrap(),
        name: None,
        weight: 1.0,
    }];
    c.train.batch_size = 8;
    c.train.max_steps = 2;
    c.train.save_steps = 0;
    c.optim.weight_decay = 0.0;
    c
}

/// Each side samples from its own probabilities with the same seeds: a draw
/// lands on another token only within ~1e-6 of a boundary, so the rollouts
/// and rewards are the same and the losses close.
#[test]
fn grpo_and_ppo_steps_match_the_cpu_path() {
    if !lavapipe() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let grpo = rl_config(tmp.path(), false);
    compare(tmp.path(), "grpo", &["reward", "loss"], |side, dir| {
        let c = alignkit_ppo::RlConfig {
            output_dir: dir,
            ..grpo.clone()
        };
        on!(
            side,
            alignkit_ppo::train,
            &c,
            alignkit_ppo::RunOptions::default()
        );
    });
    let ppo = rl_config(tmp.path(), true);
    let keys = ["objective/scores", "loss/policy_avg", "loss/value_avg"];
    compare(tmp.path(), "ppo", &keys, |side, dir| {
        let c = alignkit_ppo::RlConfig {
            output_dir: dir,
            ..ppo.clone()
        };
        on!(
            side,
            alignkit_ppo::train_ppo,
            &c,
            alignkit_ppo::RunOptions::default()
        );
    });
}
