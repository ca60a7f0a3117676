//! `xdpwall detach`: remove the XDP filter and the TC egress flagger and, when no link is
//! left, the pinned maps. Refuses while a daemon owns the state directory.

use std::path::{Path, PathBuf};

use super::load_config;
use crate::{daemon::StateLock, egress, loader, pins::PinLayout};

pub(super) fn detach(
    ifaces: &[String],
    config: Option<&Path>,
    pin_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (config, _) = load_config(config)?;
    if StateLock::is_held(&config.state_dir) {
        anyhow::bail!(
            "a running xdpwall daemon owns {}: stop it first (it would keep the filter loaded)",
            config.state_dir.display()
        );
    }
    let pins = PinLayout::new(pin_dir.unwrap_or(config.pin_dir));
    let mut detached = loader::detach(&pins, ifaces)?;
    // A flagger attached as a clsact filter (`[egress] attach = "netlink"`) has no pin:
    // look for it on the interfaces named, else the configured ones.
    let tc_ifaces: &[String] = if ifaces.is_empty() {
        &config.interfaces
    } else {
        ifaces
    };
    for iface in tc_ifaces {
        if egress::remove_netlink(iface) {
            detached
                .links
                .push(format!("TC egress flagger (clsact filter) from {iface}"));
        }
    }
    if detached.links.is_empty() {
        println!("nothing attached under {}", pins.root().display());
    }
    for link in &detached.links {
        println!("detached {link}");
    }
    if detached.maps_removed {
        println!("removed pinned maps under {}", pins.root().display());
    }
    Ok(())
}
