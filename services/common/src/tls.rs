//! TLS for the mesh: rustls configurations for servers and clients, a server
//! certificate that can be rotated without a restart, and development
//! certificates.
//!
//! - [`server_config`] builds the [`rustls::ServerConfig`] a service listens with.
//!   With [`TlsFiles::client_ca`] set it is mutual TLS: every client must present
//!   a certificate that chains to that CA, or the handshake fails.
//! - [`ReloadingCert`] is the server's certificate resolver. It keeps the current
//!   certificate and key in an [`ArcSwap`], so [`ReloadingCert::reload`] (and the
//!   task [`ReloadingCert::watch`] starts: a timer plus `SIGHUP`) can swap in a
//!   renewed certificate while connections keep being accepted. Handshakes that
//!   already started keep the certificate they picked; new ones get the new one.
//!   A broken file (half written, key not yet rotated, not PEM) never replaces a
//!   working certificate: the old one stays and the error is reported.
//! - [`client_config`] builds the [`rustls::ClientConfig`] a caller (the gateway,
//!   a service calling another) connects with: trust one CA file, optionally
//!   present a client certificate, and offer ALPN `h2` as gRPC needs.
//! - [`write_dev_certs`], [`new_ca`] and [`issue_leaf`] make a throw-away CA and
//!   certificates for local runs and tests. They are not meant for production.
//!
//! Cryptography is always the *ring* provider, passed explicitly to every
//! builder: nothing here reads or installs rustls' process-wide default
//! provider, so the result does not depend on which other crates enabled which
//! rustls features.

use std::fs::{OpenOptions, Permissions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

/// Where a server's TLS material lives on disk (all PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain: its own certificate first, then any
    /// intermediates.
    pub cert: PathBuf,
    /// The private key of `cert` (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of the CA
    /// certificates in this file (mutual TLS). When `None`, clients are not
    /// asked for a certificate.
    pub client_ca: Option<PathBuf>,
}

/// The crypto provider every config in this module is built with: ring, the
/// one provider in the build. (rustls marks ring's provider deprecated because
/// it has no post-quantum key exchange; aws-lc-rs has one, but two providers
/// in one process make rustls panic, and aws-lc-sys adds minutes to a cold
/// build. X25519 and the NIST curves remain.)
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// The reloading server certificate
// ---------------------------------------------------------------------------

/// A server certificate resolver that can swap in a new certificate and key
/// from the same two files while the server runs.
///
/// Every handshake takes the certificate that is current when it starts
/// ([`ResolvesServerCert::resolve`] is a lock-free [`ArcSwap`] load).
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    /// What handshakes are served with.
    current: ArcSwap<CertifiedKey>,
    /// The file contents `current` was built from: a reload that reads the same
    /// bytes changes nothing. The mutex also keeps two reloads from
    /// interleaving their read, parse and swap.
    loaded: Mutex<FilePair>,
}

