//! The reward model as a run trains, checkpoints and exports it.
//!
//! Full fine-tune: every weight trains; checkpoints are reward-model HF
//! directories. LoRA: the backbone is frozen under adapters and the score
//! head trains fully (PEFT's `modules_to_save=["score"]`); checkpoints hold
//! the PEFT adapter plus `score.safetensors`. `final/` is always a merged
//! `*ForSequenceClassification` directory with the tokenizer.

use std::collections::HashMap;
use std::path::Path;

use alignkit_model::heads::{
    RewardModel, SCORE_WEIGHT, is_sequence_classification, load_reward_model, save_reward_model,
    sequence_classification_architecture,
};
use alignkit_model::lora::{self, LoraConfig};
use alignkit_model::transformer::{Linear, LlamaModel};
use alignkit_model::{LlamaConfig, ModelError, SaveDtype, load_model};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};

use crate::error::{Result, TrainError};
use crate::params::Trainable;
use crate::skeleton::{Checkpointed, Weights};
use crate::tensors::{read_f32_tensors, write_f32_tensors};

/// The score head of a LoRA checkpoint.
pub const SCORE_FILE: &str = "score.safetensors";

/// The reward model as the optimizer sees it.
///
/// `Trainable` cannot be implemented for `RewardModel` outside alignkit-model
/// (the orphan rule), so this one-field wrapper carries it.
/// Its field name prefixes parameter names in the optimizer state only
/// (`reward.model.layers.0...`); weights are saved from the inner model.
#[derive(Module, Debug)]
pub struct Trainee<B: Backend> {
    pub reward: RewardModel<B>,
}

const FIELD: &str = "reward";
const CONTAINER: &str = "Struct:Trainee";

impl<B: AutodiffBackend> Checkpointed<B> for Trainee<B> {
    fn write_trained(&self, w: &Weights<'_>, dir: &Path) -> Result<()> {
        save_trained(&self.reward, w.model_config, w.lora, w.base, dir)
    }

    fn load(
        base: &Path,
        lora: Option<&LoraConfig>,
        checkpoint: Option<&Path>,
        adapter_seed: u64,
        device: &B::Device,
    ) -> Result<(LlamaConfig, Self)> {
        let (config, reward) = load_trainable(base, lora, checkpoint, adapter_seed, device)?;
        Ok((config, Trainee { reward }))
    }

    fn backbone_mut(&mut self) -> &mut LlamaModel<B> {
        &mut self.reward.model
    }
}

impl<B: Backend> Trainable<B> for Trainee<B> {
    fn visit_trainable<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.visit(visitor);
        visitor.enter_module(FIELD, CONTAINER);
        lora::visit_adapters(&self.reward.backbone_view(), visitor);
        visitor.exit_module(FIELD, CONTAINER);
    }

    fn map_trainable<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        let this = self.map(mapper);
        mapper.enter_module(FIELD, CONTAINER);
        let reward = this
            .reward
            .map_backbone(|lm| Ok::<_, ModelError>(lora::map_adapters(lm, mapper)))
            .expect("infallible");
        mapper.exit_module(FIELD, CONTAINER);
        Self { reward }
    }
}

/// A score head [1, C] ~ N(0, 0.02) (transformers' `initializer_range`),
/// drawn on the host from `seed` so that runs are reproducible.
pub fn fresh_score<B: Backend>(hidden: usize, seed: u64, device: &B::Device) -> Linear<B> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("a valid normal distribution");
    let w: Vec<f32> = (0..hidden).map(|_| normal.sample(&mut rng)).collect();
    score_head(w, hidden, device)
}

/// A [1, C] head with weight `w`, trainable. (`Linear::init`'s random weight is
/// lazy: replaced before it is ever drawn.)
fn score_head<B: Backend>(w: Vec<f32>, hidden: usize, device: &B::Device) -> Linear<B> {
    let mut head = Linear::init(hidden, 1, false, device);
    head.weight = Param::from_tensor(
        Tensor::from_data(TensorData::new(w, [1, hidden]), device).require_grad(),
    );
    head
}

/// The starting model of `dir`: a reward model as saved, or a causal LM's
/// backbone with a fresh head.
pub fn load_start<B: Backend>(
    dir: &Path,
    score_seed: u64,
    device: &B::Device,
) -> Result<(LlamaConfig, RewardModel<B>)> {
    let config = LlamaConfig::load(&dir.join("config.json"))?;
    if is_sequence_classification(&config) {
        return Ok(load_reward_model(dir, device)?);
    }
    let (config, lm) = load_model::<B>(dir, device)?;
    let score = fresh_score(config.hidden_size, score_seed, device);
    Ok((
        config,
        RewardModel {
            model: lm.model,
            score,
        },
    ))
}

