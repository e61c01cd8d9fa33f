//! Route attachment: each route's parentRef against the listeners it names (sectionName,
//! port, allowedRoutes namespaces and kinds, hostname intersection, the HTTPRoute/GRPCRoute
//! hostname conflict), with the spec's reasons when it fails. GRPCRoutes go through here as
//! the HTTPRoutes they compile as (`model::grpc`), under their own kind.

use super::*;

impl<'m> Compiler<'m> {
    pub(super) fn routes(&mut self) {
        self.routes_with(&mut |c, _, key, route| c.route(key, route.http()));
    }

    /// Calls `compile` for every route, in the order in which conflicts are won (oldest first,
    /// then by namespace/name), with the route kind set.
    pub(super) fn routes_with(
        &mut self,
        compile: &mut dyn FnMut(&mut Self, RouteKind, &'m Key, RouteObject<'m>),
    ) {
        let http =
            self.model.http_routes.iter().map(|(k, r)| (RouteKind::Http, k, RouteObject::Http(r)));
        let grpc =
            self.model.grpc_routes.iter().map(|(k, r)| (RouteKind::Grpc, k, RouteObject::Grpc(r)));
        let mut routes: Vec<(RouteKind, &Key, RouteObject<'m>)> = http.chain(grpc).collect();
        routes.sort_by(|(ka, a, ra), (kb, b, rb)| {
            let order = |k, key: &'m Key, r: &RouteObject<'m>| {
                (created(&r.http().metadata.creation_timestamp), &key.namespace, &key.name, k)
            };
            order(*ka, a, ra).cmp(&order(*kb, b, rb))
        });
        for (kind, key, route) in routes {
            self.route_kind = kind;
            compile(self, kind, key, route);
        }
        self.route_kind = RouteKind::Http;
    }

    pub(super) fn route(&mut self, key: &'m Key, route: &'m HttpRoute) {
        let generation = route.metadata.generation;
        let hostnames: Vec<&str> =
            route.spec.hostnames.iter().flatten().map(String::as_str).collect();
        let rules: &[HttpRouteRules] = route.spec.rules.as_deref().unwrap_or(&[]);
        let unsupported = unsupported_rule_fields(rules);
        let mut parents = Vec::new();
        let mut attach: Vec<(usize, Vec<String>)> = Vec::new();
        for parent in route.spec.parent_refs.iter().flatten() {
            // Parents that are not ours (or do not exist) get no status from us.
            let Some(listener_ids) = self.parent_listeners(key, parent) else { continue };
            let outcome =
                self.attach(key, parent, listener_ids, &hostnames, unsupported.as_deref());
            let outcome = outcome.and_then(|found| self.without_conflicts(found));
            let accepted = match outcome {
                Ok(found) => {
                    attach.extend(found);
                    condition(Type::Accepted, true, Reason::Accepted, "route accepted", generation)
                }
                Err((reason, message)) => {
                    condition(Type::Accepted, false, reason, &message, generation)
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
        let mut resolved: Result<(), Why> = Ok(());
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
                Type::ResolvedRefs,
                true,
                Reason::ResolvedRefs,
                "all references resolved",
                generation,
            ),
            Err((reason, message)) => {
                condition(Type::ResolvedRefs, false, reason, &message, generation)
            }
        };
        for p in &mut parents {
            p.conditions.push(refs.clone());
        }
        for (listener, effective) in attach {
            self.note(|r| r.attach(listener, &effective));
            self.listeners[listener].attached += 1;
            let kind = self.route_kind;
            self.listeners[listener].attached_hosts[kind as usize].add(key, &effective);
            for (rule_index, rule) in rules.iter().enumerate() {
                let action = rule_actions[rule_index];
                let default_match = [HttpRouteRulesMatches::default()];
                let matches = match rule.matches.as_deref() {
                    Some(m) if !m.is_empty() => m,
                    _ => &default_match,
                };
                for (index, m) in matches.iter().enumerate() {
                    let mut entry = self.entry(key, route, rule_index, index, m, action);
                    if let Some((last, others)) = effective.split_last() {
                        for host in others {
                            let copy = Entry {
                                key: entry.key.clone(),
                                m: entry.m.clone(),
                                origin: self.origin(),
                            };
                            self.note(|r| r.entry(listener, host, &copy));
                            let vhosts = &mut self.listeners[listener].vhosts;
                            vhosts.entry(host.clone()).or_default().push(copy);
                        }
                        entry.origin = self.origin();
                        self.note(|r| r.entry(listener, last, &entry));
                        let vhosts = &mut self.listeners[listener].vhosts;
                        vhosts.entry(last.clone()).or_default().push(entry);
                    }
                }
            }
        }
        let status = HttpRouteStatus { parents };
        let status = match self.route_kind {
            RouteKind::Http => ObjectStatus::HttpRoute(status),
            RouteKind::Grpc => ObjectStatus::GrpcRoute(status),
        };
        let id = ObjectId { kind: self.route_kind.object_kind(), key: key.clone() };
        self.status.insert(id, (generation, Arc::new(status)));
    }

    /// Drops the listeners where a route of the other kind (HTTPRoute vs GRPCRoute) attached
    /// earlier shares a hostname with this one: the spec accepts exactly one of the two, the
    /// older (then the first by namespace/name), and routes are compiled in that order.
    fn without_conflicts(
        &self,
        found: Vec<(usize, Vec<String>)>,
    ) -> Result<Vec<(usize, Vec<String>)>, Why> {
        let kind = self.route_kind;
        let mut conflict = None;
        let kept: Vec<_> = found
            .into_iter()
            .filter(|(i, effective)| {
                let l = &self.listeners[*i];
                let other_kind = match kind {
                    RouteKind::Http => RouteKind::Grpc,
                    RouteKind::Grpc => RouteKind::Http,
                };
                let other = l.attached_hosts[other_kind as usize].first_overlap(effective);
                self.note(|r| {
                    r.asked(Asked::Overlap {
                        listener: *i,
                        kind: other_kind,
                        effective: effective.clone(),
                        first: other.cloned(),
                    });
                });
                if let Some(key) = other {
                    conflict = Some(format!(
                        "its hostnames overlap {} {key} on listener {} (the older route is \
                         accepted)",
                        other_kind.name(),
                        l.name
                    ));
                }
                other.is_none()
            })
            .collect();
        match conflict {
            Some(why) if kept.is_empty() => Err((Reason::NotAllowedByListeners, why)),
            _ => Ok(kept),
        }
    }

    /// The listeners of the Gateway a parentRef names, when it is a Gateway of ours.
    pub(super) fn parent_listeners<'s>(
        &'s self,
        route_key: &'s Key,
        parent: &'s HttpRouteParentRefs,
    ) -> Option<&'s [usize]> {
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP || kind != "Gateway" {
            return None;
        }
        let namespace = parent.namespace.as_deref().unwrap_or(&route_key.namespace);
        let (_, ids) = self.gateway_listeners.get(&(namespace, &*parent.name))?;
        Some(ids)
    }

