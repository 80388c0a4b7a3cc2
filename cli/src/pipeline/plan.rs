//! The plan: a pipeline file read and checked, each stage resolved (config,
//! inputs, identity) and what happens to it decided — skip, resume or run,
//! and why.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use alignkit_dpo::DpoConfig;
use alignkit_train::{list_checkpoints, model_fingerprint, resume, sha256_file};
use anyhow::{Context, Result, bail};

use super::manifest::{InputFile, InputModel, Inputs, Manifest, Status, sha256_hex};
use super::stage::{
    EvalConfig, ExportFormat, PipelineFile, StageConfig, StageEntry, StageKind, StageLaunch,
};
use crate::eval::Judge;
use crate::pull::{KnownModel, ensure_model};

/// What happens to a stage, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(String),
    Skip(String),
    Resume(String),
}

impl Action {
    pub(super) fn word(&self) -> &'static str {
        match self {
            Action::Run(_) => "run",
            Action::Skip(_) => "skip",
            Action::Resume(_) => "resume",
        }
    }

    pub(super) fn reason(&self) -> &str {
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
    /// What the stage writes: the model later stages take (an HF directory;
    /// a PEFT adapter for an adapter export), or an eval stage's `winrate.json`.
    pub output: PathBuf,
    /// The upstream stage's run directory (an export of a training stage).
    pub from_run: Option<PathBuf>,
    /// Data parallel through `alignkit launch`.
    pub launch: Option<StageLaunch>,
    pub action: Action,
}

impl Stage {
    /// Ranks the stage trains on.
    pub(super) fn ranks(&self) -> usize {
        self.launch.as_ref().map_or(1, StageLaunch::ranks)
    }

    /// Every model the stage reads, by role: its input (`model`), the models
    /// of [`model_refs`], and those its config names besides (a DPO stage's
    /// `ref_model`, a PPO stage's `ppo.value_model`).
    pub(super) fn models_read(&self) -> Vec<(String, PathBuf)> {
        let mut out = vec![("model".to_string(), self.inputs.model.path.clone())];
        out.extend(
            self.inputs
                .models
                .iter()
                .map(|(role, m)| (role.clone(), m.path.clone())),
        );
        let named = match &self.config {
            StageConfig::Dpo(c) => c.ref_model.clone().map(|p| ("ref_model", p)),
            StageConfig::Rl(c) => c
                .ppo
                .as_ref()
                .and_then(|p| p.value_model.clone())
                .map(|p| ("ppo.value_model", p)),
            _ => None,
        };
        out.extend(named.map(|(role, p)| (role.to_string(), p)));
        out
    }

    /// The content of the models it reads as they are now, by role
    /// ([`Inputs::fingerprints`]); one that cannot be read is left out.
    pub(super) fn fingerprints(&self) -> BTreeMap<String, String> {
        self.models_read()
            .into_iter()
            .filter_map(|(role, path)| Some((role, model_fingerprint(&path).ok()?)))
            .collect()
    }
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
    match alignkit_train::toml_error_position(text, err) {
        (0, _, message) => anyhow::anyhow!("{}: {message}", path.display()),
        (line, column, message) => anyhow::anyhow!("{}:{line}:{column}: {message}", path.display()),
    }
}

pub(super) fn absolute(base: &Path, p: &Path) -> Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    std::path::absolute(&joined).with_context(|| format!("resolving {}", joined.display()))
}

