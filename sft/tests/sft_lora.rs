//! LoRA SFT: only adapters train, merged logits equal adapter logits, PEFT
//! and merged exports.

mod common_sft;

use alignkit_datasets::{Encoder, FieldMap, PaddingSide, collate};
use alignkit_model::lora::{self, LoraConfig, TargetModules};
use alignkit_model::{LlamaForCausalLM, SaveDtype, load_model};
use alignkit_sft::data::forward_input;
use alignkit_sft::loss::batch_loss;
use alignkit_sft::{RunOptions, SftConfig, train};
use alignkit_train::export::{ExportKind, export};
use alignkit_train::weights::load_trainable;
use alignkit_train::{AdamW, AdamWConfig, Gradients, trainable_params};
use burn::tensor::{ElementConversion, Tensor};
use common_sft::*;

fn setup() -> (tempfile::TempDir, SftConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(&tmp.path().join("model"));
    // A random model's LM head (std 0.02) over unit-RMS hidden states caps
    // every logit near ±0.6, so no adapter below it can fit the data; a
    // pre-trained head is far larger. Scale it up as training would have.
    rewrite_model(&model, |mut m| {
        let head = m.lm_head.as_mut().expect("untied tiny model");
        head.weight = head.weight.clone().map(|w| w.mul_scalar(15.0));
        m
    });
    let data = tmp.path().join("train.jsonl");
    write_chat_data(&data, &PAIRS);
    let mut c = config(&model, &data, &tmp.path().join("run"));
    c.lora = Some(LoraConfig {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    });
    (tmp, c)
}

fn batch(c: &SftConfig) -> alignkit_datasets::Batch {
    let enc = Encoder::from_dir(&c.model, Default::default()).unwrap();
    let ex = enc
        .encode_sft_file(&c.data.train_file, &FieldMap::default())
        .unwrap();
    let seqs: Vec<_> = ex.into_iter().map(|e| e.example.tokens).collect();
    collate(&seqs, 2, PaddingSide::Right)
}

/// One optimizer step on an adapted model: gradients and moments exist only
/// for adapter tensors, and every base weight is bit-identical afterwards.
#[test]
fn only_adapter_tensors_train() {
    let (_tmp, c) = setup();
    let device = Default::default();
    let (_, model) = load_trainable::<AB>(&c.model, c.lora.as_ref(), None, 7, &device).unwrap();
    let before = bits(&model);
    let lora_before = lora::peft_tensors(&model);
    let params = trainable_params::<AB, _>(&model);
    assert_eq!(params.len(), 2 * 7 * 2);
    assert!(
        params.iter().all(|p| p.name.contains(".lora.")),
        "{params:?}"
    );

    let (loss, _) = batch_loss(&model, &batch(&c), false, 1.0, &device);
    let mut grads = Gradients::new();
    grads.accumulate(&model, loss.backward());
    assert_eq!(grads.len(), params.len());
    assert!(grads.names().all(|n| n.contains(".lora.")));
    let mut opt = AdamW::new(AdamWConfig::default());
    let model = opt.step::<AB, _>(model, grads, 1e-2);

    assert_eq!(before, bits(&model), "a base weight changed");
    let lora_after = lora::peft_tensors(&model);
    let changed = lora_before
        .iter()
        .filter(|(k, v)| lora_after[*k].1 != v.1)
        .count();
    assert_eq!(changed, lora_before.len(), "every adapter matrix moves");
}

