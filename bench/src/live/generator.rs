//! The packet generator of the rate benchmark, in one of two ways: live frames
//! ([`LiveFrames`], BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, the faster) where the
//! kernel allows them, else a packet socket ([`PacketSocket`]). Both send the same frames
//! (one per source address of [`super::frames::GEN_SOURCES`], checksums valid) from a thread
//! pinned to the generator's CPU, and both hand the receiver xdp_frames, so its per-packet
//! work is the same whichever sends.

use std::{net::IpAddr, sync::atomic::AtomicBool, time::Duration};

use anyhow::Context as _;

use super::{Family, lab::RateLab, live_frames::LiveFrames, packet_socket::PacketSocket};

/// `--generator`: how frames are sent.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeneratorChoice {
    /// Live frames if the kernel allows them (probed once with one frame), else the socket.
    #[default]
    Auto,
    /// BPF_PROG_TEST_RUN with live frames (fails where the kernel refuses them: EPERM).
    Live,
    /// An AF_PACKET socket into a veth pair whose XDP program forwards to the receiver.
    Socket,
}

/// What both generators do; [`Generator`] holds one of them.
pub(crate) trait FrameSender: Sync {
    /// The frame without its FCS (IPv4 60 bytes: 64 on the wire; IPv6 62: 66).
    fn frame_len(&self) -> usize;

    /// Sends from [`super::frames::GEN_SOURCES`] sources (`sources` cycled when shorter),
    /// all of the run's family, from now on.
    fn set_sources(&mut self, sources: &[IpAddr]) -> anyhow::Result<()>;

    /// Sends from a thread in the namespace at `netns_path`, pinned to `cpu`, until `stop` is
    /// set or `limit` has passed; returns the frames sent.
    fn transmit(
        &self,
        netns_path: &str,
        cpu: usize,
        stop: &AtomicBool,
        limit: Duration,
    ) -> anyhow::Result<u64>;
}

pub(crate) struct Generator {
    /// `live` or `socket`.
    pub key: &'static str,
    pub sender: Box<dyn FrameSender>,
}

impl Generator {
    /// The generator `choice` asks for; for `auto`, also why it was chosen.
    pub fn new(
        choice: GeneratorChoice,
        family: Family,
        lab: &RateLab,
    ) -> anyhow::Result<(Self, String)> {
        let live = || {
            LiveFrames::new(
                family,
                &lab.tx_netns_path(),
                lab.tx_mac,
                lab.rx_mac,
                lab.tx_ifindex,
            )
        };
        let as_live = |g: LiveFrames| Self {
            key: "live",
            sender: Box::new(g),
        };
        let socket = || {
            PacketSocket::new(family, lab).map(|g| Self {
                key: "socket",
                sender: Box::new(g),
            })
        };
        match choice {
            GeneratorChoice::Live => {
                let generator = live()?;
                generator.probe(&lab.tx_netns_path()).context(
                    "the kernel refuses BPF_PROG_TEST_RUN with live frames: use --generator \
                     socket (or auto)",
                )?;
                Ok((as_live(generator), "chosen with --generator live".into()))
            }
            GeneratorChoice::Socket => Ok((socket()?, "chosen with --generator socket".into())),
            GeneratorChoice::Auto => {
                let generator = live()?;
                match generator.probe(&lab.tx_netns_path()) {
                    Ok(()) => Ok((
                        as_live(generator),
                        "auto: the kernel accepts live frames".into(),
                    )),
                    Err(e) => {
                        drop(generator);
                        Ok((
                            socket()?,
                            format!("auto: the kernel refuses live frames ({e:#})"),
                        ))
                    }
                }
            }
        }
    }
}
