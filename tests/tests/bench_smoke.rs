//! The benchmark harness at tiny size: the report is produced and well formed. No timing is
//! asserted (this machine is shared; speed is measured by `cargo xtask bench`, not by tests).

use xdpwall::datapath::Ipv4Lookup;
use xdpwall_bench::{
    Args, RunArgs,
    live::{Family, GeneratorChoice, LiveArgs, run_live, system_labels},
    scoped::{FloodCase, ScopedArgs, run_scoped},
};
use xdpwall_tests::require_privileges;

#[test]
fn harness_produces_a_well_formed_report() {
    require_privileges!();
    let args = Args {
        sizes: vec![0, 50],
        run: RunArgs {
            reps: 2,
            repeat: 10,
            frames: 4,
            out: std::env::temp_dir(),
        },
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
        2 * 7 + 2,
        "7 subjects per size plus 2 load-time rows:\n{report}"
    );
    for row in rows
        .iter()
        .filter(|r| r.matches('|').count() == 5 && !r.contains(" s |"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let ns: f64 = cells[3].split_whitespace().next().unwrap().parse().unwrap();
        assert!(ns > 0.0, "{row}");
    }
    assert!(
        report.contains("XDP_PASS bracket | ")
            && report.contains("| 50 | xdpwall (lpm), 100% hit |")
            && report.contains("| 50 | xdpwall (dir24), 0% hit |"),
        "{report}"
    );
    assert!(report.contains("Command: `cargo xtask bench"), "{report}");
    assert!(!pin_dir.exists());
}

/// The scoped-rule harness at tiny size: every row has a positive ns/packet, the frames the
/// block list or a scoped rule must drop were dropped (their XDP action, and the test-run
/// interface's `dropped` counter), and the flood's per-rule limit dropped most of its packets.
#[test]
fn scoped_harness_reports_stage_costs_and_real_drops() {
    require_privileges!();
    let args = ScopedArgs {
        blocklist: 200,
        rules: vec![0, 20],
        ipv4_lookup: Ipv4Lookup::Dir24,
        flood_sources: 3000,
        flood_few: 10,
        flood_packets: 400,
        flood_cases: FloodCase::ALL.to_vec(),
        run: RunArgs {
            reps: 2,
            repeat: 10,
            frames: 4,
            out: std::env::temp_dir(),
        },
        seed: 7,
    };
    let pin_dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/xdpwall-bench-scoped-smoke-{}",
        std::process::id()
    ));
    let report = run_scoped(&args, &pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let report = report.unwrap();

    let cells =
        |row: &str| -> Vec<String> { row.split('|').map(|c| c.trim().to_string()).collect() };
    let ns = |cell: &str| -> f64 { cell.split_whitespace().next().unwrap().parse().unwrap() };
    // | rules | subject | action | ns | ratio | vs stage off |: 7 rows with 0 rules, 11 with 20.
    let stage_rows: Vec<Vec<String>> = report
        .lines()
        .filter(|l| l.starts_with("| 0 |") || l.starts_with("| 20 |"))
        .map(cells)
        .filter(|c| c.len() == 8)
        .collect();
    assert_eq!(stage_rows.len(), 7 + 11, "{report}");
    for row in &stage_rows {
        assert!(ns(&row[4]) > 0.0, "{row:?}");
        let subject = &row[2];
        let must_drop = subject.contains("(a)") && !subject.starts_with("XDP_PASS")
            || subject.starts_with("xdpwall, scoped rules: (c)");
        let action = if must_drop { "drop" } else { "pass" };
        assert_eq!(row[3], action, "{row:?}");
    }
    // | case | sources | ns | ratio | vs stage off | dropped |
    let flood_rows: Vec<Vec<String>> = report
        .lines()
        .filter(|l| {
            l.starts_with("| XDP_PASS bracket | 3000 |")
                || l.starts_with("| per-")
                || l.starts_with("| xdpwall, stage off (block")
        })
        .map(cells)
        .collect();
    assert_eq!(flood_rows.len(), 5, "{report}");
    for row in &flood_rows {
        assert!(ns(&row[3]) > 0.0, "{row:?}");
    }
    let dropped = |row: &Vec<String>| -> f64 { row[6].trim_end_matches('%').parse().unwrap() };
    assert_eq!(dropped(&flood_rows[0]), 0.0, "{:?}", flood_rows[0]);
    let per_rule = flood_rows
        .iter()
        .find(|r| r[1].starts_with("per-rule"))
        .unwrap();
    assert!(dropped(per_rule) > 50.0, "{per_rule:?}");
    let counters = report
        .lines()
        .find(|l| l.starts_with("Verdict counters"))
        .expect("a verdict counter line");
    let dropped_total: u64 = counters
        .split("dropped ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped_total > 0, "{counters}");
    assert!(
        report.contains("Command: `cargo xtask bench -- scoped"),
        "{report}"
    );
    assert!(!pin_dir.exists());
}

/// The packet-rate harness at tiny size with the socket generator (the one kernels that refuse
/// live frames get): every system has a row at every size, XDP_DROP received packets and cost
/// the receiving CPU something per packet, and both plots are PNG images. Rates are not judged.
#[test]
fn live_harness_produces_a_report_and_plots() {
    live_smoke(Family::Ipv4, GeneratorChoice::Socket);
}

/// The same for an IPv6 run with the generator `auto` picks on this kernel: the IPv6 frames
/// reach the receiver, and the IPv6 systems (stock IPv6 trie, xdpwall's hash engine, nft,
/// ip6tables + ipset) have rows.
#[test]
fn live_harness_runs_ipv6() {
    live_smoke(Family::Ipv6, GeneratorChoice::Auto);
}

fn live_smoke(family: Family, generator: GeneratorChoice) {
    require_privileges!();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("SKIP live harness ({family:?}): needs 2 CPUs (generator and receiver)");
        return;
    }
    let out = std::env::temp_dir().join(format!(
        "xwbench-live-smoke-{family:?}-{}",
        std::process::id()
    ));
    let args = LiveArgs {
        family,
        sizes: vec![1, 1000],
        reps: 1,
        window_ms: 300,
        warmup_ms: 100,
        systems: Vec::new(),
        out: out.clone(),
        seed: 7,
        gen_cpu: 0,
        rx_cpu: 1,
        generator,
        rx_coalesce_us: None,
    };
    let report = run_live(&args);
    let pngs: Vec<std::path::PathBuf> = std::fs::read_dir(&out)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .collect()
        })
        .unwrap_or_default();
    let png_bytes: Vec<Vec<u8>> = pngs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let _ = std::fs::remove_dir_all(&out);
    let report = report.unwrap();

    let labels = system_labels(family);
    assert_eq!(
        labels.contains(&"xdpwall (hash)"),
        family == Family::Ipv6,
        "{labels:?}"
    );
    for size in [1, 1000] {
        for label in &labels {
            assert!(
                report.contains(&format!("| {size} | {label} |")),
                "no row for {label} at {size}:\n{report}"
            );
        }
        let drop_row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {size} | XDP_DROP |")))
            .unwrap();
        // | prefixes | system | hit ns | hit × one-read | hit NAPI ns | hit Mpps | hit busy |
        //   miss ns | miss × PASS | miss NAPI ns | miss Mpps | …
        let cells: Vec<&str> = drop_row.split('|').map(str::trim).collect();
        for cell in [cells[3], cells[5], cells[6], cells[8], cells[10], cells[11]] {
            let value: f64 = cell
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('*')
                .parse()
                .unwrap_or_else(|e| panic!("{cell:?}: {e} in {drop_row}"));
            assert!(value > 0.0, "{drop_row}");
        }
    }
    let generator_line = report
        .lines()
        .find(|l| l.starts_with("- Generator: "))
        .unwrap_or_else(|| panic!("no generator line:\n{report}"));
    match generator {
        GeneratorChoice::Socket => assert!(
            generator_line.starts_with("- Generator: socket (") && generator_line.contains("µs"),
            "{generator_line}"
        ),
        _ => assert!(
            generator_line.starts_with("- Generator: live (auto")
                || generator_line.starts_with("- Generator: socket (auto"),
            "{generator_line}"
        ),
    }
    assert!(report.contains("× one-read"), "{report}");
    assert!(
        report.contains("Command: `cargo xtask bench -- live"),
        "{report}"
    );
    assert_eq!(pngs.len(), 2, "{pngs:?}");
    for bytes in png_bytes {
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        // IHDR: width and height (big-endian) right after the chunk header.
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert!(width > 0 && height > 0);
        assert!(report.contains(".png)"), "{report}");
    }
}
