//! `config.json` of a Hugging Face Llama-family checkpoint.
//!
//! Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3, SmolLM3 and OLMo 2 share one
//! decoder: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU MLP.
//! They differ only in the fields below: Qwen2 adds q/k/v biases, Llama 3.1
//! scales RoPE frequencies, Qwen3 normalises each head's q and k
//! ([`QkNorm::PerHead`]) with a `head_dim` of its own, SmolLM3 leaves RoPE out
//! of every fourth layer ([`LlamaConfig::rope_layers`]), OLMo 2 normalises
//! the whole q and k projections ([`QkNorm::Whole`]) and the outputs of its
//! attention and MLP instead of their inputs ([`NormPlacement::Post`]).
//! Gemma 3 (text) normalises both ([`NormPlacement::Sandwich`]) with
//! (1 + w) weights, scales its embeddings by √C, gates its MLP with GELU
//! ([`Activation::GeluTanh`]) and interleaves sliding-window layers, with a
//! RoPE base of their own, among global ones ([`LlamaConfig::sliding`]).
//! Phi-3 stores q, k, v as one `qkv_proj` and gate, up as one
//! `gate_up_proj` ([`ModelType::fused_projections`]: split at load, joined
//! at save) and scales RoPE with LongRoPE ([`RopeScaling::LongRope`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The architectures this decoder implements, by `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Smollm3,
    Olmo2,
    #[serde(rename = "gemma3_text")]
    Gemma3,
    Phi3,
}

/// The `model_type`s this decoder reads, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str =
    "llama, mistral, qwen2, qwen3, smollm3, olmo2, gemma3_text, phi3";

/// RMSNorm of the queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Over each head's D values, one weight [D] shared by the heads (Qwen3,
    /// Gemma 3).
    PerHead,
    /// Over the whole projection, H·D (K·D for keys) values (OLMo 2).
    Whole,
}

/// Where a layer's norms sit around its attention and MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// x + attn(norm(x)), then x + mlp(norm(x)) (Llama).
    Pre,
    /// x + norm(attn(x)), then x + norm(mlp(x)) (OLMo 2).
    Post,
    /// x + norm(attn(norm(x))), then x + norm(mlp(norm(x))) (Gemma 3).
    Sandwich,
}

/// The MLP's gate activation (`hidden_act`, Gemma's `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: silu(gate) ⊙ up.
    Silu,
    /// GeGLU with the tanh approximation of GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" => Some(Activation::GeluTanh),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        }
    }
}

impl ModelType {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
            ModelType::Smollm3 => "smollm3",
            ModelType::Olmo2 => "olmo2",
            ModelType::Gemma3 => "gemma3_text",
            ModelType::Phi3 => "phi3",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "llama" => Some(ModelType::Llama),
            "mistral" => Some(ModelType::Mistral),
            "qwen2" => Some(ModelType::Qwen2),
            "qwen3" => Some(ModelType::Qwen3),
            "smollm3" => Some(ModelType::Smollm3),
            "olmo2" => Some(ModelType::Olmo2),
            "gemma3_text" => Some(ModelType::Gemma3),
            "phi3" => Some(ModelType::Phi3),
            _ => None,
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            ModelType::Llama => "LlamaForCausalLM",
            ModelType::Mistral => "MistralForCausalLM",
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
            ModelType::Smollm3 => "SmolLM3ForCausalLM",
            ModelType::Olmo2 => "Olmo2ForCausalLM",
            ModelType::Gemma3 => "Gemma3ForCausalLM",
            ModelType::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// How the family normalises queries and keys.
    pub fn qk_norm(self) -> QkNorm {
        match self {
            ModelType::Qwen3 | ModelType::Gemma3 => QkNorm::PerHead,
            ModelType::Olmo2 => QkNorm::Whole,
            _ => QkNorm::None,
        }
    }

    /// Where the family's norms sit.
    pub fn norms(self) -> NormPlacement {
        match self {
            ModelType::Olmo2 => NormPlacement::Post,
            ModelType::Gemma3 => NormPlacement::Sandwich,
            _ => NormPlacement::Pre,
        }
    }

