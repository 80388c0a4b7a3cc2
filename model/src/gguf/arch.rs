//! `llama`-architecture GGUF → Hugging Face `LlamaForCausalLM`: tensor names, shapes, the q/k row
//! order, and `config.json`.
//!
//! llama.cpp's `convert_hf_to_gguf.py` (`LlamaModel.permute`) reorders the rows of `q_proj` and
//! `k_proj` head by head from HF's rotate-half RoPE layout `[half, pair]` to the interleaved layout
//! `[pair, half]` that ggml's RoPE expects; [`unpermute_rows`] undoes it. Files converted from Meta's
//! original checkpoints are already interleaved, so the same inverse applies to every `llama` file.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::GgufError;
use super::reader::GgufFile;

/// The model hyper-parameters, from the `llama.*` and `tokenizer.ggml.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaParams {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Linear RoPE scaling factor (`llama.rope.scaling.type == "linear"`).
    pub rope_linear_factor: Option<f64>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    /// No `output.weight` in the file: llama.cpp only writes it when it differs from the embedding.
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
}

/// GGUF stores f32 hyper-parameters that HF configs hold as the decimal the author wrote
/// (`1e-5`, not `9.999999747378752e-06`); the shortest f32 round-trip recovers it.
fn f32_decimal(x: f64) -> f64 {
    let x32 = x as f32;
    if f64::from(x32) == x {
        x32.to_string().parse().unwrap_or(x)
    } else {
        x
    }
}

