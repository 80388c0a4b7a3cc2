//! AdamW with parameter groups (Loshchilov & Hutter 2019, "Decoupled Weight
//! Decay Regularization", Algorithm 2), written out over burn tensors so that
//! its state is plain named tensors: saved in a checkpoint as
//! `optimizer.safetensors` and restored bit for bit.
//!
//! The arithmetic follows PyTorch's `torch.optim.AdamW` (single-tensor path):
//!
//! ```text
//! t ← t + 1
//! p ← p · (1 − lr · wd)                      (decay group only)
//! m ← β1 · m + (1 − β1) · g
//! v ← β2 · v + (1 − β2) · g²
//! p ← p − lr / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{ModuleMapper, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use alignkit_model::fused::update_in_place;
use alignkit_model::precision::{to_dtype, to_f32};

use crate::error::{Result, TrainError};
use crate::grads::Gradients;
use crate::params::{ParamInfo, PathStack, Trainable};
use crate::tensors::read_f32_tensors;
use alignkit_model::SaveDtype;
use alignkit_model::checkpoint::{PendingTensor, write_safetensors};

/// AdamW hyper-parameters other than the learning rate (which the schedule
/// drives). Defaults are `torch.optim.AdamW`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// β1, decay of the first moment. PyTorch: 0.9.
    pub beta1: f64,
    /// β2, decay of the second moment. PyTorch: 0.999.
    pub beta2: f64,
    /// ε added to the denominator. PyTorch: 1e-8.
    pub eps: f64,
    /// Decoupled weight decay of the decay group. PyTorch: 0.01.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(TrainError::config(field, format!("{v} is not in [0, 1)")));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(TrainError::config("optim.eps", "must be positive"));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(TrainError::config(
                "optim.weight_decay",
                "must be non-negative",
            ));
        }
        Ok(())
    }
}

/// The two AdamW parameter groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamGroup {
    /// Matrices (projections, embeddings, LM head, LoRA A and B): decayed.
    Decay,
    /// Biases and norm weights: not decayed.
    NoDecay,
}

