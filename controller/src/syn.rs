//! SYN-flood protection (`[syn_protection]`): its settings, the `xdpwall_syn` stage's maps (the
//! protected ports, the cookie counters) and the host settings the kernel needs to accept the
//! cookies the stage sends.
//!
//! The stage answers a SYN to a protected port with a SYN cookie from XDP; the client's ACK goes
//! to the stack, which checks the cookie itself (`cookie_v4_check` / `cookie_v6_check`). The
//! stack only does that with `net.ipv4.tcp_syncookies` on (1 or 2) and for a listener that issued
//! a cookie in the last two minutes; the stage's helper (`bpf_tcp_gen_syncookie`) marks the
//! listener on every cookie it issues, so the second condition holds by itself. With
//! `tcp_syncookies = 2` the stage answers every SYN to a protected port; with 1, only SYNs to a
//! listener whose SYN queue is full (the others get the stack's full handshake, with window
//! scaling, SACK and timestamps).

use std::{collections::BTreeSet, fs, path::Path};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use xdpwall_shared::syn::{PORT_WORDS, counter, map_names, port_bit};

use crate::datapath::{DatapathError, map_err};

/// Name of the stage program in the XDP object.
pub const PROGRAM: &str = "xdpwall_syn";

/// Where the kernel keeps the SYN-cookie switch (absent without `CONFIG_SYN_COOKIES`).
pub const SYNCOOKIES_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";

/// `[syn_protection]` in the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SynProtection {
    /// Answer SYNs to `ports` with SYN cookies from XDP.
    #[serde(default)]
    pub enabled: bool,
    /// Destination ports (TCP) to protect.
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl SynProtection {
    /// The config's mistakes: `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.ports.contains(&0) {
            return Err((
                "ports",
                "port 0 is not a TCP port a client can connect to".into(),
            ));
        }
        if self.enabled && self.ports.is_empty() {
            return Err((
                "ports",
                "`enabled = true` protects the ports listed here, and none is: list the \
                 listening ports to protect (e.g. `ports = [22, 443]`)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The ports the stage protects: none when disabled.
    pub fn active_ports(&self) -> BTreeSet<u16> {
        if self.enabled {
            self.ports.iter().copied().collect()
        } else {
            BTreeSet::new()
        }
    }
}

/// What the stage counted since its maps were created, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SynCounters {
    /// SYNs answered with a cookie from XDP (they never reached the stack).
    pub cookies: u64,
    /// SYNs to a protected port passed to the stack: no listener, or the kernel issued no cookie
    /// for it (`tcp_syncookies = 1` and no flood on that listener, or its accept queue full).
    pub passed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SynError {
    #[error(
        "[syn_protection] is enabled but this kernel refused the SYN-cookie stage ({reason}); \
         nothing was attached. The stage needs bpf_skc_lookup_tcp and bpf_tcp_gen_syncookie \
         from XDP (Linux 5.3) and CONFIG_SYN_COOKIES (tested on Linux 5.10 and 6.18): use \
         another kernel, or set `enabled = false` under [syn_protection] to run without \
         SYN-flood protection"
    )]
    Unavailable { reason: String },
    #[error(transparent)]
    Map(#[from] DatapathError),
}

/// The stage as loaded with the XDP object: its maps, and why the kernel refused its program
/// (when it did: `[syn_protection]` cannot be enabled then).
pub struct SynStage {
    pub maps: SynMaps,
    pub refused: Option<String>,
    /// Whether the datapath's switch word has the stage on (set by the daemon).
    pub enabled: bool,
}

impl SynStage {
    /// Takes the maps out of `ebpf` and loads the program (the verifier runs here).
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let maps = SynMaps::from_ebpf(ebpf)?;
        let refused = load_program(ebpf).err();
        Ok(Self {
            maps,
            refused,
            enabled: false,
        })
    }

    /// Writes the protected ports of `settings` (none when disabled); refused when the kernel
    /// refused the program and protection is enabled. The caller turns the stage on in the
    /// switch word after this (and off before it).
    pub fn apply(&mut self, settings: &SynProtection) -> Result<(), SynError> {
        if let (true, Some(reason)) = (settings.enabled, &self.refused) {
            return Err(SynError::Unavailable {
                reason: reason.clone(),
            });
        }
        self.maps.set_ports(&settings.active_ports())?;
        self.enabled = settings.enabled;
        Ok(())
    }

    /// What `GET /v1/status` says about it.
    pub fn status(&self) -> Result<SynStatus, DatapathError> {
        let counters = self.maps.counters()?;
        Ok(SynStatus {
            enabled: self.enabled,
            ports: self.maps.ports()?.into_iter().collect(),
            cookies: counters.cookies,
            passed: counters.passed,
        })
    }
}

