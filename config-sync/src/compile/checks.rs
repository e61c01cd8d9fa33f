//! "Can lb serve this?": the checks that refuse, with a reason naming the field, what the
//! schema allows but lb cannot do faithfully (unsupported fields, regexes lb would not compile,
//! header edits that would break framing, impossible path rewrites, ...).

use super::*;

/// Rule fields Sluice does not implement yet: a route using one is not accepted (reason
/// `UnsupportedValue`) rather than served without it.
pub(super) fn unsupported_rule_fields(rules: &[HttpRouteRules]) -> Option<String> {
    for (i, r) in rules.iter().enumerate() {
        let matches = r.matches.as_deref().unwrap_or(&[]);
        for (j, f) in r.filters.iter().flatten().enumerate() {
            use HttpRouteRulesFiltersType as F;
            // Each supported filter: its field, and what is wrong with it (`None`: missing).
            let (field, problem) = match &f.r#type {
                F::RequestHeaderModifier => (
                    "requestHeaderModifier",
                    f.request_header_modifier.as_ref().map(|m| edits_problem(&header_edits!(m))),
                ),
                F::ResponseHeaderModifier => (
                    "responseHeaderModifier",
                    f.response_header_modifier.as_ref().map(|m| edits_problem(&header_edits!(m))),
                ),
                F::UrlRewrite => {
                    ("urlRewrite", f.url_rewrite.as_ref().map(|u| url_rewrite_problem(u, matches)))
                }
                F::RequestRedirect => (
                    "requestRedirect",
                    f.request_redirect.as_ref().map(|d| redirect_problem(d, matches)),
                ),
                F::RequestMirror => {
                    ("requestMirror", f.request_mirror.as_ref().map(mirror_problem))
                }
                F::Cors => ("cors", f.cors.as_ref().map(cors_problem)),
                F::ExtensionRef => {
                    ("extensionRef", f.extension_ref.as_ref().map(extension_problem))
                }
                other => {
                    return Some(format!(
                        "rules[{i}].filters[{j}]: type {other:?} is not supported yet"
                    ));
                }
            };
            match problem {
                None => return Some(format!("rules[{i}].filters[{j}].{field} is missing")),
                Some(Some(p)) => return Some(format!("rules[{i}].filters[{j}].{field}: {p}")),
                Some(None) => {}
            }
        }
        for (k, b) in r.backend_refs.iter().flatten().enumerate() {
            for (j, f) in b.filters.iter().flatten().enumerate() {
                let at = format!("rules[{i}].backendRefs[{k}].filters[{j}]");
                if f.r#type != HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier {
                    return Some(format!("{at}: type {:?} is not supported yet", f.r#type));
                }
                let Some(m) = &f.request_header_modifier else {
                    return Some(format!("{at}.requestHeaderModifier is missing"));
                };
                if let Some(p) = edits_problem(&header_edits!(m)) {
                    return Some(format!("{at}: {p}"));
                }
            }
        }
        if r.session_persistence.is_some() {
            return Some(format!("rules[{i}]: sessionPersistence is not supported yet"));
        }
        if let Some(retry) = &r.retry
            && let Some(problem) = retry_problem(retry)
        {
            return Some(format!("rules[{i}].retry: {problem}"));
        }
        if let Some(t) = &r.timeouts {
            let parsed = |v: &Option<String>, field: &str| match v {
                None => Ok(0),
                Some(v) => parse_duration_ms(v).ok_or_else(|| {
                    format!(
                        "rules[{i}].timeouts.{field} {v:?} is not a duration such as 500ms or 1m30s"
                    )
                }),
            };
            let request = match parsed(&t.request, "request") {
                Ok(v) => v,
                Err(e) => return Some(e),
            };
            let backend = match parsed(&t.backend_request, "backendRequest") {
                Ok(v) => v,
                Err(e) => return Some(e),
            };
            if request != 0 && backend > request {
                return Some(format!("rules[{i}].timeouts.backendRequest is longer than request"));
            }
        }
        for m in r.matches.iter().flatten() {
            let regexes = m
                .path
                .iter()
                .filter(|p| p.r#type == Some(HttpRouteRulesMatchesPathType::RegularExpression))
                .filter_map(|p| p.value.as_deref())
                .chain(
                    m.headers
                        .iter()
                        .flatten()
                        .filter(|h| {
                            h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
                        })
                        .map(|h| h.value.as_str()),
                )
                .chain(
                    m.query_params
                        .iter()
                        .flatten()
                        .filter(|q| {
                            q.r#type
                                == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
                        })
                        .map(|q| q.value.as_str()),
                );
            for pattern in regexes {
                if let Err(e) = check_regex(pattern) {
                    return Some(format!("rules[{i}]: regular expression {pattern:?}: {e}"));
                }
            }
        }
    }
    None
}

thread_local! {
    /// Outcome of compiling each pattern, so a recompile of an unchanged configuration does not
    /// compile its regexes again (~50 µs each; 1,000 of them were half of a 5,000-route
    /// compile).
    static REGEX_CHECKS: std::cell::RefCell<HashMap<String, Result<(), String>>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Compiles `pattern` exactly as lb will (same function, same size limits), so a table that
/// config-sync publishes never fails lb's validation on a regex.
pub(super) fn check_regex(pattern: &str) -> Result<(), String> {
    REGEX_CHECKS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(r) = cache.get(pattern) {
            return r.clone();
        }
        if cache.len() > 100_000 {
            cache.clear();
        }
        let r = table::view::compile_regex(pattern).map(drop);
        cache.insert(pattern.to_owned(), r.clone());
        r
    })
}

