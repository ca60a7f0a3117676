//! SYN flood in the veth lab, with real traffic: 16,384 spoofed sources send SYNs at full rate
//! (an AF_PACKET sender in the peer namespace) to a listener with a backlog of 8 in the firewall
//! namespace, while a real TCP client connects and exchanges data.
//!
//! With `[syn_protection]` on (and `net.ipv4.tcp_syncookies = 2`), the SYNs are answered from
//! XDP: the client connects, the listener's queues never overflow (`TcpExtListenOverflows` and
//! `TcpExtListenDrops` stay 0) and the kernel sends no cookie of its own for them (`TcpExtSyncookiesSent`
//! about 0) but validates the client's ACK (`TcpExtSyncookiesRecv`). With
//! `tcp_syncookies = 1`, XDP takes over once the listener's SYN queue is full. With it off and
//! `tcp_syncookies = 0` (the backlog is all there is), the SYN queue overflows.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::FromRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use etherparse::{PacketBuilder, TcpOptionElement};
use xdpwall_tests::{
    daemon::Daemon,
    lab::{FW_V4, Lab, PEER_V4, in_netns, run},
    require_privileges,
};

const PORT: u16 = 8080;
const SOURCES: u32 = 16_384;
/// Where the spoofed sources are (benchmark range, RFC 2544).
const SPOOFED: &str = "198.18.0.0/18";
const BACKLOG: i32 = 8;
/// How long the flood lasts at most, and how many frames it sends at most.
const FLOOD_FOR: Duration = Duration::from_secs(4);
const FLOOD_MAX_FRAMES: u64 = 4_000_000;

/// Absolute TCP counters of the firewall namespace.
fn nstat(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.fw_ns,
            "nstat",
            "-asz",
            "TcpExtListenOverflows",
            "TcpExtListenDrops",
            "TcpExtSyncookiesSent",
            "TcpExtSyncookiesRecv",
            "TcpExtTCPReqQFullDrop",
        ],
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let value = fields.next()?.parse().ok()?;
            Some((name.to_string(), value))
        })
        .collect()
}

fn mac(ns: &str, ifname: &str) -> [u8; 6] {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{ifname}/address"),
        ],
    )
    .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// One SYN from each spoofed source 198.18.0.0/18 (benchmark range; nothing answers for it).
fn flood_frames(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let dst: Ipv4Addr = FW_V4.parse().unwrap();
    (0..SOURCES)
        .map(|i| {
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
            let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
                .ipv4(src.octets(), dst.octets(), 64)
                .tcp(
                    1024 + (i % 60_000) as u16,
                    PORT,
                    i.wrapping_mul(2_654_435_761),
                    64240,
                )
                .syn()
                .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
                .unwrap();
            let mut frame = Vec::new();
            builder.write(&mut frame, &[]).unwrap();
            frame
        })
        .collect()
}

/// Sends `frames` round after round out of `ifname` (in the namespace the calling thread is
/// in) until `stop`, the time limit or the frame limit; the frames sent.
fn send_flood(ifname: &str, frames: &[Vec<u8>], stop: &AtomicBool) -> u64 {
    // SAFETY: plain socket calls on a socket this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let name = std::ffi::CString::new(ifname).unwrap();
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let started = Instant::now();
        let mut sent = 0u64;
        'flood: while sent < FLOOD_MAX_FRAMES {
            for frame in frames {
                if libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) > 0 {
                    sent += 1;
                }
            }
            if stop.load(Ordering::Relaxed) || started.elapsed() > FLOOD_FOR {
                break 'flood;
            }
        }
        libc::close(fd);
        sent
    }
}

/// A listener on [`PORT`] with a backlog of [`BACKLOG`], created in the firewall namespace.
fn small_listener(lab: &Lab) -> TcpListener {
    in_netns(&lab.fw_netns_path(), || {
        // SAFETY: plain socket calls; the fd goes to the TcpListener that owns it from then on.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as u16;
            addr.sin_port = PORT.to_be();
            let rc = libc::bind(
                fd,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            assert_eq!(libc::listen(fd, BACKLOG), 0);
            TcpListener::from_raw_fd(fd)
        }
    })
    .unwrap()
}

/// Accepts connections and echoes what each sends, until `stop`.
fn echo(listener: TcpListener, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut served = 0;
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    if let Ok(n) = stream.read(&mut buf) {
                        let _ = stream.write_all(&buf[..n]);
                        served += 1;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    })
}

/// What one flood did.
struct Outcome {
    sent: u64,
    rate: f64,
    client: Result<Duration, String>,
    counters: std::collections::BTreeMap<String, u64>,
}

