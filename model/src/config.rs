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
}

/// The `model_type`s this decoder reads, for error messages.
pub const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3, smollm3, olmo2";

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
        }
    }

    /// How the family normalises queries and keys.
    pub fn qk_norm(self) -> QkNorm {
        match self {
            ModelType::Qwen3 => QkNorm::PerHead,
            ModelType::Olmo2 => QkNorm::Whole,
            _ => QkNorm::None,
        }
    }

    /// Where the family's norms sit.
    pub fn norms(self) -> NormPlacement {
        match self {
            ModelType::Olmo2 => NormPlacement::Post,
            _ => NormPlacement::Pre,
        }
    }
}

/// RoPE frequency scaling (`rope_scaling` in config.json). Only `llama3` changes
/// the frequencies; `default` is the identity.
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
    pub rope_scaling: Option<Llama3RopeScaling>,
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
        let serde_json::Value::Object(raw) = value else {
            return Err(err("<root>", "expected a JSON object".into()));
        };
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
        // `rope_parameters`.
        let rope_params = match raw.get("rope_scaling") {
            Some(v) if !v.is_null() => Some(("rope_scaling", v)),
            _ => raw
                .get("rope_parameters")
                .filter(|v| !v.is_null())
                .map(|v| ("rope_parameters", v)),
        };
        let rope_scaling = match rope_params {
            None => None,
            Some((field, v)) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("default");
                match kind {
                    "default" => None,
                    "llama3" => Some(
                        serde_json::from_value::<Llama3RopeScaling>(v.clone())
                            .map_err(|e| err(field, format!("invalid llama3 rope scaling: {e}")))?,
                    ),
                    other => {
                        return Err(err(
                            field,
                            format!(
                                "unsupported rope scaling type `{other}` (supported: default, llama3)"
                            ),
                        ));
                    }
                }
            }
        };
        let nested_theta = raw
            .get("rope_parameters")
            .and_then(|v| v.get("rope_theta"))
            .and_then(|v| v.as_f64());
        let rope_theta = get_f64("rope_theta")?.or(nested_theta).unwrap_or(10_000.0);

        if let Some(act) = raw.get("hidden_act").and_then(|v| v.as_str())
            && act != "silu"
        {
            return Err(err(
                "hidden_act",
                format!("unsupported activation `{act}` (supported: silu)"),
            ));
        }
        let attention_bias = get_bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match model_type {
            ModelType::Qwen2 => (true, false),
            _ => (attention_bias, attention_bias),
        };
        if get_bool("use_sliding_window")? == Some(true) {
            return Err(err(
                "use_sliding_window",
                "sliding-window attention is not supported yet (every layer attends to every earlier token)".into(),
            ));
        }
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
        set("hidden_act", "silu".into());
        if self.model_type != ModelType::Qwen2 {
            set("attention_bias", self.qkv_bias.into());
            set("mlp_bias", self.mlp_bias.into());
        }
        if !self.rope_layers.is_empty() {
            let flags: Vec<u8> = self.rope_layers.iter().map(|&r| r as u8).collect();
            set("no_rope_layers", serde_json::json!(flags));
        }
        if let Some(s) = &self.rope_scaling {
            let mut v = serde_json::to_value(s).expect("plain struct serializes");
            v["rope_type"] = "llama3".into();
            set("rope_scaling", v);
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

    /// Whether layer `i` applies RoPE.
    pub fn uses_rope(&self, i: usize) -> bool {
        self.rope_layers.get(i).copied().unwrap_or(true)
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
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
            "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`gemma3_text`, architectures Gemma3ForCausalLM"),
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
        let e = parse(serde_json::json!({"model_type": "qwen3", "use_sliding_window": true}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_sliding_window"), "{e}");
    }
}
