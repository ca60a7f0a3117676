#!/bin/bash
# Privileged checks of xdpwall inside a virtual machine, run by `cargo xtask vm-test` as the
# guest's command (virtme-ng: the host's root filesystem read-only, OUT shared read-write).
#
#   guest-checks.sh OUT XDPWALL
#
# Writes OUT/results (one "PASS name" / "FAIL name: why" / "INFO name: text" line per check),
# OUT/kernel (uname -r) and, last, OUT/done. Everything else (state, pins, logs) lives in a
# tmpfs and in the guest's own bpffs; the logs are copied to OUT at the end.
#
# The lab: two network namespaces joined by a veth pair, documentation addresses only
# (203.0.113.0/24, 2001:db8:1::/64), no default route: no packet has anywhere else to go.

set -u
OUT=$1
BIN=$2
RESULTS=$OUT/results
: >"$RESULTS"
uname -r >"$OUT/kernel"
echo started >"$OUT/booted"

# The lab's addresses, as in tests/netlab/src/lib.rs.
FW_V4=203.0.113.1
FW_V6=2001:db8:1::1
PEER_V4=203.0.113.2
PEER_V6=2001:db8:1::2
BLOCKED_V4=203.0.113.66
BLOCKED_V6=2001:db8:1::105
ALLOWED_IN_BLOCK_V4=203.0.113.70
BLOCKED_PREFIX_V4=203.0.113.64/26
BLOCKED_PREFIX_V6=2001:db8:1::100/120

FW_NS=xwvm-fw
PEER_NS=xwvm-peer
FW_IF=xwvmf
PEER_IF=xwvmp
WORK=/run/xwvm
PIN_ROOT=/sys/fs/bpf
TOKEN=vm-test-write-token-0123456789abcdef
DAEMON_PID=
# A command the daemon runs under (set for the systemd unit's restrictions below).
WRAPPER=
# What init got from the kernel (64 KiB before 5.16, 8 MiB since), before anything raises it.
DEFAULT_MEMLOCK_KIB=$(ulimit -l)

pass() { echo "PASS $1" | tee -a "$RESULTS"; }
fail() { echo "FAIL $1: $2" | tee -a "$RESULTS"; }
info() { echo "INFO $1: $2" | tee -a "$RESULTS"; }
# check NAME WHY-IF-NOT COMMAND...: PASS when COMMAND succeeds.
check() {
	local name=$1 why=$2
	shift 2
	if "$@"; then pass "$name"; else fail "$name" "$why"; fi
}

finish() {
	[ -n "$DAEMON_PID" ] && kill -9 "$DAEMON_PID" 2>/dev/null
	cp "$WORK"/*.log "$OUT"/ 2>/dev/null
	ip netns del "$FW_NS" 2>/dev/null
	ip netns del "$PEER_NS" 2>/dev/null
	local passed failed
	passed=$(grep -c '^PASS' "$RESULTS")
	failed=$(grep -c '^FAIL' "$RESULTS")
	echo "$passed passed, $failed failed" >"$OUT/summary"
	echo done >"$OUT/done"
	sync
}
trap finish EXIT

in_fw() { nsenter --net=/run/netns/$FW_NS "$@"; }
in_peer() { nsenter --net=/run/netns/$PEER_NS "$@"; }

# replies SOURCE DEST [COUNT]: echo replies received by the peer pinging from SOURCE.
replies() {
	in_peer ping -n -q -c "${3:-3}" -i 0.2 -W 1 -I "$1" "$2" 2>/dev/null |
		sed -n 's/.*transmitted, \([0-9]*\) received.*/\1/p'
}
passes() { [ "$(replies "$1" "$2")" = 3 ]; }
dropped() { [ "$(replies "$1" "$2")" = 0 ]; }

# daemon_error TAG: the error a daemon's start ended with (its last "error:" line, else the
# first ERROR-level log line).
daemon_error() {
	local log=$WORK/daemon-$1.log
	{ grep '^error:' "$log" | tail -1; grep -m1 ' ERROR ' "$log"; } | head -1 | head -c 400
}

