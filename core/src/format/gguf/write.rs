//! Writing GGUF v3 files, laid out the way llama.cpp writes them.

use alloc::string::String;
use alloc::vec::Vec;

use super::value::ValueType;
use super::{
    alignment_from, tensor_size, GgufError, MetadataValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC,
    MAX_ARRAY_NESTING,
};
use crate::quant::GgmlType;

const VERSION: u32 = 3;
/// Padding comes from here, in pieces: an alignment can be up to 2^31 bytes.
const ZEROS: [u8; 256] = [0; 256];

/// Collects metadata and tensors, then writes them as one GGUF file. Everything is checked as
/// it is added, so writing cannot fail except for I/O.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    alignment: u32,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<PendingTensor>,
}

#[derive(Clone, Debug)]
struct PendingTensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self { alignment: DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new() }
    }

    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Sets the alignment of the tensor data by writing `general.alignment`.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufError> {
        self.add_metadata(ALIGNMENT_KEY, alignment)
    }

    /// Adds a key, or replaces the value of a key added before (keeping its place).
    /// `general.alignment` must be a power-of-two u32 and sets the alignment.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: impl Into<MetadataValue>,
    ) -> Result<(), GgufError> {
        let (key, value) = (key.into(), value.into());
        check_writable(&key, &value, 0)?;
        if key == ALIGNMENT_KEY {
            self.alignment = alignment_from(&value)?;
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.metadata.push((key, value)),
        }
        Ok(())
    }

    /// Adds a tensor; `data` must be exactly the bytes its type and shape take. Tensors are
    /// written in the order added.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let expected = tensor_size(&name, ty, dims)?;
        if data.len() as u64 != expected {
            return Err(GgufError::TensorSizeMismatch {
                tensor: name,
                ty,
                dims: dims.to_vec(),
                expected,
                found: data.len() as u64,
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        self.tensors.push(PendingTensor { name, ty, dims: dims.to_vec(), data });
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let Ok(()) = self.emit(|chunk| {
            out.extend_from_slice(chunk);
            Ok::<_, core::convert::Infallible>(())
        });
        out
    }

    /// Streams the file into `w` (which the caller may want to buffer).
    #[cfg(feature = "std")]
    pub fn write_to<W: std::io::Write>(&self, mut w: W) -> std::io::Result<()> {
        self.emit(|chunk| w.write_all(chunk))
    }

    /// Writes the file atomically: a reader of `path` sees the old file or the whole new one.
    #[cfg(feature = "std")]
    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        crate::format::write_atomic(path, |w| self.write_to(w))
            .map_err(|source| GgufError::Io { path: path.to_path_buf(), source })
    }

    /// Hands the file to `sink` in pieces: the header (with padding), then each tensor's data
    /// followed by its padding. One layout for every destination.
    fn emit<E>(&self, mut sink: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let declared =
            self.tensors.iter().map(|t| (t.name.as_str(), t.ty, t.dims.as_slice(), t.data.len() as u64));
        sink(&header(self.alignment, &self.metadata, declared))?;
        for t in &self.tensors {
            put_padded(&mut sink, &t.data, self.alignment)?;
        }
        Ok(())
    }
}

/// The header: magic, version, counts, metadata, and each tensor's name, shape, type and offset
/// (its data laid out in order, each aligned), padded to the alignment.
fn header<'a>(
    alignment: u32,
    metadata: &[(String, MetadataValue)],
    tensors: impl ExactSizeIterator<Item = (&'a str, GgmlType, &'a [u64], u64)>,
) -> Vec<u8> {
    let align = |n: u64| n.next_multiple_of(alignment.into());
    let mut header = Vec::new();
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut header, key);
        header.extend_from_slice(&value.value_type().id().to_le_bytes());
        put_value(&mut header, value);
    }
    let mut offset = 0u64;
    for (name, ty, dims, len) in tensors {
        put_string(&mut header, name);
        header.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&ty.id().to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        offset = align(offset + len);
    }
    header.resize(align(header.len() as u64) as usize, 0);
    header
}

