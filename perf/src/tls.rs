//! TLS for the load generator: a rustls client (aws-lc-rs) driven by the engine's own compio
//! reads and writes (rustls's buffered API over in-memory buffers).
//!
//! The client is tuned to cost the proxy, not itself: it does not verify the server's
//! certificate (the benchmark is about the server's work; verification would only slow the
//! load CPU), offers X25519 only (what nginx's and HAProxy's OpenSSL 3.0 and Sluice's rustls
//! all do at the same cost: no post-quantum share that only one of them would take), and
//! resumes sessions only when asked to.

use std::io::{self, Read, Write};
use std::sync::Arc;

use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// A client configuration: TLS 1.3, X25519, ALPN `http/1.1`, no certificate verification;
/// session resumption (tickets) when `resume`.
pub fn client_config(resume: bool) -> Result<Arc<ClientConfig>, String> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Accepts any certificate (the benchmark measures the server); signatures are still checked
/// by the provider, so the handshake is a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client connection over a compio TCP stream.
#[allow(missing_debug_implementations, reason = "holds a rustls connection; nothing to show")]
pub struct Tls {
    tcp: TcpStream,
    conn: ClientConnection,
    /// Ciphertext read buffer (reused).
    cipher: Vec<u8>,
    /// Ciphertext to send (reused).
    out: Vec<u8>,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Tls {
    /// Connects TLS over `tcp` (the handshake runs here).
    pub async fn handshake(
        tcp: TcpStream,
        config: &Arc<ClientConfig>,
        name: &str,
    ) -> io::Result<Tls> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(Arc::clone(config), name).map_err(tls_err)?;
        let mut tls = Tls { tcp, conn, cipher: Vec::with_capacity(16 * 1024), out: Vec::new() };
        while tls.conn.is_handshaking() {
            tls.flush().await?;
            if tls.conn.is_handshaking() && tls.conn.wants_read() {
                tls.read_more().await?;
            }
        }
        tls.flush().await?;
        Ok(tls)
    }

    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.out.clear();
            self.conn.write_tls(&mut self.out)?;
            let mut w = &self.tcp;
            let BufResult(res, out) = w.write_all(std::mem::take(&mut self.out)).await;
            self.out = out;
            res?;
        }
        Ok(())
    }

    /// Reads ciphertext and processes it; `Ok(false)` at end of stream.
    async fn read_more(&mut self) -> io::Result<bool> {
        self.cipher.clear();
        self.cipher.reserve(16 * 1024);
        let mut r = &self.tcp;
        let BufResult(res, buf) = r.append(std::mem::take(&mut self.cipher)).await;
        self.cipher = buf;
        if res? == 0 {
            return Ok(false);
        }
        let mut rd = &self.cipher[..];
        while !rd.is_empty() {
            self.conn.read_tls(&mut rd)?;
            self.conn.process_new_packets().map_err(tls_err)?;
        }
        Ok(true)
    }

    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// Sends `plain` encrypted.
    pub async fn write_all(&mut self, plain: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(plain)?;
        self.flush().await
    }

    /// Appends decrypted bytes to `buf`; 0 at end of stream.
    pub async fn read_into(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        loop {
            let before = buf.len();
            match self.conn.reader().read_to_end(buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
            if buf.len() > before {
                return Ok(buf.len() - before);
            }
            // Tickets and key updates may need answers.
            self.flush().await?;
            if !self.read_more().await? {
                return Ok(0);
            }
        }
    }
}
