//! Incremental compilation: each route's compiled fragment is kept between compilations with
//! what it asked of everything outside itself, and is replayed instead of recompiled while the
//! route is the same object and every question still gets the same answer.
//!
//! A route's compilation reads, besides the route itself:
//! - the listeners of the Gateways it names (the *context*: which listeners exist, their names,
//!   ports, hostnames, allowed namespaces and kinds, whether they are usable), the same for every
//!   route;
//! - the labels of its Namespace, when a listener selects namespaces by label;
//! - which route of the other kind (HTTPRoute vs GRPCRoute) already holds an overlapping hostname
//!   on a listener (the conflict rule: the older route wins);
//! - each backend reference's resolution: kind, ReferenceGrant, Service and port;
//! - the ClientCertificateHeader filters it names.
//!
//! The context is computed in full every time (Gateways are few) and compared with the last
//! one; when it differs every fragment is dropped: a Gateway, GatewayClass, listener Secret or
//! anything that changes a listener is a *global* change, as any route may attach to it. The
//! other questions are recorded, in order, with their answers while a route compiles fresh, and
//! asked again before a replay (the *trace*: no index from dependencies to dependents to keep
//! right; asking is a lookup each, and a changed answer is never missed because nothing but the
//! trace is trusted). A route object is the same when it is the same `Arc` the model held last
//! time — kept alive by the fragment, so its address cannot be reused by a new object.
//!
//! A replay does to the compiler exactly what the fresh compilation did: the same statuses
//! (shared), attachments, and actions and match entries moved out of the last table (given back
//! with [`Incremental::keep`] and dropped after the compilation; a fragment knows where its
//! output landed there), with indices into the table's shared vectors (actions, Services,
//! regexes) mapped to this compilation's. Services are interned by asking the backend questions
//! again, in the recorded order, so they get the indices a fresh compilation would give them.
//!
//! A replaying compilation still builds the table whole: every virtual host sorted and
//! indexed, every status put in the map (~21 ms at 5,000 routes against ~26 ms from scratch).
//! So when only routes changed, [`Incremental::compile`] patches the last table instead
//! (`compile::patch`: ~75 µs for one route at 5,000) and this whole compilation runs for every
//! other change, and to compact the holes patches leave. This layer gives patching what it
//! needs: each route's fragment (where its output is, what it asked) and statuses shared
//! between compilations (the status writer skips unchanged ones by address).
//!
//! Equivalence is tested: random sequences of object changes, after each the incremental table
//! encodes to the same bytes as a compilation from scratch (a patched one serves every request
//! the same), with the same statuses (`tests::incremental`).

use std::cell::RefCell;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;

use super::patch::Kept;
use super::*;
use crate::model::ClientCertificateHeader;

/// What the last compilation left for the next one: the context, every route's fragment and the
/// table itself (given back with [`Incremental::keep`]), which fragments point into.
#[derive(Default)]
pub struct Incremental {
    /// The last table compiled, with the compilation's round.
    pub(super) previous: Option<(u64, t::Table)>,
    pub(super) context: Option<Context>,
    /// By the address of the route object they were compiled from (kept alive by the
    /// fragment, so no other object can have it): a changed route is a new object and finds
    /// none; its old fragment goes at the end of the compilation.
    pub(super) fragments: HashMap<usize, Fragment, foldhash::fast::RandomState>,
    /// Compilations so far: fragments not seen in the latest are dropped.
    pub(super) round: u64,
    pub(super) last: Reuse,
    /// What patching the last table needs besides the fragments (`compile::patch`); `None`
    /// until a whole compilation has made it.
    pub(super) kept: Option<Kept>,
}

impl std::fmt::Debug for Incremental {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incremental")
            .field("fragments", &self.fragments.len())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// How the last compilation went: routes replayed and compiled fresh.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Routes whose fragment was replayed.
    pub replayed: usize,
    /// Routes compiled fresh (new, changed, or an answer changed).
    pub fresh: usize,
    /// The listeners changed: every route compiled fresh.
    pub global: bool,
    /// Only routes changed: the last table was patched (`fresh` routes compiled into it, the
    /// ones removed taken out) instead of rebuilt.
    pub patched: bool,
}