/// Execution order: every stage after the stages whose models it reads, file
/// order otherwise. `from[i]` is the index stage `i` takes its model from,
/// `refs[i]` the stages whose models it reads besides (reward models, a
/// baseline).
pub(super) fn order(
    names: &[String],
    from: &[Option<usize>],
    refs: &[Vec<usize>],
) -> Result<Vec<usize>> {
    let deps = |i: usize| from[i].into_iter().chain(refs[i].iter().copied());
    let mut out = Vec::with_capacity(names.len());
    let mut placed = vec![false; names.len()];
    while out.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !placed[i] && deps(i).all(|d| placed[d]))
            .ok_or_else(|| {
                // Every unplaced stage waits on another: follow the waits
                // (`from` first) into the cycle.
                let start = (0..names.len()).find(|&i| !placed[i]).expect("one left");
                let mut seen = vec![start];
                let mut only_from = true;
                let mut i = start;
                while let Some(f) = deps(i).find(|&d| !placed[d]) {
                    only_from &= from[i] == Some(f);
                    if let Some(at) = seen.iter().position(|&s| s == f) {
                        let mut cycle: Vec<&str> =
                            seen[at..].iter().map(|&s| names[s].as_str()).collect();
                        cycle.push(names[f].as_str());
                        let through = if only_from {
                            "`from`"
                        } else {
                            "`from` and the models they read"
                        };
                        return anyhow::anyhow!(
                            "pipeline: stages form a cycle through {through}: {}",
                            cycle.join(" → ")
                        );
                    }
                    seen.push(f);
                    i = f;
                }
                anyhow::anyhow!("pipeline: stages form a cycle")
            })?;
        placed[next] = true;
        out.push(next);
    }
    Ok(out)
}

/// A model a stage reads besides its input.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ModelRef {
    /// The output of the stage at this index.
    Stage(usize),
    /// A model directory.
    Dir(PathBuf),
}

/// The models stage `entry` reads besides its input, by role, from its raw
/// table: an RL stage's `[[rewards]]` of kind `model` (`stage = "NAME"`, a
/// pipeline-only key, or a `path`), an eval stage's `reward:` judges and its
/// `baseline` (default: `base_model`). A named stage must fit the role; a
/// directory must hold a model. Values of the wrong type are left to the
/// config's parser.
pub(super) fn model_refs(
    entry: &StageEntry,
    entries: &[StageEntry],
    index: &HashMap<&str, usize>,
    base: &Path,
    base_model: &Path,
) -> Result<Vec<(String, ModelRef)>> {
    let stage_list = || {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        names.join(", ")
    };
    let reward_stage = |what: &str, name: &str| -> Result<ModelRef> {
        let Some(&j) = index.get(name) else {
            bail!("{what} names no stage (stages: {})", stage_list());
        };
        if entries[j].kind != StageKind::Reward {
            bail!(
                "{what}: `{name}` is a kind = \"{}\" stage, not a reward stage",
                entries[j].kind.as_str()
            );
        }
        Ok(ModelRef::Stage(j))
    };
    let dir = |what: &str, p: &str| -> Result<ModelRef> {
        let p = absolute(base, Path::new(p))?;
        if !p.join("config.json").is_file() {
            bail!(
                "{what}: {} is not a model directory (no config.json)",
                p.display()
            );
        }
        Ok(ModelRef::Dir(p))
    };
    let array = |key: &str| {
        entry
            .config
            .get(key)
            .and_then(toml::Value::as_array)
            .map_or(&[][..], Vec::as_slice)
    };
    let mut refs = Vec::new();
    match entry.kind {
        StageKind::Grpo | StageKind::Rloo | StageKind::Ppo => {
            for (i, r) in array("rewards").iter().enumerate() {
                let Some(r) = r.as_table() else { continue };
                let role = format!("rewards[{i}]");
                let model = r.get("kind").and_then(toml::Value::as_str) == Some("model");
                let r = match (r.get("stage"), r.get("path")) {
                    (Some(_), Some(_)) => bail!("{role}: give `stage` or `path`, not both"),
                    (Some(_), None) if !model => {
                        bail!("{role}: `stage` names a reward model: it needs kind = \"model\"")
                    }
                    (Some(toml::Value::String(name)), None) => {
                        reward_stage(&format!("{role}: `stage = \"{name}\"`"), name)?
                    }
                    (Some(_), None) => bail!("{role}: `stage` is a stage's name, a string"),
                    (None, Some(toml::Value::String(p))) if model => {
                        dir(&format!("{role}: `path`"), p)?
                    }
                    _ => continue,
                };
                refs.push((role, r));
            }
        }
        StageKind::Eval => {
            for (i, judge) in array("judges").iter().enumerate() {
                let Some(judge) = judge.as_str() else {
                    continue;
                };
                let role = format!("judges[{i}]");
                let what = format!("judges: `{judge}`");
                match judge.split_once(':') {
                    Some(("reward", name)) if index.contains_key(name) => {
                        refs.push((role, reward_stage(&what, name)?));
                    }
                    Some(("reward", p)) if !p.is_empty() => {
                        let d = absolute(base, Path::new(p))?;
                        if !d.join("config.json").is_file() {
                            bail!(
                                "{what}: `{p}` names no stage (stages: {}) and no model directory ({} has no config.json)",
                                stage_list(),
                                d.display()
                            );
                        }
                        refs.push((role, ModelRef::Dir(d)));
                    }
                    _ => match judge.parse::<Judge>() {
                        Ok(Judge::Human) => bail!(
                            "judges: `human` needs people at a terminal, not a pipeline: use alignkit eval winrate --judge human"
                        ),
                        Ok(_) => {}
                        Err(e) => bail!("judges: {e}"),
                    },
                }
            }
            let baseline = match entry.config.get("baseline") {
                None => ModelRef::Dir(base_model.to_path_buf()),
                Some(toml::Value::String(b)) => match index.get(b.as_str()) {
                    None => dir(&format!("baseline = \"{b}\""), b)?,
                    Some(&j) => {
                        let what = format!("baseline = \"{b}\"");
                        let adapter = entries[j]
                            .config
                            .get("format")
                            .and_then(toml::Value::as_str)
                            == Some("adapter");
                        match entries[j].kind {
                            StageKind::Reward => bail!("{what}: a reward model, not a policy"),
                            StageKind::Eval => {
                                bail!("{what}: an eval stage, which outputs no model")
                            }
                            StageKind::Export if adapter => {
                                bail!("{what}: exports a PEFT adapter, not a model")
                            }
                            _ => ModelRef::Stage(j),
                        }
                    }
                },
                Some(_) => return Ok(refs),
            };
            refs.push(("baseline".into(), baseline));
        }
        _ => {}
    }
    Ok(refs)
}

