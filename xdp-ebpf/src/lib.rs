//! Code shared by the programs (the packet parser). This library target also lets
//! `controller` list the crate as a build dependency so cargo rebuilds the embedded objects when
//! it changes (see aya-build). The programs are in `main.rs` (XDP ingress) and `bin/`.
#![no_std]

/// The one header walk: the XDP ingress filter, its drop sampler and the TC egress flagger.
pub mod parse;

/// Compile-time string equality, to check that `#[map(name = "...")]` literals (the attribute
/// takes only a literal) match the names in `xdpwall_shared`.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
