//! The object model: Gateway API and core objects, parsed from documents into the typed structs
//! of the `gateway-api` and `k8s-openapi` crates, plus the checks the API server would make at
//! admission (so a file can never carry an object a cluster would have refused).
//!
//! Sits between `watch` (which finds documents) and `compile` (which resolves them).

pub(crate) mod grpc;
pub(crate) mod limits;
pub(crate) mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use gateway_api::apis::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub(crate) use self::grpc::GrpcRoute;

/// Gateway API group.
pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Sluice's own API group (filters an HTTPRoute names through `extensionRef`).
pub(crate) const SLUICE_GROUP: &str = "gateway.sluice.dev";

/// A Sluice filter (`gateway.sluice.dev/v1alpha1`, kind `ClientCertificateHeader`) that an
/// HTTPRoute rule names through an `ExtensionRef` filter: the field that carries the TLS
/// client's verified certificate to the backend instead of `X-Forwarded-Client-Cert`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientCertificateHeader {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// What to send.
    pub spec: ClientCertificateHeaderSpec,
}

/// `ClientCertificateHeader.spec`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificateHeaderSpec {
    /// The field name (a token lb does not own, e.g. `X-Client-Subject`).
    pub header: String,
    /// What the field says; `XFCC` when omitted.
    #[serde(default)]
    pub value: ClientCertificateValue,
}

/// `ClientCertificateHeader.spec.value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ClientCertificateValue {
    /// `Hash=<sha256 hex>;Subject="<RFC 4514>"` (Envoy's `X-Forwarded-Client-Cert` element).
    #[default]
    #[serde(rename = "XFCC")]
    Xfcc,
    /// The subject distinguished name (RFC 4514).
    Subject,
    /// SHA-256 of the certificate, lower-case hex.
    Hash,
    /// The DER certificate as `:base64:` (RFC 9440 `Client-Cert`).
    Certificate,
}

/// Kinds config-sync reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// gateway.networking.k8s.io GatewayClass (cluster-scoped).
    GatewayClass,
    /// gateway.networking.k8s.io Gateway.
    Gateway,
    /// gateway.networking.k8s.io HTTPRoute.
    HttpRoute,
    /// gateway.networking.k8s.io GRPCRoute.
    GrpcRoute,
    /// gateway.networking.k8s.io ReferenceGrant.
    ReferenceGrant,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 Namespace (cluster-scoped; read for its labels).
    Namespace,
    /// core/v1 Secret (TLS certificates and keys of HTTPS listeners).
    Secret,
    /// core/v1 ConfigMap (CA bundles for client-certificate validation).
    ConfigMap,
    /// gateway.sluice.dev ClientCertificateHeader (an HTTPRoute `ExtensionRef` filter).
    ClientCertificateHeader,
}

impl Kind {
    /// The `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::ClientCertificateHeader => "ClientCertificateHeader",
        }
    }

    /// The `apiVersion` status output uses for this kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::GatewayClass
            | Kind::Gateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::ReferenceGrant => "gateway.networking.k8s.io/v1",
            Kind::Service | Kind::Namespace | Kind::Secret | Kind::ConfigMap => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ClientCertificateHeader => "gateway.sluice.dev/v1alpha1",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Kind::GatewayClass | Kind::Namespace)
    }

    /// Recognises a kind from its `apiVersion` and `kind`; `None` for kinds we do not read.
    pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let k = match (group, kind) {
            (GATEWAY_GROUP, "GatewayClass") => Kind::GatewayClass,
            (GATEWAY_GROUP, "Gateway") => Kind::Gateway,
            (GATEWAY_GROUP, "HTTPRoute") => Kind::HttpRoute,
            (GATEWAY_GROUP, "GRPCRoute") => Kind::GrpcRoute,
            (GATEWAY_GROUP, "ReferenceGrant") => Kind::ReferenceGrant,
            ("", "Service") => Kind::Service,
            ("discovery.k8s.io", "EndpointSlice") => Kind::EndpointSlice,
            ("", "Namespace") => Kind::Namespace,
            ("", "Secret") => Kind::Secret,
            ("", "ConfigMap") => Kind::ConfigMap,
            (SLUICE_GROUP, "ClientCertificateHeader") => Kind::ClientCertificateHeader,
            _ => return None,
        };
        Some(k)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a namespaced object (namespace empty for cluster-scoped ones).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A namespaced key.
    pub fn new(namespace: &str, name: &str) -> Key {
        Key { namespace: namespace.to_owned(), name: name.to_owned() }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Identity of an object: kind plus key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// Kind.
    pub kind: Kind,
    /// Namespace and name.
    pub key: Key,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.key)
    }
}

