//! Which endpoint a request goes to, per core: a matched rule's weighted backends (smooth
//! weighted round robin from the table crate, with this core's counters), then round robin
//! over the chosen Service's ready endpoints. No locks: the counters are this core's.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use table::format::{ArchivedActionKind, ArchivedBackendTarget};
use table::{Router, Scratch, ServiceId};

use super::pool::Protocol;

/// One core's view of a table: the shared router plus this core's mutable selection state.
#[derive(Debug)]
pub(crate) struct CoreTable {
    /// The validated table, shared read-only by all cores.
    pub router: Arc<Router>,
    /// Its TLS configuration (server configs of its TLS ports), shared read-only too.
    pub tls: Arc<crate::tls::Ports>,
    /// Metric slots of its listeners, rules and Services.
    pub labels: Arc<crate::metrics::Labels>,
    /// Weighted-round-robin counters (one per weighted backend of the table).
    wrr: RefCell<Vec<i64>>,
    /// Round-robin cursor per service.
    rr: RefCell<Vec<u32>>,
    /// Regex caches for lookups.
    pub scratch: RefCell<Scratch>,
}

/// Where a matched rule sends this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A service and the endpoint cursor to start from.
    Service {
        /// The Service.
        service: ServiceId,
        /// Round-robin position of the first endpoint to try.
        cursor: u32,
        /// Index of the chosen backend within the action's backends (for its header edits).
        backend: u32,
    },
    /// Answer with this status (an invalid backend's share, or every weight 0).
    Status(u16),
}

impl CoreTable {
    /// This core's state for `router`.
    pub(crate) fn new(
        router: Arc<Router>,
        tls: Arc<crate::tls::Ports>,
        labels: Arc<crate::metrics::Labels>,
    ) -> CoreTable {
        let t = router.table();
        let wrr = vec![0; t.wrr_slots.to_native() as usize];
        let rr = vec![0; t.services.len.to_native() as usize];
        let scratch = router.scratch();
        CoreTable {
            router,
            tls,
            labels,
            wrr: RefCell::new(wrr),
            rr: RefCell::new(rr),
            scratch: RefCell::new(scratch),
        }
    }

    /// Picks the target for a matched action.
    pub(crate) fn select(&self, kind: &ArchivedActionKind) -> Target {
        match kind {
            ArchivedActionKind::Respond { status } => Target::Status(status.to_native()),
            // Answered before selection (`exchange`); never forwarded.
            ArchivedActionKind::Redirect { status, .. } => Target::Status(status.to_native()),
            ArchivedActionKind::Forward { backends, wrr_offset } => {
                let start = wrr_offset.to_native() as usize;
                let mut wrr = self.wrr.borrow_mut();
                let state = wrr.get_mut(start..start + backends.len()).unwrap_or(&mut []);
                let picked = table::select::pick_weighted(backends, state);
                match picked.and_then(|i| Some((i, backends.get(i)?))) {
                    // Every weight is 0: nothing may receive traffic.
                    None => Target::Status(500),
                    Some((backend, b)) => match &b.target {
                        ArchivedBackendTarget::Status(s) => Target::Status(s.to_native()),
                        ArchivedBackendTarget::Service(s) => {
                            let service = ServiceId(s.to_native());
                            let cursor = self.next_cursor(service);
                            Target::Service { service, cursor, backend: backend as u32 }
                        }
                    },
                }
            }
        }
    }

    /// The service's round-robin position for this request, advancing it for the next one.
    pub(crate) fn next_cursor(&self, service: ServiceId) -> u32 {
        let mut rr = self.rr.borrow_mut();
        let Some(c) = rr.get_mut(service.0 as usize) else { return 0 };
        let cursor = *c;
        *c = c.wrapping_add(1);
        cursor
    }

    /// The endpoint for `attempt` (0 = first try) of a service target; `None` when the service
    /// has no ready endpoints or every one has been tried.
    pub(crate) fn endpoint(
        &self,
        service: ServiceId,
        cursor: u32,
        attempt: usize,
    ) -> Option<SocketAddr> {
        let svc = self.router.service(service)?;
        let n = svc.endpoints.len();
        if n == 0 || attempt >= n {
            return None;
        }
        let i = (cursor as usize).wrapping_add(attempt) % n;
        svc.endpoints.get(i).map(|e| e.socket_addr())
    }

    /// The protocol lb speaks to a service's endpoints.
    pub(crate) fn protocol(&self, service: ServiceId) -> Protocol {
        match self.router.service(service).map(|s| &s.protocol) {
            Some(table::format::ArchivedUpstreamProtocol::H2c) => Protocol::H2c,
            _ => Protocol::Http1,
        }
    }

