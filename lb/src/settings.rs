//! What an lb process is told: timeouts, limits, buffer sizes, trust. Every default is defined
//! once, in [`defaults`]; `Default` impls and the `sluice lb` command line both read it.

use std::net::IpAddr;
use std::time::Duration;

/// Every default value of lb's settings.
pub mod defaults {
    use std::time::Duration;

    /// From the first byte of a request to its complete head.
    pub const REQUEST_HEADER: Duration = Duration::from_secs(10);
    /// Waiting for the next request on a kept-alive client connection.
    pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
    /// Establishing an upstream connection.
    pub const CONNECT: Duration = Duration::from_secs(5);
    /// Waiting for the upstream's response head, and between reads of its body.
    pub const UPSTREAM: Duration = Duration::from_secs(60);
    /// Between reads of a request body, and for each write to a peer.
    pub const BODY: Duration = Duration::from_secs(60);
    /// An upgraded connection in which neither side sent a byte.
    pub const TUNNEL: Duration = Duration::from_secs(3600);
    /// How long an idle upstream connection is kept.
    pub const POOL_IDLE: Duration = Duration::from_secs(30);
    /// Idle upstream connections kept per endpoint and core.
    pub const POOL_MAX_IDLE: usize = 128;
    /// Listen backlog.
    pub const BACKLOG: i32 = 1024;
    /// Address bound for table ports that name none.
    pub const BIND_ADDRESS: std::net::IpAddr =
        std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    /// Largest request head, bytes.
    pub const MAX_HEAD: usize = 64 * 1024;
    /// Most request field lines.
    pub const MAX_HEADERS: usize = 100;
    /// Largest request body, bytes.
    pub const MAX_BODY: u64 = 1 << 30;
    /// Largest chunk extension, bytes.
    pub const MAX_CHUNK_EXT: usize = 4096;
    /// Buffers in each core's provided-buffer ring.
    pub const RING_BUFFERS: u16 = 256;
    /// Size of each ring buffer.
    pub const RING_BUFFER_LEN: usize = 16 * 1024;
    /// Heap buffers kept per core for reuse.
    pub const SPARE_BUFFERS: usize = 256;
    /// Largest heap buffer kept for reuse.
    pub const SPARE_CAPACITY: usize = 72 * 1024;
    /// A TLS handshake, from accept to the client's Finished.
    pub const HANDSHAKE: Duration = Duration::from_secs(10);
    /// TLS handshakes in progress per core; connections beyond are closed at once, so a
    /// handshake flood costs bounded CPU and memory.
    pub const MAX_HANDSHAKES: usize = 256;
    /// After SIGTERM: how long requests in flight get to finish.
    pub const DRAIN: Duration = Duration::from_secs(30);
}

/// Timeouts of a request's phases.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request to its complete head.
    pub request_header: Duration,
    /// Waiting for the next request on a kept-alive client connection.
    pub keep_alive: Duration,
    /// Establishing an upstream connection.
    pub connect: Duration,
    /// Waiting for the upstream's response head, and between reads of its body.
    pub upstream: Duration,
    /// Between reads of a request body, and for each write to a peer.
    pub body: Duration,
    /// An upgraded connection (WebSocket, after a 101) in which neither side sent a byte.
    pub tunnel: Duration,
    /// A TLS handshake, from accept to the client's Finished.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_header: defaults::REQUEST_HEADER,
            keep_alive: defaults::KEEP_ALIVE,
            connect: defaults::CONNECT,
            upstream: defaults::UPSTREAM,
            body: defaults::BODY,
            tunnel: defaults::TUNNEL,
            handshake: defaults::HANDSHAKE,
        }
    }
}

