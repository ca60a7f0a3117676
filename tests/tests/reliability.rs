//! Faults and load with the real daemon in a veth lab, counted packet by packet and rule by rule:
//! repeated kill -9 under continuous traffic (blocked packets leaked, unlisted packets lost),
//! concurrent API writers (lost or duplicate rules, server errors, store vs kernel), and a rule
//! store that is locked by another process or corrupt.
//!
//! `XDPWALL_KILLS` sets the kill -9 cycles (default 5); `XDPWALL_WRITER_OPS` the adds per
//! writer (default 1,000; the issue's figure is 2,000).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{LpmTrie, Map, MapData};
use xdpwall::pins::PinLayout;
use xdpwall_netlab::{
    BLOCKED_PREFIX_V4, BLOCKED_PREFIX_V6, BLOCKED_V4, BLOCKED_V6, FW_V4, FW_V6, Lab, PEER_V4,
    PEER_V6, in_netns,
};
const PINGS: u32 = 3;
use xdpwall_shared::map_names;
use xdpwall_tests::{daemon::Daemon, require_privileges};

const PORT: u16 = 7070;
/// Datagrams per second from each source.
const RATE: u64 = 1000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn block_config() -> String {
    format!("[[rules]]\ncidr = \"{BLOCKED_PREFIX_V4}\"\naction = \"block\"\n")
}

#[derive(Default)]
struct Counts {
    sent_blocked: AtomicU64,
    sent_unlisted: AtomicU64,
    got_blocked: AtomicU64,
    got_unlisted: AtomicU64,
}

/// The firewall's address and the two sources of the datagram tests, per family.
#[derive(Clone, Copy)]
struct Endpoints {
    fw: &'static str,
    blocked: &'static str,
    unlisted: &'static str,
}

const V4: Endpoints = Endpoints {
    fw: FW_V4,
    blocked: BLOCKED_V4,
    unlisted: PEER_V4,
};

/// BLOCKED_V6 lies in BLOCKED_PREFIX_V6, a /120: a prefix longer than /32.
const V6: Endpoints = Endpoints {
    fw: FW_V6,
    blocked: BLOCKED_V6,
    unlisted: PEER_V6,
};

