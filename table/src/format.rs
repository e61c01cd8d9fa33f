//! The compiled-table layout: what config-sync writes and lb reads.
//!
//! Every type here is serialised with rkyv, so lb reads the table in place after one validation
//! pass (see `view`). Indices (`u32`) point into the flat vectors of [`Table`]; `view` checks
//! each one once, so lookups can follow them without bounds surprises.
//!
//! Change anything here and bump [`FORMAT_VERSION`]: a reader refuses a table whose version it
//! does not know instead of misreading it.

use rkyv::{Archive, Deserialize, Serialize};

pub use crate::paged::Paged;

/// Version of this layout. Stored in the segment header and checked by readers.
pub const FORMAT_VERSION: u32 = 12;

/// One compiled generation of the whole data-plane configuration, in its native form
/// (config-sync builds it; lb reads the [`Root`] and chunks it is encoded into).
///
/// The large vectors are [`Paged`]: the encoder turns each page into a chunk of its own and
/// re-encodes only the pages that changed (docs/table-format.md, "Chunks").
#[derive(serde::Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// Generation number, also carried by the segment header; the two must agree.
    pub generation: u64,
    /// Listening sockets, sorted by `(port, address)`.
    pub ports: Vec<Port>,
    /// Gateway listeners; a port's [`HostIndex`] picks one by Host.
    pub listeners: Vec<Listener>,
    /// Per-hostname rule lists of a listener.
    pub vhosts: Paged<VirtualHost>,
    /// Route matches; a virtual host lists them in precedence order.
    pub matches: Paged<RouteMatch>,
    /// What a matched rule does.
    pub actions: Paged<Action>,
    /// Backend services with their resolved endpoints.
    pub services: Paged<Service>,
    /// Regular expressions referenced by index, compiled once when the table is opened.
    pub regexes: Paged<String>,
    /// Certificates with their private keys, for the listeners of TLS ports. Key material:
    /// docs/table-format.md says who may read a table and why.
    pub certificates: Vec<Certificate>,
    /// Total number of weighted backends over all actions: the size of each core's
    /// weighted-round-robin state. Must equal the sum, so a corrupted count cannot make a reader
    /// allocate without bound.
    pub wrr_slots: u32,
}

/// The encoded table's root: everything but the paged vectors, which it names chunk by chunk.
/// Each chunk is an archived `Vec` of up to [`PAGE_ITEMS`](crate::paged::PAGE_ITEMS) items of
/// its vector, stored and checksummed on its own, so a reader that holds a chunk of the same
/// identity from an earlier generation keeps it instead of copying and checking it again.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Root {
    /// Generation number, also carried by the segment header; the two must agree.
    pub generation: u64,
    /// As [`Table::ports`].
    pub ports: Vec<Port>,
    /// As [`Table::listeners`].
    pub listeners: Vec<Listener>,
    /// As [`Table::certificates`].
    pub certificates: Vec<Certificate>,
    /// As [`Table::wrr_slots`].
    pub wrr_slots: u32,
    /// [`Table::vhosts`] by chunk.
    pub vhosts: Chunks,
    /// [`Table::matches`] by chunk.
    pub matches: Chunks,
    /// [`Table::actions`] by chunk.
    pub actions: Chunks,
    /// [`Table::services`] by chunk.
    pub services: Chunks,
    /// [`Table::regexes`] by chunk.
    pub regexes: Chunks,
}

/// One paged vector of the table, as chunks in order: chunk `k` holds items
/// `k * PAGE_ITEMS ..`, all full but the last.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Chunks {
    /// Number of items.
    pub len: u32,
    /// The chunks, `len.div_ceil(PAGE_ITEMS)` of them.
    pub chunks: Vec<ChunkRef>,
}

/// Where a chunk's bytes are and how to know them again.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ChunkRef {
    /// Identity: the writer never gives two different contents the same one (the generation
    /// that first published the chunk, and a count within it).
    pub id: u64,
    /// Byte offset: in the segment file, or from the start of an encoded table's bytes.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
    /// CRC32 of the bytes.
    pub checksum: u32,
}

/// An IPv4 or IPv6 address in a fixed-size form (IPv4 in the first four octets).
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    PartialOrd,
    Ord,
)]
#[rkyv(derive(Debug))]
pub struct Address {
    /// `true` for IPv6.
    pub v6: bool,
    /// The address octets; for IPv4 only `octets[..4]` are meaningful, the rest are zero.
    pub octets: [u8; 16],
}

