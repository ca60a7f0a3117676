//! The scoped-rule stage (`xdpwall_scoped`): rules scoped to a protocol or ports, `limit`
//! rules and rules in monitor mode (`xdpwall_shared::policy`).
//!
//! The ingress program tail-calls this stage for packets its address engines passed (not
//! allowlisted, not blocked), only while scoped rules exist; allowlisted sources never get here.
//! It parses the frame again (a tail call carries no state but the frame), finds the source's
//! policy set with one LPM lookup, and tries the set's rules in order. It counts the packet's
//! per-interface verdict itself, and hands a packet it passes on to the SYN stage when that is
//! on.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, lpm_trie::Key},
    programs::XdpContext,
};
use xdp_ebpf::{
    parse::{self, Addr, Frame, Packet, Parsed},
    same,
};
use xdpwall_shared::{
    DatapathConfig, lookup, map_names,
    policy::{BucketKey, LIMIT_BUCKETS, POLICY_SET_RULES, POLICY_SETS, PolicySet, flags, gcra},
    stages, verdict,
};

use crate::{CONFIG, count_rule, count_verdict, drops};

#[map(name = "XW_SCOPED_V4")]
static SCOPED_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(POLICY_SETS, 0);
#[map(name = "XW_SCOPED_V6")]
static SCOPED_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(POLICY_SETS, 0);
#[map(name = "XW_POLICIES")]
static POLICIES: Array<PolicySet> = Array::pinned(POLICY_SETS, 0);
// One LRU list per CPU: a flood of new sources on one CPU evicts that CPU's least recently
// used buckets without taking a lock the other CPUs wait on.
#[map(name = "XW_LIMITS")]
static LIMITS: LruHashMap<BucketKey, u64> = LruHashMap::pinned(LIMIT_BUCKETS, BPF_F_NO_COMMON_LRU);

const _: () = assert!(same(map_names::SCOPED_V4, "XW_SCOPED_V4"));
const _: () = assert!(same(map_names::SCOPED_V6, "XW_SCOPED_V6"));
const _: () = assert!(same(map_names::POLICIES, "XW_POLICIES"));
const _: () = assert!(same(map_names::LIMITS, "XW_LIMITS"));
const _: () = assert!(same(
    stages::PROGRAMS[stages::SCOPED as usize],
    "xdpwall_scoped"
));

#[xdp]
pub fn xdpwall_scoped(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let (verdict, action) = decide(&ctx, &config);
    if verdict == verdict::PASS {
        crate::next_stage(&ctx, stages::SYN, lookup::SYN);
    }
    count_verdict(ifindex, verdict);
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext, config: &DatapathConfig) -> (u32, u32) {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // The ingress program parsed this frame already and found an IP packet in it.
    let Parsed::Ip(packet) = parse::parse(frame) else {
        return (verdict::PASS, xdp_action::XDP_PASS);
    };
    let Some(set) = policy_set(&packet) else {
        return (verdict::PASS, xdp_action::XDP_PASS);
    };
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    // The rule that drops the packet, else the first that would in monitor mode. Only ids are
    // carried out of the loop (and the frame is re-walked once, by the sampler, after it): the
    // verifier walks each of the unrolled rounds, so what a round leaves behind must be small.
    let mut dropping = NO_RULE;
    let mut monitoring = NO_RULE;
    let len = set.len as usize;
    for i in 0..POLICY_SET_RULES {
        if i >= len {
            break;
        }
        let rule = &set.rules[i];
        if !rule.matches(packet.proto, packet.sport, packet.dport) {
            continue;
        }
        if rule.flags & flags::LIMIT != 0 && take_token(rule, &packet) {
            continue;
        }
        count_rule(rule.rule_id, bytes);
        if rule.flags & flags::MONITOR == 0 && config.monitor == 0 {
            dropping = rule.rule_id;
            break;
        }
        // Counted for this rule; later rules still decide.
        if monitoring == NO_RULE {
            monitoring = rule.rule_id;
        }
    }
    let (rule, decision) = if dropping != NO_RULE {
        (dropping, (verdict::DROPPED, xdp_action::XDP_DROP))
    } else if monitoring != NO_RULE {
        (monitoring, (verdict::WOULD_DROP, xdp_action::XDP_PASS))
    } else {
        return (verdict::PASS, xdp_action::XDP_PASS);
    };
    drops::sample(ctx, rule, decision.0);
    decision
}

/// No rule: rule ids start at 1.
const NO_RULE: u32 = 0;

/// The policy set of the longest scoped prefix covering the source.
#[inline(always)]
fn policy_set(packet: &Packet) -> Option<&'static PolicySet> {
    let index = match packet.source() {
        Addr::V4(addr) => *SCOPED_V4.get(&Key::new(32, addr))?,
        Addr::V6(addr) => *SCOPED_V6.get(&Key::new(128, addr))?,
    };
    POLICIES.get(index)
}

/// Whether the rule's bucket for this packet has room, taking from it if so.
///
/// Buckets are shared by all CPUs, not per-CPU: a per-CPU bucket would let a source whose
/// packets are spread over N receive queues through at N times its rate. The update is not
/// locked: the bucket moves on with an atomic add, so concurrent packets of one source never
/// lose each other's step; only the restart of an idle bucket (its time in the past) is a
/// plain store, where two CPUs racing can each pass one packet more than the burst.
#[inline(always)]
fn take_token(rule: &xdpwall_shared::policy::PolicyRule, packet: &Packet) -> bool {
    let mut key = BucketKey {
        rule_id: rule.rule_id,
        family: 0,
        prefix: [0; 8],
    };
    if rule.flags & flags::PER_RULE == 0 {
        match packet.source() {
            Addr::V4(a) => {
                key.family = 4;
                key.prefix = [a[0], a[1], a[2], a[3], 0, 0, 0, 0];
            }
            Addr::V6(a) => {
                key.family = 6;
                key.prefix = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
            }
        }
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(tat) = LIMITS.get_ptr_mut(&key) else {
        // A new bucket: this packet conforms (burst >= 1).
        let _ = LIMITS.insert(&key, &(now + rule.interval_ns), 0);
        return true;
    };
    // SAFETY: an LRU hash value pointer is valid for the duration of the program run.
    let current = unsafe { core::ptr::read_volatile(tat) };
    match gcra(current, now, rule.interval_ns, rule.tolerance_ns) {
        None => false,
        // An idle bucket restarts from now: `next` is `now + interval_ns`.
        Some(next) if current <= now => {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(tat, next) };
            true
        }
        Some(_) => {
            // SAFETY: as above; the value is a u64, 8-byte aligned. The BPF target has no
            // atomic read-modify-write in `core`; this is the instruction `__sync_fetch_and_add`
            // compiles to (BPF_XADD, every kernel since 3.18).
            #[cfg(target_arch = "bpf")]
            unsafe {
                core::arch::asm!(
                    "lock *(u64 *)({tat} + 0) += {step}",
                    tat = in(reg) tat,
                    step = in(reg) rule.interval_ns,
                )
            };
            // Host builds (clippy, docs) never run this.
            #[cfg(not(target_arch = "bpf"))]
            unsafe {
                *tat += rule.interval_ns
            };
            true
        }
    }
}
