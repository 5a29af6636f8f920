//! Hugging Face safetensors: an 8-byte header length, a JSON header giving each tensor's dtype,
//! shape (row-major) and byte range, then the data. Parsing and validation are the `safetensors`
//! crate's; this module keeps the file in [`SharedBytes`] (a memory map on native) so tensors
//! borrow it, converts F16/BF16 to f32, and writes files atomically.

use alloc::borrow::Cow;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::ops::Range;

use ::safetensors::{tensor::View, SafeTensors};
pub use ::safetensors::{Dtype, SafeTensorError};

use super::{find_sorted, sort_by_name};
use crate::bytes::SharedBytes;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    #[cfg(feature = "std")]
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid safetensors data: {0}")]
    Format(#[source] SafeTensorError),
    #[error("tensor {name:?} not found")]
    TensorNotFound { name: String },
    #[error("tensor {name:?} is {dtype}, which does not convert to f32")]
    UnsupportedDtype { name: String, dtype: Dtype },
    #[error("tensor {name:?}: {found} bytes of data given, but {dtype} {shape:?} takes {expected}")]
    SizeMismatch { name: String, dtype: Dtype, shape: Vec<usize>, expected: usize, found: usize },
    #[error("tensor name {name:?} appears twice")]
    DuplicateTensor { name: String },
    #[error("tensor {name:?}: data ends at byte {end} of a data section of {data_len} bytes")]
    DataOutOfBounds { name: String, end: u64, data_len: u64 },
}

/// One tensor of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsTensor {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major, as in PyTorch: the last dimension varies fastest.
    pub shape: Vec<usize>,
    /// Byte range within the data section (validated by the parser).
    range: Range<usize>,
}

impl SafetensorsTensor {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed safetensors file whose tensors borrow its bytes.
#[derive(Clone, Debug)]
pub struct SafetensorsFile {
    /// In data order.
    tensors: Vec<SafetensorsTensor>,
    /// Indices into `tensors` sorted by name.
    by_name: Vec<usize>,
    /// The `__metadata__` string map, sorted by key.
    metadata: Vec<(String, String)>,
    data: SharedBytes,
}

impl SafetensorsFile {
    /// Opens a file: memory-mapped on native, read into memory on wasm32.
    #[cfg(feature = "std")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let bytes = super::map_file(path)
            .map_err(|source| SafetensorsError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: SharedBytes) -> Result<Self, SafetensorsError> {
        check_extents(&bytes)?;
        // Checks the header, that the tensors tile the data section exactly, and that each
        // range matches its dtype and shape.
        let (header_len, header) = SafeTensors::read_metadata(&bytes).map_err(SafetensorsError::Format)?;
        let data = bytes
            .slice(8 + header_len..bytes.len())
            .expect("read_metadata checked that the header and data fill the buffer");
        let tensors: Vec<SafetensorsTensor> = header
            .offset_keys()
            .into_iter()
            .filter_map(|name| {
                let info = header.info(&name)?;
                let (start, end) = info.data_offsets;
                Some(SafetensorsTensor {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: start..end,
                    name,
                })
            })
            .collect();
        let by_name = sort_by_name(&tensors, |t| &t.name)
            .map_err(|(_, later)| SafetensorsError::DuplicateTensor { name: tensors[later].name.clone() })?;
        let mut metadata: Vec<(String, String)> =
            header.metadata().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
        metadata.sort();
        Ok(Self { tensors, by_name, metadata, data })
    }

    /// All tensors, in the order of their data in the file.
    pub fn tensors(&self) -> &[SafetensorsTensor] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&SafetensorsTensor> {
        find_sorted(&self.tensors, &self.by_name, |t| &t.name, name)
    }

    /// The `__metadata__` entries, sorted by key.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// A tensor's raw little-endian bytes, shared with the file (no copy).
    pub fn tensor_data(&self, name: &str) -> Result<SharedBytes, SafetensorsError> {
        let tensor = self.require(name)?;
        Ok(self.data.slice(tensor.range.clone()).expect("ranges were validated at parse time"))
    }

