//! Kubernetes source: the same objects as the file source, from the API server. One watcher per
//! kind (kube-runtime: list, then watch from the list's resourceVersion, with bookmarks, and a
//! fresh list after `410 Gone` or a dropped connection, with backoff while the server is away).
//! Objects are trimmed on arrival (no managedFields, no last-applied annotation) and go through
//! the file source's parser and validation (`model::parse_document`), so everything after
//! ingestion is one code path: model → compile → publish.
//!
//! Nothing is published until every kind has been listed once, and a re-list replaces a kind's
//! objects only when it completes: a restarted watch never publishes a half-empty table.
//!
//! Secrets and ConfigMaps are never listed or watched cluster-wide (a cache of every Secret in
//! the cluster is a liability no gateway needs): the ones Gateways of our classes reference
//! (listener TLS `certificateRefs`; frontend validation `caCertificateRefs`; across namespaces
//! only with a ReferenceGrant) are watched one by one, by name (`fieldSelector=metadata.name`,
//! [`Named`]), so a rotation (cert-manager renewing a Secret) reaches lb as fast as a route
//! change. A watch starts when a reference appears and stops when it goes; a change waits for
//! newly referenced objects' first answer (up to [`NAMED_SYNC`]) so a listener does not flap to
//! "not found" while its Secret is being fetched.
//!
//! Status goes to the `/status` subresources, from the holder of the Lease only (`lease`),
//! and only after the local lb serves the generation the status describes. Writes are diffs:
//! an object whose status did not change is not written. For HTTPRoutes, the entries of other
//! controllers in `status.parents` are kept as the API server has them.

mod events;
pub(crate) mod lease;
mod status;
mod stores;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::status::{status_write, status_writer};
use self::stores::Mirror;
use crate::Error;
use crate::compile::ObjectStatus;
use crate::model::{
    GATEWAY_GROUP, Key, Kind, Model, Object, ObjectId, SLUICE_GROUP, grant_permits, parse_document,
};
use crate::pipeline::{Pipeline, Read};
use crate::status::{Change, status_value};

/// How long a compilation waits for newly referenced Secrets and ConfigMaps to be read.
const NAMED_SYNC: Duration = Duration::from_secs(5);

/// What config-sync needs besides the common settings in Kubernetes mode.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    /// How long a Lease holder stays leader without renewing.
    pub lease_duration: Duration,
}

/// The kinds watched: (kind, group, version, plural).
const WATCHED: [(Kind, &str, &str, &str); 8] = [
    (Kind::GatewayClass, GATEWAY_GROUP, "v1", "gatewayclasses"),
    (Kind::Gateway, GATEWAY_GROUP, "v1", "gateways"),
    (Kind::HttpRoute, GATEWAY_GROUP, "v1", "httproutes"),
    (Kind::GrpcRoute, GATEWAY_GROUP, "v1", "grpcroutes"),
    // v1beta1 is served by every Gateway API release Sluice supports (v1 only since 1.5).
    (Kind::ReferenceGrant, GATEWAY_GROUP, "v1beta1", "referencegrants"),
    (Kind::Service, "", "v1", "services"),
    (Kind::EndpointSlice, "discovery.k8s.io", "v1", "endpointslices"),
    (Kind::Namespace, "", "v1", "namespaces"),
];

/// An object as the store keeps it: parsed for the model, raw status for status writes.
#[derive(Debug, Clone)]
struct Stored {
    object: Object,
    resource_version: Option<String>,
    status: Value,
}

/// One kind's objects, and the buffer of a list in progress.
#[derive(Debug, Default)]
struct KindStore {
    objects: BTreeMap<Key, Stored>,
    relisting: Option<BTreeMap<Key, Stored>>,
    listed: bool,
}

fn api_resource(group: &str, version: &str, kind: Kind, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind.as_str()), plural)
}

/// Drops what config-sync never reads and what makes objects large: managedFields and the
/// last-applied annotation.
fn trim(mut o: DynamicObject) -> DynamicObject {
    o.metadata.managed_fields = None;
    if let Some(a) = o.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o
}

