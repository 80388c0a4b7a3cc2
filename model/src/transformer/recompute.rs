//! Activation checkpointing per decoder layer (transformers'
//! `gradient_checkpointing`): the forward pass keeps only each layer's input,
//! and the backward pass recomputes one layer at a time from it. With
//! [`Granularity::Selective`] the forward pass also keeps the outputs of the
//! layer's projections, and the recomputation forms none of them again: only
//! the attention core, the norms and the elementwise ops (Korthikanti et al.
//! 2022, "Reducing Activation Recomputation in Large Transformer Models").
//! The last layer is not recomputed in either case: its activations are kept
//! as in the plain pass, since its backward pass follows the loss's at once
//! (the peak is a recomputed layer's anyway).
//!
//! burn 0.21's autodiff runs a backward pass with its graph locked, so a node
//! cannot run a second backward pass (the layer's) inside the first. The
//! recomputation is therefore chained outside the graph:
//!
//! 1. [`forward`] runs every layer but the last with its parameters detached
//!    (no graph, nothing kept but the layer's input and, if selective, its
//!    projections' outputs) and hands the last layer's input on as a fresh
//!    leaf, `top`, so the loss's graph starts there.
//! 2. [`backward`] runs the loss's backward pass, which ends at `top` with
//!    dL/d`top`; then, from the layer below `top` down, recomputes the layer with
//!    graph from its saved input (a leaf) and runs the backward pass of
//!    sum(layer(x) ⊙ g), whose gradients are the layer's parameter gradients
//!    and the next g = dL/dx; last, the embedding's.
//!
//! Each parameter's gradient is computed by the same kernels on the same
//! values as without checkpointing, so the gradients are identical. Any
//! autodiff backend that [`enable`] was called for (the trainers do, through
//! `LoopConfig::checkpointing`); LoRA dropout is refused, since the
//! recomputed layer would draw another mask ([`unsupported`]).

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::VecDeque;

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::{DecoderLayer, Embedding, ForwardInput, LayerInputs, LlamaModel, Products};
use crate::by_type::ByType;
use crate::fused;

/// What a checkpointed forward pass keeps of each layer (Megatron-LM's
/// `recompute_granularity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// The layer's input only: the backward pass forms the layer's
    /// projections again (all but the MLP's down projection, whose output is
    /// never read), about one more forward pass of time.
    #[default]
    Full,
    /// Also the outputs of the q, k, v, o, gate and up projections
    /// (2·F + 2·C + 2·K·D values per token and layer, f32: 86 KB for
    /// Llama-3.2-1B): the backward pass recomputes the attention core, the
    /// norms and the elementwise ops, but no projection. Most of full
    /// checkpointing's extra time goes, and about half of the plain pass's
    /// activations are still not kept (the attention probabilities, the
    /// norms' and SwiGLU's intermediates). On the CPU backend's kernels,
    /// and on burn's other autodiff backends (CUDA, wgpu, ndarray) through
    /// [`fused::given`]'s node; on a backend neither covers it runs as
    /// `Full`.
    Selective,
}

/// One layer of a checkpointed forward pass: what its recomputation starts from.
struct Saved<B: AutodiffBackend> {
    /// The layer, with its live parameters.
    layer: DecoderLayer<B>,
    /// Its input, untracked.
    input: Tensor<B, 3>,
    /// Its projections' outputs ([`Products::Keep`]); empty: recompute them.
    kept: Vec<Tensor<B, 3>>,
}

/// One checkpointed forward pass: what its backward pass recomputes from.
struct Chain<B: AutodiffBackend> {
    embed: Embedding<B>,
    ids: Tensor<B, 2, Int>,
    /// Every layer below the last one.
    layers: Vec<Saved<B>>,
    inputs: LayerInputs<B>,
    /// The last layer's input as a leaf: where the loss's graph starts.
    top: Tensor<B, 3>,
}

/// A backend's [`forward_on`], type-erased: (&LlamaModel<B>, ForwardInput<B>) → Tensor<B, 3>.
type ErasedForward = fn(&dyn Any, Box<dyn Any>) -> Box<dyn Any>;