impl Incremental {
    /// Compiles `model` as [`compile`] does, replaying what has not changed since the last call.
    /// Replays take from the last table: give it back with [`Incremental::keep`] once used, or
    /// every route compiles fresh next time.
    pub fn compile(&mut self, model: &Model, settings: &Settings) -> Compiled {
        match self.patch(model, settings) {
            Some(patched) => patched,
            None => self.rebuild(model, settings),
        }
    }

    /// Builds the table whole, replaying unchanged routes.
    fn rebuild(&mut self, model: &Model, settings: &Settings) -> Compiled {
        let mut c = Compiler::new(model, settings);
        c.classes();
        c.gateways();
        let context = Context::of(&c);
        let mut previous = self.previous.take().filter(|(r, _)| *r == self.round).map(|(_, t)| t);
        let global = self.context.as_ref() != Some(&context) || previous.is_none();
        if global {
            self.fragments = Default::default();
            self.context = Some(context);
        }
        self.round += 1;
        let mut reuse = Reuse { global, ..Reuse::default() };
        c.routes_with(&mut |c, _, key, route| {
            let address = route.address();
            if let (Some(f), Some(previous)) = (self.fragments.get_mut(&address), previous.as_mut())
                && f.within(previous)
                && let Some(services) = c.still_answers(key, &f.asked)
            {
                c.replay(key, f, previous, services);
                f.round = self.round;
                reuse.replayed += 1;
                return;
            }
            let fragment = c.record(key, route, self.round);
            reuse.fresh += 1;
            self.fragments.insert(address, fragment);
        });
        self.fragments.retain(|_, f| f.round == self.round);
        self.last = reuse;
        self.kept = Some(Kept::of(&mut c, &self.fragments));
        let (compiled, landed) = c.finish_landing();
        // Each fragment's entries now point at where they landed in this table.
        for f in self.fragments.values_mut() {
            for e in &mut f.entries {
                e.at = landed.get(e.at as usize).copied().unwrap_or(u32::MAX);
            }
        }
        drop(previous);
        compiled
    }

    /// Gives back the table the last [`Incremental::compile`] returned (unchanged), for the next
    /// one to take unchanged routes' actions and matches from.
    pub fn keep(&mut self, table: t::Table) {
        self.previous = Some((self.round, table));
    }

    /// The table given back last (the one published).
    pub fn table(&self) -> Option<&t::Table> {
        self.previous.as_ref().map(|(_, table)| table)
    }

    /// How the last compilation went.
    pub fn last(&self) -> Reuse {
        self.last
    }
}

/// The route object a fragment was compiled from.
#[derive(Clone, Copy)]
pub(super) enum RouteObject<'m> {
    Http(&'m Arc<HttpRoute>),
    Grpc(&'m Arc<crate::model::GrpcRoute>),
}

impl<'m> RouteObject<'m> {
    /// The route as the compiler reads it (a GRPCRoute through its HTTPRoute form).
    pub(super) fn http(self) -> &'m HttpRoute {
        match self {
            RouteObject::Http(r) => r,
            RouteObject::Grpc(r) => &r.http,
        }
    }

    /// The object, to hold (never read) so that its address is not reused while the
    /// fragment lives.
    fn keep(self) -> Arc<dyn std::any::Any + Send + Sync> {
        match self {
            RouteObject::Http(r) => Arc::clone(r) as _,
            RouteObject::Grpc(r) => Arc::clone(r) as _,
        }
    }

    /// The object's address: its identity while a fragment holds it.
    pub(super) fn address(self) -> usize {
        match self {
            RouteObject::Http(r) => Arc::as_ptr(r) as usize,
            RouteObject::Grpc(r) => Arc::as_ptr(r) as usize,
        }
    }
}

