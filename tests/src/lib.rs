//! Helpers for xdpwall's privileged integration tests.
//!
//! - [`privileges`]: decide whether a privileged test can run here, and say why not
//! - [`lab`]: network namespaces joined by a veth pair, removed on drop
//! - [`daemon`]: the real `xdpwall` binary running inside a lab namespace
//! - [`testrun`]: the XDP program loaded for BPF_PROG_TEST_RUN, with its maps
//! - [`frames`]: test frames built with etherparse
pub mod daemon;
pub mod frames;
pub mod lab;
pub mod privileges;
pub mod testrun;

/// Skips the calling test with a reason when `privileges::missing()` says it cannot run.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if let Some(reason) = $crate::privileges::missing() {
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}