/// A socket lb listens on and the Gateway listeners that share it.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Port {
    /// Address to bind; `None` means lb's default bind address.
    pub address: Option<Address>,
    /// TCP port.
    pub port: u16,
    /// Picks a listener by the request's Host (Gateway API listener isolation), and on a TLS
    /// port by the ClientHello's server name too.
    pub listeners: HostIndex,
    /// `Some`: the port terminates TLS (HTTPS listeners).
    pub tls: Option<PortTls>,
}

/// How a TLS port handshakes.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct PortTls {
    /// Client certificate validation (Gateway `spec.tls.frontend`); `None`: no client
    /// certificate is asked for.
    pub client: Option<ClientValidation>,
}

/// Frontend client-certificate validation of one port.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct ClientValidation {
    /// Trusted CA certificates, DER. (Dumps show how many.)
    #[serde(serialize_with = "count")]
    pub roots: Vec<Vec<u8>>,
    /// `AllowInsecureFallback`: a client without a valid certificate is still served (its
    /// certificate, if any, is not passed on); otherwise the handshake fails.
    pub insecure_fallback: bool,
}

/// A certificate chain and its private key (from a `kubernetes.io/tls` Secret).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// `namespace/name` of the Secret, for logs.
    pub name: String,
    /// The chain, leaf first, DER. (Dumps show how many certificates, not the bytes.)
    #[serde(serialize_with = "count")]
    pub chain: Vec<Vec<u8>>,
    /// The private key, DER, in the form `key_format` names. Never dumped.
    #[serde(skip_serializing)]
    pub key: Vec<u8>,
    /// Encoding of `key`.
    pub key_format: KeyFormat,
}

/// Serialises a list of DER blobs as their number (JSON dumps of a table).
fn count<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.len() as u64)
}

/// An address serialises as its text form.
impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.ip())
    }
}

impl std::fmt::Debug for Certificate {
    // Never the key: tables are logged and dumped in tests and tools.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for ArchivedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name.as_str())
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Private key encodings.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum KeyFormat {
    /// PKCS#8 `PrivateKeyInfo`.
    Pkcs8,
    /// PKCS#1 `RSAPrivateKey`.
    Pkcs1,
    /// SEC1 `ECPrivateKey`.
    Sec1,
}

/// Host → target lookup with the Gateway API's precedence: exact name, then the longest
/// matching wildcard suffix, then the catch-all.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct HostIndex {
    /// Exact lower-case host names, sorted by bytes for binary search.
    pub exact: Vec<HostEntry>,
    /// Wildcards stored as their suffix with the leading dot (`*.example.com` →
    /// `.example.com`), sorted by bytes. A host matches the longest suffix it ends with that
    /// starts at one of its dots (so at least one label stands in front).
    pub wildcard: Vec<HostEntry>,
    /// Target for any other host.
    pub any: Option<u32>,
}

/// One name in a [`HostIndex`].
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HostEntry {
    /// Lower-case host name or wildcard suffix.
    pub host: String,
    /// Index of the listener or virtual host.
    pub target: u32,
}

/// A Gateway listener (`namespace/gateway/listener`).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Listener {
    /// `namespace/gateway/listener`, for logs.
    pub name: String,
    /// Picks the virtual host by Host.
    pub vhosts: HostIndex,
    /// Indices into [`Table::certificates`] (on a TLS port; one per key type at most, the
    /// handshake picks by the client's signature schemes). Empty on a TLS port: a handshake
    /// for this listener's names fails.
    pub certificates: Vec<u32>,
}

/// The ordered rules for one effective hostname of a listener.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct VirtualHost {
    /// The hostname (`""` for any), for logs.
    pub hostname: String,
    /// Indices into [`Table::matches`], first match wins.
    pub matches: Vec<u32>,
    /// Less specific virtual host to try when nothing here matches. Always a larger index than
    /// this one, which keeps every chain finite.
    pub fallback: Option<u32>,
}

/// One HTTPRoute match: every condition must hold.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RouteMatch {
    /// Path condition.
    pub path: PathMatch,
    /// Method condition, upper-case as sent.
    pub method: Option<String>,
    /// Header conditions; names lower-case.
    pub headers: Vec<HeaderMatch>,
    /// Query-parameter conditions; names exact.
    pub query: Vec<QueryMatch>,
    /// Index into [`Table::actions`].
    pub action: u32,
}

