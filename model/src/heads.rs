//! Scalar heads on the decoder backbone: the reward model of RLHF and the
//! value model of PPO.
//!
//! Both are transformers' `LlamaForSequenceClassification` with one label:
//! the backbone (`model.*`) and `score.weight` [1, C], no bias. A reward model
//! reads the score at the final token of each sequence (Ouyang et al. 2022,
//! "Training language models to follow instructions with human feedback",
//! §3.5: "a scalar reward ... on the final token"); a value model reads it at
//! every token.
//!
//! Which token is "final" is transformers' rule, kept here so that an
//! exported model scores a record the same under alignkit, transformers and
//! TRL: the rightmost token whose id is not `config.pad_token_id`. When pad
//! == EOS (SmolLM2: `<|im_end|>`), a trailing EOS therefore counts as
//! padding; a ChatML conversation rendered whole ends `<|im_end|>\n` and is
//! read at the `\n`. The caller passes those indices
//! (`alignkit_datasets::Batch::score_index`).
//!
//! One transformers behaviour is deliberately not copied: it builds the
//! embedding as `nn.Embedding(V, C, padding_idx=pad_token_id)`, and PyTorch
//! gives the `padding_idx` row no gradient. With SmolLM2's pad =
//! `<|im_end|>`, every `<|im_end|>` *input* then contributes nothing to the
//! embedding's gradient when transformers/TRL train the exported model. Here
//! the embedding gradient is the true one for every token, so a full
//! fine-tune's gradient (and `grad_norm`) differs from TRL's by that row.

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::checkpoint::{
    SaveDtype, fused_tensors, join_fused, load_model, load_module, pending_tensors, pt_metadata,
    write_atomic, write_safetensors,
};
use crate::config::{LlamaConfig, ModelType};
use crate::dtype::to_f32;
use crate::error::{ModelError, Result};
use crate::transformer::{ForwardInput, Linear, LlamaForCausalLM, LlamaModel};

/// Name of the head's weight in the checkpoint.
pub const SCORE_WEIGHT: &str = "score.weight";

/// Backbone + linear score head: `LlamaForSequenceClassification` with
/// `num_labels = 1`.
#[derive(Module, Debug)]
pub struct RewardModel<B: Backend> {
    pub model: LlamaModel<B>,
    /// [1, C], no bias (transformers' `score = nn.Linear(C, num_labels, bias=False)`).
    pub score: Linear<B>,
}

/// PPO's value model has the same layout (TRL builds both with
/// `AutoModelForSequenceClassification`); it reads [`RewardModel::token_scores`].
pub type ValueModel<B> = RewardModel<B>;

impl<B: Backend> RewardModel<B> {
    /// A random model (weights ~ N(0, 0.02), as transformers' `initializer_range`).
    pub fn init(config: &LlamaConfig, device: &B::Device) -> Self {
        Self::from_backbone(LlamaModel::init(config, device), config, device)
    }

    /// A pretrained backbone with a fresh score head ~ N(0, 0.02), as
    /// transformers initialises `score` when a causal LM is loaded as a
    /// sequence classifier.
    pub fn from_backbone(model: LlamaModel<B>, config: &LlamaConfig, device: &B::Device) -> Self {
        Self {
            model,
            score: Linear::init(config.hidden_size, 1, false, device),
        }
    }

    /// The backbone seen as a causal LM without a head, so that the LoRA
    /// functions of [`crate::lora`] (`attach`, `merge`, `map_adapters`,
    /// `load_adapter`, ...) apply to it. Adapter names are unchanged
    /// (`model.layers.N...`).
    pub fn map_backbone<E>(
        self,
        f: impl FnOnce(LlamaForCausalLM<B>) -> Result<LlamaForCausalLM<B>, E>,
    ) -> Result<Self, E> {
        let lm = f(LlamaForCausalLM::from_parts(self.model, None))?;
        Ok(Self {
            model: lm.model,
            score: self.score,
        })
    }

