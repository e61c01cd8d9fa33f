//! Precedence and table assembly: each attached match gets the spec's sort key, virtual hosts
//! are built per listener and effective hostname with fallbacks to less specific ones, and the
//! table and every status are put together.

use super::*;

impl<'m> Compiler<'m> {
    pub(super) fn entry(
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
        // GRPCRoute precedence: the longest service, then method, then the most headers
        // (path kind and length stand for service and method; both are at most 1024 long).
        let grpc = (self.route_kind == RouteKind::Grpc).then(|| {
            let rules = self.model.grpc_routes.get(key).and_then(|g| g.route.spec.rules.as_ref());
            let m = rules.and_then(|r| r.get(rule)?.matches.as_ref()?.get(index));
            m.map_or((0, 0, 0), crate::model::grpc::precedence)
        });
        let (path_kind, path_len, header_count) = match grpc {
            Some((service, method, headers)) => (0, service * 2048 + method, headers),
            None => (path_kind, path_len, headers.len()),
        };
        Entry {
            key: SortKey {
                path_kind,
                path_len: Reverse(path_len),
                has_method: Reverse(method.is_some()),
                headers: Reverse(header_count),
                query: Reverse(query.len()),
                created: created(&route.metadata.creation_timestamp),
                namespace: &key.namespace,
                name: &key.name,
                rule,
                index,
            },
            m: t::RouteMatch { path, method, headers, query, action },
            origin: u32::MAX,
        }
    }

    pub(super) fn regex(&mut self, pattern: &str) -> u32 {
        let i = match self.regex_index.get(pattern) {
            Some(&i) => i,
            None => {
                let i = self.regexes.len() as u32;
                self.regexes.push(pattern.to_owned());
                self.regex_index.insert(pattern.to_owned(), i);
                i
            }
        };
        self.note(|r| r.regex(pattern, i));
        i
    }

    /// The next entry's number.
    pub(super) fn origin(&mut self) -> u32 {
        self.origins += 1;
        self.origins - 1
    }

    pub(super) fn finish(self) -> Compiled {
        self.finish_landing().0
    }

    /// The table and statuses, and where each entry landed in the table's matches (by origin).
    pub(super) fn finish_landing(mut self) -> (Compiled, Vec<u32>) {
        let mut landed = vec![u32::MAX; self.origins as usize];
        let mut table = t::Table::default();
        self.gateway_statuses();
        for l in self.listeners.iter_mut().filter(|l| l.usable) {
            let hosts = std::mem::take(&mut l.vhosts);
            let vhosts = build_vhosts(hosts, &mut table.vhosts, &mut table.matches, &mut landed);
            table.listeners.push(t::Listener {
                name: format!("{}/{}", l.gateway, l.name),
                vhosts,
                certificates: std::mem::take(&mut l.certificates),
            });
        }
        table.ports = self.ports();
        table.wrr_slots = wrr_offsets(&mut self.actions);
        table.actions = self.actions;
        table.services = self.services;
        table.regexes = self.regexes;
        table.certificates = self.certificates;
        (Compiled { table, status: self.status, last_good: self.last_good, gone: None }, landed)
    }