/// Why lb could not write these edits into a request head.
pub(super) fn edits_problem(e: &t::HeaderEdits) -> Option<String> {
    let fields = || e.set.iter().chain(&e.add);
    let mut names = fields().map(|f| f.name.as_str()).chain(e.remove.iter().map(String::as_str));
    if let Some(n) = names.find(|n| !table::wire::is_token(n.as_bytes())) {
        return Some(format!("header name {n:?} is not valid"));
    }
    let mut names = fields().map(|f| f.name.as_str()).chain(e.remove.iter().map(String::as_str));
    if let Some(n) = names.find(|n| !table::wire::is_editable(n)) {
        return Some(format!(
            "header {n:?} frames the message or is set by the gateway; it cannot be modified"
        ));
    }
    fields()
        .find(|f| !table::wire::is_field_value(f.value.as_bytes()))
        .map(|f| format!("the value of header {:?} holds characters a header cannot carry", f.name))
}

/// Why a path change cannot be used on a rule with these matches.
pub(super) fn path_rewrite_problem(
    p: &t::PathRewrite,
    matches: &[HttpRouteRulesMatches],
) -> Option<String> {
    let v = match p {
        t::PathRewrite::Keep => return None,
        t::PathRewrite::Full(v) => v,
        t::PathRewrite::Prefix(v) => {
            // The spec: only with PathPrefix matches (a rule without matches is "/" prefix).
            let prefix_only = matches.iter().all(|m| {
                m.path.as_ref().is_none_or(|p| {
                    p.r#type
                        .as_ref()
                        .is_none_or(|t| *t == HttpRouteRulesMatchesPathType::PathPrefix)
                })
            });
            if !prefix_only {
                return Some("ReplacePrefixMatch needs PathPrefix matches".into());
            }
            v
        }
    };
    if !v.starts_with('/') && !v.is_empty() {
        return Some(format!("path {v:?} does not start with /"));
    }
    if !table::wire::is_field_value(v.as_bytes()) || v.contains(' ') {
        return Some(format!("path {v:?} holds characters a URL cannot carry"));
    }
    None
}

/// What makes a `URLRewrite` unusable.
pub(super) fn url_rewrite_problem(
    r: &HttpRouteRulesFiltersUrlRewrite,
    matches: &[HttpRouteRulesMatches],
) -> Option<String> {
    if let Some(h) = &r.hostname
        && !table::wire::is_host_name(h)
    {
        return Some(format!("hostname {h:?} is not a host name"));
    }
    match path_rewrite!(&r.path, HttpRouteRulesFiltersUrlRewritePathType) {
        None => Some("path has no replacement for its type".into()),
        Some(p) => path_rewrite_problem(&p, matches),
    }
}

