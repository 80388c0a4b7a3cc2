//! GGUF → Hugging Face for every architecture the import knows, as one code path: tensor names and
//! shapes, what llama.cpp's `convert_hf_to_gguf.py` did to the weights, and `config.json` from the
//! `<arch>.*` metadata.
//!
//! The families differ in a few facts, each an [`Arch`] method, read off the converter
//! (`LlamaModel`, `Qwen2Model`, `Qwen3Model`, `Olmo2Model`, `Gemma3Model`, `Phi3MiniModel`,
//! `SmolLM3Model`) and gguf-py's `tensor_mapping.py`:
//!
//! | `general.architecture` | HF class | q/k rows | q/k/v bias | q/k norm | norms in a layer | norm stored |
//! |---|---|---|---|---|---|---|
//! | `llama`   | `LlamaForCausalLM`   | permuted | –   | –                         | attn, ffn                      | w     |
//! | `qwen2`   | `Qwen2ForCausalLM`   | as HF    | yes | –                         | attn, ffn                      | w     |
//! | `qwen3`   | `Qwen3ForCausalLM`   | as HF    | –   | per head `[D]`            | attn, ffn                      | w     |
//! | `olmo2`   | `Olmo2ForCausalLM`   | as HF    | –   | whole `[H·D]`, `[K·D]`    | post-attn, post-ffw            | w     |
//! | `gemma3`  | `Gemma3ForCausalLM`  | as HF    | –   | per head `[D]`            | attn, post-attn, ffn, post-ffw | w + 1 |
//! | `phi3`    | `Phi3ForCausalLM`    | as HF, fused | – | –                        | attn, ffn                      | w     |
//! | `smollm3` | `SmolLM3ForCausalLM` | permuted | –   | –                         | attn, ffn                      | w     |
//!
//! llama.cpp's `LlamaModel.permute` reorders the rows of `q_proj` and `k_proj` head by head from HF's
//! rotate-half RoPE layout `[half, pair]` to the interleaved layout `[pair, half]` that ggml's RoPE
//! expects; [`unpermute_rows`] undoes it. Files converted from Meta's original checkpoints are
//! already interleaved, so the same inverse applies to every `llama` file. `SmolLM3Model` subclasses
//! `LlamaModel`, so `smollm3` files are permuted too. The other converters keep HF's rows (llama.cpp
//! runs those families with NeoX-style RoPE).
//!
//! Gemma's RMSNorm scales by `1 + w`; the converter stores `w + 1` (`Gemma3Model.norm_shift`) in
//! every tensor whose name ends in `norm.weight`, q/k norms included, and the import subtracts the 1
//! again, in f32. What a `gemma3` file leaves out, llama.cpp's `llama-model.cpp` hard-codes and
//! [`ModelParams::from_gguf`] assumes the same: every 6th layer global and the others sliding-window
//! with RoPE base 10000, scores scaled by 1/√head_dim (1/√(hidden/heads) for the 62-layer 27B).
//!
//! Phi-3 keeps HF's fused projections: `qkv_proj` (q, k, v rows) is written as `attn_qkv` and
//! `gate_up_proj` (gate rows, then up rows; llama.cpp's SwiGLU gates with the first half) as
//! `ffn_up`, both unchanged, so the import writes them back under their HF names. Its LongRoPE
//! factors are the tensors `rope_factors_long.weight` / `rope_factors_short.weight` (written only
//! when the model has `long_factor`), with `phi3.rope.scaling.original_context_length` and
//! `phi3.rope.scaling.attn_factor`; `phi3.attention.sliding_window` is 0 for a model without one.
//!
//! SmolLM3 leaves RoPE out of some layers, which no `smollm3` key records: llama.cpp hard-codes
//! `n_no_rope_layer_step = 4` (layer `il` skips RoPE when `(il + 1) % 4 == 0`), as transformers'
//! `SmolLM3Config` does by default (`no_rope_layer_interval = 4`).

use std::collections::HashSet;

use serde_json::{Value, json};

use super::GgufError;
use super::reader::GgufFile;

/// The GGUF architectures the import turns into a Hugging Face model, by `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Olmo2,
    /// Text-only Gemma 3 (`Gemma3ForCausalLM`; llama.cpp also writes the language model of
    /// `Gemma3ForConditionalGeneration` this way, with the vision tower in a separate mmproj file).
    Gemma3,
    /// Phi-3 and Phi-3.5 mini/medium (`Phi3ForCausalLM`): fused q/k/v and gate/up, LongRoPE.
    Phi3,
    /// SmolLM3 (`SmolLM3ForCausalLM`): Llama's layers, every 4th without RoPE.
    Smollm3,
}

/// Every [`Arch`] by its GGUF name, for error messages.
pub const SUPPORTED_ARCHITECTURES: &str = "llama, qwen2, qwen3, olmo2, gemma3, phi3, smollm3";

/// The shape of the RMSNorm on queries and keys, where a family has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QkNorm {
    /// One `[head_dim]` weight shared by every head (Qwen3, Gemma 3).
    PerHead,
    /// One weight over all heads: `[heads · head_dim]` for q, `[kv_heads · head_dim]` for k (OLMo 2).
    Whole,
}

impl Arch {
    pub fn from_gguf(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "olmo2" => Arch::Olmo2,
            "gemma3" => Arch::Gemma3,
            "phi3" => Arch::Phi3,
            "smollm3" => Arch::Smollm3,
            _ => return None,
        })
    }

    /// `general.architecture`, which also prefixes the model's metadata keys.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Olmo2 => "olmo2",
            Arch::Gemma3 => "gemma3",
            Arch::Phi3 => "phi3",
            Arch::Smollm3 => "smollm3",
        }
    }

    /// HF `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gemma3 => "gemma3_text",
            other => other.gguf_name(),
        }
    }

    /// HF model class, `architectures[0]` of `config.json`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Olmo2 => "Olmo2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
            Arch::Phi3 => "Phi3ForCausalLM",
            Arch::Smollm3 => "SmolLM3ForCausalLM",
        }
    }

    /// Whether the converter permuted the q/k rows (`LlamaModel.modify_tensors`, which
    /// `SmolLM3Model` inherits).
    fn permuted_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Smollm3)
    }

    /// Phi-3's q/k/v in one `attn_qkv` and gate/up in one `ffn_up`, as HF's `qkv_proj` and
    /// `gate_up_proj`.
    fn fused_projections(self) -> bool {
        self == Arch::Phi3
    }

    /// Qwen2's q/k/v projections carry a bias (`attn_q.bias`, ...); its o_proj does not.
    fn qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    fn qk_norm(self) -> Option<QkNorm> {
        match self {
            Arch::Qwen3 | Arch::Gemma3 => Some(QkNorm::PerHead),
            Arch::Olmo2 => Some(QkNorm::Whole),
            Arch::Llama | Arch::Qwen2 | Arch::Phi3 | Arch::Smollm3 => None,
        }
    }

    /// Each layer's RMSNorms as (GGUF module, HF module). gguf-py names a norm by where it sits, so
    /// `ffn_norm` is Llama's `post_attention_layernorm` (before the MLP) but Gemma 3's
    /// `pre_feedforward_layernorm`, and `post_attention_norm` is the norm after attention.
    fn layer_norms(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Phi3 | Arch::Smollm3 => &[
                ("attn_norm", "input_layernorm"),
                ("ffn_norm", "post_attention_layernorm"),
            ],
            Arch::Olmo2 => &[
                ("post_attention_norm", "post_attention_layernorm"),
                ("post_ffw_norm", "post_feedforward_layernorm"),
            ],
            Arch::Gemma3 => &[
                ("attn_norm", "input_layernorm"),
                ("post_attention_norm", "post_attention_layernorm"),
                ("ffn_norm", "pre_feedforward_layernorm"),
                ("post_ffw_norm", "post_feedforward_layernorm"),
            ],
        }
    }

    /// What the converter added to every norm weight (`Gemma3Model.norm_shift`).
    fn norm_shift(self) -> f32 {
        match self {
            Arch::Gemma3 => 1.0,
            _ => 0.0,
        }
    }
}

