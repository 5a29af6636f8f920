//! The adapter patch file (`.akp`): the bytes only. What the tensors mean is `patch`'s business;
//! the byte layout is documented in `docs/patch-format.md` and matched field by field here.
//!
//! A reader checks every length against the bytes it was given before it uses it, and checks the
//! checksum (and the signature, when there is one) before it parses anything after the fixed
//! header, so a truncated, flipped or forged file is refused before any allocation it sizes.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

pub const MAGIC: [u8; 8] = *b"\x89AKP\r\n\x1a\n";
pub const VERSION: u16 = 1;
const FIXED_HEADER: usize = 32;
const CHECKSUM: usize = 32;
/// Public key and signature.
const SIGNATURE_BLOCK: usize = 32 + 64;
const FLAG_SIGNED: u16 = 1;
/// What a signature signs: this context, then the file's checksum.
const SIGNING_CONTEXT: &[u8] = b"adaptkit patch v1\0";
/// Bounds on what a header may declare, far above any adapter of a model that fits on a device.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
pub const MAX_TENSORS: usize = 1 << 16;
pub const MAX_DIMS: usize = 4;
/// Decoded values across all tensors (1 GiB of f32).
pub const MAX_ELEMENTS: u64 = 1 << 28;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchFileError {
    #[error("not an adaptkit patch (bad magic bytes)")]
    Magic,
    #[error("patch format version {0} is not supported (this build reads version {VERSION})")]
    Version(u16),
    #[error("the patch is truncated or has extra bytes: the header declares {declared} bytes, the file has {actual}")]
    Size { declared: u64, actual: u64 },
    #[error("the patch is corrupt: its SHA-256 checksum does not match its contents")]
    Checksum,
    #[error("the patch's signature is not valid for its contents and public key")]
    Signature,
    #[error("the patch is not signed, and a signature by a trusted key is required")]
    Unsigned,
    #[error("the patch is signed by {0}, which is not one of the trusted keys")]
    UntrustedSigner(String),
    #[error("patch header: {0}")]
    Header(String),
    #[error("tensor '{name}': {message}")]
    Tensor { name: String, message: String },
}

/// How a tensor's values are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    F32,
    F16,
    /// ComPEFT: `init + scale·t` with `t ∈ {−1, 0, +1}`; `nonzeros` positions Rice-coded with
    /// parameter `rice_bits`, each followed by its sign bit (see `patch::codec`).
    Ternary {
        scale: f32,
        init: f32,
        nonzeros: u64,
        rice_bits: u8,
    },
}

impl Encoding {
    fn code(&self) -> u8 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Ternary { .. } => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Ternary { .. } => "ternary",
        }
    }
}

/// One stored tensor: its name, shape, encoding and encoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub encoding: Encoding,
    pub bytes: Vec<u8>,
}

impl StoredTensor {
    /// Values the shape holds (`usize::MAX` for a shape whose product overflows, which no
    /// parsed patch has).
    pub fn elements(&self) -> usize {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX)
    }
}

/// A patch file's contents: JSON metadata (method, config, base fingerprint, …), the tensors,
/// and the signer's public key when it is signed.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchFile {
    pub metadata: serde_json::Value,
    pub tensors: Vec<StoredTensor>,
    pub signer: Option<[u8; 32]>,
}

impl PatchFile {
    /// The file's bytes; signed with `key` when one is given.
    pub fn to_bytes(&self, key: Option<&SigningKey>) -> Vec<u8> {
        let metadata = serde_json::to_vec(&self.metadata).unwrap_or_default();
        let table = tensor_table(&self.tensors);
        let data_len: usize = self.tensors.iter().map(|t| t.bytes.len()).sum();
        let mut out = Vec::with_capacity(
            FIXED_HEADER + metadata.len() + table.len() + data_len + CHECKSUM + SIGNATURE_BLOCK,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(if key.is_some() { FLAG_SIGNED } else { 0 }).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(&(table.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data_len as u64).to_le_bytes());
        out.extend_from_slice(&metadata);
        out.extend_from_slice(&table);
        for t in &self.tensors {
            out.extend_from_slice(&t.bytes);
        }
        let checksum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&checksum);
        if let Some(key) = key {
            out.extend_from_slice(key.verifying_key().as_bytes());
            out.extend_from_slice(&key.sign(&signed_message(&checksum)).to_bytes());
        }
        out
    }

