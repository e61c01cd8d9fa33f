//! Listening sockets of one core, kept in step with the table: every port of the current
//! table has a SO_REUSEPORT listener on this core; ports that leave the table are closed, new
//! ones opened, without a restart. A port that cannot be bound (in use, no permission) is
//! logged, retried every second, and reported in `<segment>.listeners` (by core 0; all cores
//! bind the same ports) so that config-sync can say `Programmed=False` for it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use compio::net::TcpListener;
use compio::runtime::JoinHandle;
use table::Router;
use table::shm::BindKey;
use tracing::{info, warn};

use crate::core::Core;
use crate::downstream;

/// The listeners of one core.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    active: RefCell<HashMap<SocketAddr, (JoinHandle<()>, RawFd)>>,
}

impl Listeners {
    /// Closes every listener of this core (draining).
    pub(crate) fn close_all(&self) {
        for (_, listener) in self.active.borrow_mut().drain() {
            close(listener);
        }
    }

    /// Opens and closes listeners to match `router`'s ports. Returns the ports that could
    /// not be bound, keyed as the table names them, with the error (the caller retries later
    /// and reports them: config-sync turns them into `Programmed=False`).
    pub(crate) async fn reconcile(
        &self,
        core: &Rc<Core>,
        router: &Router,
    ) -> BTreeMap<BindKey, String> {
        let bind = core.settings.bind_address;
        let wanted: Vec<(BindKey, SocketAddr)> = router
            .table()
            .ports
            .iter()
            .map(|p| {
                let table_addr = p.address.as_ref().map(|a| a.ip());
                let port = p.port.to_native();
                ((table_addr, port), SocketAddr::new(table_addr.unwrap_or(bind), port))
            })
            .collect();
        let desired: Vec<SocketAddr> = wanted.iter().map(|(_, a)| *a).collect();
        let mut failed = BTreeMap::new();
        let gone: Vec<SocketAddr> =
            self.active.borrow().keys().filter(|a| !desired.contains(a)).copied().collect();
        for addr in gone {
            if core.id == 0 {
                info!(%addr, "closing listener");
            }
            if let Some(listener) = self.active.borrow_mut().remove(&addr) {
                close(listener);
            }
        }
        for (key, addr) in wanted {
            if self.active.borrow().contains_key(&addr) {
                continue;
            }
            match crate::io::listen(addr, core.settings.backlog).await {
                Ok(listener) => {
                    if core.id == 0 {
                        info!(%addr, "listening");
                    }
                    let fd = listener.as_raw_fd();
                    let task = compio::runtime::spawn(accept(Rc::clone(core), listener));
                    self.active.borrow_mut().insert(addr, (task, fd));
                }
                Err(e) => {
                    warn!(core = core.id, %addr, "cannot listen: {e}; will retry");
                    failed.insert(key, e.to_string());
                }
            }
        }
        failed
    }
}

/// How often an accept loop at its connection limit looks again.
const FULL_RECHECK: Duration = Duration::from_millis(10);
/// At most one "connection limit reached" line per core this often.
const FULL_LOG_EVERY: u64 = 1000; // wheel ticks (10 s)

/// Stops a listener without losing a connection: `shutdown(2)` makes the pending accept fail
/// (so the accept task ends by itself and closes the socket) and hands connections still in
/// the backlog to the other listeners of the port (`net.ipv4.tcp_migrate_req`). Dropping the
/// task instead cancelled an accept that the kernel may already have completed, and the
/// connection it had dequeued was reset (seen in the upgrade test).
fn close((task, fd): (JoinHandle<()>, RawFd)) {
    if let Err(e) = crate::io::shutdown_listener(fd) {
        warn!("closing a listener: {e}");
    }
    task.detach();
}

async fn accept(core: Rc<Core>, listener: TcpListener) {
    loop {
        if core.conns.get() >= core.max_conns {
            // Leave new connections in the kernel's backlog until some close, instead of
            // accepting what we cannot serve (and failing upstream connects for want of
            // descriptors).
            let now = core.wheel.now();
            let last = core.full_logged.get();
            if last == 0 || now.saturating_sub(last) >= FULL_LOG_EVERY {
                core.full_logged.set(now.max(1));
                warn!(
                    core = core.id,
                    limit = core.max_conns,
                    "connection limit reached; accepting paused until connections close (--max-connections)"
                );
            }
            compio::time::sleep(FULL_RECHECK).await;
            continue;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Without TCP_NODELAY small responses wait on delayed ACKs.
                let _ = stream.set_nodelay(true);
                compio::runtime::spawn(downstream::serve(Rc::clone(&core), stream, peer)).detach();
            }
            // Shut down (draining, or the port left the table): this listener is done.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                warn!(core = core.id, "accept: {e}");
                compio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
