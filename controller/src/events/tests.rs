//! Unit tests of the datapath events: recent flows and their labels, the log limiter, drop
//! sampling, the monotonic clock.

use super::*;

fn key(dport: u16) -> FlowKey {
    FlowKey {
        src: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 1],
        dst: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 2],
        sport: 40000,
        dport,
        proto: 17,
        family: 4,
        _pad: [0; 2],
    }
}

fn event(dport: u16) -> FlowEvent {
    FlowEvent {
        key: key(dport),
        rule: 7,
        reason: reason::WATCH as u16,
        action: action::FLAG as u16,
        ts_ns: 1,
        bytes: 60,
        ifindex: 3,
    }
}

#[test]
fn flows_are_bounded_and_labelled() {
    let events = Events::new(toml::from_str("recent = 2\nlog_per_second = 1").unwrap());
    for port in [1000, 1001, 1002] {
        events.on_flow(event(port));
    }
    let list = events.flows(10, |_| None).unwrap();
    assert_eq!(list.events_received, 3);
    assert_eq!(list.flows.len(), 2, "bounded by recent = 2");
    let flow = &list.flows[0];
    assert_eq!(flow.src, "203.0.113.1");
    assert_eq!(flow.dst, "203.0.113.2");
    assert_eq!(flow.proto, "udp");
    assert_eq!(flow.reason, "watch");
    assert_eq!(flow.rule, "7");
    assert_eq!(flow.action, "flag");
    let list = events
        .flows(10, |id| (id == 7).then(|| "c2".to_string()))
        .unwrap();
    assert_eq!(list.flows[0].rule, "feed:c2");
}

#[test]
fn labels_and_names() {
    assert_eq!(rule_label(reason::PORT, 23, None), "port:23");
    assert_eq!(rule_label(reason::SCAN, 0, None), "scan");
    assert_eq!(rule_label(reason::WATCH, 5, None), "5");
    assert_eq!(proto_name(6), "tcp");
    assert_eq!(
        address(key(1).dst, 6).to_string(),
        "::ffff:203.0.113.2",
        "family 6 keeps the 16 bytes"
    );
}

#[test]
fn log_limiter_counts_what_it_suppresses() {
    let mut limiter = LogLimiter::new(2);
    assert!(limiter.allow("t"));
    assert!(limiter.allow("t"));
    assert!(!limiter.allow("t"));
    assert_eq!(limiter.suppressed, 1);
}

#[test]
fn section_defaults_and_validation() {
    let section = EventsSection::default();
    assert_eq!(section.drop_sample_rate, DEFAULT_DROP_SAMPLE_RATE);
    assert_eq!(section.recent, DEFAULT_RECENT);
    let bad: EventsSection = toml::from_str("recent = 0").unwrap();
    assert_eq!(bad.validate().unwrap_err().0, "events.recent");
}

#[test]
fn sample_limit_keeps_the_odds_of_one_in_n() {
    use xdpwall_shared::egress::drop_sampled;
    let off = drop_sample_limit(0);
    assert!(
        !drop_sampled(0, off) && !drop_sampled(u32::MAX, off),
        "0 = off"
    );
    let every = drop_sample_limit(1);
    assert!(
        drop_sampled(0, every) && drop_sampled(u32::MAX, every),
        "1 = every drop"
    );
    for rate in [
        2,
        3,
        7,
        100,
        1000,
        65_537,
        u32::MAX / 2,
        u32::MAX - 1,
        u32::MAX,
    ] {
        let limit = drop_sample_limit(rate);
        // The random values `random % rate == 0` sampled, as many as `random <= limit` does.
        let by_modulo = u64::from(u32::MAX) / u64::from(rate) + 1;
        assert_eq!(u64::from(limit) + 1, by_modulo, "rate {rate}");
        assert!(drop_sampled(limit, limit) && !drop_sampled(limit + 1, limit));
    }
    assert_eq!(drop_sample_limit(2), u32::MAX / 2, "exactly half");
}

#[test]
fn per_cpu_draws_sample_one_in_n() {
    use xdpwall_shared::egress::{drop_rng_next, drop_sampled};
    // The program's draw: xorshift64 from a seed as it makes one, high half vs the limit.
    let limit = drop_sample_limit(100);
    let mut state = (0x8bad_f00d_u64 << 32) | 1;
    let (mut sampled, mut longest_gap, mut gap) = (0u32, 0u32, 0u32);
    for _ in 0..1_000_000 {
        state = drop_rng_next(state);
        assert_ne!(state, 0);
        gap += 1;
        if drop_sampled((state >> 32) as u32, limit) {
            sampled += 1;
            longest_gap = longest_gap.max(gap);
            gap = 0;
        }
    }
    // 10,000 expected, σ = 99.5: ±6σ. Gaps are geometric: some far above 100.
    assert!((9_400..=10_600).contains(&sampled), "{sampled}");
    assert!(longest_gap > 500, "{longest_gap}");
}

#[test]
fn drop_samples_wake_the_reader_once_per_wake_step() {
    use xdpwall_shared::egress::{
        DROP_RECORD_BYTES, DROP_RING_BYTES, DROP_WAKE_BYTES, drop_sample_wakes,
    };
    let record = u64::from(DROP_RECORD_BYTES);
    let step = u64::from(DROP_WAKE_BYTES);
    // Samples written one after the other into an empty ring until it is full.
    let fill = u64::from(DROP_RING_BYTES) / record;
    let wakes: Vec<u64> = (0..fill)
        .filter(|i| drop_sample_wakes(i * record))
        .collect();
    assert_eq!(wakes.len(), 7, "first: {:?}", &wakes[..wakes.len().min(8)]);
    assert_eq!(
        wakes[0],
        step / record,
        "the 1821st sample wakes the reader"
    );
    assert!(
        !drop_sample_wakes(0),
        "the first sample into an empty ring does not"
    );
    // Whatever the reader left unread: one wake-up per multiple of the step crossed.
    for start in [0, 5000, step - 1, step, 3 * step + 71] {
        let count = 4 * step / record;
        let woken = (0..count)
            .filter(|i| drop_sample_wakes(start + i * record))
            .count() as u64;
        let crossed = (start + count * record) / step - start / step;
        assert_eq!(woken, crossed, "unread {start}");
    }
}

#[test]
fn monotonic_times_map_to_now() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((unix_millis(mono_ns) - now_ms).abs() < 1000);
}
