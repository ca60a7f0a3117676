//! The API over TLS (`[api] tls_cert`, `tls_key`) with the real daemon in a veth lab: a client
//! that trusts the certificate gets every answer (probes, reads, a write enforced on real
//! traffic, the CLI with `--ca-cert`); plain HTTP and clients that do not trust it get nothing.

use std::process::Command;

use xdpwall_netlab::{FW_V4, Lab, PEER_V4};
use xdpwall_tests::{
    daemon::{Daemon, WRITE_TOKEN},
    require_privileges,
};

#[test]
fn the_api_serves_tls_only_and_the_cli_follows() {
    require_privileges!();
    let lab = Lab::new("tls").unwrap();
    let (pin_dir, state_dir) = Daemon::dirs("tls");
    std::fs::create_dir_all(&state_dir).unwrap();
    let (cert, key) = (state_dir.join("api.crt"), state_dir.join("api.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=xdpwall-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        // A server certificate, not a CA: rustls (the CLI) refuses a CA as end entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The harness writes the [api] table; the TLS keys are spliced into it.
    let mut daemon = Daemon::prepare(&lab, pin_dir, state_dir, "").unwrap();
    let config = std::fs::read_to_string(&daemon.config_path)
        .unwrap()
        .replace(
            "[api]\n",
            &format!(
                "[api]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
        );
    std::fs::write(&daemon.config_path, config).unwrap();
    daemon.tls_ca = Some(cert.clone());
    daemon.spawn().expect("the daemon starts with TLS");

    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["ready"], true, "{status}");
    let (code, rule) = daemon
        .post_json(
            "/v1/rules",
            &serde_json::json!({"cidr": format!("{PEER_V4}/32")}),
        )
        .unwrap();
    assert_eq!(code, 201, "{rule}");
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, 3).unwrap(),
        0,
        "a write over TLS is enforced"
    );

    // Plain HTTP gets no HTTP answer; an untrusting client fails the handshake.
    let curl = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net={}", daemon.netns_path))
            .args([
                "curl",
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let plain = curl(&["http://127.0.0.1:9180/healthz"]);
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "000",
        "plain HTTP is not served"
    );
    let untrusted = curl(&["https://127.0.0.1:9180/healthz"]);
    assert!(
        !untrusted.status.success(),
        "an unknown certificate is not trusted"
    );

    // The CLI over https with --ca-cert.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", daemon.netns_path))
        .arg(xdpwall_tests::daemon::binary().unwrap())
        .args([
            "block",
            "ls",
            "-o",
            "json",
            "--api",
            "https://127.0.0.1:9180",
            "--ca-cert",
        ])
        .arg(&cert)
        .env("XDPWALL_TOKEN", WRITE_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(PEER_V4));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", daemon.netns_path))
        .arg(xdpwall_tests::daemon::binary().unwrap())
        .args(["status", "--api", "https://127.0.0.1:9180"])
        .env("XDPWALL_TOKEN", WRITE_TOKEN)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "without --ca-cert the CLI refuses the certificate"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "the CLI says why: {stderr}");
}
