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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use gateway_api::apis::experimental::gatewayclasses::{
    GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use gateway_api::apis::experimental::gateways::{
    Gateway, GatewayListenersAllowedRoutesNamespacesFrom as From, GatewayStatus,
    GatewayStatusAddresses, GatewayStatusListeners, GatewayStatusListenersSupportedKinds,
};
use gateway_api::apis::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefsFiltersType,
    HttpRouteRulesFiltersCors, HttpRouteRulesFiltersRequestMirror,
    HttpRouteRulesFiltersRequestRedirect, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewrite, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesMethod,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry,
    HttpRouteStatus, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use table::format as t;

use crate::model::{GATEWAY_GROUP, Key, Kind, Model, ObjectId};

/// Gateway API features Sluice implements, as GatewayClass `status.supportedFeatures` reports
/// them (sorted, as the spec asks). The conformance runner claims exactly these.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayHTTPListenerIsolation",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
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
pub const GATEWAY_API_VERSION: &str = "v1.6.1";

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
}

/// Whether this node can listen on `ip` (it is one of its addresses): a bind to port 0.
pub fn bindable(ip: IpAddr) -> bool {
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
    pub status: BTreeMap<ObjectId, (Option<i64>, ObjectStatus)>,
}

/// The status an object gets.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectStatus {
    /// GatewayClass status.
    GatewayClass(GatewayClassStatus),
    /// Gateway status.
    Gateway(GatewayStatus),
    /// HTTPRoute status (only the parent entries Sluice owns).
    HttpRoute(HttpRouteStatus),
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
            ObjectStatus::HttpRoute(s) => s.parents.iter_mut().map(|p| &mut p.conditions).collect(),
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

/// A status reason and its message.
type Reason = (&'static str, String);

struct ListenerInfo<'m> {
    gateway: &'m Key,
    name: &'m str,
    port: u16,
    hostname: Option<&'m str>,
    addresses: Vec<Option<IpAddr>>,
    allowed: AllowedNamespaces<'m>,
    /// HTTPRoute is among the allowed kinds.
    http_route_allowed: bool,
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

/// One route match on its way into a virtual host, with the spec's precedence key.
struct Entry<'m> {
    key: SortKey<'m>,
    m: t::RouteMatch,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey<'m> {
    /// Exact (0) before RegularExpression (1) before PathPrefix (2): regex order is
    /// implementation-specific; before prefixes keeps a rule-less `/` from shadowing it.
    path_kind: u8,
    path_len: Reverse<usize>,
    has_method: Reverse<bool>,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// Routes without creationTimestamp sort after those with one.
    created: (bool, i64, i32),
    namespace: &'m str,
    name: &'m str,
    rule: usize,
    index: usize,
}