/// Receives on `at.fw`:PORT inside the firewall namespace until `stop`, counting by source.
fn receiver(
    lab: &Lab,
    at: Endpoints,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let path = lab.fw_netns_path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        in_netns(&path, move || {
            let socket = UdpSocket::bind((at.fw, PORT)).expect("bind the receiver");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Acquire) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let counter = if from.ip() == at.blocked.parse::<IpAddr>().unwrap() {
                        &counts.got_blocked
                    } else {
                        &counts.got_unlisted
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .expect("receiver thread");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    handle
}

/// A receiver and a sender of datagrams between `endpoints`, running until [`Self::finish`].
struct Traffic {
    counts: Arc<Counts>,
    stop_sender: Arc<AtomicBool>,
    stop_receiver: Arc<AtomicBool>,
    tx: std::thread::JoinHandle<()>,
    rx: std::thread::JoinHandle<()>,
}

impl Traffic {
    fn start(lab: &Lab, endpoints: Endpoints) -> Self {
        let counts = Arc::new(Counts::default());
        let stop_sender = Arc::new(AtomicBool::new(false));
        let stop_receiver = Arc::new(AtomicBool::new(false));
        let rx = receiver(lab, endpoints, counts.clone(), stop_receiver.clone());
        let tx = sender(lab, endpoints, counts.clone(), stop_sender.clone());
        Self {
            counts,
            stop_sender,
            stop_receiver,
            tx,
            rx,
        }
    }

    /// Stops sending, lets the last datagrams arrive, stops receiving; the counts.
    fn finish(self) -> Arc<Counts> {
        self.stop_sender.store(true, Ordering::Release);
        self.tx.join().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        self.stop_receiver.store(true, Ordering::Release);
        self.rx.join().unwrap();
        self.counts
    }
}

/// Sends from `to.blocked` and `to.unlisted` in the peer namespace at RATE each until `stop`.
fn sender(
    lab: &Lab,
    to: Endpoints,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{}", lab.peer_ns);
    std::thread::spawn(move || {
        in_netns(&path, move || {
            let dest: SocketAddr = (to.fw.parse::<IpAddr>().unwrap(), PORT).into();
            let blocked = UdpSocket::bind((to.blocked, 0)).expect("bind the blocked source");
            let unlisted = UdpSocket::bind((to.unlisted, 0)).expect("bind the unlisted source");
            let started = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let payload = n.to_be_bytes();
                if blocked.send_to(&payload, dest).is_ok() {
                    counts.sent_blocked.fetch_add(1, Ordering::Relaxed);
                }
                if unlisted.send_to(&payload, dest).is_ok() {
                    counts.sent_unlisted.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                // Paced against the clock, so a slow moment does not lower the total rate.
                let due = started + Duration::from_micros(n * 1_000_000 / RATE);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
        .expect("sender thread");
    })
}

#[test]
fn kill9_under_traffic_leaks_nothing_and_loses_nothing() {
    require_privileges!();
    let kills = env_or("XDPWALL_KILLS", 5);
    let lab = Lab::new("kill9").unwrap();
    let mut daemon = Daemon::start(&lab, "kill9", &block_config()).unwrap();
    // Neighbours resolved before counting starts.
    assert_eq!(lab.ping(PEER_V4, FW_V4, 2).unwrap(), 2);

    let traffic = Traffic::start(&lab, V4);
    let started = Instant::now();
    for cycle in 0..kills {
        std::thread::sleep(Duration::from_millis(300));
        daemon.kill9();
        std::thread::sleep(Duration::from_millis(300));
        daemon.spawn().unwrap();
        let status = daemon.get_json("/v1/status").unwrap();
        assert_eq!(
            status["interfaces"][0]["mode"], "reused",
            "cycle {cycle}: the restarted daemon reuses the pinned link: {status}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let counts = traffic.finish();

    let what = format!("{kills} kill -9 cycles in {:.1?}", started.elapsed());
    assert_no_leak_no_loss(&counts, &what, 1000);
    let sent_blocked = counts.sent_blocked.load(Ordering::Relaxed);
    // The kernel counted every blocked datagram against the rule (pings of the warm-up are
    // from the unlisted source).
    let (_, metrics) = daemon.http("GET", "/metrics", None).unwrap();
    let dropped: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("xdpwall_packets_total") && l.contains("verdict=\"dropped\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        dropped >= sent_blocked,
        "dropped counter {dropped} < {sent_blocked} blocked datagrams sent"
    );
}

/// The block trie's /32 keys inside 198.18.0.0/15, read from the daemon's pinned map.
fn kernel_writer_keys(pin_dir: &std::path::Path) -> BTreeSet<Ipv4Addr> {
    kernel_block_v4(pin_dir)
        .iter()
        .filter_map(|cidr| cidr.strip_suffix("/32")?.parse::<Ipv4Addr>().ok())
        .filter(|addr| addr.octets()[..2] == [198, 18])
        .collect()
}

#[test]
fn concurrent_writers_lose_and_duplicate_nothing() {
    require_privileges!();
    const WRITERS: u32 = 8;
    let ops = env_or("XDPWALL_WRITER_OPS", 1_000) as u32;
    assert!(ops <= 8192, "each writer has 8,192 addresses");
    let lab = Lab::new("writers").unwrap();
    let daemon = Daemon::start(&lab, "writers", "").unwrap();
    // Writer w owns 198.18.0.0 + w * 8192 .. + ops; keeps the even ones, deletes the odd ones.
    let address = |w: u32, i: u32| Ipv4Addr::from(0xc612_0000 + w * 8192 + i);

    let started = Instant::now();
    let results: Vec<(u32, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let daemon = &daemon;
                scope.spawn(move || {
                    let mut requests = 0u32;
                    let mut failures = Vec::new();
                    let mut ids = Vec::new();
                    for i in 0..ops {
                        let body = serde_json::json!({
                            "cidr": format!("{}/32", address(w, i)),
                            "list": "writers",
                            "reason": format!("writer {w}"),
                        });
                        requests += 1;
                        match daemon.post_json("/v1/rules", &body) {
                            Ok((201, rule)) => ids.push((i, rule["id"].as_u64().unwrap())),
                            Ok((code, body)) => failures.push(format!("add {i}: {code} {body}")),
                            Err(e) => failures.push(format!("add {i}: {e}")),
                        }
                    }
                    for (i, id) in ids {
                        if i % 2 == 0 {
                            continue;
                        }
                        requests += 1;
                        match daemon.http("DELETE", &format!("/v1/rules/{id}"), None) {
                            Ok((204, _)) => {}
                            Ok((code, body)) => {
                                failures.push(format!("delete {id}: {code} {body}"))
                            }
                            Err(e) => failures.push(format!("delete {id}: {e}")),
                        }
                    }
                    (requests, failures)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let requests: u32 = results.iter().map(|(r, _)| r).sum();
    let failures: Vec<&String> = results.iter().flat_map(|(_, f)| f).collect();

    let expected: BTreeSet<Ipv4Addr> = (0..WRITERS)
        .flat_map(|w| (0..ops).filter(|i| i % 2 == 0).map(move |i| address(w, i)))
        .collect();
    let stored = daemon.get_json("/v1/rules?list=writers").unwrap();
    let stored = stored["rules"].as_array().unwrap();
    let stored_set: BTreeSet<Ipv4Addr> = stored
        .iter()
        .map(|r| {
            let cidr = r["cidr"].as_str().unwrap();
            cidr.trim_end_matches("/32").parse().unwrap()
        })
        .collect();
    let kernel = kernel_writer_keys(&daemon.pin_dir);
    eprintln!(
        "{WRITERS} writers × {ops} adds (+ half deleted): {requests} requests in {:.1?}, {} \
         failed; store holds {} rules ({} distinct), kernel {} entries, expected {}",
        started.elapsed(),
        failures.len(),
        stored.len(),
        stored_set.len(),
        kernel.len(),
        expected.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "duplicate rules in the store"
    );
    assert_eq!(
        stored_set, expected,
        "store differs from what the writers left"
    );
    assert_eq!(kernel, expected, "kernel differs from the store");
}

/// Another process holds the SQLite write lock: writes answer 503 with the reason, the kernel
/// keeps exactly the rules it had (an add is not enforced, a delete does not lift a block), and
/// once the lock is gone writes work again. A corrupt store file stops the next start with a
/// clear message while the pinned program keeps enforcing the last applied rules.
#[test]
fn a_locked_or_corrupt_store_refuses_writes_and_keeps_the_kernel_as_it_was() {
    require_privileges!();
    let lab = Lab::new("store").unwrap();
    let mut daemon = Daemon::start(&lab, "store", &block_config()).unwrap();
    let (code, kept) = daemon
        .post_json("/v1/rules", &serde_json::json!({"cidr": "198.51.100.7/32"}))
        .unwrap();
    assert_eq!(code, 201, "{kept}");
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);

    let db = rusqlite::Connection::open(daemon.state_dir.join("rules.sqlite")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let (code, problem) = daemon
        .post_json(
            "/v1/rules",
            &serde_json::json!({"cidr": format!("{PEER_V4}/32")}),
        )
        .unwrap();
    eprintln!(
        "add under a foreign write lock: {code} after {:.1?}: {problem}",
        started.elapsed()
    );
    assert_eq!(code, 503, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("rule store") && detail.contains("last applied rules stay in force"),
        "the reason is given: {problem}"
    );
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "the refused block is not enforced"
    );
    let (code, body) = daemon
        .http("DELETE", &format!("/v1/rules/{}", kept["id"]), None)
        .unwrap();
    assert_eq!(code, 503, "{body}");
    let rules = daemon.get_json("/v1/rules").unwrap();
    assert!(
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == kept["id"]),
        "reads still work and the refused delete left the rule: {rules}"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "blocks stay"
    );

    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    let (code, rule) = daemon
        .post_json(
            "/v1/rules",
            &serde_json::json!({"cidr": format!("{PEER_V4}/32")}),
        )
        .unwrap();
    assert_eq!(code, 201, "writes work again once the lock is gone: {rule}");
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), 0);
    let (code, _) = daemon
        .http("DELETE", &format!("/v1/rules/{}", rule["id"]), None)
        .unwrap();
    assert_eq!(code, 204);

    // Corrupt the file while the daemon is down.
    daemon.kill9();
    let path = daemon.state_dir.join("rules.sqlite");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(daemon.state_dir.join(format!("rules.sqlite{suffix}")));
    }
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = daemon
        .spawn()
        .expect_err("a corrupt store must stop the start");
    let message = format!("{err:#}");
    assert!(
        message.contains("cannot open the rule store") || message.contains("rule store"),
        "the start names the store: {message}"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "the pinned program keeps enforcing the last applied rules"
    );
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);
}

/// `xdpwall export` then `xdpwall import` through the real daemon: the API rules come back
/// (action, list, reason, a TTL) and are enforced again; config rules are not duplicated; a
/// file that is not an export is refused with nothing changed.
#[test]
fn export_and_import_round_trip_the_api_rules() {
    require_privileges!();
    let lab = Lab::new("export").unwrap();
    let daemon = Daemon::start(&lab, "export", &block_config()).unwrap();
    for body in [
        serde_json::json!({"cidr": format!("{PEER_V4}/32"), "list": "incident", "reason": "c2"}),
        serde_json::json!({"cidr": "2001:db8:99::/48", "action": "allow", "ttl": "1h"}),
    ] {
        let (code, rule) = daemon.post_json("/v1/rules", &body).unwrap();
        assert_eq!(code, 201, "{rule}");
    }
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), 0);
    let file = daemon.state_dir.join("export.json");
    let out = daemon.cli(&["export", file.to_str().unwrap()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(export["rules"].as_array().unwrap().len(), 2, "{export}");

    // Remove the API rules, as after losing the state directory.
    let rules = daemon.get_json("/v1/rules").unwrap();
    for rule in rules["rules"].as_array().unwrap() {
        if rule["source"] == "api" {
            let (code, _) = daemon
                .http("DELETE", &format!("/v1/rules/{}", rule["id"]), None)
                .unwrap();
            assert_eq!(code, 204);
        }
    }
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);

    let bogus = daemon.state_dir.join("bogus.json");
    std::fs::write(&bogus, r#"{"rules": [{"cidr": "203.0.113.2/32"}]}"#).unwrap();
    let out = daemon.cli(&["import", bogus.to_str().unwrap()]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an xdpwall export"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "nothing imported"
    );

    let out = daemon.cli(&["import", file.to_str().unwrap()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
        0,
        "enforced again"
    );
    let rules = daemon.get_json("/v1/rules").unwrap();
    let rules = rules["rules"].as_array().unwrap();
    let peer = rules
        .iter()
        .find(|r| r["cidr"] == format!("{PEER_V4}/32"))
        .expect("the block is back");
    assert_eq!(peer["list"], "incident");
    assert_eq!(peer["reason"], "c2");
    let allow = rules
        .iter()
        .find(|r| r["cidr"] == "2001:db8:99::/48")
        .expect("the allow is back");
    assert_eq!(allow["action"], "allow");
    assert!(
        allow["expires_at"].is_string(),
        "the TTL came along: {allow}"
    );
    assert_eq!(
        rules.iter().filter(|r| r["source"] == "config").count(),
        1,
        "the config rule is not duplicated"
    );
}

/// Creates an array map (4-byte keys, `value_size`-byte values) and pins it at `path`, as an
/// xdpwall with another map layout would have left it.
fn pin_foreign_map(path: &std::path::Path, value_size: u32) {
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let create = CreateAttr {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size,
        max_entries: 1,
    };
    // SAFETY: BPF_MAP_CREATE with a valid attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &create as *const CreateAttr,
            size_of::<CreateAttr>(),
        )
    };
    assert!(fd >= 0, "create: {}", std::io::Error::last_os_error());
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let pin = PinAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_PIN of the fd just created at a NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6,
            &pin as *const PinAttr,
            size_of::<PinAttr>(),
        )
    };
    assert_eq!(rc, 0, "pin: {}", std::io::Error::last_os_error());
    // SAFETY: closing the fd this function created; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// A pinned map with another layout (as a different xdpwall version would leave it) stops the
/// start before anything is loaded or attached, naming the map and what to do.
#[test]
fn a_pinned_map_with_another_layout_is_refused_with_what_to_do() {
    require_privileges!();
    let lab = Lab::new("layout").unwrap();
    let (pin_dir, state_dir) = Daemon::dirs("layout");
    let maps = PinLayout::new(&pin_dir).maps_dir();
    std::fs::create_dir_all(&maps).unwrap();
    // The real XW_VERDICTS holds one u64 per slot; this one holds 4-byte values.
    pin_foreign_map(&maps.join(map_names::VERDICTS), 4);
    let err = match Daemon::start_with_dirs(&lab, pin_dir.clone(), state_dir, "") {
        Ok(_) => panic!("a daemon started over a pinned map of another layout"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("XW_VERDICTS") && err.contains("xdpwall detach"),
        "the error names the map and what to do: {err}"
    );
    assert!(
        !lab.fw_link_details().unwrap().contains("xdp"),
        "nothing attached: {}",
        lab.fw_link_details().unwrap()
    );
    let _ = std::fs::remove_dir_all(&pin_dir);
}

/// Maps an earlier version pinned under names this one retired (their layout changed, e.g.
/// the 16-byte IPv6 guides) do not stop the start — they are not this version's maps — and
/// their pins are removed instead of lingering; the maps under the new names are pinned.
#[test]
fn pins_of_retired_maps_are_removed_at_start() {
    require_privileges!();
    let lab = Lab::new("retired").unwrap();
    let (pin_dir, state_dir) = Daemon::dirs("retired");
    let pins = PinLayout::new(&pin_dir);
    std::fs::create_dir_all(pins.maps_dir()).unwrap();
    for name in map_names::RETIRED {
        pin_foreign_map(&pins.map(name), 16);
        assert!(pins.map(name).exists());
    }
    // With the hash engine, so that the start tries to carry the retired guides over: these
    // are arrays, not the hashes an earlier version left; they are skipped, not an error.
    let daemon =
        Daemon::start_with_dirs(&lab, pin_dir.clone(), state_dir, "ipv6_lookup = \"hash\"\n")
            .expect("a start over retired pins");
    for name in map_names::RETIRED {
        assert!(!pins.map(name).exists(), "{name} is still pinned");
    }
    for name in [map_names::V6_GUIDE0, map_names::V6_GUIDE1] {
        assert!(pins.map(name).exists(), "{name} is not pinned");
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&pin_dir);
}

/// The release the upgrade test starts from: the last version that landed before the IPv6
/// engine, egress flagging and drop sampling added maps (`XDPWALL_UPGRADE_FROM` overrides).
const UPGRADE_FROM: &str = "9c600434db482ee2c7b0a88cdb9d73e36c782e9c";

/// The xdpwall binary of `commit`, built from `git archive` of this repository under
/// `target/upgrade-from/<commit>` (kept, so the next run reuses it).
fn release_binary(commit: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = repo.join("target/upgrade-from").join(commit);
    let bin = base.join("target/debug/xdpwall");
    if bin.exists() {
        return Ok(bin);
    }
    let src = base.join("src");
    std::fs::create_dir_all(&src)?;
    let archive = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C '{}' archive {commit} | tar -x -C '{}'",
            repo.display(),
            src.display()
        ))
        .status()
        .context("git archive")?;
    anyhow::ensure!(
        archive.success(),
        "git archive {commit} failed (is this a full clone?)"
    );
    eprintln!("building xdpwall {commit} for the upgrade test (a few minutes, once)");
    let status = std::process::Command::new("cargo")
        .args(["build", "--locked", "-p", "xdpwall"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .status()
        .context("cargo build of the earlier release")?;
    anyhow::ensure!(status.success(), "building xdpwall {commit} failed");
    Ok(bin)
}

/// `prog/xdp id N` of the firewall veth.
fn xdp_program_id(lab: &Lab) -> u32 {
    let details = lab.fw_link_details().unwrap();
    details
        .split_whitespace()
        .skip_while(|w| *w != "prog/xdp")
        .nth(2)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program id in {details}"))
}

/// An earlier release runs and enforces (config block + an API block), then is replaced by the
/// build under test while datagrams flow: the new daemon reuses the pinned link, swaps in its
/// own program (a new program id behind the same link), keeps the maps and the rules, adds the
/// maps the earlier release did not have; 0 blocked datagrams leak, 0 unlisted ones are lost.
#[test]
fn upgrade_from_the_previous_release_under_traffic_leaks_and_loses_nothing() {
    require_privileges!();
    let commit = std::env::var("XDPWALL_UPGRADE_FROM").unwrap_or_else(|_| UPGRADE_FROM.into());
    let old = release_binary(&commit).expect("the earlier release builds");
    let lab = Lab::new("upgrade").unwrap();
    let mut daemon = Daemon::start_with_binary(&lab, "upgrade", &block_config(), old).unwrap();
    let before = daemon.get_json("/v1/status").unwrap();
    let (code, rule) = daemon
        .post_json("/v1/rules", &serde_json::json!({"cidr": "198.51.100.9/32"}))
        .unwrap();
    assert_eq!(code, 201, "{rule}");
    assert_eq!(lab.ping(PEER_V4, FW_V4, 2).unwrap(), 2);
    let old_program = xdp_program_id(&lab);
    let counts = replace_under_traffic(&lab, &mut daemon, V4);

    let after = daemon.get_json("/v1/status").unwrap();
    assert_eq!(after["interfaces"][0]["mode"], "reused", "{after}");
    let new_program = xdp_program_id(&lab);
    assert_ne!(
        old_program, new_program,
        "the new program replaced the old one"
    );
    let rules = daemon.get_json("/v1/rules").unwrap();
    assert!(
        rules["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["cidr"] == "198.51.100.9/32"),
        "the rule added under the earlier release is kept: {rules}"
    );
    let what = format!(
        "upgrade {} ({commit:.7}) -> {}: program {old_program} -> {new_program}",
        before["version"], after["version"]
    );
    assert_no_leak_no_loss(&counts, &what, 500);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);
}

/// Kills the running (earlier) daemon and starts this build over its pins while datagrams
/// flow from `endpoints`' two sources; the counts of sent and received datagrams.
fn replace_under_traffic(lab: &Lab, daemon: &mut Daemon, endpoints: Endpoints) -> Arc<Counts> {
    let traffic = Traffic::start(lab, endpoints);
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill9();
    daemon.bin = None;
    daemon
        .spawn()
        .expect("the new version starts over the earlier one's pins");
    std::thread::sleep(Duration::from_millis(500));
    traffic.finish()
}

/// Traffic ran throughout (more than `min_sent` datagrams from each source), no blocked
/// datagram got through and every unlisted one did.
fn assert_no_leak_no_loss(counts: &Counts, what: &str, min_sent: u64) {
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (sent_blocked, sent_unlisted) = (c(&counts.sent_blocked), c(&counts.sent_unlisted));
    let (got_blocked, got_unlisted) = (c(&counts.got_blocked), c(&counts.got_unlisted));
    eprintln!(
        "{what}; blocked sent {sent_blocked}, leaked {got_blocked}; unlisted sent \
         {sent_unlisted}, received {got_unlisted}"
    );
    assert!(
        sent_blocked > min_sent && sent_unlisted > min_sent,
        "{what}: traffic ran throughout"
    );
    assert_eq!(got_blocked, 0, "{what}: blocked datagrams leaked");
    assert_eq!(
        got_unlisted, sent_unlisted,
        "{what}: unlisted datagrams lost"
    );
}

/// The last release whose IPv6 hash engine had 16-byte guides (`XW_V6_GUIDE0/1`), before
/// guides carried prefixes (`XDPWALL_UPGRADE_FROM_V6` overrides).
const UPGRADE_FROM_V6_GUIDES: &str = "79ef76861f015ad6ecae245a0dce94ad59a879aa";

/// An upgrade from the release with the old guide layout, with the IPv6 hash engine enforcing
/// a /120 block (a prefix longer than /32, so it sits under a guide): the new daemon carries
/// the old guides over into its new guide maps before its program replaces the old one, so 0
/// blocked IPv6 datagrams leak and 0 unlisted ones are lost, and the old pins are gone. Also
/// when the upgrade switches to the tries (`ipv6_lookup = "lpm"`): the new program reads the
/// hash engine left behind until the tries hold the rules.
#[test]
fn upgrade_from_the_old_ipv6_guide_layout_under_traffic_leaks_nothing() {
    require_privileges!();
    let commit =
        std::env::var("XDPWALL_UPGRADE_FROM_V6").unwrap_or_else(|_| UPGRADE_FROM_V6_GUIDES.into());
    let old = release_binary(&commit).expect("the earlier release builds");
    for engine in ["hash", "lpm"] {
        let lab = Lab::new("upgrade6").unwrap();
        // A second /32 with a longer prefix: two guides, more than the one-entry maps the
        // tries engine would create.
        let rules = format!(
            "[[rules]]\ncidr = \"{BLOCKED_PREFIX_V6}\"\naction = \"block\"\n\
             [[rules]]\ncidr = \"2001:db9:1::/48\"\naction = \"block\"\n"
        );
        let config = format!("ipv6_lookup = \"hash\"\n{rules}");
        let mut daemon = Daemon::start_with_binary(&lab, "upgrade6", &config, old.clone()).unwrap();
        assert_eq!(lab.ping(PEER_V6, FW_V6, 2).unwrap(), 2);
        assert_eq!(lab.ping(BLOCKED_V6, FW_V6, 2).unwrap(), 0);
        let pins = PinLayout::new(&daemon.pin_dir);
        for name in map_names::RETIRED {
            assert!(pins.map(name).exists(), "the earlier release pinned {name}");
        }
        // Read at the new daemon's start, not before.
        let written = std::fs::read_to_string(&daemon.config_path).unwrap();
        let switched = written.replace(
            "ipv6_lookup = \"hash\"",
            &format!("ipv6_lookup = \"{engine}\""),
        );
        std::fs::write(&daemon.config_path, switched).unwrap();
        let old_program = xdp_program_id(&lab);
        let counts = replace_under_traffic(&lab, &mut daemon, V6);

        let after = daemon.get_json("/v1/status").unwrap();
        assert_eq!(after["ipv6_lookup"], engine, "{after}");
        let new_program = xdp_program_id(&lab);
        assert_ne!(
            old_program, new_program,
            "the new program replaced the old one"
        );
        assert_no_leak_no_loss(
            &counts,
            &format!(
                "IPv6 upgrade ({commit:.7}) -> {} with ipv6_lookup = {engine}",
                after["version"]
            ),
            500,
        );
        for name in map_names::RETIRED {
            assert!(!pins.map(name).exists(), "{name} is still pinned");
        }
        assert_eq!(lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(), 0);
        assert_eq!(lab.ping(PEER_V6, FW_V6, PINGS).unwrap(), PINGS);
    }
}

/// A tmpfs mounted for one test, unmounted (lazily, so a still-open file cannot block it) on
/// drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(tag: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xdpwall-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Self(dir)
    }

    fn remount(&self, mode: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {mode}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The block trie's keys as CIDR strings, read from the daemon's pinned map.
fn kernel_block_v4(pin_dir: &std::path::Path) -> BTreeSet<String> {
    let path = PinLayout::new(pin_dir).map(map_names::BLOCK_V4);
    let data = MapData::from_pin(&path).expect("open the pinned block trie");
    let trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(Map::LpmTrie(data)).unwrap();
    trie.keys()
        .map(|k| k.expect("read a key"))
        .map(|k| format!("{}/{}", Ipv4Addr::from(k.data()), k.prefix_len()))
        .collect()
}

/// Adds distinct /32s until one is refused; returns the refused CIDR and the answer.
fn add_until_refused(daemon: &Daemon, first: u32) -> (String, u16, serde_json::Value) {
    for i in 0..2_000u32 {
        let cidr = format!("{}/32", Ipv4Addr::from(0xc612_0000 + first + i));
        let (code, body) = daemon
            .post_json("/v1/rules", &serde_json::json!({ "cidr": cidr }))
            .unwrap();
        if code != 201 {
            return (cidr, code, body);
        }
    }
    panic!("2,000 adds succeeded on a store that cannot grow");
}

/// The state directory fills up: writes answer 503 with the reason, the refused rule is neither
/// stored nor in the kernel, everything applied before stays, and writes work again once there
/// is room. A read-only state directory stops the start with the directory and the cause, while
/// the pins keep enforcing.
#[test]
fn a_full_or_read_only_state_dir_refuses_writes_and_keeps_what_was_applied() {
    require_privileges!();
    let lab = Lab::new("full").unwrap();
    let state = Tmpfs::mount("full-state", "8m");
    let (pin_dir, _) = Daemon::dirs("full");
    let daemon = Daemon::start_with_dirs(&lab, pin_dir, state.0.clone(), &block_config()).unwrap();
    let (code, kept) = daemon
        .post_json("/v1/rules", &serde_json::json!({"cidr": "198.51.100.7/32"}))
        .unwrap();
    assert_eq!(code, 201, "{kept}");

    // Fill the file system.
    let filler = state.0.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let (refused, code, problem) = add_until_refused(&daemon, 0);
    eprintln!("full state_dir: {refused} refused with {code}: {problem}");
    assert_eq!(code, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("rule store")),
        "the reason names the store: {problem}"
    );
    let stored = daemon.get_json("/v1/rules").unwrap().to_string();
    let kernel = kernel_block_v4(&daemon.pin_dir);
    assert!(!stored.contains(&refused), "the refused rule is not stored");
    assert!(
        !kernel.contains(&refused),
        "the refused rule is not in the kernel"
    );
    assert!(kernel.contains("198.51.100.7/32") && kernel.contains(BLOCKED_PREFIX_V4));
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "blocks stay"
    );
    std::fs::remove_file(&filler).unwrap();
    let (code, body) = daemon
        .post_json("/v1/rules", &serde_json::json!({ "cidr": refused }))
        .unwrap();
    assert_eq!(code, 201, "room again: {body}");

    // Read-only: a running daemon holds its database open, so the file system cannot be
    // remounted under it; a start on a read-only state_dir must fail clearly while the pins
    // keep enforcing.
    let mut daemon = daemon;
    daemon.kill9();
    // The harness's own log lives in the state directory; keep it writable elsewhere.
    daemon.log_path = std::env::temp_dir().join(format!("xdpwall-ro-{}.log", std::process::id()));
    state.remount("ro");
    let err = match daemon.spawn() {
        Ok(()) => panic!("the daemon started on a read-only state_dir"),
        Err(err) => format!("{err:#}"),
    };
    eprintln!(
        "read-only state_dir at start: {}",
        err.lines()
            .rev()
            .find(|l| l.contains("rror"))
            .unwrap_or(&err)
    );
    assert!(
        err.contains(&state.0.display().to_string()) && err.contains("Read-only"),
        "the start names the directory and the cause: {err}"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "blocks stay"
    );
    state.remount("rw");
    daemon
        .spawn()
        .expect("starts once the directory is writable");
    assert!(kernel_block_v4(&daemon.pin_dir).contains(&refused));
}
