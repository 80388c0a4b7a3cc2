//! The plan: a pipeline file read and checked, each stage resolved (config,
//! inputs, identity) and what happens to it decided — skip, resume or run,
//! and why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use alignkit_dpo::DpoConfig;
use alignkit_train::{list_checkpoints, model_fingerprint, sha256_file};
use anyhow::{Context, Result, bail};

use super::manifest::{InputFile, InputModel, Inputs, Manifest, Status, sha256_hex};
use super::stage::{ExportFormat, PipelineFile, StageConfig, StageEntry, StageKind};
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

/// Execution order: every stage after the one it takes its model from, file
/// order otherwise. `from[i]` is the index stage `i` takes its model from.
pub(super) fn order(names: &[String], from: &[Option<usize>]) -> Result<Vec<usize>> {
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
}

/// The stage's own config type from its table, with the pipeline's paths.
pub(super) fn resolve_config(
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
pub(super) fn decide(stage: &Stage, upstream_runs: Option<String>) -> Action {
    let previous = Manifest::read(&stage.dir);
    if let Some(up) = upstream_runs {
        return Action::Run(format!("upstream stage `{up}` runs"));
    }
    let Some(m) = previous else {
        return Action::Run("no previous run".into());
    };
    if m.sha256 != stage.sha256 {
        let why = if m.config_sha256 != stage.config_sha256 {
            let key = alignkit_train::resume::differences(&m.config, &stage.config.to_json())
                .first()
                .map_or_else(|| "config".into(), |c| c.key.clone());
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
