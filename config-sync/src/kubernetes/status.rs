//! Writing status to the API server: a merge patch on each object's `/status`, only when it
//! differs from what the server has, `lastTransitionTime` carried over from it, and an
//! HTTPRoute's parent entries of other controllers kept; sent by a task of their own
//! ([`status_writer`]) so the event loop never waits for the API server.

use super::*;

/// Status writes in flight at once (each a PATCH of one object's `/status`).
const STATUS_IN_FLIGHT: usize = 16;

/// Keeps `lastTransitionTime` of every condition whose status did not flip from what the API
/// server has (`current`), so a restarted or newly elected config-sync neither moves the times
/// nor rewrites statuses that are already right. Conditions match by `type` within the same
/// place: top level, the listener of the same `name`, the parent of the same `parentRef` and
/// `controllerName`.
pub(super) fn carry_transition_times(desired: &mut Value, current: &Value) {
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => {
            for (k, v) in d.iter_mut() {
                if let Some(cv) = c.get(k) {
                    carry_transition_times(v, cv);
                }
            }
        }
        (Value::Array(d), Value::Array(c)) => {
            for item in d.iter_mut() {
                let twin = c.iter().find(|ci| {
                    let same =
                        |field: &str| item.get(field).is_some_and(|v| ci.get(field) == Some(v));
                    if item.get("lastTransitionTime").is_some() {
                        same("type") && same("status")
                    } else if item.get("parentRef").is_some() {
                        same("parentRef") && same("controllerName")
                    } else {
                        same("name")
                    }
                });
                let Some(twin) = twin else { continue };
                if let (Some(t), Value::Object(m)) = (twin.get("lastTransitionTime"), &mut *item)
                    && m.contains_key("lastTransitionTime")
                {
                    m.insert("lastTransitionTime".into(), t.clone());
                }
                carry_transition_times(item, twin);
            }
        }
        _ => {}
    }
}

/// Whether the route's parents on the API server already are `desired` (the others' entries
/// first, then ours) as far as ours go.
pub(super) fn same_parents(
    desired: &Value,
    current: &Value,
    controller: &str,
    others: usize,
) -> bool {
    let ours = |v: &Value| -> Vec<Value> {
        v.get("parents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| p.get("controllerName").and_then(Value::as_str) == Some(controller))
            .cloned()
            .collect()
    };
    let theirs = current.get("parents").and_then(Value::as_array).map_or(0, |p| {
        p.iter()
            .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(controller))
            .count()
    });
    theirs == others && ours(desired) == ours(current)
}

/// One object's status write, ready to send: a merge patch of its `/status` subresource.
pub(super) struct StatusWrite {
    api: Api<DynamicObject>,
    name: String,
    patch: Value,
}

impl StatusWrite {
    /// Sends the patch.
    pub(super) async fn send(self) -> Result<(), kube::Error> {
        self.api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&self.patch))
            .await?;
        Ok(())
    }
}

/// The write that brings one object's status to `change`; `None` when there is nothing to
/// write (it already says that, or it is not ours to clear). A route's patch carries the
/// stored resourceVersion: the other controllers' entries it keeps are the ones stored, or
/// the write fails (409) and is made again from the newer object.
pub(super) fn status_write(
    client: &kube::Client,
    stores: &BTreeMap<Kind, KindStore>,
    controller: &str,
    change: &Change,
) -> Option<StatusWrite> {
    let &(kind, group, version, plural) = WATCHED.iter().find(|(k, ..)| *k == change.id.kind)?;
    let ar = api_resource(group, version, kind, plural);
    let key = &change.id.key;
    let api: Api<DynamicObject> = if key.namespace.is_empty() {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), &key.namespace, &ar)
    };
    let stored = stores.get(&kind).and_then(|s| s.objects.get(key));
    let current = stored.map_or(&Value::Null, |s| &s.status);
    let patch = match (&change.status, kind) {
        // A route's parents are shared: keep the other controllers' entries as they are.
        (status, Kind::HttpRoute | Kind::GrpcRoute) => {
            let stored = stored?;
            let mut parents: Vec<Value> = stored
                .status
                .get("parents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(controller))
                .cloned()
                .collect();
            let others = parents.len();
            if let Some(ObjectStatus::HttpRoute(s) | ObjectStatus::GrpcRoute(s)) = status {
                parents.extend(s.parents.iter().filter_map(|p| serde_json::to_value(p).ok()));
            }
            let mut desired = json!({"parents": parents});
            carry_transition_times(&mut desired, current);
            if same_parents(&desired, current, controller, others) {
                debug!(object = %change.id, "status already as computed; not written");
                return None;
            }
            let parents = desired["parents"].take();
            json!({
                "metadata": {"resourceVersion": stored.resource_version},
                "status": {"parents": parents},
            })
        }
        (Some(status), _) => {
            // A merge patch keeps fields it does not name: name the ones that went away.
            let mut value = status_value(status);
            carry_transition_times(&mut value, current);
            if value == *current {
                debug!(object = %change.id, "status already as computed; not written");
                return None;
            }
            if let (Some(map), ObjectStatus::Gateway(_)) = (value.as_object_mut(), status) {
                for field in ["addresses", "listeners", "conditions"] {
                    map.entry(field).or_insert(Value::Null);
                }
            }
            json!({"status": value})
        }
        // A Gateway or class no longer ours: its status is not ours to clear.
        (None, _) => return None,
    };
    Some(StatusWrite { api, name: key.name.clone(), patch })
}

/// Status writes in, results out: a task sending up to [`STATUS_IN_FLIGHT`] writes at once,
/// each only while this replica holds the Lease (`None`: not sent).
#[allow(clippy::type_complexity, reason = "two channel ends, named where they are used")]
pub(super) fn status_writer(
    leader: Arc<AtomicBool>,
) -> (
    mpsc::UnboundedSender<(ObjectId, Change, StatusWrite)>,
    mpsc::UnboundedReceiver<(ObjectId, Change, Option<Result<(), kube::Error>>)>,
) {
    let (writes, mut queue) = mpsc::unbounded_channel::<(ObjectId, Change, StatusWrite)>();
    let (done, results) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let queue = futures_util::stream::poll_fn(move |cx| queue.poll_recv(cx));
        queue
            .for_each_concurrent(STATUS_IN_FLIGHT, |(id, change, write)| {
                let (leader, done) = (Arc::clone(&leader), done.clone());
                async move {
                    let result = if leader.load(Ordering::Relaxed) {
                        Some(write.send().await)
                    } else {
                        None
                    };
                    if result.as_ref().is_some_and(Result::is_ok) {
                        debug!(object = %id, "status written");
                    }
                    let _ = done.send((id, change, result));
                }
            })
            .await;
    });
    (writes, results)
}
