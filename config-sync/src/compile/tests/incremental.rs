//! Incremental compilation equals compilation from scratch: random sequences of adds, changes
//! and deletes over a small world of objects that touch every question a route asks (listener
//! hostnames and namespace selectors, HTTPRoute/GRPCRoute conflicts and their age order,
//! Services, EndpointSlices, ReferenceGrants, Namespaces, ClientCertificateHeaders, regexes),
//! and after each step the incremental table encodes to the same bytes, with the same statuses,
//! as a compilation of the same model from scratch — or, where only routes changed and the table
//! was patched (`compile::patch`), serves every request the same: each virtual host's matches
//! with their actions, Services and regexes resolved are equal, and lb's checks pass.

use super::*;

/// One object of the world in one of its variants; `None`: absent.
fn object(slot: usize, v: usize) -> Option<String> {
    let gateway = "gateway.networking.k8s.io/v1";
    match slot {
        // HTTPRoutes r0..r4 and GRPCRoutes g0, g1 (absent in a third of their variants: where
        // no GRPCRoute shares a listener, route changes patch the table).
        0..=4 => Some(http_route(slot, v)),
        5 | 6 => (!v.is_multiple_of(3)).then(|| grpc_route(slot - 5, v)),
        7 => [None, Some(80), Some(81)][v % 3].map(|port| {
            let proto = if (v / 3) % 2 == 1 { ", appProtocol: kubernetes.io/h2c" } else { "" };
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: svc2, namespace: default}}\nspec: {{ports: [{{name: http, port: {port}{proto}}}]}}\n")
        }),
        8 => [None, Some("127.0.0.3"), Some("127.0.0.4")][v % 3].map(|ip| {
            let ready = if (v / 3) % 2 == 1 { "false" } else { "true" };
            format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc2-a, namespace: default, labels: {{kubernetes.io/service-name: svc2}}}}\naddressType: IPv4\nports: [{{name: http, port: 3001}}]\nendpoints:\n- addresses: [{ip}]\n  conditions: {{ready: {ready}}}\n")
        }),
        9 => [None, Some("HTTPRoute"), Some("GRPCRoute")][v % 3].map(|kind| {
            format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: apps}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: {kind}, namespace: default}}]\n  to: [{{group: '', kind: Service}}]\n")
        }),
        10 => [None, Some("a"), Some("b")][v % 3].map(|team| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: default, labels: {{team: {team}}}}}\n")
        }),
        11 => [None, Some("'*.example.com'"), Some("bar.example.com")][v % 3].map(|host| {
            format!("apiVersion: {gateway}\nkind: Gateway\nmetadata: {{name: gw2, namespace: infra}}\nspec:\n  gatewayClassName: sluice\n  listeners:\n  - {{name: web, port: 7070, protocol: HTTP, hostname: {host}, allowedRoutes: {{namespaces: {{from: All}}}}}}\n")
        }),
        12 => [None, Some("Subject"), Some("Hash")][v % 3].map(|value| {
            format!("apiVersion: gateway.sluice.dev/v1alpha1\nkind: ClientCertificateHeader\nmetadata: {{name: cc, namespace: default}}\nspec: {{header: X-Client, value: {value}}}\n")
        }),
        _ => unreachable!("slot {slot}"),
    }
}

const SLOTS: usize = 13;

const PARENTS: [&str; 4] = [
    "{name: gw, namespace: infra}",
    "{name: gw, namespace: infra, sectionName: selected}",
    "{name: gw2, namespace: infra}",
    "{name: gw, namespace: infra, port: 8080}",
];

const HOSTNAMES: [&str; 4] =
    ["", "foo.example.com", "'*.example.com'", "a.example.com, foo.example.com"];

const BACKENDS: [&str; 6] = [
    "backendRefs: [{name: svc, namespace: apps, port: 80}]",
    "backendRefs: [{name: svc2, port: 80, weight: 2}, {name: svc, namespace: apps, port: 80}]",
    "backendRefs: [{name: missing, port: 80}]",
    "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: svc2, port: 80}, percent: 50}}]\n    backendRefs: [{name: svc, namespace: apps, port: 80}]",
    "filters: [{type: ExtensionRef, extensionRef: {group: gateway.sluice.dev, kind: ClientCertificateHeader, name: cc}}]\n    backendRefs: [{name: svc2, port: 80}]",
    "backendRefs: []",
];