/// The raw contents of a certificate file and its key file.
#[derive(PartialEq, Eq)]
struct FilePair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl ReloadingCert {
    /// Reads `cert` (a PEM chain, leaf first) and `key` (its PEM private key).
    ///
    /// Fails, naming the file, when either file is missing, empty or holds no
    /// PEM block of the right kind, when the key type is not supported, or when
    /// the key does not belong to the certificate.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let provider = provider();
        let files = read_pair(cert, key)?;
        let certified = certified_key(&files, cert, key, &provider)?;
        tracing::debug!(
            cert = %cert.display(),
            serial = %serial_of(&certified),
            "loaded TLS certificate"
        );
        Ok(Arc::new(Self {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(certified),
            loaded: Mutex::new(files),
        }))
    }

    /// Re-reads both files and, if their contents changed, swaps in the new
    /// certificate.
    ///
    /// Returns `Ok(true)` after a swap and `Ok(false)` when both files are
    /// byte-for-byte what is already being served. On any error the current
    /// certificate stays in use and the error is returned; the next call tries
    /// again (so a certificate whose key has not been written yet is picked up
    /// once it has).
    pub fn reload(&self) -> anyhow::Result<bool> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let files = read_pair(&self.cert_path, &self.key_path)?;
        if *loaded == files {
            return Ok(false);
        }
        let certified = certified_key(&files, &self.cert_path, &self.key_path, &self.provider)?;
        self.current.store(Arc::new(certified));
        *loaded = files;
        Ok(true)
    }

    /// Spawns a task that calls [`reload`](Self::reload) every `every` and on
    /// every `SIGHUP`, until `stop` resolves.
    ///
    /// A swap is logged at `info` (with the new certificate's serial number), a
    /// failed reload at `warn`: once per distinct error, so a file that stays
    /// broken does not repeat the same warning every tick. `Duration::ZERO`
    /// turns the timer off and leaves only `SIGHUP`.
    ///
    /// The `SIGHUP` handler is installed before this returns, so a `SIGHUP` sent
    /// right after cannot kill the process. Note that tokio never uninstalls it:
    /// after this call, `SIGHUP` no longer terminates the process even once the
    /// task has ended.
    ///
    /// Must be called from within a tokio runtime.
    pub fn watch(self: &Arc<Self>, every: Duration, stop: impl Future + Send + 'static) -> JoinHandle<()> {
        let this = Arc::clone(self);
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP; TLS certificates reload on the timer only");
                None
            }
        };
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut ticker = (!every.is_zero()).then(|| {
                let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker
            });
            let mut last_error: Option<String> = None;
            loop {
                let trigger = tokio::select! {
                    _ = &mut stop => break,
                    () = tick(&mut ticker) => "timer",
                    Some(()) = hangup_received(&mut hangup) => "SIGHUP",
                };
                // File I/O and key parsing: keep them off the async worker threads.
                let reloading = Arc::clone(&this);
                let outcome = tokio::task::spawn_blocking(move || reloading.reload())
                    .await
                    .unwrap_or_else(|join_err| Err(anyhow!("certificate reload task failed: {join_err}")));
                match outcome {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(
                            cert = %this.cert_path.display(),
                            serial = %serial_of(&this.current.load()),
                            trigger,
                            "reloaded TLS certificate"
                        );
                    }
                    Ok(false) => {
                        last_error = None;
                        if trigger == "SIGHUP" {
                            tracing::info!(cert = %this.cert_path.display(), "SIGHUP: TLS certificate unchanged");
                        }
                    }
                    Err(err) => {
                        let text = format!("{err:#}");
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(
                                cert = %this.cert_path.display(),
                                trigger,
                                error = %text,
                                "cannot reload TLS certificate; still serving the previous one"
                            );
                            last_error = Some(text);
                        }
                    }
                }
            }
            tracing::debug!(cert = %this.cert_path.display(), "TLS certificate watcher stopped");
        })
    }
}

/// The next tick of the reload timer, or never when there is no timer.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next `SIGHUP`, or never when its handler could not be installed.
async fn hangup_received(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl std::fmt::Debug for ReloadingCert {
    /// Paths and the serial being served; never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .field("serial", &serial_of(&self.current.load()))
            .finish_non_exhaustive()
    }
}

/// Reads a certificate file and its key file.
fn read_pair(cert: &Path, key: &Path) -> anyhow::Result<FilePair> {
    Ok(FilePair {
        cert: read_pem_file(cert, "certificate")?,
        key: read_pem_file(key, "private key")?,
    })
}

/// Reads a file that should hold PEM, failing on a missing or empty one.
fn read_pem_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {what} file {}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        bail!("{what} file {} is empty", path.display());
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of a PEM file's contents (at least one).
fn parse_certs(pem_bytes: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .with_context(|| format!("{} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no PEM certificate (no `BEGIN CERTIFICATE` block)",
            path.display()
        );
    }
    Ok(certs)
}

/// The first private key block of a PEM file's contents.
fn parse_key(pem_bytes: &[u8], path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|err| match err {
        pem::Error::NoItemsFound => anyhow!(
            "{} holds no PEM private key (no `BEGIN PRIVATE KEY`, `BEGIN EC PRIVATE KEY` or `BEGIN RSA PRIVATE KEY` block)",
            path.display()
        ),
        other => anyhow::Error::new(other).context(format!("{} is not valid PEM", path.display())),
    })
}

