//! Exports that the rest of the ecosystem loads:
//!
//! - merged: an HF model directory (`config.json`, `model.safetensors` in f32
//!   or bf16, the base model's tokenizer files and chat template,
//!   `generation_config.json`, a `README.md` model card), LoRA folded in;
//! - adapter: a PEFT adapter directory (`adapter_config.json`,
//!   `adapter_model.safetensors`, model card, tokenizer files).
//!
//! Either is written into a temporary sibling directory and renamed into
//! place, so a half-written export never looks like a finished one.

use std::path::{Path, PathBuf};

use alignkit_model::heads::{is_sequence_classification, load_reward_model, save_reward_model};
use alignkit_model::lora::{self, LoraConfig};
use alignkit_model::{LlamaConfig, LlamaForCausalLM, SaveDtype, load_model, save_model};
use burn::tensor::backend::Backend;

use crate::checkpoint::{DataFile, TrainerState, WeightsKind, list_checkpoints};
use crate::error::{Result, TrainError};
use crate::output::{Writes, ensure_distinct};
use crate::run::{CONFIG_FILE, METRICS_FILE, read_metrics};
use crate::tensors::write_synced;
use crate::weights::load_trainable;

/// Files copied from the base model directory when present.
pub const TOKENIZER_FILES: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// What the model card says.
#[derive(Debug, Clone, Default)]
pub struct ModelCard {
    pub base_model: PathBuf,
    /// `sft`, `dpo`, ...
    pub trainer: String,
    pub lora: Option<LoraConfig>,
    pub data_files: Vec<DataFile>,
    /// The run's resolved `config.toml`.
    pub config_toml: Option<String>,
    /// The last `metrics.jsonl` record (and the best evaluation, if any).
    pub final_metrics: Option<serde_json::Value>,
    pub step: usize,
}

impl ModelCard {
    fn render(&self, kind: &str) -> String {
        let base_name = self
            .base_model
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| self.base_model.display().to_string());
        let mut s = String::new();
        s.push_str("---\n");
        s.push_str(&format!("base_model: {base_name}\n"));
        if kind == "adapter" {
            s.push_str("library_name: peft\n");
        } else {
            s.push_str("library_name: transformers\n");
        }
        s.push_str(&format!("tags:\n- alignkit\n- {}\n", self.trainer));
        if self.lora.is_some() {
            s.push_str("- lora\n");
        }
        s.push_str("---\n\n");
        s.push_str(&format!("# {base_name} — alignkit {}\n\n", self.trainer));
        let method = match &self.lora {
            Some(l) => format!(
                "LoRA (r = {}, α = {}{}, targets {}){}",
                l.r,
                l.alpha,
                if l.rslora { ", rsLoRA" } else { "" },
                l.target_modules.names().join(", "),
                if kind == "merged" {
                    ", merged into the base weights"
                } else {
                    ""
                }
            ),
            None => "full fine-tuning".to_string(),
        };
        s.push_str(&format!(
            "Trained with `alignkit {}` from the base model at `{}` by {method}, {} optimizer steps.\n\n",
            self.trainer,
            self.base_model.display(),
            self.step
        ));
        s.push_str("## Training data\n\n| file | sha256 |\n|---|---|\n");
        for f in &self.data_files {
            s.push_str(&format!("| `{}` | `{}` |\n", f.path.display(), f.sha256));
        }
        if let Some(serde_json::Value::Object(m)) = &self.final_metrics {
            s.push_str("\n## Final metrics\n\n| metric | value |\n|---|---|\n");
            for (k, v) in m {
                s.push_str(&format!("| {k} | {v} |\n"));
            }
        }
        if let Some(cfg) = &self.config_toml {
            s.push_str("\n## Configuration\n\n```toml\n");
            s.push_str(cfg.trim_end());
            s.push_str("\n```\n");
        }
        s
    }
}

