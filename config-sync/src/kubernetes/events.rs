//! Kubernetes Events on objects with problems, as controllers do: when an object's status is
//! written with a condition that is not healthy (`Accepted=False`, `ResolvedRefs=False`,
//! `Programmed=False`, `Conflicted=True` …), the Lease holder records a Warning event on it
//! (events.k8s.io/v1) whose reason is the condition's and whose note is its message.
//!
//! Deduplicated: kube's `Recorder` turns a repeat of the same event into a series (one object,
//! its count raised). Rate limited here: the same (object, condition, reason, message) is
//! reported at most once per [`REPEAT_AFTER`]; a change of reason or message is reported at
//! once. Events are best effort: a failure is logged at debug level and counted, never retried.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::debug;

use crate::compile::ObjectStatus;
use crate::status::Change;

/// How long the same problem stays quiet after it was reported.
pub(super) const REPEAT_AFTER: Duration = Duration::from_secs(300);

/// Most problems remembered (oldest forgotten first); bounded however many objects churn.
const REMEMBERED: usize = 10_000;

pub(super) struct Events {
    recorder: Recorder,
    reported: HashMap<String, Instant>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("reported", &self.reported.len()).finish_non_exhaustive()
    }
}

impl Events {
    pub(super) fn new(client: kube::Client, controller: &str, identity: &str) -> Events {
        let reporter =
            Reporter { controller: controller.to_owned(), instance: Some(identity.to_owned()) };
        Events { recorder: Recorder::new(client, reporter), reported: HashMap::new() }
    }

    /// Reports the problems in `change`'s status on the object `reference` names.
    pub(super) async fn report(&mut self, change: &Change, reference: ObjectReference) {
        let Some(status) = &change.status else { return };
        let now = Instant::now();
        for (type_, reason, message) in problems(status) {
            let key = format!("{}|{type_}|{reason}|{message}", change.id);
            if self.reported.get(&key).is_some_and(|at| now.duration_since(*at) < REPEAT_AFTER) {
                crate::metrics::count_event("suppressed");
                continue;
            }
            if self.reported.len() >= REMEMBERED {
                self.reported.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
            }
            self.reported.insert(key, now);
            let event = Event {
                type_: EventType::Warning,
                reason: reason.chars().take(128).collect(),
                note: Some(format!("{type_}: {message}").chars().take(1024).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            match self.recorder.publish(&event, &reference).await {
                Ok(()) => crate::metrics::count_event("published"),
                Err(e) => {
                    crate::metrics::count_event("failed");
                    debug!(object = %change.id, "event not recorded: {e}");
                }
            }
        }
    }
}

/// The unhealthy conditions of a status: (type, reason, message), listeners' and parents'
/// included.
fn problems(status: &ObjectStatus) -> Vec<(String, String, String)> {
    let mut status = status.clone();
    let mut out = Vec::new();
    for list in status.conditions_mut() {
        for c in list.iter() {
            if !crate::status::condition_healthy(&c.type_, &c.status) {
                let item = (c.type_.clone(), c.reason.clone(), c.message.clone());
                if !out.contains(&item) {
                    out.push(item);
                }
            }
        }
    }
    out
}
