//! Saving and loading what a run trains: every weight of a full fine-tune (HF
//! layout) or the LoRA adapter over a frozen base (PEFT layout). Both in f32,
//! so a checkpoint restores the exact values.

use std::path::Path;

use alignkit_model::lora::{self, LoraConfig};
use alignkit_model::{LlamaConfig, LlamaForCausalLM, SaveDtype, load_model, save_model};
use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::checkpoint::WeightsKind;
use crate::error::Result;

impl WeightsKind {
    pub fn of(lora: Option<&LoraConfig>) -> Self {
        if lora.is_some() {
            WeightsKind::Lora
        } else {
            WeightsKind::Full
        }
    }
}

/// Write the trained weights into `dir`.
pub fn save_trained<B: Backend>(
    model: &LlamaForCausalLM<B>,
    config: &LlamaConfig,
    lora: Option<&LoraConfig>,
    base_model: &Path,
    dir: &Path,
) -> Result<()> {
    match lora {
        Some(lora_config) => lora::save_adapter(
            model,
            lora_config,
            &base_model.display().to_string(),
            dir,
            SaveDtype::F32,
        )?,
        None => save_model(model, config, dir, SaveDtype::F32)?,
    }
    Ok(())
}

/// The model a run trains, ready for training: the base model with fresh
/// adapters (`lora`, seeded) or fully trainable weights; or, when `checkpoint`
/// is given, with that checkpoint's weights. With LoRA the base is frozen, so
/// only adapters get gradients and optimizer state.
pub fn load_trainable<B: Backend>(
    base_model: &Path,
    lora: Option<&LoraConfig>,
    checkpoint: Option<&Path>,
    adapter_seed: u64,
    device: &B::Device,
) -> Result<(LlamaConfig, LlamaForCausalLM<B>)> {
    match (lora, checkpoint) {
        (None, None) => Ok(load_model(base_model, device)?),
        (None, Some(ckpt)) => Ok(load_model(ckpt, device)?),
        (Some(lora_config), ckpt) => {
            let (config, model) = load_model::<B>(base_model, device)?;
            let model = model.no_grad();
            let model = match ckpt {
                None => lora::attach(model, lora_config, adapter_seed, device)?,
                Some(ckpt) => {
                    let (saved, model) = lora::load_adapter(model, ckpt, device)?;
                    if saved.r != lora_config.r
                        || saved.target_modules.names() != lora_config.target_modules.names()
                        || saved.rslora != lora_config.rslora
                        || saved.alpha != lora_config.alpha
                    {
                        return Err(crate::error::TrainError::checkpoint(
                            ckpt,
                            "the adapter in this checkpoint has a different LoRA config (r, alpha, rslora or target_modules) than the run",
                        ));
                    }
                    // The adapter file does not carry training-time dropout.
                    let mut model = model;
                    set_dropout(&mut model, lora_config.dropout);
                    model
                }
            };
            Ok((config, model))
        }
    }
}

fn set_dropout<B: Backend>(model: &mut LlamaForCausalLM<B>, dropout: f64) {
    for layer in &mut model.model.layers {
        for lin in layer.linears_mut() {
            if let Some(a) = &mut lin.lora {
                a.dropout = dropout;
            }
        }
    }
}