    /// Parses and checks a patch: layout, sizes, checksum, and the signature when there is one
    /// (whether its key is trusted is [`PatchFile::require_signer`]'s question).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PatchFileError> {
        let actual = bytes.len() as u64;
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(PatchFileError::Magic);
        }
        if bytes.len() < FIXED_HEADER {
            return Err(PatchFileError::Size { declared: FIXED_HEADER as u64, actual });
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let version = u16_at(8);
        if version != VERSION {
            return Err(PatchFileError::Version(version));
        }
        let flags = u16_at(10);
        if flags & !FLAG_SIGNED != 0 {
            return Err(PatchFileError::Header(format!("unknown flags {flags:#06x}")));
        }
        let metadata_len = u32_at(12) as u64;
        let table_len = u32_at(16) as u64;
        let count = u32_at(20) as usize;
        let data_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap_or_default());
        let trailer = CHECKSUM as u64 + if flags & FLAG_SIGNED != 0 { SIGNATURE_BLOCK as u64 } else { 0 };
        let declared = (FIXED_HEADER as u64)
            .checked_add(metadata_len)
            .and_then(|n| n.checked_add(table_len))
            .and_then(|n| n.checked_add(data_len))
            .and_then(|n| n.checked_add(trailer))
            .unwrap_or(u64::MAX);
        if declared != actual {
            return Err(PatchFileError::Size { declared, actual });
        }
        let body_end = bytes.len() - trailer as usize;
        let checksum: [u8; 32] = Sha256::digest(&bytes[..body_end]).into();
        if checksum[..] != bytes[body_end..body_end + CHECKSUM] {
            return Err(PatchFileError::Checksum);
        }
        let signer = if flags & FLAG_SIGNED != 0 {
            let block = &bytes[body_end + CHECKSUM..];
            let key: [u8; 32] = block[..32].try_into().unwrap_or_default();
            let signature: [u8; 64] = block[32..].try_into().unwrap_or([0; 64]);
            let verifying = VerifyingKey::from_bytes(&key).map_err(|_| PatchFileError::Signature)?;
            verifying
                .verify(&signed_message(&checksum), &Signature::from_bytes(&signature))
                .map_err(|_| PatchFileError::Signature)?;
            Some(key)
        } else {
            None
        };
        if metadata_len as usize > MAX_METADATA_BYTES {
            return Err(PatchFileError::Header(format!(
                "{metadata_len} bytes of metadata is more than {MAX_METADATA_BYTES}"
            )));
        }
        if count > MAX_TENSORS {
            return Err(PatchFileError::Header(format!("{count} tensors is more than {MAX_TENSORS}")));
        }
        let metadata_end = FIXED_HEADER + metadata_len as usize;
        let table_end = metadata_end + table_len as usize;
        let metadata: serde_json::Value = serde_json::from_slice(&bytes[FIXED_HEADER..metadata_end])
            .map_err(|e| PatchFileError::Header(format!("metadata is not JSON: {e}")))?;
        if !metadata.is_object() {
            return Err(PatchFileError::Header("metadata is not a JSON object".into()));
        }
        let entries = read_table(&bytes[metadata_end..table_end], count)?;
        let mut data = &bytes[table_end..body_end];
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, shape, encoding, len) in entries {
            if len > data.len() as u64 {
                return Err(PatchFileError::Header(format!("tensor '{name}' runs past the data section")));
            }
            let (mine, rest) = data.split_at(len as usize);
            data = rest;
            tensors.push(StoredTensor { name, shape, encoding, bytes: mine.to_vec() });
        }
        if !data.is_empty() {
            return Err(PatchFileError::Header(format!(
                "{} bytes of the data section belong to no tensor",
                data.len()
            )));
        }
        Ok(Self { metadata, tensors, signer })
    }

    /// Refuses a patch that no key in `trusted` signed.
    pub fn require_signer(&self, trusted: &[[u8; 32]]) -> Result<(), PatchFileError> {
        require_signer(self.signer, trusted)
    }
}