impl ParamGroup {
    /// Every 1-D parameter — a bias or an RMSNorm weight in this model family —
    /// is exempt from weight decay (nanoGPT's rule; for Llama-family models it
    /// selects exactly transformers' `get_decay_parameter_names` exclusions).
    pub fn of(shape: &[usize]) -> Self {
        if shape.len() < 2 {
            ParamGroup::NoDecay
        } else {
            ParamGroup::Decay
        }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// AdamW state: the update count and per-parameter moments (created on a
/// parameter's first update, as in PyTorch).
///
/// # Mixed precision
///
/// [`AdamW::to_dtype`] stores a model's weights in bf16 (or f16) and keeps an
/// f32 master copy of each trained one here: updates (moments, decay, step)
/// run in f32 on the master, and the weight is the master rounded to its
/// dtype. Steps far below a bf16 weight's resolution (lr·update ≪ 2⁻⁸·|w|)
/// so accumulate instead of vanishing. Checkpoints store the masters as the
/// weights ([`AdamW::f32_weights`]), so a resumed run rebuilds them exactly.
#[derive(Debug)]
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    step: u64,
    moments: BTreeMap<String, Moments<B>>,
    /// f32 master copies of the trained weights stored in a lower precision.
    masters: BTreeMap<String, Tensor<B, 1>>,
}

const FORMAT: &str = "alignkit-adamw-1";

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
            masters: BTreeMap::new(),
        }
    }

    /// `model` with its weights stored in `dtype` (a float dtype) for
    /// training: each trained weight's current value becomes its f32 master
    /// copy (unless it has one) and the weight is that master rounded to
    /// `dtype`; frozen weights are rounded. With `DType::F32`, trained
    /// weights take their masters' values back and the masters are dropped.
    pub fn to_dtype<AB, M>(&mut self, model: M, dtype: DType) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
    {
        if dtype == DType::F32 && self.masters.is_empty() {
            return model;
        }
        let mut mapper = PrecisionMapper::<AB> {
            path: PathStack::default(),
            masters: &mut self.masters,
            dtype: Some(dtype),
        };
        model.map_trainable(&mut mapper)
    }

    /// `model` with each trained weight replaced by its f32 master copy (the
    /// weights to save or export); frozen weights are left as they are.
    pub fn f32_weights<AB, M>(&self, model: M) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
    {
        if self.masters.is_empty() {
            return model;
        }
        let mut masters = self.masters.clone();
        let mut mapper = PrecisionMapper::<AB> {
            path: PathStack::default(),
            masters: &mut masters,
            dtype: None,
        };
        model.map_trainable(&mut mapper)
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of updates applied so far (PyTorch's `state["step"]`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Apply one update with learning rate `lr` to every trainable parameter
    /// that has a gradient in `grads`. Parameters without one are left alone.
    pub fn step<AB, M>(&mut self, model: M, mut grads: Gradients<B>, lr: f64) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: Trainable<AB>,
    {
        self.step += 1;
        let t = self.step as i32;
        let c = &self.config;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let mut mapper = UpdateMapper::<AB> {
            path: PathStack::default(),
            grads: &mut grads,
            moments: &mut self.moments,
            masters: &mut self.masters,
            lr,
            step_size: lr / bias_correction1,
            bias_correction2_sqrt,
            config: c,
        };
        model.map_trainable(&mut mapper)
    }

    /// Write the state as `optimizer.safetensors`: tensors `exp_avg.<param>`
    /// and `exp_avg_sq.<param>` in f32, the update count in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        // One tensor at a time: the moments are twice the trained weights.
        let mut tensors = Vec::new();
        for (name, m) in &self.moments {
            for (kind, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                tensors.push((
                    format!("{kind}.{name}"),
                    PendingTensor::of(t.clone(), SaveDtype::F32),
                ));
            }
        }
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
        ]);
        Ok(write_safetensors(path, tensors, Some(metadata))?)
    }

    /// Restore the state written by [`AdamW::save`]. Every moment must belong
    /// to a trainable parameter of `params` with the same number of elements.
    pub fn load(
        config: AdamWConfig,
        path: &Path,
        params: &[ParamInfo],
        device: &B::Device,
    ) -> Result<Self> {
        let (mut tensors, metadata) = read_f32_tensors(path)?;
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(TrainError::checkpoint(
                path,
                format!("not an alignkit AdamW state (metadata format is not {FORMAT})"),
            ));
        }
        let step: u64 = metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| TrainError::checkpoint(path, "metadata `step` missing or invalid"))?;
        let mut moments = BTreeMap::new();
        for p in params {
            let n: usize = p.shape.iter().product();
            let mut take = |kind: &str| -> Result<Option<Tensor<B, 1>>> {
                let key = format!("{kind}.{}", p.name);
                match tensors.remove(&key) {
                    None => Ok(None),
                    Some((shape, data)) => {
                        if shape != [n] {
                            return Err(TrainError::checkpoint(
                                path,
                                format!(
                                    "`{key}` has shape {shape:?}, but parameter `{}` has {n} elements; the checkpoint is from a different model",
                                    p.name
                                ),
                            ));
                        }
                        Ok(Some(Tensor::from_data(TensorData::new(data, [n]), device)))
                    }
                }
            };
            match (take("exp_avg")?, take("exp_avg_sq")?) {
                (Some(exp_avg), Some(exp_avg_sq)) => {
                    moments.insert(
                        p.name.clone(),
                        Moments {
                            exp_avg,
                            exp_avg_sq,
                        },
                    );
                }
                (None, None) => {}
                _ => {
                    return Err(TrainError::checkpoint(
                        path,
                        format!("incomplete moments for `{}`", p.name),
                    ));
                }
            }
        }
        if let Some(name) = tensors.keys().next() {
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "state `{name}` belongs to no trainable parameter of this model; the checkpoint is from a different model or LoRA setup"
                ),
            ));
        }
        // Masters are rebuilt by `to_dtype` from the checkpoint's weights,
        // which are the masters (see `f32_weights`).
        Ok(Self {
            config,
            step,
            moments,
            masters: BTreeMap::new(),
        })
    }
}