/// The model hyper-parameters, from the `<arch>.*` and `tokenizer.ggml.*` metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// The RoPE base (Gemma 3: of the global layers).
    pub rope_theta: f64,
    /// Linear RoPE scaling factor (`<arch>.rope.scaling.type == "linear"`; Gemma 3: global layers).
    pub rope_linear_factor: Option<f64>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    /// No `output.weight` in the file: llama.cpp only writes it when it differs from the embedding.
    pub tie_word_embeddings: bool,
    /// Gemma 3's sliding-window layers; `None` for the other families.
    pub sliding: Option<SlidingWindow>,
    /// Gemma 3: scores are q·k / √`query_pre_attn_scalar`.
    pub query_pre_attn_scalar: Option<usize>,
    /// Gemma 3: `cap · tanh(x / cap)` on the logits, when the file states a cap.
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 3: the same on attention scores, when the file states a cap.
    pub attn_logit_softcapping: Option<f64>,
    /// Phi-3: the context the model was pre-trained with (`rope.scaling.original_context_length`).
    pub original_max_position_embeddings: Option<usize>,
    /// Phi-3's LongRoPE factors, when the file has them.
    pub long_rope: Option<LongRope>,
    /// SmolLM3: per layer, whether it applies RoPE (HF `no_rope_layers`, 0 for a NoPE layer).
    pub rope_layers: Option<Vec<bool>>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
    pub pad_token_id: Option<u64>,
}

/// Phi-3's LongRoPE (HF `rope_type: "longrope"`): frequency i divided by `short_factor[i]` while a
/// pass stays within the original context, by `long_factor[i]` past it.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub short_factor: Vec<f64>,
    pub long_factor: Vec<f64>,
    /// `rope.scaling.attn_factor` where it differs from the √(1 + ln s / ln L) (s = context /
    /// original context L) that both the converter and transformers compute; `None`: that default.
    pub attention_factor: Option<f64>,
}

/// Which layers attend through a sliding window, and how they differ from the global ones.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    /// `attention.sliding_window`: how many positions, itself included, a sliding layer sees.
    pub window: usize,
    /// Per layer, whether it is a sliding-window one.
    pub layers: Vec<bool>,
    /// The RoPE base of the sliding layers, which are never scaled.
    pub rope_theta: f64,
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

/// llama.cpp's Gemma 3 layout (`llama-model.cpp`, `LLM_ARCH_GEMMA3`: `set_swa_pattern(6)`): layer
/// `il` is a sliding one unless `il % 6 == 5`.
const GEMMA3_GLOBAL_EVERY: usize = 6;
/// llama.cpp's `rope_freq_base_train_swa` for Gemma 3, used when the file has no `rope.freq_base_swa`.
const GEMMA3_LOCAL_ROPE_THETA: f64 = 10_000.0;
/// Gemma 3 27B, the one size whose scores llama.cpp scales by √(hidden/heads), not √head_dim.
const GEMMA3_27B_LAYERS: usize = 62;
/// llama.cpp's `n_no_rope_layer_step` for SmolLM3 (`llama-model.cpp`, `LLM_ARCH_SMOLLM3`): layer `il`
/// has no RoPE when `(il + 1) % 4 == 0`; transformers' `no_rope_layer_interval` default.
const SMOLLM3_NO_ROPE_EVERY: usize = 4;

impl ModelParams {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        let path = file.path();
        let name = file.get_str("general.architecture")?;
        let arch = Arch::from_gguf(name).ok_or_else(|| {
            GgufError::unsupported(
                path,
                format!("architecture {name:?} (supported: {SUPPORTED_ARCHITECTURES})"),
            )
        })?;
        let key = |k: &str| format!("{}.{k}", arch.gguf_name());
        let usize_key = |k: &str| -> Result<usize, GgufError> {
            let k = key(k);
            usize::try_from(file.get_u64(&k)?)
                .map_err(|_| GgufError::malformed(path, format!("{k} does not fit in memory")))
        };
        let opt_usize = |k: &str| -> Result<Option<usize>, GgufError> {
            Ok(file.opt_u64(&key(k))?.map(|n| n as usize))
        };

