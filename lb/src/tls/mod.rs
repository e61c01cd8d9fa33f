//! TLS termination: rustls (aws-lc-rs provider) driven sans-I/O from lb's own reads and writes
//! on each core's runtime — no TLS stream adapter, no second runtime.
//!
//! - **Configuration.** The table watcher builds one rustls `ServerConfig` per TLS port of each
//!   generation ([`Ports`]), off the request path; cores share it read-only like the table.
//!   Certificates are chosen by server name with the table's own host index ([`Sni`]): the
//!   same exact → longest wildcard → no-hostname order that picks a listener by Host, so the
//!   listener a connection's certificate came from is the one its requests must belong to
//!   (else 421, `exchange`). Parsed keys are carried from one generation to the next
//!   ([`KeyCache`]), so a route change does not parse every key again.
//! - **Resumption.** One ticketer per lb process ([`Shared`]; rustls rotates its key every six
//!   hours and accepts the previous one meanwhile), so a ticket issued on one core resumes on
//!   any other, across table generations too. TLS 1.2 clients without ticket support resume
//!   from a process-wide session-ID cache. Nothing survives an lb restart: the ticket keys are
//!   random per process and never written anywhere (a key file shared by restarts would be
//!   one more secret at rest, for a one-round-trip saving once per client after a restart).
//!   0-RTT is off (replayable requests).
//! - **Records.** Ciphertext arrives through the provided-buffer ring like plaintext does; a
//!   record split across reads is carried over in a heap buffer from the core's free list, the
//!   way a split request head is, so an idle TLS connection holds no receive buffer. rustls
//!   decrypts each record in place in that buffer and hands the plaintext over as its own
//!   `Vec` (rustls 0.23.x's unbuffered API copies it out: `ReadTraffic::next_record`), which
//!   lb appends to the connection's input buffer. Writes encrypt into a buffer from the free
//!   list and give it back after the send.
//!
//! This module is the configuration side (built on the table thread, shared by the cores);
//! `stream` is the connection side (a core's handshake, reads and writes).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ProducesTickets, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache,
    StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use table::Router;
use table::format::{ArchivedCertificate, ArchivedKeyFormat, ArchivedPortTls};

use crate::http1::request::ClientCert;
use table::lookup::MAX_HOST;
use tracing::error;

mod stream;

pub(crate) use stream::{HandshakeError, TlsStream, handshake_failed};

/// TLS 1.2 sessions remembered for session-ID resumption, per lb process.
const SESSION_CACHE: usize = 4096;

/// Process-wide TLS state, made once at start.
pub(crate) struct Shared {
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    /// ALPN protocols offered, preferred first (`h2` when HTTP/2 is on, then `http/1.1`).
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The provider (aws-lc-rs: TLS 1.3 and 1.2 ECDHE-AEAD suites; X25519MLKEM768, X25519,
    /// P-256, P-384), a rotating ticketer and a session cache.
    pub(crate) fn new(h2: bool) -> Result<Shared, rustls::Error> {
        let mut alpn = vec![b"http/1.1".to_vec()];
        if h2 {
            alpn.insert(0, b"h2".to_vec());
        }
        Ok(Shared {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
            alpn,
        })
    }
}

/// One generation's TLS configuration: a server config per TLS port (by table port index).
#[derive(Debug, Default)]
pub(crate) struct Ports {
    configs: Vec<Option<Arc<ServerConfig>>>,
}

impl Ports {
    /// The server config of table port `index`; `None` for a plain port, or a TLS port whose
    /// configuration could not be built (its connections are closed).
    pub(crate) fn config(&self, index: usize) -> Option<&Arc<ServerConfig>> {
        self.configs.get(index).and_then(Option::as_ref)
    }
}

/// Parsed certificates and keys of the previous generation, by certificate chain. A chain
/// carries its public key, and a key is kept only if it matches it, so the chain identifies
/// the pair.
#[derive(Default)]
pub(crate) struct KeyCache {
    keys: HashMap<Vec<Vec<u8>>, Arc<CertifiedKey>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("keys", &self.keys.len()).finish()
    }
}