/// What one route's compilation asked, and where its output is in the last table.
pub(super) struct Fragment {
    _route: Arc<dyn std::any::Any + Send + Sync>,
    /// The route.
    pub(super) key: Arc<Key>,
    pub(super) kind: RouteKind,
    pub(super) round: u64,
    asked: Vec<Asked>,
    /// Indices of the Services its backend questions returned, in order (in the last table).
    services: Vec<u32>,
    /// Regexes it interned, in order, with the index each has in the last table.
    regexes: Vec<(String, u32)>,
    /// Listeners it attached to with its effective hostnames there.
    pub(super) attach: Vec<(usize, Vec<String>)>,
    /// Its actions: `actions` of them from `action_base` in the last table.
    pub(super) action_base: u32,
    pub(super) actions: u32,
    pub(super) entries: Vec<FragmentEntry>,
    status: Option<(Option<i64>, Arc<ObjectStatus>)>,
}

/// One match entry of a route.
pub(super) struct FragmentEntry {
    pub(super) listener: usize,
    /// The effective hostname (virtual host) it goes into.
    pub(super) host: String,
    pub(super) rank: SortKey<()>,
    /// The match's index in the last table's matches (during a compilation: the entry's origin).
    pub(super) at: u32,
}

impl Fragment {
    /// The listeners where the route asked which route of the other kind overlaps it.
    pub(super) fn conflicts_asked(&self) -> impl Iterator<Item = usize> + '_ {
        self.asked.iter().filter_map(|a| match a {
            Asked::Overlap { listener, .. } => Some(*listener),
            _ => None,
        })
    }

    /// Whether everything it points at is in `table` (always, for the table it came from).
    fn within(&self, table: &t::Table) -> bool {
        let actions = self.action_base as usize + self.actions as usize;
        actions <= table.actions.len()
            && self.entries.iter().all(|e| (e.at as usize) < table.matches.len())
    }
}

/// One question a route's compilation asked outside the route, with its answer.
pub(super) enum Asked {
    /// The route's Namespace (its labels), for a listener that selects by label.
    Namespace(Option<Arc<Namespace>>),
    /// The first route of `kind` on `listener` whose hostnames overlap `effective`.
    Overlap { listener: usize, kind: RouteKind, effective: Vec<String>, first: Option<Key> },
    /// A backend reference's resolution (the Service's index is not part of the answer).
    Backend { backend: OwnedBackendRef, answer: Result<(), Why> },
    /// A ClientCertificateHeader filter by name in the route's namespace.
    Filter { name: String, found: Option<Arc<ClientCertificateHeader>> },
}

#[derive(Debug, Clone)]
pub(super) struct OwnedBackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i32>,
}

impl OwnedBackendRef {
    pub(super) fn of(b: BackendRef<'_>) -> OwnedBackendRef {
        OwnedBackendRef {
            group: b.group.map(str::to_owned),
            kind: b.kind.map(str::to_owned),
            name: b.name.to_owned(),
            namespace: b.namespace.map(str::to_owned),
            port: b.port,
        }
    }

    fn borrow(&self) -> BackendRef<'_> {
        BackendRef {
            group: self.group.as_deref(),
            kind: self.kind.as_deref(),
            name: &self.name,
            namespace: self.namespace.as_deref(),
            port: self.port,
        }
    }
}

/// While a route compiles fresh for [`Incremental`]: what it asks and does.
#[derive(Default)]
pub(super) struct Recording {
    asked: Vec<Asked>,
    services: Vec<u32>,
    regexes: Vec<(String, u32)>,
    attach: Vec<(usize, Vec<String>)>,
    entries: Vec<FragmentEntry>,
}

impl Recording {
    pub(super) fn asked(&mut self, asked: Asked) {
        self.asked.push(asked);
    }

    pub(super) fn service(&mut self, index: u32) {
        self.services.push(index);
    }

    /// A regex the route interned (once: the same pattern asked again, for another listener or
    /// hostname, has the same index).
    pub(super) fn regex(&mut self, pattern: &str, index: u32) {
        if !self.regexes.iter().any(|(_, i)| *i == index) {
            self.regexes.push((pattern.to_owned(), index));
        }
    }

    pub(super) fn attach(&mut self, listener: usize, effective: &[String]) {
        self.attach.push((listener, effective.to_vec()));
    }

