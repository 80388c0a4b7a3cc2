//! Mixed precision: the weights (and so the activations) of a model may be
//! bf16 or f16 on accelerators, while the numerically delicate steps run in
//! f32, as transformers does for bf16 Llama models: RMSNorm statistics, the
//! attention softmax, the LM head's log-softmax and every loss. The f32 master
//! copy of trained weights lives in the optimizer (alignkit-train).
//!
//! On the CPU backend models stay f32: its fused kernels are f32-only and
//! burn-flex computes bf16 element by element through f32 anyway.

use burn::module::Module;
use burn::tensor::DType;
use burn::tensor::backend::Backend;

pub use crate::dtype::{CastParams, to_dtype, to_f32};
use crate::transformer::LlamaForCausalLM;

/// `model` with every weight, adapters included, stored in `dtype`.
pub fn cast_model<B: Backend>(model: LlamaForCausalLM<B>, dtype: DType) -> LlamaForCausalLM<B> {
    let mut cast = CastParams(dtype);
    crate::lora::map_adapters(model.map(&mut cast), &mut cast)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LlamaConfig, ModelType};
    use crate::generate::{SamplingConfig, sample};
    use crate::logprobs::sequence_logprobs;
    use crate::lora::{LoraConfig, TargetModules, attach};
    use crate::mask::attention_mask;
    use crate::transformer::ForwardInput;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::Tensor;
    use burn::tensor::{Int, TensorData};

    type A = Autodiff<Flex>;

    /// A tiny model with LoRA on every projection (B random so the adapters
    /// take part) and its bf16 copy.
    fn models() -> (LlamaForCausalLM<A>, LlamaForCausalLM<A>) {
        let config = LlamaConfig::tiny(ModelType::Llama);
        let device = Default::default();
        let lora = LoraConfig {
            r: 2,
            target_modules: TargetModules::parse("all-linear").expect("valid targets"),
            ..Default::default()
        };
        let base = LlamaForCausalLM::<A>::init(&config, &device).no_grad();
        let model = attach(base, &lora, 5, &device).expect("valid LoRA config");
        // Every weight redrawn from a seeded generator (the backend's own
        // initialiser is unseeded, and the bf16 gaps vary with the draw);
        // adapters' B away from zero, so they change the outputs.
        struct Seeded(rand::rngs::StdRng);
        impl ModuleMapper<A> for Seeded {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<A, D>>,
            ) -> Param<Tensor<A, D>> {
                use rand::Rng;
                let (id, t, mapper) = param.consume();
                let old: Vec<f32> = t.to_data().convert::<f32>().into_vec().expect("f32");
                let spread = 0.5 / (t.dims()[D - 1] as f32).sqrt();
                let constant = old.iter().all(|&x| x == old[0]) && old[0] != 0.0;
                let t = if constant {
                    t
                } else {
                    let new: Vec<f32> = (0..old.len())
                        .map(|_| self.0.random_range(-spread..spread))
                        .collect();
                    let fresh =
                        Tensor::<A, D>::from_data(TensorData::new(new, t.shape()), &t.device());
                    if t.is_require_grad() {
                        fresh.require_grad()
                    } else {
                        fresh
                    }
                };
                Param::from_mapped_value(id, t, mapper)
            }
        }
        use rand::SeedableRng;
        let mut seeded = Seeded(rand::rngs::StdRng::seed_from_u64(7));
        let model = model.map(&mut seeded);
        let model = crate::lora::map_adapters(model, &mut seeded);
        let half = cast_model(model.clone(), DType::BF16);
        (model, half)
    }

    fn input(rows: usize, len: usize) -> ForwardInput<A> {
        let device = Default::default();
        let ids: Vec<i64> = (0..rows * len).map(|i| (i * 7 % 90 + 3) as i64).collect();
        let positions: Vec<i64> = (0..rows * len).map(|i| (i % len) as i64).collect();
        ForwardInput {
            input_ids: Tensor::<A, 2, Int>::from_data(TensorData::new(ids, [rows, len]), &device),
            positions: Tensor::from_data(TensorData::new(positions, [rows, len]), &device),
            mask: attention_mask(&vec![vec![true; len]; rows], len, None, &device),
        }
    }

    fn values<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().expect("f32")
    }

    /// Largest |a − b| over the largest |a|.
    fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        gap / scale
    }

    #[test]
    fn cast_keeps_which_weights_train() {
        let (model, half) = models();
        let count = |m: &LlamaForCausalLM<A>| {
            let mut trained = 0;
            let mut all = Vec::new();
            for (t, grad) in [
                (m.model.layers[0].self_attn.q_proj.weight.val(), false),
                (m.model.embed_tokens.weight.val(), false),
                (
                    m.model.layers[0]
                        .self_attn
                        .q_proj
                        .lora
                        .as_ref()
                        .unwrap()
                        .lora_a
                        .val(),
                    true,
                ),
            ] {
                trained += usize::from(t.is_require_grad() == grad);
                all.push(t.dtype());
            }
            (trained, all)
        };
        assert_eq!(count(&model), (3, vec![DType::F32; 3]));
        assert_eq!(count(&half), (3, vec![DType::BF16; 3]));
    }

    /// bf16 weights give the f32 model's log-probabilities to bf16 accuracy,
    /// in f32, and gradients (in bf16) that agree with the f32 ones.
    #[test]
    fn bf16_forward_and_backward_track_f32() {
        let (model, half) = models();
        let lp32 = sequence_logprobs(&model, input(2, 12));
        let lp16 = sequence_logprobs(&half, input(2, 12));
        assert_eq!(lp16.dtype(), DType::F32);
        let (a, b) = (values(lp32.clone()), values(lp16.clone()));
        // Different (the weights really are bf16), within bf16's accuracy
        // (measured on these seeded weights: 2.2e-3 of the largest |log-prob|;
        // one bf16 rounding is 2^-9 = 2e-3).
        let gap = relative_gap(&a, &b);
        assert!(gap > 0.0 && gap < 1e-2, "{gap}: {a:?}\n{b:?}");

        let g32 = lp32.sum().backward();
        let g16 = lp16.sum().backward();
        let adapter = |m: &LlamaForCausalLM<A>| {
            m.model.layers[1]
                .mlp
                .down_proj
                .lora
                .as_ref()
                .unwrap()
                .lora_b
                .val()
        };
        let grad32 = adapter(&model).grad(&g32).expect("a gradient");
        let grad16 = adapter(&half).grad(&g16).expect("a gradient");
        assert_eq!(grad16.dtype(), DType::BF16);
        let to_vec = |t: Tensor<Flex, 2>| -> Vec<f32> {
            t.into_data().convert::<f32>().into_vec().expect("f32")
        };
        let (a, b) = (to_vec(grad32), to_vec(grad16));
        // bf16's 8-bit mantissa, compounded through the layers' backward
        // products: relative L2 error measured 1.9e-2 on these weights.
        let l2 = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
        let err = l2(&mut a.iter().zip(&b).map(|(x, y)| x - y)) / l2(&mut a.iter().copied());
        assert!(err > 0.0 && err < 0.05, "{err}: {a:?}\n{b:?}");
    }

    /// Rollouts run on bf16 weights (KV cache in bf16, logits in f32).
    #[test]
    fn bf16_model_generates() {
        let (_, half) = models();
        let half = half.valid();
        let config = SamplingConfig {
            max_new_tokens: 5,
            ..Default::default()
        };
        let prompts = vec![vec![3u32, 4, 5], vec![6, 7]];
        let out = sample(
            &half,
            &prompts,
            &[],
            0,
            &config,
            &[1, 2],
            |_, _| false,
            &Default::default(),
        )
        .expect("samples");
        assert!(out.iter().all(|s| s.generation.tokens.len() == 5));
        assert!(
            out.iter()
                .flat_map(|s| &s.logprobs)
                .all(|lp| lp.is_finite() && *lp <= 0.0)
        );
    }
}
