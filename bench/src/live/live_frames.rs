//! The live-frames generator: `bench_gen` or, for IPv6, `bench_gen6`
//! (xdp-ebpf/src/bin/xdp-bench.rs) run through BPF_PROG_TEST_RUN in live-frames mode
//! (BPF_F_TEST_XDP_LIVE_FRAMES) on a thread that has entered the sending namespace and is pinned
//! to its own CPU. The program stamps one of [`GEN_SOURCES`] source addresses (and the matching
//! IPv4 header checksum or IPv6 UDP checksum, computed here) into a minimal UDP frame and returns
//! XDP_TX, which the kernel turns into a transmit out of the sending veth named in the context,
//! i.e. to the receiver. Some kernels refuse live frames (EPERM, also for a bare program on
//! `lo`); [`LiveFrames::probe`] finds out with one frame.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::Array,
    programs::{ProgramError, TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    sys::SyscallError,
};

use super::{
    Family,
    frames::{GEN_SOURCES, block_signals, frame_v4, frame_v6, ipv4_checksum},
    generator::FrameSender,
    lab::{attach_xdp_mode, enter_netns, raise_priority, set_affinity},
};
/// Frames per BPF_PROG_TEST_RUN call: the stop flag is checked between calls.
const FRAMES_PER_CALL: u32 = 1 << 16;
/// Frames the kernel pushes through the program per batch (at most 256).
const BATCH: u32 = 64;
/// `lo` is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// Offsets in the frame.
const IP_OFFSET: usize = 14;
const UDP6_CHECKSUM_OFFSET: usize = IP_OFFSET + 40 + 6;

pub(crate) struct LiveFrames {
    ebpf: Ebpf,
    family: Family,
    /// `bench_gen` or `bench_gen6`.
    program: &'static str,
    frame: Vec<u8>,
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
    /// `struct xdp_md` for the run: data 0, data_end = frame length, ingress_ifindex = the
    /// sending veth (XDP_TX leaves through it), everything else 0.
    ctx: [u8; 24],
}

impl LiveFrames {
    /// Loads the generator for the sending veth `tx_ifindex` in the namespace at
    /// `tx_netns_path`.
    pub fn new(
        family: Family,
        tx_netns_path: &str,
        tx_mac: [u8; 6],
        rx_mac: [u8; 6],
        tx_ifindex: u32,
    ) -> anyhow::Result<Self> {
        let name = match family {
            Family::Ipv4 => "bench_gen",
            Family::Ipv6 => "bench_gen6",
        };
        let mut ebpf = crate::load_bench_object(false)?;
        let program: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        // Every BPF_PROG_TEST_RUN of an XDP program adds it to the kernel's XDP dispatcher and
        // removes it after, each time with a synchronize_rcu() (tens of ms, the generator idle)
        // unless the program is already in the dispatcher because it is attached somewhere.
        // So it is attached, in generic mode, to the sending namespace's loopback, where no
        // packet ever arrives (nothing in that namespace sends to itself). Dropping the object
        // detaches it.
        attach_xdp_mode(program, tx_netns_path, LOOPBACK_IFINDEX, XdpMode::Skb)
            .with_context(|| format!("attaching {name} to the sending namespace's loopback"))?;
        let frame = match family {
            Family::Ipv4 => frame_v4(tx_mac, rx_mac, Ipv4Addr::UNSPECIFIED)?,
            Family::Ipv6 => frame_v6(tx_mac, rx_mac, Ipv6Addr::UNSPECIFIED)?,
        };
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&tx_ifindex.to_ne_bytes());
        Ok(Self {
            ebpf,
            family,
            program: name,
            frame,
            tx_mac,
            rx_mac,
            ctx,
        })
    }

    fn set_sources_v6(&mut self, sources: &[Ipv6Addr]) -> anyhow::Result<()> {
        let mut table: Array<_, [u8; 24]> = Array::try_from(
            self.ebpf
                .map_mut("BENCH_GEN_SRC6")
                .context("BENCH_GEN_SRC6")?,
        )?;
        for i in 0..GEN_SOURCES {
            let source = sources[i % sources.len()];
            // The whole frame for this source, for its UDP checksum (pseudo-header included).
            let frame = frame_v6(self.tx_mac, self.rx_mac, source)?;
            let mut entry = [0u8; 24];
            entry[..16].copy_from_slice(&source.octets());
            entry[16..18].copy_from_slice(&frame[UDP6_CHECKSUM_OFFSET..UDP6_CHECKSUM_OFFSET + 2]);
            table.set(i as u32, entry, 0)?;
        }
        Ok(())
    }

    fn set_sources_v4(&mut self, sources: &[Ipv4Addr]) -> anyhow::Result<()> {
        let header: [u8; 20] = self.frame[IP_OFFSET..IP_OFFSET + 20]
            .try_into()
            .expect("20 bytes");
        let mut table: Array<_, [u8; 8]> = Array::try_from(
            self.ebpf
                .map_mut("BENCH_GEN_SRC")
                .context("BENCH_GEN_SRC")?,
        )?;
        for i in 0..GEN_SOURCES {
            let source = sources[i % sources.len()].octets();
            let checksum = ipv4_checksum(&header, source);
            let mut entry = [0u8; 8];
            entry[..4].copy_from_slice(&source);
            entry[4..6].copy_from_slice(&checksum.to_be_bytes());
            table.set(i as u32, entry, 0)?;
        }
        Ok(())
    }

    /// Sends one frame, from a thread in the namespace at `netns_path`: fails (EPERM) where
    /// the kernel refuses live frames.
    pub fn probe(&self, netns_path: &str) -> anyhow::Result<()> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<()> {
                    enter_netns(netns_path)?;
                    let program: &Xdp = self
                        .ebpf
                        .program(self.program)
                        .context(self.program)?
                        .try_into()?;
                    program
                        .test_run(TestRunOptions {
                            data_in: Some(&self.frame),
                            ctx_in: Some(&self.ctx),
                            repeat: 1,
                            attrs: TestRunAttrs::new().xdp_live_frames(1),
                            ..TestRunOptions::default()
                        })
                        .map(drop)
                        .map_err(anyhow::Error::from)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the probing thread panicked"))?
        })
    }
}

