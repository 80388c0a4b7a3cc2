//! alignkit-datasets: TRL-compatible JSON Lines in, token-level training
//! examples out. No burn: every output is a plain `Vec<u32>` / `Vec<bool>` /
//! `Vec<i64>` that the trainers turn into tensors.
//!
//! ```text
//! JSONL ──jsonl::read──► Record<SftRecord | Preference | PromptRecord | KtoRecord>
//!       ──Encoder──────► SftExample / PreferenceExample / PromptExample (ids + loss masks)
//!       ──split────────► train / validation / test (by content hash)
//!       ──batch────────► Batch (padded) or PackedRow (packed, segment + position ids)
//! ```
//!
//! - [`schema`]: record types; errors name `FILE:LINE` and the field.
//! - [`jsonl`]: streaming reader (one line in memory at a time).
//! - [`tokenizer`]: `tokenizer.json` + `tokenizer_config.json` conventions (BOS/EOS,
//!   chat template, generation config).
//! - [`template`]: chat templates rendered with minijinja as transformers renders them
//!   with Jinja2.
//! - [`encode`]: prompt/completion boundaries in token space, assistant-only loss masks
//!   covering every assistant turn, EOS in the loss, exactly one BOS, recorded truncation;
//!   preference completions end where TRL's do ([`CompletionEnd`]: everything the chat
//!   template renders after the prompt, or through the end-of-turn token).
//! - [`split`], [`batch`]: deterministic splits, padding, length grouping, packing.
//! - [`validate`], [`inspect`]: what `alignkit data validate|inspect` report.

pub mod batch;
pub mod encode;
pub mod error;
pub mod inspect;
pub mod jsonl;
pub mod schema;
pub mod split;
pub mod template;
pub mod tokenizer;
pub mod validate;

pub use batch::{
    Batch, PackedRow, PaddingSide, collate, collate_packed, collate_pairs, length_grouped_batches,
    pack, shuffled_batches,
};
pub use encode::{
    CompletionEnd, EncodeConfig, Encoded, Encoder, KtoExample, PlainText, PreferenceExample,
    PromptExample, Sequence, SftExample, TemplateKwargs, TrainOn, Truncation, TruncationSide,
};
pub use error::{DataError, Location};
pub use inspect::{InspectSection, InspectToken, Inspection, inspect};
pub use jsonl::{AnyRecords, JsonlReader, Records, read, read_any, read_from};
pub use schema::{
    AnyRecord, DataKind, FieldMap, KtoRecord, Message, Preference, PromptRecord, Record, Role,
    Schema, SftRecord, Turns,
};
pub use split::{Split, SplitConfig, SplitSets};
pub use template::{ChatTemplate, Tools};
pub use tokenizer::{SpecialToken, Tokenizer, TokenizerConfig};
pub use validate::{Finding, Histogram, ValidateOptions, ValidationReport, validate};
