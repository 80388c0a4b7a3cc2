//! The critic of PPO: a sequence-classification model (by default initialised
//! from the reward model, as in Huang et al. 2024 and OpenRLHF) whose score
//! head, read at every position, gives the value V_t of each completion token.
//!
//! V_t is read at the hidden state that predicts token t — the state after
//! the context the token was sampled from — as TRL's `PPOTrainer` reads
//! `full_value[:, context_length − 1 : −1]`.
//!
//! [`Critic`] is the critic a PPO run trains: a separate model, or a value
//! head on the policy's backbone ([`ValueHead`]); [`CriticInit`] says where it
//! starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use alignkit_model::LlamaConfig;
use alignkit_model::heads::{RewardModel, is_sequence_classification};
use alignkit_model::transformer::Linear;
use alignkit_train::checkpoint::OPTIMIZER_FILE;
use alignkit_train::reward_model::{
    Trainee, fresh_score, load_trainable as load_critic, read_score, save_trained as save_critic,
    write_score,
};
use alignkit_train::skeleton::Run;
use alignkit_train::{AdamW, Gradients, TrainError, Trainable, trainable_params};
use burn::module::{Module, ModuleMapper, ModuleVisitor};
use burn::tensor::DType;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};

use crate::config::{PpoParams, RlConfig};
use crate::error::{Result, RlError};
use crate::reward::{RewardKind, same_tokenizer};
use crate::rollout::ScoredTokens;

/// The critic's value of each scored token of `tokens`, in their order
/// (row by row, position by position). Gradients reach the critic when `B`
/// is an autodiff backend.
///
/// Shapes: → [N], N = the number of scored tokens.
pub fn token_values<B: Backend>(
    critic: &RewardModel<B>,
    tokens: &ScoredTokens,
    device: &B::Device,
) -> Tensor<B, 1> {
    let (b, t) = (tokens.batch.batch_size, tokens.batch.seq_len);
    let scores = critic.token_scores(tokens.input(device)).reshape([b * t]);
    let n = tokens.hidden_index.len();
    let at =
        Tensor::<B, 1, Int>::from_data(TensorData::new(tokens.hidden_index.clone(), [n]), device);
    scores.select(0, at)
}

/// The critic of `ppo.shared_backbone`: a value head [1, C] over the
/// policy's own final hidden states (see
/// [`crate::rollout::logprobs_and_values`]), optimised on its own.
#[derive(Module, Debug)]
pub struct ValueHead<B: Backend> {
    pub score: Linear<B>,
}

impl<B: Backend> Trainable<B> for ValueHead<B> {
    fn visit_trainable<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        self.visit(visitor);
    }

    fn map_trainable<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        self.map(mapper)
    }
}

/// Where the critic starts: a reward or value model, or the policy with a
/// fresh value head (a copy of it, or the policy itself under
/// `ppo.shared_backbone`).
#[derive(Debug, Clone, PartialEq)]
pub enum CriticInit {
    RewardModel(PathBuf),
    Policy(PathBuf),
    SharedBackbone,
}

impl CriticInit {
    /// `ppo.value_model`, else the one `kind = "model"` reward, else the policy.
    /// A directory that is not a reward/value model, or whose tokenizer differs
    /// from the policy's, is a one-line config error.
    pub fn resolve(config: &RlConfig, p: &PpoParams) -> Result<Self> {
        if p.shared_backbone {
            return Ok(CriticInit::SharedBackbone);
        }
        let models: Vec<&PathBuf> = config
            .rewards
            .iter()
            .filter_map(|r| match r {
                RewardKind::Model { path, .. } => Some(path),
                _ => None,
            })
            .collect();
        let (field, dir) = match (&p.value_model, models.as_slice()) {
            (Some(dir), _) => ("ppo.value_model", dir.clone()),
            (None, [one]) => ("rewards.path", (*one).clone()),
            (None, _) => return Ok(CriticInit::Policy(config.model.clone())),
        };
        let error = |message: String| RlError::Config {
            field: field.into(),
            message,
        };
        if !dir.exists() {
            return Err(error(format!("{} does not exist", dir.display())));
        }
        let model_config = LlamaConfig::load(&dir.join("config.json"))
            .map_err(|e| error(format!("{}: {e}", dir.display())))?;
        if !is_sequence_classification(&model_config) {
            return Err(error(format!(
                "{} is not a reward or value model (no *ForSequenceClassification architecture); the critic starts from one — leave ppo.value_model out to start it from the policy with a fresh value head",
                dir.display()
            )));
        }
        let policy = alignkit_datasets::Tokenizer::from_dir(&config.model)?;
        same_tokenizer(&policy, &dir).map_err(error)?;
        Ok(CriticInit::RewardModel(dir))
    }

    /// The model a separate critic starts from; none for a shared backbone.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            CriticInit::RewardModel(d) | CriticInit::Policy(d) => Some(d),
            CriticInit::SharedBackbone => None,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            CriticInit::RewardModel(d) => format!("the reward model {}", d.display()),
            CriticInit::Policy(_) => "the policy's weights with a fresh value head".into(),
            CriticInit::SharedBackbone => "a fresh value head on the policy's backbone".into(),
        }
    }
}

/// The critic a run trains (one per run: the variants' sizes do not matter).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Critic<B: AutodiffBackend> {
    /// A separate model: its own backbone and head (and adapters), with its
    /// config and the model it started from (for its checkpoints).
    Separate(Trainee<B>, Arc<(LlamaConfig, PathBuf)>),
    /// A value head on the policy's backbone.
    Shared(ValueHead<B>),
}

/// The critic as the no-grad passes read it (dropout off).
#[allow(clippy::large_enum_variant)]
pub(crate) enum CriticNow<B: burn::tensor::backend::Backend> {
    Separate(Trainee<B>),
    Shared(ValueHead<B>),
}

