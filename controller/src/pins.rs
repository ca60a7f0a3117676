//! Paths of everything xdpwall pins on bpffs, built in one place.
//!
//! ```text
//! <pin_dir>/maps/<MAP_NAME>      every map of the ingress program (reused on restart)
//! <pin_dir>/links/xdp-<ifname>   the XDP link of each interface (keeps it attached)
//! <pin_dir>/links/tc-<ifname>    the TCX egress link of each interface
//! ```
//!
//! bpffs refuses names with a dot (reserved for its own files), and VLAN interfaces are
//! usually named `eth0.100`: a dot in an interface name is written as `:` in its pin's name,
//! a character Linux never allows in interface names.

use std::path::{Path, PathBuf};

/// The pin layout under one root directory (default `/sys/fs/bpf/xdpwall`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn xdp_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("xdp-{}", pin_name(iface)))
    }

    pub fn tc_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("tc-{}", pin_name(iface)))
    }

    /// Interface name of a TC egress link pin file name, if it is one.
    pub fn iface_of_tc_link(file_name: &str) -> Option<String> {
        file_name.strip_prefix("tc-").map(iface_name)
    }

    /// Interface name of an XDP link pin file name, if it is one.
    pub fn iface_of_xdp_link(file_name: &str) -> Option<String> {
        file_name.strip_prefix("xdp-").map(iface_name)
    }
}

/// An interface name as bpffs accepts it in a file name.
fn pin_name(iface: &str) -> String {
    iface.replace('.', ":")
}

/// The interface name back from [`pin_name`].
fn iface_name(pin_name: &str) -> String {
    pin_name.replace(':', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let pins = PinLayout::new("/sys/fs/bpf/xdpwall");
        assert_eq!(
            pins.map("XW_BLOCK_V4"),
            Path::new("/sys/fs/bpf/xdpwall/maps/XW_BLOCK_V4")
        );
        assert_eq!(
            pins.xdp_link("eth0"),
            Path::new("/sys/fs/bpf/xdpwall/links/xdp-eth0")
        );
        assert_eq!(
            PinLayout::iface_of_xdp_link("xdp-eth0").as_deref(),
            Some("eth0")
        );
        assert_eq!(PinLayout::iface_of_xdp_link("tc-eth0"), None);
        assert_eq!(
            pins.tc_link("eth0"),
            Path::new("/sys/fs/bpf/xdpwall/links/tc-eth0")
        );
        assert_eq!(
            PinLayout::iface_of_tc_link("tc-eth0").as_deref(),
            Some("eth0")
        );
    }

    #[test]
    fn a_vlan_interface_gets_a_pin_name_without_a_dot() {
        let pins = PinLayout::new("/sys/fs/bpf/xdpwall");
        let xdp = pins.xdp_link("eth0.100");
        let tc = pins.tc_link("eth0.100");
        for pin in [&xdp, &tc] {
            let name = pin.file_name().unwrap().to_str().unwrap();
            assert!(!name.contains('.'), "{name}");
        }
        let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            PinLayout::iface_of_xdp_link(&name(&xdp)).as_deref(),
            Some("eth0.100")
        );
        assert_eq!(
            PinLayout::iface_of_tc_link(&name(&tc)).as_deref(),
            Some("eth0.100")
        );
    }
}
