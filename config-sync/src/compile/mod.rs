//! Resolution and compilation: the [`Model`] in, one [`Table`] and the status of every object we
//! own out. Everything the Gateway API spec decides is decided here, once per change, so that
//! lb only does first-match lookups:
//!
//! - which GatewayClasses are ours (`controllerName`), which Gateways use them;
//! - listener validity and conflicts (same address, port and hostname);
//! - route attachment per parentRef (sectionName, port, allowedRoutes namespaces and kinds,
//!   hostname intersection) with the spec's reasons when it fails;
//! - backend resolution (kind, ReferenceGrant, Service and port, ready endpoints);
//! - rule precedence: per listener and effective hostname, matches sorted by the spec's order,
//!   with a fallback chain to less specific hostnames.

// In the order compilation runs (rustfmt keeps it: `reorder_modules = false`).
mod gateways;
mod certificates;
pub(crate) mod attach;
mod backends;
mod filters;
mod checks;
mod assemble;
mod incremental;
mod patch;
pub(crate) mod conditions;

use self::incremental::{Asked, OwnedBackendRef, Recorder, RouteObject};
pub use self::incremental::{Incremental, Reuse};
use self::{assemble::*, backends::*, checks::*, conditions::*, filters::*, gateways::*};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use gateway_api::apis::experimental::gatewayclasses::{
    GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use gateway_api::apis::experimental::gateways::{
    Gateway, GatewayListenersAllowedRoutesKinds,
    GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayListenersTlsCertificateRefs,
    GatewayListenersTlsMode, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds, GatewayTlsFrontendDefaultValidationMode,
    GatewayTlsFrontendPerPortTlsValidationMode,
};
use gateway_api::apis::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefsFiltersType,
    HttpRouteRulesFiltersCors, HttpRouteRulesFiltersExtensionRef,
    HttpRouteRulesFiltersRequestMirror, HttpRouteRulesFiltersRequestRedirect,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewrite,
    HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry, HttpRouteStatus,
    HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use table::format as t;

use crate::model::{GATEWAY_GROUP, Key, Kind, Model, ObjectId, SLUICE_GROUP, grant_permits};

/// Gateway API features Sluice implements, as GatewayClass `status.supportedFeatures` reports
/// them (sorted, as the spec asks). The conformance runner claims exactly these.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayFrontendClientCertificateValidation",
    "GatewayFrontendClientCertificateValidationInsecureFallback",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// The Gateway API release whose semantics Sluice implements.
pub(crate) const GATEWAY_API_VERSION: &str = "v1.6.1";

/// What compilation needs besides the objects.
#[derive(Debug, Clone)]
pub struct Settings {
    /// GatewayClasses with this `controllerName` are ours.
    pub controller_name: String,
    /// Address lb binds when a Gateway names none (reported in Gateway status).
    pub default_address: Option<IpAddr>,
    /// Gives each Gateway that names no address its own address from this range instead of
    /// `default_address`, so Gateways with the same listener ports do not share sockets.
    pub address_pool: Option<AddressPool>,
    /// Whether lb can use a static Gateway address on this node (`None`: every address is).
    /// One it cannot is left out of the table and reported as `Programmed=False`,
    /// `AddressNotUsable`.
    pub address_usable: Option<fn(IpAddr) -> bool>,
    /// Listeners lb reported it could not bind (`<segment>.listeners`): their port stays in
    /// the table (lb retries) but the listener and its Gateway say `Programmed=False`,
    /// `Pending`, with lb's error.
    pub bind_failures: BTreeMap<table::shm::BindKey, String>,
    /// The last valid certificate of each Secret an HTTPS listener used, from the previous
    /// compilation: served while the Secret is malformed (`certificates`).
    pub last_good: BTreeMap<Key, t::Certificate>,
}

/// Whether this node can listen on `ip` (it is one of its addresses): a bind to port 0.
pub(crate) fn bindable(ip: IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

/// An IPv4 range Gateways without `spec.addresses` get their address from: one per Gateway,
/// chosen from a hash of its namespace and name (stable while other Gateways come and go; a
/// collision moves the later Gateway to the next free address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPool {
    first: u32,
    size: u32,
}

impl AddressPool {
    /// Parses `a.b.c.d/len` (IPv4; the network and broadcast addresses are not handed out for
    /// prefixes up to /30).
    pub fn parse(cidr: &str) -> Result<AddressPool, String> {
        let bad = || format!("{cidr:?} is not an IPv4 range such as 127.10.0.0/16");
        let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(8..=32).contains(&len) {
            return Err(bad());
        }
        let span = 1u64 << (32 - len);
        let network = u32::from(ip) & !((span - 1) as u32);
        let (first, size) =
            if span >= 4 { (network + 1, (span - 2) as u32) } else { (network, span as u32) };
        Ok(AddressPool { first, size })
    }

    fn pick(&self, key: &Key, taken: &BTreeSet<u32>) -> Option<IpAddr> {
        // FNV-1a: stable across builds and platforms, unlike the std hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in key.namespace.bytes().chain([b'/']).chain(key.name.bytes()) {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        (0..self.size)
            .map(|i| self.first + (h.wrapping_add(i)) % self.size)
            .find(|a| !taken.contains(a))
            .map(|a| IpAddr::V4(a.into()))
    }
}

/// The output of one compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The table (generation 0; the publisher assigns one).
    pub table: t::Table,
    /// Status per owned object, with the object's generation.
    pub status: Statuses,
    /// The certificates this table serves, by Secret: the next compilation's
    /// [`Settings::last_good`].
    pub last_good: BTreeMap<Key, t::Certificate>,
    /// `None`: `status` holds every object's status (an object not in it has none). `Some`: the
    /// table was patched ([`Incremental`]) and `status` holds only the statuses that may have
    /// changed; every other object keeps its last one, except these, which lost theirs.
    pub gone: Option<Vec<ObjectId>>,
}

