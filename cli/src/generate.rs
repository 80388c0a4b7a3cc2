//! `alignkit generate` and `alignkit chat`.
//!
//! ```text
//! alignkit generate --prompt TEXT [--prompt TEXT ...] [--model DIR] [--chat [--system S]] [--json]
//! alignkit generate --prompts FILE.jsonl --num-samples N --model A [--model B ...] --out candidates.jsonl
//! ```
//!
//! `--chat-template-kwargs JSON` sets the chat template's variables (Qwen3's
//! `enable_thinking`), as `data.chat_template_kwargs` does for training.
//!
//! The second form writes what `alignkit label` reads: one item per prompt with
//! N responses from each model (`source` = the model), appended a batch at a
//! time and resumed after an interruption without duplicating an item.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alignkit_datasets::{Encoder, FieldMap, Message, PromptRecord, Role, TemplateKwargs, Turns};
use alignkit_eval::generations::{GenerationSettings, Response, model_fingerprint};
use alignkit_model::{SamplingConfig, generate};
use alignkit_train::output::{Writes, ensure_distinct};
use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::{DeviceSpec, Task, dispatch};
use crate::common::{
    Loaded, ModelArgs, SamplingArgs, TemplateArgs, cap_to_context, cut_at_stop, exit_on_interrupt,
    lock_file,
};
use crate::pull::{KnownModel, ensure_model};

#[derive(Args)]
#[command(after_help = "Examples:
  alignkit generate --prompt 'Name a colour.' --chat
  alignkit generate --prompts prompts.jsonl --model runs/sft/final --model runs/dpo/final \\
      --num-samples 2 --temperature 0.7 --out candidates.jsonl
  alignkit label candidates.jsonl --judgments judgments.jsonl --annotator me")]
pub struct GenerateArgs {
    /// Hugging Face model directory (default: SmolLM2-135M-Instruct, fetched on first use).
    /// Repeat with --prompts to sample from several models.
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// cpu, cuda:N, vulkan:N, wgpu:N or wgpu:cpu (wgpu on a CPU adapter such as Mesa's lavapipe), among the backends compiled in.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Prompt text; repeat for a batch (generated together, left-padded). With
    /// one prompt the text streams to the terminal as it is generated.
    #[arg(
        long,
        required_unless_present = "prompts",
        conflicts_with = "prompts",
        allow_hyphen_values = true
    )]
    pub prompt: Vec<String>,
    /// Prompts JSONL ({"prompt"}: a string or a message list); writes a
    /// candidates file for `alignkit label` to --out.
    #[arg(long, value_name = "FILE.jsonl", requires = "out")]
    pub prompts: Option<PathBuf>,
    /// Candidates JSONL to write (with --prompts); an interrupted run resumes
    /// where it stopped when run again with the same settings.
    #[arg(long, value_name = "CANDIDATES.jsonl", requires = "prompts")]
    pub out: Option<PathBuf>,
    /// Responses per prompt from each model (with --prompts).
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    /// Prompts generated together (with --prompts).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Render string prompts as a user turn with the model's chat template
    /// (message-list prompts always use it).
    #[arg(long)]
    pub chat: bool,
    /// System message (needs --chat).
    #[arg(long, allow_hyphen_values = true)]
    pub system: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object per prompt, at the end, instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