impl<B: AutodiffBackend> Critic<B> {
    /// The start of `init`, or the critic saved in checkpoint folder `saved`.
    pub(crate) fn load(
        init: &CriticInit,
        config: &RlConfig,
        hidden: usize,
        saved: Option<&Path>,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self> {
        let config_error = |e: String| RlError::Config {
            field: "ppo.value_model".into(),
            message: e,
        };
        let Some(start) = init.dir() else {
            let score = match saved {
                Some(dir) => read_score(dir, hidden, device),
                None => Ok(fresh_score(hidden, seed, device)),
            }
            .map_err(|e| config_error(e.to_string()))?;
            return Ok(Critic::Shared(ValueHead { score }));
        };
        let (critic_config, mut model) =
            load_critic::<B>(start, config.lora.as_ref(), saved, seed, device)
                .map_err(|e| config_error(e.to_string()))?;
        config.train.checkpointing(&mut model.model)?;
        Ok(Critic::Separate(
            Trainee { reward: model },
            Arc::new((critic_config, start.to_path_buf())),
        ))
    }

    /// Its optimizer, fresh or as saved in `dir`.
    pub(crate) fn optimizer(
        &self,
        config: &alignkit_train::AdamWConfig,
        saved: Option<&Path>,
        device: &B::Device,
    ) -> Result<AdamW<B::InnerBackend>> {
        let Some(dir) = saved else {
            return Ok(AdamW::new(config.clone()));
        };
        let params = match self {
            Critic::Separate(model, _) => trainable_params::<B, _>(model),
            Critic::Shared(head) => trainable_params::<B, _>(head),
        };
        Ok(AdamW::load(
            config.clone(),
            &dir.join(OPTIMIZER_FILE),
            &params,
            device,
        )?)
    }

    /// Its weights in `dtype` (f32 masters kept by `opt`).
    pub(crate) fn into_dtype(self, opt: &mut AdamW<B::InnerBackend>, dtype: DType) -> Self {
        match self {
            Critic::Separate(model, info) => {
                Critic::Separate(opt.to_dtype::<B, _>(model, dtype), info)
            }
            Critic::Shared(head) => Critic::Shared(opt.to_dtype::<B, _>(head, dtype)),
        }
    }

    /// Its gradients summed over the ranks of `run` ([`Run::share_gradients`]).
    pub(crate) fn share_gradients(
        &self,
        run: &Run<B>,
        grads: &mut Gradients<B::InnerBackend>,
        loss: f64,
    ) -> std::result::Result<f64, TrainError> {
        match self {
            Critic::Separate(model, _) => run.share_gradients(model, grads, loss),
            Critic::Shared(head) => run.share_gradients(head, grads, loss),
        }
    }

    /// One optimizer step.
    pub(crate) fn step(
        self,
        opt: &mut AdamW<B::InnerBackend>,
        grads: Gradients<B::InnerBackend>,
        lr: f64,
    ) -> Self {
        match self {
            Critic::Separate(model, info) => {
                Critic::Separate(opt.step::<B, _>(model, grads, lr), info)
            }
            Critic::Shared(head) => Critic::Shared(opt.step::<B, _>(head, grads, lr)),
        }
    }

    /// Save into checkpoint folder `dir` (the f32 masters of a
    /// mixed-precision run), with its optimizer.
    pub(crate) fn save(
        &self,
        opt: &AdamW<B::InnerBackend>,
        lora: Option<&alignkit_model::lora::LoraConfig>,
        dir: &Path,
    ) -> std::result::Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let saved = match self {
            Critic::Separate(model, info) => {
                let model = opt.f32_weights::<B, _>(model.clone());
                save_critic(&model.reward, &info.0, lora, &info.1, dir)
            }
            Critic::Shared(head) => write_score(&opt.f32_weights::<B, _>(head.clone()).score, dir),
        };
        saved.map_err(|e| TrainError::checkpoint(dir, e.to_string()))?;
        opt.save(&dir.join(OPTIMIZER_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alignkit_model::ForwardInput;
    use alignkit_model::mask::attention_mask;
    use alignkit_train::testutil::{B, tiny_config};

    /// Each value equals the critic's score of the prefix that ends just
    /// before the token, computed alone (no padding, no batch mates).
    #[test]
    fn values_are_read_where_each_token_is_predicted() {
        let device = Default::default();
        let critic = RewardModel::<B>::init(&tiny_config(), &device);
        let (p0, c0): (&[u32], &[u32]) = (&[5, 6, 7], &[8, 9]);
        let (p1, c1): (&[u32], &[u32]) = (&[10, 11], &[12, 13, 14]);
        let tokens = ScoredTokens::new(&[(p0, c0), (p1, c1)], &[true, true], 2);
        let got: Vec<f32> = token_values(&critic, &tokens, &device)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let alone = |ids: &[u32]| -> f32 {
            let t = ids.len();
            let input = ForwardInput {
                input_ids: Tensor::<B, 2, Int>::from_data(
                    TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, t]),
                    &device,
                ),
                positions: Tensor::<B, 2, Int>::from_data(
                    TensorData::new((0..t as i64).collect::<Vec<_>>(), [1, t]),
                    &device,
                ),
                mask: attention_mask::<B>(&[vec![true; t]], t, None, &device),
            };
            critic
                .forward(input, &[t - 1])
                .into_data()
                .into_vec::<f32>()
                .unwrap()[0]
        };
        let want = [
            alone(&[5, 6, 7]),
            alone(&[5, 6, 7, 8]),
            alone(&[10, 11]),
            alone(&[10, 11, 12]),
            alone(&[10, 11, 12, 13]),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }
}
