//! Status output: the status each owned object gets, logged when it changes and (with
//! `--status-dir`) written as one YAML file per object: `<dir>/<kind>/<namespace>/<name>.yaml`
//! (cluster-scoped kinds without the namespace level). Files are replaced atomically and
//! removed when the object goes away.
//!
//! `lastTransitionTime` moves only when a condition's status flips, as the API conventions ask.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::compile::{ObjectStatus, Statuses};
use crate::model::ObjectId;

/// One object's status change.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The object.
    pub id: ObjectId,
    /// Its `metadata.generation` the status was computed for.
    pub generation: Option<i64>,
    /// The new status; `None` when the object is gone or no longer ours.
    pub status: Option<ObjectStatus>,
}

/// Remembers the last status of every object and writes changes.
#[derive(Debug, Default)]
pub(crate) struct StatusWriter {
    dir: Option<PathBuf>,
    last: BTreeMap<ObjectId, Last>,
}

/// An object's last status as the compiler gave it, and the `lastTransitionTime` of each of its
/// conditions (not a second copy of the status: 5,000 routes' statuses are megabytes).
#[derive(Debug)]
struct Last {
    generation: Option<i64>,
    received: Arc<ObjectStatus>,
    times: Vec<Time>,
}

impl Last {
    fn new(generation: Option<i64>, received: Arc<ObjectStatus>, timed: &mut ObjectStatus) -> Last {
        let times = timed.conditions_mut().into_iter().flatten();
        Last {
            generation,
            received,
            times: times.map(|c| c.last_transition_time.clone()).collect(),
        }
    }

    /// The status as written: the compiler's with the times.
    fn timed(&self) -> ObjectStatus {
        let mut status = (*self.received).clone();
        let conditions = status.conditions_mut().into_iter().flatten();
        for (c, time) in conditions.zip(&self.times) {
            c.last_transition_time = time.clone();
        }
        status
    }
}

impl StatusWriter {
    /// A writer that logs changes and, with `dir`, writes files there.
    pub(crate) fn new(dir: Option<PathBuf>) -> StatusWriter {
        StatusWriter { dir, last: BTreeMap::new() }
    }

