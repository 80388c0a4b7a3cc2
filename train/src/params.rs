//! Which parameters an optimizer updates, and how they are named.
//!
//! A parameter is trainable when its tensor requires a gradient: a full
//! fine-tune trains every base weight; a LoRA run freezes the base
//! (`Module::no_grad`) and trains the adapters. Names are checkpoint paths
//! (`model.layers.0.self_attn.q_proj.weight`, `...q_proj.lora_a`), so the
//! optimizer state in a checkpoint is keyed like the weights.

use std::collections::BTreeMap;

use alignkit_model::LlamaForCausalLM;
use alignkit_model::lora;
use alignkit_model::precision::to_f32;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// A model whose trainable parameters can be visited and replaced by name.
///
/// Implementations visit everything an optimizer may touch, including
/// parameters that burn's derived `visit` leaves out (LoRA adapters are
/// `#[module(skip)]` so they never leak into a base checkpoint).
pub trait Trainable<B: Backend>: Module<B> {
    fn visit_trainable<V: ModuleVisitor<B>>(&self, visitor: &mut V);
    fn map_trainable<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self;
}

impl<B: Backend> Trainable<B> for LlamaForCausalLM<B> {
    fn visit_trainable<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.visit(visitor);
        lora::visit_adapters(self, visitor);
    }

    fn map_trainable<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        let model = self.map(mapper);
        lora::map_adapters(model, mapper)
    }
}

/// Tracks the dotted parameter path while burn walks a module.
#[derive(Default, Debug)]
pub(crate) struct PathStack(Vec<String>);

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    pub(crate) fn exit(&mut self) {
        self.0.pop();
    }
    pub(crate) fn name(&self) -> String {
        self.0.join(".")
    }
}

/// Name and shape of one trainable parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

struct InfoCollector {
    path: PathStack,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for InfoCollector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        if tensor.is_require_grad() {
            self.out.push(ParamInfo {
                name: self.path.name(),
                shape: tensor.dims().to_vec(),
            });
        }
    }
}

/// The trainable parameters in visiting order.
pub fn trainable_params<B: Backend, M: Trainable<B>>(model: &M) -> Vec<ParamInfo> {
    let mut c = InfoCollector {
        path: PathStack::default(),
        out: Vec::new(),
    };
    model.visit_trainable(&mut c);
    c.out
}

/// Number of trainable scalars.
pub fn trainable_count<B: Backend, M: Trainable<B>>(model: &M) -> usize {
    trainable_params::<B, M>(model)
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum()
}

struct ValueCollector<B: Backend> {
    path: PathStack,
    out: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for ValueCollector<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        if !tensor.is_require_grad() {
            return;
        }
        let shape = tensor.dims().to_vec();
        let data = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32 above");
        self.out.insert(self.path.name(), (shape, data));
    }
}

/// Values of the trainable parameters, by name (host copies, f32).
pub fn trainable_values<B: Backend, M: Trainable<B>>(
    model: &M,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut c = ValueCollector::<B> {
        path: PathStack::default(),
        out: BTreeMap::new(),
        _backend: std::marker::PhantomData,
    };
    model.visit_trainable(&mut c);
    c.out
}

struct FiniteCheck<B: Backend> {
    path: PathStack,
    first_bad: Option<String>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for FiniteCheck<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        if self.first_bad.is_some() || !tensor.is_require_grad() {
            return;
        }
        let bad: bool = tensor
            .is_finite()
            .bool_not()
            .any()
            .into_scalar()
            .elem::<bool>();
        if bad {
            self.first_bad = Some(self.path.name());
        }
    }
}

/// The name of the first trainable parameter holding a NaN or ±Inf, if any.
/// Checked before a checkpoint is written so that bad weights are never saved.
pub fn first_non_finite<B: Backend, M: Trainable<B>>(model: &M) -> Option<String> {
    let mut c = FiniteCheck::<B> {
        path: PathStack::default(),
        first_bad: None,
        _backend: std::marker::PhantomData,
    };
    model.visit_trainable(&mut c);
    c.first_bad
}

/// Collects the gradient of each trainable parameter after a backward pass.
pub(crate) struct GradCollector<'a, B: AutodiffBackend> {
    pub(crate) path: PathStack,
    pub(crate) grads: &'a B::Gradients,
    pub(crate) out: Vec<(String, Tensor<B::InnerBackend, 1>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        if !tensor.is_require_grad() {
            return;
        }
        if let Some(grad) = tensor.grad(self.grads) {
            // Accumulated, clipped and applied in f32 whatever the weights'
            // dtype (mixed precision, see `AdamW::to_dtype`).
            let n = grad.shape().num_elements();
            self.out.push((self.path.name(), to_f32(grad.reshape([n]))));
        }
    }
}