/// Builds `router`'s TLS configuration. A certificate that cannot be loaded is logged by
/// name and left out (handshakes for its listeners fail); config-sync checks them first, so
/// this is a backstop.
pub(crate) fn build(router: &Arc<Router>, shared: &Shared, cache: &mut KeyCache) -> Ports {
    let table = router.table();
    if table.ports.iter().all(|p| p.tls.is_none()) {
        cache.keys.clear();
        return Ports::default();
    }
    let mut kept = HashMap::new();
    let keys: Vec<Option<Arc<CertifiedKey>>> = table
        .certificates
        .iter()
        .map(|c| {
            let chain: Vec<Vec<u8>> = c.chain.iter().map(|d| d.as_slice().to_vec()).collect();
            if let Some(k) = cache.keys.get(&chain).or_else(|| kept.get(&chain)) {
                let k = Arc::clone(k);
                kept.insert(chain, Arc::clone(&k));
                return Some(k);
            }
            match load(c, &shared.provider) {
                Ok(k) => {
                    let k = Arc::new(k);
                    kept.insert(chain, Arc::clone(&k));
                    Some(k)
                }
                Err(e) => {
                    error!(certificate = c.name.as_str(), "cannot load certificate: {e}");
                    None
                }
            }
        })
        .collect();
    cache.keys = kept;
    let keys = Arc::new(keys);
    let configs = table
        .ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            let tls = port.tls.as_ref()?;
            match server_config(router, index, tls, &keys, shared) {
                Ok(config) => Some(Arc::new(config)),
                Err(e) => {
                    error!(port = port.port.to_native(), "TLS configuration refused: {e}");
                    None
                }
            }
        })
        .collect();
    Ports { configs }
}

fn load(c: &ArchivedCertificate, provider: &CryptoProvider) -> Result<CertifiedKey, rustls::Error> {
    let chain = c.chain.iter().map(|d| CertificateDer::from(d.as_slice().to_vec())).collect();
    let der = c.key.as_slice().to_vec();
    let key = match c.key_format {
        ArchivedKeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        ArchivedKeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
        ArchivedKeyFormat::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
    };
    // Checks that the key matches the leaf where the provider can tell.
    CertifiedKey::from_der(chain, key, provider)
}

fn server_config(
    router: &Arc<Router>,
    port: usize,
    tls: &ArchivedPortTls,
    keys: &Arc<Vec<Option<Arc<CertifiedKey>>>>,
    shared: &Shared,
) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(Arc::clone(&shared.provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match tls.client.as_ref() {
        None => builder.with_no_client_auth(),
        Some(validation) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in validation.roots.iter() {
                roots.add(CertificateDer::from(der.as_slice().to_vec()))?;
            }
            let inner = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&shared.provider),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            let verifier = Recording { inner, fallback: validation.insecure_fallback };
            builder.with_client_cert_verifier(Arc::new(verifier))
        }
    };
    let resolver = Sni { router: Arc::clone(router), port, keys: Arc::clone(keys) };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = shared.alpn.clone();
    config.ticketer = Arc::clone(&shared.ticketer);
    config.session_storage = Arc::clone(&shared.sessions);
    config.max_early_data_size = 0;
    Ok(config)
}

/// Picks a port's certificate by server name, with the table's host index.
struct Sni {
    router: Arc<Router>,
    port: usize,
    keys: Arc<Vec<Option<Arc<CertifiedKey>>>>,
}

impl std::fmt::Debug for Sni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sni").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Verifies client certificates against a port's CA bundle and records the outcome for the
/// handshake running on this thread ([`CLIENT_VERIFIED`]). `fallback` (the spec's
/// `AllowInsecureFallback`): a certificate is asked for but not required, and one that does not
/// verify is let through unverified (it is then not passed on); otherwise a missing or invalid
/// certificate fails the handshake (`certificate_required` / `bad_certificate` alerts).
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ClientCertVerifier>,
    fallback: bool,
}

