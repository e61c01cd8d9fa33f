//! HTTPS listeners' certificates: `tls.certificateRefs` resolved to `kubernetes.io/tls`
//! Secrets (across namespaces only with a ReferenceGrant), parsed and checked (PEM chain, a
//! key that matches the leaf) and put in the table once per Secret.
//!
//! A Secret that exists but went bad (malformed PEM, a key that does not match) keeps serving
//! its last valid certificate, from [`Settings::last_good`], while the listener says
//! `ResolvedRefs=False, InvalidCertificateRef`: a bad rotation must not take a site down. A
//! Secret that was deleted is not served any more — deleting it is how an operator stops a
//! compromised key being used.
//!
//! Nothing here logs, formats or returns key bytes: errors name the Secret and what is wrong.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::*;

/// The Secret type HTTPS listeners take certificates from.
const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// One HTTPS listener's certificates: table indices, and the first problem (for its
/// `ResolvedRefs` condition).
#[derive(Debug, Default)]
pub(super) struct ListenerCertificates {
    pub(super) indices: Vec<u32>,
    pub(super) problem: Option<Why>,
}

impl<'m> Compiler<'m> {
    /// Resolves an HTTPS listener's `certificateRefs` (the listener belongs to a Gateway in
    /// `gateway_ns`).
    pub(super) fn listener_certificates(
        &mut self,
        gateway_ns: &str,
        refs: &[GatewayListenersTlsCertificateRefs],
    ) -> ListenerCertificates {
        let mut out = ListenerCertificates::default();
        if refs.is_empty() {
            out.problem = Some((
                Reason::InvalidCertificateRef,
                "an HTTPS listener needs tls.certificateRefs".to_owned(),
            ));
            return out;
        }
        let mut found: Vec<(u32, bool)> = Vec::new();
        for r in refs {
            match self.certificate(gateway_ns, r) {
                Ok((index, ecdsa, problem)) => {
                    if !found.iter().any(|(i, _)| *i == index) {
                        found.push((index, ecdsa));
                    }
                    if out.problem.is_none() {
                        out.problem = problem;
                    }
                }
                Err(why) => {
                    if out.problem.is_none() {
                        out.problem = Some(why);
                    }
                }
            }
        }
        // ECDSA first: cheaper handshakes for every client that can take it; RSA stays for
        // the rest (lb picks the first the client's signature schemes allow).
        found.sort_by_key(|(_, ecdsa)| !*ecdsa);
        out.indices = found.into_iter().map(|(i, _)| i).collect();
        out
    }

    /// One reference: the table index of its certificate, whether its key is ECDSA, and a
    /// problem to report while it is still served (its last valid version).
    fn certificate(
        &mut self,
        gateway_ns: &str,
        r: &GatewayListenersTlsCertificateRefs,
    ) -> Result<(u32, bool, Option<Why>), Why> {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let namespace = r.namespace.as_deref().unwrap_or(gateway_ns);
        let key = Key::new(namespace, &r.name);
        if !group.is_empty() || kind != "Secret" {
            let what = if group.is_empty() { kind.to_owned() } else { format!("{group}/{kind}") };
            return Err((
                Reason::InvalidCertificateRef,
                format!("certificateRef {key}: {what} is not supported (core Secret only)"),
            ));
        }
        if namespace != gateway_ns
            && !self.grant_allows(("Gateway", gateway_ns), (namespace, "Secret", &r.name))
        {
            return Err((
                Reason::RefNotPermitted,
                format!(
                    "no ReferenceGrant in {namespace} allows Gateways from {gateway_ns} to Secret {}",
                    r.name
                ),
            ));
        }
        if let Some(&(index, ecdsa)) = self.certificate_index.get(&key) {
            let problem = self.certificate_problems.get(&key).cloned();
            return Ok((index, ecdsa, problem));
        }
        let Some(secret) = self.model.secrets.get(&key) else {
            return Err((Reason::InvalidCertificateRef, format!("Secret {key} not found")));
        };
        let (cert, problem) = match parse_tls_secret(&key, secret) {
            Ok(cert) => {
                self.last_good.insert(key.clone(), cert.clone());
                (cert, None)
            }
            Err(why) => match self.settings.last_good.get(&key) {
                Some(old) => {
                    self.last_good.insert(key.clone(), old.clone());
                    let message = format!("{why}; still serving its last valid certificate");
                    (old.clone(), Some((Reason::InvalidCertificateRef, message)))
                }
                None => return Err((Reason::InvalidCertificateRef, why)),
            },
        };
        let ecdsa = cert.key_format == t::KeyFormat::Sec1 || is_ecdsa(&cert);
        let index = self.certificates.len() as u32;
        self.certificates.push(cert);
        self.certificate_index.insert(key.clone(), (index, ecdsa));
        if let Some(p) = &problem {
            self.certificate_problems.insert(key, p.clone());
        }
        Ok((index, ecdsa, problem))
    }
}

