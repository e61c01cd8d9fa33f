//! A rule's filters turned into its table action: header modifiers, redirect, URL rewrite,
//! mirrors, CORS, timeouts and retry.

use super::*;

impl<'m> Compiler<'m> {
    /// The action for one rule, and the first reference problem in it.
    pub(super) fn action(
        &mut self,
        key: &Key,
        rule_index: usize,
        rule: &HttpRouteRules,
    ) -> (u32, Option<Why>) {
        let mut problem = None;
        let mut backends = Vec::new();
        for b in rule.backend_refs.iter().flatten() {
            let weight = b.weight.unwrap_or(1).max(0) as u32;
            let target = match self.resolve_backend(key, backend_ref!(b)) {
                Ok(service) => t::BackendTarget::Service(service),
                Err(p) => {
                    problem.get_or_insert(p);
                    t::BackendTarget::Status(500)
                }
            };
            let mut request_headers = t::HeaderEdits::default();
            for m in b.filters.iter().flatten().filter_map(|f| f.request_header_modifier.as_ref()) {
                merge_edits(&mut request_headers, header_edits!(m));
            }
            backends.push(t::WeightedBackend { weight, target, request_headers });
        }
        let mut request_headers = t::HeaderEdits::default();
        let mut client_cert_headers = Vec::new();
        let mut filter_missing = false;
        for e in rule.filters.iter().flatten().filter_map(|f| f.extension_ref.as_ref()) {
            // `checks` refused every other kind: this is a ClientCertificateHeader.
            let filter_key = Key::new(&key.namespace, &e.name);
            let found = self.model.client_cert_headers.get(&filter_key);
            self.note(|r| r.asked(Asked::Filter { name: e.name.clone(), found: found.cloned() }));
            let Some(h) = found else {
                filter_missing = true;
                let why = format!("ClientCertificateHeader {filter_key} not found");
                problem.get_or_insert((Reason::FilterNotFound, why));
                continue;
            };
            use crate::model::ClientCertificateValue as V;
            let value = match h.spec.value {
                V::Xfcc => t::ClientCertValue::Xfcc,
                V::Subject => t::ClientCertValue::Subject,
                V::Hash => t::ClientCertValue::Hash,
                V::Certificate => t::ClientCertValue::Certificate,
            };
            client_cert_headers.push(t::ClientCertHeader { name: h.spec.header.clone(), value });
            // Only lb writes it: a field of that name from the client is dropped.
            request_headers.remove.push(h.spec.header.clone());
        }
        let redirect = rule.filters.iter().flatten().find_map(|f| f.request_redirect.as_ref());
        let kind = if filter_missing {
            // The spec: a filter that cannot be resolved is not skipped; requests it would
            // have processed get an error.
            t::ActionKind::Respond { status: 500 }
        } else if let Some(r) = redirect {
            // A redirect answers the request itself; backends are not used.
            redirect_action(r)
        } else if backends.is_empty() {
            // A rule without backends has nowhere to send traffic: the spec's 500.
            t::ActionKind::Respond { status: 500 }
        } else {
            t::ActionKind::Forward { backends, wrr_offset: 0 }
        };
        for m in rule.filters.iter().flatten().filter_map(|f| f.request_header_modifier.as_ref()) {
            merge_edits(&mut request_headers, header_edits!(m));
        }
        let mut response_headers = t::HeaderEdits::default();
        for m in rule.filters.iter().flatten().filter_map(|f| f.response_header_modifier.as_ref()) {
            merge_edits(&mut response_headers, header_edits!(m));
        }
        let timeouts =
            rule.timeouts.as_ref().map_or_else(t::RouteTimeouts::default, |t| t::RouteTimeouts {
                request_ms: t.request.as_deref().and_then(parse_duration_ms).unwrap_or(0),
                backend_request_ms: t
                    .backend_request
                    .as_deref()
                    .and_then(parse_duration_ms)
                    .unwrap_or(0),
            });
        let mut rewrite = t::Rewrite::default();
        for u in rule.filters.iter().flatten().filter_map(|f| f.url_rewrite.as_ref()) {
            rewrite.host = u.hostname.clone().or(rewrite.host);
            if let Some(p) = path_rewrite!(&u.path, HttpRouteRulesFiltersUrlRewritePathType)
                && p != t::PathRewrite::Keep
            {
                rewrite.path = full_path_not_empty(p);
            }
        }
        let mut mirrors = Vec::new();
        for m in rule.filters.iter().flatten().filter_map(|f| f.request_mirror.as_ref()) {
            // An unresolvable mirror is dropped (the spec), and ResolvedRefs says why.
            match self.resolve_backend(key, backend_ref!(&m.backend_ref)) {
                Ok(service) => mirrors.push(t::Mirror { service, per_million: mirror_share(m) }),
                Err(p) => {
                    problem.get_or_insert(p);
                }
            }
        }
        let cors = rule.filters.iter().flatten().find_map(|f| f.cors.as_ref()).map(cors_policy);
        let retry = rule.retry.as_ref().map_or_else(t::Retry::default, |r| t::Retry {
            // Unset attempts: one retry (the spec leaves the number to the implementation).
            attempts: r.attempts.map_or(1, |a| a.clamp(0, 10) as u32),
            codes: r.codes.iter().flatten().filter_map(|c| u16::try_from(*c).ok()).collect(),
            backoff_ms: r.backoff.as_deref().and_then(parse_duration_ms).unwrap_or(0),
        });
        let index = self.actions.len() as u32;
        self.actions.push(t::Action {
            route: key.to_string(),
            rule: rule_index as u32,
            kind,
            request_headers,
            rewrite,
            response_headers,
            timeouts,
            mirrors,
            cors,
            retry,
            client_cert_headers,
        });
        (index, problem)
    }
}

