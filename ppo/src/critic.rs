//! The critic of PPO: a sequence-classification model (by default initialised
//! from the reward model, as in Huang et al. 2024 and OpenRLHF) whose score
//! head, read at every position, gives the value V_t of each completion token.
//!
//! V_t is read at the hidden state that predicts token t — the state after
//! the context the token was sampled from — as TRL's `PPOTrainer` reads
//! `full_value[:, context_length − 1 : −1]`.

use alignkit_model::heads::RewardModel;
use alignkit_model::transformer::Linear;
use alignkit_train::Trainable;
use burn::module::{Module, ModuleMapper, ModuleVisitor};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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
