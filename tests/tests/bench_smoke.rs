//! The benchmark harness at tiny size: the report is produced and well formed. No timing is
//! asserted (this machine is shared; speed is measured by `cargo xtask bench`, not by tests).

use xdpwall_bench::Args;
use xdpwall_tests::require_privileges;

#[test]
fn harness_produces_a_well_formed_report() {
    require_privileges!();
    let args = Args {
        sizes: vec![0, 50],
        reps: 2,
        repeat: 10,
        frames: 4,
        out: std::env::temp_dir(),
        seed: 7,
    };
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/xdpwall-bench-smoke-{}",
        std::process::id()
    ));
    let report = xdpwall_bench::run(&args, &pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let report = report.unwrap();
    // One row per size and subject, each with a positive ns/packet and a ratio.
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| 0 |") || l.starts_with("| 50 |"))
        .collect();
    assert_eq!(
        rows.len(),
        2 * 5 + 2,
        "5 subjects per size plus 2 load-time rows:\n{report}"
    );
    for row in rows.iter().filter(|r| r.matches('|').count() == 5) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let ns: f64 = cells[3].split_whitespace().next().unwrap().parse().unwrap();
        assert!(ns > 0.0, "{row}");
    }
    assert!(
        report.contains("XDP_PASS bracket | ") && report.contains("| 50 | xdpwall, 100% hit |"),
        "{report}"
    );
    assert!(report.contains("Command: `cargo xtask bench"), "{report}");
    assert!(!pin_dir.exists());
}
