//! alignkit-datasets: JSONL schemas, tokenizer, chat templates, loss masks,
//! splits, batching and packing. No burn: every output is plain `Vec<u32>`.

pub mod schema;

pub use schema::{Message, Role, Turns};
