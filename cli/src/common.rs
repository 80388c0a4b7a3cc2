//! Arguments and helpers shared by the model-running subcommands.

use std::path::{Path, PathBuf};

use alignkit_datasets::{
    CompletionEnd, EncodeConfig, Encoder, Message, Role, TemplateKwargs, Tokenizer,
};
use alignkit_model::{LlamaConfig, LlamaForCausalLM, SamplingConfig};
use alignkit_train::output::{Holder, Lock};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};

use crate::backend::DeviceSpec;
use crate::pull::{KnownModel, ensure_model};

/// `--completion-end`: where a conversational preference completion ends
/// (`alignkit_datasets::CompletionEnd`).
#[derive(Clone, Copy, Default, ValueEnum)]
pub enum CompletionEndArg {
    /// Everything the chat template renders after the prompt (TRL's span;
    /// ChatML: through `<|im_end|>` and the newline after it).
    #[default]
    Template,
    /// Through the end-of-turn token.
    EndOfTurn,
}

impl From<CompletionEndArg> for CompletionEnd {
    fn from(arg: CompletionEndArg) -> Self {
        match arg {
            CompletionEndArg::Template => CompletionEnd::Template,
            CompletionEndArg::EndOfTurn => CompletionEnd::EndOfTurn,
        }
    }
}

/// `--model` and `--device`.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// Refuse to replace the existing output file `path` (given as `flag`)
/// unless `--overwrite`: one wording for every command that writes one file.
pub fn refuse_overwrite(flag: &str, path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        bail!(
            "{flag} {}: exists (pass --overwrite to replace it)",
            path.display()
        );
    }
    Ok(())
}

/// The note on a lock taken over from a process that ended without removing
/// it (killed, crashed): what it was doing there may be unfinished.
pub fn taken_over_note(place: &Path, holder: &Holder) -> String {
    format!(
        "note: {}: took over the lock left by {holder}, which is no longer running",
        place.display()
    )
}

/// Lock the file `path` this command appends to (`annotator`: for one of the
/// annotators sharing it), with a note when taking over a stale lock.
pub fn lock_file(path: &Path, annotator: Option<&str>) -> Result<Lock> {
    let lock = match annotator {
        Some(name) => Lock::file_for(path, name)?,
        None => Lock::file(path)?,
    };
    if let Some(holder) = lock.taken_over() {
        eprintln!("{}", taken_over_note(path, holder));
    }
    Ok(lock)
}

/// Lock the directory `dir` this command writes (creating it), with a note
/// when taking over a stale lock.
pub fn lock_dir(dir: &Path) -> Result<Lock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock = Lock::dir(dir)?;
    if let Some(holder) = lock.taken_over() {
        eprintln!("{}", taken_over_note(dir, holder));
    }
    Ok(lock)
}

/// Ctrl-C, SIGTERM or SIGHUP end the process at once, with status 130 (as
/// an interrupted training), removing its lock files first: for a command
/// whose output survives an interruption and resumes when run again.
pub fn exit_on_interrupt() -> Result<()> {
    ctrlc::set_handler(|| {
        alignkit_train::output::remove_held();
        std::process::exit(crate::train_cli::EXIT_INTERRUPTED);
    })
    .context("installing the Ctrl-C/SIGTERM handler")
}

/// `--chat-template-kwargs`: the template variables of every chat template
/// the command renders (`apply_chat_template`'s keyword arguments).
#[derive(Args, Clone, Default)]
pub struct TemplateArgs {
    /// Chat-template variables as a JSON object, as a config's
    /// `data.chat_template_kwargs` (e.g. '{"enable_thinking": false}').
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
}

impl TemplateArgs {
    /// The variables (none without the flag).
    pub fn kwargs(&self) -> Result<TemplateKwargs> {
        match &self.chat_template_kwargs {
            None => Ok(TemplateKwargs::new()),
            Some(text) => serde_json::from_str(text)
                .with_context(|| format!("--chat-template-kwargs {text}: expected a JSON object")),
        }
    }
}