    /// Added to every RMSNorm weight in the forward pass: Gemma stores w and
    /// multiplies by 1 + w.
    pub fn norm_offset(self) -> f64 {
        match self {
            ModelType::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    /// Whether the checkpoint stores q, k, v as one `qkv_proj` and gate, up
    /// as one `gate_up_proj` (Phi-3): the decoder keeps them apart, the
    /// checkpoint and PEFT files join them.
    pub fn fused_projections(self) -> bool {
        self == ModelType::Phi3
    }

    /// Whether the embeddings are multiplied by √C (Gemma).
    pub fn scales_embeddings(self) -> bool {
        self == ModelType::Gemma3
    }
}

/// RoPE frequency scaling (`rope_scaling` in config.json; `default`, the
/// identity, is `None`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1's banded scaling.
    Llama3(Llama3RopeScaling),
    /// Every frequency divided by `factor` (position interpolation; Gemma 3's
    /// global layers at 4B and up).
    Linear { factor: f64 },
    /// LongRoPE (Ding et al. 2024; Phi-3's `longrope`, formerly `su`):
    /// frequency i divided by `short_factor[i]`, or by `long_factor[i]` once a
    /// pass reaches past `original_max_position_embeddings`, and cos, sin
    /// multiplied by `attention_factor`.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// `llama3` scaling's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The resolved decoder configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub model_type: ModelType,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The RoPE base of the sliding-window layers where it differs from
    /// `rope_theta` (Gemma 3's `rope_local_base_freq`), without scaling.
    pub local_rope_theta: Option<f64>,
    /// Per layer, whether it attends through the sliding window (`layer_types`
    /// "sliding_attention"); empty: none does.
    pub sliding: Vec<bool>,
    /// How many keys, itself included, a sliding layer's query sees.
    pub sliding_window: Option<usize>,
    /// The MLP's gate.
    pub activation: Activation,
    /// Scores are q·k times this (1/√D; Gemma: `query_pre_attn_scalar`^-½).
    pub attention_scale: f64,
    /// Logits become cap·tanh(logits / cap) (Gemma's `final_logit_softcapping`).
    pub final_logit_softcapping: Option<f64>,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2 always; Llama when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama `attention_bias` only).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per layer, whether it applies RoPE (SmolLM3's `no_rope_layers`: 0 for
    /// a NoPE layer); empty: every layer does.
    pub rope_layers: Vec<bool>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The original JSON, so saving writes back every field we do not model.
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl LlamaConfig {
    /// Read and validate `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_json(value, path)
    }

    /// Parse a config.json value; `path` is only used in error messages.
    pub fn from_json(value: serde_json::Value, path: &Path) -> Result<Self> {
        let err = |field: &str, message: String| ModelError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let serde_json::Value::Object(mut raw) = value else {
            return Err(err("<root>", "expected a JSON object".into()));
        };
        // Gemma 3 from 4B up (`Gemma3ForConditionalGeneration`) wraps its
        // text decoder's config in `text_config` beside a vision tower's: the
        // decoder is loaded on its own, as `gemma3_text` (images are not).
        if raw.get("model_type").and_then(|v| v.as_str()) == Some("gemma3") {
            let Some(serde_json::Value::Object(mut text)) = raw.remove("text_config") else {
                return Err(err(
                    "text_config",
                    "a gemma3 (image and text) config needs its text model's `text_config`".into(),
                ));
            };
            text.insert("model_type".into(), "gemma3_text".into());
            for key in [
                "eos_token_id",
                "bos_token_id",
                "pad_token_id",
                "tie_word_embeddings",
            ] {
                if let (false, Some(v)) = (text.contains_key(key), raw.get(key)) {
                    text.insert(key.into(), v.clone());
                }
            }
            text.remove("architectures");
            raw = text;
        }
        let get_usize = |field: &str| -> Result<Option<usize>> {
            match raw.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|n| Some(n as usize))
                    .ok_or_else(|| err(field, format!("expected a non-negative integer, got {v}"))),
            }
        };
        let get_f64 = |field: &str| -> Result<Option<f64>> {
            match raw.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(field, format!("expected a number, got {v}"))),
            }
        };
        let get_bool = |field: &str| -> Result<Option<bool>> {
            match raw.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| err(field, format!("expected true or false, got {v}"))),
            }
        };
        let required = |field: &str| -> Result<usize> {
            get_usize(field)?.ok_or_else(|| err(field, "is required".into()))
        };

        let model_type_str = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("model_type", "is required".into()))?;
        let model_type = ModelType::parse(model_type_str).ok_or_else(|| {
            let architectures = match raw.get("architectures") {
                Some(serde_json::Value::Array(a)) if !a.is_empty() => {
                    let names: Vec<&str> = a.iter().filter_map(|v| v.as_str()).collect();
                    format!(", architectures {}", names.join(", "))
                }
                _ => String::new(),
            };
            err(
                "model_type",
                format!(
                    "unsupported model type `{model_type_str}`{architectures} (supported: {SUPPORTED_MODEL_TYPES})"
                ),
            )
        })?;

        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(err("num_attention_heads", "must be positive".into()));
        }
        let num_key_value_heads = get_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(err(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match get_usize("head_dim")? {
            Some(d) => d,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(err(
                        "hidden_size",
                        format!(
                            "{hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 || head_dim == 0 {
            return Err(err(
                "head_dim",
                format!("{head_dim} must be even and positive"),
            ));
        }

        // transformers < 5 writes `rope_theta` + `rope_scaling`; 5.x nests both in
        // `rope_parameters`, per layer type where the types differ (Gemma 3).
        let nested = raw.get("rope_parameters").filter(|v| v.is_object());
        let by_layer_type = nested.and_then(|v| v.get("full_attention")).is_some();
        let (global, local) = match (nested, by_layer_type) {
            (Some(v), true) => (v.get("full_attention"), v.get("sliding_attention")),
            _ => (nested, None),
        };
        let rope_scaling = match raw.get("rope_scaling").filter(|v| !v.is_null()) {
            Some(v) => parse_rope_scaling(v, &raw).map_err(|m| err("rope_scaling", m))?,
            None => match global {
                Some(v) => parse_rope_scaling(v, &raw).map_err(|m| err("rope_parameters", m))?,
                None => None,
            },
        };
        let theta_in =
            |v: Option<&serde_json::Value>| v.and_then(|v| v.get("rope_theta")?.as_f64());
        let gemma = model_type == ModelType::Gemma3;
        let rope_theta = get_f64("rope_theta")?
            .or(theta_in(global))
            .unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 });
        let local_rope_theta = match local {
            Some(v) => {
                if parse_rope_scaling(v, &raw)
                    .map_err(|m| err("rope_parameters", m))?
                    .is_some()
                {
                    return Err(err(
                        "rope_parameters",
                        "scaled RoPE on sliding_attention layers is not supported".into(),
                    ));
                }
                theta_in(Some(v))
            }
            None => get_f64("rope_local_base_freq")?,
        }
        .or(gemma.then_some(10_000.0));

        let partial = get_f64("partial_rotary_factor")?
            .or_else(|| global?.get("partial_rotary_factor")?.as_f64())
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(err(
                "partial_rotary_factor",
                format!("{partial}: RoPE over part of each head (Phi-4-mini) is not supported"),
            ));
        }
        if let Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        }) = &rope_scaling
            && (short_factor.len() != head_dim / 2 || long_factor.len() != head_dim / 2)
        {
            return Err(err(
                "rope_scaling",
                format!(
                    "longrope needs head_dim / 2 = {} factors each, got {} short and {} long",
                    head_dim / 2,
                    short_factor.len(),
                    long_factor.len()
                ),
            ));
        }
        let activation = match ["hidden_activation", "hidden_act"]
            .into_iter()
            .find_map(|field| Some((field, raw.get(field)?.as_str()?)))
        {
            None => match gemma {
                true => Activation::GeluTanh,
                false => Activation::Silu,
            },
            Some((field, name)) => Activation::parse(name).ok_or_else(|| {
                err(
                    field,
                    format!("unsupported activation `{name}` (supported: silu, gelu_pytorch_tanh)"),
                )
            })?,
        };
        if get_f64("attn_logit_softcapping")?.is_some() {
            return Err(err(
                "attn_logit_softcapping",
                "soft-capped attention scores (Gemma 2) are not supported".into(),
            ));
        }
        let attention_scale = match get_f64("query_pre_attn_scalar")? {
            Some(s) if s > 0.0 => s.powf(-0.5),
            Some(s) => {
                return Err(err(
                    "query_pre_attn_scalar",
                    format!("{s} must be positive"),
                ));
            }
            // transformers' Gemma3TextConfig default.
            None if gemma => 256f64.powf(-0.5),
            None => (head_dim as f64).powf(-0.5),
        };
        let attention_bias = get_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match model_type {
            ModelType::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        let num_hidden_layers = required("num_hidden_layers")?;
        let rope_layers = match raw.get("no_rope_layers") {
            Some(serde_json::Value::Array(flags)) if model_type == ModelType::Smollm3 => {
                let flags: Vec<bool> = flags
                    .iter()
                    .map(|v| v.as_u64().map(|n| n != 0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| err("no_rope_layers", "expected 0 or 1 per layer".into()))?;
                if flags.len() != num_hidden_layers {
                    return Err(err(
                        "no_rope_layers",
                        format!("{} flags for {num_hidden_layers} layers", flags.len()),
                    ));
                }
                flags
            }
            _ => Vec::new(),
        };
        let (sliding, sliding_window) = sliding_layers(&raw, model_type, num_hidden_layers, err)?;

        let eos_token_ids = match raw.get("eos_token_id") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(ids)) => ids
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err("eos_token_id", "expected integers".into()))?,
            Some(v) => vec![
                v.as_u64()
                    .ok_or_else(|| err("eos_token_id", format!("expected an integer, got {v}")))?
                    as u32,
            ],
        };

        let config = LlamaConfig {
            model_type,
            vocab_size: required("vocab_size")?,
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize("max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: get_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            local_rope_theta,
            sliding,
            sliding_window,
            activation,
            attention_scale,
            final_logit_softcapping: get_f64("final_logit_softcapping")?,
            tie_word_embeddings: get_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: get_bool("mlp_bias")?.unwrap_or(false),
            rope_layers,
            bos_token_id: get_usize("bos_token_id")?.map(|n| n as u32),
            eos_token_ids,
            pad_token_id: get_usize("pad_token_id")?.map(|n| n as u32),
            raw,
        };
        Ok(config)
    }

    /// A tiny random-model configuration for tests.
    pub fn tiny(model_type: ModelType) -> Self {
        let mut raw = serde_json::Map::new();
        raw.insert("model_type".into(), model_type.as_str().into());
        if model_type == ModelType::Gemma3 {
            raw.insert("query_pre_attn_scalar".into(), 8.into());
        }
        LlamaConfig {
            model_type,
            vocab_size: 96,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_scaling: None,
            // Gemma 3: layer 0 slides over 3 keys with its own RoPE base,
            // layer 1 is global.
            local_rope_theta: (model_type == ModelType::Gemma3).then_some(100.0),
            sliding: match model_type {
                ModelType::Gemma3 => vec![true, false],
                _ => Vec::new(),
            },
            sliding_window: (model_type == ModelType::Gemma3).then_some(3),
            activation: match model_type {
                ModelType::Gemma3 => Activation::GeluTanh,
                _ => Activation::Silu,
            },
            attention_scale: 8f64.powf(-0.5),
            final_logit_softcapping: None,
            tie_word_embeddings: false,
            qkv_bias: model_type == ModelType::Qwen2,
            o_bias: false,
            mlp_bias: false,
            // SmolLM3: the second layer of two without RoPE.
            rope_layers: match model_type {
                ModelType::Smollm3 => vec![true, false],
                _ => Vec::new(),
            },
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            pad_token_id: None,
            raw,
        }
    }

    /// The config.json to write next to saved weights: the original fields with
    /// the modelled ones overwritten by their current values.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = self.raw.clone();
        // RoPE is written in the pre-5.x layout, which transformers 5 still reads.
        map.remove("rope_parameters");
        map.remove("dtype");
        let mut set = |k: &str, v: serde_json::Value| {
            map.insert(k.to_string(), v);
        };
        set("model_type", self.model_type.as_str().into());
        if !self.raw.contains_key("architectures") {
            set(
                "architectures",
                serde_json::json!([self.model_type.architecture()]),
            );
        }
        set("vocab_size", self.vocab_size.into());
        set("hidden_size", self.hidden_size.into());
        set("intermediate_size", self.intermediate_size.into());
        set("num_hidden_layers", self.num_hidden_layers.into());
        set("num_attention_heads", self.num_attention_heads.into());
        set("num_key_value_heads", self.num_key_value_heads.into());
        set("head_dim", self.head_dim.into());
        set(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
        );
        set("rms_norm_eps", self.rms_norm_eps.into());
        set("rope_theta", self.rope_theta.into());
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        match self.activation {
            Activation::Silu => set("hidden_act", "silu".into()),
            gate => set("hidden_activation", gate.as_str().into()),
        }
        if let Some(theta) = self.local_rope_theta {
            set("rope_local_base_freq", theta.into());
        }
        if let Some(window) = self.sliding_window {
            set("sliding_window", window.into());
            let types: Vec<&str> = (0..self.num_hidden_layers)
                .map(|i| match self.is_sliding(i) {
                    true => "sliding_attention",
                    false => "full_attention",
                })
                .collect();
            set("layer_types", serde_json::json!(types));
        }
        if self.model_type != ModelType::Qwen2 {
            set("attention_bias", self.qkv_bias.into());
            set("mlp_bias", self.mlp_bias.into());
        }
        if !self.rope_layers.is_empty() {
            let flags: Vec<u8> = self.rope_layers.iter().map(|&r| r as u8).collect();
            set("no_rope_layers", serde_json::json!(flags));
        }
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Llama3(s)) => {
                let mut v = serde_json::to_value(s).expect("plain struct serializes");
                v["rope_type"] = "llama3".into();
                set("rope_scaling", v);
            }
            Some(RopeScaling::Linear { factor }) => set(
                "rope_scaling",
                serde_json::json!({"rope_type": "linear", "factor": factor}),
            ),
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                set(
                    "rope_scaling",
                    serde_json::json!({
                        "rope_type": "longrope",
                        "short_factor": short_factor,
                        "long_factor": long_factor,
                        "original_max_position_embeddings": original_max_position_embeddings,
                        "attention_factor": attention_factor,
                    }),
                );
                set(
                    "original_max_position_embeddings",
                    (*original_max_position_embeddings).into(),
                );
            }
        }
        if let Some(b) = self.bos_token_id {
            set("bos_token_id", b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => set("eos_token_id", (*one).into()),
            many => set("eos_token_id", serde_json::json!(many)),
        }
        if let Some(p) = self.pad_token_id {
            set("pad_token_id", p.into());
        }
        set("torch_dtype", "float32".into());
        serde_json::Value::Object(map)
    }

    /// Whether layer `i` attends through the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding.get(i).copied().unwrap_or(false)
    }

    /// Whether layer `i` applies RoPE.
    pub fn uses_rope(&self, i: usize) -> bool {
        self.rope_layers.get(i).copied().unwrap_or(true)
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// A `rope_scaling` (or one layer type's `rope_parameters`) object: `None`
/// for the identity, or why it is not supported.
fn parse_rope_scaling(
    v: &serde_json::Value,
    raw: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<Option<RopeScaling>, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => serde_json::from_value::<Llama3RopeScaling>(v.clone())
            .map(|s| Some(RopeScaling::Llama3(s)))
            .map_err(|e| format!("invalid llama3 rope scaling: {e}")),
        "linear" => match v.get("factor").and_then(|f| f.as_f64()) {
            Some(factor) if factor > 0.0 => Ok(Some(RopeScaling::Linear { factor })),
            _ => Err("linear rope scaling needs a positive `factor`".into()),
        },
        "longrope" | "su" => long_rope(v, raw).map(Some),
        other => Err(format!(
            "unsupported rope scaling type `{other}` (supported: default, linear, llama3, longrope)"
        )),
    }
}

