//! The parser: one pass over the header, then checks of every tensor's place in the data section.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use super::value::ValueType;
use super::{
    alignment_from, check_n_dims, tensor_size, GgufError, GgufFile, MetadataValue, TensorInfo, ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_NESTING,
};
use crate::bytes::SharedBytes;
use crate::format::{find_sorted, sort_by_name};
use crate::quant::GgmlType;

/// Smallest metadata entry: key length (u64), value type (u32), one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest tensor info: name length (u64), dimension count (u32), type (u32), offset (u64).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;
/// Where the tensor count sits in the header (after magic and version).
const TENSOR_COUNT_OFFSET: u64 = 8;

pub(super) fn parse(bytes: SharedBytes) -> Result<GgufFile, GgufError> {
    let mut r = Cursor { buf: &bytes, pos: 0 };

    let magic = r.array(Field::Magic)?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = r.u32(Field::Version)?;
    match version {
        2 | 3 => {}
        // A big-endian writer stores the version byte-swapped (the magic is always byte order
        // "GGUF"), so a small swapped value means an endianness we do not read, not a new version.
        v if matches!(v.swap_bytes(), 1..=3) => return Err(GgufError::BigEndian { version: v.swap_bytes() }),
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let tensor_count = r.u64(Field::TensorCount)?;
    let kv_count = r.count(MIN_KV_BYTES, Field::MetadataCount)?;

    let mut metadata = Vec::with_capacity(kv_count);
    let mut key_offsets = Vec::with_capacity(kv_count);
    for index in 0..kv_count {
        key_offsets.push(r.offset());
        let key = r.string(Field::Key { index })?;
        let ty = r.value_type(&key)?;
        let value = r.value(ty, &key, 0)?;
        metadata.push((key, value));
    }
    let metadata_by_key = sort_by_name(&metadata, |(k, _)| k).map_err(|(_, later)| {
        GgufError::DuplicateKey { key: metadata[later].0.clone(), offset: key_offsets[later] }
    })?;
    let alignment = find_sorted(&metadata, &metadata_by_key, |(k, _)| k, ALIGNMENT_KEY)
        .map_or(Ok(DEFAULT_ALIGNMENT), |(_, v)| alignment_from(v))?;

    let tensor_count =
        r.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, Field::TensorCount, TENSOR_COUNT_OFFSET)?;
    let mut tensors = Vec::with_capacity(tensor_count);
    for index in 0..tensor_count {
        tensors.push(r.tensor_info(index)?);
    }
    let tensors_by_name = sort_by_name(&tensors, |t| &t.name)
        .map_err(|(_, later)| GgufError::DuplicateTensor { tensor: tensors[later].name.clone() })?;

    // The data section starts at the next multiple of the alignment. A file with no tensor data
    // may end before that; its data section is then empty.
    let len = bytes.len();
    let data_start = r
        .offset()
        .checked_next_multiple_of(alignment.into())
        .and_then(|start| usize::try_from(start).ok())
        .map_or(len, |start| start.min(len));
    let data = bytes.slice(data_start..len).expect("data_start <= len");
    let data_offset = data_start as u64;
    check_layout(&tensors, alignment, data_offset, data.len() as u64)?;

    Ok(GgufFile {
        version,
        alignment,
        metadata,
        metadata_by_key,
        tensors,
        tensors_by_name,
        data_offset,
        data,
    })
}

/// Every tensor aligned, inside the data section, and not sharing bytes with another.
fn check_layout(
    tensors: &[TensorInfo],
    alignment: u32,
    data_offset: u64,
    data_len: u64,
) -> Result<(), GgufError> {
    let mut extents = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.offset % u64::from(alignment) != 0 {
            return Err(GgufError::MisalignedTensor { tensor: t.name.clone(), offset: t.offset, alignment });
        }
        let end = t.offset.saturating_add(t.n_bytes());
        if end > data_len {
            return Err(GgufError::TensorOutOfBounds {
                tensor: t.name.clone(),
                start: t.offset,
                end,
                data_offset,
                data_len,
            });
        }
        if end > t.offset {
            extents.push((t.offset, end, &t.name));
        }
    }
    extents.sort_unstable_by_key(|&(start, ..)| start);
    match extents.windows(2).find(|w| w[0].1 > w[1].0) {
        Some(w) => Err(GgufError::OverlappingTensors { first: w[0].2.clone(), second: w[1].2.clone() }),
        None => Ok(()),
    }
}

