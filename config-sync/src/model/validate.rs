//! Admission checks: the parts of the CRD schemas and CEL rules that the API server enforces
//! before an object exists. A cluster never hands us such an object, so in file mode we refuse
//! it the same way (reported with its field, the last valid version stays in force).
//!
//! Problems the spec reports through status instead (unresolvable references, unsupported
//! features, conflicts) are not checked here but in `compile`.

use crate::model::Object;

type Problem = (String, String);

/// Checks one parsed object.
pub(crate) fn object(object: &Object) -> Result<(), Problem> {
    match object {
        Object::GatewayClass(c) => {
            let name = &c.spec.controller_name;
            if !name.contains('/') || name.len() > 253 {
                return Err(field("spec.controllerName", format!("{name:?} is not domain/path")));
            }
            Ok(())
        }
        Object::Gateway(g) => gateway(g),
        Object::HttpRoute(r) => http_route(r),
        Object::GrpcRoute(r) => grpc_route(r),
        Object::ReferenceGrant(g) => {
            if g.spec.from.is_empty() || g.spec.to.is_empty() {
                return Err(field("spec", "from and to need at least one entry".into()));
            }
            Ok(())
        }
        Object::EndpointSlice(s) => {
            for (i, p) in s.ports.iter().flatten().enumerate() {
                if let Some(port) = p.port
                    && !(0..=65535).contains(&port)
                {
                    return Err(field(&format!("ports[{i}].port"), "out of range".into()));
                }
            }
            Ok(())
        }
        Object::ClientCertificateHeader(h) => {
            let name = h.spec.header.as_str();
            if !table::wire::is_token(name.as_bytes()) || name.len() > 256 {
                return Err(field("spec.header", format!("{name:?} is not a field name")));
            }
            if !table::wire::is_editable(name) {
                return Err(field("spec.header", format!("{name:?} is a field lb writes itself")));
            }
            Ok(())
        }
        Object::Service(_) | Object::Namespace(_) | Object::Secret(_) | Object::ConfigMap(_) => {
            Ok(())
        }
    }
}

fn gateway(g: &gateway_api::apis::experimental::gateways::Gateway) -> Result<(), Problem> {
    if g.spec.listeners.is_empty() || g.spec.listeners.len() > 64 {
        return Err(field("spec.listeners", "between 1 and 64 listeners".into()));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, l) in g.spec.listeners.iter().enumerate() {
        let at = |f: &str| format!("spec.listeners[{i}].{f}");
        if !names.insert(l.name.as_str()) {
            return Err(field(&at("name"), format!("duplicate listener name {:?}", l.name)));
        }
        if let Err(reason) = section_name(&l.name) {
            return Err(field(&at("name"), reason));
        }
        if !(1..=65535).contains(&l.port) {
            return Err(field(&at("port"), format!("{} is not in 1-65535", l.port)));
        }
        if let Some(h) = &l.hostname {
            hostname(h).map_err(|reason| field(&at("hostname"), reason))?;
        }
    }
    Ok(())
}

fn http_route(r: &gateway_api::apis::experimental::httproutes::HttpRoute) -> Result<(), Problem> {
    use gateway_api::apis::experimental::httproutes::HttpRouteRulesMatchesPathType as PathType;
    for (i, h) in r.spec.hostnames.iter().flatten().enumerate() {
        hostname(h).map_err(|reason| field(&format!("spec.hostnames[{i}]"), reason))?;
    }
    for (i, p) in r.spec.parent_refs.iter().flatten().enumerate() {
        if let Some(port) = p.port
            && !(1..=65535).contains(&port)
        {
            return Err(field(&format!("spec.parentRefs[{i}].port"), "out of range".into()));
        }
        if let Some(s) = &p.section_name {
            section_name(s).map_err(|e| field(&format!("spec.parentRefs[{i}].sectionName"), e))?;
        }
    }
    for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = |f: &str| format!("spec.rules[{i}].matches[{j}].{f}");
            if let Some(path) = &m.path {
                let value = path.value.as_deref().unwrap_or("/");
                match path.r#type.clone().unwrap_or(PathType::PathPrefix) {
                    PathType::Exact | PathType::PathPrefix => {
                        path_value(value).map_err(|reason| field(&at("path.value"), reason))?;
                    }
                    PathType::RegularExpression => {}
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                if !table::wire::is_token(h.name.as_bytes()) {
                    return Err(field(&at(&format!("headers[{k}].name")), "not a token".into()));
                }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                if q.name.is_empty() || q.name.len() > 256 {
                    return Err(field(
                        &at(&format!("queryParams[{k}].name")),
                        "1-256 bytes".into(),
                    ));
                }
            }
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let at = |f: &str| format!("spec.rules[{i}].backendRefs[{j}].{f}");
            if let Some(w) = b.weight
                && !(0..=1_000_000).contains(&w)
            {
                return Err(field(&at("weight"), format!("{w} is not in 0-1000000")));
            }
            if let Some(p) = b.port
                && !(1..=65535).contains(&p)
            {
                return Err(field(&at("port"), format!("{p} is not in 1-65535")));
            }
            let core_service = b.group.as_deref().unwrap_or("").is_empty()
                && b.kind.as_deref().unwrap_or("Service") == "Service";
            if core_service && b.port.is_none() {
                return Err(field(&at("port"), "required when referring to a Service".into()));
            }
        }
    }
    Ok(())
}

