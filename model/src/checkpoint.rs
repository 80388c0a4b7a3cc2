//! Hugging Face checkpoint I/O: `config.json` + `model.safetensors` (or shards
//! listed in `model.safetensors.index.json`).
//!
//! Module fields are named like the checkpoint, so a tensor's name is the path
//! of its parameter (`model.layers.3.self_attn.q_proj.weight`): loading and
//! saving walk the module with burn's visitor/mapper and need no remap table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::transformer::LlamaForCausalLM;

/// Storage dtype of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    Bf16,
}

/// A tensor read from disk, converted to f32.
struct Loaded {
    shape: Vec<usize>,
    data: Vec<f32>,
    file: PathBuf,
}

/// The safetensors files of a model directory, in load order.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: index.clone(),
                source,
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index.clone(),
                field: "weight_map".into(),
                message: "missing or not an object".into(),
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors or model.safetensors.index.json",
        ),
    ))
}

fn read_tensors(path: &Path, out: &mut HashMap<String, Loaded>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the file is opened read-only and only read while mapped; a
    // concurrent truncation by another process is outside what we can defend.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let tensors = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    for (name, view) in tensors.tensors() {
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        out.insert(
            name,
            Loaded {
                shape: view.shape().to_vec(),
                data,
                file: path.to_path_buf(),
            },
        );
    }
    Ok(())
}

/// A checkpoint tensor the decoder holds in parts: Phi-3's `qkv_proj`
/// (q, k, v rows) and `gate_up_proj` (gate, up rows).
pub struct Fused {
    pub name: String,
    /// Each part's name and rows, in the order they are stacked.
    pub parts: Vec<(String, usize)>,
}

/// The fused tensors of `config`'s checkpoints (none but for Phi-3), under
/// `model.layers.*`.
pub fn fused_tensors(config: &LlamaConfig) -> Vec<Fused> {
    if !config.model_type.fused_projections() {
        return Vec::new();
    }
    let (h, k, d, f) = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.intermediate_size,
    );
    let fused = |block: String, name: &str, parts: &[(&str, usize)]| Fused {
        name: format!("{block}.{name}.weight"),
        parts: parts
            .iter()
            .map(|(part, rows)| (format!("{block}.{part}.weight"), *rows))
            .collect(),
    };
    (0..config.num_hidden_layers)
        .flat_map(|i| {
            [
                fused(
                    format!("model.layers.{i}.self_attn"),
                    "qkv_proj",
                    &[("q_proj", h * d), ("k_proj", k * d), ("v_proj", k * d)],
                ),
                fused(
                    format!("model.layers.{i}.mlp"),
                    "gate_up_proj",
                    &[("gate_proj", f), ("up_proj", f)],
                ),
            ]
        })
        .collect()
}

/// Split each fused tensor that `tensors` holds into its parts (rows of a
/// row-major matrix, so each part is a contiguous run).
fn split_fused(tensors: &mut HashMap<String, Loaded>, fused: &[Fused]) -> Result<()> {
    for f in fused {
        let Some(whole) = tensors.remove(&f.name) else {
            continue;
        };
        let rows: usize = f.parts.iter().map(|(_, r)| r).sum();
        let cols = match whole.shape.as_slice() {
            [r, c] if *r == rows => *c,
            _ => {
                return Err(ModelError::ShapeMismatch {
                    path: whole.file,
                    name: f.name.clone(),
                    expected: vec![rows, whole.shape.last().copied().unwrap_or(0)],
                    found: whole.shape,
                });
            }
        };
        let mut start = 0;
        for (name, r) in &f.parts {
            let data = whole.data[start * cols..(start + r) * cols].to_vec();
            start += r;
            tensors.insert(
                name.clone(),
                Loaded {
                    shape: vec![*r, cols],
                    data,
                    file: whole.file.clone(),
                },
            );
        }
    }
    Ok(())
}

