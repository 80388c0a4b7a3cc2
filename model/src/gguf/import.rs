//! [`import_gguf`]: a GGUF of one of the [`Arch`](super::Arch)s → a Hugging Face model directory with f32 weights.
//!
//! Written files: `config.json`, `generation_config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` and, when the file has one, `chat_template.jinja`. Everything is checked
//! (architecture, shapes, tensor types, tokenizer) before anything is written; the directory is
//! built as `<out_dir>.tmp-<unique>` next to `out_dir` and renamed into place, so `out_dir` either
//! appears complete or not at all.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::GgufError;
use super::arch::{HfTensor, ModelParams, hf_tensors};
use super::reader::{GgmlType, GgufFile};
use super::tokenizer::tokenizer_files;

/// What [`import_gguf`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    pub out_dir: PathBuf,
    pub params: ModelParams,
    /// Tensors written to `model.safetensors`.
    pub n_tensors: usize,
    /// Total number of weights written.
    pub n_params: u64,
    /// How many tensors of each type the GGUF held.
    pub source_types: BTreeMap<GgmlType, usize>,
    /// Not errors, but worth telling the user (e.g. an assumed pre-tokenizer).
    pub warnings: Vec<String>,
}

/// Reported after each tensor is written.
#[derive(Debug, Clone, Copy)]
pub struct ImportProgress<'a> {
    pub done: usize,
    pub total: usize,
    /// HF name of the tensor just written.
    pub tensor: &'a str,
}

/// Import the GGUF `gguf` (any [`Arch`](super::Arch)) into a new Hugging Face directory `out_dir`, which must not
/// exist or be empty.
pub fn import_gguf(gguf: &Path, out_dir: &Path) -> Result<ImportReport, GgufError> {
    import_gguf_with_progress(gguf, out_dir, &mut |_| {})
}

