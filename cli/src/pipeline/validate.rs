//! Every stage's config checked as its trainer checks it before the first
//! step (`validate()`, with the model-kind checks that read no weights),
//! when the plan is made: a stage that would fail is refused before the
//! first stage trains, and `--dry-run` never shows it as "run".
//!
//! A model a stage reads may be the output of a stage that has not run yet.
//! Each stands in by what it will be: a policy by the base model (every
//! policy of the pipeline descends from it, with its tokenizer), a reward
//! stage's model by nothing (the plan made sure it is a reward stage's; a
//! `[[rewards]]` entry of it is checked as a sentiment reward of its name
//! and weight).

use std::path::PathBuf;

use alignkit_ppo::RewardKind;
use anyhow::{Result, bail};

use super::manifest::InputModel;
use super::plan::{Action, Plan, Stage};
use super::stage::StageConfig;
use crate::eval::check_reward_judge;
use crate::train_cli::Trainer;

impl Plan {
    /// Check every stage's config (see the module docs); the first problem,
    /// naming the pipeline file and the stage.
    pub(super) fn validate(&self) -> Result<()> {
        for stage in &self.stages {
            self.validate_stage(stage).map_err(|e| {
                anyhow::anyhow!("{}: stage `{}`: {e:#}", self.file.display(), stage.name)
            })?;
        }
        Ok(())
    }

    fn validate_stage(&self, stage: &Stage) -> Result<()> {
        let policy = self.stand_in(&stage.inputs.model);
        match &stage.config {
            StageConfig::Sft(c) => with_model(c.as_ref(), policy).validate()?,
            StageConfig::Reward(c) => with_model(c.as_ref(), policy).validate()?,
            StageConfig::Dpo(c) => with_model(c.as_ref(), policy).validate()?,
            StageConfig::Rl(c) => {
                let mut c = with_model(c.as_ref(), policy);
                for (i, reward) in c.rewards.iter_mut().enumerate() {
                    let Some(model) = stage.inputs.models.get(&format!("rewards[{i}]")) else {
                        continue;
                    };
                    if !self.built(model) {
                        *reward = RewardKind::Sentiment {
                            name: Some(reward.name()),
                            weight: reward.weight(),
                        };
                    }
                }
                c.validate()?;
            }
            StageConfig::Eval(c) => {
                // A judge that is a reward stage's model is one by the plan.
                for i in 0..c.judges.len() {
                    if let Some(m) = stage.inputs.models.get(&format!("judges[{i}]"))
                        && m.from.is_none()
                    {
                        check_reward_judge(&m.path)?;
                    }
                }
                if stage.inputs.models.get("baseline").map(|b| &b.sha256)
                    == Some(&stage.inputs.model.sha256)
                {
                    bail!(
                        "its policy {} is its baseline: every prompt would tie; set `baseline` to another model or stage",
                        stage.inputs.model.path.display()
                    );
                }
            }
            StageConfig::Export(_) => {}
        }
        Ok(())
    }

    /// Whether `model` exists as the stage reads it: a directory given, or
    /// the output of a stage that is skipped (a stage that runs replaces it).
    fn built(&self, model: &InputModel) -> bool {
        match &model.from {
            None => true,
            Some(name) => self
                .stages
                .iter()
                .any(|s| &s.name == name && matches!(s.action, Action::Skip(_))),
        }
    }

    /// The policy `model`, or the base model standing in for it until the
    /// stage that writes it has run.
    fn stand_in(&self, model: &InputModel) -> PathBuf {
        if self.built(model) {
            model.path.clone()
        } else {
            self.base_model.clone()
        }
    }
}

/// `config` reading `model` as its policy.
fn with_model<T: Trainer>(config: &T, model: PathBuf) -> T {
    let mut config = config.clone();
    *config.model_mut() = model;
    config
}
