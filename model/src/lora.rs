//! LoRA: low-rank adapters on the decoder's linear layers.
//!
//! See: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
//! eq. 3: h = W₀x + ΔWx = W₀x + (α/r)·B·A·x, with A [r, in] and B [out, r].
//! The adapter term is computed as ((x·Aᵀ)·Bᵀ)·s, so the dense ΔW is never
//! formed during training; [`merge`] forms it once for export.
//! rsLoRA (Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for
//! Fine-Tuning with LoRA", §3) scales by α/√r instead of α/r.
//!
//! Adapters hang on [`Linear::lora`], a `#[module(skip)]` field: burn's derived
//! visitors never see them, so a base checkpoint saved from an adapted model
//! holds base weights only. [`visit_adapters`] / [`map_adapters`] walk them
//! with their checkpoint-style names (`model.layers.0.self_attn.q_proj.lora.lora_a`).
//!
//! On disk adapters use PEFT's layout: `adapter_config.json` and
//! `adapter_model.safetensors` with `base_model.model.<path>.lora_A.weight`
//! [r, in] and `base_model.model.<path>.lora_B.weight` [out, r].

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub use crate::adapter::LoraAdapter;
use crate::checkpoint::SaveDtype;
use crate::checkpoint::{
    PendingTensor, pt_metadata, safetensors_bytes, write_atomic, write_safetensors,
};
use crate::config::LlamaConfig;
use crate::dtype::{to_dtype, to_f32};
use crate::error::{ModelError, Result};
use crate::transformer::{Linear, LlamaForCausalLM};

/// The projections an adapter can target, in the order they are walked.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Phi-3's fused projections and the decoder's projections they stand for:
/// as a target name, `qkv_proj` targets q, k and v.
pub const FUSED_TARGETS: [(&str, &[&str]); 2] = [
    ("qkv_proj", &["q_proj", "k_proj", "v_proj"]),
    ("gate_up_proj", &["gate_proj", "up_proj"]),
];

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// Which linear layers get an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Every linear layer of the decoder except the LM head (PEFT's `all-linear`).
    AllLinear,
    /// Linear layers by their last name, e.g. `q_proj`, `v_proj`.
    Names(Vec<String>),
}

impl TargetModules {
    /// `all-linear`, or comma-separated names.
    pub fn parse(s: &str) -> Result<Self> {
        if s.trim() == "all-linear" {
            return Ok(Self::AllLinear);
        }
        let names: Vec<String> = s
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        let t = Self::Names(names);
        t.validate()?;
        Ok(t)
    }

    fn validate(&self) -> Result<()> {
        if let Self::Names(names) = self {
            if names.is_empty() {
                return Err(ModelError::Input(
                    "lora.target_modules is empty; name modules or use \"all-linear\"".into(),
                ));
            }
            let known =
                |n: &str| TARGETS.contains(&n) || FUSED_TARGETS.iter().any(|(f, _)| *f == n);
            if let Some(bad) = names.iter().find(|n| !known(n)) {
                return Err(ModelError::Input(format!(
                    "lora.target_modules: unknown module `{bad}`; expected \"all-linear\" or some of {} (Phi-3: qkv_proj, gate_up_proj)",
                    TARGETS.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub fn matches(&self, module: &str) -> bool {
        match self {
            Self::AllLinear => TARGETS.contains(&module),
            Self::Names(names) => names.iter().any(|n| {
                n == module
                    || FUSED_TARGETS
                        .iter()
                        .any(|(fused, parts)| n == fused && parts.contains(&module))
            }),
        }
    }

    /// The matched module names, in [`TARGETS`] order.
    pub fn names(&self) -> Vec<String> {
        TARGETS
            .iter()
            .filter(|t| self.matches(t))
            .map(|t| t.to_string())
            .collect()
    }
}

impl Serialize for TargetModules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::AllLinear => s.serialize_str("all-linear"),
            Self::Names(names) => names.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let t = match Raw::deserialize(d)? {
            Raw::One(s) => TargetModules::parse(&s).map_err(serde::de::Error::custom)?,
            Raw::Many(names) => TargetModules::Names(names),
        };
        t.validate().map_err(serde::de::Error::custom)?;
        Ok(t)
    }
}

/// LoRA hyper-parameters (PEFT's `LoraConfig` names in the adapter file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank r of A [r, in] and B [out, r]. PEFT default: 8.
    pub r: usize,
    /// α in the scale α/r. PEFT default: 8.
    pub alpha: f64,
    /// Dropout on the adapter's input while training. PEFT default: 0.
    pub dropout: f64,
    pub target_modules: TargetModules,
    /// Scale by α/√r (rsLoRA) instead of α/r.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: TargetModules::AllLinear,
            rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::Input("lora.r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Input(format!(
                "lora.dropout {} is not in [0, 1)",
                self.dropout
            )));
        }
        if !self.alpha.is_finite() {
            return Err(ModelError::Input("lora.alpha must be finite".into()));
        }
        self.target_modules.validate()
    }

    /// s in y = xWᵀ + s·(x·Aᵀ)·Bᵀ.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// Checkpoint-style path of each linear layer an adapter may hang on, with
