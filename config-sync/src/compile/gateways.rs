//! GatewayClasses and Gateways: which classes are ours, each listener's validity, conflicts,
//! addresses and allowed routes, and their conditions.

use super::*;

impl<'m> Compiler<'m> {
    pub(super) fn classes(&mut self) {
        for (key, class) in &self.model.gateway_classes {
            if class.spec.controller_name != self.settings.controller_name {
                continue;
            }
            self.classes.insert(key.name.as_str());
            let generation = class.metadata.generation;
            let status = GatewayClassStatus {
                conditions: Some(vec![
                    condition(
                        Type::Accepted,
                        true,
                        Reason::Accepted,
                        "handled by Sluice",
                        generation,
                    ),
                    condition(
                        Type::SupportedVersion,
                        true,
                        Reason::SupportedVersion,
                        &format!("Sluice implements Gateway API {GATEWAY_API_VERSION}"),
                        generation,
                    ),
                ]),
                supported_features: Some(
                    SUPPORTED_FEATURES
                        .iter()
                        .map(|f| GatewayClassStatusSupportedFeatures { name: (*f).to_owned() })
                        .collect(),
                ),
            };
            self.status.insert(
                ObjectId { kind: Kind::GatewayClass, key: key.clone() },
                (generation, Arc::new(ObjectStatus::GatewayClass(status))),
            );
        }
    }

