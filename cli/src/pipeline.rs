//! `alignkit run pipeline.toml`: staged training (SFT → DPO → export, ...),
//! each stage in its own run directory with a `manifest.json`. A stage whose
//! inputs and config are unchanged since it completed is skipped, an
//! interrupted one resumes from its newest checkpoint, and a stage re-runs when
//! anything upstream of it changed.
//!
//! ```toml
//! model = "models/SmolLM2-135M-Instruct"   # the first stage's input (relative: to this file)
//! output_dir = "runs/demo"                 # RUN: stage `x` writes RUN/x/
//!
//! [[stage]]
//! name = "sft"
//! kind = "sft"                             # sft | reward | dpo | export
//! [stage.config]                           # the stage's own config (SftConfig here),
//! learning_rate = 2e-4                     # without `model` and `output_dir`
//! data.train_file = "sft.jsonl"
//!
//! [[stage]]
//! name = "rm"
//! kind = "reward"                          # a reward model on the SFT backbone
//! [stage.config]                           # (RewardConfig)
//! data.train_file = "prefs.jsonl"
//!
//! [[stage]]
//! name = "dpo"
//! kind = "dpo"                             # input: the previous policy stage's model,
//! from = "sft"                             # or the named stage's
//! [stage.config]
//! data.train_file = "prefs.jsonl"
//! ```
//!
//! A `reward` stage's output is a reward model (an HF
//! `*ForSequenceClassification` directory), not a policy: a stage without
//! `from` takes the last *policy* stage's model, so the stage after a reward
//! stage trains the policy before it. Only another `reward` stage (to train it
//! further) or a merged `export` (`from = "rm"`) may name a reward stage.
//!
//! Stage identity: SHA-256 over the stage kind, its resolved config (every
//! default written out), the SHA-256 of each data file, and its input model's
//! identity — the base model's fingerprint, or the upstream stage's identity.
//! The chain makes a change anywhere upstream reach every later stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alignkit_dpo::DpoConfig;
use alignkit_reward::RewardConfig;
use alignkit_sft::SftConfig;
use alignkit_train::export::ExportKind;
use alignkit_train::{StopReason, list_checkpoints, model_fingerprint, sha256_file};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::pull::{KnownModel, ensure_model};
use crate::train_cli::{StepBar, TrainerConfig, stop_flag};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file (`[[stage]]` entries).
    pub pipeline: PathBuf,
    /// The pipeline's run directory (default: `output_dir` in the file).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The first stage's input model (default: `model` in the file, else
    /// SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Print the plan (run / skip / resume per stage, and why) and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// cpu, cuda:N, vulkan:N or wgpu:N (among the backends compiled in).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn run(args: RunArgs) -> Result<()> {
    let plan = Plan::load(&args.pipeline, args.out.as_deref(), args.model.as_deref())?;
    print!("{}", plan.describe());
    if args.dry_run {
        return Ok(());
    }
    plan.execute(args.device)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    model: Option<PathBuf>,
    output_dir: Option<PathBuf>,
    #[serde(default, rename = "stage")]
    stages: Vec<StageEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageEntry {
    name: String,
    kind: StageKind,
    from: Option<String>,
    #[serde(default)]
    config: toml::Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Sft,
    Reward,
    Dpo,
    Export,
}