/// the container types burn's derive would report while walking to it.
fn linear_paths(num_layers: usize) -> Vec<(usize, &'static str, &'static str)> {
    let mut out = Vec::new();
    for i in 0..num_layers {
        for t in TARGETS {
            out.push((i, block_of(t), t));
        }
    }
    out
}

/// The block a projection (or a fused one) sits in: `mlp` or `self_attn`.
fn block_of(module: &str) -> &'static str {
    match module {
        "gate_proj" | "up_proj" | "down_proj" | "gate_up_proj" => "mlp",
        _ => "self_attn",
    }
}

/// Remove `name` from `tensors` (read from `path` in `dir`), checking its shape.
fn take_checked(
    tensors: &mut HostTensors,
    name: &str,
    expected: &[usize],
    dir: &Path,
    path: &Path,
) -> Result<Vec<f32>> {
    let (shape, data) = tensors
        .remove(name)
        .ok_or_else(|| ModelError::MissingTensor {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            shape: expected.to_vec(),
        })?;
    if shape != expected {
        return Err(ModelError::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: expected.to_vec(),
            found: shape,
        });
    }
    Ok(data)
}

fn linear_ref<'a, B: Backend>(
    model: &'a LlamaForCausalLM<B>,
    layer: usize,
    module: &str,
) -> &'a Linear<B> {
    let l = &model.model.layers[layer];
    match module {
        "q_proj" => &l.self_attn.q_proj,
        "k_proj" => &l.self_attn.k_proj,
        "v_proj" => &l.self_attn.v_proj,
        "o_proj" => &l.self_attn.o_proj,
        "gate_proj" => &l.mlp.gate_proj,
        "up_proj" => &l.mlp.up_proj,
        _ => &l.mlp.down_proj,
    }
}

fn linear_mut<'a, B: Backend>(
    model: &'a mut LlamaForCausalLM<B>,
    layer: usize,
    module: &str,
) -> &'a mut Linear<B> {
    let l = &mut model.model.layers[layer];
    match module {
        "q_proj" => &mut l.self_attn.q_proj,
        "k_proj" => &mut l.self_attn.k_proj,
        "v_proj" => &mut l.self_attn.v_proj,
        "o_proj" => &mut l.self_attn.o_proj,
        "gate_proj" => &mut l.mlp.gate_proj,
        "up_proj" => &mut l.mlp.up_proj,
        _ => &mut l.mlp.down_proj,
    }
}

/// `model.layers.{i}.{block}.{module}`.
fn module_path(layer: usize, block: &str, module: &str) -> String {
    format!("model.layers.{layer}.{block}.{module}")
}