    /// Every Gateway's status, from its listeners as they stand (attachedRoutes counted).
    pub(super) fn gateway_statuses(&mut self) {
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
                .map(|p| (Reason::UnsupportedAddress, p))
                .or_else(|| parameters_problem(gw).map(|p| (Reason::InvalidParameters, p)));
            let mut conditions = match rejected {
                Some((reason, p)) => vec![
                    condition(Type::Accepted, false, reason, &p, generation),
                    condition(Type::Programmed, false, Reason::Invalid, &p, generation),
                ],
                // The spec's ListenersNotValid: False when no listener is valid, True (with
                // this reason) when only some are.
                None if self.unusable_addresses.contains_key(key) => {
                    let list: Vec<String> =
                        self.unusable_addresses[key].iter().map(IpAddr::to_string).collect();
                    let message = format!("this node cannot listen on {}", list.join(", "));
                    let accepted = if invalid > 0 && !any_usable {
                        condition(
                            Type::Accepted,
                            false,
                            Reason::ListenersNotValid,
                            "no listener is valid",
                            generation,
                        )
                    } else {
                        condition(
                            Type::Accepted,
                            true,
                            Reason::Accepted,
                            "gateway accepted",
                            generation,
                        )
                    };
                    vec![
                        accepted,
                        condition(
                            Type::Programmed,
                            false,
                            Reason::AddressNotUsable,
                            &message,
                            generation,
                        ),
                    ]
                }
                None if !bind_failed.is_empty() => vec![
                    condition(
                        Type::Accepted,
                        true,
                        Reason::Accepted,
                        "gateway accepted",
                        generation,
                    ),
                    condition(
                        Type::Programmed,
                        false,
                        Reason::Pending,
                        &bind_failed.join("; "),
                        generation,
                    ),
                ],
                None if invalid > 0 && !any_usable => vec![
                    condition(
                        Type::Accepted,
                        false,
                        Reason::ListenersNotValid,
                        "no listener is valid",
                        generation,
                    ),
                    programmed_condition(false, "gateway", generation),
                ],
                None if invalid > 0 => vec![
                    condition(
                        Type::Accepted,
                        true,
                        Reason::ListenersNotValid,
                        &format!("{invalid} listener(s) are not valid; the others are served"),
                        generation,
                    ),
                    programmed_condition(true, "gateway", generation),
                ],
                None => vec![
                    condition(
                        Type::Accepted,
                        true,
                        Reason::Accepted,
                        "gateway accepted",
                        generation,
                    ),
                    programmed_condition(any_usable, "gateway", generation),
                ],
            };
            if self.insecure_frontend.contains(*key) {
                conditions.push(condition(
                    Type::InsecureFrontendValidationMode,
                    true,
                    Reason::ConfigurationChanged,
                    "AllowInsecureFallback: clients without a valid certificate are served too",
                    generation,
                ));
            }
            self.status.insert(
                ObjectId { kind: Kind::Gateway, key: (*key).clone() },
                (
                    generation,
                    Arc::new(ObjectStatus::Gateway(GatewayStatus {
                        addresses: (!reported.is_empty()).then_some(reported),
                        attached_listener_sets: None,
                        conditions: Some(conditions),
                        listeners: Some(listeners),
                    })),
                ),
            );
        }
    }

    /// The table's ports: every usable listener (numbered in order, as the table's listeners
    /// are) on each of its addresses (listeners of one port agree on TLS: `gateways` made the
    /// others conflicted).
    pub(super) fn ports(&self) -> Vec<t::Port> {
        type PortEntry = (t::HostIndex, bool, Option<t::ClientValidation>);
        let mut ports: BTreeMap<(u16, Option<t::Address>), PortEntry> = BTreeMap::new();
        for (listener_index, l) in self.listeners.iter().filter(|l| l.usable).enumerate() {
            let listener_index = listener_index as u32;
            for a in &l.addresses {
                let (index, tls, client) =
                    ports.entry((l.port, a.map(t::Address::from))).or_default();
                *tls |= l.tls;
                if client.is_none() {
                    client.clone_from(&l.client_validation);
                }
                match l.hostname {
                    None => index.any = Some(listener_index),
                    Some(h) => add_host(index, h, listener_index),
                }
            }
        }
        ports
            .into_iter()
            .map(|((port, address), (mut listeners, tls, client))| {
                sort_host_index(&mut listeners);
                let tls = tls.then_some(t::PortTls { client });
                t::Port { address, port, listeners, tls }
            })
            .collect()
    }
}

/// Gives each forwarding action its place in the weighted-round-robin state; returns the
/// state's size (`Table::wrr_slots`).
pub(super) fn wrr_offsets(actions: &mut t::Paged<t::Action>) -> u32 {
    let mut wrr = 0u32;
    for i in 0..actions.len() {
        if let t::ActionKind::Forward { backends, wrr_offset } = &actions[i].kind {
            let (count, at) = (backends.len() as u32, *wrr_offset);
            // Written only where it moves: an unchanged action keeps its page.
            if at != wrr
                && let Some(t::ActionKind::Forward { wrr_offset, .. }) =
                    actions.get_mut(i).map(|a| &mut a.kind)
            {
                *wrr_offset = wrr;
            }
            wrr += count;
        }
    }
    wrr
}