    /// The backbone as a head-less causal LM, for reading (adapters, names).
    /// Cheap: the clone shares every tensor.
    pub fn backbone_view(&self) -> LlamaForCausalLM<B> {
        LlamaForCausalLM::from_parts(self.model.clone(), None)
    }

    /// The score at every position.
    ///
    /// Shapes: → [B, T].
    pub fn token_scores(&self, input: ForwardInput<B>) -> Tensor<B, 2> {
        let hidden = self.model.forward(input, None);
        let [b, t, _] = hidden.dims();
        to_f32(self.score.forward(hidden).reshape([b, t]))
    }

    /// The score of each row read at `last[b]`, the index of its last real
    /// token. Only those B hidden states go through the head.
    ///
    /// Shapes: input [B, T], `last` B indices < T → [B].
    ///
    /// Panics if `last` does not hold one index below T per row.
    pub fn forward(&self, input: ForwardInput<B>, last: &[usize]) -> Tensor<B, 1> {
        let hidden = self.model.forward(input, None);
        let [b, t, c] = hidden.dims();
        assert_eq!(
            last.len(),
            b,
            "RewardModel::forward: {} indices for {b} rows",
            last.len()
        );
        let rows: Vec<i64> = last
            .iter()
            .enumerate()
            .map(|(row, &i)| {
                assert!(
                    i < t,
                    "RewardModel::forward: index {i} past sequence length {t}"
                );
                (row * t + i) as i64
            })
            .collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [b]), &hidden.device());
        let picked = hidden.reshape([b * t, c]).select(0, rows);
        to_f32(self.score.forward(picked).reshape([b]))
    }
}

/// transformers' class name for a one-label sequence classifier of this type.
pub fn sequence_classification_architecture(model_type: ModelType) -> &'static str {
    match model_type {
        ModelType::Llama => "LlamaForSequenceClassification",
        ModelType::Mistral => "MistralForSequenceClassification",
        ModelType::Qwen2 => "Qwen2ForSequenceClassification",
        ModelType::Qwen3 => "Qwen3ForSequenceClassification",
        ModelType::Smollm3 => "SmolLM3ForSequenceClassification",
        ModelType::Olmo2 => "Olmo2ForSequenceClassification",
        ModelType::Gemma3 => "Gemma3TextForSequenceClassification",
        ModelType::Phi3 => "Phi3ForSequenceClassification",
    }
}

/// Whether `config` is a sequence classifier's (a reward or value model's)
/// rather than a causal LM's, by its `architectures`.
pub fn is_sequence_classification(config: &LlamaConfig) -> bool {
    config
        .raw
        .get("architectures")
        .and_then(|a| a.as_array())
        .is_some_and(|a| {
            a.iter().any(|x| {
                x.as_str()
                    .is_some_and(|s| s.ends_with("ForSequenceClassification"))
            })
        })
}

/// Load a reward (or value) model saved as an HF sequence-classification
/// directory: every backbone tensor and `score.weight` [1, C], nothing else.
pub fn load_reward_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(LlamaConfig, RewardModel<B>)> {
    let config_path = dir.join("config.json");
    let config = LlamaConfig::load(&config_path)?;
    if let Some(labels) = config.raw.get("id2label").and_then(|v| v.as_object())
        && labels.len() != 1
    {
        return Err(ModelError::Config {
            path: config_path,
            field: "id2label".into(),
            message: format!(
                "a reward model has one label (a scalar score), this config has {}",
                labels.len()
            ),
        });
    }
    let model = load_module(
        RewardModel::<B>::init(&config, device),
        dir,
        device,
        (
            sequence_classification_architecture(config.model_type),
            &fused_tensors(&config),
        ),
        |name| name.ends_with("rotary_emb.inv_freq"),
    )?;
    Ok((config, model))
}

/// A reward model from a causal-LM directory: its backbone, a fresh score
/// head (N(0, 0.02), drawn from the backend's generator), its LM head dropped.
pub fn reward_model_from_causal_lm<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(LlamaConfig, RewardModel<B>)> {
    let (config, lm) = load_model::<B>(dir, device)?;
    let model = RewardModel::from_backbone(lm.model, &config, device);
    Ok((config, model))
}