/// The path segments and container types burn's derive reports on the way to
/// a linear layer's `lora` field.
fn segments(layer: &str, block: &'static str, module: &'static str) -> [(String, &'static str); 6] {
    let block_type = if block == "mlp" {
        "Struct:Mlp"
    } else {
        "Struct:Attention"
    };
    [
        ("model".into(), "Struct:LlamaForCausalLM"),
        ("layers".into(), "Struct:LlamaModel"),
        (layer.to_string(), "Vec"),
        (block.into(), "Struct:DecoderLayer"),
        (module.into(), block_type),
        ("lora".into(), "Struct:Linear"),
    ]
}

/// Visit every adapter's parameters, named as if `lora` were a module field:
/// `model.layers.0.self_attn.q_proj.lora.lora_a`.
pub fn visit_adapters<B: Backend, V: ModuleVisitor<B>>(
    model: &LlamaForCausalLM<B>,
    visitor: &mut V,
) {
    for (i, block, module) in linear_paths(model.model.layers.len()) {
        if let Some(adapter) = &linear_ref(model, i, module).lora {
            let segs = segments(&i.to_string(), block, module);
            for (name, ty) in &segs {
                visitor.enter_module(name, ty);
            }
            adapter.visit(visitor);
            for (name, ty) in segs.iter().rev() {
                visitor.exit_module(name, ty);
            }
        }
    }
}

/// Map every adapter's parameters (see [`visit_adapters`] for the names).
pub fn map_adapters<B: Backend, M: ModuleMapper<B>>(
    mut model: LlamaForCausalLM<B>,
    mapper: &mut M,
) -> LlamaForCausalLM<B> {
    for (i, block, module) in linear_paths(model.model.layers.len()) {
        let lin = linear_mut(&mut model, i, module);
        if let Some(adapter) = lin.lora.take() {
            let segs = segments(&i.to_string(), block, module);
            for (name, ty) in &segs {
                mapper.enter_module(name, ty);
            }
            lin.lora = Some(adapter.map(mapper));
            for (name, ty) in segs.iter().rev() {
                mapper.exit_module(name, ty);
            }
        }
    }
    model
}

/// Number of adapters attached.
pub fn adapter_count<B: Backend>(model: &LlamaForCausalLM<B>) -> usize {
    linear_paths(model.model.layers.len())
        .into_iter()
        .filter(|(i, _, m)| linear_ref(model, *i, m).lora.is_some())
        .count()
}

/// Hang a fresh adapter on every targeted linear layer, initialised as PEFT
/// does: A ~ U(−1/√in, 1/√in) (kaiming-uniform with a = √5), B = 0, so the
/// adapted model starts equal to the base. A is drawn from `seed` on the host,
/// independent of the backend's generator.
pub fn attach<B: Backend>(
    mut model: LlamaForCausalLM<B>,
    config: &LoraConfig,
    seed: u64,
    device: &B::Device,
) -> Result<LlamaForCausalLM<B>> {
    config.validate()?;
    let mut rng = StdRng::seed_from_u64(seed);
    for (i, _, module) in linear_paths(model.model.layers.len()) {
        if !config.target_modules.matches(module) {
            continue;
        }
        let lin = linear_mut(&mut model, i, module);
        let [d_out, d_in] = lin.weight.lazy_shape().dims::<2>();
        let bound = 1.0 / (d_in as f32).sqrt();
        let a: Vec<f32> = (0..config.r * d_in)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let a = Tensor::from_data(TensorData::new(a, [config.r, d_in]), device);
        let b = Tensor::zeros([d_out, config.r], device);
        lin.lora = Some(new_adapter(a, b, config.scale(), config));
    }
    Ok(model)
}

fn new_adapter<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
    config: &LoraConfig,
) -> LoraAdapter<B> {
    LoraAdapter {
        lora_a: Param::initialized(ParamId::new(), a.require_grad()),
        lora_b: Param::initialized(ParamId::new(), b.require_grad()),
        scale,
        dropout: config.dropout,
    }
}

/// Fold every adapter into its base weight, W ← W + s·B·A, and remove it.
/// The merged model computes the same function without the adapter term.
pub fn merge<B: Backend>(mut model: LlamaForCausalLM<B>) -> LlamaForCausalLM<B> {
    for (i, _, module) in linear_paths(model.model.layers.len()) {
        let lin = linear_mut(&mut model, i, module);
        if let Some(adapter) = lin.lora.take() {
            let delta = to_f32(adapter.delta_weight().detach());
            lin.weight = lin.weight.clone().map(|w| {
                let (require_grad, dtype) = (w.is_require_grad(), w.dtype());
                // Summed in f32, stored in the weight's dtype.
                to_dtype(to_f32(w.detach()) + delta, dtype).set_require_grad(require_grad)
            });
        }
    }
    model
}

/// Remove every adapter without merging.
pub fn detach_all<B: Backend>(mut model: LlamaForCausalLM<B>) -> LlamaForCausalLM<B> {
    for (i, _, module) in linear_paths(model.model.layers.len()) {
        linear_mut(&mut model, i, module).lora = None;
    }
    model
}

/// Adapter tensors under PEFT's names, f32 on the host.
pub fn peft_tensors<B: Backend>(
    model: &LlamaForCausalLM<B>,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    adapter_tensors(model)
        .into_iter()
        .map(|(name, t)| {
            let shape = t.dims().to_vec();
            let data = t
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("converted to f32 above");
            (name, (shape, data))
        })
        .collect()
}

/// The gradients of the adapter tensors in `grads`, under PEFT's names, f32
/// on the host (tensors without a gradient are left out).
pub fn peft_gradients<B: AutodiffBackend>(
    model: &LlamaForCausalLM<B>,
    grads: &B::Gradients,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    adapter_tensors(model)
        .into_iter()
        .filter_map(|(name, t)| {
            let g = t.grad(grads)?;
            let shape = g.dims().to_vec();
            let data = g.into_data().convert::<f32>().into_vec::<f32>().ok()?;
            Some((name, (shape, data)))
        })
        .collect()
}

