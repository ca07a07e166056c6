//! JWT bearer tokens, verified against the keys of a JWKS file.
//!
//! - Algorithms: RS256, ES256 and HS256 (`kty` RSA, EC P-256, oct). A key
//!   states its algorithm (`alg`) or gets the one of its type; a token whose
//!   header names another algorithm than its key's is refused, and so is
//!   `alg: none` (no key has it, and the header does not parse).
//! - The key is the one whose `kid` is the token's; a token without `kid` is
//!   tried against the keys of its algorithm without a `kid`.
//! - Claims: `exp`, `iss` and `aud` are required; `exp` and `nbf` are
//!   checked with [`JwtSettings::leeway_secs`]; `sub` names the principal;
//!   scopes come from `scope` (a space-separated string) or `scp` (a string
//!   or an array).

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::reload::Reloading;
use crate::{AuthError, Principal, Scopes, Via};

/// Whether a bearer token is shaped like a JWS compact token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The one key of a JWKS entry.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The parsed JWKS file.
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        f.debug_struct("KeySet").field("keys", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`); a key of an unsupported
    /// type or algorithm is an error, naming it.
    pub fn parse(text: &str) -> anyhow::Result<KeySet> {
        // An empty file (or `{"keys": []}`) trusts no key: every token is refused.
        if text.trim().is_empty() {
            return Ok(KeySet { keys: Vec::new() });
        }
        let set: JwkSet = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not a JWKS document: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (n, jwk) in set.keys.iter().enumerate() {
            let name = jwk
                .common
                .key_id
                .as_deref()
                .map_or_else(|| format!("key {n}"), |kid| format!("key {kid:?}"));
            let natural = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                AlgorithmParameters::OctetKey(oct) => {
                    use base64::Engine;
                    let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(oct.value.trim_end_matches('='))
                        .map_err(|_| anyhow::anyhow!("{name}: `k` is not base64url"))?
                        .len();
                    // RFC 7518 3.2: an HS256 key must be at least 256 bits.
                    anyhow::ensure!(
                        len >= 32,
                        "{name}: an HS256 key needs at least 32 bytes, this one has {len}"
                    );
                    Algorithm::HS256
                }
                _ => anyhow::bail!("{name}: only RSA, EC P-256 and oct keys are supported"),
            };
            let alg = match jwk.common.key_algorithm {
                None => natural,
                Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                Some(KeyAlgorithm::ES256) => Algorithm::ES256,
                Some(KeyAlgorithm::HS256) => Algorithm::HS256,
                Some(other) => anyhow::bail!("{name}: algorithm {other:?} is not supported (RS256, ES256, HS256)"),
            };
            anyhow::ensure!(
                alg == natural,
                "{name}: its alg {alg:?} does not fit its key type (which signs {natural:?})"
            );
            let key = DecodingKey::from_jwk(jwk).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        Ok(KeySet { keys })
    }
}

/// What a token must say besides its signature.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

/// Verifies tokens against the current key set.
#[derive(Debug)]
pub struct JwtVerifier {
    pub keys: Arc<Reloading<KeySet>>,
    settings: JwtSettings,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    scope: Option<String>,
    scp: Option<StringOrList>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl JwtVerifier {
    pub fn new(keys: Arc<Reloading<KeySet>>, settings: JwtSettings) -> JwtVerifier {
        JwtVerifier { keys, settings }
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) | jsonwebtoken::errors::ErrorKind::Base64(_) => {
                invalid("its header is malformed or names an unsupported algorithm (RS256, ES256, HS256)")
            }
            _ => invalid("its header is malformed"),
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::HS256) {
            return Err(invalid("its algorithm is not one of RS256, ES256, HS256"));
        }
        let set = self.keys.current();
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => set
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                .collect(),
            None => set.keys.iter().filter(|k| k.kid.is_none()).collect(),
        };
        if candidates.is_empty() {
            return Err(invalid("no key of this gateway has its kid"));
        }
        let mut last = invalid("its algorithm is not its key's");
        for key in candidates.into_iter().filter(|k| k.alg == header.alg) {
            let mut validation = Validation::new(key.alg);
            validation.set_issuer(&[&self.settings.issuer]);
            validation.set_audience(&[&self.settings.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.validate_nbf = true;
            validation.leeway = self.settings.leeway_secs;
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return principal(data.claims),
                Err(err) => last = classify(&err),
            }
        }
        Err(last)
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let sub = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::InvalidToken("it has no `sub` claim".into()))?;
    let scope = claims.scope.as_deref().unwrap_or("").split(' ');
    let scp: Vec<&str> = match &claims.scp {
        Some(StringOrList::One(s)) => s.split(' ').collect(),
        Some(StringOrList::Many(list)) => list.iter().map(String::as_str).collect(),
        None => Vec::new(),
    };
    let scopes = Scopes::from_words(scope.chain(scp));
    Ok(Principal {
        name: Arc::from(format!("jwt:{sub}")),
        scopes,
        via: Via::Jwt,
    })
}

/// The reason a token failed, in words that do not repeat the token.
fn classify(err: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    let m = match err.kind() {
        K::InvalidSignature => "its signature does not verify",
        K::ExpiredSignature => "it has expired",
        K::ImmatureSignature => "it is not valid yet (nbf)",
        K::InvalidAudience => "its audience (aud) is not this gateway's",
        K::InvalidIssuer => "its issuer (iss) is not the trusted one",
        K::MissingRequiredClaim(_) => "it lacks a required claim (exp, iss, aud)",
        K::InvalidAlgorithm => "its algorithm is not its key's",
        _ => "it is malformed",
    };
    AuthError::InvalidToken(m.into())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;
    use crate::Scope;

    const RSA: &[u8] = include_bytes!("../../../tests/fixtures/jwt/rsa-test-only.pem");
    const EC: &[u8] = include_bytes!("../../../tests/fixtures/jwt/ec-test-only.pem");
    const HMAC: &[u8] = b"a shared secret of at least thirty-two bytes";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> serde_json::Value {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk
    }

    /// A verifier over a JWKS of one RSA, one EC and one HMAC key, and those keys.
    fn setup() -> (
        JwtVerifier,
        Vec<(EncodingKey, Algorithm, &'static str)>,
        std::path::PathBuf,
    ) {
        let keys = vec![
            (EncodingKey::from_rsa_pem(RSA).unwrap(), Algorithm::RS256, "rsa1"),
            (EncodingKey::from_ec_pem(EC).unwrap(), Algorithm::ES256, "ec1"),
            (EncodingKey::from_secret(HMAC).unwrap(), Algorithm::HS256, "hs1"),
        ];
        let set = json!({"keys": keys.iter().map(|(k, a, kid)| jwk(k, *a, kid)).collect::<Vec<_>>()});
        let path = std::env::temp_dir().join(format!(
            "mesh-auth-jwks-{}-{:?}.json",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, set.to_string()).unwrap();
        let reloading = Reloading::load("JWKS file", &path, KeySet::parse).unwrap();
        let _ = std::fs::remove_file(&path);
        let settings = JwtSettings {
            issuer: "https://issuer.test".into(),
            audience: "mesh".into(),
            leeway_secs: 5,
        };
        (JwtVerifier::new(Arc::new(reloading), settings), keys, path)
    }

    fn claims() -> serde_json::Value {
        json!({"sub": "alice", "iss": "https://issuer.test", "aud": "mesh", "exp": now() + 600, "scope": "read write"})
    }

    fn token(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        encode(&header, claims, key).unwrap()
    }

    fn refusal(verifier: &JwtVerifier, token: &str) -> String {
        match verifier.verify(token) {
            Ok(p) => panic!("accepted as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_algorithm_verifies_with_its_key() {
        let (verifier, keys, _) = setup();
        for (key, alg, kid) in &keys {
            let principal = verifier.verify(&token(key, *alg, kid, &claims())).unwrap();
            assert_eq!(&*principal.name, "jwt:alice");
            assert_eq!(principal.via, Via::Jwt);
            assert_eq!(principal.scopes.to_string(), "read, write", "{alg:?}");
        }
    }

    #[test]
    fn scp_as_a_list_or_a_string_grants_scopes() {
        let (verifier, keys, _) = setup();
        let (key, alg, kid) = &keys[2];
        let mut c = claims();
        c.as_object_mut().unwrap().remove("scope");
        c["scp"] = json!(["admin", "openid"]);
        let p = verifier.verify(&token(key, *alg, kid, &c)).unwrap();
        assert!(p.scopes.contains(Scope::Admin) && !p.scopes.contains(Scope::Read));
        c["scp"] = json!("read admin");
        let p = verifier.verify(&token(key, *alg, kid, &c)).unwrap();
        assert_eq!(p.scopes.to_string(), "read, admin");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let (verifier, keys, _) = setup();
        let (rsa, _, _) = &keys[0];
        let (hmac, _, _) = &keys[2];
        let good = token(rsa, Algorithm::RS256, "rsa1", &claims());

        // A flipped signature byte.
        let mut bad = good.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(refusal(&verifier, &bad).contains("signature does not verify"));

        let mut c = claims();
        c["exp"] = json!(now() - 60);
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "rsa1", &c)).contains("expired"));
        let mut c = claims();
        c["exp"] = json!(now() - 2);
        assert!(
            verifier.verify(&token(rsa, Algorithm::RS256, "rsa1", &c)).is_ok(),
            "within the leeway"
        );
        let mut c = claims();
        c["nbf"] = json!(now() + 600);
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "rsa1", &c)).contains("not valid yet"));
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "rsa1", &c)).contains("audience"));
        let mut c = claims();
        c["iss"] = json!("https://evil.test");
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "rsa1", &c)).contains("issuer"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "rsa1", &c)).contains("required claim"));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "rsa1", &c)).contains("no `sub`"));
        assert!(refusal(&verifier, &token(rsa, Algorithm::RS256, "nope", &claims())).contains("kid"));
        // An HMAC token that names the RSA key's kid: the algorithm is not the key's.
        assert!(refusal(&verifier, &token(hmac, Algorithm::HS256, "rsa1", &claims())).contains("algorithm"));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let (verifier, _, _) = setup();
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        for header in [
            json!({"alg": "none", "kid": "hs1"}),
            json!({"alg": "none"}),
            json!({"alg": "None", "typ": "JWT"}),
        ] {
            let unsigned = format!("{}.{}.", b64(header.clone()), b64(claims()));
            let reason = refusal(&verifier, &unsigned);
            assert!(reason.contains("header"), "{header}: {reason}");
            assert!(!reason.contains(&unsigned));
        }
    }

    #[test]
    fn key_sets_with_unsupported_keys_are_refused() {
        assert!(
            KeySet::parse(r#"{"keys": []}"#).unwrap().keys.is_empty(),
            "an empty set trusts nothing"
        );
        assert!(KeySet::parse("").unwrap().keys.is_empty());
        let err = KeySet::parse(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "short"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 32 bytes"), "{err}");
        let err = KeySet::parse(r#"{"keys": [{"kty": "oct", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "alg": "HS512", "kid": "x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key \"x\"") && err.contains("not supported"), "{err}");
        let err = KeySet::parse(
            r#"{"keys": [{"kty": "oct", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY", "alg": "RS256"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not fit"), "{err}");
        assert!(KeySet::parse("[]").unwrap_err().to_string().contains("not a JWKS"));
    }
}
