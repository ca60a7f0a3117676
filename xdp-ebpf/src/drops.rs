//! Ingress drop sampling: 1 in N dropped (or would-drop) packets go to a ring buffer with their
//! 5-tuple and rule, for the controller's `GET /v1/drops` and logs. Only the drop path calls
//! this; a full ring buffer loses the sample (counted), never changes the verdict.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use xdp_ebpf::{
    flow::{self, Frame},
    same,
};
use xdpwall_shared::egress::{DropSample, RING_BYTES, drop_counter, map_names};

#[map(name = "XW_DROP_RING")]
static DROP_RING: RingBuf = RingBuf::pinned(RING_BYTES, 0);
#[map(name = "XW_DROP_SAMPLE")]
static DROP_SAMPLE: Array<u32> = Array::pinned(1, 0);
#[map(name = "XW_DROP_COUNT")]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(drop_counter::COUNT, 0);

const _: () = assert!(same(map_names::DROP_RING, "XW_DROP_RING"));
const _: () = assert!(same(map_names::DROP_SAMPLE, "XW_DROP_SAMPLE"));
const _: () = assert!(same(map_names::DROP_COUNTERS, "XW_DROP_COUNT"));

#[inline(always)]
pub fn sample(ctx: &XdpContext, rule: u32, verdict: u32) {
    let rate = DROP_SAMPLE.get(0).copied().unwrap_or(0);
    if rate == 0 {
        return;
    }
    // SAFETY: helpers without arguments.
    if rate > 1 && unsafe { bpf_get_prandom_u32() } % rate != 0 {
        return;
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(parsed) = flow::parse(frame) else {
        return;
    };
    let key = parsed.key;
    let sample = DropSample {
        src: key.src,
        dst: key.dst,
        sport: key.sport,
        dport: key.dport,
        proto: key.proto,
        family: key.family,
        verdict: verdict as u8,
        _pad: 0,
        rule,
        ifindex: ctx.ingress_ifindex() as u32,
        len: (ctx.data_end() - ctx.data()) as u32,
        _pad2: 0,
        // SAFETY: a helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    let slot = match DROP_RING.output::<DropSample>(&sample, 0) {
        Ok(()) => drop_counter::SAMPLED,
        Err(_) => drop_counter::LOST,
    };
    if let Some(c) = DROP_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}