/// Handles to the adapter tensors under PEFT's names
/// (`base_model.model.<path>.lora_A.weight` / `lora_B.weight`).
fn adapter_tensors<B: Backend>(model: &LlamaForCausalLM<B>) -> Vec<(String, Tensor<B, 2>)> {
    let mut out = Vec::new();
    for (i, block, module) in linear_paths(model.model.layers.len()) {
        if let Some(adapter) = &linear_ref(model, i, module).lora {
            let path = module_path(i, block, module);
            out.push((
                format!("base_model.model.{path}.lora_A.weight"),
                adapter.lora_a.val(),
            ));
            out.push((
                format!("base_model.model.{path}.lora_B.weight"),
                adapter.lora_b.val(),
            ));
        }
    }
    out
}

/// PEFT's `adapter_config.json` for `config`.
pub fn peft_config_json(config: &LoraConfig, base_model: &str) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.target_modules.names(),
        "use_rslora": config.rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": false,
        "revision": null,
    })
}

/// Write `adapter_config.json` and `adapter_model.safetensors` (atomically).
pub fn save_adapter<B: Backend>(
    model: &LlamaForCausalLM<B>,
    config: &LoraConfig,
    base_model: &str,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = adapter_tensors(model);
    if tensors.is_empty() {
        return Err(ModelError::Input(
            "the model has no LoRA adapter to save".into(),
        ));
    }
    write_safetensors(
        &dir.join(ADAPTER_WEIGHTS),
        tensors
            .into_iter()
            .map(|(name, t)| (name, PendingTensor::of(t, dtype))),
        pt_metadata(),
    )?;
    let json = peft_config_json(config, base_model);
    let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Input(e.to_string()))?;
    write_atomic(&dir.join(ADAPTER_CONFIG), text.as_bytes())
}

/// [`save_adapter`] for PEFT over the family's own checkpoint layout: where
/// the checkpoint fuses projections (Phi-3's `qkv_proj`, `gate_up_proj`),
/// the adapters of their parts are joined into one of the summed rank,
/// A stacked and B block-diagonal (the same function: (Σ Bᵢ·Aᵢ) x), with
/// PEFT's `rank_pattern` and `alpha_pattern` giving it that rank and the
/// parts' scale. Run checkpoints keep the parts ([`save_adapter`]).
pub fn export_adapter<B: Backend>(
    model: &LlamaForCausalLM<B>,
    config: &LoraConfig,
    model_config: &LlamaConfig,
    base_model: &str,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    if !model_config.model_type.fused_projections() {
        return save_adapter(model, config, base_model, dir, dtype);
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let host = |t: Tensor<B, 2>| -> (Vec<usize>, Vec<f32>) {
        let shape = t.dims().to_vec();
        let data = to_f32(t).into_data().into_vec::<f32>().expect("f32 above");
        (shape, data)
    };
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut ranks: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..model.model.layers.len() {
        for (fused, parts) in FUSED_TARGETS {
            let adapters: Vec<_> = parts
                .iter()
                .map(|p| linear_ref(model, i, p))
                .map(|l| (l.weight.val().dims()[0], l.lora.as_ref()))
                .collect();
            if adapters.iter().all(|(_, a)| a.is_none()) {
                continue;
            }
            let rank: usize = adapters
                .iter()
                .filter_map(|(_, a)| a.map(|a| a.lora_a.val().dims()[0]))
                .sum();
            let (rows, cols) = (
                adapters.iter().map(|(out, _)| out).sum::<usize>(),
                adapters
                    .iter()
                    .find_map(|(_, a)| a.map(|a| a.lora_a.val().dims()[1]))
                    .expect("one part has an adapter"),
            );
            let (mut a_rows, mut b) = (Vec::with_capacity(rank * cols), vec![0f32; rows * rank]);
            let (mut row, mut col) = (0, 0);
            for (out, adapter) in &adapters {
                if let Some(adapter) = adapter {
                    let (a_shape, a) = host(adapter.lora_a.val());
                    let (_, part_b) = host(adapter.lora_b.val());
                    a_rows.extend(a);
                    let r = a_shape[0];
                    for (k, part_row) in part_b.chunks(r).enumerate() {
                        let at = (row + k) * rank + col;
                        b[at..at + r].copy_from_slice(part_row);
                    }
                    col += r;
                }
                row += out;
            }
            let path = format!(
                "base_model.model.{}",
                module_path(i, block_of(fused), fused)
            );
            tensors.insert(format!("{path}.lora_A.weight"), (vec![rank, cols], a_rows));
            tensors.insert(format!("{path}.lora_B.weight"), (vec![rows, rank], b));
            ranks.insert(fused, rank);
        }
    }
    // The projections no fused one holds (o_proj, down_proj) as they are.
    let part = |name: &str| {
        FUSED_TARGETS
            .iter()
            .flat_map(|(_, parts)| parts.iter())
            .any(|p| name.contains(&format!(".{p}.lora_")))
    };
    for (name, t) in adapter_tensors(model) {
        if !part(&name) {
            tensors.insert(name, host(t));
        }
    }
    if tensors.is_empty() {
        return Err(ModelError::Input(
            "the model has no LoRA adapter to save".into(),
        ));
    }
    let bytes = safetensors_bytes(&tensors, dtype, pt_metadata())?;
    write_atomic(&dir.join(ADAPTER_WEIGHTS), &bytes)?;
    // The joined adapter keeps the parts' scale s: alpha = s·rank (s·√rank
    // with rsLoRA).
    let alpha = |rank: usize| match config.rslora {
        true => config.scale() * (rank as f64).sqrt(),
        false => config.scale() * rank as f64,
    };
    let mut json = peft_config_json(config, base_model);
    let mut targets: Vec<String> = Vec::new();
    for name in config.target_modules.names() {
        let name = FUSED_TARGETS
            .iter()
            .find(|(_, parts)| parts.contains(&name.as_str()))
            .map_or(name, |(fused, _)| fused.to_string());
        if !targets.contains(&name) {
            targets.push(name);
        }
    }
    json["target_modules"] = serde_json::json!(targets);
    json["rank_pattern"] = ranks
        .iter()
        .map(|(k, r)| (k.to_string(), serde_json::json!(r)))
        .collect();
    json["alpha_pattern"] = ranks
        .iter()
        .map(|(k, r)| (k.to_string(), serde_json::json!(alpha(*r))))
        .collect();
    let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Input(e.to_string()))?;
    write_atomic(&dir.join(ADAPTER_CONFIG), text.as_bytes())
}

