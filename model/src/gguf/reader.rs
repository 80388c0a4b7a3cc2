//! The GGUF container: header, metadata key/values, tensor infos and the memory-mapped data section.
//!
//! Layout (little-endian, see <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>):
//! `"GGUF"`, version u32, tensor_count u64, kv_count u64, kv_count × (key string, value type u32,
//! value), tensor_count × (name string, n_dims u32, n_dims × u64 dims, type u32, offset u64), padding
//! to `general.alignment` (default 32), then the data section; tensor offsets are relative to its start.
//! A string is a u64 byte length followed by UTF-8 bytes. Version 1 (u32 counts) is not supported.
//!
//! Every length, count and offset is checked against the file size before use, so a damaged or
//! hostile file gives an error, never a panic or a huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::GgufError;
use super::dequant;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; bound the nesting so a hostile file cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// A ggml tensor type, with the numeric ids of ggml's `enum ggml_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

impl GgmlType {
    /// The type for a ggml type id, or `None` for ids this reader does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`, as in ggml's `type_traits` / gguf-py `GGML_QUANT_SIZES`.
    pub fn block_layout(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 40),
            IQ4_NL => (32, 18),
            MXFP4 => (32, 17),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One metadata value. Arrays hold one element type (checked on read), possibly nested arrays.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "uint8",
            GgufValue::I8(_) => "int8",
            GgufValue::U16(_) => "uint16",
            GgufValue::I16(_) => "int16",
            GgufValue::U32(_) => "uint32",
            GgufValue::I32(_) => "int32",
            GgufValue::U64(_) => "uint64",
            GgufValue::I64(_) => "int64",
            GgufValue::F32(_) => "float32",
            GgufValue::F64(_) => "float64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }

    /// Any integer type, if it is non-negative. Writers differ on u32 vs u64 for the same key.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float32 (widened) or float64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// `"array of string"` rather than just `"array"`, for error messages.
    fn describe(&self) -> String {
        match self {
            GgufValue::Array(a) => match a.first() {
                Some(first) => format!("array of {}", first.type_name()),
                None => "empty array".to_string(),
            },
            v => v.type_name().to_string(),
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml order: `dims[0]` (`ne[0]`) is the fastest-varying dimension, the reverse of row-major.
    pub dims: Vec<u64>,
    /// Absolute byte offset of the data in the file (data section start + the stored offset).
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape (PyTorch / safetensors order): the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit the file's byte length, so it fits a usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

/// An open GGUF file: parsed header and metadata, and the tensor data kept memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and parse `path`; the tensor data stays memory-mapped until it is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        // SAFETY: the map is read-only and private to this value. Like every reader of a mapped
        // file, we rely on no other process truncating or rewriting the file while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        Self::parse(path.to_path_buf(), Storage::Mmap(mmap))
    }

    /// Parse a GGUF held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(path.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self, GgufError> {
        let bytes: &[u8] = match &storage {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        };
        let mut c = Cursor {
            path: &path,
            buf: bytes,
            pos: 0,
        };

        let magic = c.take(4, "the magic number")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        let version = c.u32("the version")?;
        match version {
            2 | 3 => {}
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(GgufError::unsupported(&path, "big-endian GGUF"));
            }
            _ => {
                return Err(GgufError::UnsupportedVersion {
                    path: path.clone(),
                    version,
                });
            }
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;

        // A key/value needs at least 8 (key length) + 4 (type) + 1 bytes, a tensor info 8 + 4 + 4 + 8.
        c.check_count(n_kv, 13, "metadata key/values")?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut metadata_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("the type of metadata key {key}"))?;
            let value = c.value(ty, &format!("metadata key {key}"), 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::malformed(
                    &path,
                    format!("metadata key {key} appears twice"),
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match &metadata[i].1 {
                GgufValue::U32(a) if a.is_power_of_two() => u64::from(*a),
                v => {
                    return Err(GgufError::malformed(
                        &path,
                        format!(
                            "general.alignment must be a power of two uint32, found {v:?} ({})",
                            v.type_name()
                        ),
                    ));
                }
            },
        };

        c.check_count(n_tensors, 24, "tensor infos")?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor #{i}"))?;
            let what = format!("tensor {name}");
            let n_dims = c.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::bad_tensor(
                    &path,
                    &name,
                    format!("has {n_dims} dimensions, at most {MAX_DIMS} are allowed"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                GgufError::bad_tensor(&path, &name, format!("has unknown ggml type id {type_id}"))
            })?;
            raw.push((name, ggml_type, dims, offset));
        }

