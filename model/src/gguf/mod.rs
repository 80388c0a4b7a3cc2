//! GGUF import: read llama.cpp's GGUF files and turn a `llama`, `qwen2`, `qwen3`, `olmo2`, `gemma3`,
//! `phi3` or `smollm3` model into a Hugging Face directory.
//!
//! - [`reader`]: the container (header, metadata, tensor infos, memory-mapped data), GGUF v2 and v3.
//!   See: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//! - [`dequant`]: ggml block formats to f32 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//!   Q5_K, Q6_K), following `dequantize_row_*` in ggml's `ggml-quants.c`.
//! - [`arch`]: per architecture ([`Arch`]), GGUF → HF tensor names and shapes, the inverse of what
//!   llama.cpp's converter did to the weights (q/k row permutation, Gemma's norm + 1), and
//!   `config.json` from the `<arch>.*` metadata (and Phi-3's LongRoPE factor tensors).
//! - [`tokenizer`]: `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` from the
//!   `tokenizer.ggml.*` metadata (byte-level BPE, `tokenizer.ggml.model == "gpt2"`; Gemma's and
//!   Phi-3's SentencePiece BPE, `"llama"`).
//! - [`import`]: [`import_gguf`], which writes the whole HF directory atomically.
//!
//! This module depends on nothing else in the crate (no burn): it only produces files and f32 buffers.

pub mod arch;
pub mod dequant;
pub mod import;
pub mod reader;
#[cfg(test)]
mod testing;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use arch::{Arch, HfTensor, LongRope, ModelParams, SlidingWindow};
pub use import::{
    ImportProgress, ImportReport, import_gguf, import_gguf_with_progress, write_safetensors,
};
pub use reader::{GgmlType, GgufFile, GgufValue, TensorInfo};
pub use tokenizer::{PreTokenizer, TokenizerFiles, tokenizer_files};

/// Everything that can go wrong reading a GGUF file or importing it. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file (starts with {found:?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: String },
    #[error("{}: GGUF version {version} is not supported (only versions 2 and 3)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{}: file is truncated: {what} needs bytes {start}..{end} but the file has {len} bytes",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: tensor {tensor} has type {ty} which is not supported", path.display())]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{}: metadata key {key} is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key {key} is {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}: no tensor named {name}", path.display())]
    NoSuchTensor { path: PathBuf, name: String },
    #[error("{}: tensor {tensor}: {what}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{}: {what} is not supported", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{}: output directory already exists and is not empty", dir.display())]
    OutputExists { dir: PathBuf },
}

impl GgufError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(path: &Path, what: impl Into<String>) -> Self {
        GgufError::Malformed {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> Self {
        GgufError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    pub(crate) fn bad_tensor(path: &Path, tensor: &str, what: impl Into<String>) -> Self {
        GgufError::BadTensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            what: what.into(),
        }
    }
}