    /// Applies a new set of statuses (written to the status folder, if any); returns the
    /// changes.
    ///
    /// `gone`: `next` holds only statuses that may have changed and these objects lost theirs;
    /// every other object keeps its status (a patched table, [`crate::Compiled::gone`]).
    pub(crate) fn apply(&mut self, next: Statuses, gone: Option<Vec<ObjectId>>) -> Vec<Change> {
        let changes = match gone {
            None => self.diff(next),
            Some(gone) => self.diff_part(next, gone),
        };
        for c in &changes {
            match &c.status {
                Some(status) => match self.write(&c.id, c.generation, status) {
                    Ok(true) => crate::metrics::count_status_write(true),
                    Ok(false) => {}
                    Err(e) => {
                        crate::metrics::count_status_write(false);
                        warn!(object = %c.id, "cannot write status: {e}");
                    }
                },
                None => {
                    if let Some(path) = self.path(&c.id)
                        && let Err(e) = fs::remove_file(&path)
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        warn!(file = %path.display(), "cannot remove status: {e}");
                    }
                }
            }
        }
        changes
    }

    /// Takes a new set of statuses (carrying `lastTransitionTime` over from the last set) and
    /// returns what changed: new or different statuses, and objects whose status is gone.
    ///
    /// Both sets are sorted by object: one pass over the two side by side. A status that is the
    /// same object as last time (a replayed route's) is unchanged without being compared.
    pub(crate) fn diff(&mut self, next: Statuses) -> Vec<Change> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut changes = Vec::new();
        let mut last = std::mem::take(&mut self.last).into_iter().peekable();
        let mut kept = Vec::with_capacity(next.len());
        let removed = |id: ObjectId, changes: &mut Vec<Change>| {
            info!(object = %id, "status removed (object gone or no longer ours)");
            changes.push(Change { id, generation: None, status: None });
        };
        for (id, (generation, received)) in next {
            while let Some((gone, _)) = last.next_if(|(old, _)| *old < id) {
                removed(gone, &mut changes);
            }
            let previous = last.next_if(|(old, _)| *old == id).map(|(_, l)| l);
            let l = compared(&id, previous, generation, received, &now, &mut changes);
            kept.push((id, l));
        }
        for (gone, _) in last {
            removed(gone, &mut changes);
        }
        self.last = kept.into_iter().collect();
        changes
    }

    /// [`StatusWriter::diff`] for part of the objects: `next` holds the statuses that may have
    /// changed, `gone` the objects that lost theirs; the others stay as they are.
    fn diff_part(&mut self, next: Statuses, gone: Vec<ObjectId>) -> Vec<Change> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut changes = Vec::new();
        for id in gone {
            if self.last.remove(&id).is_some() {
                info!(object = %id, "status removed (object gone or no longer ours)");
                changes.push(Change { id, generation: None, status: None });
            }
        }
        for (id, (generation, received)) in next {
            let previous = self.last.remove(&id);
            let l = compared(&id, previous, generation, received, &now, &mut changes);
            self.last.insert(id, l);
        }
        changes
    }

    /// Every current status, as changes (to write them all again, e.g. on becoming leader).
    pub(crate) fn all(&self) -> Vec<Change> {
        self.last
            .iter()
            .map(|(id, l)| Change {
                id: id.clone(),
                generation: l.generation,
                status: Some(l.timed()),
            })
            .collect()
    }

    fn path(&self, id: &ObjectId) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut p = dir.join(id.kind.as_str().to_ascii_lowercase());
        if !id.key.namespace.is_empty() {
            p.push(&id.key.namespace);
        }
        p.push(format!("{}.yaml", id.key.name));
        Some(p)
    }

    fn write(
        &self,
        id: &ObjectId,
        generation: Option<i64>,
        status: &ObjectStatus,
    ) -> io::Result<bool> {
        let Some(path) = self.path(id) else { return Ok(false) };
        let mut metadata = json!({ "name": id.key.name });
        if !id.key.namespace.is_empty() {
            metadata["namespace"] = Value::String(id.key.namespace.clone());
        }
        if let Some(g) = generation {
            metadata["generation"] = json!(g);
        }
        let doc = json!({
            "apiVersion": id.kind.api_version(),
            "kind": id.kind.as_str(),
            "metadata": metadata,
            "status": status_value(status),
        });
        let text = serde_yaml_ng::to_string(&doc).map_err(io::Error::other)?;
        write_atomic(&path, text.as_bytes()).map(|()| true)
    }
}

/// Whether a condition of this type and status is healthy: `True`, except for the condition
/// types whose healthy value is `False` (a listener's `Conflicted`). `sluice status` and the
/// Events on objects with problems read conditions this one way.
pub fn condition_healthy(type_: &str, status: &str) -> bool {
    const HEALTHY_FALSE: &[&str] = &["Conflicted", "Degraded"];
    status == if HEALTHY_FALSE.contains(&type_) { "False" } else { "True" }
}

/// The status as JSON.
pub(crate) fn status_value(status: &ObjectStatus) -> Value {
    let v = match status {
        ObjectStatus::GatewayClass(s) => serde_json::to_value(s),
        ObjectStatus::Gateway(s) => serde_json::to_value(s),
        ObjectStatus::HttpRoute(s) | ObjectStatus::GrpcRoute(s) => serde_json::to_value(s),
    };
    v.unwrap_or(Value::Null)
}

/// An object's new status against its last one (the same object as last time is unchanged
/// without being compared): a [`Change`] pushed when it differs, and what to remember.
fn compared(
    id: &ObjectId,
    mut previous: Option<Last>,
    generation: Option<i64>,
    received: Arc<ObjectStatus>,
    now: &Time,
    changes: &mut Vec<Change>,
) -> Last {
    if let Some(p) =
        previous.take_if(|p| p.generation == generation && Arc::ptr_eq(&p.received, &received))
    {
        return p;
    }
    let mut before = previous.as_ref().map(|p| (p.generation, p.timed()));
    let mut timed = (*received).clone();
    carry_times(&mut timed, before.as_mut().map(|(_, s)| s), now);
    let same = before.is_some_and(|(g, s)| g == generation && s == timed);
    if !same {
        info!(object = %id, "status {}", summary(&timed));
        changes.push(Change { id: id.clone(), generation, status: Some(timed.clone()) });
    }
    Last::new(generation, received, &mut timed)
}

