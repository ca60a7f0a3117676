//! SYN-flood protection: the map names and constants of the `xdpwall_syn` stage, which answers
//! a SYN to a protected port with a SYN cookie from XDP (the kernel validates the client's ACK
//! itself). The ingress program (and the scoped-rule stage) tail-call it, slot
//! [`super::stages::SYN`], when [`super::lookup::SYN`] is set and the packet is still "pass".

/// Map names, at most 15 bytes.
pub mod map_names {
    /// Array of [`super::PORT_WORDS`] `u64`: bit `port % 64` of word `port / 64` is set for
    /// each protected destination port.
    pub const PORTS: &str = "XW_SYN_PORTS";
    /// Per-CPU array of [`super::counter::COUNT`] `u64`, index [`super::counter`].
    pub const STATS: &str = "XW_SYN_STATS";
}

/// Words of the port bitmap: 65536 bits.
pub const PORT_WORDS: u32 = 65536 / 64;

/// The word and the bit of `port` in the port bitmap.
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u64) {
    ((port / 64) as u32, 1u64 << (port % 64))
}

/// Slots of [`map_names::STATS`].
pub mod counter {
    /// SYNs answered with a SYN-ACK carrying a cookie (XDP_TX); they never reached the stack.
    pub const COOKIES: u32 = 0;
    /// SYNs to a protected port passed to the stack instead: no listening socket for them, the
    /// kernel would not issue a cookie (`net.ipv4.tcp_syncookies = 1` and no flood on that
    /// listener, or its accept queue full), or a frame whose headers are cut.
    pub const PASSED: u32 = 1;
    /// Number of slots.
    pub const COUNT: u32 = 2;
}

/// Hop limit (IPv6) and TTL (IPv4) of the SYN-ACKs the stage sends.
pub const SYNACK_TTL: u8 = 64;
/// Receive window the SYN-ACKs advertise (unscaled: no window scaling is offered).
pub const SYNACK_WINDOW: u16 = 64240;