/// Parses a watched object through the file source's parser (list items come without
/// apiVersion/kind: they are filled in from what was watched).
fn parse(kind: Kind, group: &str, version: &str, o: &DynamicObject) -> Option<(Key, Stored)> {
    let resource_version = o.metadata.resource_version.clone();
    let mut v = match serde_json::to_value(o) {
        Ok(v) => v,
        Err(e) => {
            warn!(%kind, "cannot read a watched object: {e}");
            return None;
        }
    };
    let api_version =
        if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    v["apiVersion"] = Value::String(api_version);
    v["kind"] = Value::String(kind.as_str().to_owned());
    let status = v.get("status").cloned().unwrap_or(Value::Null);
    match parse_document(v).into_iter().next() {
        Some(Ok(Some(object))) => {
            let key = object.id().key;
            Some((key, Stored { object, resource_version, status }))
        }
        Some(Err(e)) => {
            warn!("{e}; ignored");
            None
        }
        _ => None,
    }
}

/// What the watcher tasks send the pipeline.
#[derive(Debug)]
struct Update {
    kind: Kind,
    event: Seen,
}

/// Watches of single objects by name (referenced Secrets, ConfigMaps and Sluice filters).
#[derive(Debug, Default)]
struct Named {
    /// (kind, key) → the watch task, when it started, and whether it answered once.
    watches: BTreeMap<(Kind, Key), (tokio::task::JoinHandle<()>, Instant, bool)>,
}

impl Named {
    /// Starts watches for `wanted` objects not watched yet, and stops the others (their
    /// objects leave the store).
    fn want(
        &mut self,
        wanted: BTreeSet<(Kind, Key)>,
        client: &kube::Client,
        tx: &mpsc::UnboundedSender<Update>,
        stores: &mut BTreeMap<Kind, KindStore>,
    ) {
        let gone: Vec<(Kind, Key)> =
            self.watches.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for (kind, key) in gone {
            if let Some((task, ..)) = self.watches.remove(&(kind, key.clone())) {
                task.abort();
            }
            if let Some(store) = stores.get_mut(&kind) {
                store.objects.remove(&key);
            }
        }
        for (kind, key) in wanted {
            if self.watches.contains_key(&(kind, key.clone())) {
                continue;
            }
            debug!(%kind, object = %key, "watching a referenced object");
            let task = tokio::spawn(watch_named(client.clone(), kind, key.clone(), tx.clone()));
            self.watches.insert((kind, key), (task, Instant::now(), false));
        }
    }

    /// Notes that a named watch answered.
    fn answered(&mut self, update: &Update) {
        if let Seen::Applied(key, _) | Seen::Deleted(key) = &update.event
            && let Some(w) = self.watches.get_mut(&(update.kind, key.clone()))
        {
            w.2 = true;
        }
    }

    /// Every watch answered once, or waited [`NAMED_SYNC`].
    fn synced(&self) -> bool {
        self.watches
            .values()
            .all(|(_, started, answered)| *answered || started.elapsed() > NAMED_SYNC)
    }
}

/// Watches one Secret, ConfigMap or Sluice filter by name: `Seen::Applied` after each list and change,
/// `Seen::Deleted` when it is absent.
async fn watch_named(
    client: kube::Client,
    kind: Kind,
    key: Key,
    tx: mpsc::UnboundedSender<Update>,
) {
    let (group, version, plural) = match kind {
        Kind::Secret => ("", "v1", "secrets"),
        Kind::ConfigMap => ("", "v1", "configmaps"),
        Kind::ClientCertificateHeader => (SLUICE_GROUP, "v1alpha1", "clientcertificateheaders"),
        _ => return,
    };
    let ar = api_resource(group, version, kind, plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client, &key.namespace, &ar);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.name));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed: Option<Stored> = None;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                warn!(%kind, object = %key, "watch: {e}; retrying");
                continue;
            }
        };
        let seen = match event {
            Event::Init => {
                listed = None;
                continue;
            }
            Event::InitApply(o) => {
                listed = parse(kind, group, version, &trim(o)).map(|(_, s)| s);
                continue;
            }
            Event::InitDone => match listed.take() {
                Some(s) => Seen::Applied(key.clone(), s),
                None => Seen::Deleted(key.clone()),
            },
            Event::Apply(o) => match parse(kind, group, version, &trim(o)) {
                Some((_, s)) => Seen::Applied(key.clone(), s),
                None => Seen::Deleted(key.clone()),
            },
            Event::Delete(_) => Seen::Deleted(key.clone()),
        };
        if tx.send(Update { kind, event: seen }).is_err() {
            return;
        }
    }
}

