//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews `renewTime` every `duration / 3`; another replica takes the Lease over only when its
//! `renewTime` is older than `leaseDurationSeconds`. Every write carries the resourceVersion it
//! read, so two replicas cannot both win a takeover.
//!
//! The holder counts as leader only while its last successful renewal is younger than the
//! lease duration: a holder cut off from the API server stops writing status on its own, before
//! anyone else can take over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

use super::KubeOptions;

/// Competes for the Lease and keeps `leader` up to date.
#[derive(Debug)]
pub(crate) struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    leader: Arc<AtomicBool>,
}

impl Elector {
    /// An elector for the Lease `options` name.
    pub(crate) fn new(
        client: kube::Client,
        options: &KubeOptions,
        leader: Arc<AtomicBool>,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, &options.lease_namespace),
            name: options.lease_name.clone(),
            identity: options.identity.clone(),
            duration: options.lease_duration,
            leader,
        }
    }

    /// Runs forever (the caller aborts the task).
    pub(crate) async fn run(self) {
        let retry = (self.duration / 3).max(Duration::from_millis(200));
        let mut renewed: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Some(Instant::now()),
                Ok(false) => renewed = None,
                Err(e) => warn!(lease = %self.name, "lease: {e}"),
            }
            let fresh = leading(renewed, Instant::now(), self.duration);
            if self.leader.swap(fresh, Ordering::Relaxed) != fresh {
                info!(lease = %self.name, identity = %self.identity, leader = fresh, "leadership changed");
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Takes or renews the Lease; `Ok(true)` when we hold it now.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Someone else created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        match claim(spec, &self.identity, now, seconds) {
            Claim::HeldByOther(holder) => {
                debug!(lease = %self.name, %holder, "held by another replica");
                return Ok(false);
            }
            Claim::TakeOver(previous) => {
                info!(lease = %self.name, previous = %previous, "lease free or expired: taking over");
            }
            Claim::Renew => {}
        }
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What a replica may do with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// We hold it: renew.
    Renew,
    /// Free, released or expired: take it (the name of the previous holder, maybe empty).
    TakeOver(String),
    /// Another replica holds it and renewed it recently: leave it.
    HeldByOther(String),
}

/// Decides on the Lease `spec` as read at `now`, and writes what we claim into it (holder,
/// acquire time and transition count on a takeover; duration and renew time whenever we
/// hold it). The write that follows carries the resourceVersion read, so two replicas taking
/// over at once cannot both succeed.
fn claim(spec: &mut LeaseSpec, identity: &str, now: Timestamp, seconds: i32) -> Claim {
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == identity;
    if !ours && !holder.is_empty() {
        let held_for = spec.lease_duration_seconds.unwrap_or(seconds).max(1);
        let expires = spec.renew_time.as_ref().and_then(|t| {
            t.0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(held_for))).ok()
        });
        if expires.is_some_and(|e| e > now) {
            return Claim::HeldByOther(holder);
        }
    }
    if !ours {
        spec.holder_identity = Some(identity.to_owned());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    if ours { Claim::Renew } else { Claim::TakeOver(holder) }
}

/// Whether a replica whose last successful renewal was at `renewed` counts as leader at `now`:
/// only while that renewal is younger than the lease duration, whatever the API server says
/// later — a holder cut off from it stops writing before anyone else can take over.
fn leading(renewed: Option<Instant>, now: Instant, duration: Duration) -> bool {
    renewed.is_some_and(|at| now.saturating_duration_since(at) < duration)
}

/// Gives the Lease up on a clean stop, so another replica takes over at once.
pub(crate) async fn release(client: &kube::Client, options: &KubeOptions) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &options.lease_namespace);
    let Ok(Some(mut lease)) = api.get_opt(&options.lease_name).await else { return };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(options.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(&options.lease_name, &PostParams::default(), &lease).await {
        Ok(_) => info!(lease = %options.lease_name, "lease released"),
        Err(e) => warn!(lease = %options.lease_name, "cannot release the lease: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn held(by: &str, renewed: i64, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(0))),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_holder_renews_and_nobody_else_takes_a_fresh_lease() {
        let mut spec = held("a", 10, 15);
        assert_eq!(claim(&mut spec, "a", at(20), 15), Claim::Renew);
        assert_eq!(spec.renew_time, Some(MicroTime(at(20))));
        assert_eq!((spec.lease_transitions, spec.acquire_time), (Some(3), Some(MicroTime(at(0)))));
        // b sees a lease renewed 14 s ago with 15 s duration: hands off, nothing changed.
        let mut spec = held("a", 10, 15);
        let before = spec.clone();
        assert_eq!(claim(&mut spec, "b", at(24), 15), Claim::HeldByOther("a".into()));
        assert_eq!(spec, before);
    }

    #[test]
    fn an_expired_released_or_broken_lease_is_taken_over() {
        // Expiry counts the holder's own duration, not ours.
        let mut spec = held("a", 10, 5);
        assert_eq!(claim(&mut spec, "b", at(16), 60), Claim::TakeOver("a".into()));
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(16))));
        assert_eq!(spec.lease_duration_seconds, Some(60));
        // Released on a clean stop (no holder), or never renewed: free.
        let mut released = LeaseSpec { holder_identity: None, ..held("a", 10, 15) };
        assert_eq!(claim(&mut released, "b", at(11), 15), Claim::TakeOver(String::new()));
        let mut never = LeaseSpec { renew_time: None, ..held("a", 10, 15) };
        assert_eq!(claim(&mut never, "b", at(11), 15), Claim::TakeOver("a".into()));
    }

    #[test]
    fn leadership_lapses_with_the_last_renewal() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert!(!leading(None, t0, d));
        assert!(leading(Some(t0), t0 + Duration::from_secs(14), d));
        assert!(!leading(Some(t0), t0 + d, d));
    }
}