/// Settings shared by all cores.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Parsing limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Address to bind for table ports that name none.
    pub bind_address: IpAddr,
    /// Listen backlog.
    pub backlog: i32,
    /// Idle upstream connections kept per endpoint and core.
    pub pool_max_idle: usize,
    /// How long an idle upstream connection is kept.
    pub pool_idle: Duration,
    /// Buffer ring and free list.
    pub buffers: BufferConfig,
    /// Proxies in front of lb whose forwarding fields are trusted (Envoy's
    /// `xff_num_trusted_hops`): 0 at the edge, where a client's X-Forwarded-* and `Forwarded`
    /// are replaced; more, and they are kept and extended.
    pub trusted_hops: u32,
    /// Most client connections of the process (`None`: derived from the descriptor limit,
    /// [`crate::io::max_connections`]).
    pub max_connections: Option<usize>,
    /// TLS handshakes in progress per core.
    pub max_handshakes: usize,
    /// HTTP/2 from clients: whether it is offered (ALPN `h2`, cleartext prior knowledge), and
    /// its limits.
    pub h2: H2Limits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            bind_address: defaults::BIND_ADDRESS,
            backlog: defaults::BACKLOG,
            pool_max_idle: defaults::POOL_MAX_IDLE,
            pool_idle: defaults::POOL_IDLE,
            buffers: BufferConfig::default(),
            max_connections: None,
            max_handshakes: defaults::MAX_HANDSHAKES,
            trusted_hops: 0,
            h2: H2Limits::default(),
        }
    }
}

/// Limits every HTTP/2 connection gets.
#[derive(Debug, Clone, Copy)]
pub struct H2Limits {
    /// Offer HTTP/2 (ALPN `h2` on TLS ports, the h2c preface on cleartext ones).
    pub enabled: bool,
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams: u32,
    /// Per-stream receive window, bytes (what one stream may send us unread).
    pub stream_window: u32,
    /// Connection receive window, bytes.
    pub connection_window: u32,
    /// Largest header list, bytes (SETTINGS_MAX_HEADER_LIST_SIZE; HPACK-decoded size).
    pub max_header_list: u32,
    /// Largest frame payload we accept (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame: u32,
    /// Response bytes buffered per stream before the client's window lets them go.
    pub max_send_buffer: usize,
    /// Streams a client may open and reset before we answer them, then GOAWAY (the rapid
    /// reset attack, CVE-2023-44487).
    pub max_pending_resets: usize,
}

impl Default for H2Limits {
    fn default() -> H2Limits {
        H2Limits {
            enabled: true,
            max_streams: 128,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_header_list: 16 * 1024,
            max_frame: 16 * 1024,
            max_send_buffer: 64 * 1024,
            max_pending_resets: 20,
        }
    }
}

/// What to do with a field whose name contains `_` (a valid token, but CGI-style backends,
/// nginx, WSGI and others fold `_` and `-` together, so `Content_Length` or `X_Forwarded_For`
/// would reach the application as a field lb never saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// 400 (the default, as Envoy Gateway's `withUnderscoresAction`).
    #[default]
    Reject,
    /// Forward the request without such fields (nginx's `underscores_in_headers off`).
    Drop,
    /// Pass them on.
    Allow,
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and fields), bytes.
    pub max_head: usize,
    /// Most field lines.
    pub max_headers: usize,
    /// Largest declared or streamed request body, bytes.
    pub max_body: u64,
    /// Largest chunk extension, bytes.
    pub max_chunk_ext: usize,
    /// Fields whose name contains `_`.
    pub underscores: Underscores,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: defaults::MAX_HEAD,
            max_headers: defaults::MAX_HEADERS,
            max_body: defaults::MAX_BODY,
            max_chunk_ext: defaults::MAX_CHUNK_EXT,
            underscores: Underscores::Reject,
        }
    }
}

/// Buffer ring and free-list sizes.
#[derive(Debug, Clone, Copy)]
pub struct BufferConfig {
    /// Buffers in each core's provided-buffer ring (rounded up to a power of two).
    pub ring_buffers: u16,
    /// Size of each ring buffer.
    pub ring_buffer_len: usize,
    /// Heap buffers kept per core for reuse.
    pub spare_buffers: usize,
    /// Largest heap buffer kept for reuse; larger ones are freed.
    pub spare_capacity: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            ring_buffers: defaults::RING_BUFFERS,
            ring_buffer_len: defaults::RING_BUFFER_LEN,
            spare_buffers: defaults::SPARE_BUFFERS,
            spare_capacity: defaults::SPARE_CAPACITY,
        }
    }
}