    /// Number of ready endpoints of a service.
    pub(crate) fn endpoint_count(&self, service: ServiceId) -> usize {
        self.router.service(service).map_or(0, |s| s.endpoints.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::net::{IpAddr, Ipv4Addr};

    use table::fixtures::forward;
    use table::format::*;

    use super::*;

    fn endpoints(ports: &[u16]) -> Service {
        Service {
            name: "svc".into(),
            protocol: UpstreamProtocol::Http1,
            endpoints: ports
                .iter()
                .map(|&port| Endpoint {
                    address: Address::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    port,
                })
                .collect(),
        }
    }

    /// Action 0: backends weighted 3 (service 0), 1 (service 1), 0 (service 2) and an invalid
    /// reference of weight 1 (status 500). Action 1: one backend of weight 0. Service 0 has
    /// three endpoints, service 1 one, service 2 none.
    fn table() -> CoreTable {
        let backend = |weight, target| WeightedBackend {
            weight,
            target,
            request_headers: HeaderEdits::default(),
        };
        let mut weighted = forward("weighted", 0, 0);
        weighted.kind = ActionKind::Forward {
            backends: vec![
                backend(3, BackendTarget::Service(0)),
                backend(1, BackendTarget::Service(1)),
                backend(0, BackendTarget::Service(2)),
                backend(1, BackendTarget::Status(500)),
            ],
            wrr_offset: 0,
        };
        let mut none = forward("zero", 2, 4);
        none.kind = ActionKind::Forward {
            backends: vec![backend(0, BackendTarget::Service(2))],
            wrr_offset: 4,
        };
        // The fixture's matches point at six actions and six services: replace the first ones.
        let mut t = table::fixtures::sample();
        t.actions[0] = weighted;
        t.actions[1] = none;
        t.services[0] = endpoints(&[1, 2, 3]);
        t.services[1] = endpoints(&[4]);
        t.services[2] = endpoints(&[]);
        for (i, a) in t.actions.iter_mut().enumerate().skip(2) {
            if let ActionKind::Forward { wrr_offset, .. } = &mut a.kind {
                *wrr_offset = 3 + i as u32;
            }
        }
        t.wrr_slots = 9;
        let bytes = table::encode(&t).unwrap();
        CoreTable::new(
            Arc::new(Router::open(&bytes, None).unwrap()),
            Arc::default(),
            Arc::default(),
        )
    }

    #[test]
    fn weights_spread_smoothly_and_zero_weights_get_nothing() {
        let t = table();
        let kind = &t.router.action(table::ActionId(0)).unwrap().kind;
        let picks: Vec<Target> = (0..10).map(|_| t.select(kind)).collect();
        let count = |f: &dyn Fn(&Target) -> bool| picks.iter().filter(|p| f(p)).count();
        let to = |s: u32| move |p: &Target| matches!(p, Target::Service { service, .. } if service.0 == s);
        // 3:1:0:1 over 10 picks (two full rounds of 5).
        assert_eq!(count(&to(0)), 6);
        assert_eq!(count(&to(1)), 2);
        assert_eq!(count(&to(2)), 0);
        assert_eq!(count(&|p| *p == Target::Status(500)), 2);
        // Smooth: never three picks of service 0 in a row.
        assert!(!picks.windows(3).any(|w| w.iter().all(to(0))), "{picks:?}");
        // Every weight zero: the spec's 500.
        assert_eq!(
            t.select(&t.router.action(table::ActionId(1)).unwrap().kind),
            Target::Status(500)
        );
    }

    #[test]
    fn endpoints_rotate_per_request_and_attempts_walk_the_rest() {
        let t = table();
        let svc = ServiceId(0);
        let port = |cursor, attempt| t.endpoint(svc, cursor, attempt).map(|a| a.port());
        let (c0, c1) = (t.next_cursor(svc), t.next_cursor(svc));
        assert_eq!(c1, c0 + 1);
        assert_eq!((port(c0, 0), port(c1, 0)), (Some(1), Some(2)));
        // A request whose first endpoint failed tries each other endpoint once, then stops.
        assert_eq!(
            [port(1, 0), port(1, 1), port(1, 2), port(1, 3)],
            [Some(2), Some(3), Some(1), None]
        );
        assert_eq!(t.endpoint(ServiceId(2), 0, 0), None);
        assert_eq!(t.endpoint(ServiceId(9), 0, 0), None);
        assert_eq!((t.endpoint_count(svc), t.endpoint_count(ServiceId(2))), (3, 0));
    }
}
