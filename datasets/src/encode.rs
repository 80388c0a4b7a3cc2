//! Records → token-level training examples.
//!
//! - Conversations go through the model's chat template. The prompt/completion
//!   boundary is found in token space: the conversation up to an assistant turn
//!   is rendered with `add_generation_prompt=True`, the conversation through the
//!   turn without it, and both must be token prefixes of the whole rendered
//!   conversation; otherwise the example is rejected with the reason (usually a
//!   response starting with whitespace that merges with the generation prompt's
//!   last token, or a template that renders earlier turns differently once a
//!   later turn follows).
//! - A template with `{% generation %}` blocks (SmolLM3's, TRL's training
//!   templates) marks the assistant's text itself: the trained tokens are
//!   those of each block, as transformers'
//!   `apply_chat_template(return_assistant_tokens_mask=True)` takes them
//!   (the token holding a block's first character through the one holding its
//!   last), and no prefix of the conversation needs to render alike — so
//!   templates that rewrite earlier turns (Qwen3 drops their reasoning) work.
//! - SFT: the trained span of an assistant turn runs from the end of its
//!   generation prompt through its end-of-turn token (`<|im_end|>`,
//!   `<|eot_id|>`, `<end_of_turn>`, `<|end|>`, EOS), so the model learns to
//!   stop; tokens the template puts after it (ChatML's newline) are not
//!   trained. The conversation through a turn must render as the whole does
//!   through that token only: Phi-3's template closes a conversation with
//!   EOS where a turn that others follow ends `<|end|>\n`, so an earlier
//!   turn ends at `<|end|>` and the last one at that EOS (as TRL's Phi-3
//!   training template marks them). Every assistant turn of a
//!   multi-turn conversation is trained, as with TRL's `assistant_only_loss`.
//! - Preference (and KTO) completions of conversations: by default
//!   ([`CompletionEnd::Template`]) everything the chat template renders after
//!   the prompt, as TRL's `DPOTrainer` and `RewardTrainer` take it — for
//!   ChatML `...<|im_end|>` *and* the `\n` after it. With
//!   [`CompletionEnd::EndOfTurn`] the completion stops at its last end-of-turn
//!   token instead. A reward model reads its score at the completion's last
//!   token that is not padding, so this choice decides where (`\n` by default).
//! - Plain strings are tokenized as TRL does for non-conversational data:
//!   prompt and completion separately, concatenated, EOS appended to the
//!   completion. Exactly one BOS where the tokenizer wants one.
//! - Truncation is recorded in [`Truncation`], never silent.

use std::path::Path;

use crate::error::{DataError, Location, Result};
use crate::jsonl;
use crate::schema::{
    FieldMap, KtoRecord, Message, Preference, PromptRecord, Record, Role, Schema, SftRecord, Turns,
};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Which tokens carry loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrainOn {
    /// The completion of a prompt/completion record; every assistant turn of a
    /// conversation; every token of a `text` record.
    #[default]
    Completion,
    /// Every token (continued pre-training style).
    All,
}

/// Which end of an over-long sequence survives `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TruncationSide {
    /// Cut the end: the completion loses its tail (and EOS, recorded).
    #[default]
    KeepStart,
    /// Cut the prompt's start (after BOS) first, then the completion's start,
    /// so the completion's end and its EOS are kept.
    KeepEnd,
}

/// Where a conversational preference (or KTO) completion ends. String
/// completions end with EOS either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionEnd {
    /// Everything the chat template renders after the prompt: for ChatML
    /// `...<|im_end|>\n`. TRL's `DPOTrainer` and `RewardTrainer` take this
    /// span (`prompt+chosen` rendered, minus the rendered prompt), so log-probs
    /// and reward-model scores match theirs.
    #[default]
    Template,
    /// Through the last assistant turn's end-of-turn token; what the template
    /// renders after it (ChatML's `\n`) is left out.
    EndOfTurn,
}

impl CompletionEnd {
    /// The rule in one line, for `alignkit data inspect`.
    pub fn rule(self) -> &'static str {
        match self {
            Self::Template => {
                "completion = everything the chat template renders after the prompt (TRL's span; ChatML: through <|im_end|> and the newline after it)"
            }
            Self::EndOfTurn => {
                "completion = the response through its end-of-turn token (what the chat template renders after it is left out)"
            }
        }
    }
}

