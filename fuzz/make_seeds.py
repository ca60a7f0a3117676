#!/usr/bin/env python3
"""Writes the checked-in seed corpus under fuzz/seeds/<target>/ (run from anywhere).

The seeds are valid inputs the fuzzer mutates from: frames of every kind the XDP parser
follows (IPv4, IPv6, 802.1Q, QinQ, IPv4 options, IPv6 extension headers, ARP), the feed
fixtures in every format, configs, and API request bodies. `cargo xtask fuzz` reads them and
writes what it finds to fuzz/corpus/<target>/ (not checked in).
"""
import ipaddress
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
SEEDS = ROOT / "seeds"

DST_MAC = bytes([2, 0, 0, 0, 0, 2])
SRC_MAC = bytes([2, 0, 0, 0, 0, 1])
PAYLOAD = b"xdpwall-testrun!"


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def udp(payload=PAYLOAD):
    return struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload


def ipv4(src, dst, payload, options=b"", proto=17, frag=0):
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 0x1234, frag, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    ) + options
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(src, dst, next_header, payload):
    return struct.pack("!IHBB", 0x60000000, len(payload), next_header, 64) + \
        ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def ether(ethertype, body, tags=()):
    out = DST_MAC + SRC_MAC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", ethertype) + body


def frames():
    v4 = lambda s: ipv4(s, "203.0.113.1", udp())
    v6 = lambda s: ipv6(s, "2001:db8:1::1", 17, udp())
    hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])
    dst_opts = bytes([44, 0, 1, 4, 0, 0, 0, 0])
    fragment = bytes([17, 0, 0, 0, 0, 0, 0x12, 0x34])
    routing = bytes([17, 0, 0, 0, 0, 0, 0, 0])
    yield "v4-blocked", ether(0x0800, v4("203.0.113.66"))
    yield "v4-allowed-in-block", ether(0x0800, v4("203.0.113.70"))
    yield "v4-unlisted", ether(0x0800, v4("192.0.2.1"))
    yield "v4-options", ether(0x0800, ipv4("198.51.100.200", "203.0.113.1", udp(), options=bytes([1] * 7 + [0])))
    yield "v4-tcp", ether(0x0800, ipv4("198.51.100.7", "203.0.113.1", struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 0x50, 2, 65535, 0, 0), proto=6))
    yield "v4-first-fragment", ether(0x0800, ipv4("198.51.100.9", "203.0.113.1", udp(), frag=0x2000))
    yield "v4-later-fragment", ether(0x0800, ipv4("198.51.100.9", "203.0.113.1", PAYLOAD, frag=0x0003))
    yield "v4-vlan", ether(0x0800, v4("203.0.113.66"), tags=[(0x8100, 100)])
    yield "v4-qinq", ether(0x0800, v4("198.51.100.1"), tags=[(0x88A8, 200), (0x8100, 100)])
    yield "v6-blocked", ether(0x86DD, v6("2001:db8:1::105"))
    yield "v6-unlisted", ether(0x86DD, v6("2001:db8:1::2"))
    yield "v6-qinq", ether(0x86DD, v6("2001:db8:1::1ff"), tags=[(0x88A8, 200), (0x8100, 100)])
    yield "v6-extensions", ether(0x86DD, ipv6("2001:db8:1::105", "2001:db8:1::1", 0, hop + dst_opts + fragment + udp()))
    yield "v6-routing", ether(0x86DD, ipv6("2001:db8:1::110", "2001:db8:1::1", 43, routing + udp()))
    yield "v6-mapped-v4", ether(0x86DD, v6("::ffff:203.0.113.66"))
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + SRC_MAC + bytes([192, 0, 2, 1]) + bytes(6) + bytes([192, 0, 2, 2])
    yield "arp", ether(0x0806, arp)


def write(target, name, data):
    directory = SEEDS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def main():
    for name, frame in frames():
        write("packet", name, frame)
    for name, text in [
        ("v4", "198.51.100.7"), ("v4-net", " 203.0.113.77/26\t"), ("v6", "2001:db8::/32"),
        ("v6-host-bits", "2001:db8:1::105/120"), ("mapped", "::ffff:198.51.100.0/120"),
        ("too-long", "10.0.0.0/33"), ("zone", "fe80::1%eth0"),
        # Taken, unlike ipnet: the first difference the cidr target found.
        ("leading-zeros", " 2.0.31.1/032"),
    ]:
        write("cidr", name, text)
    fixtures = REPO / "blocklists" / "fixtures"
    for path in sorted(fixtures.glob("*.*")):
        # First byte: CSV column 1, skip the header (see fuzz_targets/feeds.rs).
        write("feeds", path.stem, bytes([1 | 4]) + path.read_bytes())
    write("config", "deploy", (REPO / "deploy" / "xdpwall.toml").read_bytes())
    write("config", "rules", 'interfaces = ["eth0"]\nmanagement = ["192.0.2.10"]\n'
          '[[rules]]\ncidr = "198.51.100.0/24"\nreason = "scan"\n'
          '[[rules]]\ncidr = "2001:db8::/32"\naction = "allow"\nlist = "partners"\n')
    write("config", "feeds", '[[feeds]]\nname = "spamhaus-drop"\n'
          '[[feeds]]\nname = "custom"\nurl = "https://example.invalid/list.txt"\nformat = "plain"\n')
    write("config", "api", '[api]\nlisten = "127.0.0.1:9470"\nmax_batch = 10\n')
    bodies = [
        (0, "add", '{"cidr":"198.51.100.0/24","reason":"scan","ttl":"1h"}'),
        (0, "add-allow", '{"cidr":"2001:db8::/48","action":"allow","list":"partners"}'),
        (0, "add-force", '{"cidr":"0.0.0.0/0","force":true}'),
        (1, "batch", '{"rules":[{"cidr":"198.51.100.7"},{"cidr":"2001:db8::1","ttl":"90s"}]}'),
        (2, "delete", "1"),
        (3, "list", "list=api&action=block&ip=198.51.100.7"),
    ]
    for op, name, body in bodies:
        write("api_json", name, bytes([op]) + body.encode())


if __name__ == "__main__":
    main()
