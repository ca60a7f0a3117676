//! xdpwall controller library: everything the `xdpwall` binary does, in modules with one job each.
pub mod ebpf_object;
