//! Patching the last table when only routes changed: the routes that are new (or a new object)
//! are compiled into it, the ones gone are taken out, and nothing else is touched — no route is
//! replayed, no virtual host rebuilt, no status but theirs and their Gateways' recomputed. A
//! change to any other object, to the listeners or to the settings compiles the table whole
//! (`compile::incremental`), as does a change that could move the HTTPRoute/GRPCRoute conflict
//! rule (below).
//!
//! What a route's compilation asks outside itself (`incremental`) stays answered the same:
//! Namespaces, Services, EndpointSlices, ReferenceGrants and ClientCertificateHeaders are the
//! same objects as in the compilation that made the table (checked by address, the old ones
//! kept alive so that no new object can take an address), and so are the listeners. The one
//! question about other routes — which route of the *other* kind holds an overlapping hostname
//! on a listener, the older winning — is kept out of reach: a patch is taken only when every
//! listener a changed route attached to, or may attach to, has routes of one kind only (before
//! and after). Routes of one kind do not ask about each other: each one's entries are sorted
//! into its virtual hosts by the spec's precedence, which is all a fresh compilation does.
//!
//! Nothing in the table moves, so that the encoder re-encodes only the pages a change touched
//! (`table::Paged`). A removed route's actions, matches and virtual host stay behind as holes
//! (an action that answers nothing and keeps its weighted-state slots, a match no virtual host
//! lists, a nameless virtual host in no host index); a new route's take holes first (its
//! actions only a run of hollow ones with the same slot counts, so no offset moves) and are
//! appended otherwise, as are new Services and regexes (unused ones stay). Under churn the
//! table keeps its size; holes left unfilled compile the table whole once they are a quarter as
//! many as live entries (they cost memory in both processes and bytes in every root). So a
//! patched table serves every request as a fresh compilation's would and differs in indices
//! only (`tests::incremental` compares the two by what each request meets: every virtual host's
//! matches with their actions, Services and regexes resolved).

use std::sync::Arc;

use super::incremental::{Context, Fragment, vacant_action};
use super::*;

/// What patching needs besides the fragments, from the compilation that made the last table.
pub(super) struct Kept {
    /// The model's objects other than routes, as last compiled.
    others: Others,
    bind_failures: BTreeMap<table::shm::BindKey, String>,
    /// The compiler's interning of Services (by object address) and regexes, for the table.
    service_index: HashMap<(usize, i32, t::UpstreamProtocol), u32, foldhash::fast::RandomState>,
    regex_index: HashMap<String, u32, foldhash::fast::RandomState>,
    /// Attachments per listener (the compiler's numbering).
    attached: Vec<i32>,
    /// Routes per listener, by kind, that asked there which route of the other kind overlaps
    /// them (the conflict rule): every route that attaches there, and those that lost to one.
    asked: Vec<[i32; 2]>,
    /// Each match's precedence and route, by index in the table (`None`: a hole); made from the
    /// fragments by the first patch after a whole compilation.
    ranks: Option<Vec<Option<Rank>>>,
    /// Actions, matches and virtual hosts of removed routes left in the table.
    holes: usize,
    /// Where the holes are, for routes added later to fill: a route's actions take a run of
    /// hollow actions holding as many weighted-state slots each (so no offset moves), its
    /// matches and virtual hosts any hole. Under churn the table then stays the same size.
    free: Free,
}

/// The holes of a patched table, by kind.
#[derive(Default)]
struct Free {
    /// Runs of hollow actions by their slot counts, each run's first index.
    actions: HashMap<Vec<usize>, Vec<u32>, foldhash::fast::RandomState>,
    matches: Vec<u32>,
    vhosts: Vec<u32>,
}

type Rank = (SortKey<()>, Arc<Key>);

impl Kept {
    /// Takes what a patch needs from a whole compilation about to finish.
    pub(super) fn of(
        c: &mut Compiler<'_>,
        fragments: &HashMap<usize, Fragment, foldhash::fast::RandomState>,
    ) -> Kept {
        let attached = c.listeners.iter().map(|l| l.attached).collect();
        let mut asked = vec![[0; 2]; c.listeners.len()];
        for f in fragments.values() {
            for l in f.conflicts_asked() {
                asked[l][f.kind as usize] += 1;
            }
        }
        Kept {
            others: Others::of(c.model),
            bind_failures: c.settings.bind_failures.clone(),
            service_index: std::mem::take(&mut c.service_index),
            regex_index: std::mem::take(&mut c.regex_index),
            attached,
            asked,
            ranks: None,
            holes: 0,
            free: Free::default(),
        }
    }
}