const CREATED: [&str; 3] = [
    "",
    "creationTimestamp: '2024-01-01T00:00:00Z', ",
    "creationTimestamp: '2023-01-01T00:00:00Z', ",
];

/// A variant number split into the route's choices.
fn choices(v: usize) -> [usize; 5] {
    [v % 2, (v / 2) % 4, (v / 8) % 4, (v / 32) % 6, (v / 192) % 3]
}

fn http_route(i: usize, v: usize) -> String {
    let [ns, parent, hosts, backend, created] = choices(v);
    let ns = ["apps", "default"][ns];
    let matches = [
        format!("[{{path: {{type: PathPrefix, value: /p{}}}}}]", i % 3),
        "[{path: {type: Exact, value: /e}, method: GET}]".to_owned(),
        // Regexes shared between routes and of their own: their indices move as routes come
        // and go.
        format!("[{{path: {{type: RegularExpression, value: '/r{}[0-9]+'}}, headers: [{{type: RegularExpression, name: x-v, value: 'v[12]'}}]}}]", i % 2),
        format!("[{{path: {{type: PathPrefix, value: /q}}, queryParams: [{{name: k, value: '{i}'}}]}}]"),
    ][(v / 576) % 4]
        .clone();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}, namespace: {ns}, {}generation: {v}}}\nspec:\n  parentRefs: [{}]\n  hostnames: [{}]\n  rules:\n  - matches: {matches}\n    {}\n",
        CREATED[created], PARENTS[parent], HOSTNAMES[hosts], BACKENDS[backend]
    )
}

fn grpc_route(i: usize, v: usize) -> String {
    let [ns, parent, hosts, backend, created] = choices(v);
    let ns = ["apps", "default"][ns];
    // GRPCRoutes take only plain backendRefs (no mirror or extension filters in this world).
    let backend = BACKENDS[[0, 1, 2, 2, 1, 0][backend]];
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g{i}, namespace: {ns}, {}generation: 1}}\nspec:\n  parentRefs: [{}]\n  hostnames: [{}]\n  rules:\n  - matches: [{{method: {{service: s{i}.Svc}}}}]\n    {backend}\n",
        CREATED[created], PARENTS[parent], HOSTNAMES[hosts]
    )
}

/// Puts `text`'s object in a slot of the world, taking out the one there (`id`); `None`: the
/// slot is left empty.
fn put(m: &mut Model, id: &mut Option<ObjectId>, text: Option<String>) {
    if let Some(id) = id.take() {
        m.remove(&id);
    }
    if let Some(text) = text {
        let o = parse(&text);
        *id = Some(o.id());
        m.insert(o);
    }
}

fn parse(text: &str) -> crate::model::Object {
    let v: serde_json::Value = serde_yaml_ng::from_str(text).unwrap();
    parse_document(v).into_iter().next().unwrap().unwrap().unwrap()
}

/// Every status as a status writer holding `statuses` sees it after `c` (a patch brings only
/// those that may have changed).
fn track(statuses: &mut Statuses, c: &Compiled) {
    match &c.gone {
        None => statuses.clone_from(&c.status),
        Some(gone) => {
            for id in gone {
                statuses.remove(id);
            }
            statuses.extend(c.status.iter().map(|(id, s)| (id.clone(), s.clone())));
        }
    }
}

/// `incremental` (with `statuses`, tracked) against `fresh`: the same bytes, or for a patched
/// table the same service of every request, and a table lb accepts.
fn same(
    incremental: &Compiled,
    statuses: &Statuses,
    fresh: &Compiled,
) -> Result<(), proptest::test_runner::TestCaseError> {
    proptest::prop_assert_eq!(statuses, &fresh.status);
    let (a, b) = (encode(&incremental.table).unwrap(), encode(&fresh.table).unwrap());
    if let Err(e) = Router::open(&a, None) {
        proptest::prop_assert!(false, "lb refuses the table: {e}");
    }
    if a.as_slice() != b.as_slice() {
        proptest::prop_assert!(incremental.gone.is_some(), "a table built whole differs");
        proptest::prop_assert_eq!(served(&incremental.table), served(&fresh.table));
    }
    Ok(())
}

