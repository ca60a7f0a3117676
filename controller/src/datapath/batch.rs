//! Batch map updates and deletes, and the RCU barrier, over the raw bpf(2) calls in `crate::sys`.

use super::*;

/// Waits for an RCU grace period, after which no XDP program run that started before the call
/// is still running. The kernel waits for one (`synchronize_rcu`) whenever an element of a
/// map-in-map is updated, so that user space knows no program still uses the previous inner
/// map; this is the same trick the kernel's own selftests use. The two maps are private to
/// this process and never pinned.
pub(super) struct RcuBarrier {
    pub(super) outer: OwnedFd,
    pub(super) inner: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
pub(super) struct ElemAttr {
    pub(super) map_fd: u32,
    pub(super) _pad: u32,
    pub(super) key: u64,
    pub(super) value: u64,
    pub(super) flags: u64,
}

impl RcuBarrier {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

    pub(super) fn new() -> Result<Self, DatapathError> {
        let create = |attr: crate::sys::MapCreateAttr| -> Result<OwnedFd, DatapathError> {
            // SAFETY: a valid BPF_MAP_CREATE attribute; the returned fd is owned from here on.
            let fd = unsafe { crate::sys::bpf(Self::BPF_MAP_CREATE, &attr) }.map_err(|source| {
                DatapathError::Batch {
                    map: "rcu barrier",
                    source,
                }
            })?;
            // SAFETY: the kernel just returned this fd to us.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        };
        let inner = create(crate::sys::MapCreateAttr {
            map_type: Self::BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = create(crate::sys::MapCreateAttr {
            map_type: Self::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        })?;
        Ok(Self { outer, inner })
    }

    pub(super) fn wait(&self) -> Result<(), DatapathError> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let attr = ElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..ElemAttr::default()
        };
        // SAFETY: key and value point at live u32s of the map's key and value size.
        unsafe { crate::sys::bpf(Self::BPF_MAP_UPDATE_ELEM, &attr) }
            .map(drop)
            .map_err(|source| DatapathError::Batch {
                map: "rcu barrier",
                source,
            })
    }
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub(super) in_batch: u64,
    pub(super) out_batch: u64,
    pub(super) keys: u64,
    pub(super) values: u64,
    pub(super) count: u32,
    pub(super) map_fd: u32,
    pub(super) elem_flags: u64,
    pub(super) flags: u64,
}

pub(super) const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
pub(super) const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per batch call: big enough to make the syscall cost vanish, small enough that the
/// kernel's per-call work stays short.
pub(super) const BATCH: usize = 16_384;

/// Inserts or overwrites every `(keys[i], values[i])` of the map `fd` with as few
/// syscalls as possible. `K` and `V` must be the map's key and value types.
pub(super) fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: keys and values hold `count` entries of the map's key and value size.
        unsafe { crate::sys::bpf(BPF_MAP_UPDATE_BATCH, &attr) }?;
    }
    Ok(())
}

/// Deletes every key of the map `fd`, ignoring keys already absent.
pub(super) fn delete_batch<K: aya::Pod>(fd: u32, keys: &[K]) -> std::io::Result<()> {
    let delete = |keys: &[K]| {
        let attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: keys holds `count` keys of the map's key size.
        unsafe { crate::sys::bpf(BPF_MAP_DELETE_BATCH, &attr) }.map(drop)
    };
    for chunk in keys.chunks(BATCH) {
        match delete(chunk) {
            Ok(()) => {}
            // A batch stops at a key that is absent; redo this chunk one key at a time.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                for key in chunk {
                    match delete(std::slice::from_ref(key)) {
                        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(super) fn map_fd<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    aya::maps::IterableMap::map(map).fd().as_fd().as_raw_fd() as u32
}