/// Builds the virtual hosts of one listener, appending to the table's vectors, and returns the
/// listener's host index. Order: exact names, wildcards longest first, catch-all last, so every
/// fallback points forward.
pub(super) fn build_vhosts(
    hosts: BTreeMap<String, Vec<Entry<'_>>>,
    vhosts: &mut t::Paged<t::VirtualHost>,
    matches: &mut t::Paged<t::RouteMatch>,
    landed: &mut [u32],
) -> t::HostIndex {
    // Taken whole, in the table's order: each name moves into its virtual host, no copies.
    // The map yields names in byte order, so a stable sort by (rank, longest first) keeps
    // them in byte order within each: the order (rank, longest first, name) without comparing
    // a single name (comparing names was a third of a compilation's sorting).
    let mut hosts: Vec<(String, Vec<Entry<'_>>)> = hosts.into_iter().collect();
    hosts.sort_by_key(|(name, _)| (host_rank(name), Reverse(name.len())));
    let base = vhosts.len() as u32;
    // The catch-all sorts last; wildcards by their suffix (".example.com"), as `fallback`
    // asks for them (a hash lookup per label: binary searches of the host index instead made
    // the whole compilation ~12 % slower at 5,000 routes).
    let any = hosts.last().filter(|(h, _)| h.is_empty()).map(|_| base + hosts.len() as u32 - 1);
    let wildcards: HashMap<&str, u32, foldhash::fast::RandomState> = hosts
        .iter()
        .enumerate()
        .filter_map(|(i, (h, _))| Some((h.strip_prefix('*')?, base + i as u32)))
        .collect();
    let fallbacks: Vec<Option<u32>> = hosts
        .iter()
        .map(|(name, _)| fallback(name, any, |suffix| wildcards.get(suffix).copied()))
        .collect();
    drop(wildcards);
    let mut index = t::HostIndex::default();
    matches.reserve(hosts.iter().map(|(_, e)| e.len()).sum());
    vhosts.reserve(hosts.len());
    for ((name, mut entries), fallback) in hosts.into_iter().zip(fallbacks) {
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let first = matches.len() as u32;
        let count = entries.len() as u32;
        for e in entries {
            if let Some(at) = landed.get_mut(e.origin as usize) {
                *at = matches.len() as u32;
            }
            matches.push(e.m);
        }
        let target = vhosts.len() as u32;
        if name.is_empty() {
            index.any = Some(target);
        } else {
            add_host(&mut index, &name, target);
        }
        vhosts.push(t::VirtualHost {
            hostname: name,
            matches: (first..first + count).collect(),
            fallback,
        });
    }
    sort_host_index(&mut index);
    index
}

/// 0 exact, 1 wildcard, 2 catch-all.
pub(super) fn host_rank(h: &str) -> u8 {
    if h.is_empty() {
        2
    } else if h.starts_with("*.") {
        1
    } else {
        0
    }
}

/// The most specific other name that covers `name`: the longest wildcard `*.suffix` where
/// `.suffix` is a proper dot-suffix of `name` (for a wildcard name, of its own suffix), as
/// `wildcard(".suffix")` finds them, else the catch-all `any`. Walks the dots of `name`, longest
/// suffix first: O(labels) lookups instead of a scan of every name (which made 5,000
/// hostnames quadratic).
pub(super) fn fallback(
    name: &str,
    any: Option<u32>,
    wildcard: impl Fn(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    // "a.b.example.com" tries "*.b.example.com", "*.example.com", "*.com";
    // "*.b.example.com" tries "*.example.com", "*.com".
    let base = name.strip_prefix("*.").unwrap_or(name);
    base.match_indices('.').find_map(|(i, _)| wildcard(&base[i..])).or(any)
}

/// [`fallback`] by a listener's host index (a patch has no other).
pub(super) fn fallback_in(index: &t::HostIndex, name: &str) -> Option<u32> {
    let list = &index.wildcard;
    fallback(name, index.any, |suffix| {
        let at = list.binary_search_by(|e| e.host.as_str().cmp(suffix)).ok()?;
        Some(list[at].target)
    })
}

pub(super) fn add_host(index: &mut t::HostIndex, host: &str, target: u32) {
    match host.strip_prefix('*') {
        Some(suffix) => index.wildcard.push(t::HostEntry { host: suffix.to_owned(), target }),
        None => index.exact.push(t::HostEntry { host: host.to_owned(), target }),
    }
}

pub(super) fn sort_host_index(index: &mut t::HostIndex) {
    index.exact.sort_by(|a, b| a.host.cmp(&b.host));
    index.exact.dedup_by(|a, b| a.host == b.host);
    index.wildcard.sort_by(|a, b| a.host.cmp(&b.host));
    index.wildcard.dedup_by(|a, b| a.host == b.host);
}

/// Prefix values compile without their trailing slash (`/v2/` ≡ `/v2`), except `/` itself.
pub(super) fn trim_prefix(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

pub(super) fn method_name(m: &HttpRouteRulesMatchesMethod) -> &'static str {
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

pub(super) fn created(t: &Option<Time>) -> (bool, i64, i32) {
    match t {
        Some(Time(ts)) => (false, ts.as_second(), ts.subsec_nanosecond()),
        None => (true, 0, 0),
    }
}
