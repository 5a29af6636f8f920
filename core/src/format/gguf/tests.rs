//! Round trips through the writer, hand-built hostile files (each must give its own error), the
//! real model, and a property test that no mutation of a valid file makes the reader panic.

use super::*;
use proptest::prelude::*;

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(SharedBytes::from_vec(bytes))
}

/// Deterministic filler bytes, so failures reproduce.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn every_ggml_type() -> Vec<GgmlType> {
    (0..256).filter_map(GgmlType::from_id).collect()
}

/// One value of every metadata type, arrays of every element type, nested and empty arrays.
fn every_value() -> Vec<(String, MetadataValue)> {
    use MetadataValue as V;
    let scalars = vec![
        V::U8(250),
        V::I8(-7),
        V::U16(65_000),
        V::I16(-32_000),
        V::U32(4_000_000_000),
        V::I32(-2_000_000_000),
        V::U64(u64::MAX),
        V::I64(i64::MIN),
        V::F32(1.5),
        V::F64(-2.25e300),
        V::Bool(true),
        V::Bool(false),
        V::String("héllo ✓".into()),
        V::String(String::new()),
    ];
    let mut all: Vec<(String, MetadataValue)> = scalars
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("scalar.{i}.{}", v.type_name()), v.clone()))
        .collect();
    for (i, v) in scalars.iter().enumerate() {
        all.push((format!("array.{i}.{}", v.type_name()), V::Array(vec![v.clone(), v.clone()])));
    }
    all.push(("array.empty".into(), V::Array(vec![])));
    all.push((
        "array.nested".into(),
        V::Array(vec![
            V::Array(vec![V::I32(1), V::I32(-2)]),
            V::Array(vec![V::String("a".into())]),
            V::Array(vec![]),
            V::Array(vec![V::Array(vec![V::Bool(true)])]),
        ]),
    ));
    all
}

/// A small valid file with a bit of everything (the property test and fuzz seeds start here).
fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("llama.block_count", 2u32).unwrap();
    w.add_metadata("tokenizer.ggml.tokens", vec!["<s>", "a", "b"]).unwrap();
    w.add_metadata("tokenizer.ggml.scores", vec![0.0f32, -1.0, -2.0]).unwrap();
    w.add_metadata("flag", true).unwrap();
    w.add_tensor("token_embd.weight", GgmlType::Q8_0, &[32, 3], noise(34 * 3, 1)).unwrap();
    w.add_tensor("norm.weight", GgmlType::F32, &[5], noise(20, 2)).unwrap();
    w.add_tensor("blk.0.w", GgmlType::Q4_1, &[64, 2], noise(20 * 4, 3)).unwrap();
    w
}

