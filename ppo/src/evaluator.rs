//! The held-out evaluations of an online-RL run (`[eval]`): at step 0 and
//! every `eval.steps` steps, sampled completions of the held-out prompts,
//! their rewards and Monte-Carlo sequence KL, one record each in `eval.jsonl`.

use std::time::Instant;

use alignkit_model::LlamaForCausalLM;
use alignkit_train::seed::{Stream, derive_seed};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::error::Result;
use crate::loss::k1_sequence;
use crate::metrics::{StepLog, length_stats, mean_std, per_function};
use crate::reward::Rewards;
use crate::rollout::{Prompt, RolloutSettings, ScoredTokens, roll_out};
use crate::run::{Event, Reference, Setup};
use serde::Serialize;

/// The held-out evaluations of a run (`[eval]`).
pub(crate) struct Evaluator<IB: Backend> {
    pub(crate) prompts: Vec<Prompt>,
    /// `eval.rewards`; `None`: the run's.
    pub(crate) rewards: Option<Rewards<IB>>,
    pub(crate) settings: RolloutSettings,
    pub(crate) log: StepLog,
}

/// One `eval.jsonl` record.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    pub step: usize,
    /// Mean and sample std of the total reward of the sampled completions.
    #[serde(rename = "eval/reward")]
    pub reward: f64,
    #[serde(rename = "eval/reward_std")]
    pub reward_std: f64,
    /// `eval/rewards/{name}/mean` and `.../std`.
    #[serde(flatten)]
    pub rewards: std::collections::BTreeMap<String, f64>,
    /// Mean over completions of Σ_t (log π − log π_ref): the Monte-Carlo
    /// estimate of the sequence KL(π ‖ π_ref), and its standard error.
    #[serde(rename = "eval/kl")]
    pub kl: f64,
    #[serde(rename = "eval/kl_sem")]
    pub kl_sem: f64,
    #[serde(rename = "eval/mean_length")]
    pub mean_length: f64,
    /// Signs of reward hacking in the completions' texts.
    #[serde(rename = "eval/text")]
    pub text: alignkit_eval::TextStats,
    #[serde(rename = "eval/completions")]
    pub completions: usize,
    #[serde(rename = "eval/time")]
    pub time: f64,
}

impl<IB: Backend> Evaluator<IB> {
    /// Evaluate after update `step` (0: before training) when it is due — at
    /// step 0, every `eval.steps` steps and at the last step — and report
    /// the record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn after_step<B: AutodiffBackend<InnerBackend = IB>>(
        &mut self,
        setup: &Setup,
        step: usize,
        model: &LlamaForCausalLM<B>,
        reference: &Reference<IB>,
        rewards: &Rewards<IB>,
        device: &IB::Device,
        progress: &mut dyn FnMut(Event<'_>),
    ) -> Result<()> {
        let every = setup.config.eval.steps;
        if step == 0 || step.is_multiple_of(every) || step == setup.total_steps {
            let record = self.run(setup, step, model, reference, rewards, device)?;
            progress(Event::Eval(&record));
        }
        Ok(())
    }

    /// Sample the held-out prompts with the policy (the same seeds every
    /// time), score them and estimate their sequence KL; append the record.
    pub(crate) fn run<B: AutodiffBackend<InnerBackend = IB>>(
        &mut self,
        setup: &Setup,
        step: usize,
        model: &LlamaForCausalLM<B>,
        reference: &Reference<IB>,
        rewards: &Rewards<IB>,
        device: &IB::Device,
    ) -> Result<EvalRecord> {
        let rewards = self.rewards.as_ref().unwrap_or(rewards);
        let started = Instant::now();
        let policy = model.valid();
        let seed = derive_seed(setup.config.train.seed, Stream::Evaluation, 0, 0);
        let indices: Vec<usize> = (0..self.prompts.len()).collect();
        let completions = roll_out(
            &setup.sampler(policy.clone()),
            &self.prompts,
            &indices,
            &self.settings,
            setup.encoder.tokenizer(),
            seed,
            0,
            device,
        )?;
        let scores = rewards.score(&self.prompts, &completions, device)?;
        let pad_id = setup.encoder.tokenizer().pad_id();
        let chunk = setup.config.train.batch_size.max(1);
        let all = vec![true; completions.len()];
        let batches: Vec<ScoredTokens> = (0..completions.len())
            .step_by(chunk)
            .map(|s| {
                let rows = s..(s + chunk).min(completions.len());
                ScoredTokens::of(&self.prompts, &completions, rows, &all, pad_id)
            })
            .collect();
        let temperature = self.settings.temperature;
        let ref_logps = reference
            .logps(&policy, &batches, temperature, device)
            .expect("a run with [eval] has a reference");
        let reference: Vec<f32> = ref_logps.into_iter().flatten().collect();
        let mut kl = Vec::with_capacity(completions.len());
        let mut at = 0;
        for c in &completions {
            let n = c.tokens.len();
            kl.push(k1_sequence(&c.logprobs, &reference[at..at + n]));
            at += n;
        }
        let (kl_mean, kl_std) = mean_std(&kl);
        let (reward, reward_std) = mean_std(&scores.total);
        let record = EvalRecord {
            step,
            reward,
            reward_std,
            rewards: per_function(rewards.names(), &scores.per_func)
                .into_iter()
                .map(|(k, v)| (format!("eval/{k}"), v))
                .collect(),
            kl: kl_mean,
            kl_sem: kl_std / (kl.len().max(1) as f64).sqrt(),
            mean_length: length_stats(&completions).0,
            text: alignkit_eval::TextStats::of(
                &completions
                    .iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>(),
            ),
            completions: completions.len(),
            time: started.elapsed().as_secs_f64(),
        };
        self.log.append(std::slice::from_ref(&record))?;
        Ok(record)
    }
}
