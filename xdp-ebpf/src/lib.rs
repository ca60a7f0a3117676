//! Empty library target: lets `controller` list this crate as a build dependency so cargo
//! rebuilds the embedded object when it changes (see aya-build). The programs are in `main.rs`.
#![no_std]