    pub(super) fn entry(&mut self, listener: usize, host: &str, e: &Entry<'_>) {
        let rank = e.key.renamed((), ());
        self.entries.push(FragmentEntry { listener, host: host.to_owned(), rank, at: e.origin });
    }
}

/// Compiler state for recording: `None` outside a recorded route (compile from scratch).
pub(super) type Recorder = RefCell<Option<Recording>>;

/// What every route's compilation reads of the Gateways: their listeners as routes see them.
#[derive(PartialEq)]
pub(super) struct Context {
    controller: String,
    listeners: Vec<ListenerContext>,
    gateways: Vec<((String, String), Vec<usize>)>,
}

#[derive(PartialEq)]
struct ListenerContext {
    gateway: Key,
    name: String,
    port: u16,
    hostname: Option<String>,
    allowed: Option<Option<gateway_api::apis::experimental::gateways::GatewayListenersAllowedRoutesNamespacesSelector>>,
    allowed_kinds: Vec<RouteKind>,
    usable: bool,
}

impl Context {
    pub(super) fn of(c: &Compiler<'_>) -> Context {
        let listeners = c
            .listeners
            .iter()
            .map(|l| ListenerContext {
                gateway: l.gateway.clone(),
                name: l.name.to_owned(),
                port: l.port,
                hostname: l.hostname.map(str::to_owned),
                // None: same namespace; Some(None): all; Some(Some(s)): a selector.
                allowed: match &l.allowed {
                    AllowedNamespaces::Same => None,
                    AllowedNamespaces::All => Some(None),
                    AllowedNamespaces::Selector(s) => Some(Some((*s).clone())),
                },
                allowed_kinds: l.allowed_kinds.clone(),
                usable: l.usable,
            })
            .collect();
        let gateways = c
            .gateway_listeners
            .iter()
            .map(|((ns, name), (_, ids))| (((*ns).to_owned(), (*name).to_owned()), ids.clone()))
            .collect();
        Context { controller: c.settings.controller_name.clone(), listeners, gateways }
    }
}

impl<'m> Compiler<'m> {
    /// Compiles `route` fresh, recording what it asks and does.
    pub(super) fn record(&mut self, key: &'m Key, route: RouteObject<'m>, round: u64) -> Fragment {
        *self.recording.get_mut() = Some(Recording::default());
        let action_base = self.actions.len() as u32;
        self.route(key, route.http());
        let r = self.recording.get_mut().take().unwrap_or_default();
        // The map holds the status `route` just inserted (or none: no parent of ours).
        let id = ObjectId { kind: self.route_kind.object_kind(), key: key.clone() };
        Fragment {
            _route: route.keep(),
            key: Arc::new(key.clone()),
            kind: self.route_kind,
            round,
            asked: r.asked,
            services: r.services,
            regexes: r.regexes,
            attach: r.attach,
            action_base,
            actions: self.actions.len() as u32 - action_base,
            entries: r.entries,
            status: self.status.get(&id).cloned(),
        }
    }

    /// Asks `asked` again, in order; `Some(indices of the Services returned)` when every answer
    /// is the same. Backend questions intern their Services as a fresh compilation would.
    fn still_answers(&mut self, key: &'m Key, asked: &[Asked]) -> Option<Vec<u32>> {
        let mut services = Vec::new();
        for a in asked {
            let same = match a {
                Asked::Namespace(seen) => {
                    let now = self.model.namespaces.get(&Key::new("", &key.namespace));
                    match (seen, now) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
                }
                Asked::Overlap { listener, kind, effective, first } => {
                    let hosts = &self.listeners[*listener].attached_hosts[*kind as usize];
                    hosts.first_overlap(effective) == first.as_ref()
                }
                Asked::Backend { backend, answer } => {
                    match (self.resolve_backend(key, backend.borrow()), answer) {
                        (Ok(index), Ok(())) => {
                            services.push(index);
                            true
                        }
                        (Err(now), Err(then)) => now == *then,
                        _ => false,
                    }
                }
                Asked::Filter { name, found } => {
                    let now = self.model.client_cert_headers.get(&Key::new(&key.namespace, name));
                    match (found, now) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
                }
            };
            if !same {
                return None;
            }
        }
        Some(services)
    }