/// The backends [`enable`] was called for.
static ENABLED: ByType<ErasedForward> = ByType::new();

thread_local! {
    /// Checkpointed forward passes whose backward pass has not run yet
    /// (`Chain<B>`s, by backend).
    static PENDING: RefCell<Vec<(TypeId, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
    /// The `top`s of the last dropped passes, to catch a backward pass that
    /// arrives after its forward pass was dropped.
    static DROPPED: RefCell<VecDeque<(TypeId, Box<dyn Any>)>> = const { RefCell::new(VecDeque::new()) };
    /// Layers recomputed on this thread so far.
    static RECOMPUTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many dropped passes [`DROPPED`] remembers.
const REMEMBER_DROPPED: usize = 4;

/// Make checkpointed forward passes possible on backend `B` (a model's
/// `gradient_checkpointing` flag then takes effect on it).
pub fn enable<B: AutodiffBackend>() {
    // Recomputed layers take their kept (or unread) projection outputs as
    // given on composed-op backends too.
    fused::given::enable::<B>();
    ENABLED.insert::<B>(forward_erased::<B>);
}

/// Why checkpointing cannot run for this model; `None`: it can.
pub fn unsupported<B: Backend>(model: &LlamaModel<B>) -> Option<String> {
    let dropout = model
        .layers
        .iter()
        .flat_map(DecoderLayer::linears)
        .filter_map(|l| l.lora.as_ref())
        .any(|a| a.dropout > 0.0);
    dropout.then(|| {
        "needs lora.dropout = 0 (a recomputed layer would draw another dropout mask)".to_string()
    })
}

/// Turn checkpointing of `granularity` on for `model` on backend `B`
/// ([`enable`] and the model's flags), or say why it cannot run
/// ([`unsupported`]).
pub fn turn_on<B: AutodiffBackend>(
    model: &mut LlamaModel<B>,
    granularity: Granularity,
) -> Result<(), String> {
    if let Some(why) = unsupported(model) {
        return Err(why);
    }
    enable::<B>();
    model.gradient_checkpointing = true;
    model.recompute = granularity;
    Ok(())
}

/// The layer with every parameter (adapters included) detached: its forward
/// pass records no graph and keeps no activations.
fn detached<B: AutodiffBackend>(layer: &DecoderLayer<B>) -> DecoderLayer<B> {
    let mut layer = layer.clone().no_grad();
    for l in layer.linears_mut() {
        l.lora = l.lora.take().map(|adapter| adapter.no_grad());
    }
    layer
}

/// The checkpointed forward pass of `model` (final hidden states, after the
/// final norm), or the input back when checkpointing is not enabled for this
/// backend (the caller then runs the plain pass).
pub(crate) fn forward<B: Backend>(
    model: &LlamaModel<B>,
    input: ForwardInput<B>,
) -> Result<Tensor<B, 3>, ForwardInput<B>> {
    match (ENABLED.get::<B>(), model.layers.is_empty()) {
        (Some(f), false) => {
            let out = f(model as &dyn Any, Box::new(input));
            Ok(*out.downcast::<Tensor<B, 3>>().expect("registered for B"))
        }
        _ => Err(input),
    }
}

fn forward_erased<B: AutodiffBackend>(model: &dyn Any, input: Box<dyn Any>) -> Box<dyn Any> {
    let model = model
        .downcast_ref::<LlamaModel<B>>()
        .expect("registered for B");
    let input = *input
        .downcast::<ForwardInput<B>>()
        .expect("registered for B");
    Box::new(forward_on(model, input))
}

fn forward_on<B: AutodiffBackend>(model: &LlamaModel<B>, input: ForwardInput<B>) -> Tensor<B, 3> {
    let (last, below) = model.layers.split_last().expect("checked: not empty");
    let inputs = model.layer_inputs(input.positions, input.mask);
    // Where a projection's output cannot be taken as given, the layer
    // would form it again anyway: keep nothing.
    let keep =
        model.recompute == Granularity::Selective && fused::linear_takes_given::<B>(model.dtype());
    let mut x = model
        .embed_tokens
        .clone()
        .no_grad()
        .forward(input.input_ids.clone());
    let mut layers = Vec::with_capacity(below.len());
    for layer in below {
        let mut kept = Vec::new();
        let mut products = match keep {
            true => Products::Keep(&mut kept),
            false => Products::Form,
        };
        let next = detached(layer).forward_in(x.clone(), &inputs, None, &mut products);
        layers.push(Saved {
            layer: layer.clone(),
            input: x,
            kept,
        });
        x = next;
    }
    let top = x.require_grad();
    let out = last.forward(top.clone(), &inputs, None);
    let chain = Chain {
        embed: model.embed_tokens.clone(),
        ids: input.input_ids,
        layers,
        inputs,
        top,
    };
    PENDING.with(|p| {
        p.borrow_mut()
            .push((TypeId::of::<B>(), Box::new(chain) as Box<dyn Any>))
    });
    model.norm.forward(out)
}

impl<B: AutodiffBackend> Chain<B> {
    /// The backward passes below `top`, given dL/d`top`.
    fn backward(self, mut g: Tensor<B::InnerBackend, 3>, out: &mut Vec<B::Gradients>) {
        for saved in self.layers.into_iter().rev() {
            let x = saved.input.require_grad();
            let kept = (!saved.kept.is_empty()).then(|| saved.kept.into_iter());
            // Only the gradients of sum(y ⊙ g) are used, not y's value.
            let y = saved.layer.forward_in(
                x.clone(),
                &self.inputs,
                None,
                &mut Products::Recompute(kept),
            );
            let grads = (y * Tensor::from_inner(g)).sum().backward();
            g = x
                .grad(&grads)
                .expect("the layer's input is a leaf of its graph");
            out.push(grads);
            RECOMPUTED.with(|r| r.set(r.get() + 1));
        }
        if self.embed.weight.is_require_grad() {
            let e = self.embed.forward(self.ids);
            out.push((e * Tensor::from_inner(g)).sum().backward());
        }
    }
}

/// The gradients of `loss`: its own backward pass, followed by the
/// recomputing passes of every checkpointed forward pass it depends on (one
/// gradient set per layer). Without checkpointing, the one set of
/// `loss.backward()`.
///
/// Backward passes must run in the order of their forward passes: a
/// checkpointed forward pass recorded before the newest one this loss depends
/// on, and not needed by it, is taken for one evaluated without a loss and
/// dropped; differentiating it later panics.
pub fn backward<B: AutodiffBackend>(loss: Tensor<B, 1>) -> Vec<B::Gradients> {
    let id = TypeId::of::<B>();
    let (mine, others): (Vec<_>, Vec<_>) = PENDING
        .with(|p| std::mem::take(&mut *p.borrow_mut()))
        .into_iter()
        .partition(|(t, _)| *t == id);
    let mut out = vec![loss.backward()];
    let late = DROPPED.with(|d| {
        d.borrow().iter().any(|(t, top)| {
            *t == id
                && top
                    .downcast_ref::<Tensor<B, 3>>()
                    .is_some_and(|top| top.grad(&out[0]).is_some())
        })
    });
    assert!(
        !late,
        "a checkpointed forward pass was differentiated after a later one: \
         run the backward passes in the order of the forward passes"
    );
    let mut newest_used = None;
    let mut unused = Vec::new();
    for (i, (_, chain)) in mine.into_iter().enumerate() {
        let chain = *chain
            .downcast::<Chain<B>>()
            .expect("stored under B's TypeId");
        match chain.top.grad(&out[0]) {
            Some(g) => {
                newest_used = Some(i);
                chain.backward(g, &mut out);
            }
            None => unused.push((i, chain)),
        }
    }
    let (drop, keep): (Vec<_>, Vec<_>) = unused
        .into_iter()
        .partition(|(i, _)| newest_used.is_some_and(|n| *i < n));
    DROPPED.with(|d| {
        let mut d = d.borrow_mut();
        for (_, chain) in drop {
            d.push_back((id, Box::new(chain.top) as Box<dyn Any>));
            if d.len() > REMEMBER_DROPPED {
                d.pop_front();
            }
        }
    });
    // Recomputing runs layers, not `LlamaModel::forward`: nothing was
    // recorded meanwhile, so PENDING is still the empty vector taken above.
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        pending.extend(others);
        pending.extend(
            keep.into_iter()
                .map(|(_, c)| (id, Box::new(c) as Box<dyn Any>)),
        );
    });
    out
}