/// A parsed object of one of the kinds we read.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A GatewayClass.
    GatewayClass(Arc<GatewayClass>),
    /// A Gateway.
    Gateway(Arc<Gateway>),
    /// An HTTPRoute.
    HttpRoute(Arc<HttpRoute>),
    /// A GRPCRoute (with the HTTPRoute it compiles as).
    GrpcRoute(Arc<GrpcRoute>),
    /// A ReferenceGrant.
    ReferenceGrant(Arc<ReferenceGrant>),
    /// A Service.
    Service(Arc<Service>),
    /// An EndpointSlice.
    EndpointSlice(Arc<EndpointSlice>),
    /// A Namespace.
    Namespace(Arc<Namespace>),
    /// A Secret (its data never appears in a log, a status or an error).
    Secret(Arc<Secret>),
    /// A ConfigMap.
    ConfigMap(Arc<ConfigMap>),
    /// A Sluice ClientCertificateHeader filter.
    ClientCertificateHeader(Arc<ClientCertificateHeader>),
}

impl Object {
    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::GatewayClass(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::GrpcRoute(o) => &o.route.metadata,
            Object::ReferenceGrant(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::ClientCertificateHeader(o) => &o.metadata,
        }
    }

    /// Mutable metadata (copies the object first if it is shared).
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::GatewayClass(o) => &mut Arc::make_mut(o).metadata,
            Object::Gateway(o) => &mut Arc::make_mut(o).metadata,
            Object::HttpRoute(o) => &mut Arc::make_mut(o).metadata,
            Object::GrpcRoute(o) => &mut Arc::make_mut(o).route.metadata,
            Object::ReferenceGrant(o) => &mut Arc::make_mut(o).metadata,
            Object::Service(o) => &mut Arc::make_mut(o).metadata,
            Object::EndpointSlice(o) => &mut Arc::make_mut(o).metadata,
            Object::Namespace(o) => &mut Arc::make_mut(o).metadata,
            Object::Secret(o) => &mut Arc::make_mut(o).metadata,
            Object::ConfigMap(o) => &mut Arc::make_mut(o).metadata,
            Object::ClientCertificateHeader(o) => &mut Arc::make_mut(o).metadata,
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Namespace(_) => Kind::Namespace,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
            Object::ClientCertificateHeader(_) => Kind::ClientCertificateHeader,
        }
    }

    /// Kind, namespace and name.
    pub fn id(&self) -> ObjectId {
        let m = self.meta();
        ObjectId {
            kind: self.kind(),
            key: Key {
                namespace: m.namespace.clone().unwrap_or_default(),
                name: m.name.clone().unwrap_or_default(),
            },
        }
    }

    /// A value that changes exactly when the object's desired state (spec, and for Namespaces
    /// and Services their labels and ports) changes; drives `metadata.generation` in file
    /// mode.
    pub fn spec_fingerprint(&self) -> String {
        let v = match self {
            Object::GatewayClass(o) => serde_json::to_string(&o.spec),
            Object::Gateway(o) => serde_json::to_string(&o.spec),
            Object::HttpRoute(o) => serde_json::to_string(&o.spec),
            Object::GrpcRoute(o) => serde_json::to_string(&o.route.spec),
            Object::ReferenceGrant(o) => serde_json::to_string(&o.spec),
            Object::Service(o) => serde_json::to_string(&o.spec),
            Object::EndpointSlice(o) => serde_json::to_string(&(&o.endpoints, &o.ports)),
            Object::Namespace(o) => serde_json::to_string(&o.metadata.labels),
            // A digest, not the data: fingerprints are compared and may be kept, never a key.
            Object::Secret(o) => Ok(digest(&(&o.type_, &o.data, &o.string_data))),
            Object::ConfigMap(o) => serde_json::to_string(&(&o.data, &o.binary_data)),
            Object::ClientCertificateHeader(o) => serde_json::to_string(&o.spec),
        };
        v.unwrap_or_default()
    }

    /// Sets `metadata.generation` when the document did not carry one.
    pub fn set_generation(&mut self, generation: i64) {
        self.meta_mut().generation = Some(generation);
        if let Object::GrpcRoute(o) = self {
            Arc::make_mut(o).sync_metadata();
        }
    }
}

