//! `sluice-conformance`: see the crate documentation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Gateway API conformance runner over the upstream manifests and translated vectors.
#[derive(Parser, Debug)]
struct Args {
    /// Vector file (default: `<shared>/conformance/cases.json`).
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Folder holding `gateway-api/` and `conformance/` (default: `../shared` beside the checkout).
    #[arg(long)]
    shared: Option<PathBuf>,
    /// The sluice binary (default: `sluice` beside this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Run only this test (repeatable).
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Features to claim, comma-separated (default: the ones Sluice supports).
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// Seconds a case or status check may take to hold.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Keep the work folder (logs of config-sync, lb and every pod).
    #[arg(long)]
    keep: bool,
    /// Also write the report as Markdown (e.g. docs/conformance.md).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write a Gateway API ConformanceReport (YAML, the upstream format) here.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let shared = a.shared.unwrap_or_else(conformance::default_shared);
    let sluice = a.sluice.unwrap_or_else(|| {
        std::env::current_exe()
            .map(|p| p.with_file_name("sluice"))
            .unwrap_or_else(|_| "sluice".into())
    });
    let opts = conformance::Options {
        cases: a.cases.unwrap_or_else(|| shared.join("conformance/cases.json")),
        shared,
        sluice,
        tests: a.tests,
        features: a
            .features
            .unwrap_or_else(|| conformance::CLAIMED.iter().map(|s| (*s).to_owned()).collect()),
        timeout: Duration::from_secs(a.timeout),
        keep: a.keep,
        markdown: a.markdown,
        report: a.report,
    };
    match conformance::run(&opts) {
        Ok((report, ok)) => {
            println!("{report}");
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("sluice-conformance: {e}");
            ExitCode::from(2)
        }
    }
}