/// What requests meet in a table: ports, listeners and certificates as they are, and each
/// virtual host (in order) with its name, fallback and matches, every index into the table's
/// matches, actions, Services and regexes replaced by what it points at.
fn served(t: &t::Table) -> impl PartialEq + std::fmt::Debug {
    let regex = |i: &mut u32, seen: &mut Vec<String>| {
        seen.push(t.regexes[*i as usize].clone());
        *i = 0;
    };
    // Virtual hosts in the order the listeners' host indices name them (a patched table
    // appends them and leaves holes where one went; a fresh compilation sorts them), fallbacks
    // by name.
    let mut order: Vec<u32> = Vec::new();
    let mut listeners = t.listeners.clone();
    for l in &mut listeners {
        let index = &mut l.vhosts;
        let exact = index.exact.iter_mut().map(|e| &mut e.target);
        let targets = exact.chain(index.wildcard.iter_mut().map(|e| &mut e.target));
        for target in targets.chain(index.any.iter_mut()) {
            let at = order.iter().position(|&v| v == *target).unwrap_or_else(|| {
                order.push(*target);
                order.len() - 1
            });
            *target = at as u32;
        }
    }
    let vhosts: Vec<_> = order
        .iter()
        .map(|&v| &t.vhosts[v as usize])
        .map(|v| {
            let matches: Vec<_> = v
                .matches
                .iter()
                .map(|&i| {
                    let mut m = t.matches[i as usize].clone();
                    let mut a = t.actions[m.action as usize].clone();
                    m.action = 0;
                    let mut regexes = Vec::new();
                    if let t::PathMatch::Regex(i) = &mut m.path {
                        regex(i, &mut regexes);
                    }
                    let values = m.headers.iter_mut().map(|h| &mut h.value);
                    for v in values.chain(m.query.iter_mut().map(|q| &mut q.value)) {
                        if let t::ValueMatch::Regex(i) = v {
                            regex(i, &mut regexes);
                        }
                    }
                    let mut services = Vec::new();
                    if let t::ActionKind::Forward { backends, wrr_offset } = &mut a.kind {
                        *wrr_offset = 0;
                        for b in backends {
                            if let t::BackendTarget::Service(i) = &mut b.target {
                                services.push(t.services[*i as usize].clone());
                                *i = 0;
                            }
                        }
                    }
                    for m in &mut a.mirrors {
                        services.push(t.services[m.service as usize].clone());
                        m.service = 0;
                    }
                    (m, regexes, a, services)
                })
                .collect();
            let fallback = v.fallback.map(|f| t.vhosts[f as usize].hostname.clone());
            (v.hostname.clone(), fallback, matches)
        })
        .collect();
    (t.ports.clone(), listeners, t.certificates.clone(), vhosts)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn incremental_compilation_equals_compilation_from_scratch(
        start in proptest::collection::vec(0usize..2304, SLOTS),
        steps in proptest::collection::vec((0usize..SLOTS, 0usize..2304), 1..24),
    ) {
        let mut m = model("");
        let mut ids: Vec<Option<ObjectId>> = vec![None; SLOTS];
        let set = |m: &mut Model, ids: &mut Vec<Option<ObjectId>>, slot: usize, v: usize| {
            put(m, &mut ids[slot], object(slot, v));
        };
        for (slot, &v) in start.iter().enumerate() {
            // Most objects present at the start.
            set(&mut m, &mut ids, slot, if slot >= 7 { 1 + v % 2 + 3 * ((v / 2) % 2) } else { v });
        }
        let mut incremental = Incremental::default();
        let s = settings();
        let mut statuses = Statuses::new();
        let first = incremental.compile(&m, &s);
        track(&mut statuses, &first);
        same(&first, &statuses, &compile(&m, &s))?;
        incremental.keep(first.table);
        for (slot, v) in steps {
            set(&mut m, &mut ids, slot, v);
            let a = incremental.compile(&m, &s);
            track(&mut statuses, &a);
            let fresh = compile(&m, &s);
            same(&a, &statuses, &fresh)?;
            incremental.keep(a.table);
            // Nothing changed: everything replays, to the same result.
            let again = incremental.compile(&m, &s);
            let reuse = incremental.last();
            proptest::prop_assert_eq!(reuse.fresh, 0, "{:?}", reuse);
            track(&mut statuses, &again);
            same(&again, &statuses, &fresh)?;
            incremental.keep(again.table);
        }
        // A table not given back: every route compiles fresh, to the same result.
        drop(incremental.compile(&m, &s));
        let scratch = incremental.compile(&m, &s);
        proptest::prop_assert!(incremental.last().global && scratch.gone.is_none());
        same(&scratch, &scratch.status, &compile(&m, &s))?;
        // Replays after a change happen in most cases (all with routes, except where every step
        // changes a Gateway); removing any one check of the replay made this test fail when it
        // was written.
    }
}