/// Path condition of a match.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PathMatch {
    /// Element-wise prefix without a trailing slash (`/` matches everything).
    Prefix(String),
    /// Whole path.
    Exact(String),
    /// Index into [`Table::regexes`]; the whole path must match.
    Regex(u32),
}

/// Header condition.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// Value condition on the first field with that name.
    pub value: ValueMatch,
}

/// Query-parameter condition.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct QueryMatch {
    /// Exact (case-sensitive) parameter name.
    pub name: String,
    /// Value condition on the first parameter with that name.
    pub value: ValueMatch,
}

/// A value condition.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ValueMatch {
    /// Byte-exact value.
    Exact(String),
    /// Index into [`Table::regexes`]; the whole value must match.
    Regex(u32),
}

/// What a matched route rule does.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Action {
    /// `namespace/name` of the HTTPRoute, for logs.
    pub route: String,
    /// Index of the rule within the route.
    pub rule: u32,
    /// Forward or answer.
    pub kind: ActionKind,
    /// Request header edits (HTTPRoute `RequestHeaderModifier`), applied to the upstream head.
    pub request_headers: HeaderEdits,
    /// URL rewrite (HTTPRoute `URLRewrite`) of the forwarded request.
    pub rewrite: Rewrite,
    /// Response header edits (HTTPRoute `ResponseHeaderModifier`), applied to the upstream's
    /// response head before it goes to the client.
    pub response_headers: HeaderEdits,
    /// HTTPRoute rule `timeouts`, in milliseconds (0: none).
    pub timeouts: RouteTimeouts,
    /// `RequestMirror` filters: copies of the request sent fire-and-forget.
    pub mirrors: Vec<Mirror>,
    /// `CORS` filter: preflights answered by lb, response headers for allowed origins.
    pub cors: Option<Cors>,
    /// Rule `retry` (attempts 0: never retried beyond lb's own safe resend).
    pub retry: Retry,
    /// Fields that carry a TLS client's verified certificate to the backend (Sluice's
    /// `ClientCertificateHeader` filters). Empty: `X-Forwarded-Client-Cert`, the default.
    pub client_cert_headers: Vec<ClientCertHeader>,
}

/// A field the rule chose for the verified client certificate.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ClientCertHeader {
    /// Field name, as configured (a token).
    pub name: String,
    /// What the field says.
    pub value: ClientCertValue,
}

/// What a client-certificate field says.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ClientCertValue {
    /// Envoy's `X-Forwarded-Client-Cert` element: `Hash=<sha256 hex>;Subject="<RFC 4514>"`.
    Xfcc,
    /// The subject distinguished name (RFC 4514), as nginx's `$ssl_client_s_dn`.
    Subject,
    /// SHA-256 of the certificate's DER, lower-case hex.
    Hash,
    /// The certificate's DER as an RFC 8941 byte sequence (`:base64:`), RFC 9440's
    /// `Client-Cert` value.
    Certificate,
}

/// One `RequestMirror`: a copy of each sampled request goes to one endpoint of a service.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Mirror {
    /// Index into [`Table::services`].
    pub service: u32,
    /// Share of requests mirrored, in parts per million (1,000,000: every request).
    pub per_million: u32,
}

/// A rule's CORS policy (HTTPRoute `CORS` filter).
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct Cors {
    /// Allowed origins: `*`, or `scheme://host[:port]` where the host may start with `*` (any
    /// number of labels in front); lower-case, default ports written out.
    pub origins: Vec<String>,
    /// Allowed methods (`*`: any), as written.
    pub methods: Vec<String>,
    /// Allowed request headers (`*`: any).
    pub headers: Vec<String>,
    /// Response headers exposed to scripts.
    pub expose: Vec<String>,
    /// `Access-Control-Max-Age` in seconds.
    pub max_age: u32,
    /// Send `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
}

/// When a request is sent again (HTTPRoute rule `retry`).
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct Retry {
    /// Retries after the first attempt (0: none).
    pub attempts: u32,
    /// Response statuses that are retried; connection errors and backend-request timeouts
    /// always are when `attempts` > 0.
    pub codes: Vec<u16>,
    /// Minimum wait between attempts, in milliseconds.
    pub backoff_ms: u32,
}

/// A rule's timeouts (0: not set).
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct RouteTimeouts {
    /// `request`: the whole request, from its arrival to the response head.
    pub request_ms: u32,
    /// `backendRequest`: one request to a backend, until its response head.
    pub backend_request_ms: u32,
}