/// How string prompts/completions are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainText {
    /// As raw text, like TRL for non-conversational data.
    #[default]
    Raw,
    /// As a user message and an assistant message, through the chat template.
    Chat,
}

/// Tokenization settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodeConfig {
    /// Longest sequence (prompt + completion) in tokens.
    pub max_len: Option<usize>,
    /// Longest prompt in tokens; longer prompts keep their end.
    pub max_prompt_len: Option<usize>,
    pub truncation: TruncationSide,
    pub train_on: TrainOn,
    pub plain_text: PlainText,
    /// Where conversational preference and KTO completions end.
    pub completion_end: CompletionEnd,
    /// Template variables for the chat template (`apply_chat_template`'s
    /// keyword arguments, e.g. Qwen3's `enable_thinking`).
    pub template_kwargs: TemplateKwargs,
}

/// Variables a chat template is rendered with (a config's
/// `data.chat_template_kwargs`).
pub type TemplateKwargs = std::collections::BTreeMap<String, serde_json::Value>;

/// Token ids with a loss mask.
///
/// `loss_mask[t]` is true when token `t` is a training target, i.e. predicted
/// from tokens `..t`. A trainer shifts: logits at `t - 1` against `input_ids[t]`
/// where `loss_mask[t]`. Position 0 is never a target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sequence {
    pub input_ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of tokens that carry loss.
    pub fn trained(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// What truncation removed. `original_len` is the length before truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Truncation {
    pub original_len: usize,
    pub prompt_dropped: usize,
    pub completion_dropped: usize,
    /// A trained end-of-turn/EOS token was cut off.
    pub eos_dropped: bool,
}

impl Truncation {
    pub fn any(&self) -> bool {
        self.prompt_dropped > 0 || self.completion_dropped > 0
    }
}

/// A tokenized SFT example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftExample {
    pub tokens: Sequence,
    /// Tokens before the first trained token's turn (the prompt).
    pub prompt_len: usize,
    /// Every trained turn ends with an end-of-turn/EOS token (after truncation).
    pub has_eos: bool,
    pub truncation: Truncation,
}

/// A tokenized preference pair with a shared prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceExample {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
    pub chosen_has_eos: bool,
    pub rejected_has_eos: bool,
    pub chosen_truncation: Truncation,
    pub rejected_truncation: Truncation,
}

impl PreferenceExample {
    /// Prompt + chosen, loss on the chosen tokens.
    pub fn chosen(&self) -> Sequence {
        join(&self.prompt_ids, &self.chosen_ids)
    }

    /// Prompt + rejected, loss on the rejected tokens.
    pub fn rejected(&self) -> Sequence {
        join(&self.prompt_ids, &self.rejected_ids)
    }

    /// The one rule for a pair with nothing to learn, applied by `data validate` and by
    /// the reward and DPO loaders alike: chosen and rejected are the same tokens, as
    /// written or once truncation cut them. Every pairwise loss is constant on such a pair
    /// (Bradley-Terry and DPO see a margin of 0 whatever the weights). The error has no
    /// location yet; attach the record's with [`DataError::at`].
    pub fn check_distinct(&self) -> Result<()> {
        if self.chosen_ids != self.rejected_ids {
            return Ok(());
        }
        let cut = self.chosen_truncation.completion_dropped > 0
            || self.rejected_truncation.completion_dropped > 0;
        Err(DataError::example(
            None,
            format!(
                "`chosen` and `rejected` are identical{}; remove the pair or fix the data",
                if cut {
                    " after truncation to max_len"
                } else {
                    ""
                }
            ),
        ))
    }
}

/// A tokenized prompt, ready for generation (ends with the generation prompt
/// for chat data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptExample {
    pub prompt_ids: Vec<u32>,
    pub truncation: Truncation,
}

impl PromptExample {
    pub fn sequence(&self) -> Sequence {
        Sequence {
            input_ids: self.prompt_ids.clone(),
            loss_mask: vec![false; self.prompt_ids.len()],
        }
    }
}

/// A tokenized KTO example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtoExample {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub label: bool,
    pub has_eos: bool,
    pub truncation: Truncation,
}

impl KtoExample {
    pub fn sequence(&self) -> Sequence {
        join(&self.prompt_ids, &self.completion_ids)
    }
}