/// Reject preference pairs whose chosen and rejected are the same — before
/// any work, naming the line (the DPO trainer checks tokens again).
pub(super) fn check_preference_file(path: &Path) -> Result<()> {
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

/// A pipeline file, parsed, and the directory its relative paths start from.
fn read_pipeline(file: &Path) -> Result<(PipelineFile, PathBuf)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the pipeline file {}", file.display()))?;
    let parsed: PipelineFile = toml::from_str(&text).map_err(|e| toml_error(file, &text, &e))?;
    let base = std::path::absolute(file)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok((parsed, base))
}

/// The pipeline's run directory: `out` (relative to the working directory),
/// else the file's `output_dir` (relative to the file).
fn resolve_out(
    file: &Path,
    parsed: &PipelineFile,
    base: &Path,
    out: Option<&Path>,
) -> Result<PathBuf> {
    match (out, &parsed.output_dir) {
        (Some(o), _) => absolute(&std::env::current_dir()?, o),
        (None, Some(o)) => absolute(base, o),
        (None, None) => bail!(
            "{}: no output_dir: set it in the file or pass --out DIR",
            file.display()
        ),
    }
}

impl Plan {
    /// The run directory [`Plan::load`] plans in, from the file alone: what
    /// `alignkit run` locks before it reads the stages' state.
    pub fn out_dir(file: &Path, out: Option<&Path>) -> Result<PathBuf> {
        let (parsed, base) = read_pipeline(file)?;
        resolve_out(file, &parsed, &base, out)
    }