/// The model's maps of every kind but routes, holding the objects (so their addresses stay
/// theirs).
struct Others {
    gateway_classes:
        BTreeMap<Key, Arc<gateway_api::apis::experimental::gatewayclasses::GatewayClass>>,
    gateways: BTreeMap<Key, Arc<Gateway>>,
    reference_grants:
        BTreeMap<Key, Arc<gateway_api::apis::experimental::referencegrants::ReferenceGrant>>,
    services: BTreeMap<Key, Arc<k8s_openapi::api::core::v1::Service>>,
    endpoint_slices: BTreeMap<Key, Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    namespaces: BTreeMap<Key, Arc<k8s_openapi::api::core::v1::Namespace>>,
    secrets: BTreeMap<Key, Arc<k8s_openapi::api::core::v1::Secret>>,
    config_maps: BTreeMap<Key, Arc<k8s_openapi::api::core::v1::ConfigMap>>,
    client_cert_headers: BTreeMap<Key, Arc<crate::model::ClientCertificateHeader>>,
}

impl Others {
    fn of(m: &Model) -> Others {
        Others {
            gateway_classes: m.gateway_classes.clone(),
            gateways: m.gateways.clone(),
            reference_grants: m.reference_grants.clone(),
            services: m.services.clone(),
            endpoint_slices: m.endpoint_slices.clone(),
            namespaces: m.namespaces.clone(),
            secrets: m.secrets.clone(),
            config_maps: m.config_maps.clone(),
            client_cert_headers: m.client_cert_headers.clone(),
        }
    }

    /// Whether `m` holds the same objects (by address).
    fn same(&self, m: &Model) -> bool {
        fn same<T>(a: &BTreeMap<Key, Arc<T>>, b: &BTreeMap<Key, Arc<T>>) -> bool {
            a.len() == b.len()
                && a.iter().zip(b).all(|((ka, a), (kb, b))| Arc::ptr_eq(a, b) && ka == kb)
        }
        same(&self.gateway_classes, &m.gateway_classes)
            && same(&self.gateways, &m.gateways)
            && same(&self.reference_grants, &m.reference_grants)
            && same(&self.services, &m.services)
            && same(&self.endpoint_slices, &m.endpoint_slices)
            && same(&self.namespaces, &m.namespaces)
            && same(&self.secrets, &m.secrets)
            && same(&self.config_maps, &m.config_maps)
            && same(&self.client_cert_headers, &m.client_cert_headers)
    }
}

