//! The reference policy: LoRA with adapters removed is the base model; cached
//! reference log-probs are reused without a forward pass.

use std::cell::Cell;

use alignkit_datasets::{PaddingSide, PreferenceExample, Truncation, collate_pairs};
use alignkit_dpo::logps::completion_logps;
use alignkit_dpo::reference::{
    CacheStatus, ReferenceCache, ReferenceKey, lora_reference, precompute,
};
use alignkit_model::lora::{self, LoraConfig};
use alignkit_model::{LlamaConfig, LlamaForCausalLM, ModelType};
use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

type A = Autodiff<Flex>;

fn example(seed: u32, prompt: usize, chosen: usize, rejected: usize) -> PreferenceExample {
    let id = |i: usize| 3 + (seed as usize * 31 + i * 17) as u32 % 90;
    PreferenceExample {
        prompt_ids: (0..prompt).map(id).collect(),
        chosen_ids: (prompt..prompt + chosen).map(id).chain([2]).collect(),
        rejected_ids: (50..50 + rejected).map(id).chain([2]).collect(),
        chosen_has_eos: true,
        rejected_has_eos: true,
        chosen_truncation: Truncation::default(),
        rejected_truncation: Truncation::default(),
    }
}

fn host<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn lora_reference_is_the_base_model() {
    let device = Default::default();
    let config = LlamaConfig::tiny(ModelType::Llama);
    let base = LlamaForCausalLM::<A>::init(&config, &device).no_grad();
    let base_logps = {
        let pairs = [example(1, 4, 3, 5), example(2, 2, 6, 1)];
        let batch = collate_pairs(&pairs, 0, PaddingSide::Right);
        completion_logps(&base.valid(), &batch, &device).logps
    };
    let lora_config = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let mut policy = lora::attach(base, &lora_config, 7, &device).unwrap();
    // A fresh adapter has B = 0 (policy == base); give it a trained-looking B.
    for layer in &mut policy.model.layers {
        for lin in [&mut layer.self_attn.q_proj, &mut layer.mlp.down_proj] {
            let adapter = lin.lora.as_mut().unwrap();
            let shape = adapter.lora_b.val().dims();
            adapter.lora_b = Param::from_tensor(
                Tensor::random(shape, Distribution::Normal(0.0, 0.5), &device).require_grad(),
            );
        }
    }

    let pairs = [example(1, 4, 3, 5), example(2, 2, 6, 1)];
    let batch = collate_pairs(&pairs, 0, PaddingSide::Right);
    let adapted = completion_logps(&policy, &batch, &device).logps;
    let reference = completion_logps(&lora_reference(&policy), &batch, &device).logps;

    let (base_c, ref_c) = (host(base_logps.chosen), host(reference.chosen));
    let (base_r, ref_r) = (host(base_logps.rejected), host(reference.rejected));
    assert!(max_diff(&base_c, &ref_c) < 1e-6, "{base_c:?} vs {ref_c:?}");
    assert!(max_diff(&base_r, &ref_r) < 1e-6, "{base_r:?} vs {ref_r:?}");
    // The adapter does change the policy, so the test can tell them apart.
    assert!(max_diff(&host(adapted.chosen), &base_c) > 1e-3);
    // And the policy keeps its adapters.
    assert_eq!(lora::adapter_count(&policy), config.num_hidden_layers * 7);
}