    /// Read and check a pipeline file and decide what each stage does. Every
    /// problem that can be found without training is reported here.
    pub fn load(file: &Path, out: Option<&Path>, model: Option<&Path>) -> Result<Self> {
        let (parsed, base) = read_pipeline(file)?;
        let cwd = std::env::current_dir()?;
        let out = resolve_out(file, &parsed, &base, out)?;
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
                Some(f) => {
                    let at = format!("{}: stage `{}`: `from = \"{f}\"`", file.display(), s.name);
                    let &j = index.get(f.as_str()).with_context(|| {
                        format!("{at} names no stage (stages: {})", names.join(", "))
                    })?;
                    if parsed.stages[j].kind == StageKind::Eval {
                        bail!("{at}: an eval stage, which outputs no model");
                    }
                    Some(j)
                }
                None => (0..i)
                    .rev()
                    .find(|&j| parsed.stages[j].kind.outputs_policy()),
            });
        }
        let mut refs = Vec::with_capacity(names.len());
        for s in &parsed.stages {
            let at = || format!("{}: stage `{}`", file.display(), s.name);
            refs.push(model_refs(s, &parsed.stages, &index, &base, &base_model).with_context(at)?);
        }
        let ref_stages: Vec<Vec<usize>> = refs
            .iter()
            .map(|r| {
                r.iter()
                    .filter_map(|(_, m)| match m {
                        ModelRef::Stage(j) => Some(*j),
                        ModelRef::Dir(_) => None,
                    })
                    .collect()
            })
            .collect();
        let order = order(&names, &from, &ref_stages)?;

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
                            StageKind::Sft
                            | StageKind::Dpo
                            | StageKind::Grpo
                            | StageKind::Rloo
                            | StageKind::Ppo
                            | StageKind::Eval => bail!(
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
                        path: up.output.clone(),
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
            let mut models = BTreeMap::new();
            for (role, model) in &refs[i] {
                let input = match model {
                    ModelRef::Stage(j) => {
                        let up = &stages[by_index[j]];
                        InputModel {
                            path: up.output.clone(),
                            sha256: up.sha256.clone(),
                            from: Some(up.name.clone()),
                        }
                    }
                    ModelRef::Dir(path) => InputModel {
                        sha256: if *path == base_model {
                            base_fingerprint.clone()
                        } else {
                            model_fingerprint(path)
                                .with_context(|| format!("{at}: {role}: {}", path.display()))?
                        },
                        path: path.clone(),
                        from: None,
                    },
                };
                models.insert(role.clone(), input);
            }
            let (config, output) = resolve_config(entry, &input.path, &dir, &base, &out, &models)
                .with_context(|| at.clone())?;
            let mut data = Vec::new();
            for (key, path) in config.data_files() {
                if path.as_os_str().is_empty() {
                    bail!("{at}: `{key}` is required");
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
            // The ranks set the global batch (train.batch_size is per rank).
            let launch = entry.launch.clone().filter(|l| l.ranks() != 1);
            if let Some(l) = &launch {
                if !matches!(
                    entry.kind,
                    StageKind::Sft
                        | StageKind::Dpo
                        | StageKind::Reward
                        | StageKind::Grpo
                        | StageKind::Rloo
                        | StageKind::Ppo
                ) {
                    bail!(
                        "stage `{}`: `launch` runs training stages (eval and export run in one process)",
                        entry.name
                    );
                }
                if l.nproc_per_node == 0 || !(l.timeout > 0.0 && l.timeout.is_finite()) {
                    bail!(
                        "stage `{}`: launch.nproc_per_node must be at least 1 and launch.timeout a positive number of seconds",
                        entry.name
                    );
                }
                if !l.devices.is_empty() {
                    if l.nproc_per_node != 1 {
                        bail!(
                            "stage `{}`: launch.devices puts the ranks in one process, one per device: leave out launch.nproc_per_node",
                            entry.name
                        );
                    }
                    crate::backend::peer_devices(&l.devices).map_err(|e| {
                        anyhow::anyhow!("stage `{}`: launch.devices = {e}", entry.name)
                    })?;
                }
            }
            let config_toml = config.to_toml();
            let config_sha256 =
                sha256_hex(format!("{}\n{config_toml}", entry.kind.as_str()).as_bytes());
            let mut identity = format!("{config_sha256}\n{}\n", input.sha256);
            for d in &data {
                identity.push_str(&d.sha256);
                identity.push('\n');
            }
            for (role, m) in &models {
                identity.push_str(&format!("{role} {}\n", m.sha256));
            }
            if let Some(l) = &launch {
                identity.push_str(&format!("ranks {}\n", l.ranks()));
            }
            let from_run = upstream
                .filter(|u| {
                    matches!(
                        u.kind,
                        StageKind::Sft
                            | StageKind::Dpo
                            | StageKind::Grpo
                            | StageKind::Rloo
                            | StageKind::Ppo
                    )
                })
                .map(|u| u.dir.clone());
            let inputs = Inputs {
                model: input,
                data,
                models,
                fingerprints: BTreeMap::new(),
            };
            // The first stage this one reads a model of that runs.
            let upstream_runs = from[i]
                .iter()
                .chain(&ref_stages[i])
                .map(|j| &stages[by_index[j]])
                .find(|u| !matches!(u.action, Action::Skip(_)))
                .map(|u| u.name.clone());
            let mut stage = Stage {
                name: entry.name.clone(),
                kind: entry.kind,
                dir,
                config,
                inputs,
                sha256: sha256_hex(identity.as_bytes()),
                config_sha256,
                output,
                from_run,
                launch,
                action: Action::Run(String::new()),
            };
            let previous = Manifest::read(&stage.dir);
            keep_equivalent_identity(&mut stage, previous.as_ref());
            stage.action = decide(&stage, previous, upstream_runs);
            by_index.insert(i, stages.len());
            stages.push(stage);
        }
        let plan = Self {
            file: file.to_path_buf(),
            out,
            base_model,
            stages,
        };
        plan.validate()?;
        Ok(plan)
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

    /// The model the last stage that writes one writes (the base model
    /// when only eval stages run).
    pub fn final_model(&self) -> &Path {
        self.stages
            .iter()
            .rev()
            .find(|s| s.kind != StageKind::Eval)
            .map_or(&self.base_model, |s| &s.output)
    }
}

/// The stage's own config type from its table, with the pipeline's paths
/// (`models`: the other models it reads, by role, see [`model_refs`]) and
/// what the stage writes.
pub(super) fn resolve_config(
    entry: &StageEntry,
    input: &Path,
    dir: &Path,
    base: &Path,
    out: &Path,
    models: &BTreeMap<String, InputModel>,
) -> Result<(StageConfig, PathBuf)> {
    let mut table = entry.config.clone();
    let path = |p: &Path| toml::Value::String(p.display().to_string());
    if entry.kind == StageKind::Eval {
        if let Some(toml::Value::String(p)) = table.get("prompts") {
            let resolved = path(&absolute(base, Path::new(p))?);
            table.insert("prompts".into(), resolved);
        }
    } else if entry.kind != StageKind::Export {
        // A trainer's model and run directory, and its data relative to the pipeline file.
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
    if let Some(own) = match entry.kind {
        StageKind::Grpo => Some("grpo"),
        StageKind::Rloo => Some("rloo"),
        StageKind::Ppo => Some("ppo"),
        _ => None,
    } {
        // The algorithm's table, as the command expects it; its defaults when absent.
        for other in ["grpo", "rloo", "ppo"] {
            if other != own && table.contains_key(other) {
                bail!(
                    "[stage.config] holds a [{other}] table, but the stage is kind = \"{own}\": make it kind = \"{other}\", or the table [{own}]"
                );
            }
        }
        table
            .entry(own)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        // A reward stage named by the pipeline-only `stage`, or a `path`
        // relative to the pipeline file: the model's directory.
        if let Some(toml::Value::Array(rewards)) = table.get_mut("rewards") {
            for (i, reward) in rewards.iter_mut().enumerate() {
                if let (Some(reward), Some(m)) =
                    (reward.as_table_mut(), models.get(&format!("rewards[{i}]")))
                {
                    reward.remove("stage");
                    reward.insert("path".into(), path(&m.path));
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
        StageKind::Grpo | StageKind::Rloo | StageKind::Ppo => {
            StageConfig::Rl(Box::new(table.try_into().map_err(bad)?))
        }
        StageKind::Eval => {
            let c: EvalConfig = table.try_into().map_err(bad)?;
            if c.judges.is_empty() {
                bail!(
                    "[stage.config]: `judges` is required: rule:RULE, reward:NAME (a reward stage) or reward:DIR"
                );
            }
            StageConfig::Eval(Box::new(c))
        }
        StageKind::Export => StageConfig::Export(table.try_into().map_err(bad)?),
    };
    let output = match &config {
        StageConfig::Export(c) => dir.join(match c.format {
            ExportFormat::Merged => "model",
            ExportFormat::Adapter => "adapter",
        }),
        StageConfig::Eval(_) => dir.join("winrate.json"),
        _ => dir.join("final"),
    };
    Ok((config, output))
}

/// Config keys that cannot change a stage's result: how it computes
/// ([`resume::RESULT_NEUTRAL`]), and the paths that only locate the run (a
/// project moved elsewhere). Input paths are named by role before comparing
/// ([`name_input_paths`]).
fn result_neutral(key: &str) -> bool {
    resume::RESULT_NEUTRAL.contains(&key) || ["output_dir", "ref_cache_dir"].contains(&key)
}

/// The config keys that differ between a stage's previous run (its config
/// re-read with this version's type, see [`resume::reread`]) and the stage,
/// each side's input paths named by role first ([`name_input_paths`]).
fn config_changes(stage: &Stage, m: &Manifest) -> Vec<resume::KeyChange> {
    let old = StageConfig::reread(stage.kind, &m.config).unwrap_or_else(|| m.config.clone());
    resume::differences(
        &name_input_paths(&old, &m.inputs),
        &name_input_paths(&stage.config.to_json(), &stage.inputs),
    )
}

/// `config` with each path of the stage's inputs — its model, data files and
/// the models it reads (a reward's `path`, a judge's `reward:DIR`, a
/// baseline) — replaced by the input's role: the identity compares their
/// content, so a moved project compares equal.
fn name_input_paths(config: &serde_json::Value, inputs: &Inputs) -> serde_json::Value {
    use serde_json::Value;
    let mut names = vec![(
        inputs.model.path.display().to_string(),
        "<model>".to_string(),
    )];
    for (i, d) in inputs.data.iter().enumerate() {
        names.push((d.path.display().to_string(), format!("<data {i}>")));
    }
    for (role, m) in &inputs.models {
        names.push((m.path.display().to_string(), format!("<{role}>")));
    }
    names.retain(|(path, _)| !path.is_empty());
    // Longest first: a path inside a longer one is not cut short.
    names.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    fn walk(v: &Value, names: &[(String, String)]) -> Value {
        match v {
            Value::String(s) => Value::String(
                names
                    .iter()
                    .fold(s.clone(), |s, (path, name)| s.replace(path.as_str(), name)),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, names)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), walk(x, names))).collect())
            }
            other => other.clone(),
        }
    }
    walk(config, &names)
}