struct UpdateMapper<'a, AB: AutodiffBackend> {
    path: PathStack,
    grads: &'a mut Gradients<AB::InnerBackend>,
    moments: &'a mut BTreeMap<String, Moments<AB::InnerBackend>>,
    masters: &'a mut BTreeMap<String, Tensor<AB::InnerBackend, 1>>,
    lr: f64,
    step_size: f64,
    bias_correction2_sqrt: f64,
    config: &'a AdamWConfig,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for UpdateMapper<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        if !tensor.is_require_grad() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let name = self.path.name();
        let Some(grad) = self.grads.remove(&name) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.config;
        let dims = tensor.dims();
        let dtype = tensor.dtype();
        let n = grad.dims()[0];
        // In mixed precision the update runs on the f32 master copy.
        let p = match dtype {
            DType::F32 => tensor.inner().reshape([n]),
            _ => self
                .masters
                .remove(&name)
                .unwrap_or_else(|| to_f32(tensor.inner().reshape([n]))),
        };
        let decay = if ParamGroup::of(&dims) == ParamGroup::Decay {
            1.0 - self.lr * c.weight_decay
        } else {
            1.0
        };
        let Moments {
            exp_avg,
            exp_avg_sq,
        } = self.moments.remove(&name).unwrap_or_else(|| Moments {
            exp_avg: grad.zeros_like(),
            exp_avg_sq: grad.zeros_like(),
        });
        // The same arithmetic in f32, in one pass over p, g, m and v where
        // the backend allows (the CPU backend), else as burn ops.
        let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
        let (bc2, eps, step) = (
            self.bias_correction2_sqrt as f32,
            c.eps as f32,
            self.step_size as f32,
        );
        let decay32 = decay as f32;
        let (p, exp_avg, exp_avg_sq) =
            match update_in_place([p, grad, exp_avg, exp_avg_sq], |[p, g, m, v]| {
                for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m).zip(v) {
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    *p = *p * decay32 - *m / (v.sqrt() / bc2 + eps) * step;
                }
            }) {
                Ok([p, _, m, v]) => (p, m, v),
                Err([p, grad, exp_avg, exp_avg_sq]) => {
                    let p = if decay != 1.0 { p.mul_scalar(decay) } else { p };
                    let exp_avg =
                        exp_avg.mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
                    let exp_avg_sq = exp_avg_sq.mul_scalar(c.beta2)
                        + (grad.clone() * grad).mul_scalar(1.0 - c.beta2);
                    let denom = exp_avg_sq
                        .clone()
                        .sqrt()
                        .div_scalar(self.bias_correction2_sqrt)
                        .add_scalar(c.eps);
                    let p = p - (exp_avg.clone() / denom).mul_scalar(self.step_size);
                    (p, exp_avg, exp_avg_sq)
                }
            };
        let p = match dtype {
            DType::F32 => p,
            _ => {
                self.masters.insert(name.clone(), p.clone());
                to_dtype(p, dtype)
            }
        };
        self.moments.insert(
            name,
            Moments {
                exp_avg,
                exp_avg_sq,
            },
        );
        let updated = Tensor::<AB, D>::from_inner(p.reshape(dims)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// [`AdamW::to_dtype`] (`dtype` given) and [`AdamW::f32_weights`] (`None`).
struct PrecisionMapper<'a, AB: AutodiffBackend> {
    path: PathStack,
    masters: &'a mut BTreeMap<String, Tensor<AB::InnerBackend, 1>>,
    dtype: Option<DType>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for PrecisionMapper<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let trained = tensor.is_require_grad();
        let value = match (trained, self.dtype) {
            // Frozen: rounded to the run's dtype, or left alone.
            (false, Some(dtype)) => to_dtype(tensor.inner(), dtype),
            (false, None) => return Param::from_mapped_value(id, tensor, mapper),
            (true, dtype) => {
                let dims = tensor.dims();
                let name = self.path.name();
                let master = match self.masters.remove(&name) {
                    Some(master) => master.reshape(dims),
                    None => to_f32(tensor.inner()),
                };
                match dtype {
                    None | Some(DType::F32) => master,
                    Some(dtype) => {
                        let n = master.shape().num_elements();
                        self.masters.insert(name, master.clone().reshape([n]));
                        to_dtype(master, dtype)
                    }
                }
            }
        };
        let value = Tensor::<AB, D>::from_inner(value);
        let value = if trained { value.require_grad() } else { value };
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;

    type AB = Autodiff<Flex>;
    type Inner = Flex;

    /// A two-parameter module: a matrix (decayed) and a vector (not decayed).
    #[derive(Module, Debug)]
    struct Toy<B: Backend> {
        w: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
    }

    impl<Bk: Backend> Trainable<Bk> for Toy<Bk> {
        fn visit_trainable<V: burn::module::ModuleVisitor<Bk>>(&self, v: &mut V) {
            self.visit(v)
        }
        fn map_trainable<M: ModuleMapper<Bk>>(self, m: &mut M) -> Self {
            self.map(m)
        }
    }

    fn toy() -> Toy<AB> {
        let dev = Default::default();
        Toy {
            w: Param::from_data(TensorData::new(vec![1.0f32, -2.0], [1, 2]), &dev),
            b: Param::from_data(TensorData::new(vec![0.5f32], [1]), &dev),
        }
    }

    fn grads(w: [f32; 2], b: f32) -> Gradients<Inner> {
        let dev = Default::default();
        let mut g = Gradients::new();
        g.add(
            "w".into(),
            Tensor::from_data(TensorData::new(w.to_vec(), [2]), &dev),
        );
        g.add(
            "b".into(),
            Tensor::from_data(TensorData::new(vec![b], [1]), &dev),
        );
        g
    }

    fn vals(t: Tensor<AB, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    /// Golden values computed by hand with PyTorch's formula.
    ///
    /// Step 1, lr = 0.1, wd = 0.5, β = (0.9, 0.999), ε = 1e-8, g_w = (0.2, −0.4):
    ///   decay: w ← w · (1 − 0.1·0.5) = (0.95, −1.9)
    ///   m = 0.1·g = (0.02, −0.04); v = 0.001·g² = (4e−5, 1.6e−4)
    ///   m̂ = m / 0.1 = g; √v̂ = √(v / 0.001) = |g|
    ///   w ← w − 0.1 · g / (|g| + 1e−8) = (0.95 − 0.1, −1.9 + 0.1) = (0.85, −1.8)
    /// The bias (1-D) gets no decay: b = 0.5 − 0.1 · sign(g_b) = 0.4 for g_b = 3.
    #[test]
    fn first_step_matches_pytorch_by_hand() {
        let config = AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::<Inner>::new(config);
        let model = opt.step::<AB, _>(toy(), grads([0.2, -0.4], 3.0), 0.1);
        let w = vals(model.w.val());
        assert!(
            (w[0] - 0.85).abs() < 1e-6 && (w[1] + 1.8).abs() < 1e-6,
            "{w:?}"
        );
        let b: Vec<f32> = model.b.val().into_data().to_vec().unwrap();
        assert!((b[0] - 0.4).abs() < 1e-6, "{b:?}");
        assert!(model.w.val().is_require_grad());
    }

    /// Step 2 with the same gradient g: m = 0.19·g, v = 0.001999·g²,
    /// m̂ = 0.19g/0.19 = g, v̂ = 0.001999g²/0.001999 = g², so the step is again
    /// lr · sign(g) (no decay here): w = (1 − 0.1 − 0.1, −2 + 0.1 + 0.1).
    #[test]
    fn bias_correction_keeps_constant_gradient_steps_equal() {
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::<Inner>::new(config);
        let model = opt.step::<AB, _>(toy(), grads([0.2, -0.4], 3.0), 0.1);
        let model = opt.step::<AB, _>(model, grads([0.2, -0.4], 3.0), 0.1);
        let w = vals(model.w.val());
        assert!(
            (w[0] - 0.8).abs() < 1e-5 && (w[1] + 1.8).abs() < 1e-5,
            "{w:?}"
        );
        assert_eq!(opt.step_count(), 2);
    }

    /// bf16 weights with f32 masters: 100 steps of ≈1e-4 each, every one
    /// far below bf16's spacing near 1 (2⁻⁷), move the master exactly as an
    /// f32 run moves its weights, and the bf16 weight is the master rounded
    /// (a bf16 weight updated in place would round each step away and stay
    /// at 1.0).
    #[test]
    fn bf16_steps_accumulate_in_the_f32_masters() {
        let config = AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let (mut full, mut mixed) = (
            AdamW::<Inner>::new(config.clone()),
            AdamW::<Inner>::new(config),
        );
        let mut reference = toy();
        let mut model = mixed.to_dtype::<AB, _>(toy(), DType::BF16);
        assert_eq!(model.w.val().dtype(), DType::BF16);
        for step in 0..100 {
            reference = full.step::<AB, _>(reference, grads([0.2, -0.4], 3.0), 1e-4);
            model = mixed.step::<AB, _>(model, grads([0.2, -0.4], 3.0), 1e-4);
            if step == 0 {
                // One step: the bf16 weight cannot move yet.
                assert_eq!(vals(model.w.val()), vec![1.0, -2.0]);
            }
        }
        let bits = |v: Vec<f32>| -> Vec<u32> { v.into_iter().map(f32::to_bits).collect() };
        let master = mixed.f32_weights::<AB, _>(model.clone());
        assert_eq!(master.w.val().dtype(), DType::F32);
        assert_eq!(bits(vals(master.w.val())), bits(vals(reference.w.val())));
        let w = vals(reference.w.val());
        assert!(
            (w[0] - 0.99).abs() < 1e-5 && (w[1] + 1.99).abs() < 1e-5,
            "{w:?}"
        );
        let rounded: Vec<f32> = w
            .iter()
            .map(|&x| burn::tensor::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(vals(model.w.val()), rounded);
        assert!(model.w.val().is_require_grad() && master.w.val().is_require_grad());

        // Back to f32: the weights become the masters.
        let back = mixed.to_dtype::<AB, _>(model, DType::F32);
        assert_eq!(bits(vals(back.w.val())), bits(w));
        assert!(mixed.masters.is_empty());
    }

    #[test]
    fn state_round_trips_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let mut opt = AdamW::<Inner>::new(AdamWConfig::default());
        let model = opt.step::<AB, _>(toy(), grads([0.123, -0.456], 0.789), 1e-3);
        opt.save(&path).unwrap();
        let params = crate::params::trainable_params::<AB, _>(&model);
        let mut loaded =
            AdamW::<Inner>::load(AdamWConfig::default(), &path, &params, &Default::default())
                .unwrap();
        assert_eq!(loaded.step_count(), 1);
        // Same next step from the original and the restored optimizer.
        let a = opt.step::<AB, _>(model.clone(), grads([0.3, 0.1], -0.2), 1e-3);
        let b = loaded.step::<AB, _>(model, grads([0.3, 0.1], -0.2), 1e-3);
        let bits =
            |t: Tensor<AB, 2>| -> Vec<u32> { vals(t).into_iter().map(f32::to_bits).collect() };
        assert_eq!(bits(a.w.val()), bits(b.w.val()));
    }

    #[test]
    fn load_rejects_state_of_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let mut opt = AdamW::<Inner>::new(AdamWConfig::default());
        let _ = opt.step::<AB, _>(toy(), grads([0.1, 0.1], 0.1), 1e-3);
        opt.save(&path).unwrap();
        let other = vec![ParamInfo {
            name: "w".into(),
            shape: vec![3, 1],
        }];
        let err = AdamW::<Inner>::load(AdamWConfig::default(), &path, &other, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("different model"), "{err}");
    }
}