/// A `RequestHeaderModifier` (rule or backendRef flavour: same fields, different types) as
/// table header edits.
macro_rules! header_edits {
    ($m:expr) => {{
        let m = $m;
        let field = |name: &str, value: &str| t::HeaderField {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        t::HeaderEdits {
            set: m.set.iter().flatten().map(|h| field(&h.name, &h.value)).collect(),
            add: m.add.iter().flatten().map(|h| field(&h.name, &h.value)).collect(),
            remove: m.remove.iter().flatten().cloned().collect(),
        }
    }};
}
pub(super) use header_edits;

pub(super) fn merge_edits(into: &mut t::HeaderEdits, more: t::HeaderEdits) {
    into.set.extend(more.set);
    into.add.extend(more.add);
    into.remove.extend(more.remove);
}

/// A redirect's or URL rewrite's `path` (the two filters have their own, identical types) as a
/// table path change; `None` when the replacement its type names is missing.
macro_rules! path_rewrite {
    ($path:expr, $ty:ident) => {
        match $path {
            None => Some(t::PathRewrite::Keep),
            Some(p) => match p.r#type {
                $ty::ReplaceFullPath => p.replace_full_path.clone().map(t::PathRewrite::Full),
                $ty::ReplacePrefixMatch => {
                    p.replace_prefix_match.clone().map(t::PathRewrite::Prefix)
                }
            },
        }
    };
}
pub(super) use path_rewrite;

/// An empty full path means `/`.
pub(super) fn full_path_not_empty(p: t::PathRewrite) -> t::PathRewrite {
    match p {
        t::PathRewrite::Full(f) if f.is_empty() => t::PathRewrite::Full("/".into()),
        other => other,
    }
}

/// A Gateway API duration (GEP-2257: one to four `<number><unit>` parts, units h, m, s, ms;
/// `0s` means no timeout) in milliseconds, saturating at `u32::MAX`.
pub(crate) fn parse_duration_ms(v: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut parts = 0;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then(|| total.min(u64::from(u32::MAX)) as u32)
}

pub(super) fn redirect_action(r: &HttpRouteRulesFiltersRequestRedirect) -> t::ActionKind {
    let path = path_rewrite!(&r.path, HttpRouteRulesFiltersRequestRedirectPathType)
        .map_or(t::PathRewrite::Keep, full_path_not_empty);
    t::ActionKind::Redirect {
        status: r.status_code.map_or(302, |s| s as u16),
        scheme: r.scheme.as_ref().map(|s| match s {
            HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_owned(),
            HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_owned(),
        }),
        host: r.hostname.clone(),
        port: r.port.map(|p| p as u16),
        path,
    }
}

/// The table's CORS policy: origins normalised (lower-case, default port written out) so lb
/// compares them byte for byte.
pub(super) fn cors_policy(c: &HttpRouteRulesFiltersCors) -> t::Cors {
    let list = |v: &Option<Vec<String>>| v.iter().flatten().cloned().collect::<Vec<_>>();
    t::Cors {
        origins: c.allow_origins.iter().flatten().filter_map(|o| normalize_origin(o)).collect(),
        methods: list(&c.allow_methods),
        headers: list(&c.allow_headers),
        expose: list(&c.expose_headers),
        max_age: c.max_age.map_or(5, |a| a.max(0) as u32),
        credentials: c.allow_credentials.unwrap_or(false),
    }
}

/// `scheme://host[:port]` lower-cased with the scheme's default port written out, or `*`.
/// `None` when it is neither.
pub(crate) fn normalize_origin(origin: &str) -> Option<String> {
    if origin == "*" {
        return Some("*".into());
    }
    let lower = origin.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (rest, default_port),
    };
    let labels_ok =
        host == "*"
            || host.strip_prefix("*.").unwrap_or(host).split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
    labels_ok.then(|| format!("{scheme}://{host}:{port}"))
}
