//! Test helpers: fixture paths, scratch directories, and a small in-memory GGUF writer for files
//! the fixtures do not cover (broken headers, odd types, other tokenizers).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::arch::Arch;
use super::reader::{GgmlType, GgufValue};

/// `model/tests/fixtures/gguf/<name>`, written by `scripts/fixtures_gguf.py`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

/// A fresh, not yet existing path under the system temp dir; removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!(
            "alignkit-gguf-test-{}-{tag}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create scratch dir");
        ScratchDir(root)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Little-endian f32 values of a byte buffer.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| f32::from_le_bytes(*b))
        .collect()
}

/// Writes GGUF files byte by byte, following the spec, with knobs to break them.
#[derive(Clone)]
pub struct GgufBuilder {
    pub magic: [u8; 4],
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, GgufValue)>,
    /// (name, type id, ggml dims, data); offsets are assigned in order, aligned.
    pub tensors: Vec<(String, u32, Vec<u64>, Vec<u8>)>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            magic: *b"GGUF",
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

fn type_id(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.extend(x.to_le_bytes()),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(items) => {
            out.extend(items.first().map_or(0, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

impl GgufBuilder {
    pub fn kv(mut self, key: &str, value: GgufValue) -> Self {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.to_string(), value));
        self
    }

    pub fn str(self, key: &str, value: &str) -> Self {
        self.kv(key, GgufValue::String(value.to_string()))
    }

    pub fn u32(self, key: &str, value: u32) -> Self {
        self.kv(key, GgufValue::U32(value))
    }

    pub fn strs(self, key: &str, values: &[&str]) -> Self {
        let items = values
            .iter()
            .map(|s| GgufValue::String(s.to_string()))
            .collect();
        self.kv(key, GgufValue::Array(items))
    }

    pub fn raw_tensor(mut self, name: &str, ty: GgmlType, dims: &[u64], data: Vec<u8>) -> Self {
        let id = (0..64)
            .find(|&i| GgmlType::from_id(i) == Some(ty))
            .expect("known type");
        self.tensors.retain(|(n, ..)| n != name);
        self.tensors
            .push((name.to_string(), id, dims.to_vec(), data));
        self
    }

    /// An F32 tensor with ggml dims `dims` and values `f(i)`.
    pub fn f32_tensor(self, name: &str, dims: &[u64], f: impl Fn(usize) -> f32) -> Self {
        let n: u64 = dims.iter().product();
        let data = (0..n as usize).flat_map(|i| f(i).to_le_bytes()).collect();
        self.raw_tensor(name, GgmlType::F32, dims, data)
    }

    pub fn without_tensor(mut self, name: &str) -> Self {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(self.magic);
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            put_str(&mut out, k);
            out.extend(type_id(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let align = |x: u64| x.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0u64;
        for (name, id, dims, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = align(offset + data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend(data);
            out.resize(align(out.len() as u64) as usize, 0);
        }
        out
    }

    /// A minimal valid `llama` model (hidden 8, 2 heads of 4, 1 KV head, ffn 16, 1 layer, vocab 6)
    /// with a byte-level tokenizer; tests change one thing and expect one error.
    pub fn tiny_llama() -> Self {
        Self::tiny(Arch::Llama)
    }

    /// [`GgufBuilder::tiny_llama`]'s model as `arch` writes it: its metadata prefix, its norms,
    /// Qwen2's q/k/v biases, Qwen3's and Gemma 3's per-head q/k norms, OLMo 2's whole ones, Gemma 3's
    /// sliding window of 4, Phi-3's fused `attn_qkv` / `ffn_up` and original context (no window, no
    /// LongRoPE factors).
    pub fn tiny(arch: Arch) -> Self {
        let (h, ffn, kv, v, d) = (8u64, 16u64, 4u64, 6u64, 4u64);
        let a = arch.gguf_name();
        let key = |k: &str| format!("{a}.{k}");
        let mut b = GgufBuilder::default()
            .str("general.architecture", a)
            .u32(&key("block_count"), 1)
            .u32(&key("context_length"), 64)
            .u32(&key("embedding_length"), h as u32)
            .u32(&key("feed_forward_length"), ffn as u32)
            .u32(&key("attention.head_count"), 2)
            .u32(&key("attention.head_count_kv"), 1)
            .kv(
                &key("attention.layer_norm_rms_epsilon"),
                GgufValue::F32(1e-5),
            )
            .str("tokenizer.ggml.model", "gpt2")
            .str("tokenizer.ggml.pre", "gpt2")
            .strs(
                "tokenizer.ggml.tokens",
                &["<s>", "</s>", "a", "b", "ab", "Ġ"],
            )
            .kv(
                "tokenizer.ggml.token_type",
                GgufValue::Array([3, 3, 1, 1, 1, 1].map(GgufValue::I32).to_vec()),
            )
            .strs("tokenizer.ggml.merges", &["a b"])
            .u32("tokenizer.ggml.bos_token_id", 0)
            .u32("tokenizer.ggml.eos_token_id", 1);
        if arch == Arch::Gemma3 {
            b = b
                .u32(&key("attention.key_length"), d as u32)
                .u32(&key("attention.value_length"), d as u32)
                .u32(&key("attention.sliding_window"), 4);
        }
        if arch == Arch::Phi3 {
            b = b
                .u32(&key("rope.scaling.original_context_length"), 64)
                .u32(&key("attention.sliding_window"), 0);
        }
        let val = |i: usize| i as f32 * 0.25 - 1.0;
        b = b.f32_tensor("token_embd.weight", &[h, v], val).f32_tensor(
            "output_norm.weight",
            &[h],
            val,
        );
        let norms: &[&str] = match arch {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 | Arch::Smollm3 => {
                &["attn_norm", "ffn_norm"]
            }
            Arch::Olmo2 => &["post_attention_norm", "post_ffw_norm"],
            Arch::Gemma3 => &[
                "attn_norm",
                "post_attention_norm",
                "ffn_norm",
                "post_ffw_norm",
            ],
        };
        let mut layer: Vec<(&str, Vec<u64>)> = norms.iter().map(|n| (*n, vec![h])).collect();
        if arch == Arch::Phi3 {
            layer.extend([
                ("attn_qkv.weight", vec![h, h + 2 * kv]),
                ("ffn_up.weight", vec![h, 2 * ffn]),
            ]);
        } else {
            layer.extend([
                ("attn_q.weight", vec![h, h]),
                ("attn_k.weight", vec![h, kv]),
                ("attn_v.weight", vec![h, kv]),
                ("ffn_gate.weight", vec![h, ffn]),
                ("ffn_up.weight", vec![h, ffn]),
            ]);
        }
        layer.extend([
            ("attn_output.weight", vec![h, h]),
            ("ffn_down.weight", vec![ffn, h]),
        ]);
        match arch {
            Arch::Qwen2 => layer.extend([
                ("attn_q.bias", vec![h]),
                ("attn_k.bias", vec![kv]),
                ("attn_v.bias", vec![kv]),
            ]),
            Arch::Qwen3 | Arch::Gemma3 => {
                layer.extend([("attn_q_norm", vec![d]), ("attn_k_norm", vec![d])])
            }
            Arch::Olmo2 => layer.extend([("attn_q_norm", vec![h]), ("attn_k_norm", vec![kv])]),
            Arch::Llama | Arch::Phi3 | Arch::Smollm3 => {}
        }
        for (name, dims) in layer {
            let name = match name.contains('.') {
                true => format!("blk.0.{name}"),
                false => format!("blk.0.{name}.weight"),
            };
            b = b.f32_tensor(&name, &dims, val);
        }
        b
    }
}