    /// Does what the fragment's fresh compilation did, moving its actions and matches out of the
    /// last table (each is the fragment's alone, and the last table is dropped after this
    /// compilation: no copy, and nothing of it left to free) with this compilation's indices,
    /// and points the fragment at them.
    fn replay(
        &mut self,
        key: &'m Key,
        f: &mut Fragment,
        previous: &mut t::Table,
        services: Vec<u32>,
    ) {
        let service = |old: u32| {
            let at = f.services.iter().position(|&o| o == old);
            at.map_or(old, |i| services[i])
        };
        let regexes: Vec<(u32, u32)> =
            f.regexes.iter().map(|(pattern, old)| (*old, self.regex(pattern))).collect();
        let regex = |old: u32| regexes.iter().find(|(o, _)| *o == old).map_or(old, |(_, n)| *n);
        let base = self.actions.len() as u32;
        let (from, to) = (f.action_base as usize, (f.action_base + f.actions) as usize);
        for a in previous.actions.range_mut(from..to).into_iter().flatten() {
            let mut a = std::mem::replace(a, vacant_action());
            if let t::ActionKind::Forward { backends, .. } = &mut a.kind {
                for b in backends {
                    if let t::BackendTarget::Service(i) = &mut b.target {
                        *i = service(*i);
                    }
                }
            }
            for m in &mut a.mirrors {
                m.service = service(m.service);
            }
            self.actions.push(a);
        }
        let kind = self.route_kind;
        for (listener, effective) in &f.attach {
            let l = &mut self.listeners[*listener];
            l.attached += 1;
            l.attached_hosts[kind as usize].add(key, effective);
        }
        for e in &mut f.entries {
            let mut m = std::mem::replace(&mut previous.matches[e.at as usize], vacant_match());
            m.action = m.action - f.action_base + base;
            if let t::PathMatch::Regex(i) = &mut m.path {
                *i = regex(*i);
            }
            let values = m.headers.iter_mut().map(|h| &mut h.value);
            for v in values.chain(m.query.iter_mut().map(|q| &mut q.value)) {
                if let t::ValueMatch::Regex(i) = v {
                    *i = regex(*i);
                }
            }
            let origin = self.origin();
            e.at = origin;
            let entry = Entry { key: e.rank.renamed(&key.namespace, &key.name), m, origin };
            let vhosts = &mut self.listeners[e.listener].vhosts;
            match vhosts.get_mut(e.host.as_str()) {
                Some(list) => list.push(entry),
                None => drop(vhosts.insert(e.host.clone(), vec![entry])),
            }
        }
        for ((_, id), (_, new)) in f.regexes.iter_mut().zip(&regexes) {
            *id = *new;
        }
        f.services = services;
        f.action_base = base;
        if let Some((generation, status)) = &f.status {
            let id = ObjectId { kind: kind.object_kind(), key: key.clone() };
            self.status.insert(id, (*generation, Arc::clone(status)));
        }
    }

    /// Records `asked` when a route is being recorded.
    pub(super) fn note(&self, f: impl FnOnce(&mut Recording)) {
        if let Some(r) = self.recording.borrow_mut().as_mut() {
            f(r);
        }
    }
}

/// What a replay leaves in the last table where it took an action (and a patch where it took
/// a route out): allocates nothing.
pub(super) fn vacant_action() -> t::Action {
    t::Action {
        route: String::new(),
        rule: 0,
        kind: t::ActionKind::Respond { status: 0 },
        request_headers: Default::default(),
        rewrite: Default::default(),
        response_headers: Default::default(),
        timeouts: Default::default(),
        mirrors: Vec::new(),
        cors: None,
        retry: Default::default(),
        client_cert_headers: Vec::new(),
    }
}

/// What a replay leaves in the last table where it took a match: allocates nothing.
fn vacant_match() -> t::RouteMatch {
    t::RouteMatch {
        path: t::PathMatch::Regex(0),
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
        action: 0,
    }
}