struct Compiler<'m> {
    model: &'m Model,
    settings: &'m Settings,
    status: BTreeMap<ObjectId, (Option<i64>, ObjectStatus)>,
    classes: BTreeSet<&'m str>,
    listeners: Vec<ListenerInfo<'m>>,
    /// Keyed by (namespace, name) so a route's parentRef looks its Gateway up without
    /// allocating a `Key`.
    gateway_listeners: BTreeMap<(&'m str, &'m str), (&'m Key, Vec<usize>)>,
    actions: Vec<t::Action>,
    services: Vec<t::Service>,
    service_index: HashMap<(String, String, i32), u32>,
    regexes: Vec<String>,
    regex_index: HashMap<String, u32>,
    /// Bind addresses per Gateway (`None`: lb's default).
    gateway_addresses: HashMap<&'m Key, Vec<Option<IpAddr>>>,
    /// Static addresses of a Gateway this node cannot listen on.
    unusable_addresses: HashMap<&'m Key, Vec<IpAddr>>,
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
            actions: Vec::new(),
            services: Vec::new(),
            service_index: HashMap::new(),
            regexes: Vec::new(),
            regex_index: HashMap::new(),
            gateway_addresses: HashMap::new(),
            unusable_addresses: HashMap::new(),
        }
    }

    fn classes(&mut self) {
        for (key, class) in &self.model.gateway_classes {
            if class.spec.controller_name != self.settings.controller_name {
                continue;
            }
            self.classes.insert(key.name.as_str());
            let generation = class.metadata.generation;
            let status = GatewayClassStatus {
                conditions: Some(vec![
                    condition("Accepted", true, "Accepted", "handled by Sluice", generation),
                    condition(
                        "SupportedVersion",
                        true,
                        "SupportedVersion",
                        &format!("Sluice implements Gateway API {GATEWAY_API_VERSION}"),
                        generation,
                    ),
                ]),
                supported_features: Some(
                    SUPPORTED_FEATURES
                        .iter()
                        .map(|f| GatewayClassStatusSupportedFeatures { name: (*f).to_owned() })
                        .collect(),
                ),
            };
            self.status.insert(
                ObjectId { kind: Kind::GatewayClass, key: key.clone() },
                (generation, ObjectStatus::GatewayClass(status)),
            );
        }
    }

    fn gateways(&mut self) {
        let mut gateways: Vec<(&Key, &Gateway)> = self
            .model
            .gateways
            .iter()
            .filter(|(_, g)| self.classes.contains(g.spec.gateway_class_name.as_str()))
            .map(|(k, g)| (k, &**g))
            .collect();
        // Stable sort: the map already iterates in key order, the tie-breaker.
        gateways.sort_by_key(|(_, g)| created(&g.metadata.creation_timestamp));
        // (address, port, hostname) → first listener that claimed it.
        let mut claimed: HashMap<(Option<IpAddr>, u16, Option<&str>), usize> = HashMap::new();
        let mut pooled = BTreeSet::new();
        for (key, gw) in gateways {
            let generation = gw.metadata.generation;
            let (mut addresses, address_problem) = gateway_addresses(gw);
            if let (Some(pool), [None], None) =
                (&self.settings.address_pool, addresses.as_slice(), &address_problem)
                && let Some(ip) = pool.pick(key, &pooled)
            {
                if let IpAddr::V4(v4) = ip {
                    pooled.insert(u32::from(v4));
                }
                addresses = vec![Some(ip)];
            }
            if let Some(usable) = self.settings.address_usable {
                let unusable: Vec<IpAddr> =
                    addresses.iter().flatten().copied().filter(|ip| !usable(*ip)).collect();
                if !unusable.is_empty() {
                    addresses.retain(|a| a.is_none_or(|ip| !unusable.contains(&ip)));
                    self.unusable_addresses.insert(key, unusable);
                }
            }
            self.gateway_addresses.insert(key, addresses.clone());
            let mut indices = Vec::new();
            for l in &gw.spec.listeners {
                let mut info = ListenerInfo {
                    gateway: key,
                    name: &l.name,
                    port: l.port as u16,
                    hostname: l.hostname.as_deref(),
                    addresses: addresses.clone(),
                    allowed: AllowedNamespaces::Same,
                    http_route_allowed: true,
                    supported_kinds: vec!["HTTPRoute"],
                    conditions: Vec::new(),
                    usable: true,
                    bind_failed: None,
                    attached: 0,
                    vhosts: BTreeMap::new(),
                };
                let mut accepted = (true, "Accepted", "listener accepted".to_owned());
                let mut resolved = (true, "ResolvedRefs", "all references resolved".to_owned());
                let mut conflicted = (false, "NoConflicts", "no conflicts".to_owned());
                if let Some(ar) = &l.allowed_routes {
                    if let Some(ns) = &ar.namespaces {
                        info.allowed = match (ns.from.as_ref().unwrap_or(&From::Same), &ns.selector)
                        {
                            (From::All, _) => AllowedNamespaces::All,
                            (From::Selector, Some(sel)) => AllowedNamespaces::Selector(sel),
                            // Selector without a selector selects nothing we can name; Same is
                            // the safe reading.
                            (From::Selector, None) | (From::Same, _) => AllowedNamespaces::Same,
                        };
                    }
                    if let Some(kinds) = &ar.kinds {
                        let (ok, bad): (Vec<_>, Vec<_>) = kinds.iter().partition(|k| {
                            k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                                && k.kind == "HTTPRoute"
                        });
                        info.http_route_allowed = !ok.is_empty();
                        info.supported_kinds =
                            if ok.is_empty() { Vec::new() } else { vec!["HTTPRoute"] };
                        if !bad.is_empty() {
                            let names: Vec<_> = bad.iter().map(|k| k.kind.as_str()).collect();
                            resolved = (
                                false,
                                "InvalidRouteKinds",
                                format!("unsupported route kinds: {}", names.join(", ")),
                            );
                        }
                    }
                }
                if l.protocol != "HTTP" {
                    accepted = (
                        false,
                        "UnsupportedProtocol",
                        format!("protocol {} is not supported yet (HTTP only)", l.protocol),
                    );
                    info.supported_kinds.clear();
                    info.usable = false;
                }
                if let Some(problem) = &address_problem {
                    accepted = (false, "UnsupportedAddress", problem.clone());
                    info.usable = false;
                } else if let Some(problem) = parameters_problem(gw) {
                    accepted =
                        (false, "Pending", format!("the Gateway is not accepted: {problem}"));
                    info.usable = false;
                }
                if info.usable {
                    let index = self.listeners.len();
                    for a in &info.addresses {
                        let slot = (*a, info.port, info.hostname);
                        if let Some(&first) = claimed.get(&slot)
                            && first != index
                        {
                            let other = &self.listeners[first];
                            conflicted = (
                                true,
                                "HostnameConflict",
                                format!(
                                    "port {} hostname {:?} already served by {}/{}",
                                    info.port,
                                    info.hostname.unwrap_or(""),
                                    other.gateway,
                                    other.name
                                ),
                            );
                        }
                    }
                    if conflicted.0 {
                        info.usable = false;
                    } else {
                        for a in &info.addresses {
                            claimed.insert((*a, info.port, info.hostname), index);
                        }
                    }
                }
                let programmed = info.usable;
                if programmed {
                    info.bind_failed = info.addresses.iter().find_map(|a| {
                        let error = self.settings.bind_failures.get(&(*a, info.port))?;
                        let at =
                            a.map_or_else(|| "its bind address".to_owned(), |ip| ip.to_string());
                        Some(format!("lb cannot listen on {at} port {}: {error}", info.port))
                    });
                }
                let programmed = match &info.bind_failed {
                    Some(why) => condition("Programmed", false, "Pending", why, generation),
                    None => programmed_condition(programmed, "listener", generation),
                };
                info.conditions = vec![
                    condition("Accepted", accepted.0, accepted.1, &accepted.2, generation),
                    condition("ResolvedRefs", resolved.0, resolved.1, &resolved.2, generation),
                    condition("Conflicted", conflicted.0, conflicted.1, &conflicted.2, generation),
                    programmed,
                ];
                indices.push(self.listeners.len());
                self.listeners.push(info);
            }
            self.gateway_listeners.insert((&key.namespace, &key.name), (key, indices));
        }
    }

    fn routes(&mut self) {
        let mut routes: Vec<(&Key, &HttpRoute)> =
            self.model.http_routes.iter().map(|(k, r)| (k, &**r)).collect();
        // Stable sort: the map already iterates in key order, the tie-breaker.
        routes.sort_by_key(|(_, r)| created(&r.metadata.creation_timestamp));
        for (key, route) in routes {
            self.route(key, route);
        }
    }

    fn route(&mut self, key: &'m Key, route: &'m HttpRoute) {
        let generation = route.metadata.generation;
        let hostnames: Vec<&str> =
            route.spec.hostnames.iter().flatten().map(String::as_str).collect();
        let rules: &[HttpRouteRules] = route.spec.rules.as_deref().unwrap_or(&[]);
        let unsupported = unsupported_rule_fields(rules);
        let mut parents = Vec::new();
        let mut attach: Vec<(usize, Vec<String>)> = Vec::new();
        for parent in route.spec.parent_refs.iter().flatten() {
            let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = parent.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_GROUP || kind != "Gateway" {
                continue;
            }
            let gw_key = (parent.namespace.as_deref().unwrap_or(&key.namespace), &*parent.name);
            // Parents that are not ours (or do not exist) get no status from us.
            let Some((_, listener_ids)) = self.gateway_listeners.get(&gw_key) else { continue };
            let outcome =
                self.attach(key, parent, listener_ids, &hostnames, unsupported.as_deref());
            let accepted = match outcome {
                Ok(found) => {
                    attach.extend(found);
                    condition("Accepted", true, "Accepted", "route accepted", generation)
                }
                Err((reason, message)) => {
                    condition("Accepted", false, reason, &message, generation)
                }
            };
            parents.push(HttpRouteStatusParents {
                conditions: vec![accepted],
                controller_name: self.settings.controller_name.clone(),
                parent_ref: HttpRouteStatusParentsParentRef {
                    group: parent.group.clone(),
                    kind: parent.kind.clone(),
                    name: parent.name.clone(),
                    namespace: parent.namespace.clone(),
                    port: parent.port,
                    section_name: parent.section_name.clone(),
                },
            });
        }
        if parents.is_empty() {
            return;
        }
        // Backends are resolved once per rule, whichever listeners the route attaches to.
        let mut resolved: Result<(), (&'static str, String)> = Ok(());
        let mut rule_actions = Vec::with_capacity(rules.len());
        if !attach.is_empty() {
            for (i, rule) in rules.iter().enumerate() {
                let (action, problem) = self.action(key, i, rule);
                if let (Ok(()), Some(p)) = (&resolved, problem) {
                    resolved = Err(p);
                }
                rule_actions.push(action);
            }
        } else {
            // Nothing attached: still report reference problems.
            for rule in rules {
                let mirrors =
                    rule.filters.iter().flatten().filter_map(|f| f.request_mirror.as_ref());
                let refs = rule
                    .backend_refs
                    .iter()
                    .flatten()
                    .map(|b| backend_ref!(b))
                    .chain(mirrors.map(|m| backend_ref!(&m.backend_ref)));
                for b in refs {
                    if let (Ok(()), Err(p)) = (&resolved, self.resolve_backend(key, b)) {
                        resolved = Err(p);
                    }
                }
            }
        }
        let refs = match resolved {
            Ok(()) => condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "all references resolved",
                generation,
            ),
            Err((reason, message)) => {
                condition("ResolvedRefs", false, reason, &message, generation)
            }
        };
        for p in &mut parents {
            p.conditions.push(refs.clone());
        }
        for (listener, effective) in attach {
            self.listeners[listener].attached += 1;
            for (rule_index, rule) in rules.iter().enumerate() {
                let action = rule_actions[rule_index];
                let default_match = [HttpRouteRulesMatches::default()];
                let matches = match rule.matches.as_deref() {
                    Some(m) if !m.is_empty() => m,
                    _ => &default_match,
                };
                for (index, m) in matches.iter().enumerate() {
                    let entry = self.entry(key, route, rule_index, index, m, action);
                    let vhosts = &mut self.listeners[listener].vhosts;
                    if let Some((last, others)) = effective.split_last() {
                        for host in others {
                            let copy = Entry { key: entry.key.clone(), m: entry.m.clone() };
                            vhosts.entry(host.clone()).or_default().push(copy);
                        }
                        vhosts.entry(last.clone()).or_default().push(entry);
                    }
                }
            }
        }
        self.status.insert(
            ObjectId { kind: Kind::HttpRoute, key: key.clone() },
            (generation, ObjectStatus::HttpRoute(HttpRouteStatus { parents })),
        );
    }

    /// The listeners a parentRef attaches to with their effective hostnames, or the reason it
    /// attaches to none.
    fn attach(
        &self,
        route_key: &Key,
        parent: &HttpRouteParentRefs,
        listener_ids: &[usize],
        hostnames: &[&str],
        unsupported: Option<&str>,
    ) -> Result<Vec<(usize, Vec<String>)>, Reason> {
        if let Some(what) = unsupported {
            return Err(("UnsupportedValue", what.to_owned()));
        }
        let candidates: Vec<usize> = listener_ids
            .iter()
            .copied()
            .filter(|&i| {
                let l = &self.listeners[i];
                parent.section_name.as_deref().is_none_or(|s| s == l.name)
                    && parent.port.is_none_or(|p| p == i32::from(l.port))
            })
            .collect();
        if candidates.is_empty() {
            return Err(("NoMatchingParent", "no listener matches sectionName/port".into()));
        }
        let allowed: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| {
                let l = &self.listeners[i];
                l.usable && l.http_route_allowed && self.namespace_allowed(l, &route_key.namespace)
            })
            .collect();
        if allowed.is_empty() {
            return Err(("NotAllowedByListeners", "no listener allows this route".into()));
        }
        let found: Vec<(usize, Vec<String>)> = allowed
            .into_iter()
            .filter_map(|i| {
                let effective = intersect(self.listeners[i].hostname, hostnames);
                (!effective.is_empty()).then_some((i, effective))
            })
            .collect();
        if found.is_empty() {
            return Err((
                "NoMatchingListenerHostname",
                "no listener hostname intersects the route's hostnames".into(),
            ));
        }
        Ok(found)
    }

    fn namespace_allowed(&self, l: &ListenerInfo<'_>, route_ns: &str) -> bool {
        match &l.allowed {
            AllowedNamespaces::All => true,
            AllowedNamespaces::Same => l.gateway.namespace == route_ns,
            AllowedNamespaces::Selector(sel) => {
                let labels = namespace_labels(self.model, route_ns);
                let labels_ok = sel
                    .match_labels
                    .iter()
                    .flatten()
                    .all(|(k, v)| labels.get(k.as_str()) == Some(&v.as_str()));
                let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
                    let value = labels.get(e.key.as_str());
                    let values = e.values.as_deref().unwrap_or(&[]);
                    match e.operator.as_str() {
                        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
                        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
                        "Exists" => value.is_some(),
                        "DoesNotExist" => value.is_none(),
                        _ => false,
                    }
                });
                labels_ok && exprs_ok
            }
        }
    }

    /// The action for one rule, and the first reference problem in it.
    fn action(
        &mut self,
        key: &Key,
        rule_index: usize,
        rule: &HttpRouteRules,
    ) -> (u32, Option<(&'static str, String)>) {
        let mut problem = None;
        let mut backends = Vec::new();
        for b in rule.backend_refs.iter().flatten() {
            let weight = b.weight.unwrap_or(1).max(0) as u32;
            let target = match self.resolve_backend(key, backend_ref!(b)) {
                Ok(service) => t::BackendTarget::Service(service),
                Err(p) => {
                    problem.get_or_insert(p);
                    t::BackendTarget::Status(500)
                }
            };
            let mut request_headers = t::HeaderEdits::default();
            for m in b.filters.iter().flatten().filter_map(|f| f.request_header_modifier.as_ref()) {
                merge_edits(&mut request_headers, header_edits!(m));
            }
            backends.push(t::WeightedBackend { weight, target, request_headers });
        }
        let redirect = rule.filters.iter().flatten().find_map(|f| f.request_redirect.as_ref());
        let kind = if let Some(r) = redirect {
            // A redirect answers the request itself; backends are not used.
            redirect_action(r)
        } else if backends.is_empty() {
            // A rule without backends has nowhere to send traffic: the spec's 500.
            t::ActionKind::Respond { status: 500 }
        } else {
            t::ActionKind::Forward { backends, wrr_offset: 0 }
        };
        let mut request_headers = t::HeaderEdits::default();
        for m in rule.filters.iter().flatten().filter_map(|f| f.request_header_modifier.as_ref()) {
            merge_edits(&mut request_headers, header_edits!(m));
        }
        let mut response_headers = t::HeaderEdits::default();
        for m in rule.filters.iter().flatten().filter_map(|f| f.response_header_modifier.as_ref()) {
            merge_edits(&mut response_headers, header_edits!(m));
        }
        let timeouts =
            rule.timeouts.as_ref().map_or_else(t::RouteTimeouts::default, |t| t::RouteTimeouts {
                request_ms: t.request.as_deref().and_then(parse_duration_ms).unwrap_or(0),
                backend_request_ms: t
                    .backend_request
                    .as_deref()
                    .and_then(parse_duration_ms)
                    .unwrap_or(0),
            });
        let mut rewrite = t::Rewrite::default();
        for u in rule.filters.iter().flatten().filter_map(|f| f.url_rewrite.as_ref()) {
            rewrite.host = u.hostname.clone().or(rewrite.host);
            if let Some(p) = path_rewrite!(&u.path, HttpRouteRulesFiltersUrlRewritePathType)
                && p != t::PathRewrite::Keep
            {
                rewrite.path = full_path_not_empty(p);
            }
        }
        let mut mirrors = Vec::new();
        for m in rule.filters.iter().flatten().filter_map(|f| f.request_mirror.as_ref()) {
            // An unresolvable mirror is dropped (the spec), and ResolvedRefs says why.
            match self.resolve_backend(key, backend_ref!(&m.backend_ref)) {
                Ok(service) => mirrors.push(t::Mirror { service, per_million: mirror_share(m) }),
                Err(p) => {
                    problem.get_or_insert(p);
                }
            }
        }
        let cors = rule.filters.iter().flatten().find_map(|f| f.cors.as_ref()).map(cors_policy);
        let retry = rule.retry.as_ref().map_or_else(t::Retry::default, |r| t::Retry {
            // Unset attempts: one retry (the spec leaves the number to the implementation).
            attempts: r.attempts.map_or(1, |a| a.clamp(0, 10) as u32),
            codes: r.codes.iter().flatten().filter_map(|c| u16::try_from(*c).ok()).collect(),
            backoff_ms: r.backoff.as_deref().and_then(parse_duration_ms).unwrap_or(0),
        });
        let index = self.actions.len() as u32;
        self.actions.push(t::Action {
            route: key.to_string(),
            rule: rule_index as u32,
            kind,
            request_headers,
            rewrite,
            response_headers,
            timeouts,
            mirrors,
            cors,
            retry,
        });
        (index, problem)
    }

    fn resolve_backend(
        &mut self,
        route_key: &Key,
        b: BackendRef<'_>,
    ) -> Result<u32, (&'static str, String)> {
        let group = b.group.unwrap_or("");
        let kind = b.kind.unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            return Err(("InvalidKind", format!("backend kind {group}/{kind} is not supported")));
        }
        let namespace = b.namespace.unwrap_or(&route_key.namespace);
        if namespace != route_key.namespace
            && !self.grant_allows(&route_key.namespace, namespace, b.name)
        {
            return Err((
                "RefNotPermitted",
                format!(
                    "no ReferenceGrant in {namespace} allows HTTPRoutes from {} to Service {}",
                    route_key.namespace, b.name
                ),
            ));
        }
        let service_key = Key::new(namespace, b.name);
        let Some(service) = self.model.services.get(&service_key) else {
            return Err(("BackendNotFound", format!("Service {service_key} not found")));
        };
        let port = b.port.unwrap_or(0);
        let Some(service_port) =
            service.spec.iter().flat_map(|s| s.ports.iter().flatten()).find(|p| p.port == port)
        else {
            return Err(("BackendNotFound", format!("Service {service_key} has no port {port}")));
        };
        let cache_key = (namespace.to_owned(), b.name.to_owned(), port);
        if let Some(&index) = self.service_index.get(&cache_key) {
            return Ok(index);
        }
        let port_name = service_port.name.as_deref().unwrap_or("");
        let mut endpoints = Vec::new();
        for slice in self.model.endpoint_slices.values().filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == b.name)
        }) {
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
        self.services.push(t::Service { name: format!("{service_key}:{port}"), endpoints });
        self.service_index.insert(cache_key, index);
        Ok(index)
    }

    fn grant_allows(&self, from_ns: &str, to_ns: &str, service: &str) -> bool {
        self.model.reference_grants.iter().filter(|(k, _)| k.namespace == to_ns).any(|(_, g)| {
            g.spec.from.iter().any(|f| {
                f.group == GATEWAY_GROUP && f.kind == "HTTPRoute" && f.namespace == from_ns
            }) && g.spec.to.iter().any(|to| {
                to.group.is_empty()
                    && to.kind == "Service"
                    && to.name.as_deref().is_none_or(|n| n == service)
            })
        })
    }

    fn entry(
        &mut self,
        key: &'m Key,
        route: &'m HttpRoute,
        rule: usize,
        index: usize,
        m: &HttpRouteRulesMatches,
        action: u32,
    ) -> Entry<'m> {
        let (path, path_kind, path_len) = match &m.path {
            None => (t::PathMatch::Prefix("/".into()), 2, 1),
            Some(p) => {
                let value = p.value.clone().unwrap_or_else(|| "/".into());
                match p.r#type.clone().unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix) {
                    HttpRouteRulesMatchesPathType::Exact => {
                        let len = value.len();
                        (t::PathMatch::Exact(value), 0, len)
                    }
                    HttpRouteRulesMatchesPathType::PathPrefix => {
                        let trimmed = trim_prefix(&value);
                        let len = trimmed.len();
                        (t::PathMatch::Prefix(trimmed), 2, len)
                    }
                    HttpRouteRulesMatchesPathType::RegularExpression => {
                        let len = value.len();
                        (t::PathMatch::Regex(self.regex(&value)), 1, len)
                    }
                }
            }
        };
        // The spec: with several entries for the same header (or query) name, only the first
        // counts.
        let mut seen = BTreeSet::new();
        let mut headers = Vec::new();
        for h in m.headers.iter().flatten() {
            let name = h.name.to_ascii_lowercase();
            if !seen.insert(name.clone()) {
                continue;
            }
            let value = match h.r#type.clone().unwrap_or(HttpRouteRulesMatchesHeadersType::Exact) {
                HttpRouteRulesMatchesHeadersType::Exact => t::ValueMatch::Exact(h.value.clone()),
                HttpRouteRulesMatchesHeadersType::RegularExpression => {
                    t::ValueMatch::Regex(self.regex(&h.value))
                }
            };
            headers.push(t::HeaderMatch { name, value });
        }
        let mut seen = BTreeSet::new();
        let mut query = Vec::new();
        for q in m.query_params.iter().flatten() {
            if !seen.insert(q.name.clone()) {
                continue;
            }
            let value =
                match q.r#type.clone().unwrap_or(HttpRouteRulesMatchesQueryParamsType::Exact) {
                    HttpRouteRulesMatchesQueryParamsType::Exact => {
                        t::ValueMatch::Exact(q.value.clone())
                    }
                    HttpRouteRulesMatchesQueryParamsType::RegularExpression => {
                        t::ValueMatch::Regex(self.regex(&q.value))
                    }
                };
            query.push(t::QueryMatch { name: q.name.clone(), value });
        }
        let method = m.method.as_ref().map(|m| method_name(m).to_owned());
        Entry {
            key: SortKey {
                path_kind,
                path_len: Reverse(path_len),
                has_method: Reverse(method.is_some()),
                headers: Reverse(headers.len()),
                query: Reverse(query.len()),
                created: created(&route.metadata.creation_timestamp),
                namespace: &key.namespace,
                name: &key.name,
                rule,
                index,
            },
            m: t::RouteMatch { path, method, headers, query, action },
        }
    }

    fn regex(&mut self, pattern: &str) -> u32 {
        if let Some(&i) = self.regex_index.get(pattern) {
            return i;
        }
        let i = self.regexes.len() as u32;
        self.regexes.push(pattern.to_owned());
        self.regex_index.insert(pattern.to_owned(), i);
        i
    }

    fn finish(mut self) -> Compiled {
        let mut table = t::Table::default();
        // Gateway statuses, now that attachedRoutes are known.
        for (key, ids) in self.gateway_listeners.values() {
            let Some(gw) = self.model.gateways.get(*key) else { continue };
            let generation = gw.metadata.generation;
            let listeners = ids
                .iter()
                .map(|&i| {
                    let l = &self.listeners[i];
                    GatewayStatusListeners {
                        attached_routes: l.attached,
                        conditions: l.conditions.clone(),
                        name: l.name.to_owned(),
                        supported_kinds: Some(
                            l.supported_kinds
                                .iter()
                                .map(|k| GatewayStatusListenersSupportedKinds {
                                    group: Some(GATEWAY_GROUP.into()),
                                    kind: (*k).into(),
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            let address_problem = gateway_addresses(gw).1;
            let addresses = self.gateway_addresses.get(key).cloned().unwrap_or_default();
            let reported: Vec<GatewayStatusAddresses> = addresses
                .iter()
                .filter_map(|a| a.or(self.settings.default_address))
                .map(|ip| GatewayStatusAddresses {
                    r#type: Some("IPAddress".into()),
                    value: ip.to_string(),
                })
                .collect();
            let any_usable = ids.iter().any(|&i| self.listeners[i].usable);
            let bind_failed: Vec<&str> =
                ids.iter().filter_map(|&i| self.listeners[i].bind_failed.as_deref()).collect();
            let invalid = ids.iter().filter(|&&i| !self.listeners[i].usable).count();
            let rejected = address_problem
                .map(|p| ("UnsupportedAddress", p))
                .or_else(|| parameters_problem(gw).map(|p| ("InvalidParameters", p)));
            let conditions = match rejected {
                Some((reason, p)) => vec![
                    condition("Accepted", false, reason, &p, generation),
                    condition("Programmed", false, "Invalid", &p, generation),
                ],
                // The spec's ListenersNotValid: False when no listener is valid, True (with
                // this reason) when only some are.
                None if self.unusable_addresses.contains_key(key) => {
                    let list: Vec<String> =
                        self.unusable_addresses[key].iter().map(IpAddr::to_string).collect();
                    let message = format!("this node cannot listen on {}", list.join(", "));
                    let accepted = if invalid > 0 && !any_usable {
                        condition(
                            "Accepted",
                            false,
                            "ListenersNotValid",
                            "no listener is valid",
                            generation,
                        )
                    } else {
                        condition("Accepted", true, "Accepted", "gateway accepted", generation)
                    };
                    vec![
                        accepted,
                        condition("Programmed", false, "AddressNotUsable", &message, generation),
                    ]
                }
                None if !bind_failed.is_empty() => vec![
                    condition("Accepted", true, "Accepted", "gateway accepted", generation),
                    condition("Programmed", false, "Pending", &bind_failed.join("; "), generation),
                ],
                None if invalid > 0 && !any_usable => vec![
                    condition(
                        "Accepted",
                        false,
                        "ListenersNotValid",
                        "no listener is valid",
                        generation,
                    ),
                    programmed_condition(false, "gateway", generation),
                ],
                None if invalid > 0 => vec![
                    condition(
                        "Accepted",
                        true,
                        "ListenersNotValid",
                        &format!("{invalid} listener(s) are not valid; the others are served"),
                        generation,
                    ),
                    programmed_condition(true, "gateway", generation),
                ],
                None => vec![
                    condition("Accepted", true, "Accepted", "gateway accepted", generation),
                    programmed_condition(any_usable, "gateway", generation),
                ],
            };
            self.status.insert(
                ObjectId { kind: Kind::Gateway, key: (*key).clone() },
                (
                    generation,
                    ObjectStatus::Gateway(GatewayStatus {
                        addresses: (!reported.is_empty()).then_some(reported),
                        attached_listener_sets: None,
                        conditions: Some(conditions),
                        listeners: Some(listeners),
                    }),
                ),
            );
        }
        // Ports: every usable listener on each of its addresses.
        let mut ports: BTreeMap<(u16, Option<t::Address>), t::HostIndex> = BTreeMap::new();
        for l in self.listeners.iter_mut().filter(|l| l.usable) {
            let listener_index = table.listeners.len() as u32;
            let vhosts =
                build_vhosts(std::mem::take(&mut l.vhosts), &mut table.vhosts, &mut table.matches);
            table.listeners.push(t::Listener { name: format!("{}/{}", l.gateway, l.name), vhosts });
            for a in &l.addresses {
                let index = ports.entry((l.port, a.map(t::Address::from))).or_default();
                match l.hostname {
                    None => index.any = Some(listener_index),
                    Some(h) => add_host(index, h, listener_index),
                }
            }
        }
        for ((port, address), mut listeners) in ports {
            sort_host_index(&mut listeners);
            table.ports.push(t::Port { address, port, listeners });
        }
        let mut wrr = 0u32;
        for a in &mut self.actions {
            if let t::ActionKind::Forward { backends, wrr_offset } = &mut a.kind {
                *wrr_offset = wrr;
                wrr += backends.len() as u32;
            }
        }
        table.actions = self.actions;
        table.services = self.services;
        table.regexes = self.regexes;
        table.wrr_slots = wrr;
        Compiled { table, status: self.status }
    }
}

/// Builds the virtual hosts of one listener, appending to the table's vectors, and returns the
/// listener's host index. Order: exact names, wildcards longest first, catch-all last, so every
/// fallback points forward.
fn build_vhosts(
    hosts: BTreeMap<String, Vec<Entry<'_>>>,
    vhosts: &mut Vec<t::VirtualHost>,
    matches: &mut Vec<t::RouteMatch>,
) -> t::HostIndex {
    let mut names: Vec<String> = hosts.keys().cloned().collect();
    names.sort_by(|a, b| {
        (host_rank(a), Reverse(a.len()), a.as_str()).cmp(&(
            host_rank(b),
            Reverse(b.len()),
            b.as_str(),
        ))
    });
    let base = vhosts.len() as u32;
    let position: HashMap<&str, u32> =
        names.iter().enumerate().map(|(i, h)| (h.as_str(), base + i as u32)).collect();
    let mut index = t::HostIndex::default();
    let mut hosts = hosts;
    for name in &names {
        let mut entries = hosts.remove(name).unwrap_or_default();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let first = matches.len() as u32;
        let count = entries.len() as u32;
        matches.extend(entries.into_iter().map(|e| e.m));
        let fallback = fallback_for(name, &position);
        let target = position[name.as_str()];
        vhosts.push(t::VirtualHost {
            hostname: name.clone(),
            matches: (first..first + count).collect(),
            fallback,
        });
        if name.is_empty() {
            index.any = Some(target);
        } else {
            add_host(&mut index, name, target);
        }
    }
    sort_host_index(&mut index);
    index
}

/// 0 exact, 1 wildcard, 2 catch-all.
fn host_rank(h: &str) -> u8 {
    if h.is_empty() {
        2
    } else if h.starts_with("*.") {
        1
    } else {
        0
    }
}

/// The most specific other name that covers `name`: the longest wildcard `*.suffix` where
/// `.suffix` is a proper dot-suffix of `name` (for a wildcard name, of its own suffix), else
/// the catch-all. Walks the dots of `name`, longest suffix first: O(labels) lookups instead of
/// a scan of every name (which made 5,000 hostnames quadratic).
fn fallback_for(name: &str, position: &HashMap<&str, u32>) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    // "a.b.example.com" tries "*.b.example.com", "*.example.com", "*.com";
    // "*.b.example.com" tries "*.example.com", "*.com".
    let base = name.strip_prefix("*.").unwrap_or(name);
    let mut wildcard = String::with_capacity(base.len() + 1);
    for (i, _) in base.match_indices('.') {
        wildcard.clear();
        wildcard.push('*');
        wildcard.push_str(&base[i..]);
        if let Some(&target) = position.get(wildcard.as_str()) {
            return Some(target);
        }
    }
    position.get("").copied()
}

fn add_host(index: &mut t::HostIndex, host: &str, target: u32) {
    match host.strip_prefix('*') {
        Some(suffix) => index.wildcard.push(t::HostEntry { host: suffix.to_owned(), target }),
        None => index.exact.push(t::HostEntry { host: host.to_owned(), target }),
    }
}

fn sort_host_index(index: &mut t::HostIndex) {
    index.exact.sort_by(|a, b| a.host.cmp(&b.host));
    index.exact.dedup_by(|a, b| a.host == b.host);
    index.wildcard.sort_by(|a, b| a.host.cmp(&b.host));
    index.wildcard.dedup_by(|a, b| a.host == b.host);
}

/// Effective hostnames of a route on a listener (`""` = any host). Empty: no intersection.
pub fn intersect(listener: Option<&str>, route: &[&str]) -> Vec<String> {
    if route.is_empty() {
        return vec![listener.unwrap_or("").to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    for r in route {
        let hit = match listener {
            None => Some(*r),
            Some(l) => intersect_one(l, r),
        };
        if let Some(h) = hit
            && !out.iter().any(|o| o == h)
        {
            out.push(h.to_owned());
        }
    }
    out
}

fn intersect_one<'a>(l: &'a str, r: &'a str) -> Option<&'a str> {
    if l == r {
        return Some(r);
    }
    match (l.strip_prefix('*'), r.strip_prefix('*')) {
        (None, None) => None,
        (Some(ls), None) => (r.len() > ls.len() && r.ends_with(ls)).then_some(r),
        (None, Some(rs)) => (l.len() > rs.len() && l.ends_with(rs)).then_some(l),
        (Some(ls), Some(rs)) => {
            if rs.len() > ls.len() && rs.ends_with(ls) {
                Some(r)
            } else if ls.len() > rs.len() && ls.ends_with(rs) {
                Some(l)
            } else {
                None
            }
        }
    }
}

/// Prefix values compile without their trailing slash (`/v2/` ≡ `/v2`), except `/` itself.
fn trim_prefix(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

/// Rule fields Sluice does not implement yet: a route using one is not accepted (reason
/// `UnsupportedValue`) rather than served without it.
fn unsupported_rule_fields(rules: &[HttpRouteRules]) -> Option<String> {
    for (i, r) in rules.iter().enumerate() {
        let matches = r.matches.as_deref().unwrap_or(&[]);
        for (j, f) in r.filters.iter().flatten().enumerate() {
            use HttpRouteRulesFiltersType as F;
            // Each supported filter: its field, and what is wrong with it (`None`: missing).
            let (field, problem) = match &f.r#type {
                F::RequestHeaderModifier => (
                    "requestHeaderModifier",
                    f.request_header_modifier.as_ref().map(|m| edits_problem(&header_edits!(m))),
                ),
                F::ResponseHeaderModifier => (
                    "responseHeaderModifier",
                    f.response_header_modifier.as_ref().map(|m| edits_problem(&header_edits!(m))),
                ),
                F::UrlRewrite => {
                    ("urlRewrite", f.url_rewrite.as_ref().map(|u| url_rewrite_problem(u, matches)))
                }
                F::RequestRedirect => (
                    "requestRedirect",
                    f.request_redirect.as_ref().map(|d| redirect_problem(d, matches)),
                ),
                F::RequestMirror => {
                    ("requestMirror", f.request_mirror.as_ref().map(mirror_problem))
                }
                F::Cors => ("cors", f.cors.as_ref().map(cors_problem)),
                other => {
                    return Some(format!(
                        "rules[{i}].filters[{j}]: type {other:?} is not supported yet"
                    ));
                }
            };
            match problem {
                None => return Some(format!("rules[{i}].filters[{j}].{field} is missing")),
                Some(Some(p)) => return Some(format!("rules[{i}].filters[{j}].{field}: {p}")),
                Some(None) => {}
            }
        }
        for (k, b) in r.backend_refs.iter().flatten().enumerate() {
            for (j, f) in b.filters.iter().flatten().enumerate() {
                let at = format!("rules[{i}].backendRefs[{k}].filters[{j}]");
                if f.r#type != HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier {
                    return Some(format!("{at}: type {:?} is not supported yet", f.r#type));
                }
                let Some(m) = &f.request_header_modifier else {
                    return Some(format!("{at}.requestHeaderModifier is missing"));
                };
                if let Some(p) = edits_problem(&header_edits!(m)) {
                    return Some(format!("{at}: {p}"));
                }
            }
        }
        if r.session_persistence.is_some() {
            return Some(format!("rules[{i}]: sessionPersistence is not supported yet"));
        }
        if let Some(retry) = &r.retry
            && let Some(problem) = retry_problem(retry)
        {
            return Some(format!("rules[{i}].retry: {problem}"));
        }
        if let Some(t) = &r.timeouts {
            let parsed = |v: &Option<String>, field: &str| match v {
                None => Ok(0),
                Some(v) => parse_duration_ms(v).ok_or_else(|| {
                    format!(
                        "rules[{i}].timeouts.{field} {v:?} is not a duration such as 500ms or 1m30s"
                    )
                }),
            };
            let request = match parsed(&t.request, "request") {
                Ok(v) => v,
                Err(e) => return Some(e),
            };
            let backend = match parsed(&t.backend_request, "backendRequest") {
                Ok(v) => v,
                Err(e) => return Some(e),
            };
            if request != 0 && backend > request {
                return Some(format!("rules[{i}].timeouts.backendRequest is longer than request"));
            }
        }
        for m in r.matches.iter().flatten() {
            let regexes = m
                .path
                .iter()
                .filter(|p| p.r#type == Some(HttpRouteRulesMatchesPathType::RegularExpression))
                .filter_map(|p| p.value.as_deref())
                .chain(
                    m.headers
                        .iter()
                        .flatten()
                        .filter(|h| {
                            h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
                        })
                        .map(|h| h.value.as_str()),
                )
                .chain(
                    m.query_params
                        .iter()
                        .flatten()
                        .filter(|q| {
                            q.r#type
                                == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
                        })
                        .map(|q| q.value.as_str()),
                );
            for pattern in regexes {
                if let Err(e) = check_regex(pattern) {
                    return Some(format!("rules[{i}]: regular expression {pattern:?}: {e}"));
                }
            }
        }
    }
    None
}

thread_local! {
    /// Outcome of compiling each pattern, so a recompile of an unchanged configuration does not
    /// compile its regexes again (~50 µs each; 1,000 of them were half of a 5,000-route
    /// compile).
    static REGEX_CHECKS: std::cell::RefCell<HashMap<String, Result<(), String>>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Compiles `pattern` exactly as lb will (same function, same size limits), so a table that
/// config-sync publishes never fails lb's validation on a regex.
fn check_regex(pattern: &str) -> Result<(), String> {
    REGEX_CHECKS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(r) = cache.get(pattern) {
            return r.clone();
        }
        if cache.len() > 100_000 {
            cache.clear();
        }
        let r = table::view::compile_regex(pattern).map(drop);
        cache.insert(pattern.to_owned(), r.clone());
        r
    })
}

/// A `RequestHeaderModifier` (rule or backendRef flavour: same fields, different types) as
/// table header edits.
macro_rules! header_edits {
    ($m:expr) => {{
        let m = $m;
        let field = |name: &str, value: &str| t::HeaderField {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        t::HeaderEdits {
            set: m.set.iter().flatten().map(|h| field(&h.name, &h.value)).collect(),
            add: m.add.iter().flatten().map(|h| field(&h.name, &h.value)).collect(),
            remove: m.remove.iter().flatten().cloned().collect(),
        }
    }};
}
use header_edits;

fn merge_edits(into: &mut t::HeaderEdits, more: t::HeaderEdits) {
    into.set.extend(more.set);
    into.add.extend(more.add);
    into.remove.extend(more.remove);
}

/// Why lb could not write these edits into a request head.
fn edits_problem(e: &t::HeaderEdits) -> Option<String> {
    let fields = || e.set.iter().chain(&e.add);
    let mut names = fields().map(|f| f.name.as_str()).chain(e.remove.iter().map(String::as_str));
    if let Some(n) = names.find(|n| !table::view::is_token(n)) {
        return Some(format!("header name {n:?} is not valid"));
    }
    let mut names = fields().map(|f| f.name.as_str()).chain(e.remove.iter().map(String::as_str));
    if let Some(n) = names.find(|n| !table::view::is_editable(n)) {
        return Some(format!(
            "header {n:?} frames the message or is set by the gateway; it cannot be modified"
        ));
    }
    fields()
        .find(|f| !table::view::is_field_value(&f.value))
        .map(|f| format!("the value of header {:?} holds characters a header cannot carry", f.name))
}

/// A redirect's or URL rewrite's `path` (the two filters have their own, identical types) as a
/// table path change; `None` when the replacement its type names is missing.
macro_rules! path_rewrite {
    ($path:expr, $ty:ident) => {
        match $path {
            None => Some(t::PathRewrite::Keep),
            Some(p) => match p.r#type {
                $ty::ReplaceFullPath => p.replace_full_path.clone().map(t::PathRewrite::Full),
                $ty::ReplacePrefixMatch => {
                    p.replace_prefix_match.clone().map(t::PathRewrite::Prefix)
                }
            },
        }
    };
}
use path_rewrite;

/// An empty full path means `/`.
fn full_path_not_empty(p: t::PathRewrite) -> t::PathRewrite {
    match p {
        t::PathRewrite::Full(f) if f.is_empty() => t::PathRewrite::Full("/".into()),
        other => other,
    }
}

/// Why a path change cannot be used on a rule with these matches.
fn path_rewrite_problem(p: &t::PathRewrite, matches: &[HttpRouteRulesMatches]) -> Option<String> {
    let v = match p {
        t::PathRewrite::Keep => return None,
        t::PathRewrite::Full(v) => v,
        t::PathRewrite::Prefix(v) => {
            // The spec: only with PathPrefix matches (a rule without matches is "/" prefix).
            let prefix_only = matches.iter().all(|m| {
                m.path.as_ref().is_none_or(|p| {
                    p.r#type
                        .as_ref()
                        .is_none_or(|t| *t == HttpRouteRulesMatchesPathType::PathPrefix)
                })
            });
            if !prefix_only {
                return Some("ReplacePrefixMatch needs PathPrefix matches".into());
            }
            v
        }
    };
    if !v.starts_with('/') && !v.is_empty() {
        return Some(format!("path {v:?} does not start with /"));
    }
    if !table::view::is_field_value(v) || v.contains(' ') {
        return Some(format!("path {v:?} holds characters a URL cannot carry"));
    }
    None
}

/// A Gateway API duration (GEP-2257: one to four `<number><unit>` parts, units h, m, s, ms;
/// `0s` means no timeout) in milliseconds, saturating at `u32::MAX`.
pub fn parse_duration_ms(v: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut parts = 0;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then(|| total.min(u64::from(u32::MAX)) as u32)
}

/// What makes a `URLRewrite` unusable.
fn url_rewrite_problem(
    r: &HttpRouteRulesFiltersUrlRewrite,
    matches: &[HttpRouteRulesMatches],
) -> Option<String> {
    if let Some(h) = &r.hostname
        && !host_name_ok(h)
    {
        return Some(format!("hostname {h:?} is not a host name"));
    }
    match path_rewrite!(&r.path, HttpRouteRulesFiltersUrlRewritePathType) {
        None => Some("path has no replacement for its type".into()),
        Some(p) => path_rewrite_problem(&p, matches),
    }
}

fn host_name_ok(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
}

/// What makes a `RequestRedirect` unusable (checked where the CRD's validation would).
fn redirect_problem(
    r: &HttpRouteRulesFiltersRequestRedirect,
    matches: &[HttpRouteRulesMatches],
) -> Option<String> {
    if let Some(h) = &r.hostname
        && !host_name_ok(h)
    {
        return Some(format!("hostname {h:?} is not a host name"));
    }
    if let Some(p) = r.port
        && !(1..=65535).contains(&p)
    {
        return Some(format!("port {p} is out of range"));
    }
    if let Some(s) = r.status_code
        && ![301, 302, 303, 307, 308].contains(&s)
    {
        return Some(format!("statusCode {s} is not a redirect status"));
    }
    match path_rewrite!(&r.path, HttpRouteRulesFiltersRequestRedirectPathType) {
        None => Some("path has no replacement for its type".into()),
        Some(p) => path_rewrite_problem(&p, matches),
    }
}

fn redirect_action(r: &HttpRouteRulesFiltersRequestRedirect) -> t::ActionKind {
    let path = path_rewrite!(&r.path, HttpRouteRulesFiltersRequestRedirectPathType)
        .map_or(t::PathRewrite::Keep, full_path_not_empty);
    t::ActionKind::Redirect {
        status: r.status_code.map_or(302, |s| s as u16),
        scheme: r.scheme.as_ref().map(|s| match s {
            HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_owned(),
            HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_owned(),
        }),
        host: r.hostname.clone(),
        port: r.port.map(|p| p as u16),
        path,
    }
}

/// Why the Gateway's `infrastructure.parametersRef` cannot be honoured: Sluice defines no
/// parameters kind, so any reference is one it cannot resolve (the spec: reject with
/// `InvalidParameters`).
/// A backend reference, whichever field it came from (backendRefs, a mirror filter).
#[derive(Debug, Clone, Copy)]
struct BackendRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
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
use backend_ref;

/// A mirror's sampling rate in parts per million (`percent`, or `fraction`; neither: all).
fn mirror_share(m: &HttpRouteRulesFiltersRequestMirror) -> u32 {
    if let Some(f) = &m.fraction {
        let denominator = i64::from(f.denominator.unwrap_or(100).max(1));
        let numerator = i64::from(f.numerator).clamp(0, denominator);
        return (numerator * 1_000_000 / denominator) as u32;
    }
    m.percent.map_or(1_000_000, |p| p.clamp(0, 100) as u32 * 10_000)
}

/// Why a mirror filter cannot be served.
fn mirror_problem(m: &HttpRouteRulesFiltersRequestMirror) -> Option<String> {
    if m.percent.is_some() && m.fraction.is_some() {
        return Some("percent and fraction are both set".into());
    }
    if let Some(p) = m.percent
        && !(0..=100).contains(&p)
    {
        return Some(format!("percent {p} is not within 0-100"));
    }
    if let Some(f) = &m.fraction {
        let denominator = f.denominator.unwrap_or(100);
        if denominator < 1 || f.numerator < 0 || f.numerator > denominator {
            return Some(format!(
                "fraction {}/{denominator} is not a fraction between 0 and 1",
                f.numerator
            ));
        }
    }
    None
}

/// The table's CORS policy: origins normalised (lower-case, default port written out) so lb
/// compares them byte for byte.
fn cors_policy(c: &HttpRouteRulesFiltersCors) -> t::Cors {
    let list = |v: &Option<Vec<String>>| v.iter().flatten().cloned().collect::<Vec<_>>();
    t::Cors {
        origins: c.allow_origins.iter().flatten().filter_map(|o| normalize_origin(o)).collect(),
        methods: list(&c.allow_methods),
        headers: list(&c.allow_headers),
        expose: list(&c.expose_headers),
        max_age: c.max_age.map_or(5, |a| a.max(0) as u32),
        credentials: c.allow_credentials.unwrap_or(false),
    }
}

/// `scheme://host[:port]` lower-cased with the scheme's default port written out, or `*`.
/// `None` when it is neither.
pub fn normalize_origin(origin: &str) -> Option<String> {
    if origin == "*" {
        return Some("*".into());
    }
    let lower = origin.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (rest, default_port),
    };
    let labels_ok =
        host == "*"
            || host.strip_prefix("*.").unwrap_or(host).split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
    labels_ok.then(|| format!("{scheme}://{host}:{port}"))
}

/// Why a CORS filter cannot be served.
fn cors_problem(c: &HttpRouteRulesFiltersCors) -> Option<String> {
    for o in c.allow_origins.iter().flatten() {
        if normalize_origin(o).is_none() {
            return Some(format!("allowOrigins entry {o:?} is not scheme://host[:port] or *"));
        }
    }
    let lists = [("allowMethods", &c.allow_methods), ("allowHeaders", &c.allow_headers)];
    for (field, list) in lists.into_iter().chain([("exposeHeaders", &c.expose_headers)]) {
        let list = list.as_deref().unwrap_or(&[]);
        if let Some(bad) = list.iter().find(|v| !table::view::is_token(v)) {
            return Some(format!("{field} entry {bad:?} is not a token"));
        }
        if list.len() > 1 && list.iter().any(|v| v == "*") && field != "exposeHeaders" {
            return Some(format!("{field} has * alongside other entries"));
        }
    }
    None
}

/// Why a retry policy cannot be served.
fn retry_problem(r: &HttpRouteRulesRetry) -> Option<String> {
    if let Some(a) = r.attempts
        && a < 0
    {
        return Some(format!("attempts {a} is negative"));
    }
    if let Some(c) = r.codes.iter().flatten().find(|c| !(400..600).contains(*c)) {
        return Some(format!("code {c} is not an HTTP error status (400-599)"));
    }
    if let Some(b) = &r.backoff
        && parse_duration_ms(b).is_none()
    {
        return Some(format!("backoff {b:?} is not a duration such as 100ms"));
    }
    None
}

fn parameters_problem(gw: &Gateway) -> Option<String> {
    let r = gw.spec.infrastructure.as_ref()?.parameters_ref.as_ref()?;
    Some(format!("parametersRef {}/{} {}: Sluice has no parameters kind", r.group, r.kind, r.name))
}

/// Gateway `spec.addresses` as bind addresses (`None` = lb's default), or why they are unusable.
fn gateway_addresses(gw: &Gateway) -> (Vec<Option<IpAddr>>, Option<String>) {
    let requested = gw.spec.addresses.as_deref().unwrap_or(&[]);
    if requested.is_empty() {
        return (vec![None], None);
    }
    let mut out = Vec::new();
    for a in requested {
        let kind = a.r#type.as_deref().unwrap_or("IPAddress");
        if kind != "IPAddress" {
            return (vec![None], Some(format!("address type {kind} is not supported")));
        }
        match a.value.as_deref().filter(|v| !v.is_empty()).map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => out.push(Some(ip)),
            // No value: an address of the implementation's choosing (the pool, else lb's
            // default), as the spec allows.
            None => out.push(None),
            _ => {
                return (
                    vec![None],
                    Some(format!(
                        "address {:?} is not an IP address",
                        a.value.as_deref().unwrap_or("")
                    )),
                );
            }
        }
    }
    (out, None)
}

/// Namespace labels, including the `kubernetes.io/metadata.name` label the API server adds.
fn namespace_labels<'a>(model: &'a Model, ns: &'a str) -> BTreeMap<&'a str, &'a str> {
    let mut labels: BTreeMap<&str, &str> = model
        .namespaces
        .get(&Key::new("", ns))
        .and_then(|n| n.metadata.labels.as_ref())
        .map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name", ns);
    labels
}

fn method_name(m: &HttpRouteRulesMatchesMethod) -> &'static str {
    use HttpRouteRulesMatchesMethod as M;
    match m {
        M::Get => "GET",
        M::Head => "HEAD",
        M::Post => "POST",
        M::Put => "PUT",
        M::Delete => "DELETE",
        M::Connect => "CONNECT",
        M::Options => "OPTIONS",
        M::Trace => "TRACE",
        M::Patch => "PATCH",
    }
}

fn created(t: &Option<Time>) -> (bool, i64, i32) {
    match t {
        Some(Time(ts)) => (false, ts.as_second(), ts.subsec_nanosecond()),
        None => (true, 0, 0),
    }
}

/// `Programmed`: True, or False with reason `Invalid`.
fn programmed_condition(ok: bool, what: &str, generation: Option<i64>) -> Condition {
    if ok {
        condition("Programmed", true, "Programmed", &format!("{what} programmed"), generation)
    } else {
        condition("Programmed", false, "Invalid", &format!("{what} has nothing usable"), generation)
    }
}

/// A condition with a placeholder time; the status writer carries real times over.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

#[cfg(test)]
mod tests;
