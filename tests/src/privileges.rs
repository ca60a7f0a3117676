//! Whether this process can load BPF programs and create network namespaces.

use std::{fs, path::Path, process::Command};

/// `None` when privileged tests can run; otherwise why not (printed as the skip reason).
pub fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_BPF, CAP_NET_ADMIN): run `sudo cargo xtask test`".into());
    }
    if !is_bpffs(Path::new("/sys/fs/bpf")) {
        return Some(
            "/sys/fs/bpf is not a bpffs mount: run `cargo xtask setup` (mounts it)".into(),
        );
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is missing: run `cargo xtask setup`".into());
    }
    None
}

fn is_bpffs(path: &Path) -> bool {
    fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let mut fields = l.split_whitespace();
            let (_, mount_point, fs_type) = (fields.next(), fields.next(), fields.next());
            mount_point == path.to_str() && fs_type == Some("bpf")
        })
    })
}