    /// A F32, F16 or BF16 tensor's values as f32, in row-major order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let tensor = self.require(name)?;
        let bytes = &self.data[tensor.range.clone()];
        Ok(match tensor.dtype {
            Dtype::F32 => decode(bytes, f32::from_le_bytes),
            Dtype::F16 => decode(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
            Dtype::BF16 => decode(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
            dtype => return Err(SafetensorsError::UnsupportedDtype { name: name.into(), dtype }),
        })
    }

    fn require(&self, name: &str) -> Result<&SafetensorsTensor, SafetensorsError> {
        self.tensor(name).ok_or_else(|| SafetensorsError::TensorNotFound { name: name.into() })
    }
}

/// safetensors 0.7 adds the header length to the end of the last tensor unchecked, which
/// panics in builds with overflow checks when a hostile header claims offsets near
/// `usize::MAX`. So the offsets are checked against the file first; anything else wrong with
/// the header is left for the crate to report.
fn check_extents(bytes: &[u8]) -> Result<(), SafetensorsError> {
    #[derive(serde::Deserialize)]
    struct Extent {
        /// Absent from `__metadata__`, whose other fields are ignored.
        data_offsets: Option<(u64, u64)>,
    }
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else { return Ok(()) };
    // Headers over the crate's limit it refuses unparsed; so does this check.
    const MAX_HEADER: u64 = 100_000_000;
    let header = Some(u64::from_le_bytes(*len))
        .filter(|&n| n <= MAX_HEADER)
        .and_then(|n| rest.split_at_checked(n as usize));
    let Some((header, data)) = header else { return Ok(()) };
    let Ok(extents) = serde_json::from_slice::<alloc::collections::BTreeMap<String, Extent>>(header) else {
        return Ok(());
    };
    let data_len = data.len() as u64;
    for (name, extent) in extents {
        if let Some((_, end)) = extent.data_offsets.filter(|&(_, end)| end > data_len) {
            return Err(SafetensorsError::DataOutOfBounds { name, end, data_len });
        }
    }
    Ok(())
}

fn decode<const N: usize>(bytes: &[u8], value: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut b = [0; N];
            b.copy_from_slice(chunk);
            value(b)
        })
        .collect()
}

/// A tensor to write, as the `safetensors` crate's serializer wants it.
struct TensorRef<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: &'a [u8],
}