    /// The listeners a parentRef attaches to with their effective hostnames, or the reason it
    /// attaches to none.
    pub(super) fn attach(
        &self,
        route_key: &Key,
        parent: &HttpRouteParentRefs,
        listener_ids: &[usize],
        hostnames: &[&str],
        unsupported: Option<&str>,
    ) -> Result<Vec<(usize, Vec<String>)>, Why> {
        if let Some(what) = unsupported {
            return Err((Reason::UnsupportedValue, what.to_owned()));
        }
        let candidates: Vec<usize> =
            listener_ids.iter().copied().filter(|&i| picks(parent, &self.listeners[i])).collect();
        if candidates.is_empty() {
            return Err((Reason::NoMatchingParent, "no listener matches sectionName/port".into()));
        }
        let allowed: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| {
                let l = &self.listeners[i];
                l.usable
                    && l.allowed_kinds.contains(&self.route_kind)
                    && self.namespace_allowed(l, &route_key.namespace)
            })
            .collect();
        if allowed.is_empty() {
            return Err((Reason::NotAllowedByListeners, "no listener allows this route".into()));
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
                Reason::NoMatchingListenerHostname,
                "no listener hostname intersects the route's hostnames".into(),
            ));
        }
        Ok(found)
    }

    pub(super) fn namespace_allowed(&self, l: &ListenerInfo<'_>, route_ns: &str) -> bool {
        match &l.allowed {
            AllowedNamespaces::All => true,
            AllowedNamespaces::Same => l.gateway.namespace == route_ns,
            AllowedNamespaces::Selector(sel) => {
                self.note(|r| {
                    let ns = self.model.namespaces.get(&Key::new("", route_ns));
                    r.asked(Asked::Namespace(ns.cloned()));
                });
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
}

/// Whether a parentRef's sectionName and port (where it gives them) pick listener `l`.
pub(super) fn picks(parent: &HttpRouteParentRefs, l: &ListenerInfo<'_>) -> bool {
    parent.section_name.as_deref().is_none_or(|s| s == l.name)
        && parent.port.is_none_or(|p| p == i32::from(l.port))
}

/// The effective hostnames of one kind of route attached to a listener, in attachment order,
/// asked which route first overlaps a new one's hostnames. Exact names are indexed: with
/// thousands of routes on a listener a scan per route made compilation quadratic (a quarter of
/// the compile time at 5,000 routes); only `""` (any) and wildcards are scanned, and a new
/// route with a wildcard or no hostname scans every entry, as it may overlap any of them.
#[derive(Default)]
pub(crate) struct AttachedHosts<'m> {
    /// Routes in attachment order.
    routes: Vec<&'m Key>,
    /// Exact hostname → the first route (index in `routes`) that has it.
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Wildcard or `""` hostnames with their route's index, in attachment order.
    patterns: Vec<(String, usize)>,
}

impl<'m> AttachedHosts<'m> {
    pub(super) fn add(&mut self, key: &'m Key, effective: &[String]) {
        let index = self.routes.len();
        for h in effective {
            if h.is_empty() || h.starts_with('*') {
                self.patterns.push((h.clone(), index));
            } else if !self.exact.contains_key(h.as_str()) {
                self.exact.insert(h.clone(), index);
            }
        }
        self.routes.push(key);
    }

    /// The earliest attached route with a hostname that overlaps one of `effective`. Every
    /// hostname is in `exact` (with the first route that has it) or in `patterns`, so the
    /// earliest route among the entries that overlap is the answer; only a wildcard or `""`
    /// among `effective` needs every exact name looked at.
    pub(super) fn first_overlap(&self, effective: &[String]) -> Option<&'m Key> {
        if self.routes.is_empty() {
            return None;
        }
        let overlaps = |h: &str| effective.iter().any(|e| hosts_overlap(h, e));
        // Patterns are in attachment order: the first that overlaps is the earliest.
        let by_pattern = self.patterns.iter().find(|(p, _)| overlaps(p)).map(|(_, i)| *i);
        let by_name = if effective.iter().any(|e| e.is_empty() || e.starts_with('*')) {
            self.exact.iter().filter(|(h, _)| overlaps(h)).map(|(_, i)| *i).min()
        } else {
            effective.iter().filter_map(|e| self.exact.get(e.as_str())).copied().min()
        };
        by_name.into_iter().chain(by_pattern).min().map(|i| self.routes[i])
    }
}

/// Effective hostnames of a route on a listener (`""` = any host). Empty: no intersection.
pub(crate) fn intersect(listener: Option<&str>, route: &[&str]) -> Vec<String> {
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

/// Whether two effective hostnames (`""`: any) have a name in common.
pub(super) fn hosts_overlap(a: &str, b: &str) -> bool {
    a.is_empty() || b.is_empty() || intersect_one(a, b).is_some()
}

pub(super) fn intersect_one<'a>(l: &'a str, r: &'a str) -> Option<&'a str> {
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
