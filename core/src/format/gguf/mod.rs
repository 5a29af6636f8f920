//! GGUF, the model file format of llama.cpp: versions 2 and 3, little-endian.
//!
//! Layout: magic `GGUF`, version (u32), tensor count (u64), metadata count (u64), the metadata
//! key-value pairs, the tensor infos (name, dims, type, offset), padding to `general.alignment`,
//! then the data section that the tensor offsets point into. [`GgufFile`] parses the header and
//! borrows the data section through [`SharedBytes`] (a memory map on native), so opening a model
//! copies no tensor data. [`GgufWriter`] lays files out as llama.cpp does; Python `gguf` reads
//! them (checked with gguf 0.19).
//!
//! Every file is treated as hostile: an inconsistency is a [`GgufError`] naming the field, key or
//! tensor and the byte offset; a count or length from the file sizes an allocation only when the
//! bytes left could hold that many items; array nesting is bounded.

mod read;
#[cfg(all(test, feature = "std"))]
mod tests;
mod value;
mod write;

pub use value::MetadataValue;
#[cfg(feature = "std")]
pub use write::GgufStream;
pub use write::GgufWriter;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::find_sorted;
use crate::bytes::SharedBytes;
use crate::quant::GgmlType;

/// Alignment of tensor data when a file has no `general.alignment`.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// ggml tensors have at most this many dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest array nesting accepted. Real files do not nest arrays at all; the bound keeps the
/// recursive parser, and the recursive drop of what it built, far from the end of the stack.
pub const MAX_ARRAY_NESTING: usize = 32;

const MAGIC: [u8; 4] = *b"GGUF";
const ALIGNMENT_KEY: &str = "general.alignment";

/// Where one tensor is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (the columns of a matrix).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Start of the tensor's bytes, relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values. Infos read from a file were checked not to overflow; for a hand-made
    /// one this saturates.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Bytes of data. Checked at parse time for infos read from a file; `u64::MAX` for a
    /// hand-made one whose shape does not fit its type.
    pub fn n_bytes(&self) -> u64 {
        self.ty.bytes_for(self.n_elements()).unwrap_or(u64::MAX)
    }
}

/// Everything that can be wrong with a GGUF file, a metadata lookup or a tensor to be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[cfg(feature = "std")]
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file: starts with {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version {version} is not supported (only versions 2 and 3 are)")]
    UnsupportedVersion { version: u32 },
    #[error("big-endian GGUF file (version {version}); only little-endian files are supported")]
    BigEndian { version: u32 },
    #[error("truncated: {field} at byte {offset} needs {needed} bytes, only {available} remain")]
    Truncated { field: String, offset: u64, needed: u64, available: u64 },
    #[error(
        "{field} at byte {offset} is {count}, but each item takes at least {min_item_bytes} \
         bytes and only {available} bytes remain"
    )]
    CountTooLarge { field: String, offset: u64, count: u64, min_item_bytes: u64, available: u64 },
    #[error("{field}: invalid UTF-8 at byte {offset}")]
    InvalidUtf8 { field: String, offset: u64 },
    #[error("metadata {key:?}: unknown value type {type_id} at byte {offset}")]
    UnknownValueType { key: String, type_id: u32, offset: u64 },
    #[error("metadata {key:?}: bool at byte {offset} is {value}, not 0 or 1")]
    InvalidBool { key: String, value: u8, offset: u64 },
    #[error("metadata {key:?}: arrays nested deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata {key:?} appears twice (again at byte {offset})")]
    DuplicateKey { key: String, offset: u64 },
    #[error("general.alignment = {value} is not a power of two")]
    BadAlignment { value: u32 },
    #[error("tensor {tensor:?} has {n_dims} dimensions; ggml allows at most {MAX_DIMS}")]
    TooManyDims { tensor: String, n_dims: u64 },
    #[error("tensor {tensor:?}: unknown ggml type id {type_id} at byte {offset}")]
    UnknownTensorType { tensor: String, type_id: u32, offset: u64 },
    #[error("tensor {tensor:?}: dimensions {dims:?} overflow ggml's 63-bit sizes")]
    ShapeOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor {tensor:?}: first dimension {dim0} is not a whole number of {ty} blocks of {block_len}")]
    PartialBlock { tensor: String, ty: GgmlType, dim0: u64, block_len: usize },
    #[error("tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { tensor: String, offset: u64, alignment: u32 },
    #[error(
        "tensor {tensor:?}: data {start}..{end} runs past the end of the data section \
         ({data_len} bytes from byte {data_offset})"
    )]
    TensorOutOfBounds { tensor: String, start: u64, end: u64, data_offset: u64, data_len: u64 },
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    OverlappingTensors { first: String, second: String },
    #[error("tensor name {tensor:?} appears twice")]
    DuplicateTensor { tensor: String },
    #[error("tensor {tensor:?}: {found} bytes of data given, but {ty} {dims:?} takes {expected}")]
    TensorSizeMismatch { tensor: String, ty: GgmlType, dims: Vec<u64>, expected: u64, found: u64 },
    #[error("metadata {key:?} is missing")]
    MissingKey { key: String },
    #[error("metadata {key:?} is {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("metadata {key:?}: array element {index} is {found}, expected {expected}")]
    WrongElementType { key: String, index: usize, expected: &'static str, found: &'static str },
    #[error("metadata {key:?} = {value} does not fit in {expected}")]
    ValueOutOfRange { key: String, value: i64, expected: &'static str },
}

