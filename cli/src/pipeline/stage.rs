//! The pipeline file (`[[stage]]` entries) and each stage's resolved config,
//! as its own crate's type.

use std::path::PathBuf;

use alignkit_dpo::DpoConfig;
use alignkit_ppo::RlConfig;
use alignkit_reward::RewardConfig;
use alignkit_sft::SftConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PipelineFile {
    pub(super) model: Option<PathBuf>,
    pub(super) output_dir: Option<PathBuf>,
    #[serde(default, rename = "stage")]
    pub(super) stages: Vec<StageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StageEntry {
    pub(super) name: String,
    pub(super) kind: StageKind,
    pub(super) from: Option<String>,
    #[serde(default)]
    pub(super) config: toml::Table,
    /// Run the stage data parallel through `alignkit launch` (sft, dpo and
    /// reward stages).
    pub(super) launch: Option<StageLaunch>,
}

/// How a stage is launched: `launch = { nproc_per_node = 2 }`, or
/// `launch = { devices = ["cuda:0", "cuda:1"] }` for local peers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageLaunch {
    /// Ranks on this machine (`alignkit launch --nproc-per-node`).
    #[serde(default = "one")]
    pub nproc_per_node: usize,
    /// Local peers, one rank per device, in one process
    /// (`alignkit launch --devices`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// `--master-port`.
    #[serde(default = "default_master_port")]
    pub master_port: u16,
    /// `--timeout`, seconds.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn one() -> usize {
    1
}

impl StageLaunch {
    /// The ranks it starts on this machine.
    pub fn ranks(&self) -> usize {
        self.nproc_per_node * self.devices.len().max(1)
    }
}

fn default_master_port() -> u16 {
    29500
}

fn default_timeout() -> f64 {
    60.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Sft,
    Reward,
    Dpo,
    Grpo,
    Rloo,
    Ppo,
    Eval,
    Export,
}

impl StageKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            StageKind::Sft => "sft",
            StageKind::Reward => "reward",
            StageKind::Dpo => "dpo",
            StageKind::Grpo => "grpo",
            StageKind::Rloo => "rloo",
            StageKind::Ppo => "ppo",
            StageKind::Eval => "eval",
            StageKind::Export => "export",
        }
    }

    /// Whether the stage's output is a policy (a causal LM) later stages take.
    pub(super) fn outputs_policy(self) -> bool {
        !matches!(self, StageKind::Reward | StageKind::Eval)
    }
}

/// The `[stage.config]` table of an `export` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    pub format: ExportFormat,
    /// Weight dtype of a merged export.
    pub dtype: ExportDtype,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            format: ExportFormat::Merged,
            dtype: ExportDtype::F32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A Hugging Face model directory with LoRA folded in.
    Merged,
    /// A PEFT adapter directory (LoRA stages only).
    Adapter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    F32,
    Bf16,
}

/// The `[stage.config]` table of an `eval` stage: the settings of `alignkit
/// eval winrate`, under its flags' names and with their defaults. The policy
/// is the stage's input model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Prompts JSONL (relative: to the pipeline file).
    pub prompts: PathBuf,
    /// `rule:RULE`, `reward:NAME` (a reward stage's model) or `reward:DIR`.
    pub judges: Vec<String>,
    /// A stage's name or a model directory; absent: the pipeline's base model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Render string prompts as a user turn with each model's chat template.
    pub chat: bool,
    /// Prompts generated together.
    pub batch_size: usize,
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: u64,
    pub stop: Vec<String>,
    /// With a reward judge: reward differences within ± this count as ties.
    pub tie_margin: f64,
}

impl Default for EvalConfig {
    /// `alignkit eval winrate`'s flag defaults (a test holds them equal).
    fn default() -> Self {
        Self {
            prompts: PathBuf::new(),
            judges: Vec::new(),
            baseline: None,
            chat: false,
            batch_size: 8,
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 0,
            stop: Vec::new(),
            tie_margin: 0.0,
        }
    }
}

/// A stage's resolved config, as its own crate's type.
#[derive(Debug, Clone)]
pub enum StageConfig {
    Sft(Box<SftConfig>),
    Reward(Box<RewardConfig>),
    Dpo(Box<DpoConfig>),
    /// GRPO or RLOO, told apart by the config's table (as the commands do).
    Rl(Box<RlConfig>),
    Eval(Box<EvalConfig>),
    Export(ExportConfig),
}

impl StageConfig {
    pub(super) fn to_json(&self) -> serde_json::Value {
        let v = match self {
            StageConfig::Sft(c) => serde_json::to_value(c),
            StageConfig::Reward(c) => serde_json::to_value(c),
            StageConfig::Dpo(c) => serde_json::to_value(c),
            StageConfig::Rl(c) => serde_json::to_value(c),
            StageConfig::Eval(c) => serde_json::to_value(c),
            StageConfig::Export(c) => serde_json::to_value(c),
        };
        v.expect("stage configs serialize")
    }