/// Refuses a file signed by `signer` (`None`: unsigned) unless that key is in `trusted`.
pub fn require_signer(signer: Option<[u8; 32]>, trusted: &[[u8; 32]]) -> Result<(), PatchFileError> {
    match signer {
        None => Err(PatchFileError::Unsigned),
        Some(key) if trusted.contains(&key) => Ok(()),
        Some(key) => Err(PatchFileError::UntrustedSigner(hex(&key))),
    }
}

fn signed_message(checksum: &[u8; 32]) -> Vec<u8> {
    [SIGNING_CONTEXT, checksum].concat()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lowercase or uppercase hex text; `None` for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The binary tensor table (see `docs/patch-format.md`): names front-coded against the
/// previous name, integers as LEB128 varints.
fn tensor_table(tensors: &[StoredTensor]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut previous: &str = "";
    for t in tensors {
        let shared = common_prefix(previous, &t.name);
        varint(&mut out, shared as u64);
        varint(&mut out, (t.name.len() - shared) as u64);
        out.extend_from_slice(&t.name.as_bytes()[shared..]);
        out.push(t.encoding.code());
        out.push(t.shape.len() as u8);
        for &d in &t.shape {
            varint(&mut out, d as u64);
        }
        varint(&mut out, t.bytes.len() as u64);
        if let Encoding::Ternary { scale, init, nonzeros, rice_bits } = t.encoding {
            out.extend_from_slice(&scale.to_le_bytes());
            out.extend_from_slice(&init.to_le_bytes());
            varint(&mut out, nonzeros);
            out.push(rice_bits);
        }
        previous = &t.name;
    }
    out
}

/// Bytes of `a` and `b` in common at the start, on a character boundary of `b`.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !b.is_char_boundary(n) {
        n -= 1;
    }
    n
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

type Entry = (String, Vec<usize>, Encoding, u64);

