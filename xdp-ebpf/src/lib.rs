//! Code shared by the programs (the 5-tuple parser). This library target also lets
//! `controller` list the crate as a build dependency so cargo rebuilds the embedded objects when
//! it changes (see aya-build). The programs are in `main.rs` (XDP ingress) and `bin/`.
#![no_std]

/// 5-tuple parsing shared by the TC egress program and the ingress drop sampler.
pub mod flow;