impl StageKind {
    fn as_str(self) -> &'static str {
        match self {
            StageKind::Sft => "sft",
            StageKind::Reward => "reward",
            StageKind::Dpo => "dpo",
            StageKind::Export => "export",
        }
    }

    /// Whether the stage's output is a policy (a causal LM) later stages take.
    fn outputs_policy(self) -> bool {
        !matches!(self, StageKind::Reward)
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

/// A stage's resolved config, as its own crate's type.
#[derive(Debug, Clone)]
pub enum StageConfig {
    Sft(Box<SftConfig>),
    Reward(Box<RewardConfig>),
    Dpo(Box<DpoConfig>),
    Export(ExportConfig),
}

impl StageConfig {
    fn to_json(&self) -> serde_json::Value {
        let v = match self {
            StageConfig::Sft(c) => serde_json::to_value(c),
            StageConfig::Reward(c) => serde_json::to_value(c),
            StageConfig::Dpo(c) => serde_json::to_value(c),
            StageConfig::Export(c) => serde_json::to_value(c),
        };
        v.expect("stage configs serialize")
    }

    fn to_toml(&self) -> String {
        match self {
            StageConfig::Sft(c) => c.to_toml(),
            StageConfig::Reward(c) => c.to_toml(),
            StageConfig::Dpo(c) => c.to_toml(),
            StageConfig::Export(c) => toml::to_string(c).expect("ExportConfig serializes"),
        }
    }

    fn data_files(&self) -> Vec<PathBuf> {
        let (train, validation) = match self {
            StageConfig::Sft(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Reward(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Dpo(c) => (&c.data.train_file, &c.data.validation_file),
            StageConfig::Export(_) => return Vec::new(),
        };
        std::iter::once(train.clone())
            .chain(validation.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The manifest.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Interrupted,
    Failed,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputModel {
    pub path: PathBuf,
    /// The base model's fingerprint, or the upstream stage's identity.
    pub sha256: String,
    /// The upstream stage, when the model is another stage's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    pub model: InputModel,
    pub data: Vec<InputFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outputs {
    /// The model later stages take (an HF directory; a PEFT adapter for an
    /// adapter export).
    pub model: PathBuf,
    pub steps: Option<usize>,
}

/// `RUN/<stage>/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub kind: StageKind,
    pub status: Status,
    /// The stage's identity: kind, config, data and input model.
    pub sha256: String,
    pub config_sha256: String,
    pub config: serde_json::Value,
    pub inputs: Inputs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_metrics: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("a manifest serializes");
        alignkit_model::checkpoint::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// The plan.

/// What happens to a stage, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(String),
    Skip(String),
    Resume(String),
}

impl Action {
    fn word(&self) -> &'static str {
        match self {
            Action::Run(_) => "run",
            Action::Skip(_) => "skip",
            Action::Resume(_) => "resume",
        }
    }

    fn reason(&self) -> &str {
        match self {
            Action::Run(r) | Action::Skip(r) | Action::Resume(r) => r,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    pub dir: PathBuf,
    pub config: StageConfig,
    pub inputs: Inputs,
    pub sha256: String,
    pub config_sha256: String,
    /// The directory the next stages take as their model.
    pub output_model: PathBuf,
    /// The upstream stage's run directory (an export of a training stage).
    pub from_run: Option<PathBuf>,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    pub out: PathBuf,
    pub base_model: PathBuf,
    /// In execution order.
    pub stages: Vec<Stage>,
}

/// `path:line:column: message` for a TOML error (one line).
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> anyhow::Error {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            anyhow::anyhow!("{}:{line}:{column}: {message}", path.display())
        }
        None => anyhow::anyhow!("{}: {message}", path.display()),
    }
}

fn absolute(base: &Path, p: &Path) -> Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).with_context(|| format!("resolving {}", joined.display()))
}

/// Execution order: every stage after the one it takes its model from, file
/// order otherwise. `from[i]` is the index stage `i` takes its model from.
fn order(names: &[String], from: &[Option<usize>]) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(names.len());
    let mut placed = vec![false; names.len()];
    while out.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !placed[i] && from[i].is_none_or(|f| placed[f]))
            .ok_or_else(|| {
                // Every unplaced stage waits on another: follow `from` into the cycle.
                let start = (0..names.len()).find(|&i| !placed[i]).expect("one left");
                let mut seen = vec![start];
                let mut i = start;
                while let Some(f) = from[i] {
                    if let Some(at) = seen.iter().position(|&s| s == f) {
                        let mut cycle: Vec<&str> =
                            seen[at..].iter().map(|&s| names[s].as_str()).collect();
                        cycle.push(names[f].as_str());
                        return anyhow::anyhow!(
                            "pipeline: stages form a cycle through `from`: {}",
                            cycle.join(" → ")
                        );
                    }
                    seen.push(f);
                    i = f;
                }
                anyhow::anyhow!("pipeline: stages form a cycle through `from`")
            })?;
        placed[next] = true;
        out.push(next);
    }
    Ok(out)
}

/// Reject preference pairs whose chosen and rejected are the same — before
/// any work, naming the line (the DPO trainer checks tokens again).
fn check_preference_file(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        if let (Some(c), Some(r)) = (record.get("chosen"), record.get("rejected"))
            && c == r
        {
            bail!(
                "{}:{}: `chosen` and `rejected` are identical; remove the pair or fix the data",
                path.display(),
                i + 1
            );
        }
    }
    Ok(())
}