    /// A previous run's config (a manifest's) re-read with this version's
    /// config type of `kind` (see [`alignkit_train::resume::reread`]).
    pub(super) fn reread(kind: StageKind, old: &serde_json::Value) -> Option<serde_json::Value> {
        use alignkit_train::resume::reread;
        match kind {
            StageKind::Sft => reread::<SftConfig>(old),
            StageKind::Reward => reread::<RewardConfig>(old),
            StageKind::Dpo => reread::<DpoConfig>(old),
            StageKind::Grpo | StageKind::Rloo | StageKind::Ppo => reread::<RlConfig>(old),
            StageKind::Eval => reread::<EvalConfig>(old),
            StageKind::Export => reread::<ExportConfig>(old),
        }
    }

    pub(super) fn to_toml(&self) -> String {
        match self {
            StageConfig::Sft(c) => c.to_toml(),
            StageConfig::Reward(c) => c.to_toml(),
            StageConfig::Dpo(c) => c.to_toml(),
            StageConfig::Rl(c) => c.to_toml(),
            StageConfig::Eval(c) => toml::to_string(c).expect("EvalConfig serializes"),
            StageConfig::Export(c) => toml::to_string(c).expect("ExportConfig serializes"),
        }
    }

    /// The data files the stage reads, each with its config key.
    pub(super) fn data_files(&self) -> Vec<(&'static str, PathBuf)> {
        let (train, validation) = match self {
            StageConfig::Sft(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Reward(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Dpo(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Rl(c) => (&c.data.train_file, &None),
            StageConfig::Eval(c) => return vec![("prompts", c.prompts.clone())],
            StageConfig::Export(_) => return Vec::new(),
        };
        std::iter::once(("data.train_file", train.clone()))
            .chain(validation.clone().map(|v| ("data.validation_file", v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::{EvalConfig, StageConfig, StageKind};
    use crate::eval::EvalCommand;
    use crate::{Cli, Command};

    /// An eval stage's defaults are `alignkit eval winrate`'s.
    #[test]
    fn eval_stage_defaults_are_the_commands() {
        let argv = [
            "alignkit",
            "eval",
            "winrate",
            "--policy",
            "p",
            "--baseline",
            "b",
            "--prompts",
            "p.jsonl",
            "--judge",
            "rule:one-sentence",
        ];
        let Command::Eval(EvalCommand::Winrate(a)) = Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("not eval winrate");
        };
        let d = EvalConfig::default();
        assert_eq!(
            (d.chat, d.batch_size, d.tie_margin),
            (a.chat, a.batch_size, a.tie_margin)
        );
        let s = &a.sampling;
        assert_eq!(
            (
                d.max_new_tokens,
                d.temperature,
                d.top_k,
                d.top_p,
                d.min_p,
                d.seed
            ),
            (
                s.max_new_tokens,
                s.temperature,
                s.top_k,
                s.top_p,
                s.min_p,
                s.seed
            )
        );
        assert_eq!(d.stop, s.stop);
    }

    /// A config this version writes re-reads as itself, for every kind (its
    /// JSON form round-trips through the config type): otherwise every resume
    /// and every finished pipeline stage would look changed, or fall back to
    /// comparing as written.
    #[test]
    fn configs_reread_as_themselves() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let read = |file: &str| -> toml::Value {
            toml::from_str(&std::fs::read_to_string(examples.join(file)).unwrap()).unwrap()
        };
        let eval: toml::Value = toml::from_str(
            "prompts = \"p.jsonl\"\njudges = [\"rule:one-sentence\", \"reward:rm\"]\nbaseline = \"sft\"",
        )
        .unwrap();
        let configs = [
            (
                StageKind::Sft,
                StageConfig::Sft(Box::new(read("sft.toml").try_into().unwrap())),
            ),
            (
                StageKind::Reward,
                StageConfig::Reward(Box::new(read("reward.toml").try_into().unwrap())),
            ),
            (
                StageKind::Dpo,
                StageConfig::Dpo(Box::new(read("dpo.toml").try_into().unwrap())),
            ),
            (
                StageKind::Grpo,
                StageConfig::Rl(Box::new(read("grpo/grpo.toml").try_into().unwrap())),
            ),
            (
                StageKind::Rloo,
                StageConfig::Rl(Box::new(read("grpo/rloo.toml").try_into().unwrap())),
            ),
            (
                StageKind::Ppo,
                StageConfig::Rl(Box::new(read("sentiment/ppo.toml").try_into().unwrap())),
            ),
            (
                StageKind::Eval,
                StageConfig::Eval(Box::new(eval.try_into().unwrap())),
            ),
            (
                StageKind::Export,
                StageConfig::Export(super::ExportConfig::default()),
            ),
        ];
        for (kind, config) in configs {
            let json = config.to_json();
            assert_eq!(
                StageConfig::reread(kind, &json).as_ref(),
                Some(&json),
                "{kind:?}"
            );
            // An older version's config, without a key added since: the key
            // comes back at its default.
            let mut older = json.clone();
            let key = older
                .as_object()
                .unwrap()
                .keys()
                .next_back()
                .unwrap()
                .clone();
            older.as_object_mut().unwrap().remove(&key);
            let reread = StageConfig::reread(kind, &older).unwrap();
            assert!(reread.get(&key).is_some(), "{kind:?}: {key}");
        }
    }
}