api() { in_fw curl -s --max-time 10 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:9180$1"; }

# start_daemon TAG EXTRA-CONFIG: writes WORK/TAG.toml, starts the daemon in the firewall
# namespace (pins under PIN_ROOT/xdpwall-vm-TAG, state in WORK/TAG), waits for /readyz.
start_daemon() {
	local tag=$1 extra=$2
	local state=$WORK/$tag
	mkdir -p "$state"
	printf '%s' "$TOKEN" >"$WORK/write.token"
	CONFIG=$WORK/$tag.toml
	PIN_DIR=$PIN_ROOT/xdpwall-vm-$tag
	cat >"$CONFIG" <<EOF
interfaces = [${IFACES_TOML:-"\"$FW_IF\""}]
state_dir = "$state"
pin_dir = "$PIN_DIR"
$extra

[api]
tokens = [ { name = "vm", scope = "write", file = "$WORK/write.token" } ]
EOF
	# nsenter execs the daemon, so $! is the daemon itself (kill -9 below hits it).
	# shellcheck disable=SC2086 # WRAPPER is a command line
	XDPWALL_LOG=info nsenter --net=/run/netns/$FW_NS $WRAPPER "$BIN" run --config "$CONFIG" \
		>>"$WORK/daemon-$tag.log" 2>&1 &
	DAEMON_PID=$!
	# Generous: under TCG (no KVM) loading and verifying takes seconds.
	local i
	for i in $(seq 1 240); do
		if [ "$(in_fw curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:9180/readyz)" = 200 ]; then
			return 0
		fi
		kill -0 "$DAEMON_PID" 2>/dev/null || break
		sleep 0.5
	done
	echo "--- daemon-$tag.log" >&2
	tail -20 "$WORK/daemon-$tag.log" >&2
	return 1
}

# The egress flagger is expected on TCX from 6.6, on a clsact filter below.
expected_egress_attach() {
	local major minor
	IFS=. read -r major minor _ <<<"$(uname -r)"
	if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 6 ]; }; then
		echo tcx
	else
		echo netlink
	fi
}

# wait_for SECONDS COMMAND...: retries COMMAND every half second.
wait_for() {
	local tries=$(($1 * 2))
	shift
	while [ "$tries" -gt 0 ]; do
		"$@" && return 0
		sleep 0.5
		tries=$((tries - 1))
	done
	return 1
}

flow_listed() { api /v1/flows | jq -e --arg d "$PEER_V4" '.flows | any(.dst == $d and .reason == "watch")' >/dev/null; }
drop_listed() { api /v1/drops | jq -e --arg s "$BLOCKED_V4" '.drops | any(.src == $s)' >/dev/null; }
xdp_attached() { in_fw ip -d link show dev "$FW_IF" | grep -q 'prog/xdp'; }
egress_attached() {
	in_fw tc filter show dev "$FW_IF" egress 2>/dev/null | grep -q xdpwall_egress ||
		[ -e "$PIN_DIR/links/tc-$FW_IF" ]
}
pins_left() { [ -d "$PIN_DIR" ] && [ -n "$(find "$PIN_DIR" -mindepth 1 -not -type d 2>/dev/null)" ]; }

# ---- the guest: bpffs, modules, the lab --------------------------------------------------
mkdir -p "$WORK"
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
modprobe veth 2>/dev/null
modprobe sch_ingress 2>/dev/null
modprobe cls_bpf 2>/dev/null
info kernel "$(uname -r)"

lab_up() {
	ip netns add "$FW_NS" && ip netns add "$PEER_NS" &&
		ip link add "$FW_IF" netns "$FW_NS" type veth peer name "$PEER_IF" netns "$PEER_NS" &&
		ip -n "$FW_NS" addr add "$FW_V4/24" dev "$FW_IF" &&
		ip -n "$FW_NS" addr add "$FW_V6/64" dev "$FW_IF" nodad &&
		for a in "$PEER_V4/24" "$BLOCKED_V4/24" "$ALLOWED_IN_BLOCK_V4/24"; do
			ip -n "$PEER_NS" addr add "$a" dev "$PEER_IF" || return 1
		done &&
		ip -n "$PEER_NS" addr add "$PEER_V6/64" dev "$PEER_IF" nodad &&
		ip -n "$PEER_NS" addr add "$BLOCKED_V6/64" dev "$PEER_IF" nodad &&
		for ns in "$FW_NS" "$PEER_NS"; do
			ip -n "$ns" link set lo up || return 1
		done &&
		ip -n "$FW_NS" link set "$FW_IF" up && ip -n "$PEER_NS" link set "$PEER_IF" up
}
if ! lab_up; then
	fail lab "creating the namespaces and the veth pair failed"
	exit 1
