//! HTTPRoute `CORS` filter. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered by lb itself: 200 with the policy's headers when
//! the origin is allowed, 403 without them when it is not. Any other request from an allowed
//! origin is forwarded and its response gets `Access-Control-Allow-Origin` (the request's own
//! origin, also for a `*` policy, with `Vary: Origin`), `-Allow-Credentials` and
//! `-Expose-Headers`; requests from other origins pass untouched.

use table::Headers;
use table::format::ArchivedCors;

use crate::fields::FieldList;

/// What the policy makes of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No `Origin`: not a CORS request.
    NotCors,
    /// A preflight to answer: the fields for an allowed origin, `None` for a refused one.
    Preflight(Option<FieldList>),
    /// A request to forward; these fields go on its response (empty: none).
    Actual(FieldList),
}

/// Response fields the CORS filter owns: the upstream's own values are dropped when lb adds
/// its.
pub(crate) const OWNED: [&str; 3] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
];

/// Applies `policy` to a request with this method and these fields.
pub(crate) fn evaluate(policy: &ArchivedCors, method: &[u8], fields: &dyn Headers) -> Outcome {
    let field = |name: &str| fields.first(name);
    let Some(origin) = field("origin") else { return Outcome::NotCors };
    let request_method = field("access-control-request-method");
    let allowed = origin_allowed(policy, origin);
    if method == b"OPTIONS"
        && let Some(request_method) = request_method
    {
        if !allowed {
            return Outcome::Preflight(None);
        }
        let mut out = common(policy, origin);
        let methods = policy.methods.iter().map(|m| m.as_str());
        if policy.methods.iter().any(|m| m == "*") {
            // Echoed: `*` is not a wildcard for credentialed requests.
            out.push("Access-Control-Allow-Methods", request_method);
        } else if !policy.methods.is_empty() {
            out.push_list("Access-Control-Allow-Methods", methods);
        }
        if policy.headers.iter().any(|h| h == "*") {
            if let Some(asked) = field("access-control-request-headers").filter(|h| !h.is_empty()) {
                out.push("Access-Control-Allow-Headers", asked);
            }
        } else if !policy.headers.is_empty() {
            out.push_list(
                "Access-Control-Allow-Headers",
                policy.headers.iter().map(|h| h.as_str()),
            );
        }
        out.push("Access-Control-Max-Age", policy.max_age.to_native().to_string().as_bytes());
        return Outcome::Preflight(Some(out));
    }
    if !allowed {
        return Outcome::Actual(FieldList::new());
    }
    Outcome::Actual(common(policy, origin))
}

/// Allow-Origin, Vary, Allow-Credentials and Expose-Headers.
fn common(policy: &ArchivedCors, origin: &[u8]) -> FieldList {
    let mut out = FieldList::new();
    out.push("Access-Control-Allow-Origin", origin);
    out.push("Vary", b"Origin");
    if policy.credentials {
        out.push("Access-Control-Allow-Credentials", b"true");
    }
    // With credentials `*` is a literal name to browsers, not "everything": leave it out.
    let expose =
        policy.expose.iter().map(|h| h.as_str()).filter(|h| !policy.credentials || *h != "*");
    if policy.expose.iter().any(|h| !policy.credentials || h != "*") {
        out.push_list("Access-Control-Expose-Headers", expose);
    }
    out
}

