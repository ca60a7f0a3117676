//! Loads the embedded eBPF object, attaches the XDP filter and pins maps and links.
//!
//! On start every map is opened from its pin if one exists (so counters and rules survive a
//! restart) and created and pinned otherwise. An interface whose XDP link is still pinned keeps
//! that link: the new program replaces the old one atomically through the link (`bpf_link_update`)
//! instead of a second attach, so there is no moment without a filter. Links are removed only by
//! `xdpwall detach`.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use tracing::{info, warn};
use xdpwall_shared::{
    DIR24_MAP_ENTRIES, IFACE_SLOTS, V4_LONG_MAX_ENTRIES, V6_GUIDE_MAX_ENTRIES, V6_HASH_MAX_ENTRIES,
    V6_TOP_SLOTS, XDP_PROGRAM, egress, map_names, stages,
};

use crate::{
    datapath::{Datapath, DatapathError, Engines, Ipv4Lookup, Ipv6Lookup},
    ebpf_object::EBPF_OBJECT,
    pins::PinLayout,
    syn::{self, SynStage},
};

/// Maps of earlier versions whose layout changed: carried over, then unpinned.
mod retired;
use retired::RetiredMaps;

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Syn(#[from] syn::SynError),
    #[error(
        "missing privileges: xdpwall needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run it as \
         root or grant them (see deploy/systemd)"
    )]
    MissingPrivileges,
    #[error(
        "the pinned map {path} has keys of {found_key} and values of {found_value} bytes, but this \
         xdpwall needs {key} and {value}: it was made by another xdpwall version with another map \
         layout. Nothing was loaded or attached. Run `xdpwall detach` (the rule store keeps the \
         rules; they are applied again at the next start), then start this version"
    )]
    LayoutChanged {
        path: PathBuf,
        found_key: u32,
        found_value: u32,
        key: u32,
        value: u32,
    },
    #[error(
        "{0} is not on a bpffs mount, so maps and links cannot be pinned: run `mount -t bpf bpf \
         /sys/fs/bpf` (cargo xtask setup does this) or set pin_dir to a directory on bpffs"
    )]
    NoBpffs(PathBuf),
    #[error(
        "interface {0:?} does not exist here (check `ip link show`; in a namespace, run xdpwall inside it)"
    )]
    UnknownInterface(String),
    #[error(
        "interfaces {0:?} and {1:?} share verdict counter slot {2} (ifindex modulo {IFACE_SLOTS}); \
         attach them from separate xdpwall instances"
    )]
    SlotCollision(String, String, u32),
    #[error(
        "this xdpwall binary was built without its eBPF programs (AYA_BUILD_SKIP): rebuild it with `cargo build` after `cargo xtask setup`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel verifier or loader refused the XDP program: {0}")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error("the kernel verifier or loader refused the XDP stage {name}: {source}")]
    Stage {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("putting the XDP stages in XW_STAGES: {0}")]
    StageArray(#[source] Box<aya::maps::MapError>),
    #[error("attaching XDP to {iface} in {mode} mode failed: {source}; {hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        hint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode, falling back to generic with a warning if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only; fail if the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

impl std::str::FromStr for XdpAttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            other => Err(format!(
                "unknown xdp_mode {other:?}: use auto, native or generic"
            )),
        }
    }
}

/// How the program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    Native,
    Generic,
    /// The pinned link from an earlier run was kept and its program replaced.
    Reused,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
}

/// Open map handles and the interfaces the filter is attached to (held by pinned links).
pub struct Loaded {
    pub datapath: Datapath,
    pub attachments: Vec<Attachment>,
    pub syn: SynStage,
}

/// Checks what can be checked before touching the kernel: privileges, bpffs, interfaces.
pub fn preflight(pins: &PinLayout, ifaces: &[String]) -> Result<Vec<(String, u32)>, LoaderError> {
    if !has_capability(CAP_NET_ADMIN) || !(has_capability(CAP_BPF) || has_capability(CAP_SYS_ADMIN))
    {
        return Err(LoaderError::MissingPrivileges);
    }
    ensure_bpffs(pins.root())?;
    let mut resolved: Vec<(String, u32)> = Vec::new();
    for iface in ifaces {
        let ifindex =
            if_index(iface).ok_or_else(|| LoaderError::UnknownInterface(iface.clone()))?;
        let slot = ifindex % IFACE_SLOTS;
        if let Some((other, _)) = resolved.iter().find(|(_, i)| i % IFACE_SLOTS == slot) {
            return Err(LoaderError::SlotCollision(
                other.clone(),
                iface.clone(),
                slot,
            ));
        }
        resolved.push((iface.clone(), ifindex));
    }
    Ok(resolved)
}

