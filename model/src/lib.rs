//! alignkit-model: a Llama-family decoder (Llama 2/3, SmolLM2, Mistral, Qwen2,
//! Qwen3, SmolLM3, OLMo 2, Gemma 3) on burn, with Hugging Face checkpoint I/O, per-token log-probs, KV-cached
//! generation and GGUF import.
//!
//! Shape letters used in every `Shapes:` line:
//! B batch, T new tokens (query length), S keys (cached + new), C hidden size,
//! H query heads, K key/value heads, G = H / K, D head dim, F MLP width,
//! V vocabulary size.

mod adapter;
mod by_type;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod error;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod heads;
pub mod logprobs;
pub mod lora;
pub mod mask;
pub mod parity;
pub mod precision;
pub mod quant;
pub mod transformer;

pub use cache::KvCache;
pub use checkpoint::{SaveDtype, load_model, save_model};
pub use config::{LlamaConfig, ModelType};
pub use error::ModelError;
pub use generate::{FinishReason, Generation, Sampled, SamplingConfig, generate, sample};
pub use transformer::recompute;
pub use transformer::{DecodePanels, ForwardInput, LlamaForCausalLM};