/// [`import_gguf`], calling `progress` after each tensor.
pub fn import_gguf_with_progress(
    gguf: &Path,
    out_dir: &Path,
    progress: &mut dyn FnMut(ImportProgress<'_>),
) -> Result<ImportReport, GgufError> {
    let file = GgufFile::open(gguf)?;
    let params = ModelParams::from_gguf(&file)?;
    let tensors = hf_tensors(&file, &params)?;
    for t in &tensors {
        file.check_supported(file.tensor(&t.gguf_name)?)?;
    }
    let tok = tokenizer_files(&file, params.arch, Some(params.max_position_embeddings))?;

    ensure_absent_or_empty(out_dir)?;
    let name = out_dir
        .file_name()
        .ok_or_else(|| {
            GgufError::io(
                out_dir,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "output path has no name"),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| GgufError::io(&parent, e))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = parent.join(format!("{name}.tmp-{}-{nanos}", std::process::id()));
    fs::create_dir(&tmp).map_err(|e| GgufError::io(&tmp, e))?;

    let written = write_dir(&file, &params, &tensors, &tok, &tmp, progress).and_then(|n_params| {
        ensure_absent_or_empty(out_dir)?;
        if out_dir.is_dir() {
            fs::remove_dir(out_dir).map_err(|e| GgufError::io(out_dir, e))?;
        }
        fs::rename(&tmp, out_dir).map_err(|e| GgufError::io(out_dir, e))?;
        Ok(n_params)
    });
    let n_params = match written {
        Ok(n) => n,
        Err(e) => {
            // Best effort: the error being returned matters more than a failed clean-up.
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };

    Ok(ImportReport {
        out_dir: out_dir.to_path_buf(),
        params,
        n_tensors: tensors.len(),
        n_params,
        source_types: file.type_histogram(),
        warnings: tok.warnings,
    })
}

fn ensure_absent_or_empty(dir: &Path) -> Result<(), GgufError> {
    if !dir.exists() {
        return Ok(());
    }
    let empty_dir = dir.is_dir()
        && fs::read_dir(dir)
            .map_err(|e| GgufError::io(dir, e))?
            .next()
            .is_none();
    if empty_dir {
        Ok(())
    } else {
        Err(GgufError::OutputExists {
            dir: dir.to_path_buf(),
        })
    }
}

fn write_dir(
    file: &GgufFile,
    params: &ModelParams,
    tensors: &[HfTensor],
    tok: &super::tokenizer::TokenizerFiles,
    dir: &Path,
    progress: &mut dyn FnMut(ImportProgress<'_>),
) -> Result<u64, GgufError> {
    write_json(&dir.join("config.json"), &params.config_json())?;
    write_json(
        &dir.join("generation_config.json"),
        &tok.generation_config_json,
    )?;
    write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tok.tokenizer_config_json,
    )?;
    if let Some(template) = &tok.chat_template {
        let p = dir.join("chat_template.jinja");
        fs::write(&p, template).map_err(|e| GgufError::io(&p, e))?;
    }
    write_safetensors(file, tensors, &dir.join("model.safetensors"), progress)
}

fn write_json(path: &Path, value: &Value) -> Result<(), GgufError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| GgufError::io(path, e.into()))?;
    bytes.push(b'\n');
    fs::write(path, bytes).map_err(|e| GgufError::io(path, e))
}

/// Stream `tensors` as f32 into a safetensors file, one tensor in memory at a time: the header
/// (u64 length + JSON, space-padded to 8 bytes) is known before any data is dequantized.
/// Written to `<dest>.tmp`, synced, then renamed to `dest`. Returns the number of weights.
///
/// See: <https://github.com/huggingface/safetensors#format>.
pub fn write_safetensors(
    file: &GgufFile,
    tensors: &[HfTensor],
    dest: &Path,
    progress: &mut dyn FnMut(ImportProgress<'_>),
) -> Result<u64, GgufError> {
    let mut order: Vec<&HfTensor> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));

    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in &order {
        let end = offset + 4 * t.n_elements() as u64;
        header.insert(
            t.name.clone(),
            json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| GgufError::io(dest, e.into()))?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let tmp = dest.with_extension("safetensors.tmp");
    let f = File::create(&tmp).map_err(|e| GgufError::io(&tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 22, f);
    let io = |e| GgufError::io(&tmp, e);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for (done, t) in order.iter().enumerate() {
        let data = t.load(file)?;
        write_f32_le(&mut w, &data).map_err(io)?;
        progress(ImportProgress {
            done: done + 1,
            total: order.len(),
            tensor: &t.name,
        });
    }
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, dest).map_err(|e| GgufError::io(dest, e))?;
    Ok(offset / 4)
}

fn write_f32_le(w: &mut impl Write, data: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(data))
    } else {
        for chunk in data.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testing::{GgufBuilder, ScratchDir, f32s, fixture};

    fn read_json(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn tiny_llama_directory() {
        let scratch = ScratchDir::new("import");
        let out = scratch.0.join("nested").join("tiny");
        let mut seen = Vec::new();
        let report = import_gguf_with_progress(&fixture("tiny-llama.gguf.bin"), &out, &mut |p| {
            seen.push((p.done, p.total, p.tensor.to_string()))
        })
        .unwrap();
        assert_eq!(report.n_tensors, 21);
        assert_eq!(seen.len(), 21);
        assert_eq!(seen.last().map(|s| (s.0, s.1)), Some((21, 21)));
        assert_eq!(report.source_types.get(&GgmlType::Q8_0), Some(&2));

        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "chat_template.jinja",
                "config.json",
                "generation_config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json"
            ]
        );
        // Nothing left next to it.
        assert_eq!(fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);

        let config = read_json(&out.join("config.json"));
        assert_eq!(config["hidden_size"], 32);
        assert_eq!(config["vocab_size"], 301);
        let loaded = crate::config::LlamaConfig::load(&out.join("config.json")).unwrap();
        assert_eq!(loaded.model_type, crate::config::ModelType::Llama);
        assert_eq!(loaded.rms_norm_eps, 1e-6);
        let tok = read_json(&out.join("tokenizer.json"));
        assert_eq!(tok["model"]["type"], "BPE");

        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        let ours = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let expected = fs::read(fixture("tiny-llama.expected.safetensors")).unwrap();
        let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
        let mut our_names = ours.names();
        our_names.sort();
        let mut want_names = expected.names();
        want_names.sort();
        assert_eq!(our_names, want_names);
        let mut n_params = 0;
        for name in want_names {
            let (a, b) = (ours.tensor(name).unwrap(), expected.tensor(name).unwrap());
            assert_eq!(a.dtype(), safetensors::Dtype::F32);
            assert_eq!(a.shape(), b.shape(), "{name}");
            assert_eq!(f32s(a.data()), f32s(b.data()), "{name}");
            n_params += a.shape().iter().product::<usize>() as u64;
        }
        assert_eq!(report.n_params, n_params);

        // The directory now exists and is not empty: a second import refuses to touch it.
        let e = import_gguf(&fixture("tiny-llama.gguf.bin"), &out).unwrap_err();
        assert!(matches!(e, GgufError::OutputExists { .. }), "{e}");
    }

    /// Each family's fixture imports to a directory whose config.json alignkit's own loader reads
    /// as that family (Gemma 3's sliding layers and scale, Phi-3's LongRoPE and window, SmolLM3's
    /// NoPE layers included) and whose weights it loads, whose tokenizer.json the `tokenizers`
    /// crate loads, and whose weights are the expected ones.
    #[test]
    fn tiny_family_directories() {
        use crate::config::{LlamaConfig, ModelType, RopeScaling};
        for (name, model_type, n_tensors) in [
            ("qwen2", ModelType::Qwen2, 27),
            ("qwen3", ModelType::Qwen3, 24),
            ("olmo2", ModelType::Olmo2, 25),
            ("gemma3", ModelType::Gemma3, 80),
            ("phi3", ModelType::Phi3, 15),
            ("smollm3", ModelType::Smollm3, 38),
        ] {
            let scratch = ScratchDir::new(name);
            let out = scratch.0.join(name);
            let report = import_gguf(&fixture(&format!("tiny-{name}.gguf.bin")), &out).unwrap();
            assert_eq!(report.n_tensors, n_tensors, "{name}");
            assert!(report.warnings.is_empty(), "{name}: {:?}", report.warnings);

            let config = LlamaConfig::load(&out.join("config.json")).unwrap();
            assert_eq!(config.model_type, model_type, "{name}");
            assert_eq!(config.qkv_bias, name == "qwen2", "{name}");
            if name == "gemma3" {
                assert_eq!(config.sliding, [true, true, true, true, true, false]);
                assert_eq!(config.sliding_window, Some(4));
                assert_eq!(config.local_rope_theta, Some(10_000.0));
                assert_eq!(config.rope_theta, 1_000_000.0);
                assert_eq!(config.attention_scale, 0.25); // 1/√16
                assert!(config.tie_word_embeddings);
            }
            if name == "phi3" {
                // √(1 + ln(32 / 8) / ln 8), transformers' default, left for the loader to compute.
                let attention_factor = (1.0 + 4f64.ln() / 8f64.ln()).sqrt();
                assert_eq!(
                    config.rope_scaling,
                    Some(RopeScaling::LongRope {
                        short_factor: vec![1.0, 1.1, 1.3, 1.7],
                        long_factor: vec![1.5, 2.0, 3.0, 5.0],
                        original_max_position_embeddings: 8,
                        attention_factor,
                    })
                );
                assert_eq!(config.sliding, [true, true]);
                assert_eq!(config.sliding_window, Some(6));
                assert!(!config.tie_word_embeddings);
            }
            if name == "smollm3" {
                assert_eq!(config.rope_layers, [true, true, true, false]);
                assert_eq!(config.rope_theta, 2_000_000.0);
                assert!(config.sliding.is_empty());
                assert!(config.tie_word_embeddings);
            }
            if matches!(name, "phi3" | "smollm3") {
                let (loaded, _model) =
                    crate::checkpoint::load_model::<burn::backend::Flex>(&out, &Default::default())
                        .unwrap();
                assert_eq!(loaded.model_type, model_type);
            }
            tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();

            let bytes = fs::read(out.join("model.safetensors")).unwrap();
            let ours = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let expected = fs::read(fixture(&format!("tiny-{name}.expected.safetensors"))).unwrap();
            let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
            assert_eq!(ours.len(), expected.len(), "{name}");
            for (tensor, want) in expected.tensors() {
                let got = ours.tensor(&tensor).unwrap();
                assert_eq!(got.shape(), want.shape(), "{name}: {tensor}");
                assert_eq!(f32s(got.data()), f32s(want.data()), "{name}: {tensor}");
            }
        }
    }

    #[test]
    fn empty_output_dir_is_replaced() {
        let scratch = ScratchDir::new("empty");
        let out = scratch.0.join("hf");
        fs::create_dir(&out).unwrap();
        import_gguf(&fixture("tiny-llama.gguf.bin"), &out).unwrap();
        assert!(out.join("model.safetensors").is_file());
    }

    #[test]
    fn failures_leave_nothing_behind() {
        let scratch = ScratchDir::new("fail");
        let out = scratch.0.join("hf");
        // Not a model of a supported architecture.
        let e = import_gguf(&fixture("quants.gguf.bin"), &out).unwrap_err();
        assert!(
            e.to_string().contains(
                "architecture \"test\" (supported: llama, qwen2, qwen3, olmo2, gemma3, phi3, \
                 smollm3) is not supported"
            ),
            "{e}"
        );
        // A llama model with a tensor type we cannot dequantize.
        let b = GgufBuilder::tiny_llama().raw_tensor(
            "blk.0.ffn_down.weight",
            GgmlType::Q2_K,
            &[256, 8],
            vec![0; 8 * 84],
        );
        let b = b
            .u32("llama.feed_forward_length", 256)
            .f32_tensor("blk.0.ffn_gate.weight", &[8, 256], |_| 0.0)
            .f32_tensor("blk.0.ffn_up.weight", &[8, 256], |_| 0.0);
        let src = scratch.0.join("q2k.gguf");
        fs::write(&src, b.build()).unwrap();
        let e = import_gguf(&src, &out).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("tensor blk.0.ffn_down.weight has type Q2_K which is not supported"),
            "{e}"
        );
        let e = import_gguf(&scratch.0.join("missing.gguf"), &out).unwrap_err();
        assert!(matches!(e, GgufError::Io { .. }), "{e}");
        let left: Vec<_> = fs::read_dir(&scratch.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("q2k.gguf")]);
    }

    /// The real SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), when `ALIGNKIT_SMOLLM2_GGUF` points at it.
    /// Compared against transformers by `scripts/check_gguf_import.py`.
    #[test]
    #[ignore = "needs the real GGUF: ALIGNKIT_SMOLLM2_GGUF=PATH cargo test -- --ignored smollm2_gguf"]
    fn smollm2_gguf() {
        let path = std::env::var_os("ALIGNKIT_SMOLLM2_GGUF")
            .expect("set ALIGNKIT_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf");
        let f = GgufFile::open(&path).unwrap();
        let types = f.type_histogram();
        assert_eq!(types.get(&GgmlType::Q4_1), Some(&210));
        let params = ModelParams::from_gguf(&f).unwrap();
        assert_eq!(
            (
                params.hidden_size,
                params.num_hidden_layers,
                params.vocab_size
            ),
            (576, 30, 49152)
        );
        assert!(params.tie_word_embeddings);
        drop(f);

        let scratch = ScratchDir::new("smollm2");
        let out = scratch.0.join("smollm2");
        let start = std::time::Instant::now();
        let report = import_gguf(Path::new(&path), &out).unwrap();
        eprintln!(
            "imported {} weights in {:?}",
            report.n_params,
            start.elapsed()
        );
        assert_eq!(report.n_params, 134_515_008);
        // transformers 5's `rope_parameters`, read by alignkit's loader as well.
        let config = crate::config::LlamaConfig::load(&out.join("config.json")).unwrap();
        assert_eq!(config.rope_theta, 100_000.0);
        let tok = read_json(&out.join("tokenizer.json"));
        assert_eq!(tok["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(tok["added_tokens"].as_array().unwrap().len(), 17);
        let tc = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(
            (&tc["bos_token"], &tc["eos_token"]),
            (&json!("<|im_start|>"), &json!("<|im_end|>"))
        );
    }
}