impl ModelArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        match &self.model {
            Some(dir) => Ok(dir.clone()),
            None => ensure_model(KnownModel::Smollm2),
        }
    }
}

/// Sampling flags, as transformers' `generate` names them. Numbers may be
/// negative on the command line (`--temperature -1` is read as a value), so
/// that [`SamplingArgs::config`] can say what is wrong with it.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Longest response in tokens; capped at what the model's context leaves after the prompt.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy (always the most likely token).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P; 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than P × the most likely one; 0 = off.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Seed of the sampler (the same seed and settings give the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the output contains this text (repeatable); the text is cut there.
    #[arg(long, allow_hyphen_values = true)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The sampler's settings, after checking each flag (one line naming it).
    pub fn config(&self) -> Result<SamplingConfig> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be >= 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1] (1 = off), got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("--min-p must be in [0, 1] (0 = off), got {}", self.min_p);
        }
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        if self.stop.iter().any(String::is_empty) {
            bail!("--stop \"\" would stop before any text; give a non-empty stop text");
        }
        Ok(SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed,
        })
    }
}

/// `max_new_tokens` capped so that the longest prompt plus its response fits
/// the model's context (`max_position_embeddings`), with a note for the user
/// when the cap applies. An error when the prompt alone fills the context.
pub fn cap_to_context(
    max_new_tokens: usize,
    longest_prompt: usize,
    context: usize,
) -> Result<(usize, Option<String>)> {
    if longest_prompt >= context {
        bail!(
            "a prompt of {longest_prompt} tokens leaves no room in the model's context of {context} tokens (max_position_embeddings)"
        );
    }
    let room = context - longest_prompt;
    if max_new_tokens <= room {
        return Ok((max_new_tokens, None));
    }
    Ok((
        room,
        Some(format!(
            "--max-new-tokens {max_new_tokens} capped at {room}: the model's context is {context} tokens (max_position_embeddings) and the longest prompt takes {longest_prompt}"
        )),
    ))
}

/// A loaded model with its tokenizer and chat template.
pub struct Loaded<B: Backend> {
    pub config: LlamaConfig,
    pub model: LlamaForCausalLM<B>,
    pub encoder: Encoder,
}

impl<B: Backend> Loaded<B> {
    /// The model of `dir`, its chat template rendered with `template_kwargs`.
    pub fn load(dir: &Path, device: &B::Device, template_kwargs: &TemplateKwargs) -> Result<Self> {
        let (config, model) = alignkit_model::load_model::<B>(dir, device)?;
        let model = model.for_decoding();
        let encoder = inference_encoder(dir, template_kwargs)?;
        Ok(Self {
            config,
            model,
            encoder,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.encoder.tokenizer()
    }

    /// Token ids that end generation: the config's EOS ids and the template's
    /// end-of-turn tokens.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = self.config.eos_token_ids.clone();
        ids.extend_from_slice(self.tokenizer().end_of_turn_ids());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Prompt ids: rendered with the chat template (as a user turn, after an
    /// optional system turn) or encoded as plain text with the tokenizer's BOS.
    pub fn prompt_ids(&self, prompt: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
        if chat {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message::new(Role::System, s));
            }
            messages.push(Message::new(Role::User, prompt));
            Ok(self.encoder.chat_ids(&messages, true)?)
        } else {
            Ok(self.tokenizer().encode(prompt, true)?)
        }
    }
}

/// The tokenizer and chat template of `dir` as the inference commands use
/// them: no truncation, `template_kwargs` as the template variables.
pub fn inference_encoder(dir: &Path, template_kwargs: &TemplateKwargs) -> Result<Encoder> {
    let config = EncodeConfig {
        template_kwargs: template_kwargs.clone(),
        ..EncodeConfig::default()
    };
    Encoder::from_dir(dir, config)
        .with_context(|| format!("cannot load the tokenizer of {}", dir.display()))
}

/// Cut `text` at the first stop string, if any occurs.
pub fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> Option<&'a str> {
    stops
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .map(|i| &text[..i])
}
