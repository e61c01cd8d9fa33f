//! The certificates the upstream suite creates at run time (its `Setup` and the frontend
//! client-certificate tests), made with rcgen when the runner starts — never committed:
//! a CA per trust domain, server certificates in `kubernetes.io/tls` Secrets, CA bundles in
//! ConfigMaps (`ca.crt`), client certificates in Secrets, and the runner's rustls client
//! configurations that trust them.

use std::collections::BTreeMap;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

/// Server names every server certificate covers: the suite's hosts (`*.org` covers
/// `example.org` and `second-example.org`) and the wildcards its listeners use.
const SERVER_NAMES: &[&str] = &[
    "*.org",
    "*.wildcard.org",
    "*.example.org",
    "*.example.com",
    "example.org",
    "example.com",
    "abc.example.com",
];

struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Result<Authority, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Authority { cert, key })
    }

    fn issue(&self, names: &[&str], common_name: &str) -> Result<(String, String), String> {
        let owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(owned).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(|e| e.to_string())?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The runner's certificates.
pub struct Pki {
    server_ca: Authority,
    /// Objects to add to the base manifests.
    pub objects: Vec<Value>,
    /// Client certificates by Secret name (`namespace/name`): chain PEM, key PEM.
    clients: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("clients", &self.clients.keys()).finish_non_exhaustive()
    }
}

impl Pki {
    /// Makes everything the suite's setup makes.
    pub fn new() -> Result<Pki, String> {
        let server_ca = Authority::new("Sluice conformance server CA")?;
        let mut pki = Pki { server_ca, objects: Vec::new(), clients: BTreeMap::new() };
        for (ns, name) in [
            ("gateway-conformance-web-backend", "certificate"),
            ("gateway-conformance-infra", "tls-validity-checks-certificate"),
            ("gateway-conformance-infra", "tls-passthrough-checks-certificate"),
            ("gateway-conformance-app-backend", "tls-passthrough-checks-certificate"),
            ("gateway-conformance-infra", "tls-terminate-checks-certificate"),
        ] {
            let (crt, key) = pki.server_ca.issue(SERVER_NAMES, "gateway-conformance")?;
            pki.objects.push(tls_secret(ns, name, &crt, &key));
        }
        // Frontend validation: one CA (in a ConfigMap) and a client certificate it signed
        // (in a Secret), for the default and the per-port configuration.
        let ns = "gateway-conformance-infra";
        for (ca_map, client) in [
            ("tls-validity-checks-ca-certificate", "tls-validity-checks-client-certificate"),
            (
                "tls-validity-checks-per-port-ca-certificate",
                "tls-validity-checks-per-port-client-certificate",
            ),
        ] {
            let ca = Authority::new(ca_map)?;
            pki.objects.push(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ca_map, "namespace": ns},
                "data": {"ca.crt": ca.cert.pem()},
            }));
            let (crt, key) = ca.issue(&["client.example.org"], client)?;
            pki.objects.push(tls_secret(ns, client, &crt, &key));
            pki.clients.insert(format!("{ns}/{client}"), (crt, key));
        }
        Ok(pki)
    }

    /// A client configuration trusting the server CA, offering `http/1.1`, with the client
    /// certificate of Secret `client` (`namespace/name`) when given.
    pub fn client(&self, client: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.server_ca.cert.der().clone()).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)));
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let (crt, key) = self
                    .clients
                    .get(name)
                    .ok_or_else(|| format!("no client certificate {name}"))?;
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(crt.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?;
                let key =
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
                builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Verifies the chain to the runner's CA and the signatures, but not the name: the suite
/// checks which listener answers (by SNI and Host), not that a test certificate names every
/// host it sends (webpki refuses `*.org`-style wildcards that Go's client takes).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_secret(ns: &str, name: &str, crt: &str, key: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"tls.crt": crt, "tls.key": key},
    })
}