/// Status per owned object with the generation it was computed for. Shared: a route replayed
/// by [`Incremental`] hands over the same status object as last time, which the status writer
/// recognises by address without comparing it.
pub type Statuses = BTreeMap<ObjectId, (Option<i64>, Arc<ObjectStatus>)>;

/// The status an object gets.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectStatus {
    /// GatewayClass status.
    GatewayClass(GatewayClassStatus),
    /// Gateway status.
    Gateway(GatewayStatus),
    /// HTTPRoute status (only the parent entries Sluice owns).
    HttpRoute(HttpRouteStatus),
    /// GRPCRoute status: the same shape as HTTPRoute's (`RouteStatus` in the spec).
    GrpcRoute(HttpRouteStatus),
}

impl ObjectStatus {
    /// All conditions of the status, for carrying `lastTransitionTime` over.
    pub fn conditions_mut(&mut self) -> Vec<&mut Vec<Condition>> {
        match self {
            ObjectStatus::GatewayClass(s) => s.conditions.iter_mut().collect(),
            ObjectStatus::Gateway(s) => {
                let mut all: Vec<&mut Vec<Condition>> = s.conditions.iter_mut().collect();
                all.extend(s.listeners.iter_mut().flatten().map(|l| &mut l.conditions));
                all
            }
            ObjectStatus::HttpRoute(s) | ObjectStatus::GrpcRoute(s) => {
                s.parents.iter_mut().map(|p| &mut p.conditions).collect()
            }
        }
    }
}

/// Compiles `model`.
pub fn compile(model: &Model, settings: &Settings) -> Compiled {
    let mut c = Compiler::new(model, settings);
    c.classes();
    c.gateways();
    c.routes();
    c.finish()
}

struct ListenerInfo<'m> {
    gateway: &'m Key,
    name: &'m str,
    port: u16,
    /// HTTPS: the port terminates TLS.
    tls: bool,
    /// Table indices of its certificates (HTTPS).
    certificates: Vec<u32>,
    /// Client-certificate validation of its port (HTTPS, Gateway `spec.tls.frontend`).
    client_validation: Option<t::ClientValidation>,
    hostname: Option<&'m str>,
    addresses: Vec<Option<IpAddr>>,
    allowed: AllowedNamespaces<'m>,
    /// Route kinds it accepts (allowedRoutes.kinds, else both).
    allowed_kinds: Vec<RouteKind>,
    /// Effective hostnames of the routes attached so far, by kind: an HTTPRoute and a GRPCRoute
    /// may not share a hostname on one listener (the older one wins).
    attached_hosts: [attach::AttachedHosts<'m>; 2],
    supported_kinds: Vec<&'static str>,
    conditions: Vec<Condition>,
    /// Accepts routes and gets programmed.
    usable: bool,
    /// lb could not bind it: why.
    bind_failed: Option<String>,
    attached: i32,
    /// Route matches per effective hostname ("" = any).
    vhosts: BTreeMap<String, Vec<Entry<'m>>>,
}

enum AllowedNamespaces<'m> {
    Same,
    All,
    Selector(&'m gateway_api::apis::experimental::gateways::GatewayListenersAllowedRoutesNamespacesSelector),
}

/// The route kinds Sluice serves (both compile to the same route table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
}