impl FrameSender for LiveFrames {
    fn frame_len(&self) -> usize {
        self.frame.len()
    }

    fn set_sources(&mut self, sources: &[IpAddr]) -> anyhow::Result<()> {
        anyhow::ensure!(!sources.is_empty(), "no source addresses");
        let family = self.family;
        let wrong = |a: &IpAddr| anyhow::anyhow!("{a} in an {} run", family.label());
        match family {
            Family::Ipv4 => {
                let v4: Vec<Ipv4Addr> = sources
                    .iter()
                    .map(|a| match a {
                        IpAddr::V4(v4) => Ok(*v4),
                        IpAddr::V6(_) => Err(wrong(a)),
                    })
                    .collect::<anyhow::Result<_>>()?;
                self.set_sources_v4(&v4)
            }
            Family::Ipv6 => {
                let v6: Vec<Ipv6Addr> = sources
                    .iter()
                    .map(|a| match a {
                        IpAddr::V6(v6) => Ok(*v6),
                        IpAddr::V4(_) => Err(wrong(a)),
                    })
                    .collect::<anyhow::Result<_>>()?;
                self.set_sources_v6(&v6)
            }
        }
    }

    fn transmit(
        &self,
        netns_path: &str,
        cpu: usize,
        stop: &AtomicBool,
        limit: Duration,
    ) -> anyhow::Result<u64> {
        enter_netns(netns_path)?;
        set_affinity(0, cpu)?;
        raise_priority(0)?;
        block_signals();
        let program: &Xdp = self
            .ebpf
            .program(self.program)
            .context(self.program)?
            .try_into()?;
        let deadline = Instant::now() + limit;
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let opts = TestRunOptions {
                data_in: Some(&self.frame),
                ctx_in: Some(&self.ctx),
                repeat: FRAMES_PER_CALL,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..TestRunOptions::default()
            };
            match program.test_run(opts) {
                Ok(_) => sent += u64::from(FRAMES_PER_CALL),
                // A signal cut the run short (how many frames it sent is not reported); the
                // loop is bounded by the deadline, so just go on.
                Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("BPF_PROG_TEST_RUN (live frames) of {}", self.program)
                    });
                }
            }
        }
        Ok(sent)
    }
}