/// Floods the lab's listener while a real client connects from [`PEER_V4`].
fn flood(lab: &Lab) -> Outcome {
    // The firewall's answers to the spoofed sources go back to the peer namespace (which drops
    // them: they are not its addresses and it forwards nothing), as they would go to a router.
    // Without a route the stack would drop every SYN it gets for want of one, flood or not.
    run(
        "ip",
        &["-n", &lab.fw_ns, "route", "add", SPOOFED, "via", PEER_V4],
    )
    .unwrap();
    let listener = small_listener(lab);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo(listener, stop.clone());
    let frames = flood_frames(mac(&lab.peer_ns, &lab.peer_if), mac(&lab.fw_ns, &lab.fw_if));
    let flood_stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (ifname, stop) = (lab.peer_if.clone(), flood_stop.clone());
        let path = format!("/run/netns/{}", lab.peer_ns);
        std::thread::spawn(move || {
            let started = Instant::now();
            let sent = in_netns(&path, move || send_flood(&ifname, &frames, &stop)).unwrap();
            (sent, started.elapsed())
        })
    };
    // The flood is under way when the client tries.
    std::thread::sleep(Duration::from_millis(500));
    let client = in_netns(&format!("/run/netns/{}", lab.peer_ns), || {
        let started = Instant::now();
        let server: SocketAddr = format!("{FW_V4}:{PORT}").parse().unwrap();
        let result = (|| -> std::io::Result<()> {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"hello through the flood")?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf)?;
            assert_eq!(&buf[..n], b"hello through the flood");
            Ok(())
        })();
        result
            .map(|()| started.elapsed())
            .map_err(|e| e.to_string())
    })
    .unwrap();
    let (sent, took) = sender.join().unwrap();
    flood_stop.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    Outcome {
        sent,
        rate: sent as f64 / took.as_secs_f64(),
        client,
        counters: nstat(lab),
    }
}

fn syncookies(lab: &Lab, value: u32) {
    run(
        "ip",
        &[
            "netns",
            "exec",
            &lab.fw_ns,
            "sysctl",
            "-qw",
            &format!("net.ipv4.tcp_syncookies={value}"),
        ],
    )
    .unwrap();
}

/// Whether this kernel can run the stage; prints why not.
fn kernel_has_syn_cookies() -> bool {
    if xdpwall::syn::helpers_available() == Some(false) {
        eprintln!(
            "SKIP: this kernel lacks bpf_skc_lookup_tcp / bpf_tcp_gen_syncookie for XDP (Linux \
             5.3), which SYN-flood protection needs"
        );
        return false;
    }
    true
}

/// The daemon protecting `PORT` with SYN cookies (generic XDP on the lab's veth).
fn start_protected(lab: &Lab, tag: &str) -> Daemon {
    let config =
        format!("xdp_mode = \"generic\"\n[syn_protection]\nenabled = true\nports = [{PORT}]\n");
    Daemon::start(lab, tag, &config).unwrap()
}

/// The listener's queues never overflowed during the flood.
fn assert_backlog_never_overflowed(outcome: &Outcome) {
    for counter in ["TcpExtListenOverflows", "TcpExtListenDrops"] {
        assert_eq!(
            outcome.counters[counter], 0,
            "{counter}: {:?}",
            outcome.counters
        );
    }
}

#[test]
fn syn_flood_with_protection_the_client_connects_and_the_backlog_never_overflows() {
    require_privileges!();
    if !kernel_has_syn_cookies() {
        return;
    }
    let lab = Lab::new("synon").unwrap();
    syncookies(&lab, 2);
    let daemon = start_protected(&lab, "synon");
    let outcome = flood(&lab);
    let status = daemon.get_json("/v1/status").unwrap();
    let syn = &status["syn_protection"];
    eprintln!(
        "protection on: {} SYNs sent ({:.0}/s), client {:?}, {:?}, {syn}",
        outcome.sent, outcome.rate, outcome.client, outcome.counters
    );
    assert!(
        outcome.client.is_ok(),
        "the client connects: {:?}",
        outcome.client
    );
    assert!(outcome.sent >= u64::from(SOURCES), "every source sent");
    assert_backlog_never_overflowed(&outcome);
    // With tcp_syncookies = 2 the stack answers every SYN it gets with a cookie; it got only
    // those of the test's own HTTP calls to the daemon (loopback), not the flood's.
    assert!(
        outcome.counters["TcpExtSyncookiesSent"] < 1000,
        "XDP answered the flood, not the stack: {:?}",
        outcome.counters
    );
    assert!(
        outcome.counters["TcpExtSyncookiesRecv"] >= 1,
        "the stack validated the client's cookie ACK: {:?}",
        outcome.counters
    );
    assert_eq!(syn["enabled"], true, "{status}");
    assert_eq!(syn["ports"], serde_json::json!([PORT]), "{status}");
    assert!(syn["cookies"].as_u64().unwrap() > outcome.sent, "{status}");
    assert_eq!(syn["passed"], 0, "{status}");
    let metrics = daemon.http("GET", "/metrics", None).unwrap().1;
    assert!(metrics.contains("xdpwall_syn_cookies_total "), "{metrics}");
}

