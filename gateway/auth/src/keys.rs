//! API keys: a file of `ID SHA256_HEX SCOPES` lines.
//!
//! ```text
//! # id        sha256 of the secret (hex)                                      scopes
//! ci-admin    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 read,write,admin
//! dashboard   60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752 read
//! ```
//!
//! The secret itself is never stored: a presented secret is hashed and the
//! hash compared with every entry's in constant time (no early exit, so the
//! time taken says nothing about which entry matched or how closely).
//! `mesh api-key ID SCOPES` makes a secret and prints the line to add.

use std::collections::HashSet;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{AuthError, Principal, Scopes, Via};

#[derive(Debug)]
struct Entry {
    hash: [u8; 32],
    principal: Principal,
}

/// The parsed key file.
#[derive(Debug, Default)]
pub struct KeyTable {
    entries: Vec<Entry>,
}

impl KeyTable {
    /// Parses the file's text; errors name the line.
    pub fn parse(text: &str) -> anyhow::Result<KeyTable> {
        let mut entries = Vec::new();
        let mut ids = HashSet::new();
        let mut hashes = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |message: String| anyhow::anyhow!("line {}: {message}", n + 1);
            let mut words = line.split_whitespace();
            let (Some(id), Some(hash), scopes, None) = (words.next(), words.next(), words.next(), words.next()) else {
                return Err(at("expected `ID SHA256_HEX [SCOPES]`".into()));
            };
            if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)) || id.len() > 64 {
                return Err(at(format!(
                    "key id {id:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
                )));
            }
            let hash = parse_hash(hash).ok_or_else(|| at("the hash must be 64 hex digits (SHA-256)".into()))?;
            let scopes = Scopes::parse_list(scopes.unwrap_or("")).map_err(at)?;
            if !ids.insert(id.to_owned()) {
                return Err(at(format!("key id {id:?} is listed twice")));
            }
            if !hashes.insert(hash) {
                return Err(at(format!("key {id:?} has the same secret as an earlier key")));
            }
            entries.push(Entry {
                hash,
                principal: Principal {
                    name: Arc::from(format!("key:{id}")),
                    scopes,
                    via: Via::ApiKey,
                },
            });
        }
        Ok(KeyTable { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key whose secret this is.
    pub fn verify(&self, secret: &str) -> Result<Principal, AuthError> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            // Every entry is compared, match or not.
            if bool::from(entry.hash.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found.map(|e| e.principal.clone()).ok_or(AuthError::UnknownKey)
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a secret, as the key file holds it.
pub fn hash_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new secret: `mesh_` and 32 random bytes (from the OS) in base64url.
pub fn new_secret() -> std::io::Result<String> {
    use base64::Engine;
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "mesh_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;

    #[test]
    fn a_known_secret_is_its_key_and_anything_else_is_unknown() {
        let text = format!(
            "# comment\n\nadmin {} read,write,admin\nreader {}   read\n",
            hash_hex("s3cret"),
            hash_hex("other")
        );
        let table = KeyTable::parse(&text).unwrap();
        assert_eq!(table.len(), 2);
        let admin = table.verify("s3cret").unwrap();
        assert_eq!(&*admin.name, "key:admin");
        assert!(admin.scopes.contains(Scope::Admin));
        let reader = table.verify("other").unwrap();
        assert_eq!(reader.scopes.to_string(), "read");
        assert_eq!(table.verify("s3cret ").unwrap_err(), AuthError::UnknownKey);
        assert_eq!(table.verify("").unwrap_err(), AuthError::UnknownKey);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let h = hash_hex("x");
        for (text, expect) in [
            ("onlyid".to_string(), "line 1: expected"),
            ("a abc read".to_string(), "line 1: the hash"),
            (format!("a {h} read,root"), "line 1: unknown scope \"root\""),
            (format!("a {h}\nb {h}"), "line 2: key \"b\" has the same secret"),
            (
                format!("a {h}\na {}", hash_hex("y")),
                "line 2: key id \"a\" is listed twice",
            ),
            (format!("a/b {h}"), "line 1: key id \"a/b\""),
            (format!("a {h} read extra"), "line 1: expected"),
        ] {
            let err = KeyTable::parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn new_secrets_differ_and_hash_to_64_hex_digits() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("mesh_") && a.len() == 5 + 43, "{a}");
        assert_eq!(hash_hex(&a).len(), 64);
        assert_eq!(
            hash_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
