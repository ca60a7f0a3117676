//! The socket generator, for kernels that refuse live frames: an AF_PACKET `SOCK_RAW` socket
//! with `PACKET_QDISC_BYPASS` sends prebuilt frames in `sendmmsg` batches into a second veth
//! pair inside the sending namespace (`…ga` → `…gb`), whose XDP program `bench_redirect`
//! redirects each frame out of the sending veth to the receiver. The forwarder's NAPI runs in
//! a thread on the generator's CPU, which the sender yields to after each batch, so frames reach
//! the receiver in bursts of up to 64 (as from live frames), not one by one.
//!
//! Why the detour: a frame a packet socket writes straight into the sending veth reaches the
//! receiver as an skb, which veth must copy into a page and free before an XDP program can see
//! it, about 400 ns of the receiving CPU per packet here, more than most filters cost. Through
//! the second pair that copy happens on the generator's CPU (when `…gb` runs `bench_redirect`),
//! and the receiver gets xdp_frames, as it does from live frames.
//!
//! The frames are all built here, one per source address (checksums valid), and cycled.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::Array,
    programs::{Xdp, xdp::XdpLinkId},
};
use xdpwall_netlab::run;

use super::{
    Family,
    frames::{GEN_SOURCES, block_signals, frame_from},
    generator::FrameSender,
    lab::{
        RateLab, attach_xdp, enter_netns, link_identity, raise_priority, set_affinity,
        threaded_napi,
    },
};

/// Frames per `sendmmsg` call: at most what the forwarder's ring (256 frames) holds.
pub(crate) const BATCH: usize = 128;

pub(crate) struct PacketSocket {
    family: Family,
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
    /// All frames back to back, `stride` bytes apart.
    frames: Vec<u8>,
    stride: usize,
    frame_len: usize,
    /// Where the socket writes (`…ga`, in the sending namespace).
    inject_ifindex: u32,
    /// The sending namespace and the forwarding end of the pair (`…gb`).
    netns: String,
    forward: String,
    // Drop order: the link before the program's object.
    _link: XdpLinkId,
    _ebpf: Ebpf,
    _pair: PairGuard,
}

/// Deletes the generator's veth pair (deleting the lab's namespace would too).
struct PairGuard {
    netns: String,
    name: String,
}

impl Drop for PairGuard {
    fn drop(&mut self) {
        let _ = run("ip", &["-n", &self.netns, "link", "del", &self.name]);
    }
}

impl PacketSocket {
    /// Creates the injection pair in the lab's sending namespace and attaches the forwarder.
    pub fn new(family: Family, lab: &RateLab) -> anyhow::Result<Self> {
        let netns = lab.lab.peer_ns.clone();
        let inject = format!("{}ga", lab.lab.peer_if);
        let forward = format!("{}gb", lab.lab.peer_if);
        run(
            "ip",
            &[
                "-n", &netns, "link", "add", &inject, "type", "veth", "peer", "name", &forward,
            ],
        )
        .context("creating the generator's veth pair")?;
        let pair = PairGuard {
            netns: netns.clone(),
            name: inject.clone(),
        };
        for ifname in [&inject, &forward] {
            // No IPv6 on the pair: router and neighbour solicitations would be forwarded to the
            // receiver along with the test frames.
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &netns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{ifname}.disable_ipv6=1"),
                ],
            )?;
            run("ip", &["-n", &netns, "link", "set", ifname, "up"])?;
        }
        let (inject_ifindex, _) = link_identity(&netns, &inject)?;
        let (forward_ifindex, _) = link_identity(&netns, &forward)?;

        let mut ebpf = crate::load_bench_object(false)?;
        let mut target: Array<_, u32> =
            Array::try_from(ebpf.map_mut("BENCH_REDIRECT").context("BENCH_REDIRECT")?)?;
        target.set(0, lab.tx_ifindex, 0)?;
        let program: &mut Xdp = ebpf
            .program_mut("bench_redirect")
            .context("bench_redirect")?
            .try_into()?;
        program.load().context("loading bench_redirect")?;
        let link = attach_xdp(program, &lab.tx_netns_path(), forward_ifindex)
            .context("attaching bench_redirect to the generator's veth pair")?;
        Ok(Self {
            family,
            tx_mac: lab.tx_mac,
            rx_mac: lab.rx_mac,
            frames: Vec::new(),
            stride: 0,
            frame_len: frame_from(
                family,
                lab.tx_mac,
                lab.rx_mac,
                match family {
                    Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                },
            )?
            .len(),
            inject_ifindex,
            netns,
            forward,
            _link: link,
            _ebpf: ebpf,
            _pair: pair,
        })
    }
}