        let hidden_size = usize_key("embedding_length")?;
        let num_attention_heads = usize_key("attention.head_count")?;
        let num_key_value_heads =
            opt_usize("attention.head_count_kv")?.unwrap_or(num_attention_heads);
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || !num_attention_heads.is_multiple_of(num_key_value_heads)
        {
            return Err(GgufError::malformed(
                path,
                format!(
                    "{} {num_attention_heads} must be a positive multiple of {} \
                     {num_key_value_heads}",
                    key("attention.head_count"),
                    key("attention.head_count_kv"),
                ),
            ));
        }
        let head_dim =
            opt_usize("attention.key_length")?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(GgufError::malformed(
                path,
                format!("head dimension {head_dim} must be positive and even"),
            ));
        }
        if let Some(v) = opt_usize("attention.value_length")?
            && v != head_dim
        {
            return Err(GgufError::unsupported(
                path,
                format!("value head size {v} different from key head size {head_dim}"),
            ));
        }
        if let Some(n_rot) = opt_usize("rope.dimension_count")?
            && n_rot != head_dim
        {
            return Err(GgufError::unsupported(
                path,
                format!("partial rotary embedding ({n_rot} of {head_dim} dimensions)"),
            ));
        }
        let rope_linear_factor = match file.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => None,
            // Phi-3 allows no linear scaling (`Phi3Config.validate_rope`).
            Some("linear") if arch != Arch::Phi3 => {
                match file.opt_f64(&key("rope.scaling.factor"))? {
                    Some(f) if f != 1.0 => Some(f32_decimal(f)),
                    _ => None,
                }
            }
            // `Phi3MiniModel` writes no type; LongRoPE is the factor tensors (see `phi3_long_rope`).
            Some("longrope") if arch == Arch::Phi3 => None,
            Some(other) => {
                return Err(GgufError::unsupported(
                    path,
                    format!("{} {other:?}", key("rope.scaling.type")),
                ));
            }
        };
        let rms_norm_eps = f32_decimal(file.get_f64(&key("attention.layer_norm_rms_epsilon"))?);
        let rope_theta = f32_decimal(file.opt_f64(&key("rope.freq_base"))?.unwrap_or(10000.0));
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0 && rope_theta.is_finite()) {
            return Err(GgufError::malformed(
                path,
                format!("rms_norm_eps {rms_norm_eps} / rope_theta {rope_theta} must be finite"),
            ));
        }
        let num_hidden_layers = usize_key("block_count")?;

        let opt_cap = |k: &str| -> Result<Option<f64>, GgufError> {
            Ok(file.opt_f64(&key(k))?.filter(|&c| c > 0.0).map(f32_decimal))
        };
        let (sliding, query_pre_attn_scalar, final_logit_softcapping, attn_logit_softcapping) =
            match arch {
                Arch::Gemma3 => (
                    Some(gemma3_sliding(file, num_hidden_layers)?),
                    Some(match num_hidden_layers {
                        GEMMA3_27B_LAYERS => hidden_size / num_attention_heads,
                        _ => head_dim,
                    }),
                    opt_cap("final_logit_softcapping")?,
                    opt_cap("attn_logit_softcapping")?,
                ),
                Arch::Phi3 => (
                    phi3_sliding(file, num_hidden_layers, num_key_value_heads, rope_theta)?,
                    None,
                    None,
                    None,
                ),
                _ => {
                    // OLMo 3 is written as `olmo2` plus a sliding window; a window is foreign to
                    // every other family here, and an HF config without one would silently drop it.
                    let sliding_key = key("attention.sliding_window");
                    if file.value(&sliding_key).is_some() {
                        let what = match arch {
                            Arch::Olmo2 => format!("{sliding_key} (OLMo 3)"),
                            _ => sliding_key,
                        };
                        return Err(GgufError::unsupported(path, what));
                    }
                    (None, None, None, None)
                }
            };

        // The embedding is authoritative for the vocabulary size; <arch>.vocab_size is optional.
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

        let (original_max_position_embeddings, long_rope) = match arch {
            Arch::Phi3 => {
                let original = usize_key("rope.scaling.original_context_length")?;
                let max = usize_key("context_length")?;
                (
                    Some(original),
                    phi3_long_rope(file, head_dim, max, original)?,
                )
            }
            _ => (None, None),
        };
        // llama.cpp's `n_no_rope_layer_step`, hard-coded for `smollm3` and read from no key.
        let rope_layers = (arch == Arch::Smollm3).then(|| {
            (0..num_hidden_layers)
                .map(|il| (il + 1) % SMOLLM3_NO_ROPE_EVERY != 0)
                .collect()
        });

        Ok(ModelParams {
            arch,
            hidden_size,
            intermediate_size: usize_key("feed_forward_length")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_linear_factor,
            max_position_embeddings: usize_key("context_length")?,
            vocab_size,
            tie_word_embeddings: !file.has_tensor("output.weight"),
            sliding,
            query_pre_attn_scalar,
            final_logit_softcapping,
            attn_logit_softcapping,
            original_max_position_embeddings,
            long_rope,
            rope_layers,
            bos_token_id: file.opt_u64("tokenizer.ggml.bos_token_id")?,
            eos_token_id: file.opt_u64("tokenizer.ggml.eos_token_id")?,
            pad_token_id: file.opt_u64("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// HF `config.json` for the family's `*ForCausalLM` (f32 weights), with the keys transformers 5
    /// writes (`rope_parameters`, `dtype`; Gemma 3's `layer_types`).
    pub fn config_json(&self) -> Value {
        let rope = |theta: f64, linear: Option<f64>| match linear {
            Some(factor) => json!({ "rope_type": "linear", "factor": factor, "rope_theta": theta }),
            None => json!({ "rope_type": "default", "rope_theta": theta }),
        };
        let layer_types = |sliding: &[bool]| -> Vec<&str> {
            sliding
                .iter()
                .map(|&s| {
                    if s {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect()
        };
        let mut c = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope(self.rope_theta, self.rope_linear_factor),
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": true,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
        });
        let extra = match self.arch {
            Arch::Llama => json!({
                "hidden_act": "silu",
                "attention_bias": false,
                "mlp_bias": false,
                "pretraining_tp": 1,
            }),
            Arch::Qwen2 | Arch::Qwen3 => {
                let mut e = json!({
                    "hidden_act": "silu",
                    "use_sliding_window": false,
                    "sliding_window": null,
                    "layer_types": layer_types(&vec![false; self.num_hidden_layers]),
                });
                if self.arch == Arch::Qwen3 {
                    e["attention_bias"] = json!(false);
                }
                e
            }
            Arch::Olmo2 => json!({ "hidden_act": "silu", "attention_bias": false }),
            Arch::Gemma3 => {
                let sliding = self.sliding.as_ref();
                json!({
                    "hidden_activation": "gelu_pytorch_tanh",
                    "attention_bias": false,
                    "query_pre_attn_scalar": self.query_pre_attn_scalar,
                    "sliding_window": sliding.map(|s| s.window),
                    "layer_types": sliding.map(|s| layer_types(&s.layers)),
                    "rope_parameters": {
                        "full_attention": rope(self.rope_theta, self.rope_linear_factor),
                        "sliding_attention": rope(sliding.map_or(GEMMA3_LOCAL_ROPE_THETA, |s| s.rope_theta), None),
                    },
                    "final_logit_softcapping": self.final_logit_softcapping,
                    "attn_logit_softcapping": self.attn_logit_softcapping,
                    "use_bidirectional_attention": false,
                })
            }
            Arch::Phi3 => {
                // `Phi3Config` keeps `partial_rotary_factor` in `rope_parameters`, and copies
                // `original_max_position_embeddings` there for LongRoPE.
                let mut rope = json!({
                    "rope_type": "default",
                    "rope_theta": self.rope_theta,
                    "partial_rotary_factor": 1.0,
                });
                if let Some(l) = &self.long_rope {
                    rope["rope_type"] = json!("longrope");
                    rope["short_factor"] = json!(l.short_factor);
                    rope["long_factor"] = json!(l.long_factor);
                    rope["original_max_position_embeddings"] =
                        json!(self.original_max_position_embeddings);
                    if let Some(a) = l.attention_factor {
                        rope["attention_factor"] = json!(a);
                    }
                }
                json!({
                    "hidden_act": "silu",
                    "resid_pdrop": 0.0,
                    "embd_pdrop": 0.0,
                    "original_max_position_embeddings": self.original_max_position_embeddings,
                    "sliding_window": self.sliding.as_ref().map(|s| s.window),
                    "rope_parameters": rope,
                })
            }
            Arch::Smollm3 => {
                let no_rope_layers: Vec<u8> = self
                    .rope_layers
                    .iter()
                    .flatten()
                    .map(|&rope| u8::from(rope))
                    .collect();
                json!({
                    "hidden_act": "silu",
                    "attention_bias": false,
                    "mlp_bias": false,
                    "use_sliding_window": false,
                    "sliding_window": null,
                    "no_rope_layers": no_rope_layers,
                    "no_rope_layer_interval": SMOLLM3_NO_ROPE_EVERY,
                    "layer_types": layer_types(&vec![false; self.num_hidden_layers]),
                })
            }
        };
        if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
            c.extend(extra);
        }
        c
    }
}

/// Gemma 3's sliding window from `gemma3.attention.*`; the layer pattern and the local RoPE base
/// are llama.cpp's unless the file states them (`attention.sliding_window_pattern`, one bool per
/// layer, true for sliding; `rope.freq_base_swa`).
fn gemma3_sliding(file: &GgufFile, layers: usize) -> Result<SlidingWindow, GgufError> {
    let path = file.path();
    let window = file.get_u64("gemma3.attention.sliding_window")? as usize;
    if window == 0 {
        return Err(GgufError::malformed(
            path,
            "gemma3.attention.sliding_window is 0",
        ));
    }
    let pattern_key = "gemma3.attention.sliding_window_pattern";
    let layers = match file.value(pattern_key) {
        None => (0..layers)
            .map(|il| il % GEMMA3_GLOBAL_EVERY != GEMMA3_GLOBAL_EVERY - 1)
            .collect(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|f| f.as_bool()).collect::<Option<Vec<bool>>>())
            .filter(|f| f.len() == layers)
            .ok_or_else(|| {
                GgufError::malformed(
                    path,
                    format!("{pattern_key} must be one bool per layer ({layers})"),
                )
            })?,
    };
    let rope_theta = f32_decimal(
        file.opt_f64("gemma3.rope.freq_base_swa")?
            .unwrap_or(GEMMA3_LOCAL_ROPE_THETA),
    );
    Ok(SlidingWindow {
        window,
        layers,
        rope_theta,
    })
}

/// Phi-3's window (`phi3.attention.sliding_window`, 0 for none), which transformers applies to every
/// layer. A file from before the key was written gets what llama.cpp assumed for it (PR 8931, in
/// `llama-model.cpp`): 2047 for the 4k-context mini and medium, 262144 for mini-128k and 131072 for
/// medium-128k.
fn phi3_sliding(
    file: &GgufFile,
    layers: usize,
    kv_heads: usize,
    rope_theta: f64,
) -> Result<Option<SlidingWindow>, GgufError> {
    let window = match file.opt_u64("phi3.attention.sliding_window")? {
        Some(w) => w,
        None => match (layers, file.get_u64("phi3.context_length")?) {
            (32 | 40, 4096) => 2047,
            (32, 131_072) if kv_heads == 32 => 262_144,
            (40, 131_072) => 131_072,
            _ => 0,
        },
    };
    Ok((window > 0).then(|| SlidingWindow {
        window: window as usize,
        layers: vec![true; layers],
        rope_theta,
    }))
}

/// The LongRoPE tensors `Phi3MiniModel.generate_extra_tensors` writes for a model with
/// `long_factor` (both or neither, `[head_dim / 2]` each), and `phi3.rope.scaling.attn_factor`.
fn phi3_long_rope(
    file: &GgufFile,
    head_dim: usize,
    max_positions: usize,
    original: usize,
) -> Result<Option<LongRope>, GgufError> {
    let path = file.path();
    let present = PHI3_ROPE_FACTORS.map(|name| file.has_tensor(name));
    match present {
        [false, false] => return Ok(None),
        [true, true] => {}
        _ => {
            return Err(GgufError::NoSuchTensor {
                path: path.to_path_buf(),
                name: PHI3_ROPE_FACTORS[usize::from(present[0])].to_string(),
            });
        }
    }
    if original < 2 {
        return Err(GgufError::malformed(
            path,
            format!("phi3.rope.scaling.original_context_length {original} must be at least 2"),
        ));
    }
    let factors = |name: &str| -> Result<Vec<f64>, GgufError> {
        let shape = file.tensor(name)?.shape();
        if shape != [head_dim / 2] {
            return Err(GgufError::bad_tensor(
                path,
                name,
                format!(
                    "shape {shape:?}, expected [{}] (head_dim / 2)",
                    head_dim / 2
                ),
            ));
        }
        Ok(file
            .tensor_f32(name)?
            .into_iter()
            .map(|x| f32_decimal(f64::from(x)))
            .collect())
    };
    // The converter's and transformers' `_compute_longrope_parameters`' default.
    let scale = max_positions as f64 / original as f64;
    let default = match scale > 1.0 {
        true => (1.0 + scale.ln() / (original as f64).ln()).sqrt(),
        false => 1.0,
    };
    let attention_factor = file
        .opt_f64("phi3.rope.scaling.attn_factor")?
        .filter(|&a| a as f32 != default as f32)
        .map(f32_decimal);
    Ok(Some(LongRope {
        long_factor: factors(PHI3_ROPE_FACTORS[0])?,
        short_factor: factors(PHI3_ROPE_FACTORS[1])?,
        attention_factor,
    }))
}

/// Phi-3's LongRoPE factor tensors (long, short), which go into `config.json`.
const PHI3_ROPE_FACTORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

/// One HF tensor and where it comes from in the GGUF.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// HF name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub gguf_name: String,
    /// Row-major HF shape, e.g. `[out, in]` for a linear layer.
    pub shape: Vec<usize>,
    /// `Some(n_heads)` for `llama` q/k projections, whose rows [`unpermute_rows`] restores.
    pub unpermute_heads: Option<usize>,
    /// Subtracted from every value: what the converter added to a norm weight (Gemma 3: 1).
    pub norm_shift: f32,
}