impl LlamaParams {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        let path = file.path();
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::unsupported(
                path,
                format!("architecture {arch:?} (only \"llama\")"),
            ));
        }
        let usize_key = |key: &str| -> Result<usize, GgufError> {
            usize::try_from(file.get_u64(key)?)
                .map_err(|_| GgufError::malformed(path, format!("{key} does not fit in memory")))
        };
        let hidden_size = usize_key("llama.embedding_length")?;
        let num_attention_heads = usize_key("llama.attention.head_count")?;
        let num_key_value_heads = match file.opt_u64("llama.attention.head_count_kv")? {
            Some(n) => n as usize,
            None => num_attention_heads,
        };
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err(GgufError::malformed(
                path,
                format!(
                    "llama.attention.head_count {num_attention_heads} must be a positive multiple \
                     of llama.attention.head_count_kv {num_key_value_heads}"
                ),
            ));
        }
        let head_dim = match file.opt_u64("llama.attention.key_length")? {
            Some(n) => n as usize,
            None => hidden_size / num_attention_heads,
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(GgufError::malformed(
                path,
                format!("head dimension {head_dim} must be positive and even"),
            ));
        }
        if let Some(v) = file.opt_u64("llama.attention.value_length")?
            && v as usize != head_dim
        {
            return Err(GgufError::unsupported(
                path,
                format!("value head size {v} different from key head size {head_dim}"),
            ));
        }
        if let Some(n_rot) = file.opt_u64("llama.rope.dimension_count")?
            && n_rot as usize != head_dim
        {
            return Err(GgufError::unsupported(
                path,
                format!("partial rotary embedding ({n_rot} of {head_dim} dimensions)"),
            ));
        }
        let rope_linear_factor = match file.opt_str("llama.rope.scaling.type")? {
            None | Some("none") => None,
            Some("linear") => match file.opt_f64("llama.rope.scaling.factor")? {
                Some(f) if f != 1.0 => Some(f32_decimal(f)),
                _ => None,
            },
            Some(other) => {
                return Err(GgufError::unsupported(
                    path,
                    format!("llama.rope.scaling.type {other:?}"),
                ));
            }
        };
        let rms_norm_eps = f32_decimal(file.get_f64("llama.attention.layer_norm_rms_epsilon")?);
        let rope_theta = f32_decimal(file.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0));
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rope_theta.is_finite()) {
            return Err(GgufError::malformed(
                path,
                format!("rms_norm_eps {rms_norm_eps} / rope_theta {rope_theta} must be finite"),
            ));
        }

        // The embedding is authoritative for the vocabulary size; llama.vocab_size is optional.
        let embd = file.tensor("token_embd.weight")?;
        let vocab_size = match embd.shape().as_slice() {
            [v, h] if *h == hidden_size => *v,
            s => {
                return Err(GgufError::bad_tensor(
                    path,
                    "token_embd.weight",
                    format!("shape {s:?}, expected [vocab, {hidden_size}]"),
                ));
            }
        };

        Ok(LlamaParams {
            hidden_size,
            intermediate_size: usize_key("llama.feed_forward_length")?,
            num_hidden_layers: usize_key("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_linear_factor,
            max_position_embeddings: usize_key("llama.context_length")?,
            vocab_size,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            bos_token_id: file.opt_u64("tokenizer.ggml.bos_token_id")?,
            eos_token_id: file.opt_u64("tokenizer.ggml.eos_token_id")?,
            pad_token_id: file.opt_u64("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// HF `config.json` for `LlamaForCausalLM` (f32 weights).
    pub fn config_json(&self) -> Value {
        let rope_scaling = match self.rope_linear_factor {
            Some(factor) => json!({ "rope_type": "linear", "factor": factor }),
            None => Value::Null,
        };
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": true,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        })
    }
}

/// One HF tensor and where it comes from in the GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// HF name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub gguf_name: String,
    /// Row-major HF shape, e.g. `[out, in]` for a linear layer.
    pub shape: Vec<usize>,
    /// `Some(n_heads)` for q/k projections, whose rows [`unpermute_rows`] restores.
    pub unpermute_heads: Option<usize>,
}

impl HfTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor in HF layout: dequantized, and for q/k with llama.cpp's row permutation undone.
    pub fn load(&self, file: &GgufFile) -> Result<Vec<f32>, GgufError> {
        let data = file.tensor_f32(&self.gguf_name)?;
        match (self.unpermute_heads, self.shape.as_slice()) {
            (Some(heads), [rows, cols]) => Ok(unpermute_rows(&data, *rows, *cols, heads)),
            _ => Ok(data),
        }
    }
}

/// HF name for a GGUF tensor name of the `llama` architecture, or `None` if it has none.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.split_once('.')?;
    if suffix != "weight" {
        return None;
    }
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// Every tensor the HF model needs, checked against `params`: present, expected shape, and no
/// tensor left over (e.g. `rope_freqs.weight` of Llama 3.1 rope scaling, or biases) that HF
/// `LlamaForCausalLM` would silently lack.
pub fn hf_tensors(file: &GgufFile, params: &LlamaParams) -> Result<Vec<HfTensor>, GgufError> {
    let path = file.path();
    let (h, i, d) = (
        params.hidden_size,
        params.intermediate_size,
        params.head_dim,
    );
    let (q_out, kv_out) = (
        params.num_attention_heads * d,
        params.num_key_value_heads * d,
    );

    let mut expected: Vec<(String, Vec<usize>, Option<usize>)> = vec![
        ("token_embd.weight".into(), vec![params.vocab_size, h], None),
        ("output_norm.weight".into(), vec![h], None),
    ];
    if !params.tie_word_embeddings {
        expected.push(("output.weight".into(), vec![params.vocab_size, h], None));
    }
    for l in 0..params.num_hidden_layers {
        let b = |m: &str| format!("blk.{l}.{m}.weight");
        expected.extend([
            (b("attn_norm"), vec![h], None),
            (
                b("attn_q"),
                vec![q_out, h],
                Some(params.num_attention_heads),
            ),
            (
                b("attn_k"),
                vec![kv_out, h],
                Some(params.num_key_value_heads),
            ),
            (b("attn_v"), vec![kv_out, h], None),
            (b("attn_output"), vec![h, q_out], None),
            (b("ffn_norm"), vec![h], None),
            (b("ffn_gate"), vec![i, h], None),
            (b("ffn_up"), vec![i, h], None),
            (b("ffn_down"), vec![h, i], None),
        ]);
    }

    let mut out = Vec::with_capacity(expected.len());
    for (gguf_name, shape, unpermute_heads) in expected {
        let info = file.tensor(&gguf_name)?;
        if info.shape() != shape {
            return Err(GgufError::bad_tensor(
                path,
                &gguf_name,
                format!(
                    "shape {:?}, expected {shape:?} from the metadata",
                    info.shape()
                ),
            ));
        }
        let name = hf_name(&gguf_name).ok_or_else(|| {
            GgufError::bad_tensor(path, &gguf_name, "has no Hugging Face name".to_string())
        })?;
        out.push(HfTensor {
            name,
            gguf_name,
            shape,
            unpermute_heads,
        });
    }
    let used: HashSet<&str> = out.iter().map(|t| t.gguf_name.as_str()).collect();
    if let Some(t) = file
        .tensors()
        .iter()
        .find(|t| !used.contains(t.name.as_str()))
    {
        return Err(GgufError::bad_tensor(
            path,
            &t.name,
            "is not part of a Hugging Face LlamaForCausalLM (not supported)".to_string(),
        ));
    }
    Ok(out)
}

/// Undo llama.cpp's `permute(w, n_head)` on the rows of a `[rows, cols]` matrix.
///
/// Within each head of `d = rows / n_heads` rows, HF row `half * d/2 + i` is GGUF row `2 * i + half`
/// (GGUF: `w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`; transformers' `_reverse_permute_weights`).
pub fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
    let d = rows / n_heads.max(1);
    let mut out = vec![0.0f32; data.len()];
    if d == 0 || !d.is_multiple_of(2) || d * n_heads != rows || data.len() != rows * cols {
        // Shapes are validated by `hf_tensors`; leave anything else untouched rather than panic.
        out.copy_from_slice(data);
        return out;
    }
    for head in 0..n_heads {
        for half in 0..2 {
            for i in 0..d / 2 {
                let dst = head * d + half * (d / 2) + i;
                let src = head * d + 2 * i + half;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufValue;
    use crate::gguf::testing::{GgufBuilder, f32s, fixture};

    /// llama.cpp's forward permutation, written as in `convert_hf_to_gguf.py`.
    fn permute(data: &[f32], rows: usize, cols: usize, n_heads: usize) -> Vec<f32> {
        let d = rows / n_heads;
        let mut out = vec![0.0; data.len()];
        // w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2): out[h, i, half] = w[h, half, i]
        for h in 0..n_heads {
            for i in 0..d / 2 {
                for half in 0..2 {
                    let dst = h * d + i * 2 + half;
                    let src = h * d + half * (d / 2) + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&data[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_permute() {
        let (rows, cols, heads) = (24, 5, 3);
        let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let p = permute(&w, rows, cols, heads);
        assert_ne!(p, w);
        assert_eq!(unpermute_rows(&p, rows, cols, heads), w);
    }

    #[test]
    fn unpermute_known_rows() {
        // One head of 4 rows: GGUF rows [r0, r2, r1, r3] (interleaved) → HF [r0, r1, r2, r3].
        let gguf = [0.0, 2.0, 1.0, 3.0];
        assert_eq!(unpermute_rows(&gguf, 4, 1, 1), vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn names() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.0.attn_q.bias"), None);
    }

    #[test]
    fn f32_metadata_back_to_decimal() {
        assert_eq!(f32_decimal(f64::from(1e-5f32)), 1e-5);
        assert_eq!(f32_decimal(f64::from(100000.0f32)), 100000.0);
        assert_eq!(f32_decimal(0.1), 0.1); // already an f64 value: unchanged
    }

    fn open(b: &GgufBuilder) -> GgufFile {
        GgufFile::from_bytes("tiny.gguf", b.build()).unwrap()
    }

    #[test]
    fn tiny_llama_params_and_config() {
        let f = GgufFile::open(fixture("tiny-llama.gguf.bin")).unwrap();
        let p = LlamaParams::from_gguf(&f).unwrap();
        assert_eq!(
            p,
            LlamaParams {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 8,
                rms_norm_eps: 1e-6,
                rope_theta: 10000.0,
                rope_linear_factor: None,
                max_position_embeddings: 128,
                vocab_size: 301,
                tie_word_embeddings: false,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                pad_token_id: Some(2),
            }
        );
        let c = p.config_json();
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["architectures"][0], "LlamaForCausalLM");
        assert_eq!(c["rms_norm_eps"], 1e-6);
        assert_eq!(c["num_key_value_heads"], 2);
        assert_eq!(c["tie_word_embeddings"], false);
        assert_eq!(c["torch_dtype"], "float32");
    }

    /// Every tensor, dequantized and un-permuted, equals what gguf-py + transformers'
    /// `_reverse_permute_weights` give; layer 1 is F32, so there it is the original weights.
    #[test]
    fn tiny_llama_tensors_match_reference() {
        let f = GgufFile::open(fixture("tiny-llama.gguf.bin")).unwrap();
        let p = LlamaParams::from_gguf(&f).unwrap();
        let tensors = hf_tensors(&f, &p).unwrap();
        assert_eq!(tensors.len(), 3 + 2 * 9);
        let expected = std::fs::read(fixture("tiny-llama.expected.safetensors")).unwrap();
        let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
        assert_eq!(expected.len(), tensors.len());
        for t in &tensors {
            let want = expected.tensor(&t.name).unwrap();
            assert_eq!(want.shape(), t.shape.as_slice(), "{}", t.name);
            let ours = t.load(&f).unwrap();
            let want = f32s(want.data());
            assert!(
                ours.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} differs",
                t.name
            );
        }
        let q = tensors
            .iter()
            .find(|t| t.name == "model.layers.1.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(q.unpermute_heads, Some(2));
        assert_eq!(q.shape, vec![16, 32]);
    }

    #[test]
    fn builder_model_is_valid() {
        let f = open(&GgufBuilder::tiny_llama());
        let p = LlamaParams::from_gguf(&f).unwrap();
        assert!(p.tie_word_embeddings);
        assert_eq!((p.head_dim, p.vocab_size), (4, 6));
        assert_eq!(hf_tensors(&f, &p).unwrap().len(), 2 + 9);
    }

    fn error(b: GgufBuilder) -> String {
        let f = open(&b);
        match LlamaParams::from_gguf(&f) {
            Err(e) => e.to_string(),
            Ok(p) => hf_tensors(&f, &p).unwrap_err().to_string(),
        }
    }

    #[test]
    fn rejects_what_hf_llama_cannot_hold() {
        let e = error(GgufBuilder::tiny_llama().str("general.architecture", "qwen2"));
        assert!(
            e.ends_with("architecture \"qwen2\" (only \"llama\") is not supported"),
            "{e}"
        );

        let e = error(GgufBuilder::tiny_llama().without_tensor("blk.0.ffn_up.weight"));
        assert!(e.ends_with("no tensor named blk.0.ffn_up.weight"), "{e}");

        let e = error(GgufBuilder::tiny_llama().f32_tensor("rope_freqs.weight", &[2], |_| 1.0));
        assert!(
            e.contains("tensor rope_freqs.weight: is not part of a Hugging Face"),
            "{e}"
        );

        let e =
            error(GgufBuilder::tiny_llama().f32_tensor("blk.0.ffn_up.weight", &[8, 8], |_| 0.0));
        assert!(
            e.contains("blk.0.ffn_up.weight: shape [8, 8], expected [16, 8]"),
            "{e}"
        );

        let e = error(GgufBuilder::tiny_llama().u32("llama.attention.head_count_kv", 3));
        assert!(e.contains("must be a positive multiple"), "{e}");

        let e = error(GgufBuilder::tiny_llama().u32("llama.rope.dimension_count", 2));
        assert!(
            e.contains("partial rotary embedding (2 of 4 dimensions) is not supported"),
            "{e}"
        );

        let e = error(GgufBuilder::tiny_llama().str("llama.rope.scaling.type", "yarn"));
        assert!(
            e.contains("llama.rope.scaling.type \"yarn\" is not supported"),
            "{e}"
        );

        let e = error(GgufBuilder::tiny_llama().kv(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::String("x".into()),
        ));
        assert!(e.contains("is string, expected a float"), "{e}");
    }

    #[test]
    fn linear_rope_scaling() {
        let b = GgufBuilder::tiny_llama()
            .str("llama.rope.scaling.type", "linear")
            .kv("llama.rope.scaling.factor", GgufValue::F32(4.0));
        let p = LlamaParams::from_gguf(&open(&b)).unwrap();
        assert_eq!(p.rope_linear_factor, Some(4.0));
        assert_eq!(p.config_json()["rope_scaling"]["factor"], 4.0);
    }
}