impl Incremental {
    /// Patches the last table when only routes changed (see the module); `None`: compile whole.
    /// Gives up before touching anything, except when the kept state turns out inconsistent
    /// (never, by construction): then the last table is dropped and the whole compilation that
    /// follows starts from scratch.
    pub(super) fn patch(&mut self, model: &Model, settings: &Settings) -> Option<Compiled> {
        let kept = self.kept.as_ref()?;
        let (round, table) = self.previous.as_ref()?;
        if *round != self.round
            || settings.bind_failures != kept.bind_failures
            || kept.holes * 5 > table.matches.len() + table.actions.len()
            || !kept.others.same(model)
        {
            return None;
        }
        // Which routes changed: a new object has no fragment; a fragment not seen is gone. (A
        // whole compilation after this marks every fragment it keeps itself.)
        let next = self.round + 1;
        let mut added = Vec::new();
        let mut seen = 0;
        let http =
            model.http_routes.iter().map(|(k, r)| (RouteKind::Http, k, RouteObject::Http(r)));
        let grpc =
            model.grpc_routes.iter().map(|(k, r)| (RouteKind::Grpc, k, RouteObject::Grpc(r)));
        for (kind, key, route) in http.chain(grpc) {
            match self.fragments.get_mut(&route.address()) {
                Some(f) => {
                    f.round = next;
                    seen += 1;
                }
                None => added.push((kind, key, route)),
            }
        }
        let removed: Vec<usize> = if seen == self.fragments.len() {
            Vec::new()
        } else {
            self.fragments.iter().filter(|(_, f)| f.round != next).map(|(a, _)| *a).collect()
        };
        // Many changes at once (a first load, a resync): as fast whole.
        if (added.len() + removed.len()) * 4 > (seen + added.len()).max(64) {
            return None;
        }
        let mut c = Compiler::new(model, settings);
        c.classes();
        c.gateways();
        if self.context.as_ref() != Some(&Context::of(&c))
            || c.listeners.len() != kept.attached.len()
        {
            return None;
        }
        // The conflict rule: every listener a change touches has routes of one kind only.
        let mut kinds: Vec<u8> =
            kept.asked.iter().map(|a| u8::from(a[0] > 0) | u8::from(a[1] > 0) << 1).collect();
        let mut touched = vec![false; kinds.len()];
        for f in removed.iter().filter_map(|a| self.fragments.get(a)) {
            for l in f.conflicts_asked() {
                touched[l] = true;
            }
        }
        for (kind, key, route) in &added {
            for l in candidate_listeners(&c, key, route.http()) {
                kinds[l] |= 1 << *kind as u8;
                touched[l] = true;
            }
        }
        if touched.iter().zip(&kinds).any(|(&t, &k)| t && k == 3) {
            return None;
        }

        let (_, mut table) = self.previous.take()?;
        let kept = self.kept.as_mut()?;
        let fragments = &mut self.fragments;
        let ranks = kept.ranks.get_or_insert_with(|| ranks_of(fragments, table.matches.len()));
        if ranks.len() != table.matches.len() {
            return None;
        }
        c.actions = std::mem::take(&mut table.actions);
        c.services = std::mem::take(&mut table.services);
        c.regexes = std::mem::take(&mut table.regexes);
        c.service_index = std::mem::take(&mut kept.service_index);
        c.regex_index = std::mem::take(&mut kept.regex_index);
        for (l, &attached) in c.listeners.iter_mut().zip(&kept.attached) {
            l.attached = attached;
        }
        // The table's listeners are the usable ones, in order.
        let mut in_table = Vec::with_capacity(c.listeners.len());
        let mut usable = 0;
        for l in &c.listeners {
            in_table.push(l.usable.then_some(usable));
            usable += usize::from(l.usable);
        }

        // Out: the removed routes' actions and matches become holes.
        let mut gone = Vec::with_capacity(removed.len());
        let mut emptied: Vec<(usize, String)> = Vec::new();
        for address in removed {
            let f = fragments.remove(&address)?;
            let (from, count) = (f.action_base as usize, f.actions as usize);
            for a in c.actions.range_mut(from..from + count)? {
                *a = hollow(a);
            }
            if count > 0 {
                let slots = slots(&c.actions[from..from + count]);
                kept.free.actions.entry(slots).or_default().push(from as u32);
            }
            kept.holes += count;
            for e in &f.entries {
                let ti = in_table[e.listener]?;
                let v = vhost_of(&table, ti, &e.host)? as usize;
                let matches = &mut table.vhosts.get_mut(v)?.matches;
                matches.retain(|&m| m != e.at);
                if matches.is_empty() {
                    emptied.push((ti, e.host.clone()));
                }
                *table.matches.get_mut(e.at as usize)? = hole_match();
                ranks[e.at as usize] = None;
                kept.free.matches.push(e.at);
                kept.holes += 1;
            }
            for l in f.conflicts_asked() {
                kept.asked[l][f.kind as usize] -= 1;
            }
            for (l, _) in &f.attach {
                c.listeners[*l].attached -= 1;
            }
            gone.push(ObjectId { kind: f.kind.object_kind(), key: (*f.key).clone() });
        }

        // In: the new routes compile into the compiler (appending actions, Services and
        // regexes to the table's), then their entries go where a fresh compilation sorts them.
        let mut fresh: Vec<(usize, Fragment)> = Vec::with_capacity(added.len());
        let changed = added.len();
        let mut owner: Vec<Arc<Key>> = Vec::new();
        for (kind, key, route) in added {
            c.route_kind = kind;
            let mut f = c.record(key, route, next);
            let (from, count) = (f.action_base as usize, f.actions as usize);
            let run = kept.free.actions.get_mut(&slots(&c.actions[from..])).and_then(Vec::pop);
            if let Some(base) = run {
                // Into a run of holes of the same shape: the slot counts at every place stay
                // as they were, so `wrr_offsets` below moves no offset.
                let recorded = c.actions.split_off(from);
                let holes = c.actions.range_mut(base as usize..base as usize + count)?;
                for (hole, a) in holes.iter_mut().zip(recorded) {
                    *hole = a;
                }
                let moved = from as u32..(from + count) as u32;
                let entries = c.listeners.iter_mut().flat_map(|l| l.vhosts.values_mut()).flatten();
                for e in entries.filter(|e| moved.contains(&e.m.action)) {
                    e.m.action = e.m.action - moved.start + base;
                }
                f.action_base = base;
                kept.holes -= count;
            }
            for l in f.conflicts_asked() {
                kept.asked[l][kind as usize] += 1;
            }
            owner.resize(c.origins as usize, Arc::clone(&f.key));
            fresh.push((route.address(), f));
        }
        c.route_kind = RouteKind::Http;
        let mut landed = vec![u32::MAX; c.origins as usize];
        for (l, listener) in c.listeners.iter_mut().enumerate() {
            for (host, entries) in std::mem::take(&mut listener.vhosts) {
                let ti = in_table[l]?;
                let v = match vhost_of(&table, ti, &host) {
                    Some(v) => v,
                    None => {
                        let hole = kept.free.vhosts.pop();
                        kept.holes -= usize::from(hole.is_some());
                        add_vhost(&mut table, ti, &host, hole)
                    }
                };
                for e in entries {
                    let hole = kept.free.matches.pop();
                    let at = hole.unwrap_or(table.matches.len() as u32);
                    let rank = e.key.renamed((), ());
                    let position = {
                        let rank_of = |m: u32| {
                            let (r, k) = ranks.get(m as usize)?.as_ref()?;
                            Some(r.renamed(k.namespace.as_str(), k.name.as_str()))
                        };
                        let new = Some(e.key);
                        table.vhosts[v as usize].matches.partition_point(|&m| rank_of(m) <= new)
                    };
                    table.vhosts[v as usize].matches.insert(position, at);
                    let rank = Some((rank, Arc::clone(owner.get(e.origin as usize)?)));
                    if hole.is_some() {
                        *table.matches.get_mut(at as usize)? = e.m;
                        *ranks.get_mut(at as usize)? = rank;
                        kept.holes -= 1;
                    } else {
                        table.matches.push(e.m);
                        ranks.push(rank);
                    }
                    *landed.get_mut(e.origin as usize)? = at;
                }
            }
        }
        for (address, mut f) in fresh {
            for e in &mut f.entries {
                e.at = *landed.get(e.at as usize)?;
            }
            fragments.insert(address, f);
        }
        for (ti, host) in emptied {
            if let Some(v) = vhost_of(&table, ti, &host)
                && table.vhosts[v as usize].matches.is_empty()
            {
                remove_vhost(&mut table, ti, v);
                kept.free.vhosts.push(v);
                kept.holes += 1;
            }
        }

        for (count, l) in kept.attached.iter_mut().zip(&c.listeners) {
            *count = l.attached;
        }
        // The rest is small: Gateway statuses (attachedRoutes), ports and certificates (the
        // same as before: the listeners did not change), the weighted state's offsets.
        c.gateway_statuses();
        table.ports = c.ports();
        let usable = c.listeners.iter_mut().filter(|l| l.usable);
        for (listener, l) in table.listeners.iter_mut().zip(usable) {
            listener.certificates = std::mem::take(&mut l.certificates);
        }
        table.certificates = std::mem::take(&mut c.certificates);
        table.wrr_slots = wrr_offsets(&mut c.actions);
        table.actions = std::mem::take(&mut c.actions);
        table.services = std::mem::take(&mut c.services);
        table.regexes = std::mem::take(&mut c.regexes);
        kept.service_index = std::mem::take(&mut c.service_index);
        kept.regex_index = std::mem::take(&mut c.regex_index);
        gone.retain(|id| !c.status.contains_key(id));
        self.round = next;
        self.last = Reuse { replayed: seen, fresh: changed, global: false, patched: true };
        let status = std::mem::take(&mut c.status);
        let last_good = std::mem::take(&mut c.last_good);
        Some(Compiled { table, status, last_good, gone: Some(gone) })
    }
}