/// Turns the two files' contents into a certificate rustls can serve, checking
/// that the key belongs to the certificate.
fn certified_key(
    files: &FilePair,
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = parse_certs(&files.cert, cert_path)?;
    let key = parse_key(&files.key, key_path)?;
    // `from_der` loads the key with the provider's key loader and compares its
    // public key with the leaf certificate's (`CertifiedKey::keys_match`).
    CertifiedKey::from_der(chain, key, provider).map_err(|err| key_error(err, cert_path, key_path))
}

/// A clear message for a key rustls refused to pair with a certificate.
fn key_error(err: rustls::Error, cert_path: &Path, key_path: &Path) -> anyhow::Error {
    match err {
        rustls::Error::InconsistentKeys(_) => anyhow!(
            "private key {} does not belong to certificate {}",
            key_path.display(),
            cert_path.display()
        ),
        other => anyhow::Error::new(other).context(format!(
            "cannot use private key {} with certificate {}",
            key_path.display(),
            cert_path.display()
        )),
    }
}

/// The leaf certificate's serial number as colon-separated hex, for logs.
fn serial_of(certified: &CertifiedKey) -> String {
    certified
        .cert
        .first()
        .and_then(|leaf| serial_hex(leaf))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The DNS names a DER certificate carries (its subject alternative names;
/// the common name is not an identity here). Empty if it does not parse.
pub fn names(cert: &[u8]) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// A DER certificate's serial number as `0a:1b:…` hex (x509-parser, which
/// rcgen already brings in to read CA certificates).
pub fn serial_hex(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.raw_serial_as_string())
}

// ---------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------

/// Reads every certificate in a CA file into a root store (at least one).
fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let bytes = read_pem_file(path, "CA certificate")?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in parse_certs(&bytes, path)?.into_iter().enumerate() {
        roots.add(cert).with_context(|| {
            format!(
                "certificate #{} in CA file {} cannot be used as a trust anchor",
                index + 1,
                path.display()
            )
        })?;
    }
    Ok(roots)
}