/// Checkpointed forward passes waiting for their backward pass (for tests).
pub fn pending() -> usize {
    PENDING.with(|p| p.borrow().len())
}

/// Decoder layers recomputed by backward passes on this thread so far (for
/// tests: a trainer run with checkpointing recomputes, one without does not).
pub fn layers_recomputed() -> u64 {
    RECOMPUTED.with(|r| r.get())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::TensorData;
    use burn::tensor::activation::log_softmax;

    use burn::backend::{Autodiff, Flex};

    use super::*;
    use crate::config::{LlamaConfig, ModelType};
    use crate::lora::{self, LoraConfig};
    use crate::mask::attention_mask;
    use crate::precision::cast_model;
    use crate::transformer::LlamaForCausalLM;
    use burn::tensor::DType;

    type Ad = Autodiff<Flex>;
    type Grads = <Ad as AutodiffBackend>::Gradients;

    /// Two rows of 9 tokens, the second left-padded by 3.
    fn input() -> ForwardInput<Ad> {
        let device = Default::default();
        let ids: Vec<i64> = (0..18).map(|i| (i * 29 + 3) % 90 + 3).collect();
        let positions: Vec<i64> = (0..9).chain((0..9).map(|p: i64| (p - 3).max(0))).collect();
        let valid = vec![vec![true; 9], (0..9).map(|p| p >= 3).collect()];
        ForwardInput {
            input_ids: Tensor::from_data(TensorData::new(ids, [2, 9]), &device),
            positions: Tensor::from_data(TensorData::new(positions, [2, 9]), &device),
            mask: attention_mask(&valid, 9, None, &device),
        }
    }

    /// A weighted sum of next-token log-probs (weights of both signs), its
    /// value and its gradient sets.
    fn loss_and_grads(model: &LlamaForCausalLM<Ad>) -> (f32, Vec<Grads>) {
        let input = input();
        let targets = input.input_ids.clone().narrow(1, 1, 8);
        let logits = model.forward(input, None).narrow(1, 0, 8);
        let logp = log_softmax(logits, 2).gather(2, targets.unsqueeze_dim::<3>(2));
        let w: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let w = Tensor::<Ad, 3>::from_data(TensorData::new(w, [2, 8, 1]), &Default::default());
        let loss = (logp.clone() * w.cast(logp.dtype())).sum();
        let value = loss.clone().cast(DType::F32).into_scalar();
        (value, backward(loss))
    }

    /// Every trainable tensor's gradient, summed over the sets, by name.
    struct Collect<'a> {
        sets: &'a [Grads],
        out: BTreeMap<String, Vec<f32>>,
    }

    impl ModuleVisitor<Ad> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Ad, D>>) {
            let t = param.val();
            let mut sum: Option<Tensor<Flex, D>> = None;
            for set in self.sets {
                if let Some(g) = t.grad(set) {
                    sum = Some(match sum {
                        None => g,
                        Some(s) => s + g,
                    });
                }
            }
            if let Some(s) = sum {
                let name = format!("{}{:?}", param.id, s.shape());
                let s = s.cast(DType::F32).into_data().to_vec().unwrap();
                self.out.insert(name, s);
            }
        }
    }

    fn gradients(model: &LlamaForCausalLM<Ad>, sets: &[Grads]) -> BTreeMap<String, Vec<f32>> {
        let mut c = Collect {
            sets,
            out: BTreeMap::new(),
        };
        model.visit(&mut c);
        lora::visit_adapters(model, &mut c);
        c.out
    }

    /// The plain and the checkpointed passes of `model`, at both
    /// granularities, in f32 (the CPU kernels) and in f64 (burn's ops, as
    /// on CUDA or wgpu): same loss, same gradients (bit for bit), nothing
    /// left pending; full recomputation forms the 6 read projections of every
    /// layer below the last again, selective none, and neither forms the
    /// down projection's, unless a post-norm reads it (OLMo 2).
    fn assert_same(model: LlamaForCausalLM<Ad>, expect_params: usize) {
        assert_same_in(model.clone(), expect_params, DType::F32);
        assert_same_in(cast_model(model, DType::F64), expect_params, DType::F64);
    }

    fn assert_same_in(model: LlamaForCausalLM<Ad>, expect_params: usize, dtype: DType) {
        assert_eq!(model.model.dtype(), dtype);
        // Products the CPU kernels formed, and products burn's ops took as
        // given ([`crate::fused::given`]).
        let counts = || {
            (
                crate::fused::products_formed(),
                crate::fused::given::products_taken_as_given(),
            )
        };
        let before = counts();
        let (plain_loss, plain_sets) = loss_and_grads(&model);
        let plain_products = counts().0 - before.0;
        assert_eq!(plain_sets.len(), 1);
        let plain = gradients(&model, &plain_sets);
        assert_eq!(plain.len(), expect_params);

        let layers = model.model.layers.len();
        let below = layers as u64 - 1;
        let post = model.model.layers[0].post_feedforward_layernorm.is_some() as u64;
        for granularity in [Granularity::Full, Granularity::Selective] {
            let mut model = model.clone();
            turn_on(&mut model.model, granularity).unwrap();
            assert!(model.model.gradient_checkpointing);
            let before = counts();
            let (loss, sets) = loss_and_grads(&model);
            let after = counts();
            let (formed, given) = (after.0 - before.0, after.1 - before.1);
            // What the recomputation forms again, and takes as given.
            let (again, taken) = match granularity {
                Granularity::Full => ((6 + post) * below, (1 - post) * below),
                Granularity::Selective => (post * below, (7 - post) * below),
            };
            match dtype {
                DType::F32 => assert_eq!(
                    (formed, given),
                    (plain_products + again, 0),
                    "{granularity:?}"
                ),
                _ => assert_eq!((formed, given), (0, taken), "{granularity:?} {dtype:?}"),
            }
            assert_eq!(pending(), 0);
            // The loss's set, one per layer below the last, and the
            // embedding's when it trains.
            assert!(sets.len() >= layers, "{}", sets.len());
            let checkpointed = gradients(&model, &sets);
            assert_eq!(loss.to_bits(), plain_loss.to_bits());
            assert_eq!(
                checkpointed.keys().collect::<Vec<_>>(),
                plain.keys().collect::<Vec<_>>()
            );
            for (name, g) in &plain {
                assert!(g.iter().any(|v| *v != 0.0), "{name}: zero gradient");
                assert_eq!(&checkpointed[name], g, "{granularity:?} {dtype:?} {name}");
            }
        }
    }

    #[test]
    fn full_fine_tune_gradients_are_identical_with_tied_embeddings_and_biases() {
        let config = LlamaConfig {
            tie_word_embeddings: true,
            num_hidden_layers: 3,
            ..LlamaConfig::tiny(ModelType::Qwen2)
        };
        let model = LlamaForCausalLM::<Ad>::init(&config, &Default::default());
        // Per layer: 2 norms, 7 weights, 3 q/k/v biases; the embedding; the final norm.
        assert_same(model, 3 * 12 + 2);
    }

    /// Qwen3 (q/k norms per head), SmolLM3 (a NoPE layer), OLMo 2
    /// (post-norms, whole q/k norms) and Gemma 3 (four offset norms, GeGLU,
    /// a sliding layer with its own RoPE base, scaled embeddings).
    #[test]
    fn gradients_are_identical_for_every_family_variant() {
        for (model_type, per_layer) in [
            (ModelType::Qwen3, 2 + 7 + 2),
            (ModelType::Smollm3, 2 + 7),
            (ModelType::Olmo2, 2 + 7 + 2),
            (ModelType::Gemma3, 4 + 7 + 2),
        ] {
            let config = LlamaConfig {
                num_hidden_layers: 3,
                ..LlamaConfig::tiny(model_type)
            };
            let model = LlamaForCausalLM::<Ad>::init(&config, &Default::default());
            // The embedding, the final norm, the untied LM head.
            assert_same(model, 3 * per_layer + 3);
        }
    }

    #[test]
    fn lora_gradients_are_identical_and_the_base_gets_none() {
        let config = LlamaConfig {
            num_hidden_layers: 3,
            ..LlamaConfig::tiny(ModelType::Llama)
        };
        let device = Default::default();
        let base = LlamaForCausalLM::<Ad>::init(&config, &device).no_grad();
        let model = lora::attach(base, &LoraConfig::default(), 3, &device).unwrap();
        // B starts at zero, which gives A no gradient: move B off zero.
        let model = lora::map_adapters(model, &mut Nudge);
        assert_same(model, 3 * 7 * 2);
    }

    struct Nudge;

    impl burn::module::ModuleMapper<Ad> for Nudge {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<Ad, D>>,
        ) -> Param<Tensor<Ad, D>> {
            let (id, t, mapper) = param.consume();
            let t = Tensor::from_inner(t.inner() + 0.01).require_grad();
            Param::from_mapped_value(id, t, mapper)
        }
    }

    #[test]
    fn a_forward_pass_never_differentiated_is_dropped_at_the_next_backward() {
        let mut model =
            LlamaForCausalLM::<Ad>::init(&LlamaConfig::tiny(ModelType::Llama), &Default::default());
        enable::<Ad>();
        model.model.gradient_checkpointing = true;
        let _unused = model.forward(input(), None);
        assert_eq!(pending(), 1);
        let (_, sets) = loss_and_grads(&model);
        // The loss's set (the last layer's included), the first layer's, the embedding's.
        assert_eq!(sets.len(), 1 + 1 + 1);
        assert_eq!(pending(), 0);
        // Recorded after the differentiated pass: kept for its own loss
        // (PPO: policy and critic forward passes, then their backward passes).
        let (a, b) = (model.forward(input(), None), model.forward(input(), None));
        assert_eq!(pending(), 2);
        assert_eq!(backward(a.sum()).len(), 3);
        assert_eq!(pending(), 1);
        assert_eq!(backward(b.sum()).len(), 3);
        assert_eq!(pending(), 0);
    }

    #[test]
    #[should_panic(expected = "in the order of the forward passes")]
    fn backward_passes_out_of_order_panic_instead_of_losing_gradients() {
        let mut model =
            LlamaForCausalLM::<Ad>::init(&LlamaConfig::tiny(ModelType::Llama), &Default::default());
        enable::<Ad>();
        model.model.gradient_checkpointing = true;
        let (a, b) = (model.forward(input(), None), model.forward(input(), None));
        backward(b.sum());
        backward(a.sum());
    }

    #[test]
    fn lora_dropout_is_refused_and_a_backend_not_enabled_runs_the_plain_pass() {
        let device = Default::default();
        let base = LlamaForCausalLM::<Ad>::init(&LlamaConfig::tiny(ModelType::Llama), &device);
        let lora_config = LoraConfig {
            dropout: 0.1,
            ..LoraConfig::default()
        };
        let mut model = lora::attach(base.no_grad(), &lora_config, 3, &device).unwrap();
        let why = turn_on(&mut model.model, Granularity::Selective).unwrap_err();
        assert!(why.contains("lora.dropout"), "{why}");
        assert!(!model.model.gradient_checkpointing);

        let mut inner =
            LlamaForCausalLM::<Flex>::init(&LlamaConfig::tiny(ModelType::Llama), &device);
        inner.model.gradient_checkpointing = true;
        let input = input();
        let input = ForwardInput {
            input_ids: input.input_ids.inner(),
            positions: input.positions.inner(),
            mask: input.mask.inner(),
        };
        let _ = inner.forward(input, None);
        assert_eq!(pending(), 0);
    }
}