/// Read PEFT's `adapter_config.json`, refusing options this implementation
/// does not model (DoRA, per-layer ranks, trained biases, ...).
pub fn read_peft_config(dir: &Path) -> Result<LoraConfig> {
    parse_peft_config(dir, &read_peft_json(dir)?)
}

/// `adapter_config.json` of a PEFT directory, as JSON.
fn read_peft_json(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json { path, source })
}

/// [`read_peft_config`] of the JSON [`read_peft_json`] read from `dir`.
fn parse_peft_config(dir: &Path, v: &serde_json::Value) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG);
    let field_err = |field: &str, message: &str| ModelError::Config {
        path: path.clone(),
        field: field.into(),
        message: message.into(),
    };
    if v.get("peft_type").and_then(|t| t.as_str()) != Some("LORA") {
        return Err(field_err("peft_type", "expected \"LORA\""));
    }
    let r = v
        .get("r")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| field_err("r", "missing or not an integer"))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(|x| x.as_f64())
        .ok_or_else(|| field_err("lora_alpha", "missing or not a number"))?;
    let dropout = v
        .get("lora_dropout")
        .and_then(|x| x.as_f64())
        .unwrap_or(0.0);
    let rslora = v
        .get("use_rslora")
        .and_then(|x| x.as_bool())
        .unwrap_or(false);
    let target_modules = match v.get("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" => TargetModules::AllLinear,
        Some(serde_json::Value::Array(names)) => TargetModules::Names(
            names
                .iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect(),
        ),
        _ => {
            return Err(field_err(
                "target_modules",
                "expected a list of module names or \"all-linear\" (regular expressions are not supported)",
            ));
        }
    };
    let unsupported = |field: &str, ok: &dyn Fn(&serde_json::Value) -> bool| -> Result<()> {
        match v.get(field) {
            Some(x) if !ok(x) => Err(field_err(field, "not supported")),
            _ => Ok(()),
        }
    };
    let empty = |x: &serde_json::Value| {
        x.is_null()
            || x.as_object().is_some_and(|o| o.is_empty())
            || x.as_array().is_some_and(|a| a.is_empty())
    };
    unsupported("use_dora", &|x| x.as_bool() == Some(false))?;
    unsupported("bias", &|x| x.as_str() == Some("none"))?;
    unsupported("fan_in_fan_out", &|x| x.as_bool() == Some(false))?;
    // Per-module ranks only for the fused projections' joined adapters
    // ([`export_adapter`]).
    let fused_only = |x: &serde_json::Value| {
        empty(x)
            || x.as_object().is_some_and(|o| {
                o.keys()
                    .all(|k| FUSED_TARGETS.iter().any(|(fused, _)| fused == k))
            })
    };
    unsupported("rank_pattern", &fused_only)?;
    unsupported("alpha_pattern", &fused_only)?;
    unsupported("layers_to_transform", &empty)?;
    unsupported("modules_to_save", &empty)?;
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        target_modules,
        rslora,
    };
    config
        .validate()
        .map_err(|e| field_err("target_modules", &e.to_string()))?;
    Ok(config)
}