fi
check lab-ping "the lab does not answer pings without xdpwall" passes "$PEER_V4" "$FW_V4"

RULES=$(
	cat <<EOF
[[rules]]
cidr = "$BLOCKED_PREFIX_V4"
action = "block"
[[rules]]
cidr = "$BLOCKED_PREFIX_V6"
action = "block"
[[rules]]
cidr = "$ALLOWED_IN_BLOCK_V4/32"
action = "allow"
[[rules]]
cidr = "$PEER_V4/32"
action = "watch"
EOF
)

# ---- the tries (lpm), egress flagging, drop sampling, kill -9, restart, detach ------------
if ! start_daemon lpm "ipv4_lookup = \"lpm\"
ipv6_lookup = \"lpm\"
$RULES

[events]
drop_sample_rate = 1"; then
	fail lpm-daemon-ready "xdpwall run did not become ready: $(daemon_error lpm)"
	# Before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK (64 KiB by default before
	# 5.16): see whether that is why, so the remaining checks still run.
	[ -n "$DAEMON_PID" ] && kill -9 "$DAEMON_PID" 2>/dev/null
	DAEMON_PID=
	in_fw "$BIN" detach --config "$CONFIG" >/dev/null 2>&1
	ulimit -l unlimited
	if ! start_daemon lpm "ipv4_lookup = \"lpm\"
ipv6_lookup = \"lpm\"
$RULES

[events]
drop_sample_rate = 1"; then
		info memlock "not the reason: with ulimit -l unlimited it fails too"
		exit 1
	fi
	info memlock "with ulimit -l unlimited (RLIMIT_MEMLOCK) the daemon starts; the remaining checks run with it"
else
	pass lpm-daemon-ready
fi
STATUS=$(api /v1/status)
info lpm-status "$(echo "$STATUS" | jq -c '{interfaces, egress, ipv4_lookup, ipv6_lookup}')"
check lpm-engines "status: $(echo "$STATUS" | jq -c '[.ipv4_lookup, .ipv6_lookup]')" \
	test "$(echo "$STATUS" | jq -r '.ipv4_lookup + "/" + .ipv6_lookup')" = lpm/lpm
EGRESS_ATTACH=$(expected_egress_attach)
# What the kernel offers, said once at start and in the status.
info kernel-features "$(echo "$STATUS" | jq -c '[.kernel.features[] | {(.name): (if .fallback then "fallback" else .available end)}] | add')"
check kernel-release-in-status "status: $(echo "$STATUS" | jq -c .kernel.release)" \
	test "$(echo "$STATUS" | jq -r .kernel.release)" = "$(uname -r)"
check kernel-features-logged-once "\"kernel features\" logged $(grep -c 'kernel features' "$WORK/daemon-lpm.log") times" \
	test "$(grep -c 'kernel features' "$WORK/daemon-lpm.log")" = 1
TCX_FALLBACK=$(echo "$STATUS" | jq -r '.kernel.features[] | select(.name == "tcx") | .fallback // empty')
if [ "$EGRESS_ATTACH" = tcx ]; then
	check kernel-tcx-no-fallback "status claims a TCX fallback: $TCX_FALLBACK" test -z "$TCX_FALLBACK"
else
	check kernel-tcx-fallback-clsact "status names no clsact fallback for TCX: $TCX_FALLBACK" \
		grep -q clsact <<<"$TCX_FALLBACK"
	check kernel-tcx-fallback-logged "the log does not say the TCX fallback" \
		grep -q 'kernel without tcx' "$WORK/daemon-lpm.log"
fi
check "egress-attach-$EGRESS_ATTACH" "status: $(echo "$STATUS" | jq -c .egress)" \
	test "$(echo "$STATUS" | jq -r '.egress[0].attach')" = "$EGRESS_ATTACH"

check lpm-v4-unlisted-passes "pings from $PEER_V4 lost" passes "$PEER_V4" "$FW_V4"
check lpm-v4-blocked-dropped "pings from $BLOCKED_V4 answered" dropped "$BLOCKED_V4" "$FW_V4"
check lpm-v6-unlisted-passes "pings from $PEER_V6 lost" passes "$PEER_V6" "$FW_V6"
check lpm-v6-blocked-dropped "pings from $BLOCKED_V6 answered" dropped "$BLOCKED_V6" "$FW_V6"
check lpm-allow-beats-block "pings from $ALLOWED_IN_BLOCK_V4 (allowed inside a blocked /26) lost" \
	passes "$ALLOWED_IN_BLOCK_V4" "$FW_V4"