/// A route that stays the same while an older one comes and goes: its regex and Service move to
/// other indices and back, and each replay has to know where they were last time.
#[test]
fn indices_follow_a_replayed_route_through_several_compilations() {
    let older = |ns: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: old, namespace: {ns}, creationTimestamp: '2020-01-01T00:00:00Z'}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  rules:\n  - matches: [{{path: {{type: RegularExpression, value: '/old/[0-9]+'}}}}]\n    backendRefs: [{{name: svc, namespace: apps, port: 80}}]\n"
        )
    };
    let newer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: new, namespace: default, creationTimestamp: '2024-01-01T00:00:00Z'}\nspec:\n  parentRefs: [{name: gw, namespace: infra}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: '/new/[0-9]+'}}]\n    backendRefs: [{name: svc2, port: 80}]\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: svc2, namespace: default}\nspec: {ports: [{name: http, port: 80}]}\n";
    let mut m = model("");
    m.insert(parse(service));
    m.insert(parse(newer));
    let s = settings();
    let mut incremental = Incremental::default();
    let mut statuses = Statuses::new();
    for step in 0..6 {
        // The older route: present, gone, present again (a new object each time).
        match step % 2 {
            0 => m.insert(parse(&older("apps"))),
            _ => m.remove(&parse(&older("apps")).id()),
        }
        let a = incremental.compile(&m, &s);
        track(&mut statuses, &a);
        same(&a, &statuses, &compile(&m, &s)).unwrap();
        if step > 0 {
            assert_eq!(incremental.last().replayed, 1, "step {step}: the newer route replays");
        }
        incremental.keep(a.table);
    }
}

/// A route of the patching world: HTTPRoutes (slots 0–7) and GRPCRoutes (8, 9) on listeners
/// the other kind does not use, with hostnames that make virtual hosts come and go with
/// wildcards and the catch-all as fallbacks; `None` in a fifth of the variants.
fn patch_route(i: usize, v: usize) -> Option<String> {
    if v.is_multiple_of(5) {
        return None;
    }
    let hosts = [
        "",
        "a.example.com",
        "'*.example.com'",
        "'*.b.example.com'",
        "x.b.example.com",
        "a.example.com, '*.b.example.com'",
        "foo.example.com",
        "'*.com'",
    ][(v / 5) % 8];
    let parent = [
        "{name: gw, namespace: infra, sectionName: http}",
        "{name: gw, namespace: infra, sectionName: foo}",
        "{name: gw, namespace: infra, sectionName: same}",
    ][(v / 40) % 3];
    if i >= 8 {
        // GRPCRoutes on a listener of their own (no HTTPRoute asks the conflict question
        // there): their changes patch too.
        let created = CREATED[(v / 40) % 3];
        return Some(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: p{i}, namespace: apps, {created}generation: 1}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: selected}}]\n  hostnames: [{hosts}]\n  rules:\n  - matches: [{{method: {{service: s{}.Svc}}}}]\n    backendRefs: [{{name: svc, namespace: apps, port: 80}}]\n",
            v % 3
        ));
    }
    let ns = ["apps", "infra"][(v / 120) % 2];
    let matches = [
        format!("[{{path: {{type: PathPrefix, value: /p{}}}}}]", i % 3),
        "[{path: {type: Exact, value: /e}, method: GET}, {path: {type: PathPrefix, value: /}}]"
            .to_owned(),
        format!("[{{path: {{type: RegularExpression, value: '/r{}[0-9]+'}}}}]", i % 2),
        format!(
            "[{{path: {{type: PathPrefix, value: /h}}, headers: [{{name: x-h, value: '{i}'}}]}}]"
        ),
    ][(v / 240) % 4]
        .clone();
    let created = CREATED[(v / 960) % 3];
    Some(format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: p{i}, namespace: {ns}, {created}generation: {v}}}\nspec:\n  parentRefs: [{parent}]\n  hostnames: [{hosts}]\n  rules:\n  - matches: {matches}\n    backendRefs: [{{name: svc, namespace: apps, port: 80}}]\n"
    ))
}