/// An image-and-text checkpoint (Gemma 3 from 4B up) as its text model's:
/// `language_model.model.*` (`model.language_model.*` in transformers 5's
/// own layout) becomes `model.*`, `language_model.lm_head.*` `lm_head.*`,
/// and the vision tower and its projector are left out. Other checkpoints
/// are left as they are.
fn text_model_only(tensors: &mut HashMap<String, Loaded>) {
    let wrapped =
        |n: &str| n.starts_with("language_model.") || n.starts_with("model.language_model.");
    if !tensors.keys().any(|n| wrapped(n)) {
        return;
    }
    let names: Vec<String> = tensors.keys().cloned().collect();
    for name in names {
        let renamed = [
            ("language_model.model.", "model."),
            ("model.language_model.", "model."),
            ("language_model.lm_head.", "lm_head."),
        ]
        .iter()
        .find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")));
        let vision = [
            "vision_tower.",
            "multi_modal_projector.",
            "model.vision_tower.",
            "model.multi_modal_projector.",
        ]
        .iter()
        .any(|p| name.starts_with(p));
        match (renamed, vision) {
            (Some(new), _) => {
                let t = tensors.remove(&name).expect("listed above");
                tensors.insert(new, t);
            }
            (None, true) => {
                tensors.remove(&name);
            }
            (None, false) => {}
        }
    }
}

/// Tracks the dotted parameter path while burn walks a module.
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn name(&self) -> String {
        self.0.join(".")
    }
}

/// Replaces each parameter by the tensor of the same name.
struct Loader<'a, B: Backend> {
    path: PathStack,
    tensors: &'a mut HashMap<String, Loaded>,
    device: B::Device,
    dir: PathBuf,
    errors: Vec<ModelError>,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.name();
        let expected = param.lazy_shape().to_vec();
        let Some(loaded) = self.tensors.remove(&name) else {
            self.errors.push(ModelError::MissingTensor {
                dir: self.dir.clone(),
                name,
                shape: expected,
            });
            return param;
        };
        if loaded.shape != expected {
            self.errors.push(ModelError::ShapeMismatch {
                path: loaded.file,
                name,
                expected,
                found: loaded.shape,
            });
            return param;
        }
        let tensor =
            Tensor::<B, D>::from_data(TensorData::new(loaded.data, loaded.shape), &self.device);
        // Fresh modules (the only ones loaded into) have every parameter
        // trainable. Asking the param instead would run its lazy random
        // initialiser just to read the flag: seconds of wasted work per load.
        Param::initialized(param.id, tensor.set_require_grad(true))
    }
}

/// Load `config.json` and the weights of an HF model directory.
///
/// Every parameter must be present with its exact shape; an unknown tensor is an
/// error too (it means the checkpoint is not the architecture we think it is).
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(LlamaConfig, LlamaForCausalLM<B>)> {
    let config = LlamaConfig::load(&dir.join("config.json"))?;
    let model = load_weights(&config, dir, device)?;
    Ok((config, model))
}

/// Load weights for a known config from an HF directory.
pub fn load_weights<B: Backend>(
    config: &LlamaConfig,
    dir: &Path,
    device: &B::Device,
) -> Result<LlamaForCausalLM<B>> {
    // Checkpoints saved with tied embeddings sometimes still carry the head, and
    // older ones carry RoPE buffers; neither is a parameter.
    let tied = config.tie_word_embeddings;
    load_module(
        LlamaForCausalLM::<B>::init(config, device),
        dir,
        device,
        (config.model_type.as_str(), &fused_tensors(config)),
        |name| name.ends_with("rotary_emb.inv_freq") || (tied && name == "lm_head.weight"),
    )
}

