//! Named f32 tensors ↔ safetensors files, written durably (fsynced) so that a
//! checkpoint directory renamed into place holds complete files.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use alignkit_model::SaveDtype;
use alignkit_model::checkpoint::safetensors_bytes;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Result, TrainError};

/// Named tensors: shape and row-major f32 data.
pub type NamedTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Write `bytes` to `path` and fsync the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| TrainError::io(path, e))
}

/// Write named f32 tensors as a safetensors file (fsynced).
pub fn write_f32_tensors(
    path: &Path,
    tensors: &NamedTensors,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes = safetensors_bytes(tensors, SaveDtype::F32, Some(metadata))?;
    write_synced(path, &bytes)
}

/// Read every tensor of an f32 safetensors file, with its metadata.
pub fn read_f32_tensors(path: &Path) -> Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let bad = |message: String| TrainError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok((out, metadata))
}