/// What makes a `RequestRedirect` unusable (checked where the CRD's validation would).
pub(super) fn redirect_problem(
    r: &HttpRouteRulesFiltersRequestRedirect,
    matches: &[HttpRouteRulesMatches],
) -> Option<String> {
    if let Some(h) = &r.hostname
        && !table::wire::is_host_name(h)
    {
        return Some(format!("hostname {h:?} is not a host name"));
    }
    if let Some(p) = r.port
        && !(1..=65535).contains(&p)
    {
        return Some(format!("port {p} is out of range"));
    }
    if let Some(s) = r.status_code
        && ![301, 302, 303, 307, 308].contains(&s)
    {
        return Some(format!("statusCode {s} is not a redirect status"));
    }
    match path_rewrite!(&r.path, HttpRouteRulesFiltersRequestRedirectPathType) {
        None => Some("path has no replacement for its type".into()),
        Some(p) => path_rewrite_problem(&p, matches),
    }
}

/// Why a mirror filter cannot be served.
pub(super) fn mirror_problem(m: &HttpRouteRulesFiltersRequestMirror) -> Option<String> {
    if m.percent.is_some() && m.fraction.is_some() {
        return Some("percent and fraction are both set".into());
    }
    if let Some(p) = m.percent
        && !(0..=100).contains(&p)
    {
        return Some(format!("percent {p} is not within 0-100"));
    }
    if let Some(f) = &m.fraction {
        let denominator = f.denominator.unwrap_or(100);
        if denominator < 1 || f.numerator < 0 || f.numerator > denominator {
            return Some(format!(
                "fraction {}/{denominator} is not a fraction between 0 and 1",
                f.numerator
            ));
        }
    }
    None
}

/// Why an `ExtensionRef` filter cannot be served: Sluice knows one kind of its own.
fn extension_problem(e: &HttpRouteRulesFiltersExtensionRef) -> Option<String> {
    if e.group == SLUICE_GROUP && e.kind == "ClientCertificateHeader" {
        None
    } else {
        Some(format!(
            "{}/{} is not a filter kind Sluice knows (it knows {SLUICE_GROUP}/ClientCertificateHeader)",
            e.group, e.kind
        ))
    }
}

/// Why a CORS filter cannot be served.
pub(super) fn cors_problem(c: &HttpRouteRulesFiltersCors) -> Option<String> {
    for o in c.allow_origins.iter().flatten() {
        if normalize_origin(o).is_none() {
            return Some(format!("allowOrigins entry {o:?} is not scheme://host[:port] or *"));
        }
    }
    let lists = [("allowMethods", &c.allow_methods), ("allowHeaders", &c.allow_headers)];
    for (field, list) in lists.into_iter().chain([("exposeHeaders", &c.expose_headers)]) {
        let list = list.as_deref().unwrap_or(&[]);
        if let Some(bad) = list.iter().find(|v| !table::wire::is_token(v.as_bytes())) {
            return Some(format!("{field} entry {bad:?} is not a token"));
        }
        if list.len() > 1 && list.iter().any(|v| v == "*") && field != "exposeHeaders" {
            return Some(format!("{field} has * alongside other entries"));
        }
    }
    None
}

/// Why a retry policy cannot be served.
pub(super) fn retry_problem(r: &HttpRouteRulesRetry) -> Option<String> {
    if let Some(a) = r.attempts
        && a < 0
    {
        return Some(format!("attempts {a} is negative"));
    }
    if let Some(c) = r.codes.iter().flatten().find(|c| !(400..600).contains(*c)) {
        return Some(format!("code {c} is not an HTTP error status (400-599)"));
    }
    if let Some(b) = &r.backoff
        && parse_duration_ms(b).is_none()
    {
        return Some(format!("backoff {b:?} is not a duration such as 100ms"));
    }
    None
}