impl GenerateArgs {
    fn check(&self) -> Result<SamplingConfig> {
        let sampling = self.sampling.config()?;
        if self.system.is_some() && !self.chat {
            bail!("--system needs --chat: a system message exists only in a chat template");
        }
        if self.prompts.is_none() && self.model.len() > 1 {
            bail!(
                "several --model need --prompts FILE.jsonl --out FILE (a candidates file); --prompt takes one model"
            );
        }
        if self.prompts.is_none() && self.out.is_some() {
            bail!(
                "--out writes a candidates file from --prompts FILE.jsonl; to keep the output of --prompt, print it with --json and redirect it (--json > FILE)"
            );
        }
        if self.prompts.is_none() && self.num_samples != 1 {
            bail!("--num-samples needs --prompts FILE.jsonl --out FILE");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(sampling)
    }
}

/// The prompt as it is rendered: with `chat`, a string becomes a user turn
/// after the optional system turn; a message list gains the system turn unless
/// it starts with one.
pub fn chat_prompt(prompt: &Turns, chat: bool, system: Option<&str>) -> Turns {
    let system = system.map(|s| Message::new(Role::System, s));
    match prompt {
        Turns::Text(t) if chat => Turns::Messages(
            system
                .into_iter()
                .chain([Message::new(Role::User, t.clone())])
                .collect(),
        ),
        Turns::Text(_) => prompt.clone(),
        Turns::Messages(m) => match system {
            Some(s) if m.first().is_none_or(|f| f.role != Role::System) => {
                Turns::Messages(std::iter::once(s).chain(m.iter().cloned()).collect())
            }
            _ => prompt.clone(),
        },
    }
}

/// Token ids of a rendered prompt: message lists through the chat template
/// (with the generation prompt), strings as raw text with the tokenizer's BOS.
pub fn prompt_ids(encoder: &Encoder, prompt: &Turns) -> Result<Vec<u32>> {
    let ids = encoder.prompt(&PromptRecord {
        prompt: prompt.clone(),
    })?;
    if ids.prompt_ids.is_empty() {
        bail!("a prompt encodes to no tokens, so generation has no context");
    }
    Ok(ids.prompt_ids)
}

/// Sample continuations of `rows` in one batch: each decoded (special tokens
/// skipped) and cut at the first stop text.
pub fn sample_rows<B: Backend>(
    loaded: &Loaded<B>,
    rows: &[Vec<u32>],
    sampling: &SamplingConfig,
    stops: &[String],
    device: &B::Device,
) -> Result<Vec<Response>> {
    let tokenizer = loaded.tokenizer();
    let outputs = generate(
        &loaded.model,
        rows,
        &loaded.stop_ids(),
        tokenizer.pad_id(),
        sampling,
        |_, tokens| stopped(tokenizer, tokens, stops),
        device,
    )?;
    outputs
        .into_iter()
        .map(|out| {
            let text = tokenizer.decode(&out.tokens, true)?;
            Ok(Response {
                text: cut_at_stop(&text, stops).unwrap_or(&text).to_string(),
                tokens: out.tokens.len(),
                finish: out.finish.into(),
            })
        })
        .collect()
}

fn stopped(tokenizer: &alignkit_datasets::Tokenizer, tokens: &[u32], stops: &[String]) -> bool {
    !stops.is_empty()
        && tokenizer
            .decode(tokens, true)
            .is_ok_and(|text| cut_at_stop(&text, stops).is_some())
}

/// The seed of batch `index`: batches of one run draw different random streams,
/// and a batch draws the same stream whichever batches ran before it.
pub fn batch_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Every prompt's response, `settings.batch_size` prompts per batch, each
/// batch seeded by [`batch_seed`]; `on_batch(n)` after each batch of n.
pub fn sample_all<B: Backend>(
    loaded: &Loaded<B>,
    prompt_ids: &[Vec<u32>],
    settings: &GenerationSettings,
    device: &B::Device,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<Response>> {
    let mut out = Vec::with_capacity(prompt_ids.len());
    for (k, chunk) in prompt_ids.chunks(settings.batch_size.max(1)).enumerate() {
        let sampling = SamplingConfig {
            seed: batch_seed(settings.seed, k),
            ..settings.sampling()
        };
        out.extend(sample_rows(
            loaded,
            chunk,
            &sampling,
            &settings.stop,
            device,
        )?);
        on_batch(chunk.len());
    }
    Ok(out)
}

/// A progress bar on stderr.
pub fn progress_bar(len: usize, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64).with_prefix(prefix.to_string());
    bar.set_style(
        ProgressStyle::with_template("{prefix} {spinner} {pos}/{len} [{bar:30}] eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Model directories as given, or the default model.
fn model_dirs(models: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if models.is_empty() {
        return Ok(vec![ensure_model(KnownModel::Smollm2)?]);
    }
    let mut seen = HashSet::new();
    for m in models {
        if !seen.insert(m.canonicalize().unwrap_or_else(|_| m.clone())) {
            bail!("--model {} is given twice", m.display());
        }
    }
    Ok(models.to_vec())
}

impl Task for GenerateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let sampling = self.check()?;
        match (&self.prompts, &self.out) {
            (Some(prompts), Some(out)) => {
                write_candidates::<B::InnerBackend>(&self, prompts, out, sampling, &device)
            }
            _ => interactive::<B::InnerBackend>(&self, sampling, &device),
        }
    }
}

fn interactive<B: Backend>(
    args: &GenerateArgs,
    mut sampling: SamplingConfig,
    device: &B::Device,
) -> Result<()> {
    let dir = model_dirs(&args.model)?.remove(0);
    let loaded = Loaded::<B>::load(&dir, device, &args.template.kwargs()?)?;
    let prompts = args
        .prompt
        .iter()
        .map(|p| {
            let turns = chat_prompt(&Turns::Text(p.clone()), args.chat, args.system.as_deref());
            prompt_ids(&loaded.encoder, &turns)
        })
        .collect::<Result<Vec<_>>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (max_new, note) = cap_to_context(
        sampling.max_new_tokens,
        longest,
        loaded.config.max_position_embeddings,
    )?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    sampling.max_new_tokens = max_new;
    let tokenizer = loaded.tokenizer();
    let stops = &args.sampling.stop;
    let stream = !args.json && prompts.len() == 1;
    let mut stdout = std::io::stdout();
    let mut printed = 0;
    let start = Instant::now();
    let outputs = generate(
        &loaded.model,
        &prompts,
        &loaded.stop_ids(),
        tokenizer.pad_id(),
        &sampling,
        |_, tokens| {
            let Ok(text) = tokenizer.decode(tokens, true) else {
                return false;
            };
            let cut = cut_at_stop(&text, stops);
            if stream {
                let upto = match cut {
                    Some(c) => c.len(),
                    None => safe_prefix(&text, stops),
                };
                if upto > printed {
                    print!("{}", &text[printed..upto]);
                    let _ = stdout.flush();
                    printed = upto;
                }
            }
            cut.is_some()
        },
        device,
    )?;
    let elapsed = start.elapsed().as_secs_f64();
    let new_tokens: usize = outputs.iter().map(|o| o.tokens.len()).sum();
    for (prompt, out) in args.prompt.iter().zip(&outputs) {
        let text = tokenizer.decode(&out.tokens, true)?;
        let text = cut_at_stop(&text, stops).unwrap_or(&text).to_string();
        if args.json {
            let finish = alignkit_eval::generations::Finish::from(out.finish);
            let line = serde_json::json!({
                "prompt": prompt, "completion": text, "tokens": out.tokens, "finish_reason": finish,
            });
            println!("{line}");
        } else if stream {
            // What the stop check held back, then the end of the line.
            let rest = text.get(printed..).unwrap_or_default();
            println!("{}", rest.trim_end());
        } else {
            println!("{}", text.trim_end());
        }
    }
    eprintln!(
        "{new_tokens} tokens in {elapsed:.2}s ({:.1} tokens/s)",
        new_tokens as f64 / elapsed.max(1e-9)
    );
    Ok(())
}

/// How much of `text` can be shown while generation goes on: everything but
/// what could still become the start of a stop text, and never an unfinished
/// character (decoded as U+FFFD until its last byte arrives).
fn safe_prefix(text: &str, stops: &[String]) -> usize {
    let hold = stops
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut end = text.len().saturating_sub(hold);
    if let Some(bad) = text.find('\u{FFFD}') {
        end = end.min(bad);
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// The key of [`recorded_settings`] holding each model's content fingerprint
/// (`alignkit_eval::generations::model_fingerprint`), in `models` order.
const MODEL_SHA256: &str = "model_sha256";

/// The generation settings recorded in every candidates item, with each
/// model's fingerprint; a resumed run must match them.
fn recorded_settings(
    args: &GenerateArgs,
    models: &[PathBuf],
    fingerprints: &[String],
    settings: &GenerationSettings,
    template_kwargs: &TemplateKwargs,
) -> serde_json::Value {
    let mut v = serde_json::to_value(settings).expect("settings serialise");
    let obj = v.as_object_mut().expect("an object");
    obj.insert("num_samples".into(), args.num_samples.into());
    obj.insert(
        "models".into(),
        models
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    obj.insert(MODEL_SHA256.into(), fingerprints.to_vec().into());
    obj.insert("chat".into(), args.chat.into());
    obj.insert("system".into(), args.system.clone().into());
    // Only when given: files written before the flag existed still resume.
    if !template_kwargs.is_empty() {
        obj.insert(
            "chat_template_kwargs".into(),
            serde_json::to_value(template_kwargs).expect("JSON values serialise"),
        );
    }
    v
}

/// Ids of the items already in `out` (none if it does not exist). A torn last
/// line (an interrupted write) is cut off; items written with other settings,
/// by a model whose files changed since, or for other prompts are refused.
fn resume(
    out: &Path,
    settings: &serde_json::Value,
    ids: &HashSet<&str>,
) -> Result<HashSet<String>> {
    let bytes = match std::fs::read(out) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if complete < bytes.len() {
        let file = OpenOptions::new()
            .write(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        file.set_len(complete as u64)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cutting the incomplete last line of {}", out.display()))?;
        eprintln!(
            "note: {}: dropped an incomplete last line (an interrupted write); it is generated again",
            out.display()
        );
    }
    let mut done = HashSet::new();
    for (i, line) in bytes[..complete].lines().enumerate() {
        let at = format!("{}:{}", out.display(), i + 1);
        let line = line.with_context(|| at.clone())?;
        if line.trim().is_empty() {
            continue;
        }
        let item: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{at}: not a candidates line ({e}); use another --out"))?;
        let Some(id) = item.get("id").and_then(|v| v.as_str()) else {
            bail!("{at}: no string `id`; not written by `alignkit generate`: use another --out");
        };
        match item.get("generation") {
            Some(g) if g == settings => {}
            Some(g)
                if g.get("models") == settings.get("models")
                    && g.get(MODEL_SHA256).is_some()
                    && g.get(MODEL_SHA256) != settings.get(MODEL_SHA256) =>
            {
                let (was, now) = (&g[MODEL_SHA256], &settings[MODEL_SHA256]);
                let i = (0..).find(|&i| was.get(i) != now.get(i)).unwrap_or(0);
                let short = |v: &serde_json::Value| {
                    v.get(i)
                        .and_then(|s| s.as_str())
                        .map_or(String::from("none"), |s| s.chars().take(12).collect())
                };
                bail!(
                    "{at}: written by the model at {} before its files changed (sha256 {} there, {} now); restore that model or use another --out",
                    settings["models"][i].as_str().unwrap_or_default(),
                    short(was),
                    short(now)
                );
            }
            Some(g) => {
                let key = first_difference(g, settings);
                bail!(
                    "{at}: written with other settings (`{key}`: {} there, {} now); rerun with the same settings or use another --out",
                    g.get(&key).unwrap_or(&serde_json::Value::Null),
                    settings.get(&key).unwrap_or(&serde_json::Value::Null)
                );
            }
            None => bail!(
                "{at}: no `generation` settings; not written by `alignkit generate`: use another --out"
            ),
        }
        if !ids.contains(id) {
            bail!("{at}: item {id:?} is not a prompt of this prompts file; use another --out");
        }
        done.insert(id.to_string());
    }
    Ok(done)
}

/// The first key (in sorted order) whose value differs between two objects.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> String {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.into_iter()
        .find(|k| a.get(*k) != b.get(*k))
        .cloned()
        .unwrap_or_default()
}

/// Stable item ids: the prompt record's content digest; a repeated prompt gets
/// `-2`, `-3`, ... in file order.
fn item_ids(digests: &[[u8; 32]]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    digests
        .iter()
        .map(|d| {
            let base: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 { base } else { format!("{base}-{n}") }
        })
        .collect()
}

fn write_candidates<B: Backend>(
    args: &GenerateArgs,
    prompts_path: &Path,
    out: &Path,
    sampling: SamplingConfig,
    device: &B::Device,
) -> Result<()> {
    let models = model_dirs(&args.model)?;
    let template_kwargs = args.template.kwargs()?;
    let inputs: Vec<&Path> = std::iter::once(prompts_path)
        .chain(models.iter().map(PathBuf::as_path))
        .collect();
    ensure_distinct(out, Writes::Path, &inputs)?;
    let per_item = models.len() * args.num_samples;
    if !(2..=alignkit_labeler::candidates::MAX_RESPONSES).contains(&per_item) {
        bail!(
            "each item needs 2 to {} responses for `alignkit label`; {} model(s) × --num-samples {} gives {per_item}",
            alignkit_labeler::candidates::MAX_RESPONSES,
            models.len(),
            args.num_samples
        );
    }
    if args.num_samples > 1 && sampling.temperature == 0.0 {
        bail!(
            "--num-samples {} with greedy decoding (--temperature 0) writes the same response {} times; set --temperature (e.g. 0.7)",
            args.num_samples,
            args.num_samples
        );
    }
    // One process appends to `out` at a time; an interrupted one resumes.
    let _lock = lock_file(out, None)?;
    exit_on_interrupt()?;
    let records: Vec<_> =
        alignkit_datasets::read::<PromptRecord>(prompts_path, &FieldMap::default())?
            .collect::<Result<_, _>>()?;
    if records.is_empty() {
        bail!("{}: no prompts", prompts_path.display());
    }
    let ids = item_ids(&records.iter().map(|r| r.digest).collect::<Vec<_>>());
    let turns: Vec<Turns> = records
        .iter()
        .map(|r| chat_prompt(&r.value.prompt, args.chat, args.system.as_deref()))
        .collect();

    // Every model with its prompts in its own tokenizer.
    let mut loaded = Vec::with_capacity(models.len());
    let mut longest = 0;
    let mut context = usize::MAX;
    for dir in &models {
        let l = Loaded::<B>::load(dir, device, &template_kwargs)?;
        let ids: Vec<Vec<u32>> = turns
            .iter()
            .zip(&records)
            .map(|(t, r)| prompt_ids(&l.encoder, t).with_context(|| r.at.to_string()))
            .collect::<Result<_>>()?;
        longest = longest.max(ids.iter().map(Vec::len).max().unwrap_or(0));
        context = context.min(l.config.max_position_embeddings);
        loaded.push((l, ids));
    }
    let (max_new_tokens, note) = cap_to_context(sampling.max_new_tokens, longest, context)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let settings = GenerationSettings {
        max_new_tokens,
        temperature: sampling.temperature,
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        seed: sampling.seed,
        stop: args.sampling.stop.clone(),
        batch_size: args.batch_size,
    };
    let fingerprints = models
        .iter()
        .map(|m| model_fingerprint(m).with_context(|| format!("--model {}", m.display())))
        .collect::<Result<Vec<_>>>()?;
    let recorded = recorded_settings(args, &models, &fingerprints, &settings, &template_kwargs);
    let done = resume(out, &recorded, &ids.iter().map(String::as_str).collect())?;
    if !done.is_empty() {
        eprintln!(
            "resuming {}: {} of {} items already written",
            out.display(),
            done.len(),
            ids.len()
        );
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    let bar = progress_bar(ids.len(), "[generate]");
    bar.inc(done.len() as u64);
    let mut written = 0;
    // Batches are fixed by position in the prompts file, so a resumed run
    // draws each batch's random stream exactly as an uninterrupted one.
    for (k, start) in (0..ids.len()).step_by(args.batch_size).enumerate() {
        let pending: Vec<usize> = (start..(start + args.batch_size).min(ids.len()))
            .filter(|&i| !done.contains(&ids[i]))
            .collect();
        if pending.is_empty() {
            continue;
        }
        let mut responses: Vec<Vec<serde_json::Value>> = vec![Vec::new(); pending.len()];
        for ((l, prompt_ids), dir) in loaded.iter().zip(&models) {
            // Each prompt N times, in one batch.
            let rows: Vec<Vec<u32>> = pending
                .iter()
                .flat_map(|&i| std::iter::repeat_n(prompt_ids[i].clone(), args.num_samples))
                .collect();
            let sampled = sample_rows(
                l,
                &rows,
                &SamplingConfig {
                    seed: batch_seed(settings.seed, k),
                    ..settings.sampling()
                },
                &settings.stop,
                device,
            )?;
            for (row, r) in sampled.into_iter().enumerate() {
                responses[row / args.num_samples].push(serde_json::json!({
                    "text": r.text, "source": dir.display().to_string(),
                }));
            }
        }
        let mut text = String::new();
        for (&i, responses) in pending.iter().zip(responses) {
            let item = serde_json::json!({
                "id": ids[i], "prompt": turns[i], "responses": responses, "generation": recorded,
            });
            text.push_str(&item.to_string());
            text.push('\n');
        }
        // One write per batch, on disk before the next batch starts.
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .with_context(|| format!("writing {}", out.display()))?;
        written += pending.len();
        bar.inc(pending.len() as u64);
    }
    bar.finish_and_clear();
    eprintln!(
        "{written} item(s) written to {} ({} in all, {per_item} responses each); rank them with `alignkit label {} --judgments judgments.jsonl --annotator NAME`",
        out.display(),
        ids.len(),
        out.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message for the whole conversation.
    #[arg(long, allow_hyphen_values = true)]
    pub system: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

impl Task for ChatArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let mut config = self.sampling.config()?;
        let dir = self.model.dir()?;
        let loaded = Loaded::<B::InnerBackend>::load(&dir, &device, &self.template.kwargs()?)?;
        let tokenizer = loaded.tokenizer();
        let mut messages: Vec<Message> = self
            .system
            .iter()
            .map(|s| Message::new(Role::System, s.clone()))
            .collect();
        let requested = config.max_new_tokens;
        eprintln!(
            "chatting with {} — /reset clears the conversation, /exit or Ctrl-D quits",
            dir.display()
        );
        let stdin = std::io::stdin();
        let mut stdout = std::io::stdout();
        loop {
            eprint!("> ");
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                break;
            }
            match line.trim() {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    messages.retain(|m| m.role == Role::System);
                    continue;
                }
                text => messages.push(Message::new(Role::User, text)),
            }
            let ids = loaded.encoder.chat_ids(&messages, true)?;
            match cap_to_context(requested, ids.len(), loaded.config.max_position_embeddings) {
                Ok((max_new, note)) => {
                    if let Some(note) = note {
                        eprintln!("note: {note}");
                    }
                    config.max_new_tokens = max_new;
                }
                Err(e) => {
                    eprintln!("{e}; /reset to start over");
                    messages.pop();
                    continue;
                }
            }
            let mut printed = 0;
            let outputs = generate(
                &loaded.model,
                &[ids],
                &loaded.stop_ids(),
                tokenizer.pad_id(),
                &config,
                |_, tokens| {
                    // Stream: print what the new token added to the decoded text.
                    if let Ok(text) = tokenizer.decode(tokens, true) {
                        let upto = safe_prefix(&text, &[]);
                        if upto > printed {
                            print!("{}", &text[printed..upto]);
                            let _ = stdout.flush();
                            printed = upto;
                        }
                    }
                    false
                },
                &device,
            )?;
            let reply = tokenizer.decode(&outputs[0].tokens, true)?;
            println!("{}", reply.get(printed..).unwrap_or_default().trim_end());
            messages.push(Message::new(Role::Assistant, reply.trim().to_string()));
            config.seed = config.seed.wrapping_add(1);
        }
        Ok(())
    }
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    dispatch(args.device, args)
}

pub fn run_chat(args: ChatArgs) -> Result<()> {
    dispatch(args.model.device, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_holds_back_a_possible_stop_start_and_unfinished_characters() {
        assert_eq!(safe_prefix("hello", &[]), 5);
        // "###" could still complete from "he##": hold back two bytes.
        assert_eq!(safe_prefix("he##", &["###".into()]), 2);
        assert_eq!(safe_prefix("ab\u{FFFD}", &[]), 2);
        // Never inside a character.
        assert_eq!(safe_prefix("aé", &["xy".into()]), 1);
    }

    #[test]
    fn chat_prompts_gain_the_user_and_system_turns() {
        let text = Turns::Text("hi".into());
        assert_eq!(chat_prompt(&text, false, None), text);
        let Turns::Messages(m) = chat_prompt(&text, true, Some("be brief")) else {
            panic!("messages expected");
        };
        assert_eq!(
            m.iter().map(|m| m.role).collect::<Vec<_>>(),
            [Role::System, Role::User]
        );
        let with_system = Turns::Messages(vec![
            Message::new(Role::System, "own"),
            Message::new(Role::User, "q"),
        ]);
        assert_eq!(chat_prompt(&with_system, true, Some("x")), with_system);
    }

    #[test]
    fn ids_are_stable_digests_with_repeats_numbered() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let ids = item_ids(&[a, b, a, a]);
        assert_eq!(ids[0], "0101010101010101");
        assert_eq!(ids[2], "0101010101010101-2");
        assert_eq!(ids[3], "0101010101010101-3");
        assert_ne!(ids[0], ids[1]);
    }
}