/// A watch event, parsed.
#[derive(Debug)]
enum Seen {
    /// A (re)list starts.
    Init,
    /// An object of the list.
    Listed(Key, Stored),
    /// The list is complete: it replaces the kind's objects.
    InitDone,
    /// Added or changed.
    Applied(Key, Stored),
    /// Deleted.
    Deleted(Key),
}

/// Runs config-sync against the API server until SIGINT or SIGTERM.
pub(crate) async fn run(config: &crate::Config, options: &KubeOptions) -> Result<(), Error> {
    // One TLS provider for the whole process (aws-lc-rs, as lb's): set explicitly, so a
    // dependency that enables a second provider cannot leave kube's client without one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = kube::Client::try_default().await.map_err(|e| Error::Kubernetes(e.to_string()))?;
    let mut pipeline = Pipeline::new(config)?;
    info!(
        table = %config.table.display(),
        controller = %config.controller_name,
        identity = %options.identity,
        "config-sync started (Kubernetes mode)"
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    for (kind, group, version, plural) in WATCHED {
        let ar = api_resource(group, version, kind, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stream =
                watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
            let mut absent = false;
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(e) => e,
                    // An optional kind whose CRD is not installed (GRPCRoute before Gateway API
                    // 1.1): none of them, said once; the watch keeps trying, so installing the
                    // CRD later is noticed.
                    Err(e) if kind == Kind::GrpcRoute && not_found(&e) => {
                        if !absent {
                            absent = true;
                            warn!(%kind, "the API server does not serve {plural} (CRD not installed?); none are read until it does");
                            for event in [Seen::Init, Seen::InitDone] {
                                if tx.send(Update { kind, event }).is_err() {
                                    return;
                                }
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        warn!(%kind, "watch: {e}; retrying (lb keeps the current table)");
                        crate::metrics::metrics()
                            .watch_errors
                            .get_or_create(&crate::metrics::kind(kind.as_str()))
                            .inc();
                        continue;
                    }
                };
                let event = match event {
                    Event::Apply(o) => {
                        parse(kind, group, version, &trim(o)).map(|(k, s)| Seen::Applied(k, s))
                    }
                    Event::InitApply(o) => {
                        parse(kind, group, version, &trim(o)).map(|(k, s)| Seen::Listed(k, s))
                    }
                    Event::Delete(o) => o.metadata.name.as_deref().map(|name| {
                        Seen::Deleted(Key::new(o.metadata.namespace.as_deref().unwrap_or(""), name))
                    }),
                    Event::Init => {
                        crate::metrics::metrics()
                            .relists
                            .get_or_create(&crate::metrics::kind(kind.as_str()))
                            .inc();
                        Some(Seen::Init)
                    }
                    Event::InitDone => Some(Seen::InitDone),
                };
                if let Some(event) = event
                    && tx.send(Update { kind, event }).is_err()
                {
                    return;
                }
            }
        });
    }
    // Kept for the named watches started later (the kind watchers hold their own clones).
    let tx_named = tx;
    let mut events =
        events::Events::new(client.clone(), &config.controller_name, &options.identity);
    let leader = Arc::new(AtomicBool::new(false));
    let lease = lease::Elector::new(client.clone(), options, Arc::clone(&leader));
    let lease_task = tokio::spawn(lease.run());

    let mut stores: BTreeMap<Kind, KindStore> = BTreeMap::new();
    let mut mirror = Mirror { model: Model::default(), stale: true };
    let mut unwritten: BTreeMap<ObjectId, Change> = BTreeMap::new();
    let (writer, mut written) = status_writer(Arc::clone(&leader));
    // Objects whose status write is with the writer: a newer status waits for it, so an older
    // one can never land after it.
    let mut writing: BTreeSet<ObjectId> = BTreeSet::new();
    let mut was_leader = false;
    let mut dirty = false;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Runtime)?;
    let mut named = Named::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_check = Instant::now();
    loop {
        tokio::select! {
            done = written.recv() => {
                let Some((id, change, result)) = done else { break };
                writing.remove(&id);
                match result {
                    Some(Ok(())) => {
                        crate::metrics::count_status_write(true);
                        if let Some(reference) = object_reference(&stores, &change) {
                            events.report(&change, reference).await;
                        }
                    }
                    Some(Err(e)) => {
                        crate::metrics::count_status_write(false);
                        warn!(object = %id, "status write failed: {e}; will retry");
                        unwritten.entry(id).or_insert(change);
                    }
                    // The Lease went before it was sent.
                    None => drop(unwritten.entry(id).or_insert(change)),
                }
            }
            update = rx.recv() => {
                let Some(update) = update else { break };
                named.answered(&update);
                dirty |= mirror.apply(&mut stores, update);
                // A burst is taken whole (whatever arrived meanwhile, while the last run
                // compiled, say); a single change goes out at once.
                while let Ok(more) = rx.try_recv() {
                    named.answered(&more);
                    dirty |= mirror.apply(&mut stores, more);
                }
            }
            _ = tick.tick() => {
                if last_check.elapsed() >= crate::SEGMENT_CHECK {
                    last_check = Instant::now();
                    dirty |= pipeline.bind_failures_changed();
                    pipeline.repair();
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let all_listed = WATCHED.iter().all(|(k, ..)| stores.get(k).is_some_and(|s| s.listed));
        if dirty && all_listed {
            let wanted = referenced(&stores, &pipeline.settings().controller_name);
            named.want(wanted, &client, &tx_named, &mut stores);
        }
        if dirty && all_listed && named.synced() {
            dirty = false;
            for c in pipeline.run(mirror.model(&stores), Read::now()) {
                unwritten.insert(c.id.clone(), c);
            }
        }
        let is_leader = leader.load(Ordering::Relaxed);
        crate::metrics::metrics().leader.set(i64::from(is_leader));
        if is_leader && !was_leader {
            info!("holding the Lease: writing status");
            for c in pipeline.statuses() {
                unwritten.insert(c.id.clone(), c);
            }
        }
        if !is_leader && was_leader {
            warn!("lost the Lease: status writes stop");
        }
        was_leader = is_leader;
        // Status describes what lb serves: it is written once lb serves the generation (the
        // pipeline's applied watcher warns when lb does not take it).
        if is_leader && pipeline.served() && !unwritten.is_empty() {
            // Handed to the writer task (`status_writer`): the loop never waits for the API
            // server, so watch events keep flowing while thousands of statuses are written.
            let controller = &pipeline.settings().controller_name;
            let ready: Vec<ObjectId> =
                unwritten.keys().filter(|id| !writing.contains(*id)).cloned().collect();
            for id in ready {
                let Some(change) = unwritten.remove(&id) else { continue };
                match status_write(&client, &stores, controller, &change) {
                    Some(write) => {
                        writing.insert(id.clone());
                        if writer.send((id, change, write)).is_err() {
                            break;
                        }
                    }
                    None => {
                        if let Some(reference) = object_reference(&stores, &change) {
                            events.report(&change, reference).await;
                        }
                    }
                }
            }
        }
    }
    lease_task.abort();
    lease::release(&client, options).await;
    info!("config-sync stopping; lb keeps serving the last table");
    Ok(())
}

/// A reference to the object `change` is about (for its events), with its uid when stored.
fn object_reference(
    stores: &BTreeMap<Kind, KindStore>,
    change: &Change,
) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let key = &change.id.key;
    let stored = stores.get(&change.id.kind).and_then(|s| s.objects.get(key))?;
    Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(change.id.kind.api_version().to_owned()),
        kind: Some(change.id.kind.as_str().to_owned()),
        name: Some(key.name.clone()),
        namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
        uid: stored.object.meta().uid.clone(),
        resource_version: stored.resource_version.clone(),
        ..Default::default()
    })
}

