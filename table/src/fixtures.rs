//! A small but complete table (ports, listeners, exact/wildcard/catch-all virtual hosts with
//! fallbacks, every match kind, regexes), shared by the unit tests, the proptests and the fuzz
//! seed generator so they all start from the same known-good bytes.

#![doc(hidden)]

use std::net::{IpAddr, Ipv4Addr};

use crate::format::*;

pub fn forward(route: &str, service: u32, wrr_offset: u32) -> Action {
    Action {
        route: route.into(),
        rule: 0,
        kind: ActionKind::Forward {
            backends: vec![WeightedBackend {
                weight: 1,
                target: BackendTarget::Service(service),
                request_headers: HeaderEdits::default(),
            }],
            wrr_offset,
        },
        request_headers: HeaderEdits::default(),
        rewrite: Rewrite::default(),
        response_headers: HeaderEdits::default(),
        timeouts: RouteTimeouts::default(),
        mirrors: vec![],
        cors: None,
        retry: Retry::default(),
        client_cert_headers: vec![],
    }
}

pub fn prefix(p: &str, action: u32) -> RouteMatch {
    RouteMatch {
        path: PathMatch::Prefix(p.into()),
        method: None,
        headers: vec![],
        query: vec![],
        action,
    }
}

pub fn entry(host: &str, target: u32) -> HostEntry {
    HostEntry { host: host.into(), target }
}

/// One port (8080), one listener, virtual hosts:
/// 0 `a.example.com` (fallback 1), 1 `.example.com` (fallback 2), 2 any.
pub fn sample() -> Table {
    let services: Vec<_> = (0..6)
        .map(|i| Service {
            name: format!("svc{i}"),
            protocol: UpstreamProtocol::Http1,
            endpoints: vec![Endpoint {
                address: Address::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: 9000 + i as u16,
            }],
        })
        .collect();
    let mut matches = vec![
        // vhost 0
        RouteMatch { path: PathMatch::Exact("/exact".into()), ..prefix("", 0) },
        prefix("/v2", 1),
        // vhost 1
        RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-version".into(),
                value: ValueMatch::Exact("two".into()),
            }],
            method: Some("POST".into()),
            ..prefix("/", 2)
        },
        RouteMatch {
            query: vec![QueryMatch { name: "animal".into(), value: ValueMatch::Regex(0) }],
            ..prefix("/", 3)
        },
        RouteMatch { path: PathMatch::Regex(1), ..prefix("", 4) },
        // vhost 2
        prefix("/", 5),
    ];
    matches.shrink_to_fit();
    Table {
        generation: 3,
        ports: vec![Port {
            address: None,
            port: 8080,
            listeners: HostIndex { any: Some(0), ..HostIndex::default() },
            tls: None,
        }],
        listeners: vec![Listener {
            name: "default/gw/http".into(),
            vhosts: HostIndex {
                exact: vec![entry("a.example.com", 0)],
                wildcard: vec![entry(".example.com", 1)],
                any: Some(2),
            },
            certificates: Vec::new(),
        }],
        vhosts: vec![
            VirtualHost {
                hostname: "a.example.com".into(),
                matches: vec![0, 1],
                fallback: Some(1),
            },
            VirtualHost {
                hostname: "*.example.com".into(),
                matches: vec![2, 3, 4],
                fallback: Some(2),
            },
            VirtualHost { hostname: String::new(), matches: vec![5], fallback: None },
        ]
        .into(),
        matches: matches.into(),
        actions: (0..6).map(|i| forward(&format!("r{i}"), i, i)).collect(),
        services: services.into(),
        regexes: vec!["(whale|dolphin)".into(), "/img/[0-9]+\\.png".into()].into(),
        wrr_slots: 6,
        certificates: Vec::new(),
    }
}
