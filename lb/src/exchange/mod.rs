//! The protocol-neutral exchange: what lb does with a request, whatever protocol carried it.
//! A protocol (HTTP/1 today, `conn`) hands over a [`Request`] — method, scheme, authority,
//! normalised path, query, fields — and gets a [`Decision`]: refuse, redirect, answer a CORS
//! preflight, or forward to a chosen Service endpoint with the route's field edits, URL rewrite
//! and response fields. Route lookup (`table`), every filter (`filters`) and backend selection
//! (`upstream::select`) happen here, on that view, never on wire bytes; the protocol writes
//! the decision in its own syntax.
//!
//! The route's identity ([`ActionId`]) and the table it came from travel with the request
//! from here on, so nothing looks the rule up again after an await.

pub(crate) mod path;

use std::net::SocketAddr;

use table::format::{ArchivedAction, ArchivedActionKind};
use table::{ActionId, Headers, Route, ServiceId};

use crate::error::Refusal;
use crate::fields::{Edits, FieldList};
use crate::filters::{cors, redirect, rewrite};
use crate::upstream::{CoreTable, Target};

/// A request as routing and filters see it.
#[derive(Clone, Copy)]
pub(crate) struct Request<'a> {
    /// Method token.
    pub method: &'a [u8],
    /// `http`, or `https` on a connection whose TLS lb terminated.
    pub scheme: &'a str,
    /// On TLS: the server name the client asked for, lower-case (empty: none).
    pub server_name: Option<&'a [u8]>,
    /// Host, lower-case, without port (empty: none).
    pub authority: &'a [u8],
    /// The normalised path (`path::normalize_path`).
    pub path: &'a [u8],
    /// Normalisation changed the path: the backend must get `path`, not the client's bytes.
    pub normalized: bool,
    /// Query without `?` (empty: none).
    pub query: &'a [u8],
    /// The request's fields.
    pub fields: &'a dyn Headers,
    /// Where the connection was accepted (which listener port).
    pub local: SocketAddr,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method.escape_ascii().to_string())
            .field("authority", &self.authority.escape_ascii().to_string())
            .field("path", &self.path.escape_ascii().to_string())
            .finish_non_exhaustive()
    }
}

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Decision<'t> {
    /// Answer with the refusal's status.
    Refuse(Refusal),
    /// Answer with a redirect.
    Redirect {
        /// 3xx status.
        status: u16,
        /// `Location`.
        location: String,
    },
    /// Answer an allowed CORS preflight with these fields.
    Preflight(FieldList),
    /// Forward.
    Forward(Forward<'t>),
}

/// A request to forward, as decided.
#[derive(Debug)]
pub(crate) struct Forward<'t> {
    /// The matched rule.
    pub id: ActionId,
    /// Its action.
    pub action: &'t ArchivedAction,
    /// The chosen Service.
    pub service: ServiceId,
    /// Round-robin position of the first endpoint to try.
    pub cursor: u32,
    /// Field edits for the upstream request: the rule's, then the chosen backend's.
    pub edits: Edits<'t>,
    /// `Host` to send instead of the client's (`URLRewrite` hostname).
    pub host: Option<&'t str>,
    /// Request target (path and query) to send instead of the client's.
    pub target: Option<String>,
    /// Fields the CORS filter adds to the response (usually none).
    pub cors: FieldList,
}

impl Forward<'_> {
    /// Field edits for a mirror copy: the rule's, not the chosen backend's.
    pub(crate) fn mirror_edits(&self) -> Edits<'_> {
        Edits {
            client_cert: &self.action.client_cert_headers,
            ..Edits::route([Some(&self.action.request_headers), None])
        }
    }
}

/// Where routing took a request, for metrics and logs: table indexes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Routed {
    /// The listener that took it.
    pub listener: Option<u32>,
    /// The matched rule's action.
    pub action: Option<ActionId>,
}

/// Routes `req` in `table` and applies the matched rule's filters; says in `routed` which
/// listener and rule took it.
pub(crate) fn decide<'t>(
    table: &'t CoreTable,
    req: &Request<'_>,
    routed: &mut Routed,
) -> Decision<'t> {
    let Some(port) = table.router.port(req.local.ip(), req.local.port()) else {
        return Decision::Refuse(Refusal::NoRoute);
    };
    // The certificate was chosen for the listener the server name selects; a Host of another
    // listener would reach its routes through a certificate not issued for them.
    if let Some(name) = req.server_name {
        let by_name = table.router.listener_for(port, name);
        routed.listener = by_name;
        if by_name != table.router.listener_for(port, req.authority) {
            return Decision::Refuse(Refusal::Misdirected);
        }
    }
    let lookup = table::Request {
        method: req.method,
        path: req.path,
        query: req.query,
        host: req.authority,
    };
    let route = {
        let mut scratch = table.scratch.borrow_mut();
        table.router.route(port, &lookup, req.fields, &mut scratch)
    };
    let (id, action, matched) = match route {
        Route::Matched { listener_id, id, action, matched, .. } => {
            *routed = Routed { listener: Some(listener_id), action: Some(id) };
            (id, action, matched)
        }
        Route::NoRoute { listener_id, .. } => {
            routed.listener = Some(listener_id);
            return Decision::Refuse(Refusal::NoRoute);
        }
        Route::NoListener => return Decision::Refuse(Refusal::NoRoute),
    };
    let mut cors = FieldList::new();
    if let Some(policy) = action.cors.as_ref() {
        match cors::evaluate(policy, req.method, req.fields) {
            cors::Outcome::Preflight(Some(fields)) => return Decision::Preflight(fields),
            cors::Outcome::Preflight(None) => return Decision::Refuse(Refusal::CorsOrigin),
            cors::Outcome::Actual(fields) => cors = fields,
            cors::Outcome::NotCors => {}
        }
    }
    if let ArchivedActionKind::Redirect { status, scheme, host, port, path: to_path } = &action.kind
    {
        let local_ip = req.local.ip().to_string();
        let origin = redirect::Origin {
            scheme: req.scheme,
            host: std::str::from_utf8(req.authority)
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or(&local_ip),
            listener_port: req.local.port(),
            path: std::str::from_utf8(req.path).unwrap_or("/"),
            query: std::str::from_utf8(req.query).unwrap_or(""),
        };
        let target = redirect::Target {
            scheme: scheme.as_ref().map(|s| s.as_str()),
            host: host.as_ref().map(|h| h.as_str()),
            port: port.as_ref().map(|p| p.to_native()),
            path: to_path,
        };
        let location = redirect::location(&origin, &target, matched);
        return Decision::Redirect { status: status.to_native(), location };
    }
    let (service, cursor, backend) = match table.select(&action.kind) {
        Target::Status(status) => return Decision::Refuse(Refusal::Status(status)),
        Target::Service { service, .. } if table.endpoint_count(service) == 0 => {
            return Decision::Refuse(Refusal::NoEndpoints);
        }
        Target::Service { service, cursor, backend } => (service, cursor, backend),
    };
    let backend_edits = match &action.kind {
        ArchivedActionKind::Forward { backends, .. } => {
            backends.get(backend as usize).map(|b| &b.request_headers)
        }
        _ => None,
    };
    let rewrite = &action.rewrite;
    Decision::Forward(Forward {
        id,
        action,
        service,
        cursor,
        edits: Edits {
            client_cert: &action.client_cert_headers,
            ..Edits::route([Some(&action.request_headers), backend_edits])
        },
        host: rewrite.host.as_ref().map(|h| h.as_str()),
        target: rewrite::target(req.path, req.query, req.normalized, &rewrite.path, matched),
        cors,
    })
}