/// A server config serving the certificate in `files` (reloadable through the
/// returned [`ReloadingCert`]), offering the ALPN protocols `alpn` (e.g.
/// `&[b"h2"]` for gRPC), and requiring client certificates issued by
/// `files.client_ca` when that is set.
///
/// TLS 1.2 and 1.3 with rustls' safe defaults, on the *ring* provider.
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<(Arc<ServerConfig>, Arc<ReloadingCert>)> {
    let provider = provider();
    let reloading = ReloadingCert::load(&files.cert, &files.key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = load_roots(ca)?;
            // Without `allow_unauthenticated()`, a client that presents no
            // certificate, or one that does not chain to `roots`, is refused.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("cannot verify client certificates against {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(&reloading) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok((Arc::new(config), reloading))
}

/// A client config that trusts the CA certificates in `ca`, presents the
/// client certificate `identity` (`(cert, key)` PEM files) when given, and
/// offers ALPN `h2`.
///
/// The returned config is not reloaded: build a new one to pick up new files.
pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> anyhow::Result<ClientConfig> {
    let provider = provider();
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let files = read_pair(cert, key)?;
            let chain = parse_certs(&files.cert, cert)?;
            let key_der = parse_key(&files.key, key)?;
            // Like `CertifiedKey::from_der`, this checks the key matches.
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|err| key_error(err, cert, key))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

// ---------------------------------------------------------------------------
// Development certificates
// ---------------------------------------------------------------------------

/// How long a development CA is valid.
const DEV_CA_DAYS: i64 = 3650;
/// How long the certificates [`write_dev_certs`] issues are valid.
const DEV_LEAF_DAYS: i64 = 365;

/// Writes a fresh development CA and one certificate per name into `dir`
/// (created if missing; existing files are replaced):
///
/// - `ca.pem`, `ca.key`: a self-signed CA (ECDSA P-256);
/// - `NAME.pem`, `NAME.key` for each of `names`: an ECDSA P-256 certificate
///   signed by that CA, with common name `NAME`, a server certificate, and a
///   client certificate too if `NAME` is one of `clients`; valid from a day
///   ago for 365 days. Its subject
///   alternative names are `NAME`, each of `hosts` (IP addresses become IP
///   SANs, anything else a DNS SAN), `localhost`, `127.0.0.1` and `::1`.
///
/// Key files are created with mode 0600. Each file is written to a temporary
/// name and renamed into place, so a server watching them never reads half a
/// file.
pub fn write_dev_certs(dir: &Path, names: &[&str], clients: &[&str], hosts: &[String]) -> anyhow::Result<()> {
    // A certificate's own name is its identity: a host shared by every
    // certificate must not be one of them (`--host gateway` would make every
    // certificate pass as the gateway's).
    if let Some(host) = hosts.iter().find(|h| names.contains(&h.as_str())) {
        bail!("--host {host:?} is also a certificate's name; every certificate would carry it");
    }
    for name in names {
        let valid = !name.is_empty()
            && *name != "ca"
            && !name.starts_with('.')
            && !name.contains(['/', '\\', '\0'])
            && name.is_ascii();
        if !valid {
            bail!("{name:?} cannot name a development certificate (it becomes a file name and a DNS name)");
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let (ca_params, ca_key, ca_cert) = make_ca("mesh development CA")?;
    write_file(&dir.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;

    let issuer = Issuer::new(ca_params, ca_key);
    let now = OffsetDateTime::now_utc();
    for name in names {
        let (cert, key) = sign_leaf(
            &issuer,
            name,
            hosts,
            clients.contains(name),
            days_from(now, -1)?,
            days_from(now, DEV_LEAF_DAYS)?,
        )?;
        write_file(&dir.join(format!("{name}.pem")), cert.as_bytes(), 0o644)?;
        write_file(&dir.join(format!("{name}.key")), key.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// A new self-signed CA (ECDSA P-256) with the given common name, valid from
/// a day ago for ten years: `(certificate PEM, private key PEM)`.
pub fn new_ca(common_name: &str) -> anyhow::Result<(String, String)> {
    let (_params, key, cert) = make_ca(common_name)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues a certificate for `name` (same key usages and SANs as
/// [`write_dev_certs`] gives it, without extra hosts), signed by the CA whose
/// certificate and key are given as PEM: `(certificate PEM, private key PEM)`,
/// with a new key every call.
///
/// The validity runs from `not_before_days_from_now` to
/// `not_after_days_from_now` days from now; both may be negative, e.g.
/// `issue_leaf(ca, key, "sql", -1, -2)` is a certificate that expired yesterday.
pub fn issue_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    not_after_days_from_now: i64,
    not_before_days_from_now: i64,
) -> anyhow::Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key_pem).context("cannot read the CA private key PEM")?;
    // Takes the issuer name, key identifier and key usages from the CA
    // certificate (needs rcgen's `x509-parser` feature).
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).context("cannot read the CA certificate PEM")?;
    let now = OffsetDateTime::now_utc();
    sign_leaf(
        &issuer,
        name,
        &[],
        true,
        days_from(now, not_before_days_from_now)?,
        days_from(now, not_after_days_from_now)?,
    )
}

/// `now` moved by a whole number of days.
fn days_from(now: OffsetDateTime, days: i64) -> anyhow::Result<OffsetDateTime> {
    now.checked_add(time::Duration::days(days))
        .ok_or_else(|| anyhow!("{days} days from now is out of range"))
}

/// A random, positive, 16-byte certificate serial number.
fn random_serial() -> anyhow::Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    // Clear the sign bit (serials are positive) and set the next one, so the
    // number always takes all 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A self-signed CA: its parameters (to sign with), key and certificate.
fn make_ca(common_name: &str) -> anyhow::Result<(CertificateParams, KeyPair, rcgen::Certificate)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = days_from(now, -1)?;
    params.not_after = days_from(now, DEV_CA_DAYS)?;
    params.serial_number = Some(random_serial()?);
    // `KeyPair::generate` is ECDSA P-256 with SHA-256.
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let cert = params.self_signed(&key).context("cannot sign the CA certificate")?;
    Ok((params, key, cert))
}

/// Issues a server-and-client certificate for `name`, signed by `issuer`.
fn sign_leaf(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    hosts: &[String],
    client: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<(String, String)> {
    if not_after <= not_before {
        bail!("the certificate for {name:?} would expire before it becomes valid");
    }
    let mut sans: Vec<String> = Vec::new();
    let defaults = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
    for san in std::iter::once(name.to_owned())
        .chain(hosts.iter().cloned())
        .chain(defaults)
    {
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    // `CertificateParams::new` makes an IP SAN of every entry that parses as an
    // IP address and a DNS SAN of the rest.
    let mut params =
        CertificateParams::new(sans).with_context(|| format!("bad subject alternative name for {name:?}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Only a client certificate may call a service: a service's own key
    // cannot be used to call another.
    params.extended_key_usages = if client {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    let key = KeyPair::generate().with_context(|| format!("cannot generate a key for {name:?}"))?;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("cannot sign the certificate for {name:?}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `contents` to `path` through a temporary file in the same directory
/// and a rename, leaving the file with permissions `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` only applies to a file the open created; a leftover
        // temporary file keeps its own permissions unless they are set again.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// A directory under the system temp dir, removed when dropped (also when
    /// a test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let unique = format!(
                "mesh-tls-{tag}-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Dev certs for a server and a client, plus the matching mTLS files.
    fn dev_certs(dir: &TempDir) -> TlsFiles {
        write_dev_certs(
            &dir.0,
            &["server", "client"],
            &["client"],
            &["mesh.internal".to_owned(), "10.1.2.3".to_owned()],
        )
        .expect("write dev certs");
        TlsFiles {
            cert: dir.file("server.pem"),
            key: dir.file("server.key"),
            client_ca: Some(dir.file("ca.pem")),
        }
    }

    /// A client that trusts `ca`'s `ca.pem` and presents `identity`'s
    /// `client.pem` and `client.key`.
    fn mtls_client(ca: &TempDir, identity: &TempDir) -> ClientConfig {
        let (cert, key) = (identity.file("client.pem"), identity.file("client.key"));
        client_config(&ca.file("ca.pem"), Some((cert.as_path(), key.as_path()))).expect("client config")
    }

    /// What the client saw of a handshake the server accepted.
    struct ClientSaw {
        alpn: Option<Vec<u8>>,
        server_cert: CertificateDer<'static>,
    }

    /// Runs one TLS connection over loopback TCP, connecting to `localhost`.
    ///
    /// Returns the server's side (how many certificates the client presented)
    /// and the client's. The client only counts as connected once it has read
    /// the `ok` the server writes after its side of the handshake succeeded:
    /// with TLS 1.3 the client finishes first and only learns from a later
    /// alert that the server refused its certificate.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: ClientConfig,
    ) -> (anyhow::Result<usize>, anyhow::Result<ClientSaw>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = TlsAcceptor::from(server);
        let server_side = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let presented = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
            tls.write_all(b"ok").await?;
            tls.flush().await?;
            let _ = tls.shutdown().await; // the client may be gone already
            anyhow::Ok(presented)
        });
        let client_side = async {
            let connector = TlsConnector::from(Arc::new(client));
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = connector.connect(ServerName::try_from("localhost")?, tcp).await?;
            let mut ok = [0u8; 2];
            tls.read_exact(&mut ok).await?;
            anyhow::ensure!(&ok == b"ok", "unexpected greeting {ok:?}");
            let (_, connection) = tls.get_ref();
            let server_cert = connection
                .peer_certificates()
                .and_then(<[_]>::first)
                .context("server sent no certificate")?
                .clone();
            anyhow::Ok(ClientSaw {
                alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
                server_cert,
            })
        };
        let limit = Duration::from_secs(10);
        let client_result = tokio::time::timeout(limit, client_side)
            .await
            .unwrap_or_else(|_| Err(anyhow!("client timed out")));
        let server_result = tokio::time::timeout(limit, server_side).await.map_or_else(
            |_| Err(anyhow!("server timed out")),
            |joined| joined.expect("server task panicked"),
        );
        (server_result, client_result)
    }

    #[tokio::test]
    async fn mutual_tls_handshake_negotiates_h2_and_refuses_foreign_clients() {
        let dir = TempDir::new("mtls");
        let files = dev_certs(&dir);
        let (server, _reloading) = server_config(&files, &[b"h2"]).expect("server config");

        // A client with a certificate from the same CA gets in, with h2.
        let (server_seen, client_seen) = handshake(Arc::clone(&server), mtls_client(&dir, &dir)).await;
        assert_eq!(
            server_seen.expect("server accepts the client"),
            1,
            "client presented its certificate"
        );
        let client_seen = client_seen.expect("client connects");
        assert_eq!(client_seen.alpn.as_deref(), Some(&b"h2"[..]));

        // A client whose certificate comes from another CA is refused.
        let other = TempDir::new("other-ca");
        write_dev_certs(&other.0, &["client"], &["client"], &[]).expect("other dev certs");
        let (server_seen, client_seen) = handshake(Arc::clone(&server), mtls_client(&dir, &other)).await;
        let refusal = server_seen.expect_err("server must refuse a certificate from another CA");
        assert!(
            client_seen.is_err(),
            "the refused client must not get a working connection"
        );
        assert!(
            format!("{refusal:#}").contains("certificate"),
            "unexpected error: {refusal:#}"
        );

        // So is a client with no certificate at all.
        let anonymous = client_config(&dir.file("ca.pem"), None).expect("anonymous client config");
        let (server_seen, client_seen) = handshake(Arc::clone(&server), anonymous).await;
        assert!(server_seen.is_err(), "server must require a client certificate");
        assert!(client_seen.is_err());

        // Without a client CA, the same anonymous client is welcome.
        let one_way = TlsFiles {
            client_ca: None,
            ..files.clone()
        };
        let (server, _reloading) = server_config(&one_way, &[b"h2"]).expect("one-way server config");
        let anonymous = client_config(&dir.file("ca.pem"), None).expect("anonymous client config");
        let (server_seen, client_seen) = handshake(server, anonymous).await;
        assert_eq!(server_seen.expect("server accepts"), 0);
        client_seen.expect("client connects");
    }

    #[tokio::test]
    async fn reload_swaps_in_a_reissued_certificate_and_keeps_it_on_errors() {
        let dir = TempDir::new("reload");
        let files = dev_certs(&dir);
        let (server, reloading) = server_config(&files, &[b"h2"]).expect("server config");
        let client = || mtls_client(&dir, &dir);

        let (_, first) = handshake(Arc::clone(&server), client()).await;
        let first = first.expect("first handshake").server_cert;
        assert!(
            !reloading.reload().expect("reload unchanged files"),
            "nothing changed yet"
        );

        // Re-issue the server's certificate (new key, new serial) in place.
        let ca_pem = std::fs::read_to_string(dir.file("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(dir.file("ca.key")).unwrap();
        let (cert, key) = issue_leaf(&ca_pem, &ca_key, "server", 30, -1).expect("re-issue");
        write_file(&files.cert, cert.as_bytes(), 0o644).unwrap();
        write_file(&files.key, key.as_bytes(), 0o600).unwrap();
        assert!(
            reloading.reload().expect("reload re-issued files"),
            "new files must be swapped in"
        );

        let (_, second) = handshake(Arc::clone(&server), client()).await;
        let second = second.expect("handshake after reload").server_cert;
        assert_ne!(
            first, second,
            "the next handshake must present the re-issued certificate"
        );

        // A broken key file is reported, and the working certificate stays.
        std::fs::write(&files.key, "not a key\n").unwrap();
        let err = reloading.reload().expect_err("a broken key must fail the reload");
        assert!(
            format!("{err:#}").contains("server.key"),
            "error must name the file: {err:#}"
        );
        let (_, third) = handshake(Arc::clone(&server), client()).await;
        assert_eq!(third.expect("handshake after failed reload").server_cert, second);

        // A certificate and key that do not belong together are refused too.
        std::fs::copy(dir.file("client.key"), &files.key).unwrap();
        let err = reloading.reload().expect_err("a mismatched key must fail the reload");
        assert!(
            format!("{err:#}").contains("does not belong"),
            "unexpected error: {err:#}"
        );
    }

    #[tokio::test]
    async fn watch_picks_up_new_files_and_stops() {
        let dir = TempDir::new("watch");
        let files = dev_certs(&dir);
        let reloading = ReloadingCert::load(&files.cert, &files.key).expect("load");
        let before = reloading.current.load_full();

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = reloading.watch(Duration::from_millis(20), stop_rx);

        let ca_pem = std::fs::read_to_string(dir.file("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(dir.file("ca.key")).unwrap();
        let (cert, key) = issue_leaf(&ca_pem, &ca_key, "server", 30, -1).expect("re-issue");
        write_file(&files.key, key.as_bytes(), 0o600).unwrap();
        write_file(&files.cert, cert.as_bytes(), 0o644).unwrap();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while reloading.current.load().cert == before.cert {
            assert!(tokio::time::Instant::now() < deadline, "watcher never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("watcher stops")
            .expect("watcher did not panic");
    }

    #[tokio::test]
    async fn expired_server_certificate_is_rejected_by_clients() {
        let dir = TempDir::new("expired");
        let files = dev_certs(&dir);
        let ca_pem = std::fs::read_to_string(dir.file("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(dir.file("ca.key")).unwrap();
        let (cert, key) = issue_leaf(&ca_pem, &ca_key, "server", -1, -2).expect("issue expired");
        write_file(&files.cert, cert.as_bytes(), 0o644).unwrap();
        write_file(&files.key, key.as_bytes(), 0o600).unwrap();

        let (server, _reloading) = server_config(&files, &[b"h2"]).expect("an expired certificate still loads");
        let (_, client_seen) = handshake(server, mtls_client(&dir, &dir)).await;
        let err = client_seen.err().expect("client must refuse an expired certificate");
        assert!(
            format!("{err:#}").to_lowercase().contains("expired"),
            "unexpected error: {err:#}"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = TempDir::new("errors");
        let files = dev_certs(&dir);
        let text = |err: anyhow::Error| format!("{err:#}");

        let missing = dir.file("missing.pem");
        let err = text(ReloadingCert::load(&missing, &files.key).unwrap_err());
        assert!(err.contains("missing.pem"), "{err}");

        let empty = dir.file("empty.pem");
        std::fs::write(&empty, "\n").unwrap();
        let err = text(ReloadingCert::load(&empty, &files.key).unwrap_err());
        assert!(err.contains("empty.pem") && err.contains("empty"), "{err}");

        // A key where the certificate should be: PEM, but not a certificate.
        let err = text(ReloadingCert::load(&files.key, &files.key).unwrap_err());
        assert!(
            err.contains("server.key") && err.contains("no PEM certificate"),
            "{err}"
        );

        let err = text(ReloadingCert::load(&files.cert, &files.cert).unwrap_err());
        assert!(
            err.contains("server.pem") && err.contains("no PEM private key"),
            "{err}"
        );

        let err = text(ReloadingCert::load(&files.cert, &dir.file("client.key")).unwrap_err());
        assert!(err.contains("client.key") && err.contains("does not belong"), "{err}");

        let err = text(
            server_config(
                &TlsFiles {
                    client_ca: Some(empty),
                    ..files
                },
                &[b"h2"],
            )
            .unwrap_err(),
        );
        assert!(err.contains("empty.pem"), "{err}");
    }

    #[test]
    fn dev_keys_are_private_and_serials_readable() {
        let dir = TempDir::new("modes");
        dev_certs(&dir);
        for key in ["ca.key", "server.key", "client.key"] {
            let mode = std::fs::metadata(dir.file(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let pem = std::fs::read(dir.file("server.pem")).unwrap();
        let cert = CertificateDer::from_pem_slice(&pem).unwrap();
        let serial = serial_hex(&cert).expect("serial");
        // 16 bytes, as `random_serial` makes them: "xx:" * 15 + "xx".
        assert_eq!(serial.len(), 16 * 3 - 1, "{serial}");
        assert!(write_dev_certs(&dir.0, &["../escape"], &[], &[]).is_err());
        assert_eq!(serial_hex(b"not a certificate"), None);
    }
}