fn join(prompt: &[u32], completion: &[u32]) -> Sequence {
    let mut input_ids = prompt.to_vec();
    input_ids.extend_from_slice(completion);
    let mut loss_mask = vec![false; prompt.len()];
    loss_mask.extend(std::iter::repeat_n(true, completion.len()));
    if let Some(first) = loss_mask.first_mut() {
        *first = false;
    }
    Sequence {
        input_ids,
        loss_mask,
    }
}

/// An example with where it came from and its content digest (for splits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded<E> {
    pub at: Location,
    pub digest: [u8; 32],
    pub example: E,
}

/// A trained span `[start, end)` of one assistant turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    has_eot: bool,
}

/// Turns records into examples with one tokenizer, template and config.
pub struct Encoder {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    config: EncodeConfig,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("tokenizer", &self.tokenizer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Compiles the tokenizer's chat template, if it has one.
    pub fn new(tokenizer: Tokenizer, config: EncodeConfig) -> Result<Self> {
        if config.max_len.is_some_and(|n| n < 2) {
            return Err(DataError::config("max_len must be at least 2 tokens"));
        }
        if config.max_prompt_len == Some(0) {
            return Err(DataError::config("max_prompt_len must be at least 1 token"));
        }
        let template = match tokenizer.chat_template() {
            Some(src) => Some(ChatTemplate::new(
                src,
                tokenizer.config(),
                &config.template_kwargs,
            )?),
            None => None,
        };
        Ok(Self {
            tokenizer,
            template,
            config,
        })
    }

    /// Render with `strftime_now` reading this instant (Unix seconds), not
    /// the clock: [`ChatTemplate::with_clock`].
    pub fn with_clock(mut self, unix_secs: i64) -> Self {
        self.template = self.template.map(|t| t.with_clock(unix_secs));
        self
    }

    /// Load the tokenizer of a model directory and build an encoder.
    pub fn from_dir(dir: impl AsRef<Path>, config: EncodeConfig) -> Result<Self> {
        Self::new(Tokenizer::from_dir(dir)?, config)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn config(&self) -> &EncodeConfig {
        &self.config
    }

    /// Render a conversation with the chat template.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        match &self.template {
            Some(t) => t.render(messages, add_generation_prompt),
            None => Err(DataError::example(
                None,
                "the model has no chat template (no chat_template.jinja, no `chat_template` in tokenizer_config.json)",
            )),
        }
    }

    /// Token ids of a rendered conversation (what transformers'
    /// `apply_chat_template(tokenize=True)` gives), with the BOS policy applied.
    pub fn chat_ids(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let text = self.render(messages, add_generation_prompt)?;
        let mut ids = self.tokenizer.encode_raw(&text)?;
        self.tokenizer.ensure_bos(&mut ids);
        Ok(ids)
    }

    /// Whether `prompt` is rendered through the chat template (a message
    /// list, or a string with `PlainText::Chat`).
    pub fn is_chat(&self, prompt: &Turns) -> bool {
        self.as_messages(prompt, None).is_some()
    }

    /// What the chat template renders after an assistant turn's end-of-turn
    /// token (ChatML: the newline after `<|im_end|>`): the tokens a
    /// [`CompletionEnd::Template`] sequence ends with after a generated reply.
    /// Empty without a chat template.
    pub fn turn_trailer(&self) -> Vec<u32> {
        let turn = [
            Message::new(Role::User, "?".to_string()),
            Message::new(Role::Assistant, "!".to_string()),
        ];
        let Ok(ids) = self.chat_ids(&turn, false) else {
            return Vec::new();
        };
        self.after_last_end_of_turn(&ids).to_vec()
    }

