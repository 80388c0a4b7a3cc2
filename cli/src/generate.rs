//! `alignkit generate` and `alignkit chat`.

use std::io::{BufRead, Write};
use std::time::Instant;

use alignkit_datasets::{Message, Role};
use alignkit_model::{FinishReason, generate};
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::backend::{Task, dispatch};
use crate::common::{Loaded, ModelArgs, SamplingArgs, cut_at_stop};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; repeat for a batch (generated together, left-padded).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Render each prompt as a user turn with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object per prompt instead of plain text.
    #[arg(long)]
    pub json: bool,
}

impl Task for GenerateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let dir = self.model.dir()?;
        let loaded = Loaded::<B::InnerBackend>::load(&dir, &device)?;
        let prompts = self
            .prompt
            .iter()
            .map(|p| loaded.prompt_ids(p, self.chat, self.system.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        let tokenizer = loaded.tokenizer();
        let stops = &self.sampling.stop;
        let start = Instant::now();
        let outputs = generate(
            &loaded.model,
            &prompts,
            &loaded.stop_ids(),
            tokenizer.pad_id(),
            &self.sampling.config(),
            |_, tokens| {
                !stops.is_empty()
                    && tokenizer
                        .decode(tokens, true)
                        .is_ok_and(|text| cut_at_stop(&text, stops).is_some())
            },
            &device,
        )?;
        let elapsed = start.elapsed().as_secs_f64();
        let new_tokens: usize = outputs.iter().map(|o| o.tokens.len()).sum();
        for (prompt, out) in self.prompt.iter().zip(&outputs) {
            let text = tokenizer.decode(&out.tokens, true)?;
            let text = cut_at_stop(&text, stops).unwrap_or(&text).to_string();
            if self.json {
                let finish = match out.finish {
                    FinishReason::Eos => "eos",
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                };
                let line = serde_json::json!({
                    "prompt": prompt, "completion": text, "tokens": out.tokens, "finish_reason": finish,
                });
                println!("{line}");
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
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message for the whole conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

impl Task for ChatArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let dir = self.model.dir()?;
        let loaded = Loaded::<B::InnerBackend>::load(&dir, &device)?;
        let tokenizer = loaded.tokenizer();
        let mut messages: Vec<Message> = self
            .system
            .iter()
            .map(|s| Message::new(Role::System, s.clone()))
            .collect();
        let mut config = self.sampling.config();
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
            let mut printed = 0;
            let outputs = generate(
                &loaded.model,
                &[ids],
                &loaded.stop_ids(),
                tokenizer.pad_id(),
                &config,
                |_, tokens| {
                    // Stream: print what the new token added to the decoded text.
                    if let Ok(text) = tokenizer.decode(tokens, true)
                        && text.len() > printed
                        && text.is_char_boundary(printed)
                    {
                        print!("{}", &text[printed..]);
                        let _ = stdout.flush();
                        printed = text.len();
                    }
                    false
                },
                &device,
            )?;
            println!();
            let reply = tokenizer.decode(&outputs[0].tokens, true)?;
            messages.push(Message::new(Role::Assistant, reply.trim().to_string()));
            config.seed = config.seed.wrapping_add(1);
        }
        Ok(())
    }
}

pub fn run_generate(args: GenerateArgs) -> Result<()> {
    dispatch(args.model.device, args)
}

pub fn run_chat(args: ChatArgs) -> Result<()> {
    dispatch(args.model.device, args)
}
