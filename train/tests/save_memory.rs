//! Saving never doubles memory: checkpoints and exports stream one tensor at
//! a time to disk. A global allocator counts the bytes alive while a save
//! runs; a save that gathers the state (or its encoded bytes) first holds a
//! second copy of it and fails here. One test in this binary, so that no
//! other test allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use alignkit_model::checkpoint::named_tensors;
use alignkit_model::config::ModelType;
use alignkit_model::{LlamaConfig, LlamaForCausalLM, SaveDtype};
use alignkit_train::export::{ModelCard, write_merged};
use alignkit_train::skeleton::{Checkpointed, Weights};
use alignkit_train::{AdamW, AdamWConfig, Gradients, trainable_params};
use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;

type B = Flex;
type AB = Autodiff<Flex>;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every allocation to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `f`, above what was alive when it started.
fn extra_peak(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst).saturating_sub(base)
}

/// Eight layers of many equal-sized tensors: the largest tensor (64 KiB) is
/// a small part of the state (2 MiB of weights, 4 MiB of moments).
fn config() -> LlamaConfig {
    let mut c = LlamaConfig::tiny(ModelType::Llama);
    c.hidden_size = 64;
    c.intermediate_size = 256;
    c.num_hidden_layers = 8;
    c.head_dim = 16;
    c
}

#[test]
fn saves_hold_one_tensor_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let config = config();
    let model = LlamaForCausalLM::<AB>::init(&config, &device);
    // Moments for every weight: one step with unit gradients.
    let params = trainable_params::<AB, _>(&model);
    let mut grads = Gradients::<B>::new();
    for p in &params {
        let n = p.shape.iter().product::<usize>();
        grads.add(p.name.clone(), Tensor::ones([n], &device));
    }
    let mut opt = AdamW::<B>::new(AdamWConfig::default());
    let model = opt.step::<AB, _>(model, grads, 1e-3);
    let weight_bytes = 4 * params
        .iter()
        .map(|p| p.shape.iter().product::<usize>())
        .sum::<usize>();
    assert!(weight_bytes > 2_000_000, "{weight_bytes}");
    let base = dir.path().join("base");
    alignkit_model::save_model(&model, &config, &base, SaveDtype::F32).unwrap();

    let ckpt = dir.path().join("step-1");
    std::fs::create_dir_all(&ckpt).unwrap();
    let weights = Weights {
        model_config: &config,
        lora: None,
        base: &base,
    };
    let saving_weights = extra_peak(|| model.write_trained(&weights, &ckpt).unwrap());
    let saving_moments = extra_peak(|| opt.save(&ckpt.join("optimizer.safetensors")).unwrap());
    let card = ModelCard {
        base_model: base.clone(),
        trainer: "sft".into(),
        lora: None,
        data_files: Vec::new(),
        config_toml: None,
        final_metrics: None,
        step: 1,
    };
    let out = dir.path().join("final");
    let exporting = extra_peak(|| {
        write_merged(
            model.clone(),
            &config,
            &base,
            &out,
            SaveDtype::Bf16,
            &card,
            true,
        )
        .unwrap()
    });

    println!(
        "weights {weight_bytes} B; save peaks above the live state: checkpoint weights {saving_weights} B, optimizer moments {saving_moments} B, bf16 export {exporting} B"
    );
    // A second copy would be 100% of the state (the old save held 200-300%).
    let limit = weight_bytes / 4;
    for (what, bytes) in [
        ("checkpoint weights", saving_weights),
        ("optimizer moments", saving_moments),
        ("bf16 export", exporting),
    ] {
        assert!(
            bytes < limit,
            "{what}: the save allocated {bytes} bytes at its peak, the weights are {weight_bytes}"
        );
    }
    // What was written is the state: the files hold every byte.
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as usize;
    assert!(size(&ckpt.join("model.safetensors")) > weight_bytes);
    assert!(size(&ckpt.join("optimizer.safetensors")) > 2 * weight_bytes);
    assert!(size(&out.join("model.safetensors")) > weight_bytes / 2);
    let (_, back) = alignkit_model::load_model::<B>(&ckpt, &device).unwrap();
    assert!(named_tensors::<B, _>(&back) == named_tensors::<B, _>(&model.valid()));
}