/// What an export may replace at its output directory. `--overwrite` only
/// ever replaces a previous export: a model or adapter directory holding
/// nothing but the files an export writes. See issue 12.1: an export into the
/// parent of its own run once deleted the run and its siblings.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    out: &'a Path,
    overwrite: bool,
    /// The run, checkpoint or model directory being exported.
    source: Option<&'a Path>,
    /// A model directory whose other files the export copies along
    /// ([`convert_hf_dir`]): their names are not foreign either.
    copies_from: Option<&'a Path>,
}

/// Files an export writes, besides `*.safetensors` weights.
const EXPORT_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    lora::ADAPTER_CONFIG,
    "README.md",
];

impl Target<'_> {
    /// Whether a file named `name` is one an export writes.
    fn is_export_file(&self, name: &str) -> bool {
        EXPORT_FILES.contains(&name)
            || TOKENIZER_FILES.contains(&name)
            || name.ends_with(".safetensors")
            || self.copies_from.is_some_and(|dir| dir.join(name).is_file())
    }

    /// Refuse unless `out` is missing, empty, or (with `overwrite`) a previous
    /// export that neither is nor holds the source.
    fn check(&self) -> Result<()> {
        let out = self.out;
        if !out.exists() {
            return Ok(());
        }
        let refuse = |why: String| {
            Err(TrainError::OutputInUse {
                path: out.to_path_buf(),
                why,
            })
        };
        if !out.is_dir() {
            return refuse("is a file, not a directory".into());
        }
        // A source that cannot be resolved cannot be inside `out`; loading
        // it reports the problem.
        let sources: Vec<&Path> = self.source.into_iter().collect();
        ensure_distinct(out, Writes::Tree, &sources)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(out).map_err(|e| TrainError::io(out, e))? {
            let entry = entry.map_err(|e| TrainError::io(out, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| TrainError::io(out, e))?
                .is_dir();
            names.push((entry.file_name().to_string_lossy().to_string(), is_dir));
        }
        if names.is_empty() {
            return Ok(());
        }
        names.sort();
        if !self.overwrite {
            return refuse("exists and is not empty (pass --overwrite to replace it)".into());
        }
        const ONLY: &str =
            "--overwrite only replaces a previous export (a model or adapter directory)";
        let run_markers = [
            crate::run::CHECKPOINTS_DIR,
            METRICS_FILE,
            crate::checkpoint::STATE_FILE,
        ];
        if let Some((name, _)) = names
            .iter()
            .find(|(n, _)| run_markers.contains(&n.as_str()))
        {
            return refuse(format!(
                "is a training run or checkpoint (holds `{name}`); {ONLY}"
            ));
        }
        let foreign: Vec<&str> = names
            .iter()
            .filter(|(n, is_dir)| *is_dir || !self.is_export_file(n))
            .map(|(n, _)| n.as_str())
            .collect();
        if let Some(first) = foreign.first() {
            let more = match foreign.len() {
                1 => String::new(),
                n => format!(" and {} other entries", n - 1),
            };
            return refuse(format!(
                "holds `{first}`{more}, which no export writes; {ONLY}"
            ));
        }
        let is_model = names
            .iter()
            .any(|(n, _)| n == "config.json" || n == lora::ADAPTER_CONFIG);
        if !is_model {
            return refuse(format!(
                "has no config.json or {}; {ONLY}",
                lora::ADAPTER_CONFIG
            ));
        }
        Ok(())
    }
}

/// Run `write` into a fresh temporary sibling of `target.out`, then rename it
/// into place, replacing what [`Target::check`] allows.
fn write_dir(target: Target<'_>, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    target.check()?;
    let out = target.out;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "export".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| TrainError::io(out, e))
}

