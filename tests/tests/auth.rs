//! Authentication and scopes at the gateway (issue: security), over a real
//! mesh with real API keys and real signed tokens: 401 without or with a bad
//! credential, 403 without the route's scope, the call itself with it; a key
//! revoked from the file stops working within the reload interval; admin
//! actions are audited without the credential.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use mesh_auth::keys::hash_hex;
use mesh_tests::{Mesh, MeshOptions, WAIT, args, eventually};
use serde_json::{Value, json};

const RSA: &[u8] = include_bytes!("../fixtures/jwt/rsa-test-only.pem");
const EC: &[u8] = include_bytes!("../fixtures/jwt/ec-test-only.pem");
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "mesh-gateway";

const ADMIN_SECRET: &str = "mesh_test-admin-secret";
const READER_SECRET: &str = "mesh_test-reader-secret";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(scope: &str) -> Value {
    json!({"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "scope": scope})
}

fn sign(key: &EncodingKey, alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, key).unwrap()
}

struct Fixture {
    mesh: Mesh,
    rsa: EncodingKey,
    ec: EncodingKey,
    keys_file: std::path::PathBuf,
    // Removed with the fixture, also when a test fails.
    _dir: tempfile::TempDir,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("api-keys");
    std::fs::write(
        &keys_file,
        format!(
            "admin {} read,write,admin\nreader {} read\n",
            hash_hex(ADMIN_SECRET),
            hash_hex(READER_SECRET)
        ),
    )
    .unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA).unwrap();
    let ec = EncodingKey::from_ec_pem(EC).unwrap();
    let jwk = |key: &EncodingKey, alg, kid: &str| {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk
    };
    let jwks = json!({"keys": [jwk(&rsa, Algorithm::RS256, "rsa-1"), jwk(&ec, Algorithm::ES256, "ec-1")]});
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).unwrap();
    let mesh = Mesh::start_with(MeshOptions {
        gateway_args: args(&[
            "--auth",
            "keys,jwt",
            "--api-keys",
            keys_file.to_str().unwrap(),
            "--jwks",
            jwks_file.to_str().unwrap(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-leeway-secs",
            "5",
            "--auth-reload-ms",
            "100",
        ]),
        ..MeshOptions::default()
    })
    .await;
    Fixture {
        mesh,
        rsa,
        ec,
        keys_file,
        _dir: dir,
    }
}

/// Status, `WWW-Authenticate`, and the body's error code and message.
async fn call(
    mesh: &Mesh,
    method: reqwest::Method,
    path: &str,
    header: Option<(&str, String)>,
) -> (u16, String, String, String) {
    let mut request = mesh.http.request(method, mesh.at(path));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default().to_string();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
    (status, challenge, code, message)
}

