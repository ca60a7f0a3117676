//! Ingress drop sampling of the XDP program through BPF_PROG_TEST_RUN (nothing attached, nothing
//! sent): `[events] drop_sample_rate` keeps its odds now that the program compares a random
//! number with a limit instead of dividing, samples wake the ring's reader once per
//! `DROP_WAKE_BYTES` of unread data instead of once per sample, and a smaller ring pinned by an
//! older version is replaced. Samples carry the 5-tuple the packet parser (the one the filter
//! and the egress flagger use) finds behind VLAN tags and IPv6 extension headers.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::Command,
};

use aya::{
    maps::{MapData, MapInfo, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use xdpwall::{datapath::Ipv4Lookup, events::Events, loader, rules::Action};
use xdpwall_shared::egress::{
    DROP_RECORD_BYTES, DROP_RING_BYTES, DROP_WAKE_BYTES, DropSample, map_names,
};
use xdpwall_tests::{
    frames, require_privileges,
    testrun::{TestProgram, XDP_DROP},
};

const BLOCKED_V4: &str = "198.51.100.77";
const DST_V4: &str = "203.0.113.1";

fn blocking_program(tag: &str) -> TestProgram {
    let mut program = TestProgram::load(tag).expect("load XDP program");
    program
        .set_rules(&[("198.51.100.0/24", Action::Block)])
        .expect("apply rules");
    program
}

/// Opens the drop-sampling maps the way the daemon does, with `[events] drop_sample_rate`.
fn sampling(program: &TestProgram, rate: u32) -> (Events, RingBuf<MapData>) {
    let events = Events::new(toml::from_str(&format!("drop_sample_rate = {rate}")).unwrap());
    let ring = events
        .open_drop_maps(&program.pins())
        .expect("open drop maps");
    (events, ring)
}

/// Runs `count` blocked frames through the program (one BPF_PROG_TEST_RUN call).
fn drop_frames(program: &mut TestProgram, count: u32) {
    let frame = frames::udp_v4(BLOCKED_V4, DST_V4);
    let opts = TestRunOptions {
        data_in: Some(&frame.bytes),
        repeat: count,
        ..TestRunOptions::default()
    };
    let (_, xdp) = program.parts();
    assert_eq!(xdp.test_run(opts).unwrap().return_value, XDP_DROP);
}

/// Kernel counters: (sampled, lost).
fn counters(events: &Events) -> (u64, u64) {
    let list = events.drops(0).unwrap();
    (list.sampled, list.lost)
}

/// Reads every sample the ring holds.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<DropSample> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert!(item.len() >= size_of::<DropSample>());
        // SAFETY: the program writes whole DropSamples (plain integers); read unaligned.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropSample>()) });
    }
    out
}

#[test]
fn sample_rate_keeps_one_in_n() {
    require_privileges!();
    let mut program = blocking_program("dsrate");

    let (events, mut ring) = sampling(&program, 0);
    drop_frames(&mut program, 1000);
    assert_eq!(counters(&events), (0, 0), "rate 0: off");
    assert!(drain(&mut ring).is_empty());

    let (events, mut ring) = sampling(&program, 1);
    drop_frames(&mut program, 1000);
    assert_eq!(counters(&events), (1000, 0), "rate 1: every drop");
    let samples = drain(&mut ring);
    assert_eq!(samples.len(), 1000);
    assert_eq!(samples[0].src[12..], [198, 51, 100, 77]);
    assert_eq!(samples[0].rule, 1);

    // 1 in 4 of 8000: 2000 expected, σ = 38.7; ±6σ.
    let (events, mut ring) = sampling(&program, 4);
    drop_frames(&mut program, 8000);
    let (sampled, lost) = counters(&events);
    let sampled = sampled - 1000;
    assert!(
        (1768..=2232).contains(&sampled),
        "1 in 4 of 8000: {sampled}"
    );
    assert_eq!(lost, 0);
    assert_eq!(drain(&mut ring).len() as u64, sampled);
}