/// Which part of the file a read is for; formatted into an error only when one happens.
#[derive(Clone, Copy)]
enum Field<'a> {
    Magic,
    Version,
    TensorCount,
    MetadataCount,
    Key { index: usize },
    ValueType { key: &'a str },
    Value { key: &'a str },
    ArrayLen { key: &'a str },
    TensorName { index: usize },
    Tensor { name: &'a str, part: &'static str },
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Magic => f.write_str("magic"),
            Field::Version => f.write_str("version"),
            Field::TensorCount => f.write_str("tensor count"),
            Field::MetadataCount => f.write_str("metadata count"),
            Field::Key { index } => write!(f, "key of metadata entry {index}"),
            Field::ValueType { key } => write!(f, "value type of metadata {key:?}"),
            Field::Value { key } => write!(f, "value of metadata {key:?}"),
            Field::ArrayLen { key } => write!(f, "array length in metadata {key:?}"),
            Field::TensorName { index } => write!(f, "name of tensor {index}"),
            Field::Tensor { name, part } => write!(f, "{part} of tensor {name:?}"),
        }
    }
}

/// Little-endian reads that fail with [`GgufError`] instead of running past the end.
struct Cursor<'a> {
    buf: &'a [u8],
    /// Always `<= buf.len()`.
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: Field) -> Result<&'a [u8], GgufError> {
        let rest = &self.buf[self.pos..];
        match usize::try_from(n).ok().filter(|&n| n <= rest.len()) {
            Some(n) => {
                self.pos += n;
                Ok(&rest[..n])
            }
            None => Err(GgufError::Truncated {
                field: field.to_string(),
                offset: self.offset(),
                needed: n,
                available: rest.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], GgufError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: Field) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: Field) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn string(&mut self, field: Field) -> Result<String, GgufError> {
        let len = self.u64(field)?;
        let start = self.offset();
        let bytes = self.take(len, field)?;
        match core::str::from_utf8(bytes) {
            Ok(s) => Ok(s.into()),
            Err(e) => Err(GgufError::InvalidUtf8 {
                field: field.to_string(),
                offset: start + e.valid_up_to() as u64,
            }),
        }
    }

    /// Reads a count and believes it only if the bytes left could hold that many items.
    fn count(&mut self, min_item_bytes: u64, field: Field) -> Result<usize, GgufError> {
        let at = self.offset();
        let count = self.u64(field)?;
        self.check_count(count, min_item_bytes, field, at)
    }

    fn check_count(
        &self,
        count: u64,
        min_item_bytes: u64,
        field: Field,
        at: u64,
    ) -> Result<usize, GgufError> {
        let fits = count.checked_mul(min_item_bytes).is_some_and(|n| n <= self.remaining());
        // `count <= remaining <= usize::MAX` once it fits (every item takes at least one byte).
        match usize::try_from(count) {
            Ok(count) if fits => Ok(count),
            _ => Err(GgufError::CountTooLarge {
                field: field.to_string(),
                offset: at,
                count,
                min_item_bytes,
                available: self.remaining(),
            }),
        }
    }

    fn value_type(&mut self, key: &str) -> Result<ValueType, GgufError> {
        let at = self.offset();
        let type_id = self.u32(Field::ValueType { key })?;
        ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.into(),
            type_id,
            offset: at,
        })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<MetadataValue, GgufError> {
        let field = Field::Value { key };
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(field)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(field)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(field)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(field)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Bool => {
                let at = self.offset();
                match self.array(field)? {
                    [0] => MetadataValue::Bool(false),
                    [1] => MetadataValue::Bool(true),
                    [value] => return Err(GgufError::InvalidBool { key: key.into(), value, offset: at }),
                }
            }
            ValueType::String => MetadataValue::String(self.string(field)?),
            ValueType::Array => {
                if depth == MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep { key: key.into(), max: MAX_ARRAY_NESTING });
                }
                let element = self.value_type(key)?;
                let len = self.count(element.min_bytes(), Field::ArrayLen { key })?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(element, key, depth + 1)?);
                }
                MetadataValue::Array(items)
            }
        })
    }

    fn tensor_info(&mut self, index: usize) -> Result<TensorInfo, GgufError> {
        let name = self.string(Field::TensorName { index })?;
        let field = |part| Field::Tensor { name: &name, part };
        let n_dims = self.u32(field("dimension count"))?;
        // Before reading the dims, so a huge count reads (and allocates) nothing.
        check_n_dims(&name, n_dims.into())?;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(field("dimensions"))?);
        }
        let type_at = self.offset();
        let type_id = self.u32(field("type"))?;
        let offset = self.u64(field("data offset"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            type_id,
            offset: type_at,
        })?;
        tensor_size(&name, ty, &dims)?;
        Ok(TensorInfo { name, dims, ty, offset })
    }
}
