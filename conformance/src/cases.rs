//! The vector file (`conformance/cases.json`): one entry per upstream conformance test.

use serde::Deserialize;
use serde_json::Value;

/// The whole file.
#[derive(Debug, Deserialize)]
pub struct CaseFile {
    /// The tests.
    pub tests: Vec<Test>,
}

/// One upstream test.
#[derive(Debug, Clone, Deserialize)]
pub struct Test {
    /// Upstream ShortName.
    pub test: String,
    /// Features the test requires.
    #[serde(default)]
    pub feature: Vec<String>,
    /// Manifests, relative to the conformance folder (the base manifest comes on top).
    #[serde(default)]
    pub manifests: Vec<String>,
    /// The Gateway requests go to, unless a case names another.
    pub gateway: Option<GatewayRef>,
    /// Request → expected outcome.
    #[serde(default)]
    pub cases: Vec<Case>,
    /// Status checks, in order.
    #[serde(default)]
    pub status_expectations: Vec<Value>,
    /// How to check mirrors sampled below 100 % (`total_requests`, `concurrency`, `retries`).
    pub mirror_distribution: Option<Value>,
}

/// A Gateway by namespace and name.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct GatewayRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One request and what must come back.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// The request.
    pub request: Value,
    /// The expectation.
    pub expect: Value,
    /// Another Gateway than the test's.
    pub gateway: Option<GatewayRef>,
    /// A listener port other than the Gateway's first.
    pub gateway_port: Option<u16>,
}

impl CaseFile {
    /// Parses a vector file.
    pub fn parse(text: &str) -> Result<CaseFile, String> {
        serde_json::from_str(text).map_err(|e| format!("cases: {e}"))
    }
}
