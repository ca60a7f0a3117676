//! Ingress drop sampling: 1 in N dropped (or would-drop) packets go to a ring buffer with their
//! 5-tuple and rule, for the controller's `GET /v1/drops` and logs. Only the drop path calls
//! this; a full ring buffer loses the sample (counted), never changes the verdict.
//!
//! Kept cheap for the drop path: the random draw is a per-CPU xorshift step (no helper call),
//! the rate is stored as a limit the draw is compared with (no division), and a sample wakes
//! the reader only when it takes the ring's unread data across a multiple of
//! `DROP_WAKE_BYTES` (a wake-up is an interrupt, a VM exit under a hypervisor); the controller
//! drains the ring on a timer besides.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use xdp_ebpf::{
    parse::{self, Frame, Parsed},
    same,
};
use xdpwall_shared::egress::{
    DROP_RING_BYTES, DropSample, drop_counter, drop_rng_next, drop_sample_wakes, drop_sampled,
    map_names,
};

#[map(name = "XW_DROP_RING")]
static DROP_RING: RingBuf = RingBuf::pinned(DROP_RING_BYTES, 0);
#[map(name = "XW_DROP_SAMPLE")]
static DROP_SAMPLE: Array<u32> = Array::pinned(1, 0);
#[map(name = "XW_DROP_COUNT")]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(drop_counter::COUNT, 0);
#[map(name = "XW_DROP_RNG")]
static DROP_RNG: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const _: () = assert!(same(map_names::DROP_RING, "XW_DROP_RING"));
const _: () = assert!(same(map_names::DROP_SAMPLE, "XW_DROP_SAMPLE"));
const _: () = assert!(same(map_names::DROP_COUNTERS, "XW_DROP_COUNT"));
const _: () = assert!(same(map_names::DROP_RNG, "XW_DROP_RNG"));

#[inline(always)]
pub fn sample(ctx: &XdpContext, rule: u32, verdict: u32) {
    let limit = DROP_SAMPLE.get(0).copied().unwrap_or(0);
    if limit == 0 {
        return;
    }
    let Some(state) = DROP_RNG.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while the program runs.
    let state = unsafe { &mut *state };
    if *state == 0 {
        // SAFETY: a helper without arguments. Once per CPU; `| 1`: xorshift needs non-zero.
        *state = (u64::from(unsafe { bpf_get_prandom_u32() }) << 32) | 1;
    }
    *state = drop_rng_next(*state);
    if !drop_sampled((*state >> 32) as u32, limit) {
        return;
    }
    // The walk again, only for a sampled drop, from fresh packet pointers: carrying the ingress
    // walk's packet (its offsets, or pointers with the range it checked) through the lookups
    // makes the verifier walk the lookups once per header layout, over its 1M-instruction limit.
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Parsed::Ip(packet) = parse::parse(frame) else {
        return;
    };
    if packet.tcp_cut {
        return;
    }
    let sample = DropSample {
        src: packet.source().mapped(),
        dst: packet.destination().mapped(),
        sport: packet.sport,
        dport: packet.dport,
        proto: packet.proto,
        family: packet.family as u8,
        verdict: verdict as u8,
        _pad: 0,
        rule,
        ifindex: ctx.ingress_ifindex() as u32,
        len: (frame.end - frame.start) as u32,
        _pad2: 0,
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    let wake = if drop_sample_wakes(DROP_RING.query(u64::from(BPF_RB_AVAIL_DATA))) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let slot = match DROP_RING.output::<DropSample>(&sample, u64::from(wake)) {
        Ok(()) => drop_counter::SAMPLED,
        Err(_) => drop_counter::LOST,
    };
    if let Some(c) = DROP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}