/// Every listener a route may attach to: those its parentRefs pick (as `attach` picks them
/// before its other checks).
fn candidate_listeners<'c>(
    c: &'c Compiler<'_>,
    key: &'c Key,
    route: &'c HttpRoute,
) -> impl Iterator<Item = usize> + 'c {
    route.spec.parent_refs.iter().flatten().flat_map(move |parent| {
        let ids = c.parent_listeners(key, parent).unwrap_or_default();
        ids.iter().copied().filter(move |&i| attach::picks(parent, &c.listeners[i]))
    })
}

/// Each match's rank and route from the fragments that point at it.
fn ranks_of(
    fragments: &HashMap<usize, Fragment, foldhash::fast::RandomState>,
    matches: usize,
) -> Vec<Option<Rank>> {
    let mut ranks = vec![None; matches];
    for f in fragments.values() {
        for e in &f.entries {
            if let Some(r) = ranks.get_mut(e.at as usize) {
                *r = Some((e.rank.clone(), Arc::clone(&f.key)));
            }
        }
    }
    ranks
}

/// The weighted-state slots of each action: the shape a run of actions must have to take a run
/// of hollow ones' place without moving any offset.
fn slots(actions: &[t::Action]) -> Vec<usize> {
    let count = |a: &t::Action| match &a.kind {
        t::ActionKind::Forward { backends, .. } => backends.len(),
        _ => 0,
    };
    actions.iter().map(count).collect()
}

