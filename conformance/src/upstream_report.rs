//! The run as a Gateway API `ConformanceReport` (apis/v1, the format implementations submit
//! upstream): the GATEWAY-HTTP and GATEWAY-GRPC profiles, each with its core and extended
//! results, statistics, the tests skipped or failed, and the features claimed.
//!
//! A test belongs to GATEWAY-GRPC when it needs a GRPCRoute feature, to GATEWAY-HTTP unless it
//! needs a feature of another profile (GRPCRoute, TLSRoute, TCPRoute, UDPRoute, Mesh); it is
//! core when every feature it needs is one of its profile's core features. Results follow the
//! upstream suite: `success` when every test of the section passed, `partial` when some were
//! skipped and none failed, `failure` otherwise.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::Outcome;
use crate::cases::Test;

/// Core features of GATEWAY-HTTP.
const CORE: &[&str] = &["Gateway", "HTTPRoute", "ReferenceGrant"];
/// Core features of GATEWAY-GRPC.
const GRPC_CORE: &[&str] = &["Gateway", "GRPCRoute", "ReferenceGrant"];
/// Features that put a test in another profile than GATEWAY-HTTP.
const OTHER_PROFILES: &[&str] = &["GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute", "Mesh"];

/// One profile: its name, core features, which tests are its own (by their features) and
/// which claimed features it reports.
struct Profile {
    name: &'static str,
    core: &'static [&'static str],
    owns: fn(&[&str]) -> bool,
    reports: fn(&str) -> bool,
}

const PROFILES: [Profile; 2] = [
    Profile {
        name: "GATEWAY-HTTP",
        core: CORE,
        owns: |features| !features.iter().any(|f| OTHER_PROFILES.iter().any(|p| f.starts_with(p))),
        reports: |f| !OTHER_PROFILES.iter().any(|p| f.starts_with(p)),
    },
    Profile {
        name: "GATEWAY-GRPC",
        core: GRPC_CORE,
        owns: |features| features.iter().any(|f| f.starts_with("GRPCRoute")),
        reports: |f| f.starts_with("GRPCRoute") || f.starts_with("Gateway"),
    },
];

#[derive(Default)]
struct Section {
    passed: Vec<String>,
    failed: Vec<String>,
    skipped: Vec<String>,
}

impl Section {
    fn value(&self) -> Value {
        let result = if !self.failed.is_empty() {
            "failure"
        } else if !self.skipped.is_empty() {
            "partial"
        } else {
            "success"
        };
        let mut v = json!({
            "result": result,
            "statistics": {
                "Passed": self.passed.len(),
                "Failed": self.failed.len(),
                "Skipped": self.skipped.len(),
            },
        });
        if !self.skipped.is_empty() {
            v["skippedTests"] = json!(self.skipped);
        }
        if !self.failed.is_empty() {
            v["failedTests"] = json!(self.failed);
        }
        v
    }
}

/// One profile's entry of the report.
fn profile(p: &Profile, results: &[(&Test, Outcome)], claimed: &[String]) -> Value {
    let (mut core, mut extended) = (Section::default(), Section::default());
    let mut seen_extended: BTreeSet<&str> = BTreeSet::new();
    for (t, outcome) in results {
        let features: Vec<&str> = t.feature.iter().map(String::as_str).collect();
        if !(p.owns)(&features) {
            continue;
        }
        let is_core = features.iter().all(|f| p.core.contains(f));
        seen_extended.extend(features.iter().filter(|f| !p.core.contains(f)));
        let section = if is_core { &mut core } else { &mut extended };
        let list = match outcome {
            Outcome::Pass => &mut section.passed,
            Outcome::Fail(_) => &mut section.failed,
            Outcome::Skip(_) => &mut section.skipped,
        };
        list.push(t.test.clone());
    }
    let supported: Vec<&str> = claimed
        .iter()
        .map(String::as_str)
        .filter(|f| !p.core.contains(f) && (p.reports)(f))
        .collect();
    let unsupported: Vec<&str> =
        seen_extended.iter().copied().filter(|f| !supported.contains(f)).collect();
    let mut ext = extended.value();
    ext["supportedFeatures"] = json!(supported);
    ext["unsupportedFeatures"] = json!(unsupported);
    json!({
        "name": p.name,
        "core": core.value(),
        "extended": ext,
        "summary": format!(
            "Sluice's own runner (sluice-conformance) over vectors translated from the upstream suite; core {} passed, {} failed, {} skipped; extended {} passed, {} failed, {} skipped.",
            core.passed.len(), core.failed.len(), core.skipped.len(),
            extended.passed.len(), extended.failed.len(), extended.skipped.len()
        ),
    })
}

/// The report, as YAML.
pub fn yaml(results: &[(&Test, Outcome)], claimed: &[String], date: &str) -> String {
    let profiles: Vec<Value> = PROFILES.iter().map(|p| profile(p, results, claimed)).collect();
    let report = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "ConformanceReport",
        "date": date,
        "gatewayAPIVersion": crate::GATEWAY_API_VERSION,
        "gatewayAPIChannel": "experimental",
        "implementation": {
            "organization": "sluice-dev",
            "project": "sluice",
            "url": "https://github.com/sluice-dev/sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "contact": ["https://github.com/sluice-dev/sluice/issues"],
        },
        "mode": "default",
        "profiles": profiles,
    });
    serde_yaml_ng::to_string(&report).unwrap_or_default()
}