#[test]
fn cached_reference_logps_are_reused_without_a_forward_pass() {
    let device = Default::default();
    let config = LlamaConfig::tiny(ModelType::Llama);
    let reference = LlamaForCausalLM::<Flex>::init(&config, &device);
    let pairs: Vec<PreferenceExample> = (0..5).map(|i| example(i, 2 + i as usize, 3, 4)).collect();
    let refs: Vec<&PreferenceExample> = pairs.iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let cache = ReferenceCache::new(dir.path().join("ref-cache"));
    let key = |weights: &str, settings: &str| {
        ReferenceKey {
            weights,
            tokenizer: "tok-sha",
            examples: &refs,
            settings,
        }
        .digest()
    };

    let forwards = Cell::new(0);
    let compute = || {
        forwards.set(forwards.get() + 1);
        precompute(&reference, &refs, 2, 0, &device, |_, _| {})
    };
    // First run: computed (one pass over the data) and stored.
    let (first, status) = cache
        .get_or_compute(&key("w1", "flex f32"), 5, compute)
        .unwrap();
    assert_eq!((status, forwards.get()), (CacheStatus::Computed, 1));
    assert_eq!(first.len(), 5);
    // It equals a direct concatenated forward over all pairs at once.
    let direct = completion_logps(
        &reference,
        &collate_pairs(&pairs, 0, PaddingSide::Right),
        &device,
    )
    .logps;
    assert!(max_diff(&first.chosen, &host(direct.chosen)) < 1e-5);
    assert!(max_diff(&first.rejected, &host(direct.rejected)) < 1e-5);

    // Second run, same key: read back exactly, no reference forward.
    let (second, status) = cache
        .get_or_compute(&key("w1", "flex f32"), 5, compute)
        .unwrap();
    assert_eq!((status, forwards.get()), (CacheStatus::Hit, 1));
    assert_eq!(second, first);

    // Other weights, settings or data: another key, computed again.
    let (_, status) = cache
        .get_or_compute(&key("w2", "flex f32"), 5, compute)
        .unwrap();
    assert_eq!((status, forwards.get()), (CacheStatus::Computed, 2));
    let (_, status) = cache
        .get_or_compute(&key("w1", "cuda bf16"), 5, compute)
        .unwrap();
    assert_eq!((status, forwards.get()), (CacheStatus::Computed, 3));
    let fewer: Vec<&PreferenceExample> = refs[..4].to_vec();
    let other_data = ReferenceKey {
        weights: "w1",
        tokenizer: "tok-sha",
        examples: &fewer,
        settings: "flex f32",
    }
    .digest();
    assert_ne!(other_data, key("w1", "flex f32"));

    // A damaged cache file is not trusted: recomputed and rewritten.
    let k = key("w1", "flex f32");
    std::fs::write(cache.path(&k), "{ not json").unwrap();
    let (again, status) = cache.get_or_compute(&k, 5, compute).unwrap();
    assert_eq!((status, forwards.get()), (CacheStatus::Computed, 4));
    assert_eq!(again, first);
    let (_, status) = cache.get_or_compute(&k, 5, compute).unwrap();
    assert_eq!(status, CacheStatus::Hit);
}

#[test]
fn padding_side_and_batch_mates_do_not_change_logps() {
    // Each row's sum is the same alone, right-padded next to longer rows, or
    // left-padded: the mask and position ids isolate it.
    let device = Default::default();
    let model = LlamaForCausalLM::<Flex>::init(&LlamaConfig::tiny(ModelType::Qwen2), &device);
    let pairs = [example(3, 5, 2, 7), example(4, 1, 8, 2)];
    let together = |side| {
        let l = completion_logps(&model, &collate_pairs(&pairs, 0, side), &device).logps;
        [host(l.chosen), host(l.rejected)].concat()
    };
    let alone: Vec<f32> = {
        let per: Vec<(f32, f32)> = pairs
            .iter()
            .map(|p| {
                let l =
                    completion_logps(&model, &collate_pairs([p], 0, PaddingSide::Right), &device)
                        .logps;
                (host(l.chosen)[0], host(l.rejected)[0])
            })
            .collect();
        per.iter()
            .map(|x| x.0)
            .chain(per.iter().map(|x| x.1))
            .collect()
    };
    assert!(max_diff(&together(PaddingSide::Right), &alone) < 1e-5);
    assert!(max_diff(&together(PaddingSide::Left), &alone) < 1e-5);
}

#[test]
fn gradients_reach_the_policy_through_the_summed_logps() {
    let device = Default::default();
    let model = LlamaForCausalLM::<A>::init(&LlamaConfig::tiny(ModelType::Llama), &device);
    let pairs = [example(5, 3, 4, 2)];
    let out = completion_logps(
        &model,
        &collate_pairs(&pairs, 0, PaddingSide::Right),
        &device,
    );
    let grads = (out.logps.chosen - out.logps.rejected).sum().backward();
    let g = model.model.layers[0]
        .mlp
        .up_proj
        .weight
        .grad(&grads)
        .unwrap();
    let norm: f32 = g.abs().sum().into_scalar();
    assert!(norm > 0.0);
}