/// Fill every float parameter of `module` (typically freshly, lazily
/// initialised) with the tensor of the same name from the safetensors of `dir`.
///
/// Every parameter must be present with its exact shape, and every tensor in
/// the files must be used, except those `ignore` names; `architecture` names
/// the model in the error for an unexpected tensor, and the tensors the
/// checkpoint holds fused ([`fused_tensors`]) are split first.
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    dir: &Path,
    device: &B::Device,
    (architecture, fused): (&str, &[Fused]),
    ignore: impl Fn(&str) -> bool,
) -> Result<M> {
    let mut tensors = HashMap::new();
    for file in weight_files(dir)? {
        read_tensors(&file, &mut tensors)?;
    }
    text_model_only(&mut tensors);
    tensors.retain(|name, _| !ignore(name));
    split_fused(&mut tensors, fused)?;
    let mut loader = Loader::<B> {
        path: PathStack::default(),
        tensors: &mut tensors,
        device: device.clone(),
        dir: dir.to_path_buf(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    if let Some(err) = loader.errors.into_iter().next() {
        return Err(err);
    }
    if let Some((name, loaded)) = tensors.into_iter().min_by(|a, b| a.0.cmp(&b.0)) {
        return Err(ModelError::UnexpectedTensor {
            path: loaded.file,
            name,
            model_type: architecture.into(),
        });
    }
    Ok(module)
}

/// Collects every float parameter by its dotted path.
struct Collector<B: Backend> {
    path: PathStack,
    out: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> ModuleVisitor<B> for Collector<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let data = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32 above");
        self.out.insert(self.path.name(), (shape, data));
    }
}

/// Every float parameter of a module, by its checkpoint name.
pub fn named_tensors<B: Backend, M: Module<B>>(
    module: &M,
) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut collector = Collector::<B> {
        path: PathStack::default(),
        out: BTreeMap::new(),
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut collector);
    collector.out
}

/// Serialize named f32 tensors as safetensors bytes in the requested dtype.
/// The whole file is built in memory: for small files (an adapter's
/// metadata, a head) only; weights go through [`write_safetensors`].
pub fn safetensors_bytes(
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: SaveDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, data))| (name.clone(), shape.clone(), encode(data, dtype)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(dtype.safetensors(), shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Input(format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(views, metadata).map_err(|e| ModelError::Input(e.to_string()))
}

impl SaveDtype {
    fn safetensors(self) -> Dtype {
        match self {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        }
    }
}

/// Little-endian bytes of `data` in `dtype`.
fn encode(data: &[f32], dtype: SaveDtype) -> Vec<u8> {
    match dtype {
        SaveDtype::F32 => bytemuck::cast_slice::<f32, u8>(data).to_vec(),
        SaveDtype::Bf16 => data
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

/// One tensor of a file being written, read from its device only when its
/// turn comes, so that a save holds one tensor's bytes at a time and never a
/// second copy of the model (a 1B model's save must not double its memory).
pub struct PendingTensor<'a> {
    shape: Vec<usize>,
    dtype: SaveDtype,
    fetch: Box<dyn Fn() -> TensorData + 'a>,
}

impl<'a> PendingTensor<'a> {
    /// `tensor`, to be written in `dtype`. Holds a handle, not a copy.
    pub fn of<B: Backend + 'a, const D: usize>(tensor: Tensor<B, D>, dtype: SaveDtype) -> Self {
        Self {
            shape: tensor.dims().to_vec(),
            dtype,
            fetch: Box::new(move || tensor.clone().into_data()),
        }
    }
}

impl<'a> PendingTensor<'a> {
    /// `parts` stacked by rows, as one [Σ rows, cols] tensor, formed only
    /// when written.
    fn stacked(parts: Vec<PendingTensor<'a>>) -> Self {
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let shape = vec![rows, parts[0].shape[1]];
        let dtype = parts[0].dtype;
        let stacked_shape = shape.clone();
        Self {
            shape,
            dtype,
            fetch: Box::new(move || {
                let values: Vec<f32> = parts
                    .iter()
                    .flat_map(|p| {
                        (p.fetch)()
                            .convert::<f32>()
                            .into_vec::<f32>()
                            .expect("converted to f32 above")
                    })
                    .collect();
                TensorData::new(values, stacked_shape.clone())
            }),
        }
    }
}

/// Join the parts of each fused tensor ([`fused_tensors`]) back into it.
pub fn join_fused<'a>(
    tensors: Vec<(String, PendingTensor<'a>)>,
    fused: &[Fused],
) -> Vec<(String, PendingTensor<'a>)> {
    if fused.is_empty() {
        return tensors;
    }
    let mut by_name: HashMap<String, PendingTensor<'a>> = tensors.into_iter().collect();
    let mut out: Vec<(String, PendingTensor<'a>)> = Vec::new();
    for f in fused {
        let parts: Option<Vec<PendingTensor<'a>>> = f
            .parts
            .iter()
            .map(|(name, _)| by_name.remove(name))
            .collect();
        if let Some(parts) = parts {
            out.push((f.name.clone(), PendingTensor::stacked(parts)));
        }
    }
    out.extend(by_name);
    out
}

impl safetensors::View for PendingTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let data = (self.fetch)().convert::<f32>();
        let bytes = match self.dtype {
            SaveDtype::F32 => data.as_bytes().to_vec(),
            SaveDtype::Bf16 => encode(
                data.as_slice::<f32>().expect("converted to f32 above"),
                SaveDtype::Bf16,
            ),
        };
        bytes.into()
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.safetensors().bitsize() / 8
    }
}

/// Write a safetensors file atomically (temporary file, fsync, rename),
/// streaming one tensor at a time: the bytes equal `safetensors::serialize`'s.
pub fn write_safetensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, PendingTensor<'a>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    replace_atomically(path, |tmp| {
        safetensors::tensor::serialize_to_file(tensors, metadata, tmp)
            .map_err(std::io::Error::other)
    })
}