/// SYN-flood protection in `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SynStatus {
    pub enabled: bool,
    /// The protected TCP ports.
    pub ports: Vec<u16>,
    /// SYNs answered with a cookie from XDP since the maps were created.
    pub cookies: u64,
    /// SYNs to a protected port passed to the stack (no listener, or no cookie issued).
    pub passed: u64,
}

/// The stage's maps, taken out of the loaded object.
pub struct SynMaps {
    ports: Array<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
}

impl SynMaps {
    /// Takes the stage's maps out of `ebpf` (the XDP object, loaded).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
        };
        Ok(Self {
            ports: Array::try_from(take(ebpf, map_names::PORTS)?)
                .map_err(map_err(map_names::PORTS))?,
            stats: PerCpuArray::try_from(take(ebpf, map_names::STATS)?)
                .map_err(map_err(map_names::STATS))?,
        })
    }

    /// Makes `ports` the protected ports (and no other): the bitmap is rewritten word by word,
    /// so a port kept stays protected throughout.
    pub fn set_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), DatapathError> {
        let mut words = vec![0u64; PORT_WORDS as usize];
        for &port in ports {
            let (word, bit) = port_bit(port);
            words[word as usize] |= bit;
        }
        for (index, word) in words.into_iter().enumerate() {
            let index = index as u32;
            let current = self
                .ports
                .get(&index, 0)
                .map_err(map_err(map_names::PORTS))?;
            if current != word {
                self.ports
                    .set(index, word, 0)
                    .map_err(map_err(map_names::PORTS))?;
            }
        }
        Ok(())
    }

    /// The protected ports the bitmap holds.
    pub fn ports(&self) -> Result<BTreeSet<u16>, DatapathError> {
        let mut ports = BTreeSet::new();
        for index in 0..PORT_WORDS {
            let word = self
                .ports
                .get(&index, 0)
                .map_err(map_err(map_names::PORTS))?;
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    ports.insert((index * 64 + bit) as u16);
                }
            }
        }
        Ok(ports)
    }

    pub fn counters(&self) -> Result<SynCounters, DatapathError> {
        let sum = |slot: u32| -> Result<u64, DatapathError> {
            let values = self
                .stats
                .get(&slot, 0)
                .map_err(map_err(map_names::STATS))?;
            Ok(values.iter().sum())
        };
        Ok(SynCounters {
            cookies: sum(counter::COOKIES)?,
            passed: sum(counter::PASSED)?,
        })
    }
}

/// Loads the stage program of `ebpf` (the verifier runs here); the kernel's refusal as text.
/// Kernels before 5.3 lack the helpers and refuse it; the daemon refuses to start then only if
/// `[syn_protection]` is enabled.
pub fn load_program(ebpf: &mut Ebpf) -> Result<(), String> {
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| format!("the XDP object has no program {PROGRAM}"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program.load().map_err(|e| {
        let text = format!("{e:#}");
        if let Ok(path) = std::env::var("XDPWALL_SYN_VERIFIER_LOG") {
            let _ = fs::write(path, &text);
        }
        refusal(&text)
    })
}

/// The gist of a refused load: the error and the verifier's complaint, which is the last line
/// of its log before the statistics.
fn refusal(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let first = first.split(". Verifier output").next().unwrap_or(first);
    let stats = [
        "verification time",
        "stack depth",
        "processed ",
        "max_states_per_insn",
    ];
    let complaint = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !stats.iter().any(|s| l.starts_with(s)));
    match complaint {
        Some(complaint) if complaint != first => format!("{first}: {complaint}"),
        _ => first.to_string(),
    }
}

