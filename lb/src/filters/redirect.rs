//! `Location` for HTTPRoute `RequestRedirect`: the parts the filter sets, the request's for the
//! rest, with the spec's port rules.

use table::format::{ArchivedPathRewrite, ArchivedRouteMatch};

use super::rewrite::rewrite_path;

/// What the request contributes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    /// The request's scheme.
    pub scheme: &'a str,
    /// Normalised host, without port.
    pub host: &'a str,
    /// Port of the listener that took the request.
    pub listener_port: u16,
    /// Request path.
    pub path: &'a str,
    /// Query without `?` (empty: none).
    pub query: &'a str,
}

/// The filter's parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// Scheme, if set.
    pub scheme: Option<&'a str>,
    /// Host, if set.
    pub host: Option<&'a str>,
    /// Port, if set.
    pub port: Option<u16>,
    /// Path change.
    pub path: &'a ArchivedPathRewrite,
}

/// Builds the `Location` value.
pub(crate) fn location(
    origin: &Origin<'_>,
    target: &Target<'_>,
    matched: &ArchivedRouteMatch,
) -> String {
    let scheme = target.scheme.unwrap_or(origin.scheme);
    let host = target.host.unwrap_or(origin.host);
    // The spec: an explicit port wins; a changed scheme implies its well-known port; otherwise
    // the listener's port. Well-known ports are left out.
    let port =
        target.port.or(if target.scheme.is_some() { None } else { Some(origin.listener_port) });
    let well_known = if scheme == "https" { 443 } else { 80 };
    let mut out = format!("{scheme}://");
    if host.contains(':') {
        out.push('[');
        out.push_str(host);
        out.push(']');
    } else {
        out.push_str(host);
    }
    if let Some(p) = port.filter(|p| *p != well_known) {
        out.push(':');
        out.push_str(&p.to_string());
    }
    out.push_str(&rewrite_path(origin.path, target.path, matched));
    if !origin.query.is_empty() {
        out.push('?');
        out.push_str(origin.query);
    }
    out
}