/// The eBPF object loaded into the kernel, program verified, maps open (not attached anywhere).
pub struct LoadedObject {
    pub ebpf: Ebpf,
    pub datapath: Datapath,
    /// The SYN-cookie stage: loaded unless the kernel refused it (it stays out of the way then).
    pub syn: SynStage,
}

/// The XDP ingress program of an object returned by [`load_object`].
pub fn xdp_program(ebpf: &Ebpf) -> &Xdp {
    ebpf.program(XDP_PROGRAM)
        .and_then(|p| <&Xdp>::try_from(p).ok())
        .expect("program checked by load_object")
}

/// Loads the embedded object with its maps opened from (or pinned under) `pins`, and loads the
/// XDP program into the kernel (the verifier runs here). `engines` sizes the DIR-24 and IPv6
/// hash maps: full size for the engine in use, one entry otherwise (they are not read then).
pub fn load_object(
    pins: &PinLayout,
    engines: impl Into<Engines>,
) -> Result<LoadedObject, LoaderError> {
    let engines = engines.into();
    if EBPF_OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    ensure_bpffs(pins.root())?;
    for object in [EBPF_OBJECT, crate::ebpf_object::EGRESS_OBJECT] {
        check_pinned_layout(pins, object)?;
    }
    let retired = RetiredMaps::open(pins);
    for dir in [pins.maps_dir(), pins.links_dir()] {
        fs::create_dir_all(&dir).map_err(|source| LoaderError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let (table_entries, long_entries) = match engines.ipv4 {
        Ipv4Lookup::Dir24 => {
            drop_undersized_pins(
                pins,
                &[map_names::V4_TBL24, map_names::V4_LONG],
                DIR24_MAP_ENTRIES,
                "the DIR-24 table",
                SIZED_FOR_LPM,
            )?;
            (DIR24_MAP_ENTRIES, V4_LONG_MAX_ENTRIES)
        }
        Ipv4Lookup::Lpm => (1, 1),
    };
    let (v6_top, v6_guides, v6_prefixes) = match engines.ipv6 {
        Ipv6Lookup::Hash => {
            drop_undersized_pins(
                pins,
                &[map_names::V6_TOP],
                V6_TOP_SLOTS,
                "the IPv6 hash engine",
                SIZED_FOR_LPM,
            )?;
            drop_undersized_pins(
                pins,
                &[map_names::V6_GUIDE0, map_names::V6_GUIDE1],
                V6_GUIDE_MAX_ENTRIES,
                "the IPv6 hash engine",
                SIZED_FOR_LPM,
            )?;
            drop_undersized_pins(
                pins,
                &[map_names::V6_TBL0, map_names::V6_TBL1],
                V6_HASH_MAX_ENTRIES,
                "the IPv6 hash engine",
                SIZED_FOR_LPM,
            )?;
            (V6_TOP_SLOTS, V6_GUIDE_MAX_ENTRIES, V6_HASH_MAX_ENTRIES)
        }
        Ipv6Lookup::Lpm => (1, 1, 1),
    };
    // An upgrade from the old guide layout that also switches to the tries: the new program
    // reads the hash engine the previous daemon left until the first apply, so the old guides
    // are carried over into full-size maps in that case too.
    let v6_guides = if retired.holds_guides() {
        V6_GUIDE_MAX_ENTRIES
    } else {
        v6_guides
    };
    // Versions before 1 MiB drop rings pinned a 256 KiB one, which aya would reuse as it is.
    drop_undersized_pins(
        pins,
        &[egress::map_names::DROP_RING],
        egress::DROP_RING_BYTES,
        "the drop-sample ring buffer",
        "the pinned one is smaller",
    )?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps_dir())
        .map_max_entries(map_names::V4_TBL24, table_entries)
        .map_max_entries(map_names::V4_LONG, long_entries)
        .map_max_entries(map_names::V6_TOP, v6_top)
        .map_max_entries(map_names::V6_GUIDE0, v6_guides)
        .map_max_entries(map_names::V6_GUIDE1, v6_guides)
        .map_max_entries(map_names::V6_TBL0, v6_prefixes)
        .map_max_entries(map_names::V6_TBL1, v6_prefixes)
        .load(EBPF_OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))?;
    retired.carry_over(&mut ebpf)?;
    retired.unpin(pins)?;
    let datapath = Datapath::from_ebpf(&mut ebpf, engines)?;
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(LoaderError::NoObject)?
        .try_into()
        .map_err(|e| LoaderError::Program(Box::new(e)))?;
    program
        .load()
        .map_err(|e| LoaderError::Program(Box::new(e)))?;
    let syn = load_stages(&mut ebpf)?;
    if let Some(reason) = &syn.refused {
        info!(
            reason,
            "the kernel refused the SYN-cookie stage; [syn_protection] cannot be enabled"
        );
    }
    Ok(LoadedObject {
        ebpf,
        datapath,
        syn,
    })
}

