//! Paths of everything xdpwall pins on bpffs, built in one place.
//!
//! ```text
//! <pin_dir>/maps/<MAP_NAME>      every map of the ingress program (reused on restart)
//! <pin_dir>/links/xdp-<ifname>   the XDP link of each interface (keeps it attached)
//! <pin_dir>/links/tc-<ifname>    the TCX egress link of each interface
//! ```

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
        self.links_dir().join(format!("xdp-{iface}"))
    }

    pub fn tc_link(&self, iface: &str) -> PathBuf {
        self.links_dir().join(format!("tc-{iface}"))
    }

    /// Interface name of a TC egress link pin file name, if it is one.
    pub fn iface_of_tc_link(file_name: &str) -> Option<&str> {
        file_name.strip_prefix("tc-")
    }

    /// Interface name of an XDP link pin file name, if it is one.
    pub fn iface_of_xdp_link(file_name: &str) -> Option<&str> {
        file_name.strip_prefix("xdp-")
    }
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
        assert_eq!(PinLayout::iface_of_xdp_link("xdp-eth0"), Some("eth0"));
        assert_eq!(PinLayout::iface_of_xdp_link("tc-eth0"), None);
        assert_eq!(
            pins.tc_link("eth0"),
            Path::new("/sys/fs/bpf/xdpwall/links/tc-eth0")
        );
        assert_eq!(PinLayout::iface_of_tc_link("tc-eth0"), Some("eth0"));
    }
}