impl HfTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor in HF layout: dequantized, with llama.cpp's row permutation and norm shift undone.
    pub fn load(&self, file: &GgufFile) -> Result<Vec<f32>, GgufError> {
        let mut data = file.tensor_f32(&self.gguf_name)?;
        if let (Some(heads), [rows, cols]) = (self.unpermute_heads, self.shape.as_slice()) {
            data = unpermute_rows(&data, *rows, *cols, heads);
        }
        if self.norm_shift != 0.0 {
            data.iter_mut().for_each(|x| *x -= self.norm_shift);
        }
        Ok(data)
    }
}

/// Every tensor the HF model needs, checked against `params`: present, expected shape, and no
/// tensor left over (e.g. `rope_freqs.weight` of Llama 3.1 rope scaling, or biases on a `llama`)
/// that the HF class would silently lack.
pub fn hf_tensors(file: &GgufFile, params: &ModelParams) -> Result<Vec<HfTensor>, GgufError> {
    let path = file.path();
    let arch = params.arch;
    let (h, i, d) = (
        params.hidden_size,
        params.intermediate_size,
        params.head_dim,
    );
    let (heads, kv_heads) = (params.num_attention_heads, params.num_key_value_heads);
    let (q_out, kv_out) = (heads * d, kv_heads * d);
    let permuted = |n: usize| arch.permuted_qk().then_some(n);

    let mut expected = Vec::new();
    let mut add =
        |gguf: String, hf: String, shape: Vec<usize>, unpermute: Option<usize>, norm: bool| {
            expected.push(HfTensor {
                name: hf,
                gguf_name: gguf,
                shape,
                unpermute_heads: unpermute,
                norm_shift: if norm { arch.norm_shift() } else { 0.0 },
            });
        };
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![params.vocab_size, h],
        None,
        false,
    );
    add(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        None,
        true,
    );
    if !params.tie_word_embeddings {
        add(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![params.vocab_size, h],
            None,
            false,
        );
    }
    for l in 0..params.num_hidden_layers {
        let g = |m: &str, suffix: &str| format!("blk.{l}.{m}.{suffix}");
        let f = |m: &str, suffix: &str| format!("model.layers.{l}.{m}.{suffix}");
        for (gguf, hf) in arch.layer_norms() {
            add(g(gguf, "weight"), f(hf, "weight"), vec![h], None, true);
        }
        if arch.fused_projections() {
            add(
                g("attn_qkv", "weight"),
                f("self_attn.qkv_proj", "weight"),
                vec![q_out + 2 * kv_out, h],
                None,
                false,
            );
        } else {
            add(
                g("attn_q", "weight"),
                f("self_attn.q_proj", "weight"),
                vec![q_out, h],
                permuted(heads),
                false,
            );
            add(
                g("attn_k", "weight"),
                f("self_attn.k_proj", "weight"),
                vec![kv_out, h],
                permuted(kv_heads),
                false,
            );
            add(
                g("attn_v", "weight"),
                f("self_attn.v_proj", "weight"),
                vec![kv_out, h],
                None,
                false,
            );
        }
        add(
            g("attn_output", "weight"),
            f("self_attn.o_proj", "weight"),
            vec![h, q_out],
            None,
            false,
        );
        if arch.qkv_bias() {
            add(
                g("attn_q", "bias"),
                f("self_attn.q_proj", "bias"),
                vec![q_out],
                None,
                false,
            );
            add(
                g("attn_k", "bias"),
                f("self_attn.k_proj", "bias"),
                vec![kv_out],
                None,
                false,
            );
            add(
                g("attn_v", "bias"),
                f("self_attn.v_proj", "bias"),
                vec![kv_out],
                None,
                false,
            );
        }
        if let Some(qk) = arch.qk_norm() {
            let (q, k) = match qk {
                QkNorm::PerHead => (d, d),
                QkNorm::Whole => (q_out, kv_out),
            };
            add(
                g("attn_q_norm", "weight"),
                f("self_attn.q_norm", "weight"),
                vec![q],
                None,
                true,
            );
            add(
                g("attn_k_norm", "weight"),
                f("self_attn.k_norm", "weight"),
                vec![k],
                None,
                true,
            );
        }
        if arch.fused_projections() {
            add(
                g("ffn_up", "weight"),
                f("mlp.gate_up_proj", "weight"),
                vec![2 * i, h],
                None,
                false,
            );
        } else {
            add(
                g("ffn_gate", "weight"),
                f("mlp.gate_proj", "weight"),
                vec![i, h],
                None,
                false,
            );
            add(
                g("ffn_up", "weight"),
                f("mlp.up_proj", "weight"),
                vec![i, h],
                None,
                false,
            );
        }
        add(
            g("ffn_down", "weight"),
            f("mlp.down_proj", "weight"),
            vec![h, i],
            None,
            false,
        );
    }

    for t in &expected {
        let info = file.tensor(&t.gguf_name)?;
        if info.shape() != t.shape {
            return Err(GgufError::bad_tensor(
                path,
                &t.gguf_name,
                format!(
                    "shape {:?}, expected {:?} from the metadata",
                    info.shape(),
                    t.shape
                ),
            ));
        }
    }
    // Phi-3's LongRoPE factors went into `config.json` ([`ModelParams::long_rope`]).
    let in_config: &[&str] = match arch {
        Arch::Phi3 => &PHI3_ROPE_FACTORS,
        _ => &[],
    };
    let used: HashSet<&str> = expected
        .iter()
        .map(|t| t.gguf_name.as_str())
        .chain(in_config.iter().copied())
        .collect();
    if let Some(t) = file
        .tensors()
        .iter()
        .find(|t| !used.contains(t.name.as_str()))
    {
        return Err(GgufError::bad_tensor(
            path,
            &t.name,
            format!(
                "is not part of a Hugging Face {} (not supported)",
                arch.hf_class()
            ),
        ));
    }
    Ok(expected)
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
    fn f32_metadata_back_to_decimal() {
        assert_eq!(f32_decimal(f64::from(1e-5f32)), 1e-5);
        assert_eq!(f32_decimal(f64::from(100000.0f32)), 100000.0);
        assert_eq!(f32_decimal(0.1), 0.1); // already an f64 value: unchanged
    }

    fn open(b: &GgufBuilder) -> GgufFile {
        GgufFile::from_bytes("tiny.gguf", b.build()).unwrap()
    }

    fn tensors_of(arch: Arch) -> Vec<HfTensor> {
        let f = open(&GgufBuilder::tiny(arch));
        let p = ModelParams::from_gguf(&f).unwrap();
        assert_eq!(p.arch, arch);
        hf_tensors(&f, &p).unwrap()
    }

    fn hf_name<'a>(tensors: &'a [HfTensor], gguf: &str) -> Option<&'a str> {
        tensors
            .iter()
            .find(|t| t.gguf_name == gguf)
            .map(|t| t.name.as_str())
    }

    /// gguf-py's `tensor_mapping.py`, per family: the same GGUF norm name is a different HF module.
    #[test]
    fn names_per_architecture() {
        let llama = tensors_of(Arch::Llama);
        assert_eq!(llama.len(), 2 + 9);
        assert_eq!(
            hf_name(&llama, "blk.0.attn_output.weight"),
            Some("model.layers.0.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name(&llama, "blk.0.ffn_norm.weight"),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert!(llama.iter().all(|t| t.norm_shift == 0.0));
        let permuted: Vec<&str> = llama
            .iter()
            .filter(|t| t.unpermute_heads.is_some())
            .map(|t| t.gguf_name.as_str())
            .collect();
        assert_eq!(permuted, ["blk.0.attn_q.weight", "blk.0.attn_k.weight"]);

        let qwen2 = tensors_of(Arch::Qwen2);
        assert_eq!(qwen2.len(), 2 + 9 + 3);
        assert_eq!(
            hf_name(&qwen2, "blk.0.attn_k.bias"),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert!(qwen2.iter().all(|t| t.unpermute_heads.is_none()));

        let qwen3 = tensors_of(Arch::Qwen3);
        assert_eq!(
            hf_name(&qwen3, "blk.0.attn_q_norm.weight"),
            Some("model.layers.0.self_attn.q_norm.weight")
        );

        let olmo2 = tensors_of(Arch::Olmo2);
        assert_eq!(olmo2.len(), 2 + 11);
        assert_eq!(
            hf_name(&olmo2, "blk.0.post_attention_norm.weight"),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name(&olmo2, "blk.0.post_ffw_norm.weight"),
            Some("model.layers.0.post_feedforward_layernorm.weight")
        );
        let k_norm = olmo2.iter().find(|t| t.name.ends_with("k_norm.weight"));
        assert_eq!(k_norm.map(|t| t.shape.clone()), Some(vec![4])); // 1 KV head of 4

        let gemma = tensors_of(Arch::Gemma3);
        assert_eq!(gemma.len(), 2 + 13);
        for (gguf, hf) in [
            ("attn_norm", "input_layernorm"),
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
            ("attn_k_norm", "self_attn.k_norm"),
        ] {
            let t = gemma
                .iter()
                .find(|t| t.gguf_name == format!("blk.0.{gguf}.weight"))
                .unwrap();
            assert_eq!(t.name, format!("model.layers.0.{hf}.weight"));
            assert_eq!(t.norm_shift, 1.0, "{gguf}");
        }
        let shifted: Vec<&str> = gemma
            .iter()
            .filter(|t| t.norm_shift != 0.0)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(shifted.len(), 7, "{shifted:?}"); // 4 layer norms, q/k norms, model.norm
        assert!(shifted.iter().all(|n| n.ends_with("norm.weight")));

        // Phi-3's fused projections keep HF's fused names and their stacked rows.
        let phi3 = tensors_of(Arch::Phi3);
        assert_eq!(phi3.len(), 2 + 6);
        for (gguf, hf, shape) in [
            ("attn_qkv", "self_attn.qkv_proj", [8 + 2 * 4, 8]),
            ("ffn_up", "mlp.gate_up_proj", [2 * 16, 8]),
        ] {
            let t = phi3
                .iter()
                .find(|t| t.gguf_name == format!("blk.0.{gguf}.weight"))
                .unwrap();
            assert_eq!(t.name, format!("model.layers.0.{hf}.weight"));
            assert_eq!(t.shape, shape);
            assert_eq!(t.unpermute_heads, None);
        }
        assert_eq!(hf_name(&phi3, "blk.0.attn_q.weight"), None);
        assert_eq!(hf_name(&phi3, "blk.0.ffn_gate.weight"), None);

        // SmolLM3Model is a LlamaModel: q/k permuted.
        let smollm3 = tensors_of(Arch::Smollm3);
        assert_eq!(smollm3.len(), 2 + 9);
        let permuted: Vec<(&str, Option<usize>)> = smollm3
            .iter()
            .filter(|t| t.unpermute_heads.is_some())
            .map(|t| (t.gguf_name.as_str(), t.unpermute_heads))
            .collect();
        assert_eq!(
            permuted,
            [
                ("blk.0.attn_q.weight", Some(2)),
                ("blk.0.attn_k.weight", Some(1))
            ]
        );
    }

    #[test]
    fn tiny_llama_params_and_config() {
        let f = GgufFile::open(fixture("tiny-llama.gguf.bin")).unwrap();
        let p = ModelParams::from_gguf(&f).unwrap();
        assert_eq!(
            p,
            ModelParams {
                arch: Arch::Llama,
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
                sliding: None,
                query_pre_attn_scalar: None,
                final_logit_softcapping: None,
                attn_logit_softcapping: None,
                original_max_position_embeddings: None,
                long_rope: None,
                rope_layers: None,
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
        assert_eq!(
            c["rope_parameters"],
            json!({"rope_type": "default", "rope_theta": 10000.0})
        );
        assert_eq!(c["dtype"], "float32");
    }

    /// Every tensor of `tiny-<name>.gguf.bin`, dequantized and with the converter's changes undone,
    /// equals `tiny-<name>.expected.safetensors` bit for bit (gguf-py's `dequantize`, transformers'
    /// `_reverse_permute_weights`, numpy's f32 `w - 1`); returns the tensors.
    fn matches_reference(name: &str) -> Vec<HfTensor> {
        let f = GgufFile::open(fixture(&format!("tiny-{name}.gguf.bin"))).unwrap();
        let p = ModelParams::from_gguf(&f).unwrap();
        let tensors = hf_tensors(&f, &p).unwrap();
        let expected =
            std::fs::read(fixture(&format!("tiny-{name}.expected.safetensors"))).unwrap();
        let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
        let mut ours: Vec<String> = tensors.iter().map(|t| t.name.clone()).collect();
        let mut want: Vec<String> = expected.names().into_iter().map(String::from).collect();
        ours.sort();
        want.sort();
        assert_eq!(ours, want);
        for t in &tensors {
            let want = expected.tensor(&t.name).unwrap();
            assert_eq!(want.shape(), t.shape.as_slice(), "{}", t.name);
            let ours = t.load(&f).unwrap();
            let want = f32s(want.data());
            assert!(
                ours.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {} differs",
                t.name
            );
        }
        tensors
    }

    /// Layer 1 is F32, so there the expected tensors are the original weights.
    #[test]
    fn tiny_llama_tensors_match_reference() {
        let tensors = matches_reference("llama");
        assert_eq!(tensors.len(), 3 + 2 * 9);
        let k = tensors
            .iter()
            .find(|t| t.name == "model.layers.1.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(k.unpermute_heads, Some(2));
        assert_eq!(k.shape, vec![16, 32]);
    }

    /// Every tensor of each family's fixture: names, shapes and values as the reference gives them.
    #[test]
    fn tiny_family_tensors_match_reference() {
        // (untied lm_head + embedding + final norm) + layers × (norms + q/k/v/o + extras + MLP)
        for (name, n) in [
            ("qwen2", 3 + 2 * (2 + 4 + 3 + 3)),
            ("qwen3", 2 + 2 * (2 + 4 + 2 + 3)),
            ("olmo2", 3 + 2 * (2 + 4 + 2 + 3)),
            ("gemma3", 2 + 6 * (4 + 4 + 2 + 3)),
            // Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj.
            ("phi3", 3 + 2 * (2 + 2 + 2)),
            ("smollm3", 2 + 4 * (2 + 4 + 3)),
        ] {
            let tensors = matches_reference(name);
            assert_eq!(tensors.len(), n, "{name}");
            let shifted = tensors.iter().filter(|t| t.norm_shift != 0.0).count();
            assert_eq!(
                shifted,
                if name == "gemma3" { 1 + 6 * 6 } else { 0 },
                "{name}"
            );
        }
    }

    /// The imported config.json holds every key of the original model's config.json (as
    /// transformers wrote it for the tiny model the fixture was converted from) with its value,
    /// except `PretrainedConfig` bookkeeping and what no GGUF carries.
    #[test]
    fn tiny_family_configs_match_transformers() {
        const NOT_IN_GGUF: [&str; 12] = [
            "_name_or_path",
            "chunk_size_feed_forward",
            "dtype",
            "id2label",
            "label2id",
            "is_encoder_decoder",
            "output_attentions",
            "output_hidden_states",
            "problem_type",
            "return_dict",
            // Gemma 3's pattern as an int; `layer_types` says the same per layer.
            "_sliding_window_pattern",
            // Qwen's count of layers without a window, moot while `use_sliding_window` is false.
            "max_window_layers",
        ];
        for (name, arch) in [
            ("qwen2", Arch::Qwen2),
            ("qwen3", Arch::Qwen3),
            ("olmo2", Arch::Olmo2),
            ("gemma3", Arch::Gemma3),
            ("phi3", Arch::Phi3),
            ("smollm3", Arch::Smollm3),
        ] {
            let f = GgufFile::open(fixture(&format!("tiny-{name}.gguf.bin"))).unwrap();
            let p = ModelParams::from_gguf(&f).unwrap();
            assert_eq!(p.arch, arch);
            let ours = p.config_json();
            let text = std::fs::read(fixture(&format!("tiny-{name}.config.json"))).unwrap();
            let hf: Value = serde_json::from_slice(&text).unwrap();
            let mut compared = 0;
            for (key, want) in hf.as_object().unwrap() {
                if NOT_IN_GGUF.contains(&key.as_str()) {
                    continue;
                }
                assert_eq!(&ours[key], want, "{name}: {key}");
                compared += 1;
            }
            assert!(compared >= 20, "{name}: only {compared} keys compared");
        }
    }

    #[test]
    fn builder_model_is_valid() {
        let f = open(&GgufBuilder::tiny_llama());
        let p = ModelParams::from_gguf(&f).unwrap();
        assert!(p.tie_word_embeddings);
        assert_eq!((p.head_dim, p.vocab_size), (4, 6));
        assert_eq!(hf_tensors(&f, &p).unwrap().len(), 2 + 9);
    }

    fn error(b: GgufBuilder) -> String {
        let f = open(&b);
        match ModelParams::from_gguf(&f) {
            Err(e) => e.to_string(),
            Ok(p) => hf_tensors(&f, &p).unwrap_err().to_string(),
        }
    }

    #[test]
    fn rejects_what_the_hf_class_cannot_hold() {
        let e = error(GgufBuilder::tiny_llama().str("general.architecture", "phi2"));
        assert!(
            e.ends_with(
                "architecture \"phi2\" (supported: llama, qwen2, qwen3, olmo2, gemma3, phi3, \
                 smollm3) is not supported"
            ),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);

        let e = error(GgufBuilder::tiny_llama().without_tensor("blk.0.ffn_up.weight"));
        assert!(e.ends_with("no tensor named blk.0.ffn_up.weight"), "{e}");

        let e = error(GgufBuilder::tiny_llama().f32_tensor("rope_freqs.weight", &[2], |_| 1.0));
        assert!(
            e.contains("tensor rope_freqs.weight: is not part of a Hugging Face LlamaForCausalLM"),
            "{e}"
        );
        // A Llama with Qwen2's biases, and a Qwen2 without them.
        let e = error(GgufBuilder::tiny_llama().f32_tensor("blk.0.attn_q.bias", &[8], |_| 0.0));
        assert!(e.contains("blk.0.attn_q.bias: is not part of"), "{e}");
        let e = error(GgufBuilder::tiny(Arch::Qwen2).without_tensor("blk.0.attn_v.bias"));
        assert!(e.ends_with("no tensor named blk.0.attn_v.bias"), "{e}");
        // OLMo 2's q norm spans every head; Qwen3's one head.
        let e = error(GgufBuilder::tiny(Arch::Olmo2).f32_tensor(
            "blk.0.attn_q_norm.weight",
            &[4],
            |_| 1.0,
        ));
        assert!(
            e.contains("blk.0.attn_q_norm.weight: shape [4], expected [8]"),
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

        let e = error(GgufBuilder::tiny(Arch::Qwen3).str("qwen3.rope.scaling.type", "yarn"));
        assert!(
            e.contains("qwen3.rope.scaling.type \"yarn\" is not supported"),
            "{e}"
        );

        let e = error(GgufBuilder::tiny_llama().kv(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::String("x".into()),
        ));
        assert!(e.contains("is string, expected a float"), "{e}");

        let e = error(GgufBuilder::tiny(Arch::Olmo2).u32("olmo2.attention.sliding_window", 4));
        assert!(
            e.ends_with("olmo2.attention.sliding_window (OLMo 3) is not supported"),
            "{e}"
        );
        let mut b = GgufBuilder::tiny(Arch::Gemma3);
        b.kvs
            .retain(|(k, _)| k != "gemma3.attention.sliding_window");
        let e = error(b);
        assert!(
            e.ends_with("metadata key gemma3.attention.sliding_window is missing"),
            "{e}"
        );
        let e = error(GgufBuilder::tiny(Arch::Gemma3).kv(
            "gemma3.attention.sliding_window_pattern",
            GgufValue::Array(vec![GgufValue::Bool(true); 2]),
        ));
        assert!(e.contains("must be one bool per layer (1)"), "{e}");
    }

    #[test]
    fn linear_rope_scaling() {
        let b = GgufBuilder::tiny_llama()
            .str("llama.rope.scaling.type", "linear")
            .kv("llama.rope.scaling.factor", GgufValue::F32(4.0));
        let p = ModelParams::from_gguf(&open(&b)).unwrap();
        assert_eq!(p.rope_linear_factor, Some(4.0));
        assert_eq!(
            p.config_json()["rope_parameters"],
            json!({"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0})
        );
    }

    /// What a `gemma3` file leaves out comes from llama.cpp's `llama-model.cpp`: every 6th layer
    /// global, local RoPE base 10000, 1/√head_dim scores except for the 62-layer 27B.
    #[test]
    fn gemma3_defaults_are_llama_cpp_s() {
        let b = GgufBuilder::tiny(Arch::Gemma3)
            .u32("gemma3.block_count", 13)
            .kv("gemma3.rope.freq_base", GgufValue::F32(1e6))
            .str("gemma3.rope.scaling.type", "linear")
            .kv("gemma3.rope.scaling.factor", GgufValue::F32(8.0));
        let p = ModelParams::from_gguf(&open(&b)).unwrap();
        let s = p.sliding.clone().unwrap();
        assert_eq!(s.window, 4);
        assert_eq!(s.rope_theta, 10_000.0);
        let globals: Vec<usize> = (0..13).filter(|&l| !s.layers[l]).collect();
        assert_eq!(globals, [5, 11]);
        assert_eq!(p.query_pre_attn_scalar, Some(4));
        let c = p.config_json();
        assert_eq!(c["model_type"], "gemma3_text");
        assert_eq!(c["architectures"][0], "Gemma3ForCausalLM");
        assert_eq!(c["hidden_activation"], "gelu_pytorch_tanh");
        assert_eq!(c["query_pre_attn_scalar"], 4);
        assert_eq!(c["sliding_window"], 4);
        assert_eq!(c["layer_types"][5], "full_attention");
        assert_eq!(c["layer_types"][4], "sliding_attention");
        assert_eq!(c["layer_types"].as_array().map(Vec::len), Some(13));
        assert_eq!(
            c["rope_parameters"],
            json!({
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            })
        );
        assert_eq!(c["final_logit_softcapping"], Value::Null);
        assert_eq!(c["attn_logit_softcapping"], Value::Null);
        assert_eq!(c["tie_word_embeddings"], true);

        // The 27B: √(hidden / heads) = √(8 / 2); a file's own pattern, local base and caps win.
        let b = GgufBuilder::tiny(Arch::Gemma3)
            .u32("gemma3.block_count", 62)
            .kv(
                "gemma3.attention.sliding_window_pattern",
                GgufValue::Array((0..62).map(|l| GgufValue::Bool(l % 2 == 0)).collect()),
            )
            .kv("gemma3.rope.freq_base_swa", GgufValue::F32(20_000.0))
            .kv("gemma3.final_logit_softcapping", GgufValue::F32(30.0));
        let b = b
            .u32("gemma3.attention.key_length", 8)
            .u32("gemma3.attention.value_length", 8);
        let p = ModelParams::from_gguf(&open(&b)).unwrap();
        assert_eq!(p.query_pre_attn_scalar, Some(4));
        let s = p.sliding.unwrap();
        assert_eq!(
            (s.layers[0], s.layers[1], s.rope_theta),
            (true, false, 20_000.0)
        );
        assert_eq!(p.final_logit_softcapping, Some(30.0));
    }

    /// Phi-3: LongRoPE from the factor tensors (config, not weights), the attention factor only
    /// where it is not the default both the converter and transformers compute, the window (0:
    /// none; for a file without the key, what llama.cpp assumed for the released sizes).
    #[test]
    fn phi3_long_rope_and_window() {
        let longrope = |b: GgufBuilder| {
            b.u32("phi3.context_length", 64)
                .u32("phi3.rope.scaling.original_context_length", 16)
                .f32_tensor("rope_factors_long.weight", &[2], |i| [1.5, 4.0][i])
                .f32_tensor("rope_factors_short.weight", &[2], |i| [1.0, 1.1][i])
        };
        // The default: √(1 + ln(64 / 16) / ln 16) = √1.5.
        let b = longrope(GgufBuilder::tiny(Arch::Phi3)).kv(
            "phi3.rope.scaling.attn_factor",
            GgufValue::F32(1.5f32.sqrt()),
        );
        let f = open(&b);
        let p = ModelParams::from_gguf(&f).unwrap();
        assert_eq!(
            p.long_rope,
            Some(LongRope {
                short_factor: vec![1.0, 1.1],
                long_factor: vec![1.5, 4.0],
                attention_factor: None,
            })
        );
        assert_eq!(p.original_max_position_embeddings, Some(16));
        assert_eq!(p.sliding, None);
        assert_eq!(hf_tensors(&f, &p).unwrap().len(), 2 + 6);
        let c = p.config_json();
        assert_eq!(
            c["rope_parameters"],
            json!({
                "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
                "short_factor": [1.0, 1.1], "long_factor": [1.5, 4.0],
                "original_max_position_embeddings": 16,
            })
        );
        assert_eq!(
            (
                &c["original_max_position_embeddings"],
                &c["max_position_embeddings"]
            ),
            (&json!(16), &json!(64))
        );
        assert_eq!(c["sliding_window"], Value::Null);
        assert_eq!(c["architectures"][0], "Phi3ForCausalLM");

        let b = b
            .kv("phi3.rope.scaling.attn_factor", GgufValue::F32(1.25))
            .u32("phi3.attention.sliding_window", 6);
        let p = ModelParams::from_gguf(&open(&b)).unwrap();
        assert_eq!(p.long_rope.as_ref().unwrap().attention_factor, Some(1.25));
        let c = p.config_json();
        assert_eq!(c["rope_parameters"]["attention_factor"], 1.25);
        assert_eq!(c["sliding_window"], 6);
        assert_eq!(p.sliding.unwrap().layers, [true]);

        // No factors: plain RoPE, the original context still recorded.
        let p = ModelParams::from_gguf(&open(&GgufBuilder::tiny(Arch::Phi3))).unwrap();
        assert_eq!(p.long_rope, None);
        let c = p.config_json();
        assert_eq!(
            c["rope_parameters"],
            json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0})
        );
        assert_eq!(c["original_max_position_embeddings"], 64);

        // Phi-3-mini-4k converted before the key existed: llama.cpp's 2047.
        let mut old = GgufBuilder::tiny(Arch::Phi3)
            .u32("phi3.block_count", 32)
            .u32("phi3.context_length", 4096);
        old.kvs
            .retain(|(k, _)| k != "phi3.attention.sliding_window");
        let s = ModelParams::from_gguf(&open(&old))
            .unwrap()
            .sliding
            .unwrap();
        assert_eq!((s.window, s.layers.len()), (2047, 32));

        let e = error(
            longrope(GgufBuilder::tiny(Arch::Phi3)).without_tensor("rope_factors_short.weight"),
        );
        assert!(
            e.ends_with("no tensor named rope_factors_short.weight"),
            "{e}"
        );
        let e = error(longrope(GgufBuilder::tiny(Arch::Phi3)).f32_tensor(
            "rope_factors_long.weight",
            &[3],
            |_| 1.0,
        ));
        assert!(
            e.ends_with("tensor rope_factors_long.weight: shape [3], expected [2] (head_dim / 2)"),
            "{e}"
        );
        let e = error(GgufBuilder::tiny(Arch::Phi3).str("phi3.rope.scaling.type", "linear"));
        assert!(
            e.contains("phi3.rope.scaling.type \"linear\" is not supported"),
            "{e}"
        );
        // Separate q/k/v are not what the converter writes for Phi3ForCausalLM.
        let e =
            error(
                GgufBuilder::tiny(Arch::Phi3).f32_tensor("blk.0.attn_q.weight", &[8, 8], |_| 0.0),
            );
        assert!(
            e.contains("blk.0.attn_q.weight: is not part of a Hugging Face Phi3ForCausalLM"),
            "{e}"
        );
    }

    /// SmolLM3's NoPE layers are llama.cpp's hard-coded every 4th (`(il + 1) % 4 == 0`), which is
    /// also transformers' default.
    #[test]
    fn smollm3_no_rope_every_fourth_layer() {
        let b = GgufBuilder::tiny(Arch::Smollm3).u32("smollm3.block_count", 9);
        let p = ModelParams::from_gguf(&open(&b)).unwrap();
        let flags = p.rope_layers.clone().unwrap();
        let nope: Vec<usize> = (0..9).filter(|&l| !flags[l]).collect();
        assert_eq!(nope, [3, 7]);
        let c = p.config_json();
        assert_eq!(c["no_rope_layers"], json!([1, 1, 1, 0, 1, 1, 1, 0, 1]));
        assert_eq!(c["no_rope_layer_interval"], 4);
        assert_eq!(c["model_type"], "smollm3");
        assert_eq!(c["architectures"][0], "SmolLM3ForCausalLM");
        assert_eq!(c["use_sliding_window"], false);
        assert_eq!(c["layer_types"].as_array().map(Vec::len), Some(9));

        let e = error(GgufBuilder::tiny(Arch::Smollm3).u32("smollm3.attention.sliding_window", 4));
        assert!(
            e.ends_with("smollm3.attention.sliding_window is not supported"),
            "{e}"
        );
    }
}