impl RouteKind {
    /// The kind's name in the API.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// The model's kind of such routes.
    pub(crate) fn object_kind(self) -> Kind {
        match self {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        }
    }
}

/// One route match on its way into a virtual host, with the spec's precedence key.
struct Entry<'m> {
    key: SortKey<&'m str>,
    m: t::RouteMatch,
    /// Numbered as entries are added (`Compiler::origin`): where each one lands in the table's
    /// matches is reported by number (`Compiler::finish_landing`).
    origin: u32,
}

/// The spec's precedence of a match, then the route's name (`N`: `&str`; `()` where the name is
/// supplied later, `compile::incremental`), rule and match index.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey<N> {
    /// Exact (0) before RegularExpression (1) before PathPrefix (2): regex order is
    /// implementation-specific; before prefixes keeps a rule-less `/` from shadowing it.
    path_kind: u8,
    path_len: Reverse<usize>,
    has_method: Reverse<bool>,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// Routes without creationTimestamp sort after those with one.
    created: (bool, i64, i32),
    namespace: N,
    name: N,
    rule: usize,
    index: usize,
}

impl<N> SortKey<N> {
    /// The same key with another name (`()`: without one, kept by `compile::incremental`).
    fn renamed<M>(&self, namespace: M, name: M) -> SortKey<M> {
        SortKey {
            path_kind: self.path_kind,
            path_len: self.path_len,
            has_method: self.has_method,
            headers: self.headers,
            query: self.query,
            created: self.created,
            namespace,
            name,
            rule: self.rule,
            index: self.index,
        }
    }
}

struct Compiler<'m> {
    model: &'m Model,
    settings: &'m Settings,
    status: Statuses,
    classes: BTreeSet<&'m str>,
    listeners: Vec<ListenerInfo<'m>>,
    /// Keyed by (namespace, name) so a route's parentRef looks its Gateway up without
    /// allocating a `Key`.
    gateway_listeners: BTreeMap<(&'m str, &'m str), (&'m Key, Vec<usize>)>,
    actions: t::Paged<t::Action>,
    services: t::Paged<t::Service>,
    /// By the Service object's address, port and protocol.
    service_index: HashMap<(usize, i32, t::UpstreamProtocol), u32, foldhash::fast::RandomState>,
    /// The kind of the route being compiled.
    route_kind: RouteKind,
    regexes: t::Paged<String>,
    regex_index: HashMap<String, u32, foldhash::fast::RandomState>,
    /// Bind addresses per Gateway (`None`: lb's default).
    gateway_addresses: HashMap<&'m Key, Vec<Option<IpAddr>>>,
    /// Static addresses of a Gateway this node cannot listen on.
    unusable_addresses: HashMap<&'m Key, Vec<IpAddr>>,
    /// Certificates for the table, one per Secret.
    certificates: Vec<t::Certificate>,
    /// Secret → (index in `certificates`, its key is ECDSA).
    certificate_index: HashMap<Key, (u32, bool)>,
    /// Secrets served from their last valid version, and why.
    certificate_problems: HashMap<Key, Why>,
    /// What [`Compiled::last_good`] will say.
    last_good: BTreeMap<Key, t::Certificate>,
    /// Gateways whose frontend validation lets clients without a valid certificate in.
    insecure_frontend: BTreeSet<&'m Key>,
    /// What the route being compiled asks and does, when [`Incremental`] keeps it.
    recording: Recorder,
    /// EndpointSlices by Service, made when the first Service is resolved.
    slices: Option<SlicesByService<'m>>,
    /// Entries added so far (the next one's [`Entry::origin`]).
    origins: u32,
}

impl<'m> Compiler<'m> {
    fn new(model: &'m Model, settings: &'m Settings) -> Self {
        Compiler {
            model,
            settings,
            status: BTreeMap::new(),
            classes: BTreeSet::new(),
            listeners: Vec::new(),
            gateway_listeners: BTreeMap::new(),
            actions: t::Paged::new(),
            services: t::Paged::new(),
            service_index: HashMap::default(),
            route_kind: RouteKind::Http,
            regexes: t::Paged::new(),
            regex_index: HashMap::default(),
            gateway_addresses: HashMap::new(),
            unusable_addresses: HashMap::new(),
            certificates: Vec::new(),
            certificate_index: HashMap::new(),
            certificate_problems: HashMap::new(),
            last_good: BTreeMap::new(),
            insecure_frontend: BTreeSet::new(),
            recording: Recorder::default(),
            slices: None,
            origins: 0,
        }
    }
}

#[cfg(test)]
mod tests;