/// A sample holds what the shared parser found: addresses (IPv4-mapped for IPv4), ports and
/// protocol behind VLAN tags, IPv4 options and IPv6 extension headers. A frame cut inside its
/// headers is malformed (passed), never sampled.
#[test]
fn samples_carry_the_parsed_five_tuple() {
    require_privileges!();
    let mut program = TestProgram::load("dstuple").expect("load XDP program");
    program
        .set_rules(&[
            ("198.51.100.0/24", Action::Block),
            ("2001:db8:bad::/48", Action::Block),
        ])
        .expect("apply rules");
    let (_events, mut ring) = sampling(&program, 1);
    let blocked_v6 = "2001:db8:bad::5";
    let dst_v6 = "2001:db8:1::1";
    let cases = [
        (frames::udp_v4(BLOCKED_V4, DST_V4), 4u8, 1u32),
        (frames::udp_v4_single_vlan(BLOCKED_V4, DST_V4), 4, 1),
        (frames::udp_v4_with_options(BLOCKED_V4, DST_V4), 4, 1),
        (frames::udp_v6(blocked_v6, dst_v6), 6, 2),
        (frames::udp_v6_double_vlan(blocked_v6, dst_v6), 6, 2),
        (frames::udp_v6_with_extensions(blocked_v6, dst_v6), 6, 2),
    ];
    let mapped = |s: &str| match s.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    for (frame, family, rule) in &cases {
        assert_eq!(program.run(&frame.bytes).unwrap(), XDP_DROP);
        // Cut inside the headers: malformed, passed, no sample.
        assert_ne!(
            program.run(&frame.bytes[..frame.headers_len - 1]).unwrap(),
            XDP_DROP
        );
        let samples = drain(&mut ring);
        assert_eq!(samples.len(), 1, "one sample per dropped frame");
        let s = samples[0];
        let (src, dst) = if *family == 4 {
            (BLOCKED_V4, DST_V4)
        } else {
            (blocked_v6, dst_v6)
        };
        assert_eq!((s.src, s.dst), (mapped(src), mapped(dst)));
        assert_eq!((s.sport, s.dport, s.proto), (40000, 53, 17));
        assert_eq!((s.family, s.rule), (*family, *rule));
        assert_eq!(s.len as usize, frame.bytes.len());
    }
}

/// An epoll instance watching one fd for readability (level-triggered).
struct Readable(OwnedFd);

impl Readable {
    fn new(fd: RawFd) -> io::Result<Self> {
        // SAFETY: plain syscalls; the new fd is owned from here on.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a valid fd just returned.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; the kernel copies the event.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(epoll))
    }

    /// Whether the fd was reported readable (the ring buffer's reader woken) within `ms`.
    fn woken_within(&self, ms: i32) -> bool {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut event, 1, ms) };
        assert!(n >= 0, "epoll_wait: {}", io::Error::last_os_error());
        n == 1
    }
}

#[test]
fn samples_wake_the_reader_once_per_wake_step() {
    require_privileges!();
    let mut program = blocking_program("dswake");
    let (events, mut ring) = sampling(&program, 1);
    assert!(drain(&mut ring).is_empty());
    // Registered on an empty ring: readable only once the kernel wakes its waiters.
    let readable = Readable::new(ring.as_raw_fd()).unwrap();

    // Up to the step: samples go in without waking anyone.
    let quiet = DROP_WAKE_BYTES / DROP_RECORD_BYTES;
    drop_frames(&mut program, 1);
    assert!(
        !readable.woken_within(200),
        "the first sample into an empty ring woke the reader"
    );
    drop_frames(&mut program, quiet - 1);
    assert!(
        !readable.woken_within(200),
        "{quiet} samples woke the reader"
    );
    // The sample that takes the unread data across the step wakes it.
    drop_frames(&mut program, 1);
    assert!(
        readable.woken_within(2000),
        "sample {} did not wake the reader",
        quiet + 1
    );
    assert_eq!(counters(&events), (u64::from(quiet) + 1, 0));
    assert_eq!(drain(&mut ring).len() as u32, quiet + 1);
}

#[test]
fn a_smaller_pinned_drop_ring_is_replaced() {
    require_privileges!();
    let program = TestProgram::load("dsring").unwrap();
    let pins = program.pins();
    let path = pins.map(map_names::DROP_RING);
    let ring = MapInfo::from_pin(&path).unwrap();
    assert_eq!(ring.max_entries(), DROP_RING_BYTES);
    // A ring of the right size is reused.
    loader::load_object(&pins, Ipv4Lookup::Lpm).unwrap();
    assert_eq!(MapInfo::from_pin(&path).unwrap().id(), ring.id());
    // What versions before 1 MiB drop rings pinned.
    std::fs::remove_file(&path).unwrap();
    let old_size = (256 * 1024).to_string();
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&path)
        .args([
            "type", "ringbuf", "key", "0", "value", "0", "entries", &old_size,
        ])
        .args(["name", map_names::DROP_RING])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(MapInfo::from_pin(&path).unwrap().max_entries(), 256 * 1024);
    loader::load_object(&pins, Ipv4Lookup::Lpm).unwrap();
    assert_eq!(
        MapInfo::from_pin(&path).unwrap().max_entries(),
        DROP_RING_BYTES,
        "the 256 KiB ring was kept"
    );
}
