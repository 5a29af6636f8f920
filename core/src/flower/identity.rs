//! The node's identity on a SuperLink: an ECDSA P-384 key pair, as Flower's own SuperNode has.
//! Every Fleet request carries the public key (PEM, base64), the current time (ISO 8601, UTC)
//! and a signature of that time (DER ECDSA with SHA-256 — not P-384's usual SHA-384: Flower signs
//! with SHA-256 whatever the curve, and refuses anything else), base64; the SuperLink checks the signature,
//! that the time is recent, and that the key belongs to the node the request names.
//!
//! The key is kept as PKCS#8 PEM, the form `flower-supernode --auth-supernode-private-key`
//! reads, so one identity can move between adaptkit and Flower's node.

use std::path::Path;

use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::ecdsa::{Signature, SigningKey};
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::format::write_private;

pub struct NodeKey {
    signing: SigningKey,
    /// The public key as Flower sends it: SubjectPublicKeyInfo PEM.
    public_pem: Vec<u8>,
}

/// The three authentication headers of one request.
pub struct SignedHeaders {
    pub public_key: String,
    pub timestamp: String,
    pub signature: String,
}

impl NodeKey {
    /// A new random key.
    pub fn generate() -> Result<Self, Error> {
        let mut seed = [0u8; 48];
        loop {
            getrandom::fill(&mut seed).map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
            // A scalar of zero or one at least the group order is refused; draw again.
            if let Ok(signing) = SigningKey::from_slice(&seed) {
                return Self::from_signing(signing);
            }
        }
    }

    /// The key in `path` (PKCS#8 PEM), created there (readable by its owner only) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "{}: not a P-384 private key in PKCS#8 PEM ({e})",
                        path.display()
                    ))
                })?;
                Self::from_signing(signing)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
                }
                let pem = key
                    .signing
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| Error::InvalidArgument(format!("encoding the node key: {e}")))?;
                write_private(path, pem.as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(Error::Io { path: path.to_path_buf(), source: e }),
        }
    }

    fn from_signing(signing: SigningKey) -> Result<Self, Error> {
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::InvalidArgument(format!("encoding the node's public key: {e}")))?
            .into_bytes();
        Ok(Self { signing, public_pem })
    }

    /// The public key as the SuperLink stores it (SubjectPublicKeyInfo PEM).
    pub fn public_pem(&self) -> &[u8] {
        &self.public_pem
    }

    /// The headers of a request sent now.
    pub fn sign_now(&self) -> SignedHeaders {
        self.sign_at(std::time::SystemTime::now())
    }

    pub fn sign_at(&self, time: std::time::SystemTime) -> SignedHeaders {
        let timestamp = iso8601_utc(time);
        let digest = Sha256::digest(timestamp.as_bytes());
        // A 32-byte digest is a valid prehash for P-384 (it is at least half the field size).
        let signature: Signature =
            self.signing.sign_prehash(&digest).expect("a SHA-256 prehash is long enough");
        SignedHeaders {
            public_key: base64(&self.public_pem),
            timestamp,
            signature: base64(signature.to_der().as_bytes()),
        }
    }
}

/// `time` as Python's `datetime.isoformat()` writes an aware UTC time with microseconds:
/// `2026-12-04T11:55:00.123456+00:00`.
pub fn iso8601_utc(time: std::time::SystemTime) -> String {
    let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Standard base64 with padding (what Python's `b64encode` writes).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_base64_match_python() {
        let at = |s: u64, micros: u64| {
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(s)
                + std::time::Duration::from_micros(micros)
        };
        // datetime.fromtimestamp(0, timezone.utc).isoformat() and friends (micros written always).
        assert_eq!(iso8601_utc(at(0, 0)), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(iso8601_utc(at(951_782_400, 5)), "2000-02-29T00:00:00.000005+00:00");
        assert_eq!(iso8601_utc(at(1_796_384_099, 999_999)), "2026-12-04T11:34:59.999999+00:00");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn a_key_survives_its_file_and_signs_verifiably() {
        use p384::ecdsa::signature::hazmat::PrehashVerifier;
        let dir = std::env::temp_dir().join(format!("adaptkit-flower-key-{}", std::process::id()));
        let path = dir.join("node.key");
        let key = NodeKey::load_or_create(&path).expect("created");
        let again = NodeKey::load_or_create(&path).expect("read back");
        assert_eq!(key.public_pem(), again.public_pem());
        assert!(String::from_utf8_lossy(key.public_pem()).starts_with("-----BEGIN PUBLIC KEY-----"));
        let headers = again.sign_now();
        let signature = Signature::from_der(&decode64(&headers.signature)).expect("DER");
        let digest = Sha256::digest(headers.timestamp.as_bytes());
        key.signing.verifying_key().verify_prehash(&digest, &signature).expect("verifies with SHA-256");
        std::fs::write(&path, "not a key").expect("overwrite");
        let error = NodeKey::load_or_create(&path).err().expect("refused").to_string();
        assert!(error.contains("node.key") && error.contains("PKCS#8"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn decode64(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
        let mut out = Vec::new();
        for chunk in digits.chunks(4) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
            out.extend(n.to_be_bytes()[1..chunk.len()].iter().copied());
        }
        out
    }
}
