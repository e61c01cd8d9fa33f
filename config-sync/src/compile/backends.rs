//! Backend resolution: kinds, ReferenceGrants, Services and their ports, ready endpoints
//! (EndpointSlices); a reference that cannot be resolved becomes the spec's 500 share.

use super::*;

impl<'m> Compiler<'m> {
    pub(super) fn resolve_backend(
        &mut self,
        route_key: &Key,
        b: BackendRef<'_>,
    ) -> Result<u32, Why> {
        let resolved = self.resolve_service(route_key, b);
        self.note(|r| {
            let answer = resolved.as_ref().map(|&index| r.service(index)).map_err(Clone::clone);
            r.asked(Asked::Backend { backend: OwnedBackendRef::of(b), answer });
        });
        resolved
    }

    fn resolve_service(&mut self, route_key: &Key, b: BackendRef<'_>) -> Result<u32, Why> {
        let group = b.group.unwrap_or("");
        let kind = b.kind.unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            return Err((
                Reason::InvalidKind,
                format!("backend kind {group}/{kind} is not supported"),
            ));
        }
        let namespace = b.namespace.unwrap_or(&route_key.namespace);
        let route_kind = self.route_kind.name();
        if namespace != route_key.namespace
            && !self
                .grant_allows((route_kind, &route_key.namespace), (namespace, "Service", b.name))
        {
            return Err((
                Reason::RefNotPermitted,
                format!(
                    "no ReferenceGrant in {namespace} allows {route_kind}s from {} to Service {}",
                    route_key.namespace, b.name
                ),
            ));
        }
        let service_key = Key::new(namespace, b.name);
        let Some(service) = self.model.services.get(&service_key) else {
            return Err((Reason::BackendNotFound, format!("Service {service_key} not found")));
        };
        let port = b.port.unwrap_or(0);
        let Some(service_port) =
            service.spec.iter().flat_map(|s| s.ports.iter().flatten()).find(|p| p.port == port)
        else {
            return Err((
                Reason::BackendNotFound,
                format!("Service {service_key} has no port {port}"),
            ));
        };
        let protocol = match (self.route_kind, service_port.app_protocol.as_deref()) {
            // GRPCRoute backends speak gRPC, which is HTTP/2 (cleartext until upstream TLS).
            (RouteKind::Grpc, _) => t::UpstreamProtocol::H2c,
            (_, Some("kubernetes.io/h2c")) => t::UpstreamProtocol::H2c,
            // GEP-1911: a protocol lb cannot speak makes the reference invalid.
            (_, Some(p @ ("https" | "kubernetes.io/wss"))) => {
                return Err((
                    Reason::UnsupportedProtocol,
                    format!(
                        "Service {service_key} port {port} has appProtocol {p}: TLS to backends \
                         is not supported yet"
                    ),
                ));
            }
            // None, `http`, `kubernetes.io/ws` (HTTP/1.1 with Upgrade) and names of other
            // protocols that run over HTTP/1.1.
            _ => t::UpstreamProtocol::Http1,
        };
        let cache_key = (Arc::as_ptr(service) as usize, port, protocol);
        if let Some(&index) = self.service_index.get(&cache_key) {
            return Ok(index);
        }
        let port_name = service_port.name.as_deref().unwrap_or("");
        let mut endpoints = Vec::new();
        let model = self.model;
        let slices = self.slices.get_or_insert_with(|| slices_by_service(model));
        for slice in slices.get(&(namespace, b.name)).into_iter().flatten() {
            let Some(slice_port) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            }) else {
                continue;
            };
            let Some(target_port) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for e in &slice.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        let ep = t::Endpoint { address: ip.into(), port: target_port };
                        if !endpoints.contains(&ep) {
                            endpoints.push(ep);
                        }
                    }
                }
            }
        }
        let index = self.services.len() as u32;
        self.services.push(t::Service {
            name: format!("{service_key}:{port}"),
            protocol,
            endpoints,
        });
        self.service_index.insert(cache_key, index);
        Ok(index)
    }

    /// Whether a ReferenceGrant in `to_ns` lets `from_kind` objects of `from_ns` refer to the
    /// core `to_kind` object `name`.
    pub(super) fn grant_allows(
        &self,
        (from_kind, from_ns): (&str, &str),
        (to_ns, to_kind, name): (&str, &str, &str),
    ) -> bool {
        self.model
            .reference_grants
            .iter()
            .filter(|(k, _)| k.namespace == to_ns)
            .any(|(_, g)| grant_permits(g, from_kind, from_ns, to_kind, name))
    }
}

/// EndpointSlices by the namespace and name of their Service (the `kubernetes.io/service-name`
/// label), in the model's order: one pass instead of a scan of every slice per Service (which
/// made thousands of Services quadratic).
fn slices_by_service(model: &Model) -> SlicesByService<'_> {
    let mut out: SlicesByService<'_> = HashMap::default();
    for slice in model.endpoint_slices.values() {
        let service =
            slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
        if let (Some(ns), Some(service)) = (slice.metadata.namespace.as_deref(), service) {
            out.entry((ns, service.as_str())).or_default().push(slice);
        }
    }
    out
}

pub(super) type SlicesByService<'m> = HashMap<
    (&'m str, &'m str),
    Vec<&'m k8s_openapi::api::discovery::v1::EndpointSlice>,
    foldhash::fast::RandomState,
>;

/// A backend reference, whichever field it came from (backendRefs, a mirror filter).
#[derive(Debug, Clone, Copy)]
pub(super) struct BackendRef<'a> {
    pub(super) group: Option<&'a str>,
    pub(super) kind: Option<&'a str>,
    pub(super) name: &'a str,
    pub(super) namespace: Option<&'a str>,
    pub(super) port: Option<i32>,
}

macro_rules! backend_ref {
    ($b:expr) => {{
        let b = $b;
        BackendRef {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        }
    }};
}
pub(super) use backend_ref;

/// A mirror's sampling rate in parts per million (`percent`, or `fraction`; neither: all).
pub(super) fn mirror_share(m: &HttpRouteRulesFiltersRequestMirror) -> u32 {
    if let Some(f) = &m.fraction {
        let denominator = i64::from(f.denominator.unwrap_or(100).max(1));
        let numerator = i64::from(f.numerator).clamp(0, denominator);
        return (numerator * 1_000_000 / denominator) as u32;
    }
    m.percent.map_or(1_000_000, |p| p.clamp(0, 100) as u32 * 10_000)
}