/// Copy the tokenizer files of `base` into `dir`; write `generation_config.json`
/// from the base's, or from the model config when the base has none.
fn copy_tokenizer_files(base: &Path, config: &LlamaConfig, dir: &Path) -> Result<()> {
    for f in TOKENIZER_FILES
        .iter()
        .chain(["generation_config.json"].iter())
    {
        let src = base.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f)).map_err(|e| TrainError::io(&src, e))?;
        }
    }
    let gen_path = dir.join("generation_config.json");
    if !gen_path.exists() {
        let mut g = serde_json::Map::new();
        if let Some(b) = config.bos_token_id {
            g.insert("bos_token_id".into(), b.into());
        }
        match config.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                g.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                g.insert("eos_token_id".into(), many.to_vec().into());
            }
        }
        if let Some(p) = config.pad_token_id {
            g.insert("pad_token_id".into(), p.into());
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(g))
            .expect("a JSON map serializes");
        write_synced(&gen_path, text.as_bytes())?;
    }
    Ok(())
}

/// Write `model` (adapters merged) as an HF directory at `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_merged<B: Backend>(
    model: LlamaForCausalLM<B>,
    config: &LlamaConfig,
    base_model: &Path,
    out: &Path,
    dtype: SaveDtype,
    card: &ModelCard,
    overwrite: bool,
) -> Result<()> {
    let target = Target {
        out,
        overwrite,
        source: None,
        copies_from: None,
    };
    merged_into(model, config, base_model, target, dtype, card)
}

fn merged_into<B: Backend>(
    model: LlamaForCausalLM<B>,
    config: &LlamaConfig,
    base_model: &Path,
    target: Target<'_>,
    dtype: SaveDtype,
    card: &ModelCard,
) -> Result<()> {
    let merged = lora::merge(model);
    write_dir(target, |dir| {
        save_model(&merged, config, dir, dtype)?;
        copy_tokenizer_files(base_model, config, dir)?;
        write_synced(&dir.join("README.md"), card.render("merged").as_bytes())
    })
}

/// Write the adapters of `model` as a PEFT directory at `out`.
pub fn write_adapter<B: Backend>(
    model: &LlamaForCausalLM<B>,
    config: &LlamaConfig,
    lora_config: &LoraConfig,
    base_model: &Path,
    out: &Path,
    card: &ModelCard,
    overwrite: bool,
) -> Result<()> {
    let target = Target {
        out,
        overwrite,
        source: None,
        copies_from: None,
    };
    adapter_into(model, config, lora_config, base_model, target, card)
}

fn adapter_into<B: Backend>(
    model: &LlamaForCausalLM<B>,
    config: &LlamaConfig,
    lora_config: &LoraConfig,
    base_model: &Path,
    target: Target<'_>,
    card: &ModelCard,
) -> Result<()> {
    write_dir(target, |dir| {
        lora::export_adapter(
            model,
            lora_config,
            config,
            &base_model.display().to_string(),
            dir,
            SaveDtype::F32,
        )?;
        copy_tokenizer_files(base_model, config, dir)?;
        write_synced(&dir.join("README.md"), card.render("adapter").as_bytes())
    })
}

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Merged(SaveDtype),
    Adapter,
}

/// The checkpoint an export source names: a checkpoint directory itself, or
/// a run directory (its newest complete checkpoint).
pub fn resolve_checkpoint(source: &Path) -> Result<PathBuf> {
    if source.join(crate::checkpoint::STATE_FILE).is_file() {
        return Ok(source.to_path_buf());
    }
    let ckpts = source.join(crate::run::CHECKPOINTS_DIR);
    list_checkpoints(&ckpts)?
        .pop()
        .map(|c| c.path)
        .ok_or_else(|| TrainError::NoCheckpoint {
            dir: source.to_path_buf(),
        })
}

/// The model card of a checkpoint: its state, the run's `config.toml` and the
/// last metrics record up to its step.
pub fn card_for_checkpoint(checkpoint: &Path, state: &TrainerState) -> Result<ModelCard> {
    let run_dir = checkpoint.parent().and_then(Path::parent);
    let config_toml = run_dir
        .map(|r| r.join(CONFIG_FILE))
        .filter(|p| p.is_file())
        .map(|p| std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e)))
        .transpose()?;
    let final_metrics = match run_dir
        .map(|r| r.join(METRICS_FILE))
        .filter(|p| p.is_file())
    {
        Some(p) => read_metrics(&p)?.into_iter().rev().find(|m| {
            m.get("step")
                .and_then(serde_json::Value::as_u64)
                .is_some_and(|s| s as usize <= state.step)
        }),
        None => None,
    };
    Ok(ModelCard {
        base_model: state.base_model.clone(),
        trainer: state.trainer.clone(),
        lora: None,
        data_files: state.data_files.clone(),
        config_toml,
        final_metrics,
        step: state.step,
    })
}