    pub(super) fn gateways(&mut self) {
        let mut gateways: Vec<(&Key, &Gateway)> = self
            .model
            .gateways
            .iter()
            .filter(|(_, g)| self.classes.contains(g.spec.gateway_class_name.as_str()))
            .map(|(k, g)| (k, &**g))
            .collect();
        // Stable sort: the map already iterates in key order, the tie-breaker.
        gateways.sort_by_key(|(_, g)| created(&g.metadata.creation_timestamp));
        // (address, port, hostname) → first listener that claimed it.
        let mut claimed: HashMap<(Option<IpAddr>, u16, Option<&str>), usize> = HashMap::new();
        // (address, port) → whether the first listener there terminates TLS.
        let mut port_tls: HashMap<(Option<IpAddr>, u16), (bool, usize)> = HashMap::new();
        let mut pooled = BTreeSet::new();
        for (key, gw) in gateways {
            let generation = gw.metadata.generation;
            let (mut addresses, address_problem) = gateway_addresses(gw);
            if let (Some(pool), [None], None) =
                (&self.settings.address_pool, addresses.as_slice(), &address_problem)
                && let Some(ip) = pool.pick(key, &pooled)
            {
                if let IpAddr::V4(v4) = ip {
                    pooled.insert(u32::from(v4));
                }
                addresses = vec![Some(ip)];
            }
            if let Some(usable) = self.settings.address_usable {
                let unusable: Vec<IpAddr> =
                    addresses.iter().flatten().copied().filter(|ip| !usable(*ip)).collect();
                if !unusable.is_empty() {
                    addresses.retain(|a| a.is_none_or(|ip| !unusable.contains(&ip)));
                    self.unusable_addresses.insert(key, unusable);
                }
            }
            self.gateway_addresses.insert(key, addresses.clone());
            let mut indices = Vec::new();
            for l in &gw.spec.listeners {
                let mut info = ListenerInfo {
                    gateway: key,
                    name: &l.name,
                    port: l.port as u16,
                    tls: l.protocol == "HTTPS",
                    certificates: Vec::new(),
                    client_validation: None,
                    hostname: l.hostname.as_deref(),
                    addresses: addresses.clone(),
                    allowed: AllowedNamespaces::Same,
                    allowed_kinds: vec![RouteKind::Http, RouteKind::Grpc],
                    supported_kinds: vec!["HTTPRoute", "GRPCRoute"],
                    conditions: Vec::new(),
                    usable: true,
                    bind_failed: None,
                    attached: 0,
                    attached_hosts: Default::default(),
                    vhosts: BTreeMap::new(),
                };
                let mut accepted = (true, Reason::Accepted, "listener accepted".to_owned());
                let mut resolved =
                    (true, Reason::ResolvedRefs, "all references resolved".to_owned());
                let mut conflicted = (false, Reason::NoConflicts, "no conflicts".to_owned());
                if let Some(ar) = &l.allowed_routes {
                    if let Some(ns) = &ar.namespaces {
                        info.allowed = match (ns.from.as_ref().unwrap_or(&From::Same), &ns.selector)
                        {
                            (From::All, _) => AllowedNamespaces::All,
                            (From::Selector, Some(sel)) => AllowedNamespaces::Selector(sel),
                            // Selector without a selector selects nothing we can name; Same is
                            // the safe reading.
                            (From::Selector, None) | (From::Same, _) => AllowedNamespaces::Same,
                        };
                    }
                    if let Some(kinds) = &ar.kinds {
                        let kind_of = |k: &GatewayListenersAllowedRoutesKinds| {
                            let ours = k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP;
                            [RouteKind::Http, RouteKind::Grpc]
                                .into_iter()
                                .find(|r| ours && r.name() == k.kind)
                        };
                        let (ok, bad): (Vec<_>, Vec<_>) =
                            kinds.iter().partition(|k| kind_of(k).is_some());
                        info.allowed_kinds = Vec::new();
                        for kind in ok.iter().filter_map(|k| kind_of(k)) {
                            if !info.allowed_kinds.contains(&kind) {
                                info.allowed_kinds.push(kind);
                            }
                        }
                        info.allowed_kinds.sort();
                        info.supported_kinds =
                            info.allowed_kinds.iter().map(|k| k.name()).collect();
                        if !bad.is_empty() {
                            let names: Vec<_> = bad.iter().map(|k| k.kind.as_str()).collect();
                            resolved = (
                                false,
                                Reason::InvalidRouteKinds,
                                format!("unsupported route kinds: {}", names.join(", ")),
                            );
                        }
                    }
                }
                let mut certified = true;
                match l.protocol.as_str() {
                    "HTTP" => {}
                    "HTTPS" => {
                        let tls = l.tls.as_ref();
                        if tls.and_then(|t| t.mode.as_ref())
                            == Some(&GatewayListenersTlsMode::Passthrough)
                        {
                            accepted = (
                                false,
                                Reason::UnsupportedValue,
                                "an HTTPS listener terminates TLS: tls.mode Passthrough needs protocol TLS"
                                    .to_owned(),
                            );
                            info.usable = false;
                        } else {
                            let refs =
                                tls.and_then(|t| t.certificate_refs.as_deref()).unwrap_or(&[]);
                            let certs = self.listener_certificates(&key.namespace, refs);
                            if let Some((reason, message)) = certs.problem
                                && resolved.0
                            {
                                resolved = (false, reason, message);
                            }
                            certified = !certs.indices.is_empty();
                            info.certificates = certs.indices;
                            match self.frontend_validation(gw, info.port) {
                                None => {}
                                Some(Ok(v)) => {
                                    if v.insecure_fallback {
                                        self.insecure_frontend.insert(key);
                                    }
                                    info.client_validation = Some(v);
                                }
                                Some(Err((reason, message))) => {
                                    accepted = (
                                        false,
                                        Reason::NoValidCACertificate,
                                        format!("client certificate validation: {message}"),
                                    );
                                    resolved = (false, reason, message);
                                    info.usable = false;
                                }
                            }
                        }
                    }
                    other => {
                        accepted = (
                            false,
                            Reason::UnsupportedProtocol,
                            format!("protocol {other} is not supported yet (HTTP and HTTPS)"),
                        );
                        info.supported_kinds.clear();
                        info.usable = false;
                    }
                }
                if let Some(problem) = &address_problem {
                    accepted = (false, Reason::UnsupportedAddress, problem.clone());
                    info.usable = false;
                } else if let Some(problem) = parameters_problem(gw) {
                    accepted =
                        (false, Reason::Pending, format!("the Gateway is not accepted: {problem}"));
                    info.usable = false;
                }
                if info.usable {
                    let index = self.listeners.len();
                    for a in &info.addresses {
                        let first = *port_tls.entry((*a, info.port)).or_insert((info.tls, index));
                        if first.0 != info.tls {
                            let other = &self.listeners[first.1];
                            let (mine, theirs) =
                                if info.tls { ("HTTPS", "HTTP") } else { ("HTTP", "HTTPS") };
                            conflicted = (
                                true,
                                Reason::ProtocolConflict,
                                format!(
                                    "port {} serves {theirs} ({}/{}); this listener is {mine}",
                                    info.port, other.gateway, other.name
                                ),
                            );
                        }
                    }
                    let protocol_conflict = conflicted.0;
                    for a in info.addresses.iter().filter(|_| !protocol_conflict) {
                        let slot = (*a, info.port, info.hostname);
                        if let Some(&first) = claimed.get(&slot)
                            && first != index
                        {
                            let other = &self.listeners[first];
                            conflicted = (
                                true,
                                Reason::HostnameConflict,
                                format!(
                                    "port {} hostname {:?} already served by {}/{}",
                                    info.port,
                                    info.hostname.unwrap_or(""),
                                    other.gateway,
                                    other.name
                                ),
                            );
                        }
                    }
                    if conflicted.0 {
                        info.usable = false;
                    } else {
                        for a in &info.addresses {
                            claimed.insert((*a, info.port, info.hostname), index);
                        }
                    }
                }
                let programmed = info.usable && certified;
                if programmed {
                    info.bind_failed = info.addresses.iter().find_map(|a| {
                        let error = self.settings.bind_failures.get(&(*a, info.port))?;
                        let at =
                            a.map_or_else(|| "its bind address".to_owned(), |ip| ip.to_string());
                        Some(format!("lb cannot listen on {at} port {}: {error}", info.port))
                    });
                }
                let programmed = match &info.bind_failed {
                    Some(why) => {
                        condition(Type::Programmed, false, Reason::Pending, why, generation)
                    }
                    None if info.usable && !certified => condition(
                        Type::Programmed,
                        false,
                        Reason::Invalid,
                        "no usable certificate: TLS handshakes for this listener fail",
                        generation,
                    ),
                    None => programmed_condition(programmed, "listener", generation),
                };
                info.conditions = vec![
                    condition(Type::Accepted, accepted.0, accepted.1, &accepted.2, generation),
                    condition(Type::ResolvedRefs, resolved.0, resolved.1, &resolved.2, generation),
                    condition(
                        Type::Conflicted,
                        conflicted.0,
                        conflicted.1,
                        &conflicted.2,
                        generation,
                    ),
                    programmed,
                ];
                indices.push(self.listeners.len());
                self.listeners.push(info);
            }
            self.gateway_listeners.insert((&key.namespace, &key.name), (key, indices));
        }
    }
}