/// Builds headers byte by byte, valid or not.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Raw::default().bytes(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn u8(self, v: u8) -> Self {
        self.bytes(&[v])
    }
    fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pads to the default alignment and appends `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        self.0.resize(self.0.len().next_multiple_of(32) + n, 0);
        self
    }
    fn offset(&self) -> u64 {
        self.0.len() as u64
    }
    fn parse(self) -> Result<GgufFile, GgufError> {
        parse(self.0)
    }
}

const F32: u32 = 0;

#[test]
fn round_trips_every_metadata_type() {
    let values = every_value();
    let mut w = GgufWriter::new();
    for (k, v) in &values {
        w.add_metadata(k.clone(), v.clone()).unwrap();
    }
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), DEFAULT_ALIGNMENT);
    assert_eq!(file.metadata(), &values[..], "values and file order");
    for (k, v) in &values {
        assert_eq!(file.get(k), Some(v));
    }
    assert!(file.tensors().is_empty());
}

#[test]
fn round_trips_every_ggml_type() {
    let types = every_ggml_type();
    assert!(types.contains(&GgmlType::Q4_1) && types.contains(&GgmlType::Q8_0));
    let mut w = GgufWriter::new();
    let mut expected = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let dims = [ty.block_len() as u64 * 2, 3, 1, 2];
        let dims = &dims[..1 + i % 4];
        let n = dims.iter().product::<u64>();
        let data = noise(ty.bytes_for(n).unwrap() as usize, i as u64);
        let name = format!("t.{}", ty.name());
        w.add_tensor(name.clone(), ty, dims, data.clone()).unwrap();
        expected.push((name, ty, dims.to_vec(), data));
    }
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.tensors().len(), types.len());
    assert_eq!(file.data_offset() % 32, 0);
    for (info, (name, ty, dims, data)) in file.tensors().iter().zip(&expected) {
        assert_eq!((&info.name, info.ty, &info.dims), (name, *ty, dims));
        assert_eq!(info.offset % 32, 0, "{name}");
        assert_eq!(info.n_bytes(), data.len() as u64);
        assert_eq!(&*file.tensor_data(info), &data[..], "{name}");
        assert_eq!(file.tensor(name), Some(info));
    }
    assert_eq!(file.tensor("missing"), None);
}

#[test]
fn reads_v2_and_v3_headers() {
    let bytes = sample_writer().to_bytes();
    let v3 = parse(bytes.clone()).unwrap();
    for version in [2u32, 3] {
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&version.to_le_bytes());
        let file = parse(b).unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.metadata(), v3.metadata());
        assert_eq!(file.tensors(), v3.tensors());
    }
}

#[test]
fn rejects_other_versions_and_big_endian() {
    for version in [0u32, 1, 4, 1000] {
        let mut b = sample_writer().to_bytes();
        b[4..8].copy_from_slice(&version.to_le_bytes());
        assert!(
            matches!(parse(b), Err(GgufError::UnsupportedVersion { version: v }) if v == version),
            "{version}"
        );
    }
    let mut b = sample_writer().to_bytes();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(parse(b), Err(GgufError::BigEndian { version: 3 })));
}

#[test]
fn rejects_bad_magic() {
    let mut b = sample_writer().to_bytes();
    b[..4].copy_from_slice(b"GGML");
    assert!(matches!(parse(b), Err(GgufError::BadMagic { found }) if &found == b"GGML"));
    assert!(matches!(parse(b"GG".to_vec()), Err(GgufError::Truncated { offset: 0, needed: 4, .. })));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_writer().to_bytes();
    let file = parse(bytes.clone()).unwrap();
    let last = file.tensors().iter().map(|t| t.offset + t.n_bytes()).max().unwrap();
    let end_of_data = (file.data_offset() + last) as usize;
    for len in 0..end_of_data {
        match parse(bytes[..len].to_vec()) {
            Err(GgufError::Truncated { .. } | GgufError::CountTooLarge { .. })
                if (len as u64) < file.data_offset() => {}
            Err(GgufError::TensorOutOfBounds { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
    // Trailing padding is not data; a file cut just after the last tensor is whole.
    assert!(parse(bytes[..end_of_data].to_vec()).is_ok());
}

#[test]
fn file_without_tensors_may_end_after_its_header() {
    let file = Raw::header(0, 1).kv_u32("k", 7).parse().unwrap();
    assert_eq!(file.get_u64("k").unwrap(), 7);
    assert!(file.tensors().is_empty());
}

#[test]
fn rejects_absurd_counts() {
    let e = Raw::header(1 << 63, 0).parse().unwrap_err();
    assert!(matches!(e, GgufError::CountTooLarge { offset: 8, count, .. } if count == 1 << 63), "{e}");
    assert!(e.to_string().contains("tensor count"), "{e}");

    let e = Raw::header(0, u64::MAX).parse().unwrap_err();
    assert!(matches!(e, GgufError::CountTooLarge { offset: 16, count: u64::MAX, .. }), "{e}");

    let raw = Raw::header(0, 1).str("arr").u32(9).u32(10);
    let at = raw.offset();
    let e = raw.u64(1 << 61).u64(1).parse().unwrap_err();
    assert!(
        matches!(e, GgufError::CountTooLarge { offset, count, min_item_bytes: 8, .. }
            if offset == at && count == 1 << 61),
        "{e}"
    );
    assert!(e.to_string().contains("\"arr\""), "{e}");
}

#[test]
fn rejects_absurd_string_lengths() {
    let e = Raw::header(0, 1).u64(1 << 60).bytes(b"key, then more").parse().unwrap_err();
    assert!(
        matches!(e, GgufError::Truncated { offset: 32, needed, available: 14, .. } if needed == 1 << 60),
        "{e}"
    );
    assert!(e.to_string().contains("key of metadata entry 0"), "{e}");

    let e = Raw::header(0, 1).str("name").u32(8).u64(1 << 60).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { field, needed, .. }
        if field.contains("\"name\"") && *needed == 1 << 60),
        "{e}"
    );

    let e = Raw::header(1, 0).u64(u64::MAX).bytes(&[0; 16]).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { field, needed: u64::MAX, .. } if field == "name of tensor 0"),
        "{e}"
    );
}

#[test]
fn bounds_array_nesting() {
    let mut raw = Raw::header(0, 1).str("deep").u32(9);
    for _ in 0..1_000_000 {
        raw = raw.u32(9).u64(1);
    }
    let e = raw.parse().unwrap_err();
    assert!(matches!(&e, GgufError::NestingTooDeep { key, max: MAX_ARRAY_NESTING } if key == "deep"), "{e}");

    // Exactly the deepest nesting allowed reads back, and the writer refuses one level more.
    let mut value = MetadataValue::U8(1);
    for _ in 0..MAX_ARRAY_NESTING {
        value = MetadataValue::Array(vec![value]);
    }
    let mut w = GgufWriter::new();
    w.add_metadata("ok", value.clone()).unwrap();
    assert_eq!(parse(w.to_bytes()).unwrap().get("ok"), Some(&value));
    let e = w.add_metadata("too.deep", MetadataValue::Array(vec![value])).unwrap_err();
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
}

#[test]
fn rejects_malformed_values() {
    let raw = Raw::header(0, 1).str("k");
    let at = raw.offset();
    let e = raw.u32(13).u8(0).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, type_id: 13, offset } if key == "k" && *offset == at),
        "{e}"
    );

    let raw = Raw::header(0, 1).str("arr").u32(9);
    let at = raw.offset();
    let e = raw.u32(77).u64(0).parse().unwrap_err();
    assert!(matches!(e, GgufError::UnknownValueType { type_id: 77, offset, .. } if offset == at), "{e}");

    let raw = Raw::header(0, 1).str("b").u32(7);
    let at = raw.offset();
    let e = raw.u8(2).parse().unwrap_err();
    assert!(matches!(e, GgufError::InvalidBool { value: 2, offset, .. } if offset == at), "{e}");

    let e = Raw::header(0, 1).u64(3).bytes(b"a\xffb").u32(0).u8(0).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::InvalidUtf8 { offset: 33, field } if field == "key of metadata entry 0"),
        "{e}"
    );

    let raw = Raw::header(0, 2).kv_u32("dup", 1);
    let at = raw.offset();
    let e = raw.kv_u32("dup", 2).parse().unwrap_err();
    assert!(matches!(&e, GgufError::DuplicateKey { key, offset } if key == "dup" && *offset == at), "{e}");
}

#[test]
fn honours_and_checks_alignment() {
    let mut w = sample_writer();
    w.set_alignment(64).unwrap();
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert!(file.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(file.get("general.alignment"), Some(&MetadataValue::U32(64)));

    for bad in [0u32, 3, 48] {
        let e = Raw::header(0, 1).kv_u32("general.alignment", bad).parse().unwrap_err();
        assert!(matches!(e, GgufError::BadAlignment { value } if value == bad), "{e}");
        assert!(matches!(w.set_alignment(bad), Err(GgufError::BadAlignment { .. })));
    }
    let e = Raw::header(0, 1).str("general.alignment").u32(10).u64(64).parse().unwrap_err();
    assert!(matches!(e, GgufError::WrongType { expected: "u32", found: "u64", .. }), "{e}");
    assert_eq!(w.alignment(), 64, "a refused alignment changes nothing");
}

#[test]
fn rejects_bad_tensor_infos() {
    let e = Raw::header(1, 0).tensor("t", &[1; 5], F32, 0).data(4).parse().unwrap_err();
    assert!(matches!(&e, GgufError::TooManyDims { tensor, n_dims: 5 } if tensor == "t"), "{e}");

    let e = Raw::header(1, 0).str("t").u32(u32::MAX).bytes(&[0; 16]).parse().unwrap_err();
    assert!(matches!(e, GgufError::TooManyDims { n_dims, .. } if n_dims == u32::MAX as u64), "{e}");

    let raw = Raw::header(1, 0).str("t").u32(1).u64(4);
    let at = raw.offset();
    let e = raw.u32(99).u64(0).data(16).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::UnknownTensorType { tensor, type_id: 99, offset } if tensor == "t" && *offset == at),
        "{e}"
    );

    for dims in [&[1 << 32, 1 << 32][..], &[1 << 63], &[0, 1 << 63], &[1 << 62, 2]] {
        let e = Raw::header(1, 0).tensor("big", dims, F32, 0).parse().unwrap_err();
        assert!(
            matches!(&e, GgufError::ShapeOverflow { tensor, dims: d } if tensor == "big" && d == dims),
            "{e}"
        );
    }
    // The element count fits, the byte count does not.
    let e = Raw::header(1, 0).tensor("f64", &[1 << 62], 28, 0).parse().unwrap_err();
    assert!(matches!(e, GgufError::ShapeOverflow { .. }), "{e}");

    let e = Raw::header(1, 0).tensor("q", &[31, 2], 2, 0).data(64).parse().unwrap_err();
    assert!(matches!(e, GgufError::PartialBlock { ty: GgmlType::Q4_0, dim0: 31, block_len: 32, .. }), "{e}");
}

#[test]
fn rejects_bad_tensor_placement() {
    let e = Raw::header(1, 0).tensor("t", &[8], F32, 0).data(31).parse().unwrap_err();
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { tensor, start: 0, end: 32, data_len: 31, .. } if tensor == "t"),
        "{e}"
    );

    let e = Raw::header(1, 0).tensor("t", &[8], F32, 64).data(64).parse().unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { start: 64, end: 96, .. }), "{e}");

    let far = u64::MAX - 31;
    let e = Raw::header(1, 0).tensor("t", &[8], F32, far).data(64).parse().unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { start, end: u64::MAX, .. } if start == far), "{e}");

    let e = Raw::header(1, 0).tensor("t", &[1], F32, 4).data(64).parse().unwrap_err();
    assert!(matches!(e, GgufError::MisalignedTensor { offset: 4, alignment: 32, .. }), "{e}");

    let e = Raw::header(2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[16], F32, 32)
        .data(96)
        .parse()
        .unwrap_err();
    assert!(
        matches!(&e, GgufError::OverlappingTensors { first, second } if first == "a" && second == "b"),
        "{e}"
    );

    // Empty tensors take no bytes, so sharing an offset with another is not an overlap.
    let file = Raw::header(2, 0).tensor("a", &[16], F32, 0).tensor("e", &[0], F32, 0).data(64).parse();
    assert_eq!(
        file.unwrap()
            .tensor_data(&TensorInfo { name: "e".into(), dims: vec![0], ty: GgmlType::F32, offset: 0 })
            .len(),
        0
    );

    let e =
        Raw::header(2, 0).tensor("a", &[8], F32, 0).tensor("a", &[8], F32, 32).data(64).parse().unwrap_err();
    assert!(matches!(&e, GgufError::DuplicateTensor { tensor } if tensor == "a"), "{e}");
}

#[test]
fn typed_getters() {
    let mut w = GgufWriter::new();
    w.add_metadata("u8", 200u8).unwrap();
    w.add_metadata("i32", 7i32).unwrap();
    w.add_metadata("neg", -1i64).unwrap();
    w.add_metadata("u64", u64::MAX).unwrap();
    w.add_metadata("f32", 0.5f32).unwrap();
    w.add_metadata("f64", 0.25f64).unwrap();
    w.add_metadata("s", "text").unwrap();
    w.add_metadata("b", true).unwrap();
    w.add_metadata("strs", vec!["x", "y"]).unwrap();
    w.add_metadata("ints", vec![1u32, 2]).unwrap();
    let f = parse(w.to_bytes()).unwrap();

    assert_eq!(f.get_u64("u8").unwrap(), 200);
    assert_eq!(f.get_u64("i32").unwrap(), 7);
    assert_eq!(f.get_u64("u64").unwrap(), u64::MAX);
    assert!(matches!(f.get_u64("neg"), Err(GgufError::ValueOutOfRange { value: -1, .. })));
    assert!(matches!(f.get_u64("s"), Err(GgufError::WrongType { found: "string", .. })));
    assert!(matches!(f.get_u64("nope"), Err(GgufError::MissingKey { key }) if key == "nope"));
    assert_eq!(f.get_f32("f32").unwrap(), 0.5);
    assert_eq!(f.get_f32("f64").unwrap(), 0.25);
    assert_eq!(f.get_f32("i32").unwrap(), 7.0);
    assert!(matches!(f.get_f32("b"), Err(GgufError::WrongType { found: "bool", .. })));
    assert_eq!(f.get_str("s").unwrap(), "text");
    assert!(f.get_bool("b").unwrap());
    assert!(matches!(f.get_bool("u8"), Err(GgufError::WrongType { expected: "a bool", found: "u8", .. })));
    assert_eq!(f.get_string_array("strs").unwrap(), ["x", "y"]);
    assert!(matches!(
        f.get_string_array("ints"),
        Err(GgufError::WrongElementType { index: 0, found: "u32", .. })
    ));
    assert!(matches!(f.get_string_array("s"), Err(GgufError::WrongType { .. })));
    let e = f.get_u64("neg").unwrap_err().to_string();
    assert_eq!(e, "metadata \"neg\" = -1 does not fit in u64");
}

#[test]
fn writer_refuses_what_it_cannot_write() {
    let mut w = GgufWriter::new();
    let e = w.add_tensor("t", GgmlType::F32, &[4], vec![0; 15]).unwrap_err();
    assert!(matches!(e, GgufError::TensorSizeMismatch { expected: 16, found: 15, .. }), "{e}");
    w.add_tensor("t", GgmlType::F32, &[4], vec![0; 16]).unwrap();
    assert!(matches!(
        w.add_tensor("t", GgmlType::F32, &[4], vec![0; 16]),
        Err(GgufError::DuplicateTensor { .. })
    ));
    assert!(matches!(
        w.add_tensor("5d", GgmlType::F32, &[1; 5], vec![0; 4]),
        Err(GgufError::TooManyDims { n_dims: 5, .. })
    ));
    assert!(matches!(
        w.add_tensor("q", GgmlType::Q4_1, &[16, 2], vec![0; 20]),
        Err(GgufError::PartialBlock { .. })
    ));

    let mixed = MetadataValue::Array(vec![MetadataValue::U8(1), MetadataValue::I8(1)]);
    let e = w.add_metadata("mixed", mixed).unwrap_err();
    assert!(matches!(e, GgufError::WrongElementType { index: 1, expected: "u8", found: "i8", .. }), "{e}");

    // Replacing a key keeps its place.
    w.add_metadata("a", 1u32).unwrap();
    w.add_metadata("b", 2u32).unwrap();
    w.add_metadata("a", "one").unwrap();
    let f = parse(w.to_bytes()).unwrap();
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(f.get_str("a").unwrap(), "one");
}

#[test]
fn writes_files_atomically_and_maps_them() {
    let dir = std::env::temp_dir().join(format!("adaptkit-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    let w = sample_writer();
    w.write_file(&path).unwrap();
    w.write_file(&path).unwrap(); // over an existing file
    let file = GgufFile::open(&path).unwrap();
    let mut streamed = Vec::new();
    w.write_to(&mut streamed).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), streamed);
    assert_eq!(streamed, w.to_bytes());
    assert_eq!(file.tensors().len(), 3);
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, ["m.gguf"], "no temp files left behind");

    std::fs::write(dir.join("empty.gguf"), b"").unwrap();
    let e = GgufFile::open(dir.join("empty.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Truncated { offset: 0, available: 0, .. }), "{e}");
    let e = GgufFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(&e, GgufError::Io { path, .. } if path.ends_with("absent.gguf")), "{e}");
    let e = w.write_file(dir.join("no-such-dir").join("m.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes the fuzz seeds (see `fuzz/README.md`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = crate::format::fuzz_seed_dir("gguf_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let mut all_values = GgufWriter::new();
    for (k, v) in every_value() {
        all_values.add_metadata(k, v).unwrap();
    }
    let mut all_types = GgufWriter::new();
    for ty in every_ggml_type() {
        let n = ty.block_len() as u64;
        all_types.add_tensor(ty.name(), ty, &[n], noise(ty.block_bytes(), 0)).unwrap();
    }
    let mut aligned = sample_writer();
    aligned.set_alignment(8).unwrap();
    for (name, w) in
        [("sample", sample_writer()), ("values", all_values), ("types", all_types), ("align8", aligned)]
    {
        std::fs::write(dir.join(name), w.to_bytes()).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Whatever bytes change and wherever the file ends, the reader returns (and what it
    /// accepts is consistent: every tensor's data lies in the file).
    #[test]
    fn mutated_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = sample_writer().to_bytes();
        for (at, byte) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(file) = parse(bytes) {
            for t in file.tensors() {
                prop_assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes());
            }
        }
    }
}
