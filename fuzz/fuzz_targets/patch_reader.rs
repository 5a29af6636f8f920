//! Arbitrary bytes into the patch reader, twice: as they are, and with the SHA-256 trailer
//! recomputed over them (otherwise nearly every input stops at the checksum and the header,
//! tensor table and ternary streams behind it would go unexplored). Whatever is accepted must
//! be consistent: dense tensors have the bytes their shape says, every ternary stream decodes to
//! its declared number of positions inside the tensor, and an unsigned file writes back to the
//! same bytes.
#![no_main]

use adaptkit::format::patch_file::{Encoding, PatchFile};
use adaptkit::patch::codec;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn check(bytes: &[u8]) {
    let Ok(file) = PatchFile::from_bytes(bytes) else { return };
    for t in &file.tensors {
        let n = t.elements();
        match t.encoding {
            Encoding::F32 => assert_eq!(t.bytes.len(), 4 * n),
            Encoding::F16 => assert_eq!(t.bytes.len(), 2 * n),
            Encoding::Ternary { nonzeros, rice_bits, .. } => {
                if let Ok(ternary) = codec::decode(&t.bytes, n, nonzeros as usize, rice_bits) {
                    assert_eq!(ternary.positions.len() as u64, nonzeros);
                    assert!(ternary.positions.windows(2).all(|w| w[0] < w[1]));
                    assert!(ternary.positions.iter().all(|&p| (p as usize) < n));
                    assert_eq!(codec::encode(&ternary).0.len() <= t.bytes.len(), true);
                }
            }
        }
    }
    if file.signer.is_none() {
        assert_eq!(PatchFile::from_bytes(&file.to_bytes(None)).as_ref(), Ok(&file));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Unsigned layout: the checksum is the last 32 bytes.
    if data.len() >= 64 {
        let mut repaired = data.to_vec();
        let body = repaired.len() - 32;
        let sum: [u8; 32] = Sha256::digest(&repaired[..body]).into();
        repaired[body..].copy_from_slice(&sum);
        check(&repaired);
    }
});
