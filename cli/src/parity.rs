//! `alignkit parity`: logits of the tiny fixture models (model/tests/fixtures,
//! written by scripts/fixtures_model.py with transformers) on the chosen
//! device, against transformers' logits and against the CPU backend. The
//! check of a GPU build (scripts/gpu_check.sh) and of the GPU code path on a
//! CPU Vulkan device (`--device wgpu:cpu`).

use std::path::PathBuf;

use alignkit_model::load_model;
use alignkit_model::parity::{Fixture, max_abs_diff};
use alignkit_model::precision::cast_model;
use anyhow::{Result, bail};
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::backend::{DeviceSpec, Task, dispatch};

#[derive(Args)]
pub struct ParityArgs {
    /// Fixture directories: config.json, model.safetensors and expected.json
    /// (transformers' logits, from scripts/fixtures_model.py).
    #[arg(required = true)]
    pub fixtures: Vec<PathBuf>,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (among the backends compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Largest |Δlogit| allowed, against transformers and against the CPU backend.
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f32,
    /// Weights and activations on the device: f32, or bf16 (norm statistics,
    /// softmax and logits stay f32, as `train.dtype = "bf16"` runs); the
    /// references stay f32, and in bf16 greedy tokens are reported, not required.
    #[arg(long, value_enum, default_value_t = ParityDtype::F32)]
    pub dtype: ParityDtype,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParityDtype {
    F32,
    Bf16,
}

/// One fixture's result.
#[derive(Debug, Serialize)]
pub struct FixtureParity {
    pub fixture: String,
    /// Max |Δlogit| against transformers over every real token of every batch.
    pub vs_transformers: f32,
    /// Max |Δlogit| against this build's CPU backend.
    pub vs_cpu: f32,
    /// Greedy tokens equal transformers'.
    pub greedy_matches: bool,
}

/// The CPU backend's logits of a fixture, the reference of `vs_cpu`.
fn cpu_logits(fixture: &Fixture) -> Result<Vec<Vec<f32>>> {
    type Cpu = burn::backend::Flex;
    let device = Default::default();
    let (_, model) = load_model::<Cpu>(&fixture.dir, &device)?;
    Ok(fixture.logits(&model, &device)?)
}

impl Task for ParityArgs {
    type Output = Vec<FixtureParity>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Vec<FixtureParity>> {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let mut out = Vec::new();
        for dir in &self.fixtures {
            let fixture = Fixture::read(dir)?;
            let (_, mut model) = load_model::<I<B>>(dir, &device)?;
            if self.dtype == ParityDtype::Bf16 {
                model = cast_model(model, DType::BF16);
            }
            let logits = fixture.logits(&model, &device)?;
            out.push(FixtureParity {
                fixture: dir.display().to_string(),
                vs_transformers: max_abs_diff(&logits, &fixture.expected),
                vs_cpu: max_abs_diff(&logits, &cpu_logits(&fixture)?),
                greedy_matches: fixture.greedy(&model, &device)? == fixture.greedy,
            });
        }
        Ok(out)
    }
}

pub fn run(args: ParityArgs) -> Result<()> {
    let (json, tolerance, device, dtype) = (args.json, args.tolerance, args.device, args.dtype);
    if dtype == ParityDtype::Bf16 && !device.computes_bf16() {
        bail!("--dtype bf16 runs on cpu or cuda:N; {device} has no bf16 type in its shaders");
    }
    let results = dispatch(device, args)?;
    let ok = |r: &FixtureParity| {
        r.vs_transformers <= tolerance
            && r.vs_cpu <= tolerance
            && (r.greedy_matches || dtype == ParityDtype::Bf16)
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"device": format!("{device:?}"), "dtype": dtype, "tolerance": tolerance, "fixtures": results})
        );
    } else {
        println!(
            "{:<40} {:>16} {:>12} {:>8}",
            "fixture", "vs transformers", "vs cpu", "greedy"
        );
        for r in &results {
            println!(
                "{:<40} {:>16.2e} {:>12.2e} {:>8}",
                r.fixture,
                r.vs_transformers,
                r.vs_cpu,
                if r.greedy_matches { "same" } else { "DIFFERS" }
            );
        }
    }
    let bad: Vec<&str> = results
        .iter()
        .filter(|r| !ok(r))
        .map(|r| r.fixture.as_str())
        .collect();
    if !bad.is_empty() {
        bail!(
            "logits differ by more than {tolerance:e} or greedy tokens differ on {device:?} ({dtype:?}): {}",
            bad.join(", ")
        );
    }
    Ok(())
}