/// The model a run trains: the start model (fully trainable, or frozen with
/// fresh adapters and a trainable head), or, given `checkpoint`, the weights
/// saved there.
pub fn load_trainable<B: Backend>(
    base: &Path,
    lora_config: Option<&LoraConfig>,
    checkpoint: Option<&Path>,
    seed: u64,
    device: &B::Device,
) -> Result<(LlamaConfig, RewardModel<B>)> {
    match (lora_config, checkpoint) {
        (None, None) => load_start(base, seed, device),
        (None, Some(ckpt)) => Ok(load_reward_model(ckpt, device)?),
        (Some(lc), ckpt) => {
            let (config, start) = load_start::<B>(base, seed, device)?;
            let frozen = RewardModel {
                model: start.model.no_grad(),
                score: start.score,
            };
            let model = match ckpt {
                None => frozen.map_backbone(|lm| lora::attach(lm, lc, seed, device))?,
                Some(ckpt) => {
                    let saved = lora::read_peft_config(ckpt)?;
                    if saved.r != lc.r
                        || saved.alpha != lc.alpha
                        || saved.rslora != lc.rslora
                        || saved.target_modules.names() != lc.target_modules.names()
                    {
                        return Err(TrainError::checkpoint(
                            ckpt,
                            "the adapter in this checkpoint has a different LoRA config (r, alpha, rslora or target_modules) than the run",
                        ));
                    }
                    let model = frozen
                        .map_backbone(|lm| lora::load_adapter(lm, ckpt, device).map(|(_, m)| m))?;
                    // The adapter file does not carry training-time dropout.
                    let mut model = set_dropout(model, lc.dropout);
                    model.score = read_score(ckpt, config.hidden_size, device)?;
                    model
                }
            };
            Ok((config, model))
        }
    }
}

fn set_dropout<B: Backend>(mut model: RewardModel<B>, dropout: f64) -> RewardModel<B> {
    for layer in &mut model.model.layers {
        for lin in layer.linears_mut() {
            if let Some(a) = &mut lin.lora {
                a.dropout = dropout;
            }
        }
    }
    model
}

/// The head [1, `hidden`] that [`write_score`] wrote into `dir`, trainable.
pub fn read_score<B: Backend>(dir: &Path, hidden: usize, device: &B::Device) -> Result<Linear<B>> {
    let path = dir.join(SCORE_FILE);
    let (mut tensors, _) = read_f32_tensors(&path)?;
    let (shape, data) = tensors
        .remove(SCORE_WEIGHT)
        .ok_or_else(|| ModelError::MissingTensor {
            dir: dir.to_path_buf(),
            name: SCORE_WEIGHT.into(),
            shape: vec![1, hidden],
        })?;
    if shape != [1, hidden] {
        return Err(ModelError::ShapeMismatch {
            path,
            name: SCORE_WEIGHT.into(),
            expected: vec![1, hidden],
            found: shape,
        }
        .into());
    }
    Ok(score_head(data, hidden, device))
}

/// Write what a run trains into checkpoint directory `dir` (f32, exact).
pub fn save_trained<B: Backend>(
    model: &RewardModel<B>,
    config: &LlamaConfig,
    lora_config: Option<&LoraConfig>,
    base: &Path,
    dir: &Path,
) -> Result<()> {
    match lora_config {
        None => save_reward_model(model, config, dir, SaveDtype::F32)?,
        Some(lc) => {
            lora::save_adapter(
                &model.backbone_view(),
                lc,
                &base.display().to_string(),
                dir,
                SaveDtype::F32,
            )?;
            write_score(&model.score, dir)?;
        }
    }
    Ok(())
}

/// Write a score (or value) head into `dir/score.safetensors` (f32, exact).
pub fn write_score<B: Backend>(score: &Linear<B>, dir: &Path) -> Result<()> {
    let w = score.weight.val();
    let shape = w.dims().to_vec();
    let data = w
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above");
    let tensors = [(SCORE_WEIGHT.to_string(), (shape, data))]
        .into_iter()
        .collect();
    write_f32_tensors(&dir.join(SCORE_FILE), &tensors, HashMap::new())
}

/// Write the merged reward model as an HF directory with the tokenizer of
/// `tokenizer_dir`; `pad_token_id` is set so transformers can batch it.
pub fn write_final<B: Backend>(
    model: RewardModel<B>,
    config: &LlamaConfig,
    pad_token_id: u32,
    tokenizer_dir: &Path,
    out: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    let merged = model.map_backbone(|lm| Ok::<_, ModelError>(lora::merge(lm)))?;
    let mut config = config.clone();
    config.pad_token_id = Some(pad_token_id);
    // The start model may have been a causal LM; the export is a classifier.
    config.raw.insert(
        "architectures".into(),
        serde_json::json!([sequence_classification_architecture(config.model_type)]),
    );
    save_reward_model(&merged, &config, out, dtype)?;
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ] {
        let from = tokenizer_dir.join(name);
        if from.is_file() {
            let to = out.join(name);
            std::fs::copy(&from, &to).map_err(|source| TrainError::io(to, source))?;
        }
    }
    Ok(())
}