/// What a patch leaves where it took a route's action out: no route (no metrics series), and a
/// forward to weight-0 backends that holds the action's weighted-state slots, so the later
/// actions keep their offsets — and their chunks of the encoded table stay as they were.
fn hollow(a: &t::Action) -> t::Action {
    let mut hollow = vacant_action();
    if let t::ActionKind::Forward { backends, wrr_offset } = &a.kind {
        let never = || t::WeightedBackend {
            weight: 0,
            request_headers: t::HeaderEdits::default(),
            target: t::BackendTarget::Status(500),
        };
        hollow.kind = t::ActionKind::Forward {
            backends: backends.iter().map(|_| never()).collect(),
            wrr_offset: *wrr_offset,
        };
    }
    hollow
}

/// What a patch leaves where it took a route's match out: listed by no virtual host, valid for
/// lb's checks (its action, 0, exists while any match does).
fn hole_match() -> t::RouteMatch {
    t::RouteMatch {
        path: t::PathMatch::Exact(String::new()),
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
        action: 0,
    }
}

/// The virtual host `host` of the table's listener `ti`, by the listener's host index.
fn vhost_of(table: &t::Table, ti: usize, host: &str) -> Option<u32> {
    let index = &table.listeners.get(ti)?.vhosts;
    if host.is_empty() {
        return index.any;
    }
    let (list, name) = match host.strip_prefix('*') {
        Some(suffix) => (&index.wildcard, suffix),
        None => (&index.exact, host),
    };
    let at = list.binary_search_by(|e| e.host.as_str().cmp(name)).ok()?;
    Some(list[at].target)
}

/// Adds an empty virtual host `host` to listener `ti`, into `hole` or at the end of the
/// table's; returns it.
fn add_vhost(table: &mut t::Table, ti: usize, host: &str, hole: Option<u32>) -> u32 {
    let vhost = t::VirtualHost { hostname: host.to_owned(), matches: Vec::new(), fallback: None };
    let at = match hole {
        Some(at) => {
            table.vhosts[at as usize] = vhost;
            at
        }
        None => {
            table.vhosts.push(vhost);
            table.vhosts.len() as u32 - 1
        }
    };
    let index = &mut table.listeners[ti].vhosts;
    match host.strip_prefix('*') {
        _ if host.is_empty() => index.any = Some(at),
        Some(suffix) => insert_host(&mut index.wildcard, suffix, at),
        None => insert_host(&mut index.exact, host, at),
    }
    if host_rank(host) == 0 {
        // Only wildcards and the catch-all are fallbacks: an exact name needs its own only.
        table.vhosts[at as usize].fallback = fallback_in(&table.listeners[ti].vhosts, host);
    } else {
        refallback(table, ti);
    }
    at
}

/// Takes virtual host `v` out of listener `ti`'s host index, leaving a hole (nameless, empty,
/// no fallback) where it was.
fn remove_vhost(table: &mut t::Table, ti: usize, v: u32) {
    let hole = t::VirtualHost { hostname: String::new(), matches: Vec::new(), fallback: None };
    let host = std::mem::replace(&mut table.vhosts[v as usize], hole).hostname;
    let index = &mut table.listeners[ti].vhosts;
    match host.strip_prefix('*') {
        _ if host.is_empty() => index.any = None,
        Some(suffix) => index.wildcard.retain(|e| e.host != suffix),
        None => index.exact.retain(|e| e.host != host),
    }
    if host_rank(&host) != 0 {
        refallback(table, ti);
    }
}

fn insert_host(list: &mut Vec<t::HostEntry>, host: &str, target: u32) {
    let at = list.partition_point(|e| e.host.as_str() < host);
    list.insert(at, t::HostEntry { host: host.to_owned(), target });
}

/// Every fallback of listener `ti`'s virtual hosts again (written only where it changes).
fn refallback(table: &mut t::Table, ti: usize) {
    let index = &table.listeners[ti].vhosts;
    let targets = index.exact.iter().chain(&index.wildcard).map(|e| e.target).chain(index.any);
    for v in targets {
        let v = v as usize;
        let fallback = fallback_in(index, &table.vhosts[v].hostname);
        if table.vhosts[v].fallback != fallback {
            table.vhosts[v].fallback = fallback;
        }
    }
}