/// Why a document did not become an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}{field}: {reason}")]
pub struct ObjectError {
    /// `Kind namespace/name` as far as it could be read, or `document`.
    pub object: String,
    /// ` field a.b[0].c` when the error is at a field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
    /// Identity, when kind and name could be read (lets the caller keep the last valid version).
    pub id: Option<ObjectId>,
}

/// Parses one document (already converted to JSON values). `Ok(None)` for kinds we do not
/// read. `List` documents yield their items.
#[allow(clippy::result_large_err, reason = "errors are rare and reported, not propagated far")]
pub fn parse_document(doc: Value) -> Vec<Result<Option<Object>, ObjectError>> {
    if doc.get("kind").and_then(Value::as_str) == Some("List") {
        return match doc.get("items").and_then(Value::as_array) {
            Some(items) => items.iter().cloned().map(parse_object).collect(),
            None => vec![Ok(None)],
        };
    }
    vec![parse_object(doc)]
}

#[allow(clippy::result_large_err, reason = "errors are rare and reported, not propagated far")]
fn parse_object(mut doc: Value) -> Result<Option<Object>, ObjectError> {
    if doc.is_null() {
        return Ok(None);
    }
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_owned();
    let kind_str = doc.get("kind").and_then(Value::as_str).unwrap_or("").to_owned();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned);
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned);
    let label = match (&name, &namespace) {
        (Some(n), Some(ns)) => format!("{kind_str} {ns}/{n}"),
        (Some(n), None) => format!("{kind_str} {n}"),
        _ if kind_str.is_empty() => "document".to_owned(),
        _ => kind_str.clone(),
    };
    let err = |field: &str, reason: String, id: Option<ObjectId>| ObjectError {
        object: label.clone(),
        field: if field.is_empty() { String::new() } else { format!(" field {field}") },
        reason,
        id,
    };
    if !doc.is_object() {
        return Err(err("", "document is not a mapping".into(), None));
    }
    if api_version.is_empty() || kind_str.is_empty() {
        return Err(err("", "apiVersion and kind are required".into(), None));
    }
    let Some(kind) = Kind::of(&api_version, &kind_str) else { return Ok(None) };
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(err("metadata.name", "required".into(), None));
    };
    if let Err(reason) = check_dns_subdomain(&name) {
        return Err(err("metadata.name", reason, None));
    }
    let namespace = if kind.namespaced() {
        let ns = namespace.unwrap_or_else(|| "default".to_owned());
        if let Err(reason) = check_dns_label(&ns) {
            return Err(err("metadata.namespace", reason, None));
        }
        ns
    } else {
        String::new()
    };
    let id = ObjectId { kind, key: Key { namespace: namespace.clone(), name } };
    // The typed structs know one apiVersion; v1beta1 Gateway API objects share the v1 schema
    // for everything we read, so parse them under the canonical version.
    if let Some(map) = doc.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(kind.api_version().into()));
        if kind.namespaced()
            && let Some(Value::Object(meta)) = map.get_mut("metadata")
        {
            meta.insert("namespace".into(), Value::String(namespace));
        }
        // Status in a manifest is not ours to read back.
        map.remove("status");
    }
    // The CRD schema's size and range limits, as the API server would enforce them.
    limits::check(kind, &doc).map_err(|(field, reason)| err(&field, reason, Some(id.clone())))?;
    let object = match kind {
        Kind::GatewayClass => typed(doc).map(|o| Object::GatewayClass(Arc::new(o))),
        Kind::Gateway => typed(doc).map(|o| Object::Gateway(Arc::new(o))),
        Kind::HttpRoute => typed(doc).map(|o| Object::HttpRoute(Arc::new(o))),
        Kind::GrpcRoute => {
            typed(doc).and_then(GrpcRoute::new).map(|o| Object::GrpcRoute(Arc::new(o)))
        }
        Kind::ReferenceGrant => typed(doc).map(|o| Object::ReferenceGrant(Arc::new(o))),
        Kind::Service => typed(doc).map(|o| Object::Service(Arc::new(o))),
        Kind::EndpointSlice => typed(doc).map(|o| Object::EndpointSlice(Arc::new(o))),
        Kind::Namespace => typed(doc).map(|o| Object::Namespace(Arc::new(o))),
        Kind::Secret => typed(doc)
            .map(|o| Object::Secret(Arc::new(o)))
            // serde's message may quote the value it could not read: say only where.
            .map_err(|(field, _)| (field, "not a valid Secret field (value not shown)".to_owned())),
        Kind::ConfigMap => typed(doc).map(|o| Object::ConfigMap(Arc::new(o))),
        Kind::ClientCertificateHeader => {
            typed(doc).map(|o| Object::ClientCertificateHeader(Arc::new(o)))
        }
    }
    .map_err(|(field, reason)| err(&field, reason, Some(id.clone())))?;
    validate::object(&object).map_err(|(field, reason)| err(&field, reason, Some(id)))?;
    Ok(Some(object))
}