/// Reads `count` entries of the tensor table, which must fill `table` exactly.
fn read_table(table: &[u8], count: usize) -> Result<Vec<Entry>, PatchFileError> {
    let mut reader = Reader { bytes: table, at: 0 };
    // Each entry takes at least 6 bytes, so `count` is bounded by the table's real size.
    let mut entries: Vec<Entry> = Vec::with_capacity(count.min(table.len() / 6));
    let mut previous = String::new();
    let mut total_elements = 0u64;
    for index in 0..count {
        let shared = reader.varint()? as usize;
        let suffix_len = reader.varint()? as usize;
        if shared > previous.len() || !previous.is_char_boundary(shared) {
            return Err(PatchFileError::Header(format!(
                "tensor #{index}: its name shares {shared} bytes with a name of {} bytes",
                previous.len()
            )));
        }
        let suffix = core::str::from_utf8(reader.take(suffix_len)?)
            .map_err(|_| PatchFileError::Header(format!("tensor #{index}: name is not UTF-8")))?;
        let name = [&previous[..shared], suffix].concat();
        let bad = |message: String| PatchFileError::Tensor { name: name.clone(), message };
        if entries.iter().any(|e| e.0 == name) {
            return Err(bad("appears twice".into()));
        }
        let code = reader.byte()?;
        let ndim = reader.byte()? as usize;
        if !(1..=MAX_DIMS).contains(&ndim) {
            return Err(bad(format!("{ndim} dimensions (1 to {MAX_DIMS} allowed)")));
        }
        let mut shape = Vec::with_capacity(ndim);
        // Checked at every step: a product that overflows is refused even when a later
        // dimension is 0 (`[2^40, 2^40, 0]` would otherwise pass as 0 values).
        let mut elements = Some(1u64);
        for _ in 0..ndim {
            let d = reader.varint()?;
            elements = elements.and_then(|e| e.checked_mul(d)).filter(|_| d <= MAX_ELEMENTS);
            shape.push(d as usize);
        }
        let elements =
            elements.ok_or_else(|| bad(format!("shape {shape:?} holds more than {MAX_ELEMENTS} values")))?;
        total_elements = total_elements.saturating_add(elements);
        if total_elements > MAX_ELEMENTS {
            return Err(bad(format!("the patch's tensors would hold more than {MAX_ELEMENTS} values")));
        }
        let len = reader.varint()?;
        let encoding = match code {
            0 => Encoding::F32,
            1 => Encoding::F16,
            2 => {
                let scale = f32::from_le_bytes(reader.array()?);
                let init = f32::from_le_bytes(reader.array()?);
                let nonzeros = reader.varint()?;
                let rice_bits = reader.byte()?;
                if !scale.is_finite() || !init.is_finite() {
                    return Err(bad(format!("ternary scale {scale} or initial value {init} is not finite")));
                }
                if nonzeros > elements || rice_bits > 32 {
                    return Err(bad(format!(
                        "{nonzeros} nonzeros in {elements} values, Rice parameter {rice_bits}"
                    )));
                }
                Encoding::Ternary { scale, init, nonzeros, rice_bits }
            }
            other => return Err(bad(format!("unknown encoding {other}"))),
        };
        let dense_size = match encoding {
            Encoding::F32 => Some(4),
            Encoding::F16 => Some(2),
            Encoding::Ternary { .. } => None,
        };
        if let Some(size) = dense_size {
            if elements.checked_mul(size) != Some(len) {
                return Err(bad(format!("{len} bytes for {elements} {} values", encoding.name())));
            }
        }
        entries.push((name.clone(), shape, encoding, len));
        previous = name;
    }
    if reader.at != table.len() {
        return Err(PatchFileError::Header(format!(
            "the tensor table has {} bytes after its {count} entries",
            table.len() - reader.at
        )));
    }
    Ok(entries)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PatchFileError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| {
            PatchFileError::Header("the tensor table ends in the middle of an entry".to_owned())
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, PatchFileError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PatchFileError> {
        Ok(self.take(N)?.try_into().unwrap_or([0; N]))
    }

    fn varint(&mut self) -> Result<u64, PatchFileError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(PatchFileError::Header("a varint in the tensor table overflows 64 bits".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> PatchFile {
        PatchFile {
            metadata: serde_json::json!({"method": "lora", "config": {"r": 2}}),
            tensors: vec![
                StoredTensor {
                    name: "layers.0.q.lora_A.weight".into(),
                    shape: vec![2, 3],
                    encoding: Encoding::F32,
                    bytes: (0..24).collect(),
                },
                StoredTensor {
                    name: "layers.0.q.lora_B.weight".into(),
                    shape: vec![3, 2],
                    encoding: Encoding::F16,
                    bytes: (0..12).collect(),
                },
                StoredTensor {
                    name: "layers.1.v.lora_B.weight".into(),
                    shape: vec![1000, 2],
                    encoding: Encoding::Ternary { scale: 0.5, init: 0.0, nonzeros: 7, rice_bits: 5 },
                    bytes: vec![0xAB; 9],
                },
            ],
            signer: None,
        }
    }

    /// Writes the fuzz seeds (see `fuzz/README.md`): unsigned and signed, with a valid
    /// ComPEFT stream.
    #[cfg(feature = "std")]
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = crate::format::fuzz_seed_dir("patch_reader");
        let mut patch = sample();
        let ternary = crate::patch::codec::Ternary {
            len: 2000,
            positions: vec![3, 70, 1999],
            negative: vec![false, true, true],
        };
        let (bytes, rice_bits) = crate::patch::codec::encode(&ternary);
        patch.tensors[2].encoding = Encoding::Ternary { scale: 0.5, init: 0.0, nonzeros: 3, rice_bits };
        patch.tensors[2].bytes = bytes;
        std::fs::write(dir.join("unsigned"), patch.to_bytes(None)).unwrap();
        std::fs::write(dir.join("signed"), patch.to_bytes(Some(&SigningKey::from_bytes(&[1; 32])))).unwrap();
    }

    #[test]
    fn round_trips_signed_and_unsigned() {
        let patch = sample();
        assert_eq!(PatchFile::from_bytes(&patch.to_bytes(None)).unwrap(), patch);
        let key = SigningKey::from_bytes(&[7; 32]);
        let signed = PatchFile::from_bytes(&patch.to_bytes(Some(&key))).unwrap();
        assert_eq!(signed.signer, Some(key.verifying_key().to_bytes()));
        assert_eq!(signed.tensors, patch.tensors);
        signed.require_signer(&[key.verifying_key().to_bytes()]).unwrap();
        assert_eq!(
            signed.require_signer(&[[1; 32]]),
            Err(PatchFileError::UntrustedSigner(hex(key.verifying_key().as_bytes())))
        );
        assert_eq!(patch.require_signer(&[[1; 32]]), Err(PatchFileError::Unsigned));
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        for bytes in [sample().to_bytes(None), sample().to_bytes(Some(&key))] {
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(PatchFile::from_bytes(&flipped).is_err(), "flip of bit {bit} accepted");
            }
            for len in 0..bytes.len() {
                assert!(PatchFile::from_bytes(&bytes[..len]).is_err(), "truncation to {len} accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(PatchFile::from_bytes(&longer), Err(PatchFileError::Size { .. })));
        }
    }

    #[test]
    fn a_stripped_or_forged_signature_is_refused() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let signed = sample().to_bytes(Some(&key));
        // Someone else's signature over the same checksum.
        let mut forged = signed.clone();
        let other = SigningKey::from_bytes(&[4; 32]);
        let at = forged.len() - SIGNATURE_BLOCK;
        forged[at..at + 32].copy_from_slice(other.verifying_key().as_bytes());
        assert_eq!(PatchFile::from_bytes(&forged), Err(PatchFileError::Signature));
        // Dropping the signature block without recomputing the checksum over the flags.
        let stripped = &signed[..signed.len() - SIGNATURE_BLOCK];
        assert!(PatchFile::from_bytes(stripped).is_err());
    }

    // The shapes are 64-bit sizes.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_shape_whose_product_overflows_is_refused_even_with_a_zero_dimension() {
        for shape in [vec![1 << 40, 1 << 40, 0], vec![0, 1 << 62], vec![1 << 29]] {
            let patch = PatchFile {
                metadata: serde_json::json!({}),
                tensors: vec![StoredTensor {
                    name: "t".into(),
                    shape: shape.clone(),
                    encoding: Encoding::F32,
                    bytes: Vec::new(),
                }],
                signer: None,
            };
            let err = PatchFile::from_bytes(&patch.to_bytes(None)).unwrap_err();
            assert!(
                matches!(&err, PatchFileError::Tensor { message, .. } if message.contains("more than")),
                "{shape:?}: {err}"
            );
        }
    }

    #[test]
    fn declared_sizes_are_checked_before_use() {
        let mut bytes = sample().to_bytes(None);
        bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(PatchFile::from_bytes(&bytes), Err(PatchFileError::Size { .. })));
        let mut bytes = sample().to_bytes(None);
        bytes[8] = 2;
        assert_eq!(PatchFile::from_bytes(&bytes), Err(PatchFileError::Version(2)));
        assert_eq!(PatchFile::from_bytes(b"GGUF\x03\0\0\0"), Err(PatchFileError::Magic));
    }
}