/// Collects a handle to every float parameter by its dotted path.
struct PendingCollector<'a, B: Backend> {
    path: PathStack,
    dtype: SaveDtype,
    out: Vec<(String, PendingTensor<'a>)>,
    _backend: std::marker::PhantomData<B>,
}

impl<'a, B: Backend + 'a> ModuleVisitor<B> for PendingCollector<'a, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out
            .push((self.path.name(), PendingTensor::of(param.val(), self.dtype)));
    }
}

/// Every float parameter of a module by its checkpoint name, to be written
/// in `dtype` by [`write_safetensors`].
pub fn pending_tensors<'a, B: Backend + 'a, M: Module<B>>(
    module: &M,
    dtype: SaveDtype,
) -> Vec<(String, PendingTensor<'a>)> {
    let mut collector = PendingCollector::<B> {
        path: PathStack::default(),
        dtype,
        out: Vec::new(),
        _backend: std::marker::PhantomData,
    };
    module.visit(&mut collector);
    collector.out
}

/// `format = pt`, the metadata transformers writes and expects.
pub fn pt_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// Replace `path` with what `write` puts into a temporary file beside it,
/// fsynced, then renamed over the target; on failure the temporary file is
/// removed and `path` is untouched.
fn replace_atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let replaced = write(&tmp)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    replaced.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory,
/// fsynced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomically(path, |tmp| std::fs::write(tmp, bytes))
}

/// Save a model as an HF directory (`config.json` + `model.safetensors`).
/// Files are written atomically; other files in `dir` are left alone.
pub fn save_model<B: Backend>(
    model: &LlamaForCausalLM<B>,
    config: &LlamaConfig,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    write_safetensors(
        &dir.join("model.safetensors"),
        join_fused(
            pending_tensors::<B, _>(model, dtype),
            &fused_tensors(config),
        ),
        pt_metadata(),
    )?;
    let mut json = config.to_json();
    json["torch_dtype"] = match dtype {
        SaveDtype::F32 => "float32",
        SaveDtype::Bf16 => "bfloat16",
    }
    .into();
    let text = serde_json::to_string_pretty(&json).map_err(|e| ModelError::Input(e.to_string()))?;
    write_atomic(&dir.join("config.json"), text.as_bytes())
}