const PATCH_SLOTS: usize = 10;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Only routes change: the table is patched (until removed routes' holes reach a quarter
    /// of the rest) and serves every request as a compilation from scratch does.
    #[test]
    fn patched_tables_serve_as_compilations_from_scratch(
        start in proptest::collection::vec(0usize..2880, PATCH_SLOTS),
        steps in proptest::collection::vec((0usize..PATCH_SLOTS, 0usize..2880), 1..40),
    ) {
        let mut m = model("");
        let mut ids: Vec<Option<ObjectId>> = vec![None; PATCH_SLOTS];
        let set = |m: &mut Model, ids: &mut Vec<Option<ObjectId>>, slot: usize, v: usize| {
            put(m, &mut ids[slot], patch_route(slot, v));
        };
        for (slot, &v) in start.iter().enumerate() {
            set(&mut m, &mut ids, slot, v);
        }
        let mut incremental = Incremental::default();
        let s = settings();
        let mut statuses = Statuses::new();
        let first = incremental.compile(&m, &s);
        track(&mut statuses, &first);
        incremental.keep(first.table);
        let mut patched = 0;
        for (i, (slot, v)) in steps.into_iter().enumerate() {
            set(&mut m, &mut ids, slot, v);
            let a = incremental.compile(&m, &s);
            let reuse = incremental.last();
            // The first change after a whole compilation finds no holes: always a patch.
            proptest::prop_assert!(i > 0 || reuse.patched, "{:?}", reuse);
            patched += usize::from(reuse.patched);
            track(&mut statuses, &a);
            same(&a, &statuses, &compile(&m, &s))?;
            incremental.keep(a.table);
        }
        proptest::prop_assert!(patched > 0);
    }
}

/// Churn — a route added, the oldest deleted, each with a hostname of its own — is patched
/// without the table growing: each new route's actions, matches and virtual host take the
/// holes the last deleted one left, so no hole count ever asks for a whole compilation, and
/// the pages of the table a change touches stay a handful.
#[test]
fn churn_refills_holes_and_touches_few_pages() {
    let route = |i: usize| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: c{i}, namespace: apps}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra}}]\n  hostnames: [c{i}.example.com]\n  rules:\n  - matches: [{{path: {{value: /c{i}}}}}]\n    backendRefs: [{{name: svc, namespace: apps, port: 80, weight: 3}}, {{name: svc, namespace: apps, port: 80}}]\n"
        )
    };
    let mut m = model("");
    let mut ids: std::collections::VecDeque<ObjectId> = (0..1000)
        .map(|i| {
            let o = parse(&route(i));
            let id = o.id();
            m.insert(o);
            id
        })
        .collect();
    let s = settings();
    let mut incremental = Incremental::default();
    let first = incremental.compile(&m, &s);
    let sizes = |t: &t::Table| (t.vhosts.len(), t.matches.len(), t.actions.len());
    let pages = |t: &t::Table| -> Vec<u64> {
        let ids =
            |n: usize, id: &dyn Fn(usize) -> Option<u64>| (0..n).filter_map(id).collect::<Vec<_>>();
        let mut all = ids(t.vhosts.pages(), &|p| t.vhosts.page_id(p));
        all.extend(ids(t.matches.pages(), &|p| t.matches.page_id(p)));
        all.extend(ids(t.actions.pages(), &|p| t.actions.page_id(p)));
        all
    };
    let mut last = pages(&first.table);
    assert!(last.len() >= 40, "{} pages", last.len());
    let mut peak = None;
    incremental.keep(first.table);
    for i in 1000..1300 {
        let o = parse(&route(i));
        ids.push_back(o.id());
        m.insert(o);
        let added = incremental.compile(&m, &s);
        assert!(incremental.last().patched, "add {i}");
        // The most the table holds: the routes and one more (added before the oldest goes).
        peak.get_or_insert(sizes(&added.table));
        incremental.keep(added.table);
        m.remove(&ids.pop_front().unwrap());
        let c = incremental.compile(&m, &s);
        assert!(incremental.last().patched, "delete before {i}");
        let (now, most) = (sizes(&c.table), peak.unwrap_or_default());
        assert!(now.0 <= most.0 && now.1 <= most.1 && now.2 <= most.2, "{now:?} over {most:?}");
        let now = pages(&c.table);
        let changed = now.iter().filter(|id| !last.contains(id)).count();
        // An add and a delete: for each, a page of virtual hosts, of matches and of actions
        // per listener the route is on (two), at most.
        assert!(changed <= 10, "step {i}: {changed} pages changed");
        last = now;
        incremental.keep(c.table);
    }
    // What the churned table serves is what a fresh compilation of the same routes serves.
    let (c, fresh) = (incremental.compile(&m, &s), compile(&m, &s));
    assert_eq!(served(&c.table), served(&fresh.table));
}
