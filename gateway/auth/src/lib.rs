//! Who is calling, and what they may do: the gateway's credentials, apart
//! from HTTP.
//!
//! - [`keys`]: API keys. A file lists each key's id, the SHA-256 of its
//!   secret and its scopes; secrets are never stored in clear, and a
//!   presented secret is compared with every entry in constant time.
//! - [`jwt`]: JWT bearer tokens signed RS256, ES256 or HS256 by a key of a
//!   JWKS file, looked up by `kid`; `exp`, `nbf`, `iss` and `aud` checked with
//!   a small leeway; `alg: none` and an `alg` that is not the key's refused;
//!   scopes from the `scope` (space-separated) or `scp` claim.
//! - [`reload`]: both files are re-read when they change (and on SIGHUP),
//!   swapped in whole; a file that fails to parse keeps the last good one.
//!
//! [`Verifier`] puts them together: a [`Credential`] in, a [`Principal`] or
//! an [`AuthError`] out. The error's `Display` never contains the credential.

pub mod jwt;
pub mod keys;
pub mod reload;

use std::fmt;
use std::sync::Arc;

/// What a credential allows. Each scope is its own grant: `admin` does not
/// imply `read` unless the credential lists both (as `mesh api-key` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?}; the scopes are read, write and admin")),
        }
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    /// Scopes from words, ignoring words that are not scopes (a token may
    /// carry other systems' scopes too).
    pub fn from_words<'a>(words: impl IntoIterator<Item = &'a str>) -> Scopes {
        let mut scopes = Scopes::default();
        for word in words {
            if let Ok(scope) = word.parse() {
                scopes.insert(scope);
            }
        }
        scopes
    }

    /// Scopes from a comma-separated list, where every word must be a scope.
    pub fn parse_list(list: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            scopes.insert(word.parse()?);
        }
        Ok(scopes)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        let mut scopes = Scopes::default();
        for scope in iter {
            scopes.insert(scope);
        }
        scopes
    }
}

impl fmt::Display for Scopes {
    /// `read, write` (or `none`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for scope in Scope::ALL.into_iter().filter(|s| self.contains(*s)) {
            if !first {
                f.write_str(", ")?;
            }
            f.write_str(scope.as_str())?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// How a principal proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    Jwt,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `key:<id>` for an API key, `jwt:<sub>` for a token: what logs and
    /// services see (`x-mesh-principal`).
    pub name: Arc<str>,
    pub scopes: Scopes,
    pub via: Via,
}

/// A credential as presented.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// `Authorization: Bearer <token>`: a JWT (three dot-separated parts) or
    /// an API key's secret.
    Bearer(&'a str),
    /// `x-api-key: <secret>`.
    ApiKey(&'a str),
}

/// Why a credential was refused. The message names the problem, never the
/// credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this API key is not known (or was revoked)")]
    UnknownKey,
    #[error("API keys are not accepted by this gateway")]
    KeysDisabled,
    #[error("bearer tokens (JWT) are not accepted by this gateway")]
    JwtDisabled,
    #[error("the token is invalid: {0}")]
    InvalidToken(String),
}

/// Which credentials the gateway accepts, each from its (reloaded) file.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    pub keys: Option<Arc<reload::Reloading<keys::KeyTable>>>,
    pub jwt: Option<Arc<jwt::JwtVerifier>>,
}

impl Verifier {
    /// The principal a credential proves, or why it proves none.
    pub fn verify(&self, credential: Credential<'_>) -> Result<Principal, AuthError> {
        match credential {
            Credential::ApiKey(secret) => self.verify_key(secret),
            Credential::Bearer(token) if jwt::looks_like_jwt(token) => match &self.jwt {
                Some(jwt) => jwt.verify(token),
                // A key that happens to have two dots: try it as a key.
                None if self.keys.is_some() => self.verify_key(token),
                None => Err(AuthError::JwtDisabled),
            },
            Credential::Bearer(secret) => self.verify_key(secret),
        }
    }

    fn verify_key(&self, secret: &str) -> Result<Principal, AuthError> {
        match &self.keys {
            Some(keys) => keys.current().verify(secret),
            None => Err(AuthError::KeysDisabled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_print_and_ignore_foreign_words() {
        let scopes = Scopes::from_words("openid read profile admin".split(' '));
        assert!(scopes.contains(Scope::Read) && scopes.contains(Scope::Admin));
        assert!(!scopes.contains(Scope::Write));
        assert_eq!(scopes.to_string(), "read, admin");
        assert_eq!(Scopes::default().to_string(), "none");
        assert_eq!(Scopes::parse_list("read, write").unwrap().to_string(), "read, write");
        assert!(Scopes::parse_list("read,root").unwrap_err().contains("\"root\""));
    }
}