/// Export a run directory or checkpoint (`source`) to `out`. An existing
/// `out` is replaced only when `overwrite` and it is a previous export.
pub fn export<B: Backend>(
    source: &Path,
    out: &Path,
    kind: ExportKind,
    overwrite: bool,
    device: &B::Device,
) -> Result<()> {
    let target = Target {
        out,
        overwrite,
        source: Some(source),
        copies_from: None,
    };
    // Refuse before the (slow) load, and again just before replacing.
    target.check()?;
    let checkpoint = resolve_checkpoint(source)?;
    let state = TrainerState::read(&checkpoint)?;
    if state.trainer == "reward" {
        // Its checkpoints hold a score head the causal-LM export would drop.
        return Err(TrainError::checkpoint(
            &checkpoint,
            "a reward model's checkpoint: export the run's final/ directory (a merged reward model) instead",
        ));
    }
    let lora_config = match state.weights {
        WeightsKind::Lora => Some(lora::read_peft_config(&checkpoint)?),
        WeightsKind::Full => None,
    };
    if !state.base_model.join("config.json").is_file() {
        return Err(TrainError::checkpoint(
            &checkpoint,
            format!(
                "its base model {} is gone (the tokenizer files and, for LoRA, the base weights come from there)",
                state.base_model.display()
            ),
        ));
    }
    let (config, model) = load_trainable::<B>(
        &state.base_model,
        lora_config.as_ref(),
        Some(&checkpoint),
        0,
        device,
    )?;
    let mut card = card_for_checkpoint(&checkpoint, &state)?;
    card.lora = lora_config.clone();
    match kind {
        ExportKind::Merged(dtype) => {
            merged_into(model, &config, &state.base_model, target, dtype, &card)
        }
        ExportKind::Adapter => {
            let lora_config = lora_config.ok_or_else(|| {
                TrainError::checkpoint(
                    &checkpoint,
                    "a full fine-tune has no adapter to export; use --merged",
                )
            })?;
            adapter_into(
                &model,
                &config,
                &lora_config,
                &state.base_model,
                target,
                &card,
            )
        }
    }
}