# The second stage (a tail-called program the verifier checks on its own): a block scoped to
# ICMP drops the peer's pings; removed, they pass again.
api_write() {
	in_fw curl -s --max-time 10 -X "$1" -H "Authorization: Bearer $TOKEN" \
		-H 'Content-Type: application/json' ${3:+-d "$3"} "http://127.0.0.1:9180$2"
}
SCOPED_ID=$(api_write POST /v1/rules "{\"cidr\":\"$PEER_V4/32\",\"action\":\"block\",\"proto\":\"icmp\"}" | jq -r .id)
check scoped-icmp-rule-drops "pings from $PEER_V4 answered under an ICMP-scoped block (rule $SCOPED_ID)" \
	dropped "$PEER_V4" "$FW_V4"
api_write DELETE "/v1/rules/$SCOPED_ID" >/dev/null
check scoped-rule-removed-passes "pings from $PEER_V4 lost after the scoped rule went" \
	passes "$PEER_V4" "$FW_V4"

# Outbound: the firewall host pings the watched peer; its echo requests leave through the
# egress flagger.
in_fw ping -n -q -c 2 -i 0.2 -W 1 "$PEER_V4" >/dev/null 2>&1
check egress-watch-flow-listed "no watch flow to $PEER_V4 in GET /v1/flows: $(api /v1/flows | head -c 400)" \
	wait_for 15 flow_listed
check drop-sample-listed "no sample from $BLOCKED_V4 in GET /v1/drops: $(api /v1/drops | head -c 400)" \
	wait_for 15 drop_listed

# A crash: the pinned filter goes on enforcing without the daemon.
kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null
DAEMON_PID=
check kill9-still-blocks-v4 "pings from $BLOCKED_V4 answered after kill -9" dropped "$BLOCKED_V4" "$FW_V4"
check kill9-still-blocks-v6 "pings from $BLOCKED_V6 answered after kill -9" dropped "$BLOCKED_V6" "$FW_V6"
check kill9-still-passes "pings from $PEER_V4 lost after kill -9" passes "$PEER_V4" "$FW_V4"

# The restart takes the pinned link over (mode "reused") and still enforces.
if start_daemon lpm "ipv4_lookup = \"lpm\"
ipv6_lookup = \"lpm\"
$RULES"; then
	pass restart-ready
	STATUS=$(api /v1/status)
	info restart-status "$(echo "$STATUS" | jq -c '{interfaces, egress}')"
	check restart-reuses-xdp-link "status: $(echo "$STATUS" | jq -c .interfaces)" \
		test "$(echo "$STATUS" | jq -r '.interfaces[0].mode')" = reused
	check restart-blocks "pings from $BLOCKED_V4 answered after the restart" dropped "$BLOCKED_V4" "$FW_V4"
	check restart-passes "pings from $PEER_V4 lost after the restart" passes "$PEER_V4" "$FW_V4"
else
	fail restart-ready "the restarted daemon did not become ready (see daemon-lpm.log)"
fi