/// The GRPCRoute CRD's method-match rules (its CEL validations), then everything its
/// HTTPRoute form shares with HTTPRoutes (hostnames, parentRefs, header names, backendRefs).
fn grpc_route(r: &crate::model::GrpcRoute) -> Result<(), Problem> {
    use gateway_api::apis::experimental::grpcroutes::GrpcRouteRulesMatchesMethodType as Type;
    for (i, rule) in r.route.spec.rules.iter().flatten().enumerate() {
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let Some(method) = &m.method else { continue };
            let at = |f: &str| format!("spec.rules[{i}].matches[{j}].method.{f}");
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|s| !s.is_empty());
            if service.is_none() && name.is_none() {
                return Err(field(&at("service"), "one or both of service and method".into()));
            }
            for (f, v) in [("service", service), ("method", name)] {
                if v.is_some_and(|v| v.len() > 1024) {
                    return Err(field(&at(f), "at most 1024 characters".into()));
                }
            }
            if method.r#type.clone().unwrap_or(Type::Exact) != Type::Exact {
                continue;
            }
            if let Some(s) = service
                && !grpc_service_name(s)
            {
                return Err(field(&at("service"), format!("{s:?} is not a gRPC service name")));
            }
            if let Some(n) = name
                && !grpc_identifier(n)
            {
                return Err(field(&at("method"), format!("{n:?} is not a gRPC method name")));
            }
        }
    }
    http_route(&r.http)
}

/// `[A-Za-z_][A-Za-z_0-9]*`.
fn grpc_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `\.?` then dot-separated identifiers (the CRD's pattern, case-insensitive).
fn grpc_service_name(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    s.split('.').all(grpc_identifier)
}

fn field(path: &str, reason: String) -> Problem {
    (path.to_owned(), reason)
}

/// Gateway API `Hostname`: RFC 1123 name, optionally with a leading `*.` label, no IP address.
pub(crate) fn hostname(h: &str) -> Result<(), String> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let labels_ok =
        !rest.is_empty() && h.len() <= 253 && rest.split('.').all(table::wire::is_dns_label);
    if !labels_ok {
        return Err(format!("{h:?} is not a lower-case hostname (optionally with a leading *.)"));
    }
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{h:?} is an IP address, not a hostname"));
    }
    Ok(())
}

fn section_name(s: &str) -> Result<(), String> {
    crate::model::check_dns_subdomain(s)
}

/// The CRD's rules for Exact and PathPrefix values (`table::wire`, which the table view
/// applies too).
fn path_value(p: &str) -> Result<(), String> {
    table::wire::path_value_problem(p).map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(hostname("foo.example.com").is_ok());
        assert!(hostname("*.example.com").is_ok());
        assert!(hostname("Foo.example.com").is_err());
        assert!(hostname("foo.*.com").is_err());
        assert!(hostname("*").is_err());
        assert!(hostname("1.2.3.4").is_err());
        assert!(hostname("-a.com").is_err());
    }

    #[test]
    fn grpc_names() {
        assert!(grpc_service_name("gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"));
        assert!(grpc_service_name(".a.b"));
        assert!(!grpc_service_name("a..b"));
        assert!(!grpc_service_name("a/b"));
        assert!(!grpc_service_name("1a"));
        assert!(grpc_identifier("Echo_2"));
        assert!(!grpc_identifier("Echo.Two"));
        assert!(!grpc_identifier(""));
    }

    #[test]
    fn path_values() {
        assert!(path_value("/a/b").is_ok());
        assert!(path_value("a").is_err());
        assert!(path_value("/a//b").is_err());
        assert!(path_value("/a/..").is_err());
        assert!(path_value("/a%2Fb").is_err());
    }
}