/// A stable 64-bit digest (FNV-1a over the JSON form) that tells contents apart without
/// carrying them.
fn digest<T: serde::Serialize>(value: &T) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn typed<T: DeserializeOwned>(doc: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        (field, e.into_inner().to_string())
    })
}

/// Whether ReferenceGrant `g` (which must be in the target's namespace) lets `from_kind`
/// objects (Gateway API group) of namespace `from_ns` refer to the core `to_kind` object
/// `name`. The one reading of a grant: routes to Services, Gateways to Secrets and ConfigMaps,
/// in compilation and in what the Kubernetes source watches.
pub(crate) fn grant_permits(
    g: &ReferenceGrant,
    from_kind: &str,
    from_ns: &str,
    to_kind: &str,
    name: &str,
) -> bool {
    g.spec
        .from
        .iter()
        .any(|f| f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_ns)
        && g.spec.to.iter().any(|t| {
            t.group.is_empty() && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == name)
        })
}

/// RFC 1123 subdomain, as Kubernetes requires of most names (`table::wire`).
pub(crate) fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if table::wire::is_dns_subdomain(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a lower-case RFC 1123 subdomain"))
    }
}

/// RFC 1123 label (namespaces; `table::wire`).
pub(crate) fn check_dns_label(s: &str) -> Result<(), String> {
    if table::wire::is_dns_label(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a lower-case RFC 1123 label"))
    }
}

/// All objects of one source, by kind, keyed by namespace/name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    /// GatewayClasses (key namespace empty).
    pub gateway_classes: BTreeMap<Key, Arc<GatewayClass>>,
    /// Gateways.
    pub gateways: BTreeMap<Key, Arc<Gateway>>,
    /// HTTPRoutes.
    pub http_routes: BTreeMap<Key, Arc<HttpRoute>>,
    /// GRPCRoutes.
    pub grpc_routes: BTreeMap<Key, Arc<GrpcRoute>>,
    /// ReferenceGrants.
    pub reference_grants: BTreeMap<Key, Arc<ReferenceGrant>>,
    /// Services.
    pub services: BTreeMap<Key, Arc<Service>>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeMap<Key, Arc<EndpointSlice>>,
    /// Namespaces (key namespace empty).
    pub namespaces: BTreeMap<Key, Arc<Namespace>>,
    /// Secrets (in Kubernetes mode only those listeners reference).
    pub secrets: BTreeMap<Key, Arc<Secret>>,
    /// ConfigMaps (in Kubernetes mode only those listeners reference).
    pub config_maps: BTreeMap<Key, Arc<ConfigMap>>,
    /// ClientCertificateHeader filters (in Kubernetes mode only those routes reference).
    pub client_cert_headers: BTreeMap<Key, Arc<ClientCertificateHeader>>,
}

impl Model {
    /// Adds an object, replacing one with the same identity.
    pub fn insert(&mut self, object: Object) {
        let key = object.id().key;
        match object {
            Object::GatewayClass(o) => drop(self.gateway_classes.insert(key, o)),
            Object::Gateway(o) => drop(self.gateways.insert(key, o)),
            Object::HttpRoute(o) => drop(self.http_routes.insert(key, o)),
            Object::GrpcRoute(o) => drop(self.grpc_routes.insert(key, o)),
            Object::ReferenceGrant(o) => drop(self.reference_grants.insert(key, o)),
            Object::Service(o) => drop(self.services.insert(key, o)),
            Object::EndpointSlice(o) => drop(self.endpoint_slices.insert(key, o)),
            Object::Namespace(o) => drop(self.namespaces.insert(key, o)),
            Object::Secret(o) => drop(self.secrets.insert(key, o)),
            Object::ConfigMap(o) => drop(self.config_maps.insert(key, o)),
            Object::ClientCertificateHeader(o) => drop(self.client_cert_headers.insert(key, o)),
        }
    }

