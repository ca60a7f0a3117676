//! What the running kernel offers, found out once at start (`xdpwall run`).
//!
//! Every kernel feature xdpwall relies on is either required — missing, the start is refused
//! with a message naming the feature, the Linux version that brought it and what to change —
//! or has a fallback, which is said once in the log and shown in `GET /v1/status` (`kernel`).
//! Map types and mmapable arrays are probed by creating a tiny map and closing it; XDP links,
//! TCX and memory-cgroup accounting cannot be probed without attaching or allocating
//! something, so they go by the kernel's version. docs/kernels.md has the same table.

use std::os::fd::{FromRawFd as _, OwnedFd};

use aya::{maps::MapType, sys::is_map_supported, util::KernelVersion};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::egress::AttachMode;

/// A lock limit below this cannot hold even the two ring buffers (1 MiB of drop samples, the
/// egress flows' ring): the start is refused instead of failing on the first map.
const MEMLOCK_FLOOR: u64 = 4 << 20;

/// What the daemon is about to use, where that depends on settings.
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    /// `[egress] attach`, `None` when `[egress] enabled = false`.
    pub egress_attach: Option<AttachMode>,
    /// `[syn_protection] enabled`.
    pub syn_protection: bool,
}

/// The running kernel and each feature's state: `GET /v1/status` → `kernel`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct KernelReport {
    /// `uname -r`.
    pub release: String,
    pub features: Vec<FeatureState>,
}

/// One kernel feature: whether this kernel has it and what xdpwall does about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FeatureState {
    /// Short name: `xdp_link`, `ringbuf`, `lpm_trie`, `lru_hash`, `mmapable_array`, `tcx`,
    /// `memcg_accounting`.
    pub name: String,
    /// The Linux version that brought it.
    pub since: String,
    /// What xdpwall uses it for.
    pub used_for: String,
    /// Whether this kernel has it; null when the probe could not tell.
    pub available: Option<bool>,
    /// `probe` (a tiny map was created) or `version` (the kernel's version was compared).
    pub detected_by: String,
    /// What xdpwall does instead, when the kernel lacks it and a fallback is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A required feature this kernel lacks, or a setting this kernel cannot honour.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel (Linux {release}) lacks {feature} (Linux {since}), which xdpwall needs for {used_for}: {remedy} (see docs/kernels.md)"
)]
pub struct MissingFeature {
    pub release: String,
    pub feature: &'static str,
    pub since: &'static str,
    pub used_for: &'static str,
    pub remedy: String,
}

