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
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    leader: Arc<AtomicBool>,
}

impl Elector {
    /// An elector for the Lease `options` name.
    pub fn new(client: kube::Client, options: &KubeOptions, leader: Arc<AtomicBool>) -> Elector {
        Elector {
            api: Api::namespaced(client, &options.lease_namespace),
            name: options.lease_name.clone(),
            identity: options.identity.clone(),
            duration: options.lease_duration,
            leader,
        }
    }

    /// Runs forever (the caller aborts the task).
    pub async fn run(self) {
        let retry = (self.duration / 3).max(Duration::from_millis(200));
        let mut renewed: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Some(Instant::now()),
                Ok(false) => renewed = None,
                Err(e) => warn!(lease = %self.name, "lease: {e}"),
            }
            // Leader only while the last renewal is fresh, whatever the API server says later.
            let fresh = renewed.is_some_and(|at| at.elapsed() < self.duration);
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
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let held_for = spec.lease_duration_seconds.unwrap_or(seconds).max(1);
            let expires = spec.renew_time.as_ref().and_then(|t| {
                t.0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(held_for)))
                    .ok()
            });
            if expires.is_some_and(|e| e > now) {
                debug!(lease = %self.name, %holder, "held by another replica");
                return Ok(false);
            }
            info!(lease = %self.name, previous = %holder, "lease expired: taking over");
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Gives the Lease up on a clean stop, so another replica takes over at once.
pub async fn release(client: &kube::Client, options: &KubeOptions) {
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