# Stop, detach: nothing left attached or pinned.
[ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
DAEMON_PID=
in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
rc=$?
check detach-exit "xdpwall detach exited $rc: $(tail -3 "$WORK/detach.log")" test "$rc" = 0
if xdp_attached; then fail detach-no-xdp "XDP still attached to $FW_IF"; else pass detach-no-xdp; fi
if egress_attached; then fail detach-no-egress "the egress flagger is still attached"; else pass detach-no-egress; fi
if pins_left; then
	fail detach-no-pins "left under $PIN_DIR: $(find "$PIN_DIR" -mindepth 1 -not -type d | head -5 | tr '\n' ' ')"
else
	pass detach-no-pins
fi
check detach-passes-blocked "pings from $BLOCKED_V4 still dropped after detach (a filter left behind)" passes "$BLOCKED_V4" "$FW_V4"

# ---- the DIR-24 (IPv4) and hash (IPv6) engines -------------------------------------------
if start_daemon fast "ipv4_lookup = \"dir24\"
ipv6_lookup = \"hash\"
$RULES"; then
	pass fast-daemon-ready
	STATUS=$(api /v1/status)
	check fast-engines "status: $(echo "$STATUS" | jq -c '[.ipv4_lookup, .ipv6_lookup]')" \
		test "$(echo "$STATUS" | jq -r '.ipv4_lookup + "/" + .ipv6_lookup')" = dir24/hash
	check dir24-v4-unlisted-passes "pings from $PEER_V4 lost" passes "$PEER_V4" "$FW_V4"
	check dir24-v4-blocked-dropped "pings from $BLOCKED_V4 answered" dropped "$BLOCKED_V4" "$FW_V4"
	check dir24-allow-beats-block "pings from $ALLOWED_IN_BLOCK_V4 lost" passes "$ALLOWED_IN_BLOCK_V4" "$FW_V4"
	check hash-v6-unlisted-passes "pings from $PEER_V6 lost" passes "$PEER_V6" "$FW_V6"
	check hash-v6-blocked-dropped "pings from $BLOCKED_V6 answered" dropped "$BLOCKED_V6" "$FW_V6"
	kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
	DAEMON_PID=
	in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
	if xdp_attached || pins_left; then
		fail fast-detach "XDP or pins left after detach"
	else
		pass fast-detach
	fi
else
	fail fast-daemon-ready "xdpwall run with dir24/hash did not become ready (see daemon-fast.log)"
fi

# ---- SYN-flood protection: SYN cookies answered from XDP -----------------------------------
# check-config refuses tcp_syncookies = 0 with what to run; the daemon protects its own API
# port (listening on every address here), so the peer's HTTP request needs a handshake whose
# SYN-ACK comes from XDP and whose cookie ACK the kernel accepts.
SYN_CONFIG="xdp_mode = \"generic\"
[syn_protection]
enabled = true
ports = [9180]"
printf 'interfaces = ["%s"]\n%s\n' "$FW_IF" "$SYN_CONFIG" >"$WORK/syn-check.toml"
in_fw sysctl -qw net.ipv4.tcp_syncookies=0
SYN_CHECK=$(in_fw "$BIN" check-config --config "$WORK/syn-check.toml" 2>&1)
check syn-check-config-refuses-syncookies-0 "check-config said: $(echo "$SYN_CHECK" | tail -2 | head -c 300)" \
	grep -q 'tcp_syncookies=2' <<<"$SYN_CHECK"
in_fw sysctl -qw net.ipv4.tcp_syncookies=2
if XDPWALL_API_LISTEN=0.0.0.0:9180 start_daemon syn "$SYN_CONFIG"; then
	pass syn-daemon-ready
	SYN_HTTP=$(in_peer curl -s --max-time 10 "http://$FW_V4:9180/healthz")
	STATUS=$(api /v1/status)
	check syn-handshake-through-cookie "GET /healthz from the peer: '$SYN_HTTP', status: $(echo "$STATUS" | jq -c .syn_protection)" \
		test "$SYN_HTTP" = ok -a "$(echo "$STATUS" | jq '.syn_protection.cookies')" -ge 1
	kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
	DAEMON_PID=
	in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
else
	fail syn-daemon-ready "xdpwall run with [syn_protection] did not become ready: $(daemon_error syn)"
	[ -n "$DAEMON_PID" ] && kill -9 "$DAEMON_PID" 2>/dev/null
	DAEMON_PID=
	in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
fi
in_fw sysctl -qw net.ipv4.tcp_syncookies=1

# ---- the shipped systemd unit's restrictions ---------------------------------------------
# Root with only the unit's CapabilityBoundingSet, and its LimitMEMLOCK (else the default
# limit): before 5.11 maps count against RLIMIT_MEMLOCK, and raising it needs
# CAP_SYS_RESOURCE, which the unit does not grant.
UNIT=$(dirname "$(readlink -f "$0")")/../../deploy/systemd/xdpwall.service
CAPS=$(sed -n 's/^CapabilityBoundingSet=//p' "$UNIT" | tail -1 | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')
MEMLOCK=$(sed -n 's/^LimitMEMLOCK=//p' "$UNIT" | tail -1)
case "$MEMLOCK" in
infinity) MEMLOCK_ARG=unlimited ;;
"") MEMLOCK_ARG=$((DEFAULT_MEMLOCK_KIB * 1024)) MEMLOCK="${DEFAULT_MEMLOCK_KIB} KiB (no LimitMEMLOCK: the default)" ;;
*) MEMLOCK_ARG=$MEMLOCK ;;
esac
info unit-restrictions "capabilities $CAPS, RLIMIT_MEMLOCK $MEMLOCK"
if [ -z "$CAPS" ]; then
	fail unit-ready "no CapabilityBoundingSet in $UNIT"
