//! Idle keep-alive upstream connections of one core, keyed by where they go and how.
//!
//! A connection goes back to the pool only after a fully framed exchange (request sent whole,
//! response read to its end, nothing extra), and leaves it after an idle timeout or as soon as
//! it is found not silent (a byte or EOF while idle, checked at each reuse:
//! `io::idle_clean`). No locks: everything here is one core's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;

use crate::transport::Transport;

/// What a pooled connection is good for: the endpoint, and (once they exist) the upstream
/// protocol and TLS identity, so an h2 or TLS connection is never handed to a plain HTTP/1
/// exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The endpoint.
    pub addr: SocketAddr,
    /// The protocol spoken to it.
    pub protocol: Protocol,
}

/// The protocol of an upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    /// HTTP/1.1 over TCP: one exchange at a time, idle ones kept in [`Pool`].
    Http1,
    /// HTTP/2 with prior knowledge over TCP: multiplexed (`upstream::h2`).
    H2c,
}

impl Key {
    /// Plain TCP carrying HTTP/1.1 to `addr`.
    #[cfg(test)]
    pub(crate) fn plain(addr: SocketAddr) -> Key {
        Key { addr, protocol: Protocol::Http1 }
    }
}

/// Idle upstream connections of one core.
#[derive(Debug)]
pub(crate) struct Pool {
    idle: HashMap<Key, Vec<(Transport, u64)>, BuildHasherDefault<AddrHasher>>,
    max_per_key: usize,
    idle_ticks: u64,
}

impl Pool {
    /// A pool keeping at most `max_per_key` idle connections per key for `idle_ticks` wheel
    /// ticks.
    pub(crate) fn new(max_per_key: usize, idle_ticks: u64) -> Pool {
        Pool { idle: HashMap::default(), max_per_key, idle_ticks }
    }

    /// An idle connection for `key` that has not outlived the idle timeout and has stayed
    /// silent since its last exchange. A connection the upstream wrote to while idle (a stray
    /// response, a body after a HEAD answer) or closed is dropped here: reusing it would hand
    /// those bytes to the next client as its response. The newest connection is tried first
    /// (it is the least likely to have been closed by the upstream's own idle timeout).
    pub(crate) fn take(&mut self, key: Key, now: u64) -> Option<Transport> {
        let list = self.idle.get_mut(&key)?;
        while let Some((conn, since)) = list.pop() {
            if now.saturating_sub(since) > self.idle_ticks {
                // Too old: the upstream has likely closed it; older ones are further down.
                list.clear();
                break;
            }
            if conn.idle_clean() {
                return Some(conn);
            }
            tracing::debug!(addr = %key.addr, "idle upstream connection received bytes or EOF; retired");
        }
        None
    }

    /// Keeps a connection for reuse (dropped when `key` already has its share).
    pub(crate) fn put(&mut self, key: Key, conn: Transport, now: u64) {
        let list = self.idle.entry(key).or_default();
        if list.len() < self.max_per_key {
            list.push((conn, now));
        }
    }

    /// Drops connections to endpoints no longer in use and those past the idle timeout.
    pub(crate) fn prune(&mut self, now: u64, keep: impl Fn(&SocketAddr) -> bool) {
        let idle_ticks = self.idle_ticks;
        self.idle.retain(|key, list| {
            list.retain(|(_, since)| now.saturating_sub(*since) <= idle_ticks);
            keep(&key.addr) && !list.is_empty()
        });
    }

    /// Idle connections kept for `key`.
    #[cfg(test)]
    fn len(&self, key: Key) -> usize {
        self.idle.get(&key).map_or(0, Vec::len)
    }
}

/// A small multiplicative hasher for socket addresses: the pool is probed on every request,
/// and std's SipHash costs more than the lookup itself for a key this small.
#[derive(Debug, Default)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::io::Write;

    use super::*;

    /// A connected loopback pair: the pooled (lb) side as a transport, the upstream side as a
    /// std socket the test writes to or closes.
    fn pair() -> (Transport, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (Transport::Plain(compio::net::TcpStream::from_std(ours).unwrap()), theirs)
    }

    fn in_runtime(f: impl FnOnce()) {
        compio::runtime::Runtime::new().unwrap().block_on(async { f() });
    }

    fn key(port: u16) -> Key {
        Key::plain(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn a_silent_connection_is_reused_and_a_noisy_or_closed_one_never() {
        in_runtime(|| {
            let mut pool = Pool::new(8, 100);
            let (quiet, _quiet_peer) = pair();
            let (stray, mut stray_peer) = pair();
            let (closed, closed_peer) = pair();
            pool.put(key(1), quiet, 0);
            pool.put(key(1), stray, 0);
            pool.put(key(1), closed, 0);
            // A stray response on one, EOF on another, while they sit idle.
            stray_peer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
            drop(closed_peer);
            std::thread::sleep(std::time::Duration::from_millis(20));
            // Newest first: `closed` and `stray` are retired on the way to `quiet`.
            assert!(pool.take(key(1), 1).is_some());
            assert_eq!(pool.len(key(1)), 0);
            assert!(pool.take(key(1), 1).is_none());
        });
    }

    #[test]
    fn keys_idle_timeout_limit_and_prune() {
        in_runtime(|| {
            let mut pool = Pool::new(2, 100);
            let peers: Vec<_> = (0..3)
                .map(|_| {
                    let (c, peer) = pair();
                    pool.put(key(1), c, 10);
                    peer
                })
                .collect();
            // At most two per key; another key shares nothing.
            assert_eq!(pool.len(key(1)), 2);
            assert!(pool.take(key(2), 10).is_none());
            // Past the idle timeout: not reused, and the older ones go with it.
            assert!(pool.take(key(1), 111).is_none());
            assert_eq!(pool.len(key(1)), 0);
            let (c, _peer) = pair();
            pool.put(key(1), c, 200);
            let (c, _peer2) = pair();
            pool.put(key(2), c, 200);
            // Endpoints that left the table are dropped; so are expired connections.
            pool.prune(250, |addr| addr.port() == 2);
            assert_eq!((pool.len(key(1)), pool.len(key(2))), (0, 1));
            pool.prune(301, |_| true);
            assert_eq!(pool.len(key(2)), 0);
            drop(peers);
        });
    }
}