fn carry_times(status: &mut ObjectStatus, previous: Option<&mut ObjectStatus>, now: &Time) {
    let mut old_lists = previous.map(ObjectStatus::conditions_mut).unwrap_or_default();
    for (i, list) in status.conditions_mut().into_iter().enumerate() {
        let old: &[Condition] = old_lists.get_mut(i).map(|l| l.as_slice()).unwrap_or(&[]);
        for c in list.iter_mut() {
            c.last_transition_time = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == c.status)
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
        }
    }
}

/// One line per status: `Type=Status(Reason)` for every condition, grouped.
fn summary(status: &ObjectStatus) -> String {
    let conds = |list: &[Condition]| {
        list.iter()
            .map(|c| {
                if c.reason == c.type_ {
                    format!("{}={}", c.type_, c.status)
                } else {
                    format!("{}={}({})", c.type_, c.status, c.reason)
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    match status {
        ObjectStatus::GatewayClass(s) => conds(s.conditions.as_deref().unwrap_or(&[])),
        ObjectStatus::Gateway(s) => {
            let mut out = conds(s.conditions.as_deref().unwrap_or(&[]));
            for l in s.listeners.iter().flatten() {
                out.push_str(&format!(
                    "; listener {} attachedRoutes={} {}",
                    l.name,
                    l.attached_routes,
                    conds(&l.conditions)
                ));
            }
            out
        }
        ObjectStatus::HttpRoute(s) | ObjectStatus::GrpcRoute(s) => s
            .parents
            .iter()
            .map(|p| {
                let section = p.parent_ref.section_name.as_deref().map(|s| format!("/{s}"));
                format!(
                    "parent {}{}: {}",
                    p.parent_ref.name,
                    section.unwrap_or_default(),
                    conds(&p.conditions)
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use gateway_api::apis::experimental::gatewayclasses::GatewayClassStatus;

    use super::*;
    use crate::compile::conditions::{Reason, Type, condition};
    use crate::model::{Key, Kind};

    fn class(accepted: bool, reason: Reason) -> ObjectStatus {
        ObjectStatus::GatewayClass(GatewayClassStatus {
            conditions: Some(vec![
                condition(Type::Accepted, accepted, reason, "m", Some(2)),
                condition(Type::SupportedVersion, true, Reason::SupportedVersion, "v", Some(2)),
            ]),
            ..GatewayClassStatus::default()
        })
    }

    fn id(name: &str) -> ObjectId {
        ObjectId { kind: Kind::GatewayClass, key: Key::new("", name) }
    }

    fn set(names: &[&str], status: &Arc<ObjectStatus>) -> Statuses {
        names.iter().map(|n| (id(n), (Some(2), Arc::clone(status)))).collect()
    }

    fn times(s: &ObjectStatus) -> Vec<Time> {
        let ObjectStatus::GatewayClass(c) = s else { panic!() };
        c.conditions.iter().flatten().map(|c| c.last_transition_time.clone()).collect()
    }

    #[test]
    fn only_changes_are_reported_and_times_move_only_when_a_condition_flips() {
        let mut w = StatusWriter::new(None);
        let first =
            w.diff(BTreeMap::from([(id("a"), (Some(2), Arc::new(class(true, Reason::Accepted))))]));
        assert_eq!(first.len(), 1);
        let t0 = times(first[0].status.as_ref().unwrap());
        assert_ne!(t0[0], Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH), "a real time is set");
        // The same status again: nothing to write.
        let same =
            w.diff(BTreeMap::from([(id("a"), (Some(2), Arc::new(class(true, Reason::Accepted))))]));
        assert!(same.is_empty());
        // Accepted flips: its time moves, SupportedVersion's stays.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let flipped = w.diff(BTreeMap::from([(
            id("a"),
            (Some(3), Arc::new(class(false, Reason::UnsupportedValue))),
        )]));
        let t1 = times(flipped[0].status.as_ref().unwrap());
        assert_ne!(t1[0], t0[0]);
        assert_eq!(t1[1], t0[1]);
        // The object is gone: a removal.
        let gone = w.diff(BTreeMap::new());
        assert_eq!((gone.len(), gone[0].id.clone(), gone[0].status.is_none()), (1, id("a"), true));
    }

    /// The two sets are walked side by side: objects before, between and after the others come
    /// and go; the same status object again is unchanged, and so is an equal new one.
    #[test]
    fn objects_come_and_go_anywhere_in_the_order() {
        let mut w = StatusWriter::new(None);
        let ok = Arc::new(class(true, Reason::Accepted));
        let names = |changes: &[Change]| -> Vec<(String, bool)> {
            changes.iter().map(|c| (c.id.key.name.clone(), c.status.is_some())).collect()
        };
        assert_eq!(w.diff(set(&["b", "d", "f"], &ok)).len(), 3);
        assert!(w.diff(set(&["b", "d", "f"], &ok)).is_empty(), "the same objects");
        let equal = Arc::new(class(true, Reason::Accepted));
        assert!(w.diff(set(&["b", "d", "f"], &equal)).is_empty(), "equal statuses");
        let changes = w.diff(set(&["a", "d", "e", "g"], &ok));
        let expected = [("a", true), ("b", false), ("e", true), ("f", false), ("g", true)];
        assert_eq!(names(&changes), expected.map(|(n, s)| (n.to_owned(), s)));
        let changes = w.diff(set(&["a", "d", "e", "g"], &Arc::new(class(false, Reason::Pending))));
        assert_eq!(changes.len(), 4, "every status changed");
        assert_eq!(w.all().len(), 4);
    }

    #[test]
    fn a_partial_set_changes_only_what_it_names() {
        let mut w = StatusWriter::default();
        let accepted = Arc::new(class(true, Reason::Accepted));
        w.diff(set(&["a", "b", "c"], &accepted));
        // "b" changes, "c" is gone, "d" is new, "a" is not named and stays.
        let next = set(&["b", "d"], &Arc::new(class(false, Reason::Pending)));
        let changes = w.apply(next, Some(vec![id("c"), id("never")]));
        let mut named: Vec<(String, bool)> =
            changes.iter().map(|c| (c.id.key.name.clone(), c.status.is_some())).collect();
        named.sort();
        let expect = [("b", true), ("c", false), ("d", true)].map(|(n, s)| (n.to_owned(), s));
        assert_eq!(named, expect);
        let all: Vec<String> = w.all().into_iter().map(|c| c.id.key.name).collect();
        assert_eq!(all, ["a", "b", "d"]);
        // The same partial set again: nothing changed.
        let again =
            w.apply(set(&["b", "d"], &Arc::new(class(false, Reason::Pending))), Some(vec![]));
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn status_files_are_written_per_object_and_removed_with_it() {
        let dir = std::env::temp_dir().join(format!("sluice-status-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut w = StatusWriter::new(Some(dir.clone()));
        w.apply(
            BTreeMap::from([(
                id("sluice"),
                (Some(2), Arc::new(class(false, Reason::InvalidParameters))),
            )]),
            None,
        );
        let file = dir.join("gatewayclass").join("sluice.yaml");
        let doc: Value = serde_yaml_ng::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(doc["kind"], "GatewayClass");
        assert_eq!(doc["metadata"]["generation"], 2);
        let cond = &doc["status"]["conditions"][0];
        assert_eq!((&cond["type"], &cond["status"]), (&json!("Accepted"), &json!("False")));
        assert_eq!(
            (&cond["reason"], &cond["observedGeneration"]),
            (&json!("InvalidParameters"), &json!(2))
        );
        assert_eq!(
            summary(&class(false, Reason::InvalidParameters)),
            "Accepted=False(InvalidParameters) SupportedVersion=True"
        );
        w.apply(BTreeMap::new(), None);
        assert!(!file.exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