else
	WRAPPER="prlimit --memlock=$MEMLOCK_ARG setpriv --bounding-set=-all,$CAPS --inh-caps=-all --no-new-privs"
	if start_daemon unit "$RULES"; then
		pass unit-ready
		check unit-v4-blocked-dropped "pings from $BLOCKED_V4 answered" dropped "$BLOCKED_V4" "$FW_V4"
		check unit-v4-unlisted-passes "pings from $PEER_V4 lost" passes "$PEER_V4" "$FW_V4"
		kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
	else
		fail unit-ready "xdpwall run under the unit's restrictions did not start: $(daemon_error unit)"
	fi
	DAEMON_PID=
	in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
	# The same restrictions with the kernel's default lock limit (no LimitMEMLOCK): from 5.11
	# maps are charged to the memory cgroup and it starts; before, the start is refused,
	# naming LimitMEMLOCK, instead of failing on the first map.
	WRAPPER="prlimit --memlock=65536 setpriv --bounding-set=-all,$CAPS --inh-caps=-all --no-new-privs"
	if [ "$(printf '%s\n' "$(uname -r)" 5.11 | sort -V | head -1)" = 5.11 ]; then
		if start_daemon memlock "$RULES"; then
			pass memlock-64k-starts
			kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
		else
			fail memlock-64k-starts "with RLIMIT_MEMLOCK 64 KiB on $(uname -r): $(daemon_error memlock)"
		fi
	elif start_daemon memlock "$RULES"; then
		fail memlock-64k-refused "started with RLIMIT_MEMLOCK 64 KiB before 5.11"
		kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
	else
		info memlock-64k-refused "$(daemon_error memlock)"
		check memlock-64k-refused-names-limitmemlock "the refusal does not name LimitMEMLOCK" \
			grep -q 'LimitMEMLOCK=infinity' "$WORK/daemon-memlock.log"
	fi
	DAEMON_PID=
	WRAPPER=
	in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
fi

# [egress] attach = "tcx" on a kernel without TCX: refused, naming the feature and the key.
if [ "$(expected_egress_attach)" != tcx ]; then
	if start_daemon tcx-forced "$RULES

[egress]
attach = \"tcx\""; then
		fail tcx-forced-refused "started with [egress] attach = \"tcx\" on $(uname -r)"
		kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
	else
		info tcx-forced-refused "$(daemon_error tcx-forced)"
		check tcx-forced-refusal-names-feature-and-key "the refusal names neither TCX nor [egress] attach" \
			grep -q 'TCX links.*\[egress\] attach' "$WORK/daemon-tcx-forced.log"
		check tcx-forced-attaches-nothing "XDP attached after a refused start" test -z "$(in_fw ip -d link show dev "$FW_IF" | grep -o 'prog/xdp')"
	fi
	DAEMON_PID=
	in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
fi