/// What the detection learnt from the system, kept apart from the decisions so that the
/// decisions can be tested for any kernel.
#[derive(Clone, Debug)]
pub struct Observed {
    pub release: String,
    pub version: Option<KernelVersion>,
    pub ringbuf: Option<bool>,
    pub lpm_trie: Option<bool>,
    pub lru_hash: Option<bool>,
    pub mmapable_array: Option<bool>,
    /// RLIMIT_MEMLOCK after trying to lift it (only looked at before 5.11).
    pub memlock: Memlock,
    /// XDP can look up listening sockets and have the kernel issue SYN cookies for them
    /// (`bpf_skc_lookup_tcp`, `bpf_tcp_gen_syncookie`), and the kernel has SYN cookies at all
    /// (`net.ipv4.tcp_syncookies` exists: `CONFIG_SYN_COOKIES`).
    pub syn_cookies: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memlock {
    /// Not looked at: the kernel charges maps to the memory cgroup.
    NotNeeded,
    Unlimited,
    /// Raised to unlimited by xdpwall (it had CAP_SYS_RESOURCE).
    Raised {
        from: u64,
    },
    /// A finite limit that could not be raised (bytes).
    Limited(u64),
}

/// Probes the running kernel and decides: the report, or the first required feature missing.
pub fn detect(wanted: Wanted) -> Result<KernelReport, MissingFeature> {
    let report = decide(&observe(), wanted)?;
    log(&report);
    Ok(report)
}

/// Reads the kernel's version and probes the map types (needs CAP_BPF or root; without it a
/// probe answers "cannot tell", never "missing").
pub fn observe() -> Observed {
    let release = kernel_release();
    let version = KernelVersion::current().ok();
    let probe = |types: &[MapType]| -> Option<bool> {
        let mut all = true;
        for &t in types {
            all &= is_map_supported(t).ok()?;
        }
        Some(all)
    };
    let memcg = version.is_none_or(|v| v >= KernelVersion::new(5, 11, 0));
    Observed {
        release,
        version,
        ringbuf: probe(&[MapType::RingBuf]),
        lpm_trie: probe(&[MapType::LpmTrie]),
        lru_hash: probe(&[MapType::LruHash, MapType::LruPerCpuHash]),
        mmapable_array: probe_mmapable_array(),
        memlock: if memcg {
            Memlock::NotNeeded
        } else {
            lift_memlock()
        },
        syn_cookies: crate::syn::helpers_available()
            .map(|helpers| helpers && std::path::Path::new(crate::syn::SYNCOOKIES_SYSCTL).exists()),
    }
}

/// The report for what was observed, or the first required feature missing.
pub fn decide(seen: &Observed, wanted: Wanted) -> Result<KernelReport, MissingFeature> {
    let at_least = |major, minor| {
        seen.version
            .map(|v| v >= KernelVersion::new(major, minor, 0))
    };
    let no_setting = "no setting avoids it; run xdpwall on Linux 5.9 or later".to_string();
    let mut features = Vec::new();
    let mut require = |name: &'static str,
                       feature: &'static str,
                       since: &'static str,
                       used_for: &'static str,
                       available: Option<bool>,
                       detected_by: &'static str|
     -> Result<(), MissingFeature> {
        features.push(FeatureState {
            name: name.into(),
            since: since.into(),
            used_for: used_for.into(),
            available,
            detected_by: detected_by.into(),
            fallback: None,
        });
        match available {
            Some(false) => Err(MissingFeature {
                release: seen.release.clone(),
                feature,
                since,
                used_for,
                remedy: no_setting.clone(),
            }),
            _ => Ok(()),
        }
    };
    require(
        "xdp_link",
        "XDP links (BPF_LINK_CREATE for XDP)",
        "5.9",
        "the pinned filter that outlives the daemon and is replaced without a gap",
        at_least(5, 9),
        "version",
    )?;
    require(
        "ringbuf",
        "BPF ring buffers",
        "5.8",
        "drop samples and flagged egress flows",
        seen.ringbuf,
        "probe",
    )?;
    require(
        "lpm_trie",
        "LPM trie maps",
        "4.11",
        "the allow and block lists",
        seen.lpm_trie,
        "probe",
    )?;
    require(
        "lru_hash",
        "LRU hash maps",
        "4.10",
        "egress flow tracking and scan detection",
        seen.lru_hash,
        "probe",
    )?;
    require(
        "mmapable_array",
        "mmapable arrays (BPF_F_MMAPABLE)",
        "5.5",
        "the DIR-24 table and the IPv6 hash engine's top table",
        seen.mmapable_array,
        "probe",
    )?;

    features.push(FeatureState {
        name: "syn_cookies".into(),
        since: "5.3".into(),
        used_for: "SYN-flood protection ([syn_protection]): SYN cookies answered from XDP".into(),
        available: seen.syn_cookies,
        detected_by: "probe".into(),
        fallback: None,
    });
    if wanted.syn_protection && seen.syn_cookies == Some(false) {
        return Err(MissingFeature {
            release: seen.release.clone(),
            feature: "SYN cookies from XDP (bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie and \
                      CONFIG_SYN_COOKIES)",
            since: "5.3",
            used_for: "[syn_protection]",
            remedy: "use a kernel built with CONFIG_SYN_COOKIES, or set [syn_protection] \
                     enabled = false to run without SYN-flood protection"
                .into(),
        });
    }

    let tcx = at_least(6, 6);
    let tcx_fallback = match (wanted.egress_attach, tcx) {
        (Some(AttachMode::Tcx), Some(false)) => {
            return Err(MissingFeature {
                release: seen.release.clone(),
                feature: "TCX links",
                since: "6.6",
                used_for: "the egress flagger with [egress] attach = \"tcx\"",
                remedy: "set [egress] attach = \"auto\" (a clsact filter on this kernel) or \
                         [egress] enabled = false"
                    .into(),
            });
        }
        (Some(AttachMode::Auto), Some(false)) => Some(
            "the egress flagger is a direct-action filter on the clsact qdisc (netlink); a \
             restart re-creates it, leaving egress unflagged for a few milliseconds"
                .to_string(),
        ),
        _ => None,
    };
    features.push(FeatureState {
        name: "tcx".into(),
        since: "6.6".into(),
        used_for: "the egress flagger's pinned link, replaced without a gap on restart".into(),
        available: tcx,
        detected_by: "version".into(),
        fallback: tcx_fallback,
    });

    let memcg_fallback = match seen.memlock {
        Memlock::NotNeeded => None,
        Memlock::Unlimited => {
            Some("maps count against RLIMIT_MEMLOCK, which is unlimited".to_string())
        }
        Memlock::Raised { from } => Some(format!(
            "maps count against RLIMIT_MEMLOCK, raised from {} to unlimited",
            human_bytes(from)
        )),
        Memlock::Limited(limit) if limit < MEMLOCK_FLOOR => {
            return Err(MissingFeature {
                release: seen.release.clone(),
                feature: "memory-cgroup accounting of BPF maps",
                since: "5.11",
                used_for: "creating maps without RLIMIT_MEMLOCK",
                remedy: format!(
                    "maps count against RLIMIT_MEMLOCK here, which is {} and cannot be raised \
                     without CAP_SYS_RESOURCE: set LimitMEMLOCK=infinity in the systemd unit \
                     (the shipped unit does), or `ulimit -l unlimited` before starting",
                    human_bytes(limit)
                ),
            });
        }
        Memlock::Limited(limit) => Some(format!(
            "maps count against RLIMIT_MEMLOCK, {} (cannot be raised without \
             CAP_SYS_RESOURCE); if a map cannot be created, set LimitMEMLOCK=infinity",
            human_bytes(limit)
        )),
    };
    features.push(FeatureState {
        name: "memcg_accounting".into(),
        since: "5.11".into(),
        used_for: "map memory charged to the memory cgroup instead of RLIMIT_MEMLOCK".into(),
        available: at_least(5, 11),
        detected_by: "version".into(),
        fallback: memcg_fallback,
    });
    Ok(KernelReport {
        release: seen.release.clone(),
        features,
    })
}

impl KernelReport {
    /// A hint for a map that could not be created (EPERM), when RLIMIT_MEMLOCK is the likely
    /// reason: a kernel before 5.11 and a finite limit.
    pub fn memlock_hint(&self) -> Option<String> {
        let memcg = self
            .features
            .iter()
            .find(|f| f.name == "memcg_accounting")?;
        let fallback = memcg.fallback.as_deref()?;
        fallback.contains("cannot be raised").then(|| {
            format!(
                "Linux {} charges BPF maps to RLIMIT_MEMLOCK ({fallback}): set \
                 LimitMEMLOCK=infinity in the systemd unit or `ulimit -l unlimited`",
                self.release
            )
        })
    }
}

/// Says once what the kernel is and which fallbacks are in use.
fn log(report: &KernelReport) {
    let summary: Vec<String> = report
        .features
        .iter()
        .map(|f| {
            let state = match f.available {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            };
            format!("{}={state}", f.name)
        })
        .collect();
    info!(release = %report.release, features = %summary.join(" "), "kernel features");
    for f in &report.features {
        if let Some(fallback) = &f.fallback {
            warn!(
                feature = %f.name,
                since = %f.since,
                release = %report.release,
                "kernel without {}: {fallback}",
                f.name
            );
        }
        if f.available.is_none() {
            warn!(feature = %f.name, "could not tell whether the kernel has {}", f.name);
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Creates (and closes) a one-slot array with BPF_F_MMAPABLE: EINVAL means the kernel does
/// not know the flag.
fn probe_mmapable_array() -> Option<bool> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    let attr = crate::sys::MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
        ..Default::default()
    };
    // SAFETY: a valid BPF_MAP_CREATE attribute without pointers.
    match unsafe { crate::sys::bpf(BPF_MAP_CREATE, &attr) } {
        Ok(fd) => {
            // SAFETY: the kernel just returned this fd; closing it frees the map.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Some(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Some(false),
        Err(_) => None,
    }
}

/// Before 5.11 maps count against RLIMIT_MEMLOCK: lift it when allowed (aya would try the
/// same on the first EPERM), and say what it is.
fn lift_memlock() -> Memlock {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Memlock::Limited(0);
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Memlock::Unlimited;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Memlock::Raised {
            from: limit.rlim_cur,
        };
    }
    Memlock::Limited(limit.rlim_cur)
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debian11() -> Observed {
        Observed {
            release: "5.10.0-46-amd64".into(),
            version: Some(KernelVersion::new(5, 10, 262)),
            ringbuf: Some(true),
            lpm_trie: Some(true),
            lru_hash: Some(true),
            mmapable_array: Some(true),
            memlock: Memlock::Unlimited,
            syn_cookies: Some(true),
        }
    }

    fn auto_egress() -> Wanted {
        Wanted {
            egress_attach: Some(AttachMode::Auto),
            syn_protection: false,
        }
    }

    #[test]
    fn syn_protection_is_refused_without_syn_cookies_and_says_how_to_disable_it() {
        let without = Observed {
            syn_cookies: Some(false),
            ..debian11()
        };
        let report = decide(&without, auto_egress()).unwrap();
        assert_eq!(feature(&report, "syn_cookies").available, Some(false));
        let wanted = Wanted {
            syn_protection: true,
            ..auto_egress()
        };
        let err = decide(&without, wanted).unwrap_err().to_string();
        assert!(
            err.contains("CONFIG_SYN_COOKIES") && err.contains("enabled = false"),
            "{err}"
        );
        assert!(decide(&debian11(), wanted).is_ok());
    }

    fn feature<'a>(report: &'a KernelReport, name: &str) -> &'a FeatureState {
        report.features.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn tcx_falls_back_to_clsact_before_6_6_and_is_refused_when_forced() {
        let report = decide(&debian11(), auto_egress()).unwrap();
        let tcx = feature(&report, "tcx");
        assert_eq!(tcx.available, Some(false));
        assert!(tcx.fallback.as_deref().unwrap().contains("clsact"));

        let forced = Wanted {
            egress_attach: Some(AttachMode::Tcx),
            syn_protection: false,
        };
        let err = decide(&debian11(), forced).unwrap_err().to_string();
        assert!(err.contains("TCX") && err.contains("6.6"), "{err}");
        assert!(err.contains("[egress] attach = \"auto\""), "{err}");

        // Egress off: TCX is reported, no fallback claimed.
        let off = Wanted {
            egress_attach: None,
            syn_protection: false,
        };
        assert_eq!(
            feature(&decide(&debian11(), off).unwrap(), "tcx").fallback,
            None
        );

        let mut debian13 = debian11();
        debian13.version = Some(KernelVersion::new(6, 12, 57));
        let report = decide(&debian13, forced).unwrap();
        assert_eq!(feature(&report, "tcx").available, Some(true));
        assert_eq!(feature(&report, "tcx").fallback, None);
    }

    #[test]
    fn a_kernel_before_5_9_is_refused_naming_xdp_links() {
        let mut old = debian11();
        old.version = Some(KernelVersion::new(5, 4, 0));
        let err = decide(&old, auto_egress()).unwrap_err().to_string();
        assert!(err.contains("XDP links") && err.contains("5.9"), "{err}");
        assert!(err.contains("no setting avoids it"), "{err}");
    }

    #[test]
    fn a_missing_map_type_is_refused_by_name_and_an_unknown_one_is_not() {
        let mut seen = debian11();
        seen.ringbuf = Some(false);
        let err = decide(&seen, auto_egress()).unwrap_err().to_string();
        assert!(err.contains("ring buffers") && err.contains("5.8"), "{err}");

        let mut seen = debian11();
        seen.mmapable_array = Some(false);
        let err = decide(&seen, auto_egress()).unwrap_err().to_string();
        assert!(err.contains("BPF_F_MMAPABLE"), "{err}");

        // A probe that could not run (no privileges) does not refuse.
        let mut seen = debian11();
        seen.lpm_trie = None;
        let report = decide(&seen, auto_egress()).unwrap();
        assert_eq!(feature(&report, "lpm_trie").available, None);
    }

    #[test]
    fn memlock_before_5_11_is_lifted_reported_or_refused() {
        let mut seen = debian11();
        seen.memlock = Memlock::Raised { from: 64 << 10 };
        let report = decide(&seen, auto_egress()).unwrap();
        let memcg = feature(&report, "memcg_accounting");
        assert_eq!(memcg.available, Some(false));
        assert!(
            memcg
                .fallback
                .as_deref()
                .unwrap()
                .contains("raised from 64 KiB")
        );
        assert_eq!(report.memlock_hint(), None);

        seen.memlock = Memlock::Limited(64 << 10);
        let err = decide(&seen, auto_egress()).unwrap_err().to_string();
        assert!(
            err.contains("LimitMEMLOCK=infinity") && err.contains("64 KiB"),
            "{err}"
        );

        seen.memlock = Memlock::Limited(256 << 20);
        let report = decide(&seen, auto_egress()).unwrap();
        assert!(
            report
                .memlock_hint()
                .unwrap()
                .contains("LimitMEMLOCK=infinity")
        );

        let mut new = debian11();
        new.version = Some(KernelVersion::new(6, 1, 0));
        new.memlock = Memlock::NotNeeded;
        let report = decide(&new, auto_egress()).unwrap();
        assert_eq!(feature(&report, "memcg_accounting").available, Some(true));
        assert_eq!(feature(&report, "memcg_accounting").fallback, None);
    }

    #[test]
    fn this_kernel_is_observed() {
        let seen = observe();
        assert_ne!(seen.release, "unknown");
        assert!(seen.version.is_some());
        // As root (CI, the integration tests) the probes answer; this machine is >= 5.9.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(seen.ringbuf, Some(true));
            assert_eq!(seen.mmapable_array, Some(true));
            decide(&seen, auto_egress()).unwrap();
        }
    }
}
