//! schemathesis (PyPI; installed by `cargo xtask setup` into /opt/xdpwall-py) against the real
//! daemon's `/v1/openapi.json` with a write token: every generated request, valid or not, must
//! get a response that is not a server error and matches the documented status codes, content
//! type and schema. The daemon runs in a veth lab; schemathesis runs in the daemon's network
//! namespace, against its loopback API. `XDPWALL_SCHEMA_EXAMPLES` sets the examples per
//! operation (default 25), `XDPWALL_SCHEMA_SECONDS` the time budget (default 120).

use std::process::Command;

use xdpwall_netlab::Lab;
use xdpwall_tests::{
    daemon::{Daemon, WRITE_TOKEN},
    require_privileges,
};

const SCHEMATHESIS: &str = "/opt/xdpwall-py/bin/schemathesis";

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    require_privileges!();
    assert!(
        std::path::Path::new(SCHEMATHESIS).exists(),
        "{SCHEMATHESIS} is missing: run `cargo xtask setup`"
    );
    let examples = std::env::var("XDPWALL_SCHEMA_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seconds = std::env::var("XDPWALL_SCHEMA_SECONDS").unwrap_or_else(|_| "120".into());
    let lab = Lab::new("schema").unwrap();
    let daemon = Daemon::start(&lab, "schema", "").unwrap();
    let output = Command::new("nsenter")
        .arg(format!("--net={}", daemon.netns_path))
        .arg(SCHEMATHESIS)
        .args([
            "run",
            "http://127.0.0.1:9180/v1/openapi.json",
            "--header",
            &format!("Authorization: Bearer {WRITE_TOKEN}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            &examples,
            "--workers",
            "1",
            "--max-time",
            &seconds,
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.contains("passed")
                || l.contains("failed")
                || l.contains("Test cases")
                || l.contains("operations")
        })
        .collect();
    eprintln!("schemathesis summary:\n{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    assert!(
        !daemon.log().contains("panicked"),
        "the daemon panicked:\n{}",
        daemon.log()
    );
}