/// The first dotted key whose value differs between two JSON objects.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, prefix: &str) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &key),
                    _ => Some(key),
                }
            })
        }
        _ => (a != b).then(|| prefix.to_string()),
    }
}

impl Plan {
    /// Read and check a pipeline file and decide what each stage does. Every
    /// problem that can be found without training is reported here.
    pub fn load(file: &Path, out: Option<&Path>, model: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the pipeline file {}", file.display()))?;
        let parsed: PipelineFile =
            toml::from_str(&text).map_err(|e| toml_error(file, &text, &e))?;
        let base = std::path::absolute(file)?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let cwd = std::env::current_dir()?;
        let out = match (out, &parsed.output_dir) {
            (Some(o), _) => absolute(&cwd, o)?,
            (None, Some(o)) => absolute(&base, o)?,
            (None, None) => bail!(
                "{}: no output_dir: set it in the file or pass --out DIR",
                file.display()
            ),
        };
        let base_model = match (model, &parsed.model) {
            (Some(m), _) => absolute(&cwd, m)?,
            (None, Some(m)) => absolute(&base, m)?,
            (None, None) => ensure_model(KnownModel::Smollm2)?,
        };
        if !base_model.join("config.json").is_file() {
            bail!(
                "model {}: not a Hugging Face model directory (no config.json)",
                base_model.display()
            );
        }
        if parsed.stages.is_empty() {
            bail!("{}: no [[stage]] entries", file.display());
        }

        // Names, `from` and the order.
        let names: Vec<String> = parsed.stages.iter().map(|s| s.name.clone()).collect();
        let mut index = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!(
                    "{}: stage name `{name}`: use letters, digits, `-` and `_` (it names a directory)",
                    file.display()
                );
            }
            if index.insert(name.as_str(), i).is_some() {
                bail!("{}: two stages are named `{name}`", file.display());
            }
        }
        let mut from = Vec::with_capacity(names.len());
        for (i, s) in parsed.stages.iter().enumerate() {
            from.push(match &s.from {
                Some(f) => Some(*index.get(f.as_str()).with_context(|| {
                    format!(
                        "{}: stage `{}`: `from = \"{f}\"` names no stage (stages: {})",
                        file.display(),
                        s.name,
                        names.join(", ")
                    )
                })?),
                None => (0..i)
                    .rev()
                    .find(|&j| parsed.stages[j].kind.outputs_policy()),
            });
        }
        let order = order(&names, &from)?;

        // Resolve each stage in order.
        let mut stages: Vec<Stage> = Vec::with_capacity(order.len());
        let mut by_index: HashMap<usize, usize> = HashMap::new();
        let base_fingerprint = model_fingerprint(&base_model)
            .with_context(|| format!("model {}", base_model.display()))?;
        for &i in &order {
            let entry = &parsed.stages[i];
            let at = format!("{}: stage `{}`", file.display(), entry.name);
            let upstream = from[i].map(|f| &stages[by_index[&f]]);
            let input = match upstream {
                Some(up) => {
                    if up.kind == StageKind::Reward {
                        let adapter = entry.config.get("format").and_then(toml::Value::as_str)
                            == Some("adapter");
                        match entry.kind {
                            StageKind::Reward => {}
                            StageKind::Export if !adapter => {}
                            StageKind::Export => bail!(
                                "{at}: `{}` is a reward model (merged in its final/); export it with format = \"merged\"",
                                up.name
                            ),
                            StageKind::Sft | StageKind::Dpo => bail!(
                                "{at}: takes its model from `{}`, a reward model, not a policy",
                                up.name
                            ),
                        }
                    }
                    if let StageConfig::Export(c) = &up.config
                        && c.format == ExportFormat::Adapter
                    {
                        bail!(
                            "{at}: takes its model from `{}`, which exports a PEFT adapter, not a model",
                            up.name
                        );
                    }
                    InputModel {
                        path: up.output_model.clone(),
                        sha256: up.sha256.clone(),
                        from: Some(up.name.clone()),
                    }
                }
                None => InputModel {
                    path: base_model.clone(),
                    sha256: base_fingerprint.clone(),
                    from: None,
                },
            };
            let dir = out.join(&entry.name);
            for key in ["model", "output_dir"] {
                if entry.config.contains_key(key) {
                    bail!(
                        "{at}: `{key}` is set by the pipeline (the previous stage's model, or `from`; RUN/<name>); remove it"
                    );
                }
            }
            let (config, output_model) = resolve_config(entry, &input.path, &dir, &base, &out)
                .with_context(|| at.clone())?;
            let mut data = Vec::new();
            for path in config.data_files() {
                if path.as_os_str().is_empty() {
                    bail!("{at}: `data.train_file` is required");
                }
                if !path.is_file() {
                    bail!("{at}: data file {} does not exist", path.display());
                }
                if matches!(entry.kind, StageKind::Reward | StageKind::Dpo) {
                    check_preference_file(&path)?;
                }
                data.push(InputFile {
                    sha256: sha256_file(&path)?,
                    path,
                });
            }
            let config_toml = config.to_toml();
            let config_sha256 =
                sha256_hex(format!("{}\n{config_toml}", entry.kind.as_str()).as_bytes());
            let mut identity = format!("{config_sha256}\n{}\n", input.sha256);
            for d in &data {
                identity.push_str(&d.sha256);
                identity.push('\n');
            }
            let from_run = upstream
                .filter(|u| matches!(u.kind, StageKind::Sft | StageKind::Dpo))
                .map(|u| u.dir.clone());
            let inputs = Inputs { model: input, data };
            let upstream_runs = upstream.is_some_and(|u| !matches!(u.action, Action::Skip(_)));
            let mut stage = Stage {
                name: entry.name.clone(),
                kind: entry.kind,
                dir,
                config,
                inputs,
                sha256: sha256_hex(identity.as_bytes()),
                config_sha256,
                output_model,
                from_run,
                action: Action::Run(String::new()),
            };
            stage.action = decide(
                &stage,
                upstream_runs
                    .then(|| upstream.map(|u| u.name.clone()))
                    .flatten(),
            );
            by_index.insert(i, stages.len());
            stages.push(stage);
        }
        Ok(Self {
            file: file.to_path_buf(),
            out,
            base_model,
            stages,
        })
    }

    /// The plan as text: one line per stage.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "pipeline {} → {}\n  base model: {}\n",
            self.file.display(),
            self.out.display(),
            self.base_model.display()
        );
        let width = self
            .stages
            .iter()
            .map(|st| st.name.len())
            .max()
            .unwrap_or(0);
        for (k, st) in self.stages.iter().enumerate() {
            s.push_str(&format!(
                "  {}. {:width$}  {:6}  {:6}  {}\n",
                k + 1,
                st.name,
                st.kind.as_str(),
                st.action.word(),
                st.action.reason(),
            ));
        }
        s
    }

    /// The model the last stage writes.
    pub fn final_model(&self) -> &Path {
        &self.stages.last().expect("a plan has stages").output_model
    }

    /// Run the plan's stages in order on the backend `device` names.
    pub fn execute(&self, device: DeviceSpec) -> Result<()> {
        let stop = stop_flag()?;
        dispatch(device, Execute { plan: self, stop })
    }
}

