//! HTTPRoute `URLRewrite` (and the path part of `RequestRedirect`): the path a rule sends on
//! or redirects to, with `ReplacePrefixMatch` replacing the matched prefix segment-wise.

use std::borrow::Cow;

use table::format::{ArchivedPathMatch, ArchivedPathRewrite, ArchivedRouteMatch};

/// The request target (path and query) to send upstream when it is not the client's bytes:
/// the rewritten path, or the normalised one (`normalized`: normalisation changed it). `None`:
/// the client's target goes as it came — the common case, which reads neither slice. (The
/// parser admits only ASCII in a target, so the text conversions below never fail.)
pub(crate) fn target(
    path: &[u8],
    query: &[u8],
    normalized: bool,
    rule: &ArchivedPathRewrite,
    matched: &ArchivedRouteMatch,
) -> Option<String> {
    if matches!(rule, ArchivedPathRewrite::Keep) && !normalized {
        return None;
    }
    let path = std::str::from_utf8(path).unwrap_or("/");
    let mut t = rewrite_path(path, rule, matched).into_owned();
    if !query.is_empty() {
        t.push('?');
        t.push_str(std::str::from_utf8(query).unwrap_or(""));
    }
    Some(t)
}

/// `path` after a redirect's or URL rewrite's path change (`matched` supplies the prefix that
/// `ReplacePrefixMatch` replaces).
pub(crate) fn rewrite_path<'a>(
    path: &'a str,
    rewrite: &'a ArchivedPathRewrite,
    matched: &ArchivedRouteMatch,
) -> Cow<'a, str> {
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
pub(crate) fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
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