/// Loads the stages the ingress program tail-calls ([`stages`]) and puts each in its slot of the
/// pinned program array, replacing the previous version's. The array holds the programs from
/// then on: they stay in place after this process exits, as the attached ingress program does.
/// The SYN-cookie stage is the exception: a kernel that refuses it (no cookie helpers) leaves its
/// slot empty, and only `[syn_protection] enabled = true` is refused then (the answer says why).
fn load_stages(ebpf: &mut Ebpf) -> Result<SynStage, LoaderError> {
    let mut loaded = Vec::new();
    let syn = SynStage::load(ebpf)?;
    if syn.refused.is_none() {
        loaded.push((stages::SYN, syn::PROGRAM));
    }
    for (slot, name) in stages::PROGRAMS.iter().enumerate() {
        if *name == syn::PROGRAM {
            continue;
        }
        let Some(program) = ebpf.program_mut(name) else {
            continue;
        };
        let stage = |source| LoaderError::Stage {
            name,
            source: Box::new(source),
        };
        let program: &mut Xdp = program.try_into().map_err(stage)?;
        program.load().map_err(stage)?;
        loaded.push((slot as u32, *name));
    }
    let map = ebpf
        .take_map(map_names::STAGES)
        .ok_or(LoaderError::NoObject)?;
    let array_err = |e| LoaderError::StageArray(Box::new(e));
    let mut array = ProgramArray::try_from(map).map_err(array_err)?;
    for (slot, name) in loaded {
        let program: &Xdp = ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoaderError::NoObject)?;
        let fd = program.fd().map_err(|source| LoaderError::Stage {
            name,
            source: Box::new(source),
        })?;
        array.set(slot, fd, 0).map_err(array_err)?;
    }
    Ok(syn)
}

/// Refuses pinned maps whose key or value size differs from what `object` declares. aya reuses a
/// pinned map by name as it is, so a map left by a version with another layout would be read
/// with the wrong layout (or make the verifier refuse the program after the old one was
/// detached). An upgrade that keeps the layout reuses every map; one that changes it stops
/// here, before anything is loaded, with what to do.
fn check_pinned_layout(pins: &PinLayout, object: &[u8]) -> Result<(), LoaderError> {
    if object.is_empty() {
        return Ok(());
    }
    let parsed = aya_obj::Object::parse(object)
        .map_err(|e| LoaderError::Load(Box::new(aya::EbpfError::from(e))))?;
    for (name, map) in &parsed.maps {
        let path = pins.map(name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let (key, value) = (map.key_size(), map.value_size());
        if info.key_size() != key || info.value_size() != value {
            return Err(LoaderError::LayoutChanged {
                path,
                found_key: info.key_size(),
                found_value: info.value_size(),
                key,
                value,
            });
        }
    }
    Ok(())
}

/// Why [`drop_undersized_pins`] replaces the maps of a lookup engine.
const SIZED_FOR_LPM: &str = "the pinned ones were sized for the LPM engine";

/// Pinned maps smaller than this load wants (`max_entries`; bytes for a ring buffer): a
/// previous run with the LPM engine pinned one-entry maps for an engine now wanted, or an older
/// version a smaller ring buffer. Their pins are removed so that this load creates full-size
/// ones; the running program keeps the old maps (and keeps reading the LPM tries until the new
/// structure is complete, see `Datapath::switch_engine`). `names[0]` is the map whose size
/// tells; `why` goes to the log.
fn drop_undersized_pins(
    pins: &PinLayout,
    names: &[&str],
    needed: u32,
    what: &str,
    why: &str,
) -> Result<(), LoaderError> {
    let Ok(info) = aya::maps::MapInfo::from_pin(pins.map(names[0])) else {
        return Ok(());
    };
    if info.max_entries() >= needed {
        return Ok(());
    }
    info!("creating {what} ({why})");
    for name in names {
        remove_map_pin(pins, name)?;
    }
    Ok(())
}

/// Removes the pin of map `name` if there is one; whether there was. The map lives on while a
/// program or a handle still holds it.
pub(crate) fn remove_map_pin(pins: &PinLayout, name: &str) -> Result<bool, LoaderError> {
    let path = pins.map(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LoaderError::Io { path, source }),
    }
}