/// The Secrets and ConfigMaps Gateways of our classes may use: listener TLS certificateRefs
/// (core Secrets) and frontend validation caCertificateRefs (core ConfigMaps), in the
/// Gateway's namespace or granted by a ReferenceGrant in theirs; and the ClientCertificateHeader
/// filters HTTPRoutes name.
fn referenced(stores: &BTreeMap<Kind, KindStore>, controller: &str) -> BTreeSet<(Kind, Key)> {
    let objects = |kind: Kind| stores.get(&kind).into_iter().flat_map(|s| s.objects.values());
    let classes: BTreeSet<&str> = objects(Kind::GatewayClass)
        .filter_map(|s| match &s.object {
            Object::GatewayClass(c) if c.spec.controller_name == controller => {
                c.metadata.name.as_deref()
            }
            _ => None,
        })
        .collect();
    let granted = |from_ns: &str, to_ns: &str, kind: Kind, name: &str| {
        objects(Kind::ReferenceGrant).any(|s| match &s.object {
            Object::ReferenceGrant(g) if g.metadata.namespace.as_deref() == Some(to_ns) => {
                grant_permits(g, "Gateway", from_ns, kind.as_str(), name)
            }
            _ => false,
        })
    };
    let mut out = BTreeSet::new();
    for s in objects(Kind::Gateway) {
        let Object::Gateway(gw) = &s.object else { continue };
        if !classes.contains(gw.spec.gateway_class_name.as_str()) {
            continue;
        }
        let gw_ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        let mut refer =
            |kind: Kind, group: Option<&str>, k: Option<&str>, ns: Option<&str>, name: &str| {
                let core =
                    group.unwrap_or("").is_empty() && k.unwrap_or(kind.as_str()) == kind.as_str();
                let ns = ns.unwrap_or(gw_ns);
                if core && (ns == gw_ns || granted(gw_ns, ns, kind, name)) {
                    out.insert((kind, Key::new(ns, name)));
                }
            };
        let certificates = gw
            .spec
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
            .flat_map(|t| t.certificate_refs.iter().flatten());
        for r in certificates {
            refer(
                Kind::Secret,
                r.group.as_deref(),
                r.kind.as_deref(),
                r.namespace.as_deref(),
                &r.name,
            );
        }
        let frontend = gw.spec.tls.as_ref().and_then(|t| t.frontend.as_ref());
        let default = frontend.and_then(|f| f.default.validation.as_ref());
        let per_port = frontend
            .into_iter()
            .flat_map(|f| f.per_port.iter().flatten())
            .filter_map(|p| p.tls.validation.as_ref());
        let cas = default
            .into_iter()
            .flat_map(|v| v.ca_certificate_refs.iter())
            .map(|r| (r.group.as_str(), r.kind.as_str(), r.namespace.as_deref(), r.name.as_str()))
            .chain(per_port.flat_map(|v| v.ca_certificate_refs.iter()).map(|r| {
                (r.group.as_str(), r.kind.as_str(), r.namespace.as_deref(), r.name.as_str())
            }))
            .collect::<Vec<_>>();
        for (group, kind, ns, name) in cas {
            refer(Kind::ConfigMap, Some(group), Some(kind), ns, name);
        }
    }
    // Sluice filters HTTPRoutes name (always in the route's own namespace). Few and small,
    // but watched by name too: no cluster-wide list, and no failing watch where the CRD is
    // not installed.
    for s in objects(Kind::HttpRoute) {
        let Object::HttpRoute(r) = &s.object else { continue };
        let ns = r.metadata.namespace.as_deref().unwrap_or("default");
        let filters = r.spec.rules.iter().flatten().flat_map(|r| r.filters.iter().flatten());
        for e in filters.filter_map(|f| f.extension_ref.as_ref()) {
            if e.group == SLUICE_GROUP && e.kind == Kind::ClientCertificateHeader.as_str() {
                out.insert((Kind::ClientCertificateHeader, Key::new(ns, &e.name)));
            }
        }
    }
    out
}

/// Whether a watch failed because the API server does not serve the resource (404).
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

#[cfg(test)]
mod tests;
