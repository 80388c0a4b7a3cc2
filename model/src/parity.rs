//! Parity fixtures: tiny random models with transformers' outputs, written by
//! scripts/fixtures_model.py into model/tests/fixtures/NAME/ (config.json,
//! model.safetensors, expected.json). The model's tests, `alignkit parity`
//! (a GPU build's check) and the GPU-path tests on wgpu all read them here.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::mask::{attention_mask, positions_from_mask};
use crate::{ForwardInput, LlamaForCausalLM, SamplingConfig, generate};

/// One batch: rows of token ids, and which positions of each row are real.
pub type Batch = (Vec<Vec<u32>>, Vec<Vec<bool>>);

/// A fixture's inputs and transformers' outputs.
pub struct Fixture {
    pub dir: PathBuf,
    /// Batches of rows and which positions are real: each unpadded sequence
    /// alone, then the left-padded and the right-padded batch.
    pub batches: Vec<Batch>,
    /// transformers' logits of each batch at its real positions, flattened.
    pub expected: Vec<Vec<f32>>,
    /// The greedy continuation of `prompt` under transformers.
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
}

fn bad(file: &Path, what: &str) -> ModelError {
    ModelError::Config {
        path: file.to_path_buf(),
        field: what.to_string(),
        message: "missing or malformed".into(),
    }
}

fn ids(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().map(|x| x as u32))
        .collect()
}

fn flat(v: &Value, out: &mut Vec<f32>) -> Option<()> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| flat(x, out)),
        x => {
            out.push(x.as_f64()? as f32);
            Some(())
        }
    }
}

/// The rows of `logits` [B, T, V] at real positions only (padded positions'
/// logits are meaningless), flattened.
pub fn real_positions(logits: &[f32], valid: &[Vec<bool>], v: usize) -> Vec<f32> {
    let t = valid.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    for (r, mask) in valid.iter().enumerate() {
        for (p, &is_real) in mask.iter().enumerate() {
            if is_real {
                let off = (r * t + p) * v;
                out.extend_from_slice(&logits[off..off + v]);
            }
        }
    }
    out
}

/// The largest |a − b| over matching batches.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "batches of different sizes");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

impl Fixture {
    pub fn read(dir: &Path) -> Result<Self> {
        let file = dir.join("expected.json");
        let text = std::fs::read_to_string(&file).map_err(|e| ModelError::io(&file, e))?;
        let exp: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: file.clone(),
            source,
        })?;
        let vocab = exp["logits"][0][0]
            .as_array()
            .map(Vec::len)
            .ok_or_else(|| bad(&file, "logits"))?;
        let mut out = Fixture {
            dir: dir.to_path_buf(),
            batches: Vec::new(),
            expected: Vec::new(),
            prompt: ids(&exp["greedy"]["prompt"]).ok_or_else(|| bad(&file, "greedy.prompt"))?,
            greedy: ids(&exp["greedy"]["tokens"]).ok_or_else(|| bad(&file, "greedy.tokens"))?,
        };
        let sequences = exp["sequences"]
            .as_array()
            .ok_or_else(|| bad(&file, "sequences"))?;
        for (i, seq) in sequences.iter().enumerate() {
            let seq = ids(seq).ok_or_else(|| bad(&file, "sequences"))?;
            let mut want = Vec::new();
            flat(&exp["logits"][i], &mut want).ok_or_else(|| bad(&file, "logits"))?;
            out.batches
                .push((vec![seq.clone()], vec![vec![true; seq.len()]]));
            out.expected.push(want);
        }
        for side in ["left_padded", "right_padded"] {
            let e = &exp[side];
            let rows: Vec<Vec<u32>> = e["input_ids"]
                .as_array()
                .and_then(|rows| rows.iter().map(ids).collect())
                .ok_or_else(|| bad(&file, side))?;
            let valid: Vec<Vec<bool>> = e["attention_mask"]
                .as_array()
                .and_then(|rows| {
                    rows.iter()
                        .map(|m| Some(ids(m)?.into_iter().map(|x| x == 1).collect()))
                        .collect()
                })
                .ok_or_else(|| bad(&file, side))?;
            let mut want = Vec::new();
            flat(&e["logits"], &mut want).ok_or_else(|| bad(&file, side))?;
            out.expected.push(real_positions(&want, &valid, vocab));
            out.batches.push((rows, valid));
        }
        Ok(out)
    }

    /// `model`'s logits of every batch at real positions, as [`Self::expected`].
    pub fn logits<B: Backend>(
        &self,
        model: &LlamaForCausalLM<B>,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>> {
        let v = model.model.embed_tokens.weight.dims()[0];
        let mut out = Vec::new();
        for (rows, valid) in &self.batches {
            let (b, t) = (rows.len(), rows[0].len());
            let flat_ids: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
            let positions: Vec<i64> = positions_from_mask(valid).concat();
            let input = ForwardInput {
                input_ids: Tensor::<B, 2, Int>::from_data(
                    TensorData::new(flat_ids, [b, t]),
                    device,
                ),
                positions: Tensor::<B, 2, Int>::from_data(
                    TensorData::new(positions, [b, t]),
                    device,
                ),
                mask: attention_mask::<B>(valid, t, None, device),
            };
            let logits = model
                .forward(input, None)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| ModelError::Input(format!("logits: {e:?}")))?;
            out.push(real_positions(&logits, valid, v));
        }
        Ok(out)
    }

    /// `model`'s greedy continuation of [`Self::prompt`], as long as transformers'.
    pub fn greedy<B: Backend>(
        &self,
        model: &LlamaForCausalLM<B>,
        device: &B::Device,
    ) -> Result<Vec<u32>> {
        let config = SamplingConfig {
            max_new_tokens: self.greedy.len(),
            ..SamplingConfig::default()
        };
        let out = generate(
            model,
            std::slice::from_ref(&self.prompt),
            &[],
            0,
            &config,
            |_, _| false,
            device,
        )?;
        Ok(out.into_iter().next().map(|g| g.tokens).unwrap_or_default())
    }
}