impl FrameSender for PacketSocket {
    fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn set_sources(&mut self, sources: &[IpAddr]) -> anyhow::Result<()> {
        anyhow::ensure!(!sources.is_empty(), "no source addresses");
        // 64-byte slots: each frame starts a cache line.
        self.stride = self.frame_len.next_multiple_of(64);
        self.frames = vec![0; self.stride * GEN_SOURCES];
        for (i, slot) in self.frames.chunks_exact_mut(self.stride).enumerate() {
            let frame = frame_from(
                self.family,
                self.tx_mac,
                self.rx_mac,
                sources[i % sources.len()],
            )?;
            slot[..frame.len()].copy_from_slice(&frame);
        }
        Ok(())
    }

    fn transmit(
        &self,
        netns_path: &str,
        cpu: usize,
        stop: &AtomicBool,
        limit: Duration,
    ) -> anyhow::Result<u64> {
        anyhow::ensure!(!self.frames.is_empty(), "no frames: set_sources first");
        enter_netns(netns_path)?;
        set_affinity(0, cpu)?;
        raise_priority(0)?;
        block_signals();
        let socket = open_socket(self.inject_ifindex)?;
        // The forwarder's NAPI in a thread on this CPU, run when this thread yields after each
        // batch: it then forwards the batch in polls of 64 frames, each flushed to the receiver
        // at once. (In softirq context it would run after every single frame the socket sends,
        // and the receiver would be woken once per frame.)
        threaded_napi(&self.netns, &self.forward, cpu)?;
        let mut iovecs: Vec<libc::iovec> = self
            .frames
            .chunks_exact(self.stride)
            .map(|slot| libc::iovec {
                iov_base: slot.as_ptr() as *mut libc::c_void,
                iov_len: self.frame_len,
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut headers: Vec<libc::mmsghdr> = (0..iovecs.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (header, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        let deadline = Instant::now() + limit;
        let mut next = 0usize;
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let batch = BATCH.min(headers.len() - next);
            // SAFETY: `batch` headers from `next`, each pointing at one iovec over a frame of
            // `self.frames`, all alive for the call; the socket fd is open.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers[next..].as_mut_ptr(),
                    batch as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    // The socket's buffer is full of frames the kernel has not freed yet.
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => {
                        std::thread::yield_now();
                        continue;
                    }
                    _ => return Err(error).context("sendmmsg on the packet socket"),
                }
            }
            sent += n as u64;
            // SAFETY: no arguments.
            unsafe { libc::sched_yield() };
            next = (next + n as usize) % headers.len();
        }
        Ok(sent)
    }
}

/// An AF_PACKET raw socket bound to `ifindex` (of the calling thread's namespace), sending
/// past the qdisc layer, receiving nothing (protocol 0).
fn open_socket(ifindex: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain syscalls on a socket this function owns; the structs are plain data.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!(
                "socket(AF_PACKET, SOCK_RAW): {} (needs CAP_NET_RAW)",
                std::io::Error::last_os_error()
            );
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd,
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            bail!(
                "binding the packet socket to ifindex {ifindex}: {}",
                std::io::Error::last_os_error()
            );
        }
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        ) != 0
        {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
        // Room for a few batches in flight (SO_SNDBUFFORCE: root may pass the sysctl limit).
        let buffer: libc::c_int = 16 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&raw const buffer).cast(),
            size_of::<libc::c_int>() as u32,
        );
        Ok(socket)
    }
}