        let file_len = bytes.len() as u64;
        let data_offset = align_up(c.pos as u64, alignment).ok_or_else(|| {
            GgufError::malformed(&path, "data section offset overflows".to_string())
        })?;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, ggml_type, dims, rel_offset) in raw {
            let n_bytes = tensor_n_bytes(&path, &name, ggml_type, &dims)?;
            if !rel_offset.is_multiple_of(alignment) {
                return Err(GgufError::bad_tensor(
                    &path,
                    &name,
                    format!(
                        "data offset {rel_offset} is not a multiple of the alignment {alignment}"
                    ),
                ));
            }
            let start = data_offset.checked_add(rel_offset);
            let end = start.and_then(|s| s.checked_add(n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => {
                    if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                        return Err(GgufError::malformed(
                            &path,
                            format!("tensor {name} appears twice"),
                        ));
                    }
                    tensors.push(TensorInfo {
                        name,
                        ggml_type,
                        dims,
                        offset: start,
                        n_bytes,
                    });
                }
                _ => {
                    return Err(GgufError::Truncated {
                        path: path.clone(),
                        what: format!("the data of tensor {name}"),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        len: file_len,
                    });
                }
            }
        }

        Ok(GgufFile {
            path,
            storage,
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata key/values in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn value(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn required(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.value(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &GgufValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.describe(),
        }
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        get: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => get(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, expected, v)),
        }
    }

    /// A non-negative integer of any width; `Ok(None)` when the key is absent.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "a float", GgufValue::as_f64)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.required(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.required(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, "a float", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.required(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.required(key)?;
        v.as_array()
            .and_then(|a| a.iter().map(GgufValue::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong_type(key, "an array of string", v))
    }

    /// An array of integers (e.g. `tokenizer.ggml.token_type`, int32).
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let v = self.required(key)?;
        v.as_array()
            .and_then(|a| a.iter().map(GgufValue::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong_type(key, "an array of integers", v))
    }

    /// An array of numbers as f64 (e.g. `tokenizer.ggml.scores`, float32).
    pub fn get_f64_array(&self, key: &str) -> Result<Vec<f64>, GgufError> {
        let v = self.required(key)?;
        v.as_array()
            .and_then(|a| a.iter().map(GgufValue::as_f64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.wrong_type(key, "an array of floats", v))
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::NoSuchTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// How many tensors of each type the file holds.
    pub fn type_histogram(&self) -> BTreeMap<GgmlType, usize> {
        let mut h = BTreeMap::new();
        for t in &self.tensors {
            *h.entry(t.ggml_type).or_insert(0) += 1;
        }
        h
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let bytes: &[u8] = match &self.storage {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        };
        // Checked against the file length in `parse`; `get` keeps a foreign `TensorInfo` harmless.
        bytes
            .get(info.offset as usize..info.offset.saturating_add(info.n_bytes) as usize)
            .unwrap_or(&[])
    }

    /// A tensor dequantized to f32, in ggml element order (which is row-major for [`TensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        self.check_supported(info)?;
        // At most a few times the file size: `n_bytes` was checked against it.
        let mut out = vec![0.0f32; info.n_elements() as usize];
        self.dequantize_into(info, &mut out)?;
        Ok(out)
    }

    /// Dequantize `info` into `out`, which must hold exactly `info.n_elements()` values.
    pub fn dequantize_into(&self, info: &TensorInfo, out: &mut [f32]) -> Result<(), GgufError> {
        let data = self.tensor_bytes(info);
        if out.len() as u64 != info.n_elements() || data.len() as u64 != info.n_bytes {
            return Err(GgufError::bad_tensor(
                &self.path,
                &info.name,
                format!(
                    "expected {} elements in {} bytes, got an output of {} and {} bytes of data",
                    info.n_elements(),
                    info.n_bytes,
                    out.len(),
                    data.len()
                ),
            ));
        }
        self.check_supported(info)?;
        dequant::dequantize(info.ggml_type, data, out).map_err(|_| self.unsupported_type(info))
    }

    /// `Err(UnsupportedTensorType)` when [`GgufFile::tensor_f32`] cannot dequantize `info`.
    pub fn check_supported(&self, info: &TensorInfo) -> Result<(), GgufError> {
        if dequant::is_supported(info.ggml_type) {
            Ok(())
        } else {
            Err(self.unsupported_type(info))
        }
    }

    fn unsupported_type(&self, info: &TensorInfo) -> GgufError {
        GgufError::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ty: info.ggml_type,
        }
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

fn tensor_n_bytes(path: &Path, name: &str, ty: GgmlType, dims: &[u64]) -> Result<u64, GgufError> {
    let (block, type_size) = ty.block_layout();
    let overflow = || GgufError::bad_tensor(path, name, format!("dimensions {dims:?} overflow"));
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    if dims.first().is_some_and(|&ne0| !ne0.is_multiple_of(block)) {
        return Err(GgufError::bad_tensor(
            path,
            name,
            format!(
                "row length {} is not a multiple of the {ty} block size {block}",
                dims[0]
            ),
        ));
    }
    (n / block).checked_mul(type_size).ok_or_else(overflow)
}

/// Reads little-endian values from the file, naming what it reads when the file is too short.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn truncated(&self, what: &str, n: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            start: self.pos as u64,
            end: (self.pos as u64).saturating_add(n),
            len: self.buf.len() as u64,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what, n));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fail early when `count` items of at least `min_size` bytes cannot fit in the rest of the file.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(self.truncated(&format!("{count} {what}"), count.saturating_mul(min_size))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            GgufError::malformed(self.path, format!("{what}: string is not valid UTF-8"))
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(GgufError::malformed(
                        self.path,
                        format!("{what}: bool byte is {b}, expected 0 or 1"),
                    ));
                }
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::malformed(
                        self.path,
                        format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => {
                        return Err(GgufError::malformed(
                            self.path,
                            format!("{what}: unknown array element type {t}"),
                        ));
                    }
                };
                self.check_count(count, min_size, &format!("elements of {what}"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => {
                return Err(GgufError::malformed(
                    self.path,
                    format!("{what}: unknown value type {t}"),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testing::{GgufBuilder, fixture};

    fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes("test.gguf", bytes)
    }

    #[test]
    fn reads_every_metadata_type() {
        let f = GgufFile::open(fixture("quants.gguf.bin")).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 64);
        assert_eq!(f.data_offset() % 64, 0);
        let v = |k: &str| f.value(k).cloned().unwrap();
        assert_eq!(v("general.architecture"), GgufValue::String("test".into()));
        assert_eq!(v("test.u8"), GgufValue::U8(200));
        assert_eq!(v("test.i8"), GgufValue::I8(-100));
        assert_eq!(v("test.u16"), GgufValue::U16(60000));
        assert_eq!(v("test.i16"), GgufValue::I16(-30000));
        assert_eq!(v("test.u32"), GgufValue::U32(4_000_000_000));
        assert_eq!(v("test.i32"), GgufValue::I32(-2_000_000_000));
        assert_eq!(v("test.u64"), GgufValue::U64((1 << 63) + 5));
        assert_eq!(v("test.i64"), GgufValue::I64(-(1 << 62)));
        assert_eq!(v("test.f32"), GgufValue::F32(0.1));
        assert_eq!(v("test.f64"), GgufValue::F64(0.1));
        assert_eq!(v("test.bool"), GgufValue::Bool(true));
        assert_eq!(f.get_str("test.string").unwrap(), "héllo, 世界 🤗");
        assert_eq!(f.get_i64_array("test.arr_i32").unwrap(), vec![1, -2, 3]);
        assert_eq!(
            v("test.arr_f32"),
            GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(-1.5)])
        );
        assert_eq!(
            v("test.arr_bool"),
            GgufValue::Array(vec![GgufValue::Bool(true), GgufValue::Bool(false)])
        );
        assert_eq!(
            f.get_str_array("test.arr_str").unwrap(),
            vec!["a", "é中", "Ġt"]
        );
        assert_eq!(
            v("test.arr_nested"),
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
                GgufValue::Array(vec![GgufValue::I32(3)]),
            ])
        );
        // Lenient integer widths, strict kinds.
        assert_eq!(f.get_u64("test.u8").unwrap(), 200);
        assert_eq!(f.opt_u64("absent").unwrap(), None);
        let e = f.get_u64("test.i8").unwrap_err().to_string();
        assert!(
            e.contains("test.i8 is int8, expected a non-negative integer"),
            "{e}"
        );
        let e = f.get_str("test.arr_i32").unwrap_err().to_string();
        assert!(e.contains("is array of int32, expected a string"), "{e}");
        let e = f.get_str("nope").unwrap_err().to_string();
        assert!(
            e.ends_with("quants.gguf.bin: metadata key nope is missing"),
            "{e}"
        );
    }

    #[test]
    fn tensor_infos() {
        let f = GgufFile::open(fixture("quants.gguf.bin")).unwrap();
        assert_eq!(f.tensors().len(), 12);
        let t = f.tensor("q4_k").unwrap();
        assert_eq!(t.ggml_type, GgmlType::Q4_K);
        assert_eq!(t.dims, vec![512, 2]);
        assert_eq!(t.shape(), vec![2, 512]);
        assert_eq!(t.n_bytes, 2 * 2 * 144);
        assert_eq!((t.offset - f.data_offset()) % 64, 0);
        assert_eq!(f.type_histogram().get(&GgmlType::F32), Some(&1));
        let e = f.tensor("nope").unwrap_err().to_string();
        assert!(e.ends_with("no tensor named nope"), "{e}");
    }

    #[test]
    fn unsupported_type_is_named() {
        let f = GgufFile::open(fixture("quants.gguf.bin")).unwrap();
        let e = f.tensor_f32("q2_k").unwrap_err();
        assert!(matches!(
            e,
            GgufError::UnsupportedTensorType {
                ty: GgmlType::Q2_K,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(msg.contains("quants.gguf"), "{msg}");
        assert!(
            msg.ends_with("tensor q2_k has type Q2_K which is not supported"),
            "{msg}"
        );
    }

    #[test]
    fn version_2_is_accepted() {
        let mut b = GgufBuilder::tiny_llama();
        b.version = 2;
        let f = parse(b.build()).unwrap();
        assert_eq!(f.version(), 2);
        assert_eq!(f.tensor_f32("output_norm.weight").unwrap()[1], -0.75);
    }

    #[test]
    fn bad_headers() {
        let mut b = GgufBuilder::tiny_llama();
        b.magic = *b"GGML";
        let e = parse(b.build()).unwrap_err();
        assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
        assert!(
            e.to_string().starts_with("test.gguf: not a GGUF file"),
            "{e}"
        );

        let mut b = GgufBuilder::tiny_llama();
        b.version = 1;
        let e = parse(b.build()).unwrap_err();
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: 1, .. }),
            "{e}"
        );

        let mut b = GgufBuilder::tiny_llama();
        b.version = 3u32.swap_bytes();
        let e = parse(b.build()).unwrap_err().to_string();
        assert!(e.contains("big-endian GGUF is not supported"), "{e}");

        let e = parse(Vec::new()).unwrap_err();
        assert!(matches!(e, GgufError::Truncated { len: 0, .. }), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        for bytes in [
            GgufBuilder::tiny_llama().build(),
            std::fs::read(fixture("quants.gguf.bin")).unwrap(),
        ] {
            assert!(parse(bytes.clone()).is_ok());
            // The data section ends with padding, which a truncation may cut without harm.
            let last_tensor_end = parse(bytes.clone())
                .unwrap()
                .tensors()
                .iter()
                .map(|t| t.offset + t.n_bytes)
                .max()
                .unwrap() as usize;
            for len in 0..last_tensor_end {
                let e = parse(bytes[..len].to_vec()).unwrap_err();
                assert!(
                    matches!(e, GgufError::Truncated { .. }),
                    "length {len}: {e}"
                );
            }
        }
    }

    /// Random byte corruption anywhere must give `Ok` or `Err`, and reading every tensor of an
    /// `Ok` file must not panic either.
    #[test]
    fn corrupted_files_do_not_panic() {
        let clean = GgufBuilder::tiny_llama().build();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut bytes = clean.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = match next() % 3 {
                    0 => next() as u8,
                    1 => 0xFF,
                    _ => bytes[at] ^ (1 << (next() % 8)),
                };
            }
            if let Ok(f) = parse(bytes) {
                for t in f.tensors().to_vec() {
                    let _ = f.tensor_f32(&t.name);
                }
            }
        }
    }

    #[test]
    fn huge_counts_fail_before_allocating() {
        let mut bytes = GgufBuilder::default().build();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // kv_count
        assert!(matches!(
            parse(bytes).unwrap_err(),
            GgufError::Truncated { .. }
        ));
        let b = GgufBuilder::default().kv("a", GgufValue::Array(vec![GgufValue::U64(1)]));
        let mut bytes = b.build();
        let count_at = 24 + 8 + 1 + 4 + 4; // header, key "a", value type, element type
        bytes[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("elements of metadata key a"), "{e}");
    }

    #[test]
    fn malformed_headers() {
        let dup = GgufBuilder {
            kvs: vec![
                ("a".into(), GgufValue::U32(1)),
                ("a".into(), GgufValue::U32(2)),
            ],
            ..GgufBuilder::default()
        };
        let e = parse(dup.build()).unwrap_err().to_string();
        assert!(e.contains("metadata key a appears twice"), "{e}");

        let e = parse(GgufBuilder::default().u32("general.alignment", 24).build())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("general.alignment must be a power of two"),
            "{e}"
        );

        let e = parse(GgufBuilder::default().kv("b", GgufValue::U8(0)).build());
        assert!(e.is_ok());
        // Header (24), key "b" (8 + 1), value type (4), then the value.
        let mut bytes = GgufBuilder::default()
            .kv("b", GgufValue::Bool(true))
            .build();
        bytes[37] = 2;
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("bool byte is 2"), "{e}");

        let bad_utf8 = {
            let mut bytes = GgufBuilder::default().str("s", "ab").build();
            bytes[37 + 8 + 1] = 0xFF; // the "b", after the string's u64 length
            bytes
        };
        let e = parse(bad_utf8).unwrap_err().to_string();
        assert!(
            e.contains("metadata key s: string is not valid UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn malformed_tensor_infos() {
        let base = GgufBuilder::default().f32_tensor("t", &[4, 2], |i| i as f32);
        let ok = parse(base.build()).unwrap();
        assert_eq!(
            ok.tensor_f32("t").unwrap(),
            vec![0., 1., 2., 3., 4., 5., 6., 7.]
        );
        // Tensor info layout after a 24-byte header: name (8 + 1), n_dims (4), dims (2 × 8),
        // type (4), offset (8).
        let (dims_at, type_at, offset_at) = (24 + 9 + 4, 24 + 9 + 4 + 16, 24 + 9 + 4 + 16 + 4);

        let mut bytes = base.build();
        bytes[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("tensor t: has unknown ggml type id 99"), "{e}");

        let mut bytes = base.build();
        bytes[type_at..type_at + 4].copy_from_slice(&2u32.to_le_bytes()); // Q4_0, ne0 = 4
        let e = parse(bytes).unwrap_err().to_string();
        assert!(
            e.contains("row length 4 is not a multiple of the Q4_0 block size 32"),
            "{e}"
        );

        let mut bytes = base.build();
        bytes[offset_at..offset_at + 8].copy_from_slice(&8u64.to_le_bytes());
        let e = parse(bytes).unwrap_err().to_string();
        assert!(
            e.contains("data offset 8 is not a multiple of the alignment 32"),
            "{e}"
        );

        let mut bytes = base.build();
        bytes[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = parse(bytes).unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("the data of tensor t"), "{e}");

        let mut bytes = base.build();
        bytes[dims_at..dims_at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");

        let mut bytes = base.build();
        bytes[24 + 9..24 + 13].copy_from_slice(&5u32.to_le_bytes());
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("has 5 dimensions"), "{e}");
    }
}