/// Writes `text` beside `path`, then renames it over `path`: a reader sees
/// the old file or the new one, never half of either.
fn replace(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn bearer(token: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {token}")))
}

#[tokio::test]
async fn keys_and_scopes_decide_who_may_call_what() {
    let f = start().await;
    let m = &f.mesh;
    use reqwest::Method as M;

    // Anonymous routes stay open.
    assert_eq!(call(m, M::GET, "/test", None).await.0, 200);
    assert_eq!(call(m, M::GET, "/healthz", None).await.0, 200);
    assert_eq!(call(m, M::GET, "/openapi.json", None).await.0, 200);

    // No credential: 401 with the challenge.
    let (status, challenge, code, message) = call(m, M::GET, "/counters/c1", None).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
    assert_eq!(challenge, "Bearer realm=\"mesh\"");
    assert!(message.contains("needs a credential"), "{message}");

    // A wrong key: 401 invalid_token; the body does not repeat it.
    let wrong = "mesh_not-a-key-of-this-gateway";
    let (status, challenge, _, message) = call(m, M::GET, "/counters/c1", bearer(wrong)).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(message.contains("not known") && !message.contains(wrong), "{message}");
    let (status, _, _, _) = call(
        m,
        M::GET,
        "/counters/c1",
        Some(("authorization", format!("Basic {wrong}"))),
    )
    .await;
    assert_eq!(status, 401);

    // A read key reads, and is refused writes and admin routes with 403.
    let reader = Some(("x-api-key", READER_SECRET.to_string()));
    assert_eq!(call(m, M::GET, "/counters/c1", reader.clone()).await.0, 200);
    let (status, challenge, code, message) = call(m, M::POST, "/counters/c1/increment", reader.clone()).await;
    assert_eq!((status, code.as_str()), (403, "PERMISSION_DENIED"));
    assert!(
        challenge.contains("insufficient_scope") && challenge.contains("scope=\"write\""),
        "{challenge}"
    );
    assert!(
        message.contains("needs the write scope; key:reader has read"),
        "{message}"
    );
    let (status, _, _, message) = call(m, M::POST, "/counters/c1/reset", reader.clone()).await;
    assert_eq!(status, 403);
    assert!(message.contains("admin scope"), "{message}");
    assert_eq!(call(m, M::DELETE, "/items/1", bearer(READER_SECRET)).await.0, 403);

    // HEAD runs the GET handler, so it needs what GET needs: a read key
    // cannot increment or start tasks through HEAD.
    for path in ["/increment", "/start-task"] {
        assert_eq!(call(m, M::HEAD, path, reader.clone()).await.0, 403, "HEAD {path}");
    }
    assert_eq!(call(m, M::HEAD, "/counters/c1", reader.clone()).await.0, 200);

    // The admin key does all of it.
    let admin = bearer(ADMIN_SECRET);
    assert_eq!(call(m, M::POST, "/counters/c1/increment", admin.clone()).await.0, 200);
    assert_eq!(call(m, M::POST, "/counters/c1/reset", admin.clone()).await.0, 200);
    assert_eq!(
        call(m, M::DELETE, "/items/999999", admin.clone()).await.0,
        404,
        "allowed, and no such item"
    );

    // Admin actions are audited once each, with the principal and never the secret.
    let logs = eventually("the audit lines", WAIT, async || {
        let logs = m.gateway.logs();
        (logs.matches("admin action").count() >= 4).then_some(logs)
    })
    .await;
    let audit: Vec<&str> = logs.lines().filter(|l| l.contains("admin action")).collect();
    assert_eq!(audit.len(), 4, "{audit:#?}");
    assert!(
        audit.iter().any(|l| l.contains("principal=\"key:admin\"")
            && l.contains("route=\"/counters/{name}/reset\"")
            && l.contains("status=200")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("principal=\"key:reader\"") && l.contains("status=403")),
        "{audit:#?}"
    );
    assert!(!logs.contains(ADMIN_SECRET) && !logs.contains(READER_SECRET));
}

#[tokio::test]
async fn tokens_are_checked_for_signature_time_audience_and_algorithm() {
    let f = start().await;
    let m = &f.mesh;
    use reqwest::Method as M;
    let reset = "/counters/jwt1/reset";

    // Valid tokens, RS256 and ES256: scope decides.
    let writer = sign(&f.rsa, Algorithm::RS256, "rsa-1", &claims("read write"));
    let (status, _, _, message) = call(m, M::POST, reset, bearer(&writer)).await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("jwt:carol has read, write"), "{message}");
    let admin = sign(&f.ec, Algorithm::ES256, "ec-1", &claims("admin"));
    assert_eq!(call(m, M::POST, reset, bearer(&admin)).await.0, 200);

    // Refused: a bad signature, expired, another audience, alg none, and an
    // HMAC token made with the RSA key's public half as its secret.
    // One character of the signature changed (not the last, whose low bits
    // base64 may not use).
    let mut bad_sig = writer.clone().into_bytes();
    let at = bad_sig.len() - 10;
    bad_sig[at] = if bad_sig[at] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).unwrap();
    let mut expired = claims("admin");
    expired["exp"] = json!(now() - 120);
    let mut other_aud = claims("admin");
    other_aud["aud"] = json!("someone-else");
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "rsa-1"})),
        b64(&claims("admin"))
    );
    let public_n = serde_json::to_value(Jwk::from_encoding_key(&f.rsa, Algorithm::RS256).unwrap()).unwrap()["n"]
        .as_str()
        .unwrap()
        .to_string();
    let confused = sign(
        &EncodingKey::from_secret(public_n.as_bytes()).unwrap(),
        Algorithm::HS256,
        "rsa-1",
        &claims("admin"),
    );
    for (what, token, reason) in [
        ("bad signature", bad_sig, "signature"),
        ("expired", sign(&f.rsa, Algorithm::RS256, "rsa-1", &expired), "expired"),
        (
            "wrong audience",
            sign(&f.rsa, Algorithm::RS256, "rsa-1", &other_aud),
            "audience",
        ),
        ("alg none", none, "header"),
        ("alg confusion", confused, "algorithm"),
    ] {
        let (status, challenge, code, message) = call(m, M::POST, reset, bearer(&token)).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"), "{what}: {message}");
        assert!(message.contains(reason), "{what}: {message}");
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        assert!(!message.contains(&token), "{what}: the token is echoed");
    }
}

#[tokio::test]
async fn a_key_revoked_from_the_file_stops_working_within_the_reload_interval() {
    let f = start().await;
    let m = &f.mesh;
    let reader = || Some(("x-api-key", READER_SECRET.to_string()));
    assert_eq!(call(m, reqwest::Method::GET, "/counters/r1", reader()).await.0, 200);
    // Rewritten in place, without the reader's line.
    std::fs::write(
        &f.keys_file,
        format!("admin {} read,write,admin\n", hash_hex(ADMIN_SECRET)),
    )
    .unwrap();
    eventually("the revoked key is refused", WAIT, async || {
        call(m, reqwest::Method::GET, "/counters/r1", reader()).await.0 == 401
    })
    .await;
    assert_eq!(
        call(m, reqwest::Method::GET, "/counters/r1", bearer(ADMIN_SECRET))
            .await
            .0,
        200
    );
    // A broken file keeps the last good keys.
    replace(&f.keys_file, "this is not a key file\n");
    eventually("the failed reload is logged", WAIT, async || {
        m.gateway.logs().contains("reload failed")
    })
    .await;
    assert_eq!(
        call(m, reqwest::Method::GET, "/counters/r1", bearer(ADMIN_SECRET))
            .await
            .0,
        200
    );
}