/// Whether this kernel offers XDP programs the two helpers the stage calls
/// (`bpf_skc_lookup_tcp` since Linux 5.2, `bpf_tcp_gen_syncookie` since 5.3); the probe loads
/// a two-instruction program per helper and reads the verifier's answer. `None`: the probe
/// itself failed (no privileges).
pub fn helpers_available() -> Option<bool> {
    use aya::{
        programs::ProgramType,
        sys::{BpfHelper, is_helper_supported},
    };
    let mut all = true;
    for helper in [
        BpfHelper::BPF_FUNC_skc_lookup_tcp,
        BpfHelper::BPF_FUNC_tcp_gen_syncookie,
    ] {
        all &= is_helper_supported(ProgramType::Xdp, helper).ok()?;
    }
    Some(all)
}

/// The stage program of a loaded object, when [`load_program`] loaded it.
pub fn program(ebpf: &Ebpf) -> Option<&Xdp> {
    ebpf.program(PROGRAM)
        .and_then(|p| <&Xdp>::try_from(p).ok())
        .filter(|p| p.fd().is_ok())
}

/// One host setting SYN protection depends on, as `xdpwall check-config` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCheck {
    /// Whether the setting keeps the protection from working (else it only weakens it).
    pub fatal: bool,
    pub message: String,
}

/// Checks the host settings SYN protection needs, reading sysctls under `proc_sys`
/// (`/proc/sys`): an empty answer when everything is in place.
pub fn host_checks(proc_sys: &Path) -> Vec<HostCheck> {
    let read = |name: &str| {
        fs::read_to_string(proc_sys.join(name))
            .ok()
            .map(|v| v.trim().to_string())
    };
    let mut found = Vec::new();
    match read("net/ipv4/tcp_syncookies").as_deref() {
        None => found.push(HostCheck {
            fatal: true,
            message: "this kernel has no net.ipv4.tcp_syncookies (built without \
                      CONFIG_SYN_COOKIES): it can neither issue nor accept SYN cookies; use a \
                      kernel built with it, or set [syn_protection] enabled = false"
                .into(),
        }),
        Some("0") => found.push(HostCheck {
            fatal: true,
            message: "net.ipv4.tcp_syncookies = 0: the kernel issues no cookies and rejects the \
                      ACKs of the ones it did not send; run `sysctl -w net.ipv4.tcp_syncookies=2` \
                      (and set it in /etc/sysctl.d/ to keep it)"
                .into(),
        }),
        Some("1") => found.push(HostCheck {
            fatal: false,
            message: "net.ipv4.tcp_syncookies = 1: SYNs are answered from XDP only once a \
                      listener's SYN queue is full, so the start of a flood still reaches the \
                      stack; `sysctl -w net.ipv4.tcp_syncookies=2` answers every SYN to the \
                      protected ports from XDP (clients then get no window scaling, SACK or \
                      timestamps on those ports)"
                .into(),
        }),
        Some(_) => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_needs_ports_and_port_0_is_refused() {
        let enabled = |ports: Vec<u16>| SynProtection {
            enabled: true,
            ports,
        };
        assert!(enabled(vec![22, 443]).validate().is_ok());
        assert_eq!(enabled(vec![]).validate().unwrap_err().0, "ports");
        assert_eq!(enabled(vec![22, 0]).validate().unwrap_err().0, "ports");
        assert!(SynProtection::default().validate().is_ok());
        assert!(
            SynProtection {
                enabled: false,
                ports: vec![22]
            }
            .active_ports()
            .is_empty()
        );
    }

    #[test]
    fn a_refusal_names_the_verifiers_complaint() {
        let log = "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier \
                   output: 0: R1=ctx() R10=fp0\n12: (85) call bpf_tcp_gen_syncookie#110\nR5 \
                   unbounded memory access\nverification time 12 usec\nstack depth 360\n\
                   processed 446 insns (limit 1000000) max_states_per_insn 1\n";
        assert_eq!(
            refusal(log),
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13): R5 unbounded \
             memory access"
        );
    }

    #[test]
    fn host_checks_read_tcp_syncookies() {
        let dir = tempfile::tempdir().unwrap();
        assert!(host_checks(dir.path())[0].fatal, "missing sysctl is fatal");
        fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        let set = |v: &str| fs::write(dir.path().join("net/ipv4/tcp_syncookies"), v).unwrap();
        set("0\n");
        let found = host_checks(dir.path());
        assert!(found[0].fatal && found[0].message.contains("tcp_syncookies=2"));
        set("1\n");
        assert!(!host_checks(dir.path())[0].fatal);
        set("2\n");
        assert!(host_checks(dir.path()).is_empty());
    }
}