/// Tensors by name: shape and f32 data.
type HostTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read_f32(path: &Path) -> Result<HostTensors> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let b = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// The adapters of fused projections in `tensors` (Phi-3's `qkv_proj`,
/// `gate_up_proj`, as PEFT trains them on the fused checkpoint or
/// [`export_adapter`] joins them), each replaced by one adapter per part:
/// A shared (copied), B's rows split, the same function. `alpha_pattern`
/// is the file's (per-module alphas). Returns each part's rank and scale by
/// its PEFT module path.
fn split_fused_adapters<B: Backend>(
    model: &LlamaForCausalLM<B>,
    tensors: &mut HostTensors,
    config: &LoraConfig,
    alpha_pattern: &serde_json::Value,
    dir: &Path,
) -> Result<HashMap<String, (usize, f64)>> {
    let path = dir.join(ADAPTER_WEIGHTS);
    let mut own = HashMap::new();
    for i in 0..model.model.layers.len() {
        for (fused, parts) in FUSED_TARGETS {
            let peft_path = |module: &str| {
                format!(
                    "base_model.model.{}",
                    module_path(i, block_of(module), module)
                )
            };
            let fused_path = peft_path(fused);
            let Some((a_shape, a)) = tensors.remove(&format!("{fused_path}.lora_A.weight")) else {
                continue;
            };
            let rows: Vec<usize> = parts
                .iter()
                .map(|p| linear_ref(model, i, p).weight.lazy_shape().dims::<2>()[0])
                .collect();
            let rank = a_shape[0];
            let name = format!("{fused_path}.lora_B.weight");
            let b = take_checked(tensors, &name, &[rows.iter().sum(), rank], dir, &path)?;
            let alpha = alpha_pattern[fused].as_f64().unwrap_or(config.alpha);
            let scale = match config.rslora {
                true => alpha / (rank as f64).sqrt(),
                false => alpha / rank as f64,
            };
            let mut start = 0;
            for (part, out) in parts.iter().zip(rows) {
                let part_prefix = peft_path(part);
                let part_b = b[start * rank..(start + out) * rank].to_vec();
                start += out;
                tensors.insert(
                    format!("{part_prefix}.lora_A.weight"),
                    (a_shape.clone(), a.clone()),
                );
                tensors.insert(
                    format!("{part_prefix}.lora_B.weight"),
                    (vec![out, rank], part_b),
                );
                own.insert(part_prefix, (rank, scale));
            }
        }
    }
    Ok(own)
}