/// Re-save an HF directory (such as `RUN_DIR/final`) in another dtype: a
/// causal LM, or a reward model (`*ForSequenceClassification`) as one. An
/// existing `out` is replaced only when `overwrite` and it is a previous export.
pub fn convert_hf_dir<B: Backend>(
    source: &Path,
    out: &Path,
    dtype: SaveDtype,
    overwrite: bool,
    device: &B::Device,
) -> Result<()> {
    let target = Target {
        out,
        overwrite,
        source: Some(source),
        copies_from: Some(source),
    };
    target.check()?;
    let reward = is_sequence_classification(&LlamaConfig::load(&source.join("config.json"))?);
    write_dir(target, |dir| {
        if reward {
            let (config, model) = load_reward_model::<B>(source, device)?;
            save_reward_model(&model, &config, dir, dtype)?;
        } else {
            let (config, model) = load_model::<B>(source, device)?;
            save_model(&model, &config, dir, dtype)?;
        }
        for f in std::fs::read_dir(source).map_err(|e| TrainError::io(source, e))? {
            let f = f.map_err(|e| TrainError::io(source, e))?.path();
            let name = f.file_name().map(|n| n.to_string_lossy().to_string());
            let skip = matches!(name.as_deref(), Some("config.json"))
                || name.as_deref().is_some_and(|n| n.ends_with(".safetensors"))
                || name.as_deref() == Some("model.safetensors.index.json");
            if f.is_file() && !skip {
                let dest = dir.join(f.file_name().expect("a file has a name"));
                std::fs::copy(&f, &dest).map_err(|e| TrainError::io(&f, e))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for n in names {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
    }

    fn target<'a>(out: &'a Path, source: Option<&'a Path>) -> Target<'a> {
        Target {
            out,
            overwrite: true,
            source,
            copies_from: None,
        }
    }

    /// The refusal's text, or "ok".
    fn verdict(t: Target<'_>) -> String {
        match t.check() {
            Ok(()) => "ok".into(),
            Err(TrainError::OutputInUse { why, .. }) => why,
            Err(TrainError::Output(e)) => e.to_string(),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn overwrite_replaces_only_a_previous_export() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("runA");
        touch(&run, &["config.toml", "metrics.jsonl"]);
        touch(&run.join("checkpoints/step-2"), &["trainer_state.json"]);
        let merged = root.path().join("merged");
        touch(
            &merged,
            &[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "README.md",
            ],
        );
        let adapter = root.path().join("adapter");
        touch(
            &adapter,
            &["adapter_config.json", "adapter_model.safetensors"],
        );
        let missing = root.path().join("new");
        let empty = root.path().join("empty");
        touch(&empty, &[]);

        // A previous export, a missing or empty directory: replaced.
        assert_eq!(verdict(target(&merged, Some(&run))), "ok");
        assert_eq!(verdict(target(&adapter, Some(&run))), "ok");
        assert_eq!(verdict(target(&missing, Some(&run))), "ok");
        assert_eq!(verdict(target(&empty, Some(&run))), "ok");
        // The source itself, or a folder holding it (issue 12.1).
        assert_eq!(
            verdict(target(&run, Some(&run))),
            format!(
                "{0}: is also an input ({0}); choose another output",
                run.display()
            )
        );
        assert_eq!(
            verdict(target(root.path(), Some(&run.join("checkpoints/step-2")))),
            format!(
                "{}: contains the input {}, which replacing it would delete; choose another output",
                root.path().display(),
                run.join("checkpoints/step-2").display()
            )
        );
        // A run of its own, unrelated files, or a directory that is no model.
        assert_eq!(
            verdict(target(&run, None)),
            "is a training run or checkpoint (holds `checkpoints`); --overwrite only replaces a previous export (a model or adapter directory)"
        );
        touch(&merged, &["notes.txt"]);
        assert_eq!(
            verdict(target(&merged, Some(&run))),
            "holds `notes.txt`, which no export writes; --overwrite only replaces a previous export (a model or adapter directory)"
        );
        std::fs::remove_file(merged.join("notes.txt")).unwrap();
        touch(&merged.join("sub"), &[]);
        touch(&merged, &["a.txt"]);
        assert_eq!(
            verdict(target(&merged, None)),
            "holds `a.txt` and 1 other entries, which no export writes; --overwrite only replaces a previous export (a model or adapter directory)"
        );
        let tokenizer_only = root.path().join("tok");
        touch(&tokenizer_only, &["tokenizer.json"]);
        assert_eq!(
            verdict(target(&tokenizer_only, None)),
            "has no config.json or adapter_config.json; --overwrite only replaces a previous export (a model or adapter directory)"
        );
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(verdict(target(&file, None)), "is a file, not a directory");
        // Without --overwrite nothing non-empty is replaced.
        let keep = Target {
            overwrite: false,
            ..target(&adapter, None)
        };
        assert_eq!(
            verdict(keep),
            "exists and is not empty (pass --overwrite to replace it)"
        );
    }

    #[test]
    fn a_conversion_may_replace_the_files_it_copies() {
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("model");
        touch(&source, &["config.json", "model.safetensors", "LICENSE"]);
        let out = root.path().join("out");
        touch(&out, &["config.json", "model.safetensors", "LICENSE"]);
        assert!(verdict(target(&out, Some(&source))).starts_with("holds `LICENSE`"));
        let convert = Target {
            copies_from: Some(&source),
            ..target(&out, Some(&source))
        };
        assert_eq!(verdict(convert), "ok");
    }
}