impl View for TensorRef<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A whole safetensors file in memory. Each tensor is `(name, dtype, shape, little-endian
/// bytes)`; `metadata` becomes the `__metadata__` map (PEFT writes `format: pt`).
pub fn safetensors_to_bytes<N, S, D>(
    tensors: &[(N, Dtype, S, D)],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>, SafetensorsError>
where
    N: AsRef<str>,
    S: AsRef<[usize]>,
    D: AsRef<[u8]>,
{
    let names: Vec<&str> = tensors.iter().map(|(name, ..)| name.as_ref()).collect();
    // The serializer indexes tensors by name and would silently keep only one of two.
    sort_by_name(&names, |n| n)
        .map_err(|(_, later)| SafetensorsError::DuplicateTensor { name: names[later].into() })?;
    let mut views = Vec::with_capacity(tensors.len());
    for (name, (_, dtype, shape, data)) in names.iter().zip(tensors) {
        let (shape, data) = (shape.as_ref(), data.as_ref());
        // Checked here to name the tensor; what does not compute (overflow, sub-byte dtypes
        // that end mid-byte) the serializer rejects itself.
        let expected = shape
            .iter()
            .try_fold(dtype.bitsize(), |bits, &d| bits.checked_mul(d))
            .filter(|bits| bits % 8 == 0)
            .map(|bits| bits / 8);
        if let Some(expected) = expected.filter(|&e| e != data.len()) {
            return Err(SafetensorsError::SizeMismatch {
                name: name.to_string(),
                dtype: *dtype,
                shape: shape.to_vec(),
                expected,
                found: data.len(),
            });
        }
        views.push((*name, TensorRef { dtype: *dtype, shape, data }));
    }
    let metadata = (!metadata.is_empty())
        .then(|| metadata.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect());
    ::safetensors::serialize(views, metadata).map_err(SafetensorsError::Format)
}

/// Writes a safetensors file atomically (see [`safetensors_to_bytes`] for the arguments).
#[cfg(feature = "std")]
pub fn write_safetensors<N, S, D>(
    path: impl AsRef<std::path::Path>,
    tensors: &[(N, Dtype, S, D)],
    metadata: &[(&str, &str)],
) -> Result<(), SafetensorsError>
where
    N: AsRef<str>,
    S: AsRef<[usize]>,
    D: AsRef<[u8]>,
{
    let path = path.as_ref();
    let bytes = safetensors_to_bytes(tensors, metadata)?;
    super::write_atomic(path, |w| w.write_all(&bytes))
        .map_err(|source| SafetensorsError::Io { path: path.to_path_buf(), source })
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn le_bytes<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| to(v)).collect()
    }

    /// Values that F16 and BF16 hold exactly, so the f32 conversion must reproduce them.
    const VALUES: [f32; 6] = [0.0, 1.5, -2.0, 0.25, 96.0, -0.125];

    type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

    fn sample() -> Vec<Tensor> {
        let f16: Vec<half::f16> = VALUES.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bf16: Vec<half::bf16> = VALUES.iter().map(|&v| half::bf16::from_f32(v)).collect();
        vec![
            ("a.f32".into(), Dtype::F32, vec![2, 3], le_bytes(&VALUES, f32::to_le_bytes)),
            ("b.f16".into(), Dtype::F16, vec![3, 2], le_bytes(&f16, half::f16::to_le_bytes)),
            ("c.bf16".into(), Dtype::BF16, vec![6], le_bytes(&bf16, half::bf16::to_le_bytes)),
            ("d.i64".into(), Dtype::I64, vec![1, 2], le_bytes(&[7i64, -7], i64::to_le_bytes)),
            ("e.empty".into(), Dtype::F32, vec![0, 4], vec![]),
        ]
    }

    fn check_sample(file: &SafetensorsFile) {
        let tensors = sample();
        assert_eq!(file.tensors().len(), tensors.len());
        for (name, dtype, shape, bytes) in &tensors {
            let t = file.tensor(name).unwrap();
            assert_eq!((t.dtype, &t.shape), (*dtype, shape), "{name}");
            assert_eq!(&*file.tensor_data(name).unwrap(), &bytes[..], "{name}");
        }
        for name in ["a.f32", "b.f16", "c.bf16"] {
            assert_eq!(file.tensor_f32(name).unwrap(), VALUES, "{name}");
        }
        assert!(file.tensor_f32("e.empty").unwrap().is_empty());
        assert!(matches!(
            file.tensor_f32("d.i64"),
            Err(SafetensorsError::UnsupportedDtype { dtype: Dtype::I64, .. })
        ));
        assert!(matches!(
            file.tensor_f32("nope"),
            Err(SafetensorsError::TensorNotFound { name }) if name == "nope"
        ));
        assert_eq!(file.metadata(), [("format".to_string(), "pt".to_string())]);
    }

    #[test]
    fn round_trips_through_memory_and_files() {
        let bytes = safetensors_to_bytes(&sample(), &[("format", "pt")]).unwrap();
        check_sample(&SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes.clone())).unwrap());

        let dir = std::env::temp_dir().join(format!("adaptkit-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("adapter_model.safetensors");
        write_safetensors(&path, &sample(), &[("format", "pt")]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        check_sample(&SafetensorsFile::open(&path).unwrap());
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["adapter_model.safetensors"], "no temp files left behind");
        let e = SafetensorsFile::open(dir.join("absent")).unwrap_err();
        assert!(matches!(e, SafetensorsError::Io { .. }), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn borrowed_tensors_and_no_metadata() {
        let data = [0u8; 8];
        let tensors: [(&str, Dtype, &[usize], &[u8]); 1] = [("w", Dtype::F32, &[2], &data)];
        let file =
            SafetensorsFile::from_bytes(SharedBytes::from_vec(safetensors_to_bytes(&tensors, &[]).unwrap()))
                .unwrap();
        assert!(file.metadata().is_empty());
        assert_eq!(file.tensor_f32("w").unwrap(), [0.0, 0.0]);
    }

    #[test]
    fn writer_refuses_inconsistent_tensors() {
        let mut bad = sample();
        bad[0].3.pop();
        let e = safetensors_to_bytes(&bad, &[]).unwrap_err();
        assert!(
            matches!(&e, SafetensorsError::SizeMismatch { name, expected: 24, found: 23, .. } if name == "a.f32"),
            "{e}"
        );
        let mut dup = sample();
        dup[1].0 = "a.f32".into();
        let e = safetensors_to_bytes(&dup, &[]).unwrap_err();
        assert!(matches!(&e, SafetensorsError::DuplicateTensor { name } if name == "a.f32"), "{e}");
    }

    #[test]
    fn rejects_hostile_files() {
        let bytes = safetensors_to_bytes(&sample(), &[]).unwrap();
        for len in 0..bytes.len() {
            let e = SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes[..len].to_vec()));
            assert!(
                matches!(e, Err(SafetensorsError::Format(_) | SafetensorsError::DataOutOfBounds { .. })),
                "prefix of {len} bytes"
            );
        }
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = SafetensorsFile::from_bytes(SharedBytes::from_vec(huge)).unwrap_err();
        assert!(matches!(e, SafetensorsError::Format(SafeTensorError::HeaderTooLarge)), "{e}");
    }

    /// Writes the fuzz seeds (see `fuzz/README.md`).
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = crate::format::fuzz_seed_dir("safetensors_reader");
        let sample = safetensors_to_bytes(&sample(), &[("format", "pt")]).unwrap();
        std::fs::write(dir.join("sample"), sample).unwrap();
    }

    /// Offsets that tile the data up to `u64::MAX` make safetensors 0.7 overflow (and panic
    /// where overflow checks are on) before it notices that the file is far too short.
    #[test]
    fn rejects_offsets_near_the_end_of_memory() {
        let big = (1u64 << 61) - 1; // the largest U8 tensor whose bit count fits in 64 bits
        let mut entries = Vec::new();
        let mut start = 0;
        for (i, size) in [big; 8].into_iter().chain([7]).enumerate() {
            let end = start + size;
            entries
                .push(format!(r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{start},{end}]}}"#));
            start = end;
        }
        assert_eq!(start, u64::MAX);
        let header = format!("{{{}}}", entries.join(","));
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let e = SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)).unwrap_err();
        assert!(
            matches!(&e, SafetensorsError::DataOutOfBounds { name, data_len: 0, .. } if name == "t0"),
            "{e}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn mutated_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = safetensors_to_bytes(&sample(), &[("format", "pt")]).unwrap();
            for (at, byte) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *byte;
            }
            if let Ok(file) = SafetensorsFile::from_bytes(SharedBytes::from_vec(bytes)) {
                for t in file.tensors() {
                    let data = file.tensor_data(&t.name).unwrap();
                    prop_assert_eq!(data.len() * 8, t.n_elements() * t.dtype.bitsize());
                    let _ = file.tensor_f32(&t.name);
                }
            }
        }
    }
}