/// A LoRA run learns, saves adapter-only checkpoints, and its merged final/
/// computes what base + adapter computes (within 1e-5).
#[test]
fn lora_run_learns_and_merged_logits_match_adapter_logits() {
    let (tmp, mut c) = setup();
    c.train.max_steps = 30;
    c.train.batch_size = 6;
    c.learning_rate = 2e-2;
    let out = train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap();
    let l = series(&c.output_dir, "loss");
    assert!(l[l.len() - 1] < 0.5 * l[0], "{l:?}");

    let ckpt = out.last_checkpoint.unwrap();
    assert!(ckpt.join("adapter_model.safetensors").is_file());
    assert!(ckpt.join("adapter_config.json").is_file());
    assert!(
        !ckpt.join("model.safetensors").exists(),
        "LoRA checkpoints hold the adapter only"
    );
    let (opt_state, _) =
        alignkit_train::tensors::read_f32_tensors(&ckpt.join("optimizer.safetensors")).unwrap();
    assert!(opt_state.keys().all(|k| k.contains(".lora.")));

    let device = Default::default();
    let (_, adapted) =
        load_trainable::<B>(&c.model, c.lora.as_ref(), Some(&ckpt), 0, &device).unwrap();
    let (_, merged) = load_model::<B>(&out.final_dir.unwrap(), &device).unwrap();
    let b = batch(&c);
    let logits = |m: &LlamaForCausalLM<B>| m.forward(forward_input(&b, false, &device), None);
    let diff: f32 = (logits(&adapted) - logits(&merged))
        .abs()
        .max()
        .into_scalar()
        .elem();
    // f32 rounding of W + s·B·A grows with the logits' size (|logit| ≈ 8
    // here); the fresh-model check in model/src/lora.rs holds 1e-5 absolute.
    let scale: f32 = logits(&adapted).abs().max().into_scalar().elem();
    assert!(
        diff < 1e-5 * scale.max(1.0),
        "merged vs adapter logits differ by {diff} (max |logit| {scale})"
    );
    let base = load_model::<B>(&c.model, &device).unwrap().1;
    let moved: f32 = (logits(&adapted) - logits(&base))
        .abs()
        .max()
        .into_scalar()
        .elem();
    assert!(moved > 1e-2, "the adapter changed nothing ({moved})");

    // PEFT export: reloads onto the base as the same adapter.
    let peft = tmp.path().join("peft");
    export::<B>(&c.output_dir, &peft, ExportKind::Adapter, false, &device).unwrap();
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
    ] {
        assert!(peft.join(f).is_file(), "adapter export lacks {f}");
    }
    let (cfg, reloaded) = lora::load_adapter(base, &peft, &device).unwrap();
    assert_eq!(cfg.r, 4);
    assert_eq!(lora::peft_tensors(&reloaded), lora::peft_tensors(&adapted));
    let card = std::fs::read_to_string(peft.join("README.md")).unwrap();
    assert!(
        card.contains("library_name: peft") && card.contains("LoRA (r = 4"),
        "{card}"
    );

    // Merged export in bf16.
    let merged_dir = tmp.path().join("merged-bf16");
    export::<B>(
        &ckpt,
        &merged_dir,
        ExportKind::Merged(SaveDtype::Bf16),
        false,
        &device,
    )
    .unwrap();
    let cfg_json = std::fs::read_to_string(merged_dir.join("config.json")).unwrap();
    assert!(cfg_json.contains("bfloat16"), "{cfg_json}");
    let (_, m16) = load_model::<B>(&merged_dir, &device).unwrap();
    let d16: f32 = (logits(&adapted) - logits(&m16))
        .abs()
        .max()
        .into_scalar()
        .elem();
    assert!(
        d16 < 0.05 * scale,
        "bf16 export far from f32: {d16} (max |logit| {scale})"
    );
    // An existing non-empty directory is not overwritten by accident.
    let err = export::<B>(&ckpt, &merged_dir, ExportKind::Adapter, false, &device).unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
}

#[test]
fn full_fine_tune_has_no_adapter_to_export() {
    let (tmp, mut c) = setup();
    c.lora = None;
    c.train.max_steps = 1;
    train::<AB>(&c, &Default::default(), RunOptions::default(), &mut |_| {}).unwrap();
    let err = export::<B>(
        &c.output_dir,
        &tmp.path().join("a"),
        ExportKind::Adapter,
        false,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no adapter"), "{err}");
}

/// Adapters on chosen modules only, with rsLoRA scaling.
#[test]
fn target_modules_by_name_and_rslora() {
    let (_tmp, mut c) = setup();
    c.lora = Some(LoraConfig {
        r: 4,
        alpha: 4.0,
        rslora: true,
        target_modules: TargetModules::parse("q_proj,v_proj").unwrap(),
        ..Default::default()
    });
    let (_, model) =
        load_trainable::<AB>(&c.model, c.lora.as_ref(), None, 1, &Default::default()).unwrap();
    let names: Vec<String> = trainable_params::<AB, _>(&model)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names.len(), 2 * 2 * 2);
    assert!(
        names
            .iter()
            .all(|n| n.contains("q_proj") || n.contains("v_proj"))
    );
    let a = model.model.layers[0]
        .self_attn
        .q_proj
        .lora
        .as_ref()
        .unwrap();
    assert!((a.scale - 2.0).abs() < 1e-12, "α/√r = 4/2");
    let _: Tensor<AB, 2> = a.lora_a.val();
}