/// What differs between a stage and its previous run `m`, by content, as the
/// reason the stage re-runs; `None` when only what cannot change its result
/// does: config keys added to alignkit since that run (they take their
/// defaults, see [`resume::reread`]), the [`result_neutral`] keys and the
/// paths of inputs whose content is the same.
fn change_since(stage: &Stage, m: &Manifest) -> Option<String> {
    if m.kind != stage.kind {
        return Some(format!(
            "its kind changed ({} → {})",
            m.kind.as_str(),
            stage.kind.as_str()
        ));
    }
    if m.ranks != stage.ranks() {
        return Some(format!(
            "its ranks changed ({} → {}: another global batch)",
            m.ranks,
            stage.ranks()
        ));
    }
    if let Some(c) = config_changes(stage, m)
        .into_iter()
        .find(|c| !result_neutral(&c.key))
    {
        return Some(format!("config changed (`{}`)", c.key));
    }
    let (old, new) = (&m.inputs, &stage.inputs);
    if old.model.sha256 != new.model.sha256 {
        return Some(format!("input model {} changed", new.model.path.display()));
    }
    if let Some((role, model)) = new
        .models
        .iter()
        .find(|&(role, model)| old.models.get(role).map(|o| &o.sha256) != Some(&model.sha256))
    {
        return Some(format!("`{role}` model {} changed", model.path.display()));
    }
    if old.models.len() != new.models.len() {
        return Some("the models it reads changed".into());
    }
    if let Some((d, _)) = new
        .data
        .iter()
        .zip(&old.data)
        .find(|(d, o)| d.sha256 != o.sha256)
    {
        return Some(format!("data file {} changed", d.path.display()));
    }
    if old.data.len() != new.data.len() {
        return Some("its data files changed".into());
    }
    None
}