impl ClientCertVerifier for Recording {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.fallback
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verdict = self.inner.verify_client_cert(end_entity, intermediates, now);
        CLIENT_VERIFIED.with(|c| c.set(Some(verdict.is_ok())));
        match verdict {
            Err(_) if self.fallback => Ok(rustls::server::danger::ClientCertVerified::assertion()),
            other => other,
        }
    }

    // Proof of possession is checked in every mode: a client cannot present someone else's
    // certificate, verified or not.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The verified client certificate `der` in the forms a rule may send to the backend
/// (`X-Forwarded-Client-Cert` by default: Envoy's `Hash=<sha256 hex>;Subject="<RFC 4514>"`).
/// A subject that is not printable ASCII is left out rather than escaped into something a
/// backend might misread.
pub(crate) fn client_cert(der: &[u8]) -> ClientCert {
    use base64::Engine;
    use std::fmt::Write;
    use x509_cert::der::Decode;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut hash = String::with_capacity(64);
    for b in digest.as_ref() {
        let _ = write!(hash, "{b:02x}");
    }
    let subject = x509_cert::Certificate::from_der(der)
        .map(|c| c.tbs_certificate.subject.to_string())
        .ok()
        .filter(|s| s.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .unwrap_or_default();
    let mut xfcc = format!("Hash={hash}");
    if !subject.is_empty() {
        xfcc.push_str(";Subject=\"");
        for c in subject.chars() {
            if c == '"' || c == '\\' {
                xfcc.push('\\');
            }
            xfcc.push(c);
        }
        xfcc.push('"');
    }
    let certificate = format!(":{}:", base64::engine::general_purpose::STANDARD.encode(der));
    ClientCert {
        hash: hash.into(),
        subject: subject.into(),
        xfcc: xfcc.into(),
        certificate: certificate.into(),
    }
}

thread_local! {
    /// Whether the client certificate of the handshake running on this thread verified
    /// (`None`: none was presented). Set by [`Recording`] inside `process_tls_records`, taken
    /// by [`TlsStream::accept`] right after.
    pub(super) static CLIENT_VERIFIED: Cell<Option<bool>> = const { Cell::new(None) };

    /// The server name the last certificate was resolved for on this thread. rustls 0.23's
    /// unbuffered server connection does not expose the name, but it always resolves a
    /// certificate (resumption too) inside the `process_tls_records` call that handles the
    /// ClientHello, on the core that runs the handshake: [`TlsStream::accept`] takes it from
    /// here right after that call.
    pub(super) static RESOLVED_NAME: RefCell<Option<Box<[u8]>>> = const { RefCell::new(None) };
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.router.table();
        let port = table.ports.get(self.port)?;
        let mut buf = [0u8; MAX_HOST];
        let name = lower(hello.server_name().unwrap_or("").as_bytes(), &mut buf);
        RESOLVED_NAME.with(|r| *r.borrow_mut() = Some(name.into()));
        let listener = self.router.listener_for(port, name)?;
        let listener = table.listeners.get(listener as usize)?;
        let schemes = hello.signature_schemes();
        // The listener's certificates in order (RSA and ECDSA for the same names): the first
        // whose key can sign with a scheme the client offers.
        listener
            .certificates
            .iter()
            .filter_map(|i| self.keys.get(i.to_native() as usize)?.as_ref())
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .cloned()
    }
}

/// `name` in lower case (server names are ASCII); a name longer than a DNS name is empty,
/// which selects only a listener without hostname.
pub(crate) fn lower<'b>(name: &[u8], buf: &'b mut [u8; MAX_HOST]) -> &'b [u8] {
    let Some(out) = buf.get_mut(..name.len()) else { return &[] };
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    out
}