/// Attach the adapter saved in a PEFT directory to `model` (which must have
/// none). Every targeted layer must have both matrices with the right shapes,
/// and every tensor in the file must belong to a targeted layer.
pub fn load_adapter<B: Backend>(
    mut model: LlamaForCausalLM<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<(LoraConfig, LlamaForCausalLM<B>)> {
    let json = read_peft_json(dir)?;
    let config = parse_peft_config(dir, &json)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = read_f32(&path)?;
    // PEFT saves without the adapter name; some tools keep `.default`.
    tensors = tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k.replace(".lora_A.default.", ".lora_A.")
                    .replace(".lora_B.default.", ".lora_B."),
                v,
            )
        })
        .collect();
    let own = split_fused_adapters(&model, &mut tensors, &config, &json["alpha_pattern"], dir)?;
    for (i, block, module) in linear_paths(model.model.layers.len()) {
        if !config.target_modules.matches(module) {
            continue;
        }
        let prefix = format!("base_model.model.{}", module_path(i, block, module));
        let (rank, scale) = own
            .get(&prefix)
            .copied()
            .unwrap_or((config.r, config.scale()));
        let lin = linear_mut(&mut model, i, module);
        let [d_out, d_in] = lin.weight.lazy_shape().dims::<2>();
        let mut take = |which: &str, expected: [usize; 2]| -> Result<Tensor<B, 2>> {
            let name = format!("{prefix}.{which}.weight");
            let data = take_checked(&mut tensors, &name, &expected, dir, &path)?;
            Ok(Tensor::from_data(TensorData::new(data, expected), device))
        };
        let a = take("lora_A", [rank, d_in])?;
        let b = take("lora_B", [d_out, rank])?;
        lin.lora = Some(new_adapter(a, b, scale, &config));
    }
    if let Some(name) = tensors.keys().min() {
        return Err(ModelError::UnexpectedTensor {
            path,
            name: name.clone(),
            model_type: format!("LoRA on {}", config.target_modules.names().join(",")),
        });
    }
    Ok((config, model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::named_tensors;
    use crate::config::{LlamaConfig, ModelType};
    use crate::mask::attention_mask;
    use crate::transformer::ForwardInput;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::Int;

    type B = Flex;
    type AB = Autodiff<Flex>;

    fn input<Bk: Backend>(device: &Bk::Device) -> ForwardInput<Bk> {
        let ids: Vec<i64> = vec![1, 5, 9, 14, 3, 7, 2, 40];
        ForwardInput {
            input_ids: Tensor::<Bk, 2, Int>::from_data(TensorData::new(ids, [2, 4]), device),
            positions: Tensor::<Bk, 2, Int>::from_data(
                TensorData::new(vec![0i64, 1, 2, 3, 0, 1, 2, 3], [2, 4]),
                device,
            ),
            mask: attention_mask(&[vec![true; 4], vec![true; 4]], 4, None, device),
        }
    }

    /// Give B random values so the adapter term is not zero.
    fn randomize_b<Bk: Backend>(model: LlamaForCausalLM<Bk>, seed: u64) -> LlamaForCausalLM<Bk> {
        struct Fill(StdRng);
        impl<Bk: Backend> ModuleMapper<Bk> for Fill {
            fn map_float<const D: usize>(
                &mut self,
                p: Param<Tensor<Bk, D>>,
            ) -> Param<Tensor<Bk, D>> {
                let (id, t, mapper) = p.consume();
                let shape = t.shape();
                let n = shape.num_elements();
                let v: Vec<f32> = (0..n).map(|_| self.0.random_range(-0.5..0.5)).collect();
                let t2 = Tensor::from_data(TensorData::new(v, shape), &t.device())
                    .set_require_grad(t.is_require_grad());
                Param::from_mapped_value(id, t2, mapper)
            }
        }
        map_adapters(model, &mut Fill(StdRng::seed_from_u64(seed)))
    }

    fn max_abs_diff<Bk: Backend>(a: Tensor<Bk, 3>, b: Tensor<Bk, 3>) -> f32 {
        (a - b).abs().max().into_scalar().elem()
    }

    use burn::tensor::ElementConversion;

    #[test]
    fn fresh_adapter_is_the_identity_and_merge_matches() {
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Llama);
        let base = LlamaForCausalLM::<B>::init(&config, &device);
        let reference = base.forward(input(&device), None);
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            ..Default::default()
        };
        let adapted = attach(base, &lora, 7, &device).unwrap();
        assert_eq!(adapter_count(&adapted), 2 * 7);
        // B = 0: the adapted model is the base model.
        assert_eq!(
            max_abs_diff(reference, adapted.forward(input(&device), None)),
            0.0
        );

        let adapted = randomize_b(adapted, 3);
        let with_adapter = adapted.forward(input(&device), None);
        let merged = merge(adapted);
        assert_eq!(adapter_count(&merged), 0);
        let d = max_abs_diff(with_adapter, merged.forward(input(&device), None));
        // f32 reassociation ((W + BA)x against Wx + B(Ax)): up to 1.6e-5
        // seen over the (unseeded) random inits.
        assert!(d < 5e-5, "merged vs adapter logits differ by {d}");
    }

    #[test]
    fn adapters_are_invisible_to_checkpoint_io_and_named_for_optimizers() {
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Llama);
        let base = LlamaForCausalLM::<B>::init(&config, &device);
        let names_before: Vec<String> = named_tensors::<B, _>(&base).into_keys().collect();
        let lora = LoraConfig {
            target_modules: TargetModules::parse("q_proj, v_proj").unwrap(),
            ..Default::default()
        };
        let adapted = attach(base, &lora, 1, &device).unwrap();
        let names_after: Vec<String> = named_tensors::<B, _>(&adapted).into_keys().collect();
        assert_eq!(names_before, names_after);

        struct Names(Vec<String>, Vec<String>);
        impl<Bk: Backend> ModuleVisitor<Bk> for Names {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.1.push(name.into());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<Bk, D>>) {
                self.0.push(self.1.join("."));
            }
        }
        let mut v = Names(vec![], vec![]);
        visit_adapters(&adapted, &mut v);
        assert_eq!(v.0.len(), 2 * 2 * 2);
        assert_eq!(v.0[0], "model.layers.0.self_attn.q_proj.lora.lora_a");
        assert_eq!(v.0[3], "model.layers.0.self_attn.v_proj.lora.lora_b");
    }

    #[test]
    fn peft_round_trip_and_validation_errors() {
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Qwen2);
        let base = LlamaForCausalLM::<B>::init(&config, &device);
        // Parameters are initialised lazily and a clone of an uninitialised
        // one draws its own values: run once so that the clones share weights.
        let _ = base.forward(input(&device), None);
        let lora = LoraConfig {
            r: 2,
            alpha: 16.0,
            rslora: true,
            ..Default::default()
        };
        let adapted = randomize_b(attach(base.clone(), &lora, 5, &device).unwrap(), 9);
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&adapted, &lora, "tiny", dir.path(), SaveDtype::F32).unwrap();
        let a = peft_tensors(&adapted);
        assert_eq!(
            a["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].0,
            vec![2, config.intermediate_size]
        );
        assert_eq!(
            a["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].0,
            vec![config.hidden_size, 2]
        );
        let (loaded_cfg, loaded) = load_adapter(base.clone(), dir.path(), &device).unwrap();
        assert_eq!(loaded_cfg.r, 2);
        assert_eq!(
            loaded_cfg.target_modules,
            TargetModules::Names(TARGETS.map(String::from).to_vec())
        );
        assert_eq!(peft_tensors(&loaded), a);
        let d = max_abs_diff(
            adapted.forward(input(&device), None),
            loaded.forward(input(&device), None),
        );
        assert_eq!(d, 0.0);

        // An adapter for another model shape is a clear error.
        let other = LlamaForCausalLM::<B>::init(
            &LlamaConfig {
                hidden_size: 48,
                head_dim: 12,
                ..LlamaConfig::tiny(ModelType::Qwen2)
            },
            &device,
        );
        let err = load_adapter(other, dir.path(), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has shape"), "{err}");
        let err = TargetModules::parse("q_proj,qq_proj")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown module `qq_proj`"), "{err}");
    }

    #[test]
    fn only_adapters_get_gradients_when_base_is_frozen() {
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Llama);
        let base = LlamaForCausalLM::<AB>::init(&config, &device).no_grad();
        let model = randomize_b(attach(base, &LoraConfig::default(), 2, &device).unwrap(), 4);
        let loss = model.forward(input(&device), None).sum();
        let grads = loss.backward();
        assert!(
            model.model.layers[0]
                .self_attn
                .q_proj
                .weight
                .val()
                .grad(&grads)
                .is_none()
        );
        let adapter = model.model.layers[0]
            .self_attn
            .q_proj
            .lora
            .as_ref()
            .unwrap();
        assert!(adapter.lora_a.val().grad(&grads).is_some());
        assert!(adapter.lora_b.val().grad(&grads).is_some());
        // valid() keeps the adapters (inference on the inner backend).
        let inner = model.valid();
        assert_eq!(adapter_count(&inner), 14);
    }

    /// Sampling copies of two LoRA policies on one base: the second, laid
    /// out with the first's kept panels, computes what it computes laid out
    /// afresh (bit for bit): the adapters stay out of the panels.
    #[test]
    fn decoding_copies_reuse_the_frozen_base_panels() {
        let device = Default::default();
        let base = LlamaForCausalLM::<B>::init(&LlamaConfig::tiny(ModelType::Llama), &device);
        let _ = base.forward(input(&device), None);
        let lora = LoraConfig::default();
        let first = randomize_b(attach(base.clone(), &lora, 1, &device).unwrap(), 2);
        let second = randomize_b(attach(base, &lora, 3, &device).unwrap(), 4);
        let kept = first.for_decoding().decode_panels();
        assert!(!kept.is_empty());
        let bits = |m: &LlamaForCausalLM<B>| -> Vec<u32> {
            let y: Vec<f32> = m
                .forward(input(&device), None)
                .into_data()
                .to_vec()
                .unwrap();
            y.iter().map(|v| v.to_bits()).collect()
        };
        let fresh = second.clone().for_decoding();
        let reused = second.clone().for_decoding_with(&kept);
        assert_eq!(bits(&reused), bits(&fresh));
        // Every weight's panels are the kept ones, not laid out again.
        let (now, before) = (reused.decode_panels().0, kept.0);
        assert_eq!(now.len(), before.len());
        for (a, b) in now.iter().zip(&before) {
            assert!(std::sync::Arc::ptr_eq(
                a.as_ref().unwrap(),
                b.as_ref().unwrap()
            ));
        }
        assert!(!std::sync::Arc::ptr_eq(
            fresh.decode_panels().0[0].as_ref().unwrap(),
            before[0].as_ref().unwrap()
        ));
    }
}