/// Loads the object (maps from pins where present) and attaches to every interface. With
/// `syn_protection`, a kernel that refused the SYN-cookie stage fails the load before anything
/// is attached.
pub fn load_and_attach(
    pins: &PinLayout,
    ifaces: &[String],
    mode: XdpAttachMode,
    engines: impl Into<Engines>,
    syn_protection: bool,
) -> Result<Loaded, LoaderError> {
    let resolved = preflight(pins, ifaces)?;
    let LoadedObject {
        mut ebpf,
        datapath,
        syn,
    } = load_object(pins, engines)?;
    if let (true, Some(reason)) = (syn_protection, &syn.refused) {
        return Err(syn::SynError::Unavailable {
            reason: reason.clone(),
        }
        .into());
    }
    let program: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or(LoaderError::NoObject)?
        .try_into()
        .map_err(|e| LoaderError::Program(Box::new(e)))?;

    let mut attachments = Vec::new();
    for (iface, ifindex) in resolved {
        let link_pin = pins.xdp_link(&iface);
        let mode = match reuse_link(program, &link_pin, ifindex)? {
            true => AttachedMode::Reused,
            false => attach_new(program, &iface, ifindex, mode, &link_pin)?,
        };
        info!(iface, ifindex, ?mode, "XDP filter attached");
        attachments.push(Attachment {
            iface,
            ifindex,
            mode,
        });
    }
    // The pinned links hold the program now; the object's own fds may close.
    drop(ebpf);
    Ok(Loaded {
        datapath,
        attachments,
        syn,
    })
}

/// Replaces the program behind a still-valid pinned link. Returns false if there is no usable
/// pin (none, or left over from an interface that no longer exists), after removing a stale one.
fn reuse_link(program: &mut Xdp, link_pin: &Path, ifindex: u32) -> Result<bool, LoaderError> {
    if !link_pin.exists() {
        return Ok(false);
    }
    match pinned_xdp_link_ifindex(link_pin) {
        Ok(Some(pinned_ifindex)) if pinned_ifindex == ifindex => {}
        other => {
            warn!(pin = %link_pin.display(), ?other, "removing stale XDP link pin (interface gone or replaced)");
            fs::remove_file(link_pin).map_err(|source| LoaderError::Io {
                path: link_pin.into(),
                source,
            })?;
            return Ok(false);
        }
    }
    let pinned = PinnedLink::from_pin(link_pin).map_err(|e| LoaderError::Pin {
        path: link_pin.into(),
        message: e.to_string(),
    })?;
    // FdLink::from keeps the pin file, so the link stays pinned throughout.
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| LoaderError::Pin {
        path: link_pin.into(),
        message: format!("not an XDP link: {e}"),
    })?;
    let link_id = program
        .attach_to_link(link)
        .map_err(|e| LoaderError::Program(Box::new(e)))?;
    // Hand the fd back: the pin holds the link, and dropping the fd must not detach it.
    let link = program
        .take_link(link_id)
        .map_err(|e| LoaderError::Program(Box::new(e)))?;
    drop(FdLink::try_from(link).ok());
    Ok(true)
}

fn attach_new(
    program: &mut Xdp,
    iface: &str,
    ifindex: u32,
    mode: XdpAttachMode,
    link_pin: &Path,
) -> Result<AttachedMode, LoaderError> {
    let hint_busy = "if another XDP program is attached, remove it (`ip link set dev IF xdp off`) or run `xdpwall detach`";
    let (link_id, attached) = match mode {
        XdpAttachMode::Generic => (
            program.attach_to_if_index(ifindex, XdpMode::Skb).map_err(|source| LoaderError::Attach {
                iface: iface.into(),
                mode: "generic",
                hint: hint_busy,
                source: Box::new(source),
            })?,
            AttachedMode::Generic,
        ),
        XdpAttachMode::Native => (
            program.attach_to_if_index(ifindex, XdpMode::Driver).map_err(|source| LoaderError::Attach {
                iface: iface.into(),
                mode: "native",
                hint: "the driver may lack native XDP support: use xdp_mode = \"auto\" or \"generic\"",
                source: Box::new(source),
            })?,
            AttachedMode::Native,
        ),
        XdpAttachMode::Auto => match program.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, AttachedMode::Native),
            Err(native_err) => {
                warn!(
                    iface,
                    error = %native_err,
                    "native XDP refused by the driver; falling back to generic (skb) mode, which filters later and slower"
                );
                (
                    program.attach_to_if_index(ifindex, XdpMode::Skb).map_err(|source| LoaderError::Attach {
                        iface: iface.into(),
                        mode: "generic",
                        hint: hint_busy,
                        source: Box::new(source),
                    })?,
                    AttachedMode::Generic,
                )
            }
        },
    };
    let link = program
        .take_link(link_id)
        .map_err(|e| LoaderError::Program(Box::new(e)))?;
    let fd_link = FdLink::try_from(link).map_err(|e| LoaderError::Pin {
        path: link_pin.into(),
        message: format!(
            "kernel attached XDP without a bpf_link ({e}); xdpwall needs Linux >= 5.9"
        ),
    })?;
    fd_link.pin(link_pin).map_err(|e| LoaderError::Pin {
        path: link_pin.into(),
        message: e.to_string(),
    })?;
    Ok(attached)
}

