//! Rollout collection: the prompts of a step in the epoch's seeded order,
//! G completions each sampled with π_old (no gradients), scored, penalised
//! and split into micro-batches of scored tokens.

use std::ops::Range;
use std::time::Instant;

use alignkit_datasets::shuffled_batches;
use alignkit_model::LlamaForCausalLM;
use alignkit_train::seed::{Stream, derive_seed};
use alignkit_train::skeleton::Run;
use alignkit_train::{TrainerState, World};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;

use crate::error::Result;
use crate::loss::{eos_penalised, is_trained};
use crate::metrics::Lengths;
use crate::reward::{Rewards, Scores};
use crate::rollout::{Completion, Prompt, ScoredTokens, roll_out};
use crate::run::Setup;

/// One step's rollout, scored: G completions per prompt, their rewards
/// (EOS-penalised), which are trained, and their micro-batches.
pub(crate) struct Rollout {
    pub completions: Vec<Completion>,
    pub scores: Scores,
    pub total_rewards: Vec<f64>,
    /// False for a truncated completion left out of the loss.
    pub trained: Vec<bool>,
    /// `train.batch_size` completions per forward pass, fixed for the step.
    pub micro: Vec<Range<usize>>,
    pub batches: Vec<ScoredTokens>,
    pub generation_time: f64,
}

/// The prompt order of the epochs, rebuilt when the epoch changes.
#[derive(Default)]
pub(crate) struct EpochOrder(Option<(usize, Vec<Vec<usize>>)>);

impl EpochOrder {
    fn prompts(&mut self, setup: &Setup, seed: u64, epoch: usize, batch: usize) -> Vec<usize> {
        if self.0.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let epoch_seed = derive_seed(seed, Stream::DataOrder, epoch as u64, 0);
            self.0 = Some((
                epoch,
                shuffled_batches(setup.prompts.len(), setup.prompts_per_step, epoch_seed),
            ));
        }
        self.0.as_ref().expect("set above").1[batch].clone()
    }
}

/// Roll out the prompts of the step at `state`'s cursor with the current
/// policy (π_old, no gradients) and score them: in a distributed run, this
/// rank's share of them (whole groups; a completion's sampling seed is its
/// prompt's and sample's, so the completions are one process's). Returns
/// the cursor after the step.
pub(crate) fn collect<B: AutodiffBackend>(
    setup: &Setup,
    world: &World,
    state: &TrainerState,
    order: &mut EpochOrder,
    model: &LlamaForCausalLM<B>,
    rewards: &Rewards<B::InnerBackend>,
    device: &B::Device,
) -> Result<(Rollout, alignkit_train::DataCursor)> {
    let started = Instant::now();
    let c = &setup.config;
    let (epoch, range, next_cursor) = state.cursor.next_step(setup.batches_per_epoch, 1);
    let indices = order.prompts(setup, state.seed, epoch, range.start);
    let indices = indices[world.share(indices.len())].to_vec();
    let completions = {
        let sampler = setup.sampler(model.valid());
        roll_out(
            &sampler,
            &setup.prompts,
            &indices,
            &setup.settings,
            setup.encoder.tokenizer(),
            state.seed,
            state.step,
            device,
        )?
    };
    let generation_time = started.elapsed().as_secs_f64();
    let scores = rewards.score(&setup.prompts, &completions, device)?;
    let total_rewards: Vec<f64> = scores
        .total
        .iter()
        .zip(&completions)
        .map(|(&r, comp)| eos_penalised(r, comp.terminated(), c.rollout.missing_eos_penalty))
        .collect();
    let trained: Vec<bool> = completions
        .iter()
        .map(|comp| is_trained(comp.terminated(), c.rollout.mask_truncated_completions))
        .collect();
    let micro: Vec<Range<usize>> = (0..completions.len())
        .step_by(c.train.batch_size)
        .map(|s| s..(s + c.train.batch_size).min(completions.len()))
        .collect();
    let pad_id = setup.encoder.tokenizer().pad_id();
    let batches = micro
        .iter()
        .map(|r| ScoredTokens::of(&setup.prompts, &completions, r.clone(), &trained, pad_id))
        .collect();
    Ok((
        Rollout {
            completions,
            scores,
            total_rewards,
            trained,
            micro,
            batches,
            generation_time,
        },
        next_cursor,
    ))
}

/// `local` of every rank, in rank order (one process: its own): a step's
/// values over all its completions. `what` names them in a timeout's message.
pub(crate) fn pooled<B: AutodiffBackend>(
    run: &Run<B>,
    local: &[f64],
    what: &str,
) -> Result<Vec<f64>> {
    Ok(pooled_at(run, local, what)?.0)
}

/// [`pooled`], and where this rank's values start in it.
pub(crate) fn pooled_at<B: AutodiffBackend>(
    run: &Run<B>,
    local: &[f64],
    what: &str,
) -> Result<(Vec<f64>, usize)> {
    let all = run.gather_ragged(local, what)?;
    let start = (all[..run.world.rank().min(all.len())].iter())
        .map(Vec::len)
        .sum();
    Ok((all.concat(), start))
}

/// A step's rollout over all ranks, what its metrics are computed on: the
/// completions' lengths, total rewards and each reward function's scores.
pub(crate) struct StepWide {
    pub lengths: Lengths,
    pub total_rewards: Vec<f64>,
    pub per_func: Vec<Vec<f64>>,
}

impl Rollout {
    /// This rollout with every other rank's (one process: itself).
    pub(crate) fn over_ranks<B: AutodiffBackend>(&self, run: &Run<B>) -> Result<StepWide> {
        let what = "gathering the step's metrics";
        let lengths = Lengths::of(&self.completions);
        Ok(StepWide {
            lengths: Lengths {
                tokens: pooled(run, &lengths.tokens, what)?,
                terminated: pooled(run, &lengths.terminated, what)?,
            },
            total_rewards: pooled(run, &self.total_rewards, what)?,
            per_func: (self.scores.per_func.iter())
                .map(|s| pooled(run, s, what))
                .collect::<Result<_>>()?,
        })
    }
}

/// Prompt and completion tokens of a rollout.
pub(crate) fn rollout_tokens(prompts: &[Prompt], completions: &[Completion]) -> u64 {
    completions
        .iter()
        .map(|comp| (prompts[comp.prompt].ids.len() + comp.tokens.len()) as u64)
        .sum()
}

/// The trained completions of a micro-batch (`range` of the step's
/// completions), each with the span of its tokens in the micro-batch's
/// scored tokens (row by row, masked rows holding none).
pub(crate) fn token_spans(
    range: Range<usize>,
    trained: &[bool],
    completions: &[Completion],
) -> Vec<(usize, Range<usize>)> {
    let mut start = 0;
    range
        .filter(|&i| trained[i])
        .map(|i| {
            let n = completions[i].tokens.len();
            start += n;
            (i, start - n..start)
        })
        .collect()
}