/// The stage's own config type from its table, with the pipeline's paths.
fn resolve_config(
    entry: &StageEntry,
    input: &Path,
    dir: &Path,
    base: &Path,
    out: &Path,
) -> Result<(StageConfig, PathBuf)> {
    let mut table = entry.config.clone();
    if entry.kind != StageKind::Export {
        // A trainer's model and run directory, and its data relative to the pipeline file.
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        table.insert("model".into(), path(input));
        table.insert("output_dir".into(), path(dir));
        if let Some(toml::Value::Table(data)) = table.get_mut("data") {
            for key in ["train_file", "validation_file"] {
                if let Some(toml::Value::String(p)) = data.get(key) {
                    let resolved = path(&absolute(base, Path::new(p))?);
                    data.insert(key.into(), resolved);
                }
            }
        }
    }
    let table = toml::Value::Table(table);
    let bad = |e: toml::de::Error| {
        anyhow::anyhow!("[stage.config]: {}", e.message().trim().replace('\n', " "))
    };
    let config = match entry.kind {
        StageKind::Sft => StageConfig::Sft(Box::new(table.try_into().map_err(bad)?)),
        StageKind::Reward => StageConfig::Reward(Box::new(table.try_into().map_err(bad)?)),
        StageKind::Dpo => {
            let mut c: DpoConfig = table.try_into().map_err(bad)?;
            if let Some(r) = &c.ref_model {
                c.ref_model = Some(absolute(base, r)?);
            }
            // Outside the stage directory, so a re-run (new β, say) reuses it.
            c.ref_cache_dir = Some(match &c.ref_cache_dir {
                Some(d) => absolute(base, d)?,
                None => out.join("reference-cache"),
            });
            StageConfig::Dpo(Box::new(c))
        }
        StageKind::Export => StageConfig::Export(table.try_into().map_err(bad)?),
    };
    let output = match &config {
        StageConfig::Export(c) => dir.join(match c.format {
            ExportFormat::Merged => "model",
            ExportFormat::Adapter => "adapter",
        }),
        _ => dir.join("final"),
    };
    Ok((config, output))
}