/// A parsed GGUF file: its metadata and tensor infos, and the data section they point into.
#[derive(Clone)]
pub struct GgufFile {
    version: u32,
    alignment: u32,
    metadata: Vec<(String, MetadataValue)>,
    /// Indices into `metadata` sorted by key, for binary search (no hash maps without std).
    metadata_by_key: Vec<usize>,
    tensors: Vec<TensorInfo>,
    /// Indices into `tensors` sorted by name.
    tensors_by_name: Vec<usize>,
    data_offset: u64,
    data: SharedBytes,
}

impl GgufFile {
    /// Opens a file: memory-mapped on native (no copy; pages load on first touch), read into
    /// memory on wasm32.
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let bytes =
            super::map_file(path).map_err(|source| GgufError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(bytes)
    }

    /// Parses a whole file held in `bytes`; tensor data stays in `bytes`, shared.
    pub fn from_bytes(bytes: SharedBytes) -> Result<Self, GgufError> {
        read::parse(bytes)
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of every tensor in it.
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All key-value pairs, in file order.
    pub fn metadata(&self) -> &[(String, MetadataValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        find_sorted(&self.metadata, &self.metadata_by_key, |(k, _)| k, key).map(|(_, v)| v)
    }

    /// An integer of any GGUF integer type, as long as it is not negative.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        value.as_u64().ok_or_else(|| match value.as_i64() {
            Some(value) => GgufError::ValueOutOfRange { key: key.into(), value, expected: "u64" },
            None => wrong_type(key, "an integer", value),
        })
    }

    /// A float (f64 rounds to f32), or an integer converted.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.typed(key, "a number", MetadataValue::as_f64).map(|v| v as f32)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.typed(key, "a string", MetadataValue::as_str)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.typed(key, "a bool", MetadataValue::as_bool)
    }

    pub fn get_string_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let items = self.typed(key, "an array of strings", MetadataValue::as_array)?;
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_str().ok_or_else(|| GgufError::WrongElementType {
                    key: key.into(),
                    index,
                    expected: "string",
                    found: item.type_name(),
                })
            })
            .collect()
    }

    fn require(&self, key: &str) -> Result<&MetadataValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey { key: key.into() })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<T, GgufError> {
        let value = self.require(key)?;
        convert(value).ok_or_else(|| wrong_type(key, expected, value))
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        find_sorted(&self.tensors, &self.tensors_by_name, |t| &t.name, name)
    }

    /// The bytes of one tensor, shared with the file (no copy).
    ///
    /// # Panics
    /// If `info` is not one of this file's infos (or a copy of one): those were checked against
    /// the file at parse time, a hand-made or edited one was not.
    pub fn tensor_data(&self, info: &TensorInfo) -> SharedBytes {
        let (start, end) = (info.offset, info.offset.saturating_add(info.n_bytes()));
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(start, end)| self.data.slice(start..end))
            .unwrap_or_else(|| {
                panic!("tensor {:?} at {start}..{end} is not in this file's data section", info.name)
            })
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("data", &self.data)
            .finish()
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &MetadataValue) -> GgufError {
    GgufError::WrongType { key: key.into(), expected, found: found.type_name() }
}

/// The alignment a `general.alignment` value sets (a power-of-two u32, as llama.cpp demands).
fn alignment_from(value: &MetadataValue) -> Result<u32, GgufError> {
    match *value {
        MetadataValue::U32(alignment) if alignment.is_power_of_two() => Ok(alignment),
        MetadataValue::U32(value) => Err(GgufError::BadAlignment { value }),
        ref other => Err(wrong_type(ALIGNMENT_KEY, "u32", other)),
    }
}

fn check_n_dims(tensor: &str, n_dims: u64) -> Result<(), GgufError> {
    if n_dims > MAX_DIMS as u64 {
        return Err(GgufError::TooManyDims { tensor: tensor.into(), n_dims });
    }
    Ok(())
}

/// Checks a shape against what ggml can represent and returns the tensor's size in bytes.
fn tensor_size(tensor: &str, ty: GgmlType, dims: &[u64]) -> Result<u64, GgufError> {
    check_n_dims(tensor, dims.len() as u64)?;
    let overflow = || GgufError::ShapeOverflow { tensor: tensor.into(), dims: dims.to_vec() };
    // ggml keeps dims and element counts in int64_t, so anything past i64::MAX is corrupt even
    // when a zero dimension makes the product small.
    let max = i64::MAX as u64;
    let n_elements = dims
        .iter()
        .try_fold(1u64, |n, &d| if d > max { None } else { n.checked_mul(d) })
        .filter(|&n| n <= max)
        .ok_or_else(overflow)?;
    // Blocks never straddle rows: the row length must hold whole blocks.
    let dim0 = dims.first().copied().unwrap_or(1);
    let block_len = ty.block_len();
    if dim0 % block_len as u64 != 0 {
        return Err(GgufError::PartialBlock { tensor: tensor.into(), ty, dim0, block_len });
    }
    ty.bytes_for(n_elements).ok_or_else(overflow)
}