    /// Adds an object unless one with the same identity is there; `false` when it was.
    pub fn insert_new(&mut self, object: Object) -> bool {
        use std::collections::btree_map::Entry;
        fn put<T>(map: &mut BTreeMap<Key, Arc<T>>, key: Key, o: Arc<T>) -> bool {
            match map.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(o);
                    true
                }
                Entry::Occupied(_) => false,
            }
        }
        let key = object.id().key;
        match object {
            Object::GatewayClass(o) => put(&mut self.gateway_classes, key, o),
            Object::Gateway(o) => put(&mut self.gateways, key, o),
            Object::HttpRoute(o) => put(&mut self.http_routes, key, o),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, key, o),
            Object::ReferenceGrant(o) => put(&mut self.reference_grants, key, o),
            Object::Service(o) => put(&mut self.services, key, o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, key, o),
            Object::Namespace(o) => put(&mut self.namespaces, key, o),
            Object::Secret(o) => put(&mut self.secrets, key, o),
            Object::ConfigMap(o) => put(&mut self.config_maps, key, o),
            Object::ClientCertificateHeader(o) => put(&mut self.client_cert_headers, key, o),
        }
    }

    /// Removes the object with this identity (if present).
    pub fn remove(&mut self, id: &ObjectId) {
        let key = &id.key;
        match id.kind {
            Kind::GatewayClass => drop(self.gateway_classes.remove(key)),
            Kind::Gateway => drop(self.gateways.remove(key)),
            Kind::HttpRoute => drop(self.http_routes.remove(key)),
            Kind::GrpcRoute => drop(self.grpc_routes.remove(key)),
            Kind::ReferenceGrant => drop(self.reference_grants.remove(key)),
            Kind::Service => drop(self.services.remove(key)),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(key)),
            Kind::Namespace => drop(self.namespaces.remove(key)),
            Kind::Secret => drop(self.secrets.remove(key)),
            Kind::ConfigMap => drop(self.config_maps.remove(key)),
            Kind::ClientCertificateHeader => drop(self.client_cert_headers.remove(key)),
        }
    }

    /// Whether an object with this identity is present.
    pub fn contains(&self, id: &ObjectId) -> bool {
        match id.kind {
            Kind::GatewayClass => self.gateway_classes.contains_key(&id.key),
            Kind::Gateway => self.gateways.contains_key(&id.key),
            Kind::HttpRoute => self.http_routes.contains_key(&id.key),
            Kind::GrpcRoute => self.grpc_routes.contains_key(&id.key),
            Kind::ReferenceGrant => self.reference_grants.contains_key(&id.key),
            Kind::Service => self.services.contains_key(&id.key),
            Kind::EndpointSlice => self.endpoint_slices.contains_key(&id.key),
            Kind::Namespace => self.namespaces.contains_key(&id.key),
            Kind::Secret => self.secrets.contains_key(&id.key),
            Kind::ConfigMap => self.config_maps.contains_key(&id.key),
            Kind::ClientCertificateHeader => self.client_cert_headers.contains_key(&id.key),
        }
    }

    /// Number of objects of all kinds.
    pub fn len(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.reference_grants.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.namespaces.len()
            + self.secrets.len()
            + self.config_maps.len()
            + self.client_cert_headers.len()
    }

    /// `true` when there are no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    #[test]
    fn parses_v1beta1_reference_grant_and_defaults_namespace() {
        let out = parse_document(yaml(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: a}]\n  to: [{group: '', kind: Service}]\n",
        ));
        let obj = out.into_iter().next().unwrap().unwrap().unwrap();
        assert_eq!(obj.id().to_string(), "ReferenceGrant default/g");
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let out =
            parse_document(yaml("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"));
        assert!(matches!(out[0], Ok(None)));
    }

    #[test]
    fn field_errors_name_the_field() {
        let out = parse_document(yaml(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: ns}\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: http\n    port: eighty\n    protocol: HTTP\n",
        ));
        let e = out.into_iter().next().unwrap().unwrap_err();
        assert_eq!(e.object, "Gateway ns/gw");
        assert_eq!(e.field, " field spec.listeners[0].port");
        assert!(e.id.is_some());
    }

    #[test]
    fn lists_are_flattened() {
        let out = parse_document(yaml(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n",
        ));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn missing_name_is_an_error() {
        let out = parse_document(yaml("apiVersion: v1\nkind: Service\nmetadata: {}\n"));
        assert_eq!(out[0].as_ref().unwrap_err().field, " field metadata.name");
    }
}
