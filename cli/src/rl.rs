//! `alignkit grpo`, `alignkit rloo` and `alignkit ppo`: glue over
//! alignkit-ppo's online RL trainers — flags to config keys, a progress bar,
//! Ctrl-C, a one-line summary, loss and curve plots (see `train_cli`). All
//! read one config type, told apart by its `[grpo]`, `[rloo]` or `[ppo]`
//! table; each command checks that the file holds its algorithm.

use alignkit_ppo::{Event, PpoMetrics, ReferenceKind, RlConfig, RlMetrics};
use alignkit_train::RunOptions;
use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::train_cli::{self, StepBar, TrainArgs, Trained, Trainer, unsigned};

/// Which table the command expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Grpo,
    Rloo,
    Ppo,
}

impl Algorithm {
    fn table(self) -> &'static str {
        match self {
            Algorithm::Grpo => "grpo",
            Algorithm::Rloo => "rloo",
            Algorithm::Ppo => "ppo",
        }
    }

    /// The KL weight's key in the algorithm's table.
    fn beta_key(self) -> &'static str {
        match self {
            Algorithm::Grpo | Algorithm::Rloo => "beta",
            Algorithm::Ppo => "kl_coef",
        }
    }
}

#[derive(Args)]
pub struct RlArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// = <algorithm>.num_generations: completions sampled per prompt (G ≥ 2;
    /// PPO: ≥ 1).
    #[arg(long, allow_negative_numbers = true)]
    num_generations: Option<i128>,
    /// = <algorithm>.beta (PPO: ppo.kl_coef): weight of the KL to the reference.
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// = rollout.max_completion_length
    #[arg(long, allow_negative_numbers = true)]
    max_completion_length: Option<i128>,
    /// = rollout.temperature
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
}

pub fn run(algorithm: Algorithm, args: RlArgs) -> Result<()> {
    let t = algorithm.table();
    let extra = [
        (
            format!("{t}.num_generations"),
            unsigned("--num-generations", args.num_generations)?,
        ),
        (
            format!("{t}.{}", algorithm.beta_key()),
            args.beta.map(|v| format!("{v:?}")),
        ),
        (
            "rollout.max_completion_length".to_string(),
            unsigned("--max-completion-length", args.max_completion_length)?,
        ),
        (
            "rollout.temperature".to_string(),
            args.temperature.map(|v| format!("{v:?}")),
        ),
    ];
    let extra: Vec<(&str, Option<String>)> =
        extra.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    train_cli::run(&args.train, &extra, |path, keys| {
        let config = RlConfig::load(path, keys)?;
        let holds = match algorithm {
            Algorithm::Grpo => config.grpo.is_some(),
            Algorithm::Rloo => config.rloo.is_some(),
            Algorithm::Ppo => config.ppo.is_some(),
        };
        if !holds {
            let origin = alignkit_train::config_origin(path);
            bail!(
                "{}: no [{t}] table: `alignkit {t}` trains the algorithm of that table",
                origin.display()
            );
        }
        Ok(config)
    })
}

impl Trainer for RlConfig {
    const NAME: &'static str = "Online RL";
    const CURVES: &'static [(&'static str, &'static str)] = &[
        ("reward", "reward (mean)"),
        ("kl", "KL to the reference"),
        ("completions/mean_length", "completion length (tokens)"),
    ];

    fn curves(&self) -> &'static [(&'static str, &'static str)] {
        if self.ppo.is_some() {
            &[
                ("objective/scores", "score (mean)"),
                ("objective/kl", "sequence KL to the reference"),
                ("loss/value_avg", "value loss"),
                ("completions/mean_length", "completion length (tokens)"),
            ]
        } else {
            Self::CURVES
        }
    }

    fn model_mut(&mut self) -> &mut std::path::PathBuf {
        &mut self.model
    }

    fn loop_mut(&mut self) -> &mut alignkit_train::LoopConfig {
        &mut self.train
    }

    fn lora_dropout(&self) -> f64 {
        self.lora.as_ref().map_or(0.0, |l| l.dropout)
    }

    fn train<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        options: RunOptions<'_>,
        bar: &StepBar,
    ) -> Result<Trained> {
        if self.ppo.is_some() {
            let o = alignkit_ppo::train_ppo::<B>(self, device, options, &mut |e| report(bar, e));
            return train_cli::ended(o, describe_ppo);
        }
        let o = alignkit_ppo::train::<B>(self, device, options, &mut |e| report(bar, e));
        train_cli::ended(o, describe)
    }
}

/// A progress report on the bar.
fn report(bar: &StepBar, event: Event<'_>) {
    match event {
        Event::Started(info) => {
            let reference = match info.reference {
                ReferenceKind::None => "none (beta = 0)",
                ReferenceKind::FrozenModel => "a frozen copy",
                ReferenceKind::AdaptersDisabled => "the policy without its adapters",
            };
            let critic = info
                .critic
                .as_ref()
                .map_or(String::new(), |c| format!(", critic: {c}"));
            let what = format!(
                "{}: {} prompts ({} truncated), {} per step × {} completions, rewards {}, {} trainable parameters, reference: {reference}{critic}",
                info.algorithm.to_uppercase(),
                info.prompts,
                info.truncated_prompts,
                info.prompts_per_step,
                info.completions_per_step / info.prompts_per_step.max(1),
                info.rewards.join(" + "),
                info.trainable_params,
            );
            bar.start(
                &info.run_dir,
                info.start_step,
                info.total_steps,
                &info.resumed_with,
                info.lock_taken_over.as_ref(),
                &what,
            );
        }
        Event::Step(m) => {
            let kl = m.kl.map_or(String::new(), |k| format!(" kl {k:.4}"));
            let r = &m.rollout;
            let msg = format!(
                "reward {:.3}±{:.3}{kl} len {:.0} gen {:.0}s opt {:.0}s",
                r.reward, r.reward_std, r.mean_length, r.generation_time, r.optimization_time
            );
            bar.step(m.step, msg, r.skipped.as_ref());
        }
        Event::PpoStep(m) => {
            let r = &m.rollout;
            let msg = format!(
                "score {:.3} kl {:.3} vf {:.3} ratio {:.3} len {:.0} gen {:.0}s opt {:.0}s",
                m.scores,
                m.kl,
                m.value_loss,
                m.ratio,
                r.mean_length,
                r.generation_time,
                r.optimization_time
            );
            bar.step(m.step, msg, r.skipped.as_ref());
        }
        Event::Eval(r) => bar.println(&format!(
            "eval at step {}: reward {:.4} ± {:.4}, sequence KL {:.3} ± {:.3} ({} completions, mean length {:.1}, {:.0}s)",
            r.step,
            r.reward,
            r.reward_std,
            r.kl,
            r.kl_sem,
            r.completions,
            r.mean_length,
            r.time
        )),
        Event::Checkpoint { .. } => {}
    }
}

/// The last PPO step's metrics in the summary line.
fn describe_ppo(m: &PpoMetrics) -> String {
    format!(
        ", score {:.3}, kl {:.3}, value loss {:.4}, mean length {:.1}",
        m.scores, m.kl, m.value_loss, m.rollout.mean_length
    )
}

/// The last step's metrics in the summary line.
fn describe(m: &RlMetrics) -> String {
    let kl = m.kl.map_or(String::new(), |k| format!(", kl {k:.4}"));
    format!(
        ", reward {:.3}{kl}, mean length {:.1}",
        m.rollout.reward, m.rollout.mean_length
    )
}
