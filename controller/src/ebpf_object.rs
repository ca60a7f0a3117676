//! The eBPF objects built by `build.rs`, embedded in the binary.

/// Bytes of the compiled `xdp-ebpf` object (the XDP ingress filter), aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// Bytes of the compiled `xdp-egress` object (the TC egress flagger).
pub static EGRESS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-egress"));

/// Baseline programs for the benchmarks (XDP_PASS, XDP_DROP, a stock LPM filter).
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-bench"));

/// Baseline TC program for the egress benchmark (a bare TC_ACT_UNSPEC classifier).
pub static TC_BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc-bench"));