/// Reads a `kubernetes.io/tls` Secret: `tls.crt` (PEM chain, leaf first) and `tls.key` (PEM
/// private key), from `data` or `stringData`, checked with the TLS library lb uses (the key
/// parses and matches the leaf's public key).
pub(crate) fn parse_tls_secret(
    key: &Key,
    secret: &k8s_openapi::api::core::v1::Secret,
) -> Result<t::Certificate, String> {
    if let Some(kind) = secret.type_.as_deref().filter(|k| *k != TLS_SECRET_TYPE) {
        return Err(format!("Secret {key} has type {kind}, not {TLS_SECRET_TYPE}"));
    }
    let field = |name: &str| -> Option<Vec<u8>> {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(name)) {
            return Some(v.0.clone());
        }
        secret.string_data.as_ref().and_then(|d| d.get(name)).map(|s| s.as_bytes().to_vec())
    };
    let (Some(crt), Some(pem_key)) = (field("tls.crt"), field("tls.key")) else {
        return Err(format!("Secret {key} needs both tls.crt and tls.key"));
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("Secret {key}: tls.crt is not PEM certificates ({e})"))?;
    if chain.is_empty() {
        return Err(format!("Secret {key}: tls.crt holds no PEM certificate"));
    }
    let private = PrivateKeyDer::from_pem_slice(&pem_key)
        .map_err(|_| format!("Secret {key}: tls.key is not a PEM private key"))?;
    let key_format = match &private {
        PrivateKeyDer::Pkcs8(_) => t::KeyFormat::Pkcs8,
        PrivateKeyDer::Pkcs1(_) => t::KeyFormat::Pkcs1,
        PrivateKeyDer::Sec1(_) => t::KeyFormat::Sec1,
        _ => return Err(format!("Secret {key}: tls.key is of an unsupported kind")),
    };
    let key_der = private.secret_der().to_vec();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain.clone(), private, &provider)
        .map_err(|e| format!("Secret {key}: certificate and key are not usable ({e})"))?;
    Ok(t::Certificate {
        name: key.to_string(),
        chain: chain.iter().map(|c| c.as_ref().to_vec()).collect(),
        key: key_der,
        key_format,
    })
}

/// Whether the certificate's key is an ECDSA key (a PKCS#8 key names its algorithm; the
/// ECDSA OID 1.2.840.10045.2.1 in DER).
fn is_ecdsa(cert: &t::Certificate) -> bool {
    const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    cert.key_format == t::KeyFormat::Pkcs8
        && cert.key.windows(EC_PUBLIC_KEY.len()).take(32).any(|w| w == EC_PUBLIC_KEY)
}

/// A Gateway's client-certificate validation for one port (`spec.tls.frontend`: the
/// `perPort` entry for it, else `default`), resolved: `None` when none is asked for.
pub(super) type Frontend = Option<Result<t::ClientValidation, Why>>;

impl<'m> Compiler<'m> {
    /// Resolves the frontend validation `gw` asks for on `port`: CA bundles from ConfigMaps
    /// (`ca.crt`, PEM), across namespaces only with a ReferenceGrant.
    pub(super) fn frontend_validation(&self, gw: &Gateway, port: u16) -> Frontend {
        let frontend = gw.spec.tls.as_ref()?.frontend.as_ref()?;
        let per_port = frontend
            .per_port
            .iter()
            .flatten()
            .find(|p| p.port == i32::from(port))
            .and_then(|p| p.tls.validation.as_ref());
        type Ref<'a> = (&'a str, &'a str, Option<&'a str>, &'a str);
        let (refs, insecure): (Vec<Ref<'_>>, bool) = match per_port {
            Some(v) => (
                v.ca_certificate_refs
                    .iter()
                    .map(|r| {
                        (r.group.as_str(), r.kind.as_str(), r.namespace.as_deref(), r.name.as_str())
                    })
                    .collect(),
                v.mode == Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback),
            ),
            None => {
                let v = frontend.default.validation.as_ref()?;
                (
                    v.ca_certificate_refs
                        .iter()
                        .map(|r| {
                            (
                                r.group.as_str(),
                                r.kind.as_str(),
                                r.namespace.as_deref(),
                                r.name.as_str(),
                            )
                        })
                        .collect(),
                    v.mode == Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback),
                )
            }
        };
        let gw_ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        let mut roots = Vec::new();
        for (group, kind, namespace, name) in refs {
            let namespace = namespace.unwrap_or(gw_ns);
            let key = Key::new(namespace, name);
            if !group.is_empty() || kind != "ConfigMap" {
                let what =
                    if group.is_empty() { kind.to_owned() } else { format!("{group}/{kind}") };
                return Some(Err((
                    Reason::InvalidCACertificateKind,
                    format!(
                        "caCertificateRef {key}: {what} is not supported (core ConfigMap only)"
                    ),
                )));
            }
            if namespace != gw_ns
                && !self.grant_allows(("Gateway", gw_ns), (namespace, "ConfigMap", name))
            {
                return Some(Err((
                    Reason::RefNotPermitted,
                    format!(
                        "no ReferenceGrant in {namespace} allows Gateways from {gw_ns} to ConfigMap {name}"
                    ),
                )));
            }
            let Some(map) = self.model.config_maps.get(&key) else {
                return Some(Err((
                    Reason::InvalidCACertificateRef,
                    format!("ConfigMap {key} not found"),
                )));
            };
            let pem = map.data.as_ref().and_then(|d| d.get("ca.crt"));
            let Some(pem) = pem else {
                return Some(Err((
                    Reason::InvalidCACertificateRef,
                    format!("ConfigMap {key} has no ca.crt"),
                )));
            };
            let certs: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
            let mut store = rustls::RootCertStore::empty();
            match certs {
                Ok(certs) if !certs.is_empty() => {
                    for c in certs {
                        if store.add(c.clone()).is_err() {
                            return Some(Err((
                                Reason::InvalidCACertificateRef,
                                format!(
                                    "ConfigMap {key}: ca.crt holds a certificate that is not a usable CA"
                                ),
                            )));
                        }
                        roots.push(c.as_ref().to_vec());
                    }
                }
                _ => {
                    return Some(Err((
                        Reason::InvalidCACertificateRef,
                        format!("ConfigMap {key}: ca.crt is not PEM certificates"),
                    )));
                }
            }
        }
        if roots.is_empty() {
            return Some(Err((Reason::InvalidCACertificateRef, "no caCertificateRefs".to_owned())));
        }
        Some(Ok(t::ClientValidation { roots, insecure_fallback: insecure }))
    }
}
