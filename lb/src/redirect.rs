//! `Location` for HTTPRoute `RequestRedirect`: the parts the filter sets, the request's for the
//! rest, with the spec's port rules.

use table::format::{ArchivedPathMatch, ArchivedPathRewrite, ArchivedRouteMatch};

/// What the request contributes.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
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
pub struct Target<'a> {
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
pub fn location(origin: &Origin<'_>, target: &Target<'_>, matched: &ArchivedRouteMatch) -> String {
    let scheme = target.scheme.unwrap_or("http");
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

/// `path` after a redirect's or URL rewrite's path change (`matched` supplies the prefix that
/// `ReplacePrefixMatch` replaces).
pub fn rewrite_path<'a>(
    path: &'a str,
    rewrite: &'a ArchivedPathRewrite,
    matched: &ArchivedRouteMatch,
) -> std::borrow::Cow<'a, str> {
    match rewrite {
        ArchivedPathRewrite::Keep => path.into(),
        ArchivedPathRewrite::Full(p) => p.as_str().into(),
        ArchivedPathRewrite::Prefix(replacement) => {
            let prefix = match &matched.path {
                ArchivedPathMatch::Prefix(p) => p.as_str(),
                _ => "/",
            };
            replace_prefix(path, prefix, replacement).into()
        }
    }
}

/// `path` with its matched `prefix` (segment-wise, as PathPrefix matches) replaced.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = if prefix == "/" { path } else { path.get(prefix.len()..).unwrap_or("") };
    match (rest, replacement) {
        ("", "") => "/".to_owned(),
        ("", r) => r.to_owned(),
        (rest, r) if r.ends_with('/') => format!("{r}{}", rest.trim_start_matches('/')),
        (rest, r) => format!("{r}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_keeps_one_slash() {
        assert_eq!(
            replace_prefix("/original-prefix/lemon", "/original-prefix", "/replacement-prefix"),
            "/replacement-prefix/lemon"
        );
        assert_eq!(
            replace_prefix("/original-prefix", "/original-prefix", "/replacement-prefix"),
            "/replacement-prefix"
        );
        assert_eq!(replace_prefix("/original-prefix/lemon", "/original-prefix", "/"), "/lemon");
        assert_eq!(replace_prefix("/a/b", "/", "/x"), "/x/a/b");
        assert_eq!(replace_prefix("/a", "/a", ""), "/");
        assert_eq!(replace_prefix("/a/b", "/a", "/x/"), "/x/b");
    }
}