    /// The tokens after the last end-of-turn token of `ids`; none without one.
    fn after_last_end_of_turn<'a>(&self, ids: &'a [u32]) -> &'a [u32] {
        match ids.iter().rposition(|&i| self.tokenizer.is_end_of_turn(i)) {
            Some(j) => &ids[j + 1..],
            None => &[],
        }
    }

    fn as_messages(&self, prompt: &Turns, completion: Option<&Turns>) -> Option<Vec<Message>> {
        let mut out = Vec::new();
        match prompt {
            Turns::Messages(m) => out.extend(m.iter().cloned()),
            Turns::Text(t) if self.config.plain_text == PlainText::Chat => {
                out.push(Message::new(Role::User, t.clone()))
            }
            Turns::Text(_) => return None,
        }
        match completion {
            None => {}
            Some(Turns::Messages(m)) => out.extend(m.iter().cloned()),
            Some(Turns::Text(t)) => out.push(Message::new(Role::Assistant, t.clone())),
        }
        Some(out)
    }

    /// Ids of `messages` and the trained span of every assistant turn at index
    /// `from` or later, each boundary checked in token space.
    fn assistant_spans(&self, messages: &[Message], from: usize) -> Result<(Vec<u32>, Vec<Span>)> {
        if let Some(tracked) = self.generation_spans(messages, from)? {
            return Ok(tracked);
        }
        let full = self.chat_ids(messages, false)?;
        let last = messages.len() - 1;
        let mut spans = Vec::new();
        for (i, msg) in messages.iter().enumerate().skip(from) {
            if msg.role != Role::Assistant {
                continue;
            }
            let before = self.chat_ids(&messages[..i], true)?;
            self.check_prefix(&before, &full, messages, i, true)?;
            let through = if i == last {
                full.clone()
            } else {
                self.chat_ids(&messages[..=i], false)?
            };
            let start = before.len();
            if through.len() <= start {
                return Err(DataError::example(
                    Some(&format!("messages[{i}]")),
                    "the chat template renders nothing for this assistant turn",
                ));
            }
            // The turn ends at its last end-of-turn token. What the template
            // renders after the turn may change once a later turn follows
            // (Phi-3 closes a conversation with EOS where a turn that others
            // follow has none), so the conversation through the turn must
            // agree with the whole only through that token.
            let agree = through
                .iter()
                .zip(&full)
                .take_while(|(a, b)| a == b)
                .count();
            let eot = (start..agree)
                .rev()
                .find(|&j| self.tokenizer.is_end_of_turn(through[j]));
            let end = match eot {
                Some(j) => j + 1,
                None if agree == through.len() => through.len(),
                None => return Err(self.prefix_error(&through, &full, messages, i, false)),
            };
            spans.push(Span {
                start,
                end,
                has_eot: eot.is_some(),
            });
        }
        Ok((full, spans))
    }

    /// [`Self::assistant_spans`] from the template's `{% generation %}`
    /// blocks, the k-th block the k-th assistant turn's; `None` without
    /// such blocks.
    fn generation_spans(
        &self,
        messages: &[Message],
        from: usize,
    ) -> Result<Option<(Vec<u32>, Vec<Span>)>> {
        let Some(template) = &self.template else {
            return Ok(None);
        };
        let Some((text, blocks)) = template.render_tracked(messages)? else {
            return Ok(None);
        };
        let assistant: Vec<usize> = (messages.iter().enumerate())
            .filter(|(_, m)| m.role == Role::Assistant)
            .map(|(i, _)| i)
            .collect();
        if blocks.len() != assistant.len() {
            return Err(DataError::example(
                Some("messages"),
                format!(
                    "the chat template marks {} generation blocks for {} assistant turns",
                    blocks.len(),
                    assistant.len()
                ),
            ));
        }
        let (mut ids, mut offsets) = self.tokenizer.encode_with_offsets(&text)?;
        let before = ids.len();
        self.tokenizer.ensure_bos(&mut ids);
        match ids.len() as isize - before as isize {
            1 => offsets.insert(0, (0, 0)),
            0 => {}
            n => {
                offsets.drain(..(-n) as usize);
            }
        }
        let mut spans = Vec::new();
        for (block, &i) in blocks.iter().zip(&assistant) {
            if i < from || block.is_empty() {
                continue;
            }
            // The tokens holding the block's first and last bytes.
            let holding = |byte: usize| offsets.iter().position(|&(s, e)| s <= byte && byte < e);
            let (Some(start), Some(last)) = (holding(block.start), holding(block.end - 1)) else {
                return Err(DataError::example(
                    Some(&format!("messages[{i}]")),
                    "its generation block is not in the tokenized conversation",
                ));
            };
            spans.push(Span {
                start,
                end: last + 1,
                has_eot: (start..=last).any(|j| self.tokenizer.is_end_of_turn(ids[j])),
            });
        }
        Ok(Some((ids, spans)))
    }

    fn check_prefix(
        &self,
        part: &[u32],
        full: &[u32],
        messages: &[Message],
        i: usize,
        generation_prompt: bool,
    ) -> Result<()> {
        if full.starts_with(part) {
            return Ok(());
        }
        Err(self.prefix_error(part, full, messages, i, generation_prompt))
    }

    /// Why `part` (the conversation before or through `messages[i]`) is not
    /// a token prefix of `full`.
    fn prefix_error(
        &self,
        part: &[u32],
        full: &[u32],
        messages: &[Message],
        i: usize,
        generation_prompt: bool,
    ) -> DataError {
        let k = part.iter().zip(full).take_while(|(a, b)| a == b).count();
        let show = |ids: &[u32]| match ids.get(k) {
            Some(&id) => format!("{id} {:?}", self.tokenizer.token_text(id)),
            None => "nothing".to_owned(),
        };
        let what = if generation_prompt {
            "the conversation before it, rendered with add_generation_prompt=True,"
        } else {
            "the conversation through it"
        };
        let hint = if generation_prompt
            && messages[i].content.starts_with(|c: char| c.is_whitespace())
        {
            "; the response starts with whitespace, which the tokenizer merges with the end of the generation prompt (strip it)"
        } else {
            "; the chat template renders earlier turns differently once a later turn follows"
        };
        DataError::example(
            Some(&format!("messages[{i}]")),
            format!(
                "prompt/completion boundary not in token space: {what} is not a token prefix of the whole conversation (at token {k}: {} vs {}){hint}",
                show(part),
                show(full),
            ),
        )
    }

    /// Tokenize an SFT record.
    pub fn sft(&self, record: &SftRecord) -> Result<SftExample> {
        let tok = &self.tokenizer;
        let (ids, trained, prompt_len, has_eos) = match record {
            SftRecord::Text(text) => {
                let mut ids = tok.encode(text, true)?;
                self.push_eos(&mut ids);
                let bos = self.bos_len(&ids);
                let n = ids.len();
                (ids, vec![true; n], bos, true)
            }
            SftRecord::PromptCompletion { prompt, completion } => {
                match self.as_messages(prompt, Some(completion)) {
                    Some(messages) => {
                        let from = messages.len() - completion_len(completion);
                        self.chat_example(&messages, from)?
                    }
                    None => {
                        let (Turns::Text(p), Turns::Text(c)) = (prompt, completion) else {
                            unreachable!("schema guarantees both are strings here")
                        };
                        let prompt_ids = self.text_prompt(p)?;
                        let completion_ids = self.text_completion(c)?;
                        let n = prompt_ids.len();
                        let mut ids = prompt_ids;
                        ids.extend(completion_ids);
                        let mut trained = vec![self.config.train_on == TrainOn::All; n];
                        trained.resize(ids.len(), true);
                        (ids, trained, n, true)
                    }
                }
            }
            SftRecord::Messages(messages) => self.chat_example(messages, 0)?,
        };
        let mut ex = SftExample {
            tokens: Sequence {
                input_ids: ids,
                loss_mask: trained,
            },
            prompt_len,
            has_eos,
            truncation: Truncation::default(),
        };
        self.truncate_sft(&mut ex);
        Ok(ex)
    }

    /// (ids, trained mask, prompt length, every span has an end-of-turn token)
    fn chat_example(
        &self,
        messages: &[Message],
        from: usize,
    ) -> Result<(Vec<u32>, Vec<bool>, usize, bool)> {
        if self.config.train_on == TrainOn::All {
            let ids = self.chat_ids(messages, false)?;
            let has_eos = ids.iter().any(|&i| self.tokenizer.is_end_of_turn(i));
            let n = ids.len();
            let bos = self.bos_len(&ids);
            return Ok((ids, vec![true; n], bos, has_eos));
        }
        let (ids, spans) = self.assistant_spans(messages, from)?;
        let Some(first) = spans.first() else {
            return Err(DataError::example(
                Some("messages"),
                "no assistant message to train on",
            ));
        };
        let mut trained = vec![false; ids.len()];
        for s in &spans {
            trained[s.start..s.end].fill(true);
        }
        Ok((ids, trained, first.start, spans.iter().all(|s| s.has_eot)))
    }

    fn bos_len(&self, ids: &[u32]) -> usize {
        match self.tokenizer.bos() {
            Some(b) if self.tokenizer.adds_bos() && ids.first() == Some(&b.id) => 1,
            _ => 0,
        }
    }

    fn push_eos(&self, ids: &mut Vec<u32>) {
        if let Some(eos) = self.tokenizer.eos()
            && !ids
                .last()
                .is_some_and(|&l| self.tokenizer.is_end_of_turn(l))
        {
            ids.push(eos.id);
        }
    }

    /// A raw-text prompt: BOS if wanted, never EOS.
    fn text_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode_raw(prompt)?;
        self.tokenizer.ensure_bos(&mut ids);
        Ok(ids)
    }

    /// A raw-text completion: its tokens and EOS.
    fn text_completion(&self, completion: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode_raw(completion)?;
        self.push_eos(&mut ids);
        Ok(ids)
    }

    /// Prompt ids and the completion ids of a prompt + completion pair: for
    /// a conversation everything rendered after the prompt, or through the
    /// last end-of-turn token ([`CompletionEnd`]).
    fn prompt_completion(
        &self,
        prompt: &Turns,
        completion: &Turns,
    ) -> Result<(Vec<u32>, Vec<u32>, bool)> {
        match self.as_messages(prompt, Some(completion)) {
            Some(messages) => {
                let from = messages.len() - completion_len(completion);
                let (ids, spans) = self.assistant_spans(&messages, from)?;
                let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
                    return Err(DataError::example(
                        None,
                        "no assistant message in the response",
                    ));
                };
                let end = match self.config.completion_end {
                    CompletionEnd::Template => ids.len(),
                    CompletionEnd::EndOfTurn => last.end,
                };
                Ok((
                    ids[..first.start].to_vec(),
                    ids[first.start..end].to_vec(),
                    spans.iter().all(|s| s.has_eot),
                ))
            }
            None => {
                let (Turns::Text(p), Turns::Text(c)) = (prompt, completion) else {
                    unreachable!("schema guarantees both are strings here")
                };
                Ok((self.text_prompt(p)?, self.text_completion(c)?, true))
            }
        }
    }

    /// Tokenize a preference pair. Chosen and rejected share the prompt ids.
    pub fn preference(&self, pair: &Preference) -> Result<PreferenceExample> {
        let (prompt_c, chosen, chosen_eos) = self
            .prompt_completion(&pair.prompt, &pair.chosen)
            .map_err(|e| field(e, "chosen"))?;
        let (prompt_r, rejected, rejected_eos) = self
            .prompt_completion(&pair.prompt, &pair.rejected)
            .map_err(|e| field(e, "rejected"))?;
        if prompt_c != prompt_r {
            return Err(DataError::example(
                Some("prompt"),
                "the prompt tokenizes differently before `chosen` and before `rejected`",
            ));
        }
        let mut ex = PreferenceExample {
            prompt_ids: prompt_c,
            chosen_ids: chosen,
            rejected_ids: rejected,
            chosen_has_eos: chosen_eos,
            rejected_has_eos: rejected_eos,
            chosen_truncation: Truncation::default(),
            rejected_truncation: Truncation::default(),
        };
        self.truncate_pair(&mut ex);
        Ok(ex)
    }

    /// Tokenize a prompt for generation.
    pub fn prompt(&self, record: &PromptRecord) -> Result<PromptExample> {
        let mut ids = match self.as_messages(&record.prompt, None) {
            Some(messages) => self.chat_ids(&messages, true)?,
            None => {
                let Turns::Text(p) = &record.prompt else {
                    unreachable!("as_messages returns None only for text")
                };
                self.text_prompt(p)?
            }
        };
        let bos = self.bos_len(&ids);
        let mut t = Truncation {
            original_len: ids.len(),
            ..Default::default()
        };
        let limit = match (self.config.max_prompt_len, self.config.max_len) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(limit) = limit {
            t.prompt_dropped = drop_prompt_start(&mut ids, None, bos, limit);
        }
        Ok(PromptExample {
            prompt_ids: ids,
            truncation: t,
        })
    }

    /// Tokenize a KTO record.
    pub fn kto(&self, record: &KtoRecord) -> Result<KtoExample> {
        let (prompt_ids, completion_ids, has_eos) =
            self.prompt_completion(&record.prompt, &record.completion)?;
        let mut pair = PreferenceExample {
            prompt_ids,
            chosen_ids: completion_ids,
            rejected_ids: Vec::new(),
            chosen_has_eos: has_eos,
            rejected_has_eos: true,
            chosen_truncation: Truncation::default(),
            rejected_truncation: Truncation::default(),
        };
        self.truncate_pair(&mut pair);
        Ok(KtoExample {
            prompt_ids: pair.prompt_ids,
            completion_ids: pair.chosen_ids,
            label: record.label,
            has_eos: pair.chosen_has_eos,
            truncation: pair.chosen_truncation,
        })
    }

    fn truncate_sft(&self, ex: &mut SftExample) {
        let ids = &mut ex.tokens.input_ids;
        let mask = &mut ex.tokens.loss_mask;
        let t = &mut ex.truncation;
        t.original_len = ids.len();
        let bos = self.bos_len(ids);
        if let Some(mp) = self.config.max_prompt_len
            && ex.prompt_len > mp.max(bos)
        {
            let mut prompt: Vec<u32> = ids[..ex.prompt_len].to_vec();
            let mut pmask: Vec<bool> = mask[..ex.prompt_len].to_vec();
            let n = drop_prompt_start(&mut prompt, Some(&mut pmask), bos, mp);
            ids.splice(..ex.prompt_len, prompt);
            mask.splice(..ex.prompt_len, pmask);
            ex.prompt_len -= n;
            t.prompt_dropped += n;
        }
        if let Some(ml) = self.config.max_len
            && ids.len() > ml
        {
            match self.config.truncation {
                TruncationSide::KeepStart => {
                    t.prompt_dropped += ex.prompt_len.saturating_sub(ml);
                    t.completion_dropped += ids.len() - ml.max(ex.prompt_len);
                    ids.truncate(ml);
                    mask.truncate(ml);
                    ex.prompt_len = ex.prompt_len.min(ml);
                }
                TruncationSide::KeepEnd => {
                    let mut need = ids.len() - ml;
                    let from_prompt = need.min(ex.prompt_len.saturating_sub(bos));
                    ids.drain(bos..bos + from_prompt);
                    mask.drain(bos..bos + from_prompt);
                    ex.prompt_len -= from_prompt;
                    t.prompt_dropped += from_prompt;
                    need -= from_prompt;
                    if need > 0 {
                        let range = ex.prompt_len..ex.prompt_len + need;
                        ids.drain(range.clone());
                        mask.drain(range);
                        t.completion_dropped += need;
                    }
                }
            }
        }
        if let Some(first) = mask.first_mut() {
            *first = false;
        }
        if t.any() {
            // Recorded when truncation leaves a trained turn without its
            // end-of-turn token (or leaves nothing to train on).
            let after = self.runs_end_with_eot(ids, mask);
            t.eos_dropped = ex.has_eos && !after;
            ex.has_eos = after;
        }
    }

    /// Every maximal run of trained tokens ends with an end-of-turn token,
    /// and there is at least one.
    fn runs_end_with_eot(&self, ids: &[u32], mask: &[bool]) -> bool {
        let mut any = false;
        for j in 0..ids.len() {
            let run_ends = mask[j] && mask.get(j + 1) != Some(&true);
            if run_ends {
                any = true;
                if !self.tokenizer.is_end_of_turn(ids[j]) {
                    return false;
                }
            }
        }
        any
    }

    fn truncate_pair(&self, ex: &mut PreferenceExample) {
        let bos = self.bos_len(&ex.prompt_ids);
        let p0 = ex.prompt_ids.len();
        ex.chosen_truncation.original_len = p0 + ex.chosen_ids.len();
        ex.rejected_truncation.original_len = p0 + ex.rejected_ids.len();
        let mut dropped = 0;
        if let Some(mp) = self.config.max_prompt_len {
            dropped += drop_prompt_start(&mut ex.prompt_ids, None, bos, mp);
        }
        if let Some(ml) = self.config.max_len {
            let longest = ex.chosen_ids.len().max(ex.rejected_ids.len());
            if self.config.truncation == TruncationSide::KeepEnd
                && ex.prompt_ids.len() + longest > ml
            {
                let want = ml.saturating_sub(longest).max(bos);
                dropped += drop_prompt_start(&mut ex.prompt_ids, None, bos, want);
            }
            let keep_start = self.config.truncation == TruncationSide::KeepStart;
            if keep_start && ex.prompt_ids.len() > ml {
                // As for SFT: the sequence's start survives, the completions do not.
                dropped += ex.prompt_ids.len() - ml;
                ex.prompt_ids.truncate(ml);
            }
            let room = ml.saturating_sub(ex.prompt_ids.len());
            for (ids, t, has_eos) in [
                (
                    &mut ex.chosen_ids,
                    &mut ex.chosen_truncation,
                    &mut ex.chosen_has_eos,
                ),
                (
                    &mut ex.rejected_ids,
                    &mut ex.rejected_truncation,
                    &mut ex.rejected_has_eos,
                ),
            ] {
                if ids.len() > room {
                    // What the template renders after the last end-of-turn
                    // token (ChatML's newline; nothing with `EndOfTurn`).
                    let trailer = self.after_last_end_of_turn(ids).to_vec();
                    let n = ids.len() - room;
                    let range = if keep_start { room..ids.len() } else { 0..n };
                    ids.drain(range);
                    t.completion_dropped = n;
                    // The kept tokens still end a turn (before the trailer, when it survived).
                    let kept: &[u32] = ids;
                    let body = kept.strip_suffix(trailer.as_slice()).unwrap_or(kept);
                    let after = body
                        .last()
                        .is_some_and(|&i| self.tokenizer.is_end_of_turn(i));
                    t.eos_dropped = *has_eos && !after;
                    *has_eos = after;
                }
            }
        }
        ex.chosen_truncation.prompt_dropped = dropped;
        ex.rejected_truncation.prompt_dropped = dropped;
    }

    /// Read and tokenize every SFT record of a file; stops at the first error
    /// (`alignkit data validate` lists them all).
    pub fn encode_sft_file(
        &self,
        path: impl AsRef<Path>,
        fields: &FieldMap,
    ) -> Result<Vec<Encoded<SftExample>>> {
        self.encode_file::<SftRecord, _>(path, fields, |r| self.sft(r))
    }

    /// Read and tokenize every preference pair of a file.
    pub fn encode_preference_file(
        &self,
        path: impl AsRef<Path>,
        fields: &FieldMap,
    ) -> Result<Vec<Encoded<PreferenceExample>>> {
        self.encode_file::<Preference, _>(path, fields, |r| self.preference(r))
    }

    /// Read and tokenize every prompt of a file.
    pub fn encode_prompt_file(
        &self,
        path: impl AsRef<Path>,
        fields: &FieldMap,
    ) -> Result<Vec<Encoded<PromptExample>>> {
        self.encode_file::<PromptRecord, _>(path, fields, |r| self.prompt(r))
    }

    /// Read all records (stopping at the first bad one), then tokenize them
    /// on all cores; the order of the file is kept.
    fn encode_file<T: Schema + Sync, E: Send>(
        &self,
        path: impl AsRef<Path>,
        fields: &FieldMap,
        f: impl Fn(&T) -> Result<E> + Sync,
    ) -> Result<Vec<Encoded<E>>> {
        let records: Vec<Record<T>> = jsonl::read::<T>(path, fields)?.collect::<Result<_>>()?;
        let encode = |rec: &Record<T>| -> Result<Encoded<E>> {
            Ok(Encoded {
                at: rec.at.clone(),
                digest: rec.digest,
                example: f(&rec.value).map_err(|e| e.at(&rec.at))?,
            })
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = records.len().div_ceil(threads).max(256);
        std::thread::scope(|scope| {
            let handles: Vec<_> = records
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || part.iter().map(encode).collect::<Result<Vec<_>>>())
                })
                .collect();
            let mut out = Vec::with_capacity(records.len());
            for h in handles {
                match h.join() {
                    Ok(part) => out.extend(part?),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok(out)
        })
    }
}

fn completion_len(completion: &Turns) -> usize {
    match completion {
        Turns::Messages(m) => m.len(),
        Turns::Text(_) => 1,
    }
}

/// Name `name` as the field of an example error that names none or a
/// `messages[i]` of the joined conversation.
fn field(e: DataError, name: &str) -> DataError {
    match e {
        DataError::Example { at, field, reason } => DataError::Example {
            at,
            field: Some(match field {
                Some(f) => format!("{name} ({f} of the joined conversation)"),
                None => name.to_owned(),
            }),
            reason,
        },
        other => other,
    }
}

/// Keep the BOS (first `bos` tokens) and the last `limit - bos` prompt tokens.
/// Returns how many were dropped.
fn drop_prompt_start(
    ids: &mut Vec<u32>,
    mask: Option<&mut Vec<bool>>,
    bos: usize,
    limit: usize,
) -> usize {
    let limit = limit.max(bos);
    if ids.len() <= limit {
        return 0;
    }
    let n = ids.len() - limit;
    ids.drain(bos..bos + n);
    if let Some(m) = mask {
        m.drain(bos..bos + n);
    }
    n
}
