//! The raw bpf(2) calls aya does not offer (batch updates, an RCU barrier, feature probes,
//! link and object info), in one place: every `unsafe` syscall of the controller goes through
//! [`bpf`].

use std::io;

/// The head of `union bpf_attr` for BPF_MAP_CREATE (the fields xdpwall sets).
#[repr(C)]
#[derive(Default)]
pub struct MapCreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub inner_map_fd: u32,
}

/// The raw bpf(2) syscall with `attr` as its (prefix of) `union bpf_attr`.
///
/// # Safety
/// `attr` must be a valid attribute layout for `cmd`, and every pointer inside it must be valid
/// for what the kernel reads or writes during the call.
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: upheld by the caller; the kernel reads at most size_of::<T>() bytes of attr.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