/// Save as an HF directory that transformers loads with
/// `AutoModelForSequenceClassification`: `config.json` naming the
/// `*ForSequenceClassification` architecture with one label, and
/// `model.safetensors` with `model.*` and `score.weight`. Set
/// `config.pad_token_id` first: transformers needs it to find each row's last
/// token in a padded batch. LoRA adapters are not saved (merge them first).
pub fn save_reward_model<B: Backend>(
    model: &RewardModel<B>,
    config: &LlamaConfig,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_safetensors(
        &dir.join("model.safetensors"),
        join_fused(
            pending_tensors::<B, _>(model, dtype),
            &fused_tensors(config),
        ),
        pt_metadata(),
    )?;

    let mut json = config.to_json();
    json["architectures"] =
        serde_json::json!([sequence_classification_architecture(config.model_type)]);
    json["num_labels"] = 1.into();
    json["id2label"] = serde_json::json!({"0": "LABEL_0"});
    json["label2id"] = serde_json::json!({"LABEL_0": 0});
    json["torch_dtype"] = match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::Bf16 => "bfloat16",
    }
    .into();
    let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Input(e.to_string()))?;
    write_atomic(&dir.join("config.json"), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::checkpoint::named_tensors;
    use crate::mask::{attention_mask, positions_from_mask};

    type B = Flex;

    /// A padded batch: `rows` of ids, `valid` marking real tokens.
    fn input(rows: &[Vec<u32>], valid: &[Vec<bool>]) -> ForwardInput<B> {
        let device = Default::default();
        let (b, t) = (rows.len(), rows[0].len());
        let ids: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
        let pos: Vec<i64> = positions_from_mask(valid).concat();
        ForwardInput {
            input_ids: Tensor::from_data(TensorData::new(ids, [b, t]), &device),
            positions: Tensor::from_data(TensorData::new(pos, [b, t]), &device),
            mask: attention_mask::<B>(valid, t, None, &device),
        }
    }

    fn values<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
        x.into_data().into_vec::<f32>().unwrap()
    }

    #[test]
    fn score_is_read_at_the_last_real_token_with_pad_equal_to_eos() {
        // EOS = PAD = 2. Each row ends its turn with EOS, then pads with EOS too:
        // the score must be the one of the EOS that ends the turn, i.e. what the
        // unpadded row scores at its last position — not the token before it
        // (transformers' id-based rule) and not a trailing pad.
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Llama);
        let eos = 2;
        let a = vec![5, 17, 33, 9, eos];
        let b = vec![8, 40, eos];
        // A random model whose score at b's EOS differs from the one before it
        // (almost every draw; the backend's generator is shared by the tests
        // running in parallel, so the draw is not seeded).
        let (model, sa, sb) = (0..20)
            .find_map(|_| {
                let model = RewardModel::<B>::init(&config, &device);
                let alone = |s: &Vec<u32>| {
                    let valid = [vec![true; s.len()]];
                    let scores = model.token_scores(input(std::slice::from_ref(s), &valid));
                    *values(scores).last().unwrap()
                };
                let (sa, sb) = (alone(&a), alone(&b));
                let before_eos_b =
                    values(model.token_scores(input(std::slice::from_ref(&b), &[vec![true; 3]])))
                        [1];
                ((sb - before_eos_b).abs() > 1e-3).then_some((model, sa, sb))
            })
            .expect("a model with distinct scores");

        // Right padding: b = [8, 40, eos, eos, eos], last real index 2.
        let right = [a.clone(), vec![8, 40, eos, eos, eos]];
        let right_valid = [vec![true; 5], vec![true, true, true, false, false]];
        let got = values(model.forward(input(&right, &right_valid), &[4, 2]));
        assert!(
            (got[0] - sa).abs() < 1e-5 && (got[1] - sb).abs() < 1e-5,
            "{got:?} vs {sa} {sb}"
        );

        // Left padding: b = [eos, eos, 8, 40, eos], last real index 4.
        let left = [a.clone(), vec![eos, eos, 8, 40, eos]];
        let left_valid = [vec![true; 5], vec![false, false, true, true, true]];
        let got = values(model.forward(input(&left, &left_valid), &[4, 4]));
        assert!(
            (got[0] - sa).abs() < 1e-5 && (got[1] - sb).abs() < 1e-5,
            "{got:?} vs {sa} {sb}"
        );
    }

    #[test]
    fn token_scores_agree_with_forward() {
        let device = Default::default();
        let model = RewardModel::<B>::init(&LlamaConfig::tiny(ModelType::Qwen2), &device);
        let rows = [vec![3, 4, 5, 6], vec![7, 8, 0, 0]];
        let valid = [vec![true; 4], vec![true, true, false, false]];
        let all = values(model.token_scores(input(&rows, &valid)));
        let last = values(model.forward(input(&rows, &valid), &[3, 1]));
        assert!((all[3] - last[0]).abs() < 1e-6 && (all[5] - last[1]).abs() < 1e-6);
    }

    #[test]
    fn save_load_round_trip_is_exact_and_names_the_architecture() {
        let device = Default::default();
        let mut config = LlamaConfig::tiny(ModelType::Mistral);
        config.pad_token_id = Some(0);
        let model = RewardModel::<B>::init(&config, &device);
        let dir = tempfile::tempdir().unwrap();
        save_reward_model(&model, &config, dir.path(), SaveDtype::F32).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(json["architectures"][0], "MistralForSequenceClassification");
        assert_eq!(json["num_labels"], 1);
        assert_eq!(json["pad_token_id"], 0);
        let (_, loaded) = load_reward_model::<B>(dir.path(), &device).unwrap();
        assert_eq!(
            named_tensors::<B, _>(&model),
            named_tensors::<B, _>(&loaded)
        );
        assert!(named_tensors::<B, _>(&loaded).contains_key(SCORE_WEIGHT));
    }

    /// Every family's reward model: saved under transformers' class and
    /// tensor names (Phi-3's fused projections joined), loaded back exactly,
    /// scoring the same.
    #[test]
    fn every_family_saves_and_loads_its_reward_model() {
        let device = Default::default();
        for family in [
            ModelType::Qwen3,
            ModelType::Olmo2,
            ModelType::Gemma3,
            ModelType::Phi3,
        ] {
            let mut config = LlamaConfig::tiny(family);
            config.pad_token_id = Some(0);
            let model = RewardModel::<B>::init(&config, &device);
            let dir = tempfile::tempdir().unwrap();
            save_reward_model(&model, &config, dir.path(), SaveDtype::F32).unwrap();
            let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
            let fused = weights.windows(8).any(|w| w == b"qkv_proj");
            assert_eq!(fused, family == ModelType::Phi3, "{family:?}");
            let (loaded_config, loaded) = load_reward_model::<B>(dir.path(), &device).unwrap();
            assert_eq!(loaded_config.model_type, family);
            assert_eq!(
                named_tensors::<B, _>(&model),
                named_tensors::<B, _>(&loaded),
                "{family:?}"
            );
        }
    }

    #[test]
    fn a_causal_lm_becomes_a_reward_model_with_its_backbone() {
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Llama);
        let lm = crate::LlamaForCausalLM::<B>::init(&config, &device);
        let dir = tempfile::tempdir().unwrap();
        crate::save_model(&lm, &config, dir.path(), SaveDtype::F32).unwrap();
        let (_, rm) = reward_model_from_causal_lm::<B>(dir.path(), &device).unwrap();
        let lm_tensors = named_tensors::<B, _>(&lm);
        let rm_tensors = named_tensors::<B, _>(&rm);
        for (name, value) in &rm_tensors {
            if name != SCORE_WEIGHT {
                assert_eq!(Some(value), lm_tensors.get(name), "{name}");
            }
        }
        assert_eq!(rm_tensors[SCORE_WEIGHT].0, vec![1, config.hidden_size]);
        assert!(!rm_tensors.contains_key("lm_head.weight"));
        // A causal-LM directory is not a reward model: the head is missing.
        let err = load_reward_model::<B>(dir.path(), &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lm_head.weight") || err.contains(SCORE_WEIGHT),
            "{err}"
        );
    }

    /// Parity with transformers' `LlamaForSequenceClassification` (fixture from
    /// scripts/fixtures_reward.py): each row's score alone, right- and
    /// left-padded, and the per-token scores, all within 1e-4.
    #[test]
    fn parity_with_transformers() {
        let device = Default::default();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward-llama");
        let (config, model) = load_reward_model::<B>(&dir, &device).unwrap();
        assert_eq!(config.pad_token_id, Some(0));
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        let exp: serde_json::Value = serde_json::from_str(&text).unwrap();
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            let mut out = Vec::new();
            let mut stack = vec![v];
            while let Some(x) = stack.pop() {
                match x {
                    serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
                    x => out.push(x.as_f64().unwrap() as f32),
                }
            }
            out
        };
        let ints = |v: &serde_json::Value| -> Vec<Vec<u32>> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32)
                        .collect()
                })
                .collect()
        };
        let close = |got: &[f32], want: &[f32], what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < 1e-4,
                "{what}: max |diff| {diff}: {got:?} vs {want:?}"
            );
        };

        let seqs = ints(&exp["sequences"]);
        let alone: Vec<f32> = seqs
            .iter()
            .map(|s| {
                values(model.forward(
                    input(std::slice::from_ref(s), &[vec![true; s.len()]]),
                    &[s.len() - 1],
                ))[0]
            })
            .collect();
        close(&alone, &floats(&exp["scores"]), "unpadded");

        for side in ["right_padded", "left_padded"] {
            let rows = ints(&exp[side]["input_ids"]);
            let valid: Vec<Vec<bool>> = ints(&exp[side]["attention_mask"])
                .iter()
                .map(|r| r.iter().map(|&m| m == 1).collect())
                .collect();
            let last: Vec<usize> = valid
                .iter()
                .map(|r| r.iter().rposition(|&m| m).unwrap())
                .collect();
            close(
                &values(model.forward(input(&rows, &valid), &last)),
                &floats(&exp[side]["scores"]),
                side,
            );
            if side == "right_padded" {
                // Padding positions differ (transformers attends them to something);
                // compare real tokens only.
                let all = values(model.token_scores(input(&rows, &valid)));
                let want = floats(&exp[side]["token_scores"]);
                let keep = |v: &[f32]| -> Vec<f32> {
                    v.iter()
                        .zip(valid.concat())
                        .filter(|(_, m)| *m)
                        .map(|(x, _)| *x)
                        .collect()
                };
                close(&keep(&all), &keep(&want), "token scores");
            }
        }
    }

    #[test]
    fn lora_applies_to_the_backbone_under_the_same_names() {
        let device = Default::default();
        let config = LlamaConfig::tiny(ModelType::Llama);
        let model = RewardModel::<B>::init(&config, &device);
        let lora_config = crate::lora::LoraConfig {
            r: 2,
            ..Default::default()
        };
        let adapted = model
            .map_backbone(|lm| crate::lora::attach(lm, &lora_config, 3, &device))
            .unwrap();
        let view = adapted.backbone_view();
        assert_eq!(crate::lora::adapter_count(&view), 2 * 7);
        let names: Vec<String> = crate::lora::peft_tensors(&view).into_keys().collect();
        assert!(
            names.contains(
                &"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string()
            ),
            "{names:?}"
        );
        // Merging folds the adapters back into the backbone; the head is untouched.
        let merged = adapted
            .map_backbone(|lm| Ok::<_, ModelError>(crate::lora::merge(lm)))
            .unwrap();
        assert_eq!(crate::lora::adapter_count(&merged.backbone_view()), 0);
    }
}