/// How a forwarded request's Host and path change.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Rewrite {
    /// Host sent upstream instead of the client's.
    pub host: Option<String>,
    /// Path sent upstream (the query is kept).
    pub path: PathRewrite,
}

impl Default for Rewrite {
    fn default() -> Self {
        Rewrite { host: None, path: PathRewrite::Keep }
    }
}

/// Header edits in the spec's order: `remove` and `set` drop every field of that name
/// (case-insensitive), then `set` and `add` append theirs. Names and values are checked by
/// `view` (tokens; no CR, LF or NUL) before lb writes them into a head.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct HeaderEdits {
    /// Replace (or create) these fields.
    pub set: Vec<HeaderField>,
    /// Append these fields, keeping existing ones.
    pub add: Vec<HeaderField>,
    /// Drop fields with these names.
    pub remove: Vec<String>,
}

/// A header field.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct HeaderField {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// Forward to weighted backends, or answer locally.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ActionKind {
    /// Weighted backends; `wrr_offset` is where this action's state starts in each core's
    /// weighted-round-robin array.
    Forward {
        /// Backends with their weights.
        backends: Vec<WeightedBackend>,
        /// Offset into the per-core state, `backends.len()` slots long.
        wrr_offset: u32,
    },
    /// Answer with this status and no upstream.
    Respond {
        /// HTTP status code.
        status: u16,
    },
    /// Answer with a redirect (HTTPRoute `RequestRedirect`); unset parts keep the request's.
    Redirect {
        /// 3xx status.
        status: u16,
        /// `http` or `https`.
        scheme: Option<String>,
        /// Host name.
        host: Option<String>,
        /// Port; `None` derives it (the scheme's well-known port when the scheme is set,
        /// else the listener's port), and a well-known port is left out of `Location`.
        port: Option<u16>,
        /// Path.
        path: PathRewrite,
    },
}

/// How a redirect or rewrite changes the path.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PathRewrite {
    /// The request's path.
    Keep,
    /// This path.
    Full(String),
    /// The matched path prefix replaced by this.
    Prefix(String),
}

/// A backend and its share of traffic.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WeightedBackend {
    /// Relative weight; 0 receives nothing.
    pub weight: u32,
    /// Request header edits for requests sent to this backend (backendRef filters), applied
    /// after the rule's.
    pub request_headers: HeaderEdits,
    /// Where that share goes.
    pub target: BackendTarget,
}

/// Destination of one backend share.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum BackendTarget {
    /// Index into [`Table::services`].
    Service(u32),
    /// An invalid backend reference: that share of traffic gets this status (the spec's 500).
    Status(u16),
}

/// A backend Service port and its ready endpoints.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Service {
    /// `namespace/name:port`, for logs.
    pub name: String,
    /// How lb speaks to the endpoints.
    pub protocol: UpstreamProtocol,
    /// Ready endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The protocol of a Service port, from its `appProtocol` (GEP-1911), or HTTP/2 for every
/// GRPCRoute backend.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP (no `appProtocol`, or `http`, `kubernetes.io/ws`).
    #[default]
    Http1,
    /// HTTP/2 over cleartext TCP with prior knowledge (`kubernetes.io/h2c`).
    H2c,
}

/// One endpoint address.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Endpoint {
    /// IP address.
    pub address: Address,
    /// TCP port.
    pub port: u16,
}

impl Address {
    /// The address as a std [`IpAddr`](std::net::IpAddr).
    pub fn ip(&self) -> std::net::IpAddr {
        to_ip(self.v6, &self.octets)
    }
}

impl From<std::net::IpAddr> for Address {
    fn from(ip: std::net::IpAddr) -> Self {
        let mut octets = [0u8; 16];
        match ip {
            std::net::IpAddr::V4(v4) => {
                octets[..4].copy_from_slice(&v4.octets());
                Address { v6: false, octets }
            }
            std::net::IpAddr::V6(v6) => Address { v6: true, octets: v6.octets() },
        }
    }
}

impl ArchivedAddress {
    /// The address as a std [`IpAddr`](std::net::IpAddr).
    pub fn ip(&self) -> std::net::IpAddr {
        to_ip(self.v6, &self.octets)
    }
}

impl ArchivedEndpoint {
    /// The endpoint as a socket address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.address.ip(), self.port.to_native())
    }
}

fn to_ip(v6: bool, octets: &[u8; 16]) -> std::net::IpAddr {
    if v6 {
        std::net::IpAddr::V6(std::net::Ipv6Addr::from(*octets))
    } else {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    }
}