/// Skip, resume or run, from the stage's manifest.
fn decide(stage: &Stage, upstream_runs: Option<String>) -> Action {
    let previous = Manifest::read(&stage.dir);
    if let Some(up) = upstream_runs {
        return Action::Run(format!("upstream stage `{up}` runs"));
    }
    let Some(m) = previous else {
        return Action::Run("no previous run".into());
    };
    if m.sha256 != stage.sha256 {
        let why = if m.config_sha256 != stage.config_sha256 {
            let key = first_difference(&m.config, &stage.config.to_json(), "")
                .unwrap_or_else(|| "config".into());
            format!("config changed (`{key}`)")
        } else if m.inputs.model.sha256 != stage.inputs.model.sha256 {
            format!("input model {} changed", stage.inputs.model.path.display())
        } else {
            let changed = stage
                .inputs
                .data
                .iter()
                .find(|d| !m.inputs.data.contains(d))
                .map_or("data".to_string(), |d| d.path.display().to_string());
            format!("data file {changed} changed")
        };
        return Action::Run(why);
    }
    match m.status {
        Status::Completed if stage.output_model.exists() => {
            Action::Skip("unchanged since it completed".into())
        }
        Status::Completed => Action::Run(format!(
            "its output {} is gone",
            stage.output_model.display()
        )),
        Status::Running | Status::Interrupted | Status::Failed => {
            let checkpoint =
                list_checkpoints(&stage.dir.join(alignkit_train::run::CHECKPOINTS_DIR))
                    .ok()
                    .and_then(|mut c| c.pop());
            match checkpoint {
                Some(c) if stage.kind != StageKind::Export => Action::Resume(format!(
                    "stopped at step {}; resuming from its checkpoint",
                    c.step
                )),
                _ => Action::Run("the previous run stopped before its first checkpoint".into()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Execution.

struct Execute<'a> {
    plan: &'a Plan,
    stop: Arc<AtomicBool>,
}

/// How a stage's work ended.
struct Ran {
    interrupted: bool,
    steps: Option<usize>,
}

impl Task for Execute<'_> {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let total = self.plan.stages.len();
        for (k, stage) in self.plan.stages.iter().enumerate() {
            let prefix = format!("[{}/{total} {}]", k + 1, stage.name);
            let resume = match &stage.action {
                Action::Skip(why) => {
                    eprintln!("{prefix} skip: {why}");
                    continue;
                }
                Action::Resume(_) => true,
                Action::Run(_) => false,
            };
            eprintln!(
                "{prefix} {}: {}",
                stage.action.word(),
                stage.action.reason()
            );
            if !resume && stage.dir.exists() {
                std::fs::remove_dir_all(&stage.dir)
                    .with_context(|| format!("clearing {}", stage.dir.display()))?;
            }
            std::fs::create_dir_all(&stage.dir)
                .with_context(|| format!("creating {}", stage.dir.display()))?;
            let mut manifest = Manifest {
                stage: stage.name.clone(),
                kind: stage.kind,
                status: Status::Running,
                sha256: stage.sha256.clone(),
                config_sha256: stage.config_sha256.clone(),
                config: stage.config.to_json(),
                inputs: stage.inputs.clone(),
                outputs: None,
                final_metrics: None,
                error: None,
                started_at: now(),
                finished_at: None,
            };
            manifest.write(&stage.dir)?;
            let result = run_stage::<B>(stage, resume, &prefix, &self.stop, &device);
            manifest.finished_at = Some(now());
            match result {
                Err(e) => {
                    manifest.status = Status::Failed;
                    manifest.error = Some(format!("{e:#}"));
                    manifest.write(&stage.dir)?;
                    return Err(e.context(format!("stage `{}`", stage.name)));
                }
                Ok(ran) if ran.interrupted => {
                    manifest.status = Status::Interrupted;
                    manifest.write(&stage.dir)?;
                    bail!(
                        "interrupted during stage `{}`; run the same command again to resume it",
                        stage.name
                    );
                }
                Ok(ran) => {
                    manifest.status = Status::Completed;
                    manifest.outputs = Some(Outputs {
                        model: stage.output_model.clone(),
                        steps: ran.steps,
                    });
                    let metrics = stage.dir.join(alignkit_train::run::METRICS_FILE);
                    if metrics.is_file() {
                        manifest.final_metrics = alignkit_train::run::read_metrics(&metrics)?.pop();
                    }
                    manifest.write(&stage.dir)?;
                    eprintln!("{prefix} done: {}", stage.output_model.display());
                }
            }
        }
        Ok(())
    }
}

fn train_stage<B: AutodiffBackend>(
    config: TrainerConfig,
    resume: bool,
    prefix: &str,
    stop: &AtomicBool,
    device: &B::Device,
) -> Result<Ran> {
    let trained = crate::train_cli::train::<B>(&config, device, resume, stop, prefix)?;
    Ok(Ran {
        interrupted: trained.stop == StopReason::Interrupted,
        steps: Some(trained.steps),
    })
}

fn run_stage<B: AutodiffBackend>(
    stage: &Stage,
    resume: bool,
    prefix: &str,
    stop: &AtomicBool,
    device: &B::Device,
) -> Result<Ran> {
    match &stage.config {
        StageConfig::Sft(c) => {
            let config = TrainerConfig::Sft(c.clone());
            train_stage::<B>(config, resume, prefix, stop, device)
        }
        StageConfig::Reward(c) => {
            let config = TrainerConfig::Reward(c.clone());
            train_stage::<B>(config, resume, prefix, stop, device)
        }
        StageConfig::Dpo(config) => {
            use alignkit_dpo::{Event, RunOptions};
            let bar = StepBar::new(prefix);
            let outcome = alignkit_dpo::train::<B>(
                config,
                device,
                RunOptions {
                    resume,
                    stop: Some(stop),
                },
                &mut |event| match event {
                    Event::ReferenceProgress { split, done, total } => {
                        bar.work(done, total, format!("reference log-probs ({split})"));
                    }
                    Event::Reference { split, status, .. } => {
                        bar.println(&format!("reference log-probs ({split}): {status:?}"));
                    }
                    Event::Started(info) => bar.start(
                        info.start_step,
                        info.total_steps,
                        &format!(
                            "{} pairs, {} trainable parameters, reference {:?}",
                            info.train_pairs, info.trainable_params, info.reference,
                        ),
                    ),
                    Event::Step(m) => bar.step(
                        m.step,
                        format!(
                            "loss {:.4} acc {:.2} margin {:.3}",
                            m.loss, m.rewards_accuracies, m.rewards_margins
                        ),
                        None,
                    ),
                    Event::Checkpoint { .. } => {}
                },
            );
            bar.finish();
            let outcome = outcome?;
            Ok(Ran {
                interrupted: outcome.stop == StopReason::Interrupted,
                steps: Some(outcome.steps),
            })
        }
        StageConfig::Export(config) => {
            let dtype = match config.dtype {
                ExportDtype::F32 => alignkit_model::SaveDtype::F32,
                ExportDtype::Bf16 => alignkit_model::SaveDtype::Bf16,
            };
            let kind = match config.format {
                ExportFormat::Merged => ExportKind::Merged(dtype),
                ExportFormat::Adapter => ExportKind::Adapter,
            };
            let bar = ProgressBar::new_spinner().with_prefix(prefix.to_string());
            bar.set_style(
                ProgressStyle::with_template("{prefix} {spinner} {msg}").expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar.set_message(format!("writing {}", stage.output_model.display()));
            let inner = device;
            let result = match &stage.from_run {
                Some(run) => alignkit_train::export::export::<B::InnerBackend>(
                    run,
                    &stage.output_model,
                    kind,
                    true,
                    inner,
                ),
                None if kind == ExportKind::Adapter => {
                    bar.finish_and_clear();
                    bail!("an adapter export needs a LoRA training stage as its `from`");
                }
                None => alignkit_train::export::convert_hf_dir::<B::InnerBackend>(
                    &stage.inputs.model.path,
                    &stage.output_model,
                    dtype,
                    true,
                    inner,
                ),
            };
            bar.finish_and_clear();
            result?;
            Ok(Ran {
                interrupted: false,
                steps: None,
            })
        }
    }
}