/// What `detach` removed.
#[derive(Debug, Default)]
pub struct Detached {
    pub links: Vec<String>,
    pub maps_removed: bool,
}

/// Removes the pinned XDP links of `ifaces` (all when empty); when all are gone, also the map
/// pins and the pin directory. Removing the last reference detaches the program.
pub fn detach(pins: &PinLayout, ifaces: &[String]) -> Result<Detached, LoaderError> {
    let mut detached = Detached::default();
    let links_dir = pins.links_dir();
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| LoaderError::Io { path, source }
    };
    if links_dir.is_dir() {
        for entry in fs::read_dir(&links_dir).map_err(io_err(&links_dir))? {
            let entry = entry.map_err(io_err(&links_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (Some(iface), kind) = (match PinLayout::iface_of_xdp_link(&name) {
                Some(iface) => (Some(iface), "XDP filter"),
                None => (PinLayout::iface_of_tc_link(&name), "TC egress flagger"),
            }) else {
                continue;
            };
            if ifaces.is_empty() || ifaces.contains(&iface) {
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                detached.links.push(format!("{kind} from {iface}"));
            }
        }
    }
    let remaining = links_dir.is_dir()
        && fs::read_dir(&links_dir)
            .map_err(io_err(&links_dir))?
            .next()
            .is_some();
    if !remaining && pins.root().exists() {
        let maps_dir = pins.maps_dir();
        if maps_dir.is_dir() {
            for entry in fs::read_dir(&maps_dir).map_err(io_err(&maps_dir))? {
                let entry = entry.map_err(io_err(&maps_dir))?;
                fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            }
            fs::remove_dir(&maps_dir).map_err(io_err(&maps_dir))?;
        }
        if links_dir.is_dir() {
            fs::remove_dir(&links_dir).map_err(io_err(&links_dir))?;
        }
        fs::remove_dir(pins.root()).map_err(io_err(pins.root()))?;
        detached.maps_removed = true;
    }
    Ok(detached)
}

fn if_index(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Whether the effective capability set holds `cap` (read from /proc/self/status).
fn has_capability(cap: u32) -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1u64 << cap) != 0)
}

/// Fails unless `dir` (or its nearest existing ancestor) is on bpffs.
fn ensure_bpffs(dir: &Path) -> Result<(), LoaderError> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let c_path = CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|_| LoaderError::NoBpffs(dir.into()))?;
    // SAFETY: statfs writes into the zeroed struct; c_path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(LoaderError::NoBpffs(dir.into()));
    }
    Ok(())
}

/// The ifindex a pinned XDP link is attached to; `None` if its interface is gone (the kernel
/// reports ifindex 0 for a defunct link).
fn pinned_xdp_link_ifindex(path: &Path) -> io::Result<Option<u32>> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;

    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_OBJ_GET.
    let fd = unsafe { crate::sys::bpf(BPF_OBJ_GET, &attr) }?;
    // SAFETY: the syscall returned a new fd that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8; xdp.ifindex is first.
    let mut info = [0u64; 16];
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: attr points at a writable, zeroed buffer of info_len bytes.
    unsafe { crate::sys::bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) }?;
    let link_type = info[0] as u32;
    if link_type != BPF_LINK_TYPE_XDP {
        return Err(io::Error::other(format!(
            "pinned link has type {link_type}, not XDP"
        )));
    }
    let ifindex = info[2] as u32;
    Ok((ifindex != 0).then_some(ifindex))
}
