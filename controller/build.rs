//! Builds the eBPF crate for bpfel-unknown-none with the nightly toolchain and bpf-linker, so the
//! `xdpwall` binary can embed it. `AYA_BUILD_SKIP=1` skips this (docs, clippy without toolchain);
//! the binary then embeds an empty object and refuses to load it with a clear error.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    // Printed here too: without it a skipped build never reruns when AYA_BUILD_SKIP is unset
    // again, and the next test build links the empty placeholders.
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        for name in ["xdp-ebpf", "xdp-egress", "xdp-bench", "tc-bench"] {
            fs::write(out_dir.join(name), b"").context("writing empty eBPF placeholder")?;
        }
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_dir = manifest_dir.join("../xdp-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("eBPF crate path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "xdp-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed: run `cargo xtask setup` to install the nightly rust-src component and bpf-linker")
}