/// Whether `origin` (as the client sent it) is one the policy allows. Patterns are stored
/// normalised (`scheme://host:port`, lower-case); the origin is compared the same way, and a
/// host pattern `*.example.com` takes any number of labels in front.
pub(crate) fn origin_allowed(policy: &ArchivedCors, origin: &[u8]) -> bool {
    if policy.origins.iter().any(|o| o == "*") {
        return true;
    }
    let Some((scheme, host, port)) = split_origin(origin) else { return false };
    policy.origins.iter().any(|pattern| {
        let Some((p_scheme, p_host, p_port)) = split_origin(pattern.as_bytes()) else {
            return false;
        };
        if !p_scheme.eq_ignore_ascii_case(scheme) || p_port != port {
            return false;
        }
        match p_host.strip_prefix(b"*") {
            Some(b"") => true,
            Some(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            None => p_host.eq_ignore_ascii_case(host),
        }
    })
}

/// `scheme`, `host` and port (the scheme's default when absent) of `scheme://host[:port]`.
fn split_origin(origin: &[u8]) -> Option<(&[u8], &[u8], u16)> {
    let at = origin.windows(3).position(|w| w == b"://")?;
    let (scheme, rest) = (&origin[..at], &origin[at + 3..]);
    let default = if scheme.eq_ignore_ascii_case(b"http") {
        80
    } else if scheme.eq_ignore_ascii_case(b"https") {
        443
    } else {
        return None;
    };
    // An IPv6 literal keeps its colons inside brackets.
    let port_at = rest.iter().rposition(|&b| b == b':').filter(|&i| !rest[i..].contains(&b']'));
    match port_at {
        Some(i) => {
            let port = std::str::from_utf8(&rest[i + 1..]).ok()?.parse().ok()?;
            Some((scheme, &rest[..i], port))
        }
        None => Some((scheme, rest, default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use table::format::Cors;

    fn policy(c: &Cors) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(c).unwrap()
    }

    fn eval(c: &Cors, method: &str, headers: &[(&str, &str)]) -> Outcome {
        let bytes = policy(c);
        let p = rkyv::access::<ArchivedCors, rkyv::rancor::Error>(&bytes).unwrap();
        evaluate(p, method.as_bytes(), &Fields(headers))
    }

    struct Fields<'a>(&'a [(&'a str, &'a str)]);

    impl Headers for Fields<'_> {
        fn first(&self, name: &str) -> Option<&[u8]> {
            self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_bytes())
        }
    }

    fn text(o: Outcome) -> String {
        match o {
            Outcome::Preflight(Some(v)) | Outcome::Actual(v) => v
                .iter()
                .map(|(n, v)| format!("{}: {}\r\n", n.escape_ascii(), v.escape_ascii()))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    fn foo_bar() -> Cors {
        Cors {
            origins: vec!["https://www.foo.com:443".into(), "https://*.bar.com:443".into()],
            methods: vec!["GET".into(), "OPTIONS".into()],
            headers: vec!["x-header-1".into(), "x-header-2".into()],
            expose: vec!["x-header-3".into()],
            max_age: 3600,
            credentials: true,
        }
    }

    #[test]
    fn preflight_from_an_allowed_origin_gets_the_policy() {
        let got = text(eval(
            &foo_bar(),
            "OPTIONS",
            &[("Origin", "https://xpto.www.bar.com"), ("Access-Control-Request-Method", "GET")],
        ));
        assert_eq!(
            got,
            "Access-Control-Allow-Origin: https://xpto.www.bar.com\r\nVary: Origin\r\n\
             Access-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: x-header-3\r\n\
             Access-Control-Allow-Methods: GET, OPTIONS\r\n\
             Access-Control-Allow-Headers: x-header-1, x-header-2\r\nAccess-Control-Max-Age: 3600\r\n"
        );
    }

    #[test]
    fn other_origins_schemes_and_ports_are_refused() {
        for origin in [
            "https://foobar.com",
            "http://www.foo.com",
            "https://www.foo.com:8443",
            "https://bar.com",
            "null",
        ] {
            let got = eval(
                &foo_bar(),
                "OPTIONS",
                &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
            );
            assert_eq!(got, Outcome::Preflight(None), "{origin}");
            assert_eq!(
                eval(&foo_bar(), "GET", &[("Origin", origin)]),
                Outcome::Actual(FieldList::new()),
                "{origin}"
            );
        }
        assert!(
            matches!(eval(&foo_bar(), "GET", &[("Origin", "https://www.foo.com:443")]), Outcome::Actual(v) if !v.is_empty())
        );
    }

    #[test]
    fn wildcards_echo_what_was_asked() {
        let c = Cors {
            origins: vec!["*".into()],
            methods: vec!["*".into()],
            headers: vec!["*".into()],
            credentials: true,
            max_age: 5,
            ..Cors::default()
        };
        let got = text(eval(
            &c,
            "OPTIONS",
            &[
                ("Origin", "https://other.foo.com:12345"),
                ("Access-Control-Request-Method", "PUT"),
                ("Access-Control-Request-Headers", "x-a, x-b"),
            ],
        ));
        assert!(
            got.contains("Access-Control-Allow-Origin: https://other.foo.com:12345\r\n"),
            "{got}"
        );
        assert!(got.contains("Access-Control-Allow-Methods: PUT\r\n"), "{got}");
        assert!(got.contains("Access-Control-Allow-Headers: x-a, x-b\r\n"), "{got}");
        let no_headers = text(eval(
            &c,
            "OPTIONS",
            &[("Origin", "http://a"), ("Access-Control-Request-Method", "PUT")],
        ));
        assert!(!no_headers.contains("Allow-Headers"), "{no_headers}");
    }

    #[test]
    fn no_origin_is_not_cors_and_credentials_stay_off_unless_asked() {
        assert_eq!(
            eval(&foo_bar(), "OPTIONS", &[("Access-Control-Request-Method", "GET")]),
            Outcome::NotCors
        );
        let c = Cors { credentials: false, ..foo_bar() };
        let got = text(eval(&c, "GET", &[("Origin", "https://www.foo.com")]));
        assert!(!got.contains("Credentials"), "{got}");
    }
}
