//! The eBPF object built by `build.rs`, embedded in the binary.

/// Bytes of the compiled `xdp-ebpf` object, aligned for the ELF parser.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));