# ---- a real NIC driver: native XDP on virtio_net -------------------------------------------
# `cargo xtask vm-test` gives the guest two virtio-net NICs joined by a QEMU hub (virtme-ng's
# `--network loop`): eth0 is the firewall side, eth1 the peer, each in a namespace of its own.
# Frames cross QEMU's virtio rings and hub, never the host's network. virtio_net wants a TX
# queue per CPU for XDP_TX/redirect; with the one queue pair a hub offers, Debian's kernels
# attach anyway and share a locked TX queue (xdpwall only drops and passes).
virtio_lab_up() {
	modprobe virtio_net 2>/dev/null
	modprobe 8021q 2>/dev/null
	local i
	for i in $(seq 1 20); do
		[ -e /sys/class/net/eth0 ] && [ -e /sys/class/net/eth1 ] && break
		sleep 0.5
	done
	[ "$(basename "$(readlink -f /sys/class/net/eth0/device/driver)")" = virtio_net ] || return 1
	ip netns add "$FW_NS" && ip netns add "$PEER_NS" &&
		ip link set eth0 netns "$FW_NS" && ip link set eth1 netns "$PEER_NS" &&
		ip -n "$FW_NS" link set eth0 name "$FW_IF" && ip -n "$PEER_NS" link set eth1 name "$PEER_IF" &&
		ip -n "$FW_NS" addr add "$FW_V4/24" dev "$FW_IF" &&
		ip -n "$PEER_NS" addr add "$PEER_V4/24" dev "$PEER_IF" &&
		ip -n "$PEER_NS" addr add "$BLOCKED_V4/24" dev "$PEER_IF" &&
		for ns in "$FW_NS" "$PEER_NS"; do
			ip -n "$ns" link set lo up || return 1
		done &&
		ip -n "$FW_NS" link set "$FW_IF" up && ip -n "$PEER_NS" link set "$PEER_IF" up &&
		# An 802.1Q VLAN over each NIC: a device whose driver has no native XDP.
		ip -n "$FW_NS" link add link "$FW_IF" name "$FW_IF.7" type vlan id 7 &&
		ip -n "$PEER_NS" link add link "$PEER_IF" name "$PEER_IF.7" type vlan id 7 &&
		ip -n "$FW_NS" addr add "$FW_VLAN_V4/24" dev "$FW_IF.7" &&
		ip -n "$PEER_NS" addr add "$PEER_VLAN_V4/24" dev "$PEER_IF.7" &&
		ip -n "$PEER_NS" addr add "$BLOCKED_VLAN_V4/24" dev "$PEER_IF.7" &&
		ip -n "$FW_NS" link set "$FW_IF.7" up && ip -n "$PEER_NS" link set "$PEER_IF.7" up
}
# The kernel's own word on the mode of DEV (default FW_IF): `ip link` says "xdp" for driver
# (native) mode and "xdpgeneric" for generic.
kernel_xdp_mode() { in_fw ip -d link show dev "${1:-$FW_IF}" | grep -o -m1 -w 'xdp\|xdpgeneric\|xdpoffload'; }

ip netns del "$FW_NS" 2>/dev/null
ip netns del "$PEER_NS" 2>/dev/null
FW_NS=xwvm-vfw
PEER_NS=xwvm-vpeer
FW_IF=xwvirt0
PEER_IF=xwvirt1
FW_VLAN_V4=198.51.100.1
PEER_VLAN_V4=198.51.100.2
BLOCKED_VLAN_V4=198.51.100.66
if ! virtio_lab_up; then
	fail virtio-lab "no pair of virtio_net NICs (eth0, eth1) to build the lab on: $(ls /sys/class/net | tr '\n' ' ')"
	exit 1
fi
check virtio-lab-ping "the virtio lab does not answer pings without xdpwall" wait_for 10 passes "$PEER_V4" "$FW_V4"
check vlan-lab-ping "the VLAN over virtio does not answer pings without xdpwall" wait_for 10 passes "$PEER_VLAN_V4" "$FW_VLAN_V4"
VIRTIO_RULES="[[rules]]
cidr = \"$BLOCKED_PREFIX_V4\"
action = \"block\"
[[rules]]
cidr = \"198.51.100.64/26\"
action = \"block\""

# xdp_mode = "native" on virtio_net: driver mode, blocks and passes, and keeps blocking with
# the daemon stopped.
if start_daemon virtio-native "xdp_mode = \"native\"
$VIRTIO_RULES"; then
	pass virtio-native-ready
	STATUS=$(api /v1/status)
	info virtio-native-status "$(echo "$STATUS" | jq -c .interfaces)"
	check virtio-native-mode "status: $(echo "$STATUS" | jq -c .interfaces)" \
		test "$(echo "$STATUS" | jq -r '.interfaces[0].mode')" = native
	check virtio-native-kernel-mode "ip link: $(kernel_xdp_mode)" test "$(kernel_xdp_mode)" = xdp
	info virtio-native-driver "$(dmesg | grep -i 'virtio_net.*xdp\|xdp.*queues' | tail -1)"
	check virtio-native-passes "pings from $PEER_V4 lost over virtio_net" passes "$PEER_V4" "$FW_V4"
	check virtio-native-blocks "pings from $BLOCKED_V4 answered over virtio_net" dropped "$BLOCKED_V4" "$FW_V4"
	kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
	check virtio-native-blocks-stopped "pings from $BLOCKED_V4 answered with the daemon stopped" \
		dropped "$BLOCKED_V4" "$FW_V4"