/// `data`, then zeros up to the alignment.
fn put_padded<E>(
    sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    data: &[u8],
    alignment: u32,
) -> Result<(), E> {
    sink(data)?;
    let mut padding = (data.len() as u64).next_multiple_of(alignment.into()) - data.len() as u64;
    while padding > 0 {
        let n = padding.min(ZEROS.len() as u64);
        sink(&ZEROS[..n as usize])?;
        padding -= n;
    }
    Ok(())
}

/// A GGUF file written as it is produced: the metadata and every tensor's name, type and shape
/// are declared first (they make the header), then each tensor's data is asked for in declared
/// order, so a writer holds one tensor at a time (a merged model need not fit in memory twice).
#[cfg(feature = "std")]
#[derive(Clone, Debug)]
pub struct GgufStream {
    metadata: GgufWriter,
    tensors: Vec<(String, GgmlType, Vec<u64>, u64)>,
}

#[cfg(feature = "std")]
impl GgufStream {
    /// A stream with `metadata`'s keys and alignment (its tensors, if any, are not used).
    pub fn new(metadata: &GgufWriter) -> Self {
        let metadata = GgufWriter { tensors: Vec::new(), ..metadata.clone() };
        Self { metadata, tensors: Vec::new() }
    }

    /// Declares the next tensor.
    pub fn declare(&mut self, name: impl Into<String>, ty: GgmlType, dims: &[u64]) -> Result<(), GgufError> {
        let name = name.into();
        let size = tensor_size(&name, ty, dims)?;
        if self.tensors.iter().any(|t| t.0 == name) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        self.tensors.push((name, ty, dims.to_vec(), size));
        Ok(())
    }

    /// Writes the file into `w`, asking `data(i)` for the `i`-th declared tensor's bytes when
    /// its turn comes; bytes of another size than declared are an error.
    pub fn write<E: From<GgufError> + From<std::io::Error>>(
        &self,
        w: &mut dyn std::io::Write,
        mut data: impl FnMut(usize) -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        let declared =
            self.tensors.iter().map(|(name, ty, dims, size)| (name.as_str(), *ty, dims.as_slice(), *size));
        w.write_all(&header(self.metadata.alignment, &self.metadata.metadata, declared))?;
        for (i, (name, ty, dims, size)) in self.tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != *size {
                return Err(E::from(GgufError::TensorSizeMismatch {
                    tensor: name.clone(),
                    ty: *ty,
                    dims: dims.clone(),
                    expected: *size,
                    found: bytes.len() as u64,
                }));
            }
            put_padded(&mut |chunk: &[u8]| w.write_all(chunk), &bytes, self.metadata.alignment)?;
        }
        Ok(())
    }
}

/// GGUF arrays declare one element type for all items, so a mixed array has no encoding; and
/// the reader would refuse nesting deeper than [`MAX_ARRAY_NESTING`].
fn check_writable(key: &str, value: &MetadataValue, depth: usize) -> Result<(), GgufError> {
    let MetadataValue::Array(items) = value else {
        return Ok(());
    };
    if depth == MAX_ARRAY_NESTING {
        return Err(GgufError::NestingTooDeep { key: key.into(), max: MAX_ARRAY_NESTING });
    }
    let expected = element_type(items);
    for (index, item) in items.iter().enumerate() {
        if item.value_type() != expected {
            return Err(GgufError::WrongElementType {
                key: key.into(),
                index,
                expected: expected.name(),
                found: item.type_name(),
            });
        }
        check_writable(key, item, depth + 1)?;
    }
    Ok(())
}

/// An empty array still declares an element type; u8 is as good as any, since every type
/// reads back as an empty array.
fn element_type(items: &[MetadataValue]) -> ValueType {
    items.first().map_or(ValueType::U8, MetadataValue::value_type)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(s) => put_string(out, s),
        MetadataValue::Array(items) => {
            out.extend_from_slice(&element_type(items).id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}
