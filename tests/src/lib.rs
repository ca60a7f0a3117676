//! Helpers for xdpwall's privileged integration tests.
//!
//! - [`privileges`]: decide whether a privileged test can run here, and say why not
//! - [`lab`]: network namespaces joined by a veth pair, removed on drop (crate xdpwall-netlab)
//! - [`daemon`]: the real `xdpwall` binary running inside a lab namespace
//! - [`crowdsec`]: a real CrowdSec Local API (Debian package) in a lab namespace
//! - [`testrun`]: the XDP program loaded for BPF_PROG_TEST_RUN, with its maps
//! - [`frames`]: test frames built with etherparse
//! - [`parser_check`]: the rule set and source offset the packet parser is checked against
//! - [`reference`]: the reference matcher and differential check of the lookup tests
pub mod crowdsec;
pub mod daemon;
pub mod fixture;
pub mod frames;
pub mod parser_check;
pub use xdpwall_netlab as lab;
pub mod privileges;
pub mod reference;
pub mod testrun;

/// Skips the calling test with a reason when `privileges::missing()` says it cannot run.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if let Some(reason) = $crate::privileges::missing() {
            // CI sets this: there, a skipped privileged test is a failure, not a pass.
            if std::env::var_os("XDPWALL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
                panic!("privileged test cannot run but XDPWALL_REQUIRE_PRIVILEGED=1: {reason}");
            }
            eprintln!("SKIP {}: {reason}", module_path!());
            return;
        }
    };
}