#[test]
fn syn_flood_with_protection_and_tcp_syncookies_1_xdp_takes_over_when_the_queue_is_full() {
    require_privileges!();
    if !kernel_has_syn_cookies() {
        return;
    }
    let lab = Lab::new("syn1").unwrap();
    syncookies(&lab, 1);
    let daemon = start_protected(&lab, "syn1");
    let outcome = flood(&lab);
    let status = daemon.get_json("/v1/status").unwrap();
    let syn = &status["syn_protection"];
    eprintln!(
        "protection on, tcp_syncookies = 1: {} SYNs sent ({:.0}/s), client {:?}, {:?}, {syn}",
        outcome.sent, outcome.rate, outcome.client, outcome.counters
    );
    assert!(
        outcome.client.is_ok(),
        "the client connects: {:?}",
        outcome.client
    );
    assert_backlog_never_overflowed(&outcome);
    // Until the SYN queue is full the stack takes the SYNs itself (the stage passes them);
    // from then on XDP answers.
    let passed = syn["passed"].as_u64().unwrap();
    assert!(passed >= u64::from(BACKLOG as u32), "{status}");
    assert!(passed < outcome.sent / 10, "{status}");
    assert!(
        syn["cookies"].as_u64().unwrap() > outcome.sent / 2,
        "{status}"
    );
}

/// Conntrack never sees the SYNs XDP answers; with its default `nf_conntrack_tcp_loose = 1` it
/// picks the connection up from the client's ACK, so a rule dropping `INVALID` packets lets it
/// through. No netfilter rule is needed, and this common one does not get in the way.
#[test]
fn syn_protection_works_with_a_conntrack_invalid_drop_rule() {
    require_privileges!();
    if !kernel_has_syn_cookies() {
        return;
    }
    let lab = Lab::new("synct").unwrap();
    syncookies(&lab, 2);
    let rule = [
        "netns",
        "exec",
        &lab.fw_ns,
        "iptables",
        "-A",
        "INPUT",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ];
    if let Err(e) = run("ip", &rule) {
        eprintln!("SKIP: cannot add an iptables conntrack rule here: {e}");
        return;
    }
    // Counts what conntrack made of the client's packets (no target: the packet goes on).
    let port = PORT.to_string();
    let seen = [
        "netns",
        "exec",
        &lab.fw_ns,
        "iptables",
        "-I",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        &port,
        "-m",
        "conntrack",
        "--ctstate",
        "NEW,ESTABLISHED",
    ];
    run("ip", &seen).unwrap();
    let _daemon = start_protected(&lab, "synct");
    let outcome = flood(&lab);
    let rules = run(
        "ip",
        &[
            "netns", "exec", &lab.fw_ns, "iptables", "-L", "INPUT", "-nv",
        ],
    )
    .unwrap();
    eprintln!(
        "protection on, conntrack INVALID dropped: client {:?}, {:?}\n{}",
        outcome.client,
        outcome.counters,
        String::from_utf8_lossy(&rules.stdout)
    );
    assert!(
        outcome.client.is_ok(),
        "the client connects: {:?}",
        outcome.client
    );
    assert_eq!(
        outcome.counters["TcpExtListenDrops"], 0,
        "{:?}",
        outcome.counters
    );
    // The client's ACK and data went through conntrack (NEW from the ACK, then ESTABLISHED).
    let listed = String::from_utf8_lossy(&rules.stdout).into_owned();
    let tracked: u64 = listed
        .lines()
        .find(|l| l.contains("ctstate NEW,ESTABLISHED"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(tracked >= 2, "{listed}");
}

#[test]
fn syn_flood_without_protection_overflows_the_backlog() {
    require_privileges!();
    let lab = Lab::new("synoff").unwrap();
    syncookies(&lab, 0);
    let _daemon = Daemon::start(&lab, "synoff", "xdp_mode = \"generic\"\n").unwrap();
    let outcome = flood(&lab);
    eprintln!(
        "protection off: {} SYNs sent ({:.0}/s), client {:?}, {:?}",
        outcome.sent, outcome.rate, outcome.client, outcome.counters
    );
    assert!(
        outcome.counters["TcpExtListenDrops"] > u64::from(SOURCES),
        "the SYN queue overflowed: {:?}",
        outcome.counters
    );
    assert!(
        outcome.counters["TcpExtTCPReqQFullDrop"] > u64::from(SOURCES),
        "dropped because the SYN queue was full: {:?}",
        outcome.counters
    );
}