/// A stage whose previous run differs from it in nothing that can change its
/// result ([`change_since`]) keeps that run's identity, so neither it nor the
/// stages after it re-run.
fn keep_equivalent_identity(stage: &mut Stage, previous: Option<&Manifest>) {
    if let Some(m) = previous
        && m.sha256 != stage.sha256
        && change_since(stage, m).is_none()
    {
        stage.sha256 = m.sha256.clone();
    }
}

/// A model the stage reads whose content differs from what its previous run
/// `m` recorded ([`Inputs::fingerprints`]) — another stage's `final/`
/// replaced, a symlink re-pointed: that run's result came from other
/// weights.
fn replaced_model(stage: &Stage, m: &Manifest) -> Option<String> {
    stage.models_read().into_iter().find_map(|(role, path)| {
        let recorded = m.inputs.fingerprints.get(&role)?;
        let what = match role.as_str() {
            "model" => "input model".to_string(),
            _ => format!("`{role}` model"),
        };
        match model_fingerprint(&path) {
            Ok(now) if &now == recorded => None,
            Ok(_) => Some(format!(
                "{what} {} holds a different model than when the stage ran",
                path.display()
            )),
            Err(_) => Some(format!("{what} {} cannot be read", path.display())),
        }
    })
}

/// Skip, resume or run, from the stage's previous manifest.
pub(super) fn decide(
    stage: &Stage,
    previous: Option<Manifest>,
    upstream_runs: Option<String>,
) -> Action {
    if let Some(up) = upstream_runs {
        return Action::Run(format!("upstream stage `{up}` runs"));
    }
    let Some(m) = previous else {
        return Action::Run("no previous run".into());
    };
    if m.sha256 != stage.sha256 {
        return Action::Run(change_since(stage, &m).unwrap_or_else(|| {
            "its identity changed (written by another alignkit version)".into()
        }));
    }
    if let Some(why) = replaced_model(stage, &m) {
        return Action::Run(why);
    }
    match m.status {
        Status::Completed if stage.output.exists() => {
            Action::Skip("unchanged since it completed".into())
        }
        Status::Completed => Action::Run(format!("its output {} is gone", stage.output.display())),
        Status::Running | Status::Interrupted | Status::Failed => {
            let checkpoint =
                list_checkpoints(&stage.dir.join(alignkit_train::run::CHECKPOINTS_DIR))
                    .ok()
                    .and_then(|mut c| c.pop());
            match checkpoint {
                _ if matches!(stage.kind, StageKind::Export | StageKind::Eval) => {
                    Action::Run("the previous run did not finish".into())
                }
                Some(c) => Action::Resume(format!(
                    "stopped at step {}; resuming from its checkpoint",
                    c.step
                )),
                None => Action::Run("the previous run stopped before its first checkpoint".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::order;

    /// A stage runs after the stages whose models it reads, whatever the
    /// file order; a cycle is named.
    #[test]
    fn order_follows_from_and_the_models_read() {
        let names: Vec<String> = ["grpo", "sft", "rm", "eval"].map(String::from).into();
        // grpo takes sft's policy and reads rm; rm takes sft's; eval takes
        // grpo's and reads rm.
        let refs = [vec![2], vec![], vec![], vec![2]];
        let from = [Some(1), None, Some(1), Some(0)];
        assert_eq!(order(&names, &from, &refs).unwrap(), [1, 2, 0, 3]);
        let from = [Some(1), None, Some(0), Some(0)];
        let err = order(&names, &from, &refs).unwrap_err().to_string();
        assert_eq!(
            err,
            "pipeline: stages form a cycle through `from` and the models they read: grpo → rm → grpo"
        );
        let err = order(
            &names,
            &[Some(2), None, Some(0), None],
            &[vec![], vec![], vec![], vec![]],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "pipeline: stages form a cycle through `from`: grpo → rm → grpo"
        );
    }
}
