//! Ed25519 key files for signing patches: one line each, `adaptkit-ed25519-secret:<64 hex>` or
//! `adaptkit-ed25519-public:<64 hex>`, so a key is never mistaken for the other kind.

pub use ed25519_dalek::SigningKey;

use crate::format::patch_file::hex;

const SECRET: &str = "adaptkit-ed25519-secret:";
const PUBLIC: &str = "adaptkit-ed25519-public:";

/// A new signing key from 32 random bytes the caller draws from the OS.
pub fn signing_key(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&seed)
}

pub fn secret_key_text(key: &SigningKey) -> String {
    format!("{SECRET}{}\n", hex(&key.to_bytes()))
}

pub fn public_key_text(key: &[u8; 32]) -> String {
    format!("{PUBLIC}{}\n", hex(key))
}

pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    Ok(SigningKey::from_bytes(&parse(text, SECRET, "a secret")?))
}

/// A public key file's key; it must be a valid Ed25519 point.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    valid_point(parse(text, PUBLIC, "a public")?)
}

/// A public key as bare hex (how the sync server names its key).
pub fn parse_public_hex(text: &str) -> Result<[u8; 32], String> {
    valid_point(parse(text, "", "a public")?)
}

fn valid_point(key: [u8; 32]) -> Result<[u8; 32], String> {
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "not a valid Ed25519 public key".to_string())?;
    Ok(key)
}

fn parse(text: &str, prefix: &str, kind: &str) -> Result<[u8; 32], String> {
    let digits = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| format!("not {kind} key file (it must start with '{prefix}')"))?;
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{kind} key must be 64 hex digits after '{prefix}'"));
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_are_not_interchangeable() {
        let key = signing_key([5; 32]);
        assert_eq!(parse_secret_key(&secret_key_text(&key)).unwrap().to_bytes(), key.to_bytes());
        let public = key.verifying_key().to_bytes();
        assert_eq!(parse_public_key(&public_key_text(&public)).unwrap(), public);
        assert!(parse_public_key(&secret_key_text(&key)).is_err());
        assert!(parse_secret_key(&public_key_text(&public)).is_err());
        assert!(parse_secret_key("adaptkit-ed25519-secret:abc").is_err());
    }
}
