//! rustls receive path, buffered against unbuffered (the two ways lb could drive a TLS
//! server connection), for one application-data record of 100 B, 4 KiB and 16 KiB:
//!
//! - buffered: `read_tls` copies the ciphertext into rustls's buffer, `process_new_packets`
//!   decrypts it there, `reader().read` copies the plaintext out;
//! - unbuffered (what lb does): `process_tls_records` decrypts in the caller's buffer, then
//!   `next_record` hands over the plaintext (rustls 0.23 pops it from a `Vec` of its own) and
//!   it is copied into the connection's input buffer.
//!
//! Each iteration gets a fresh record from the client (record sequence numbers forbid replay);
//! making it is setup, not measured.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, reason = "benchmark")]

use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::ConnectionState;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.example".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let client = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(Arc::clone(config), ServerName::try_from("bench.example").unwrap())
        .unwrap()
}

/// Everything the client has to send.
fn client_out(c: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

fn feed_client(c: &mut ClientConnection, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        c.read_tls(&mut bytes).unwrap();
        c.process_new_packets().unwrap();
    }
}

/// A buffered server connection after the handshake.
fn buffered_pair(
    s: &Arc<ServerConfig>,
    cc: &Arc<ClientConfig>,
) -> (ServerConnection, ClientConnection) {
    let mut server = ServerConnection::new(Arc::clone(s)).unwrap();
    let mut c = client(cc);
    while c.is_handshaking() || server.is_handshaking() {
        let out = client_out(&mut c);
        let mut rd = &out[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        feed_client(&mut c, &back);
    }
    (server, c)
}

/// Drives an unbuffered server over `incoming`; returns what it wants sent. Plaintext goes to
/// `plain`.
fn unbuffered_step(
    s: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let status = s.process_tls_records(incoming);
        let discard = status.discard;
        let mut stop = false;
        match status.state.unwrap() {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    plain.extend_from_slice(rec.unwrap().payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => {
                let start = out.len();
                out.resize(start + 16384, 0);
                let n = e.encode(&mut out[start..]).unwrap();
                out.truncate(start + n);
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            _ => stop = true,
        }
        incoming.drain(..discard);
        if stop {
            return out;
        }
    }
}

fn unbuffered_pair(
    s: &Arc<ServerConfig>,
    cc: &Arc<ClientConfig>,
) -> (UnbufferedServerConnection, ClientConnection) {
    let mut server = UnbufferedServerConnection::new(Arc::clone(s)).unwrap();
    let mut c = client(cc);
    let mut plain = Vec::new();
    for _ in 0..8 {
        let mut incoming = client_out(&mut c);
        let back = unbuffered_step(&mut server, &mut incoming, &mut plain);
        feed_client(&mut c, &back);
        if !c.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!c.is_handshaking());
    (server, c)
}

fn record(c: &mut ClientConnection, payload: &[u8]) -> Vec<u8> {
    c.writer().write_all(payload).unwrap();
    client_out(c)
}

fn bench(cr: &mut Criterion) {
    let (s, cc) = configs();
    for size in [100usize, 4096, 16 * 1024 - 64] {
        let payload = vec![b'x'; size];
        let mut g = cr.benchmark_group(format!("tls_receive_{size}"));
        {
            let (mut server, mut c) = buffered_pair(&s, &cc);
            let mut out = vec![0u8; 32 * 1024];
            g.bench_function("buffered read_tls", |b| {
                b.iter_batched(
                    || record(&mut c, &payload),
                    |cipher| {
                        let mut rd = &cipher[..];
                        while !rd.is_empty() {
                            server.read_tls(&mut rd).unwrap();
                        }
                        server.process_new_packets().unwrap();
                        let mut got = 0;
                        while got < size {
                            got += server.reader().read(&mut out[got..]).unwrap();
                        }
                        got
                    },
                    BatchSize::SmallInput,
                );
            });
        }
        {
            let (mut server, mut c) = unbuffered_pair(&s, &cc);
            let mut plain = Vec::with_capacity(32 * 1024);
            g.bench_function("unbuffered in place", |b| {
                b.iter_batched(
                    || record(&mut c, &payload),
                    |mut cipher| {
                        plain.clear();
                        let _ = unbuffered_step(&mut server, &mut cipher, &mut plain);
                        assert_eq!(plain.len(), size);
                        plain.len()
                    },
                    BatchSize::SmallInput,
                );
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