/// Why the Gateway's `infrastructure.parametersRef` cannot be honoured: Sluice defines no
/// parameters kind, so any reference is one it cannot resolve (the spec: reject with
/// `InvalidParameters`).
pub(super) fn parameters_problem(gw: &Gateway) -> Option<String> {
    let r = gw.spec.infrastructure.as_ref()?.parameters_ref.as_ref()?;
    Some(format!("parametersRef {}/{} {}: Sluice has no parameters kind", r.group, r.kind, r.name))
}

/// Gateway `spec.addresses` as bind addresses (`None` = lb's default), or why they are unusable.
pub(super) fn gateway_addresses(gw: &Gateway) -> (Vec<Option<IpAddr>>, Option<String>) {
    let requested = gw.spec.addresses.as_deref().unwrap_or(&[]);
    if requested.is_empty() {
        return (vec![None], None);
    }
    let mut out = Vec::new();
    for a in requested {
        let kind = a.r#type.as_deref().unwrap_or("IPAddress");
        if kind != "IPAddress" {
            return (vec![None], Some(format!("address type {kind} is not supported")));
        }
        match a.value.as_deref().filter(|v| !v.is_empty()).map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => out.push(Some(ip)),
            // No value: an address of the implementation's choosing (the pool, else lb's
            // default), as the spec allows.
            None => out.push(None),
            _ => {
                return (
                    vec![None],
                    Some(format!(
                        "address {:?} is not an IP address",
                        a.value.as_deref().unwrap_or("")
                    )),
                );
            }
        }
    }
    (out, None)
}

/// Namespace labels, including the `kubernetes.io/metadata.name` label the API server adds.
pub(super) fn namespace_labels<'a>(model: &'a Model, ns: &'a str) -> BTreeMap<&'a str, &'a str> {
    let mut labels: BTreeMap<&str, &str> = model
        .namespaces
        .get(&Key::new("", ns))
        .and_then(|n| n.metadata.labels.as_ref())
        .map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name", ns);
    labels
}