/// LongRoPE's parameters as transformers' `_compute_longrope_parameters`
/// reads them: `original_max_position_embeddings` from the scaling object or
/// the config, `factor` (else max / original max) giving the default
/// `attention_factor` √(1 + ln factor / ln original max).
fn long_rope(
    v: &serde_json::Value,
    raw: &serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<RopeScaling, String> {
    let factors = |key: &str| -> std::result::Result<Vec<f64>, String> {
        v.get(key)
            .and_then(|f| f.as_array())
            .and_then(|f| f.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
            .ok_or_else(|| format!("longrope scaling needs `{key}` (a list of numbers)"))
    };
    let number = |key: &str| v.get(key).or_else(|| raw.get(key)).and_then(|x| x.as_f64());
    let original = number("original_max_position_embeddings")
        .filter(|&n| n >= 2.0)
        .ok_or("longrope scaling needs `original_max_position_embeddings`")?;
    let factor = v
        .get("factor")
        .and_then(|f| f.as_f64())
        .or_else(|| Some(raw.get("max_position_embeddings")?.as_f64()? / original))
        .unwrap_or(1.0);
    let attention_factor = match v.get("attention_factor").and_then(|f| f.as_f64()) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / original.ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original as usize,
        attention_factor,
    })
}

/// Which layers attend through a sliding window, and its width, as
/// transformers decides them: `layer_types` where the config lists them, else
/// the family's rule (Gemma 3: every `sliding_window_pattern`-th layer is
/// global; Qwen: layers from `max_window_layers` on; Mistral: all). Qwen's
/// window is off unless `use_sliding_window`; Llama has none.
fn sliding_layers(
    raw: &serde_json::Map<String, serde_json::Value>,
    model_type: ModelType,
    layers: usize,
    err: impl Fn(&str, String) -> ModelError,
) -> Result<(Vec<bool>, Option<usize>)> {
    let window = match raw.get("sliding_window") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(w) if w > 0 => Some(w as usize),
            _ => {
                return Err(err(
                    "sliding_window",
                    format!("expected a positive integer, got {v}"),
                ));
            }
        },
    };
    let switched_on = raw.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true);
    let window = match model_type {
        ModelType::Mistral => window,
        // transformers' Gemma3TextConfig default.
        ModelType::Gemma3 => window.or(Some(4096)),
        ModelType::Qwen2 | ModelType::Qwen3 | ModelType::Smollm3 => window.filter(|_| switched_on),
        // transformers' Phi-3 applies `sliding_window` to every layer.
        ModelType::Phi3 => window,
        ModelType::Llama | ModelType::Olmo2 => None,
    };
    if model_type == ModelType::Gemma3
        && raw
            .get("use_bidirectional_attention")
            .and_then(|v| v.as_bool())
            == Some(true)
    {
        return Err(err(
            "use_bidirectional_attention",
            "bidirectional attention (an embedding model) is not a causal LM".into(),
        ));
    }
    let Some(window) = window else {
        return Ok((Vec::new(), None));
    };
    let count = |field: &str, default: usize| {
        raw.get(field)
            .and_then(|v| v.as_u64())
            .map_or(default, |n| n as usize)
    };
    let flags: Vec<bool> = match raw.get("layer_types") {
        Some(serde_json::Value::Array(types)) => {
            let flags = types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(err(
                        "layer_types",
                        format!("unsupported layer type {t} (supported: full_attention, sliding_attention)"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            if flags.len() != layers {
                return Err(err(
                    "layer_types",
                    format!("{} types for {layers} layers", flags.len()),
                ));
            }
            flags
        }
        _ => match model_type {
            ModelType::Gemma3 => {
                let pattern = count("sliding_window_pattern", 6).max(1);
                (0..layers).map(|i| (i + 1) % pattern != 0).collect()
            }
            ModelType::Mistral | ModelType::Phi3 => vec![true; layers],
            _ => {
                let from = count("max_window_layers", 28);
                (0..layers).map(|i| i >= from).collect()
            }
        },
    };
    Ok(match flags.contains(&true) {
        true => (flags, Some(window)),
        false => (Vec::new(), None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: serde_json::Value) -> Result<LlamaConfig> {
        let mut v = serde_json::json!({
            "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        LlamaConfig::from_json(v, Path::new("config.json"))
    }

    /// A family we do not implement: one line naming what config.json says
    /// and what is supported.
    #[test]
    fn an_unknown_family_names_its_type_architectures_and_the_supported_ones() {
        let e = parse(serde_json::json!({
            "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`gpt_neox`, architectures GPTNeoXForCausalLM"),
            "{e}"
        );
        assert!(e.contains(SUPPORTED_MODEL_TYPES), "{e}");
        assert_eq!(e.lines().count(), 1);
    }

    /// The families' variants, and SmolLM3's per-layer RoPE flags checked
    /// against the layer count.
    #[test]
    fn families_read_their_variants() {
        let qwen3 = parse(serde_json::json!({"model_type": "qwen3", "head_dim": 32})).unwrap();
        assert_eq!(
            (qwen3.head_dim, qwen3.model_type.qk_norm()),
            (32, QkNorm::PerHead)
        );
        let olmo2 = parse(serde_json::json!({"model_type": "olmo2"})).unwrap();
        assert_eq!(olmo2.model_type.norms(), NormPlacement::Post);
        let smol =
            parse(serde_json::json!({"model_type": "smollm3", "no_rope_layers": [1, 0]})).unwrap();
        assert_eq!((smol.uses_rope(0), smol.uses_rope(1)), (true, false));
        let e = parse(serde_json::json!({"model_type": "smollm3", "no_rope_layers": [1]}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no_rope_layers") && e.contains("1 flags for 2 layers"),
            "{e}"
        );
        // Qwen's window: off unless switched on, from max_window_layers on.
        let qwen = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"model_type": "qwen3", "sliding_window": 8});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(v).unwrap()
        };
        let off = qwen(serde_json::json!({"max_window_layers": 1}));
        assert_eq!((off.sliding.clone(), off.sliding_window), (vec![], None));
        let on = qwen(serde_json::json!({"use_sliding_window": true, "max_window_layers": 1}));
        assert_eq!(
            (on.sliding.clone(), on.sliding_window),
            (vec![false, true], Some(8))
        );
        let e = parse(serde_json::json!({
            "model_type": "mistral", "sliding_window": 8, "layer_types": ["full_attention"]
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("layer_types") && e.contains("1 types for 2 layers"),
            "{e}"
        );
    }

    /// Phi-3's LongRoPE (`su`, its old name, too) with the attention factor
    /// transformers derives, and what it does not support refused by key.
    #[test]
    fn phi3_reads_longrope() {
        let phi3 = |extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "model_type": "phi3", "max_position_embeddings": 16,
                "original_max_position_embeddings": 4,
                "rope_scaling": {"type": "su", "short_factor": [1.0, 2.0, 3.0, 4.0],
                                 "long_factor": [5.0, 6.0, 7.0, 8.0]}
            });
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(v)
        };
        let c = phi3(serde_json::json!({})).unwrap();
        let Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) = c.rope_scaling.clone()
        else {
            panic!("{:?}", c.rope_scaling);
        };
        assert_eq!(original_max_position_embeddings, 4);
        assert!((attention_factor - 2f64.sqrt()).abs() < 1e-12);
        assert!(c.model_type.fused_projections());
        let again = LlamaConfig::from_json(c.to_json(), Path::new("config.json")).unwrap();
        assert_eq!(again.rope_scaling, c.rope_scaling);
        for (extra, key) in [
            (
                serde_json::json!({"partial_rotary_factor": 0.75}),
                "partial_rotary_factor",
            ),
            (serde_json::json!({"head_dim": 16}), "rope_scaling"),
        ] {
            let e = phi3(extra).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    /// Gemma 3 in the pre-5.x layout (rope_theta, rope_local_base_freq,
    /// sliding_window_pattern) and in transformers 5's (rope_parameters per
    /// layer type), with what it does not support refused by key.
    #[test]
    fn gemma3_reads_both_config_layouts() {
        let old = parse(serde_json::json!({
            "model_type": "gemma3_text", "head_dim": 8, "sliding_window": 16,
            "sliding_window_pattern": 2, "rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "query_pre_attn_scalar": 16
        }))
        .unwrap();
        assert_eq!(old.sliding, vec![true, false]);
        assert_eq!((old.rope_theta, old.local_rope_theta), (1e6, Some(1e4)));
        assert_eq!(old.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(old.activation, Activation::GeluTanh);
        assert_eq!(old.attention_scale, 0.25);
        let new = parse(serde_json::json!({
            "model_type": "gemma3_text", "head_dim": 8, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
            },
            "query_pre_attn_scalar": 16
        }))
        .unwrap();
        for field in ["sliding", "rope", "activation", "scale"] {
            let same = match field {
                "sliding" => {
                    (new.sliding.clone(), new.sliding_window)
                        == (old.sliding.clone(), old.sliding_window)
                }
                "rope" => {
                    (
                        new.rope_theta,
                        new.local_rope_theta,
                        new.rope_scaling.clone(),
                    ) == (
                        old.rope_theta,
                        old.local_rope_theta,
                        old.rope_scaling.clone(),
                    )
                }
                "activation" => new.activation == old.activation,
                _ => new.attention_scale == old.attention_scale,
            };
            assert!(same, "{field} differs between the layouts");
        }
        // Written back in the old layout, read the same.
        let again = LlamaConfig::from_json(new.to_json(), Path::new("config.json")).unwrap();
        assert_eq!(again.to_json(), new.to_json());
        assert_eq!(again.local_rope_theta, Some(1e4));
        for (key, value) in [
            ("attn_logit_softcapping", serde_json::json!(50.0)),
            ("use_bidirectional_attention", serde_json::json!(true)),
            ("hidden_activation", serde_json::json!("relu")),
        ] {
            let mut v = serde_json::json!({"model_type": "gemma3_text", "sliding_window": 4});
            v[key] = value;
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