else
	fail virtio-native-ready "xdp_mode = native refused on virtio_net: $(daemon_error virtio-native)"
fi
DAEMON_PID=
in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
check virtio-detach "XDP still on $FW_IF after detach: $(kernel_xdp_mode)" test -z "$(kernel_xdp_mode)"

# xdp_mode = "native" on a driver without it (the VLAN device): refused, saying what to set.
FW_IF_NIC=$FW_IF
FW_IF=$FW_IF_NIC.7
if start_daemon vlan-native "xdp_mode = \"native\"
$VIRTIO_RULES"; then
	fail vlan-native-refused "xdp_mode = native started on a VLAN device, which has no native XDP"
	kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
else
	pass vlan-native-refused
	check vlan-native-refusal-names-the-setting "the error does not point at xdp_mode: $(daemon_error vlan-native)" \
		grep -q 'xdp_mode = \\"auto\\"\|xdp_mode = "auto"' "$WORK/daemon-vlan-native.log"
fi
DAEMON_PID=
in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1

# xdp_mode = "auto": native on virtio_net, generic with a warning on the VLAN device; both
# enforce.
FW_IF=$FW_IF_NIC
IFACES_TOML="\"$FW_IF_NIC\", \"$FW_IF_NIC.7\""
if start_daemon virtio-auto "$VIRTIO_RULES"; then
	pass virtio-auto-ready
	STATUS=$(api /v1/status)
	info virtio-auto-status "$(echo "$STATUS" | jq -c .interfaces)"
	mode_of() { echo "$STATUS" | jq -r --arg i "$1" '.interfaces[] | select(.iface == $i) | .mode'; }
	check virtio-auto-native "status: $(echo "$STATUS" | jq -c .interfaces)" test "$(mode_of "$FW_IF_NIC")" = native
	check virtio-auto-kernel-xdp "ip link: $(kernel_xdp_mode)" test "$(kernel_xdp_mode)" = xdp
	check vlan-auto-generic "status: $(echo "$STATUS" | jq -c .interfaces)" test "$(mode_of "$FW_IF_NIC.7")" = generic
	check vlan-auto-kernel-xdpgeneric "ip link: $(kernel_xdp_mode "$FW_IF_NIC.7")" \
		test "$(kernel_xdp_mode "$FW_IF_NIC.7")" = xdpgeneric
	check vlan-auto-warns "no warning about the fallback in the log" \
		grep -q 'falling back to generic' "$WORK/daemon-virtio-auto.log"
	check virtio-auto-passes "pings from $PEER_V4 lost" passes "$PEER_V4" "$FW_V4"
	check virtio-auto-blocks "pings from $BLOCKED_V4 answered" dropped "$BLOCKED_V4" "$FW_V4"
	kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
else
	fail virtio-auto-ready "xdp_mode = auto did not start on virtio_net + VLAN: $(daemon_error virtio-auto)"
fi
DAEMON_PID=
in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
# Generic mode enforcing on its own: the filter on the VLAN device only (with the NIC's
# native program there too, the NIC would drop the tagged frames first).
IFACES_TOML="\"$FW_IF_NIC.7\""
if start_daemon vlan-auto "$VIRTIO_RULES"; then
	check vlan-generic-passes "pings from $PEER_VLAN_V4 lost" passes "$PEER_VLAN_V4" "$FW_VLAN_V4"
	check vlan-generic-blocks "pings from $BLOCKED_VLAN_V4 answered" dropped "$BLOCKED_VLAN_V4" "$FW_VLAN_V4"
	kill -TERM "$DAEMON_PID" && wait "$DAEMON_PID" 2>/dev/null
else
	fail vlan-generic-ready "xdp_mode = auto did not start on the VLAN device: $(daemon_error vlan-auto)"
fi
IFACES_TOML=
DAEMON_PID=
in_fw "$BIN" detach --config "$CONFIG" >>"$WORK/detach.log" 2>&1
check virtio-auto-detach "XDP still attached after detach: $(kernel_xdp_mode) $(kernel_xdp_mode "$FW_IF_NIC.7")" \
	test -z "$(kernel_xdp_mode)$(kernel_xdp_mode "$FW_IF_NIC.7")"
