#!/bin/bash
# The Debian package under a real systemd. Run at boot by xwvm-checks.service in the guest of
# `cargo xtask vm-test --systemd` (Debian 12 made with debootstrap, systemd as PID 1, no network
# device), which powers the guest off when this script ends.
#
#   systemd-checks.sh DISK
#
# DISK is the mounted second disk: xdpwall.deb and this script; logs go to DISK/guest. Results
# go to the serial console, one line each: "XWVM-RESULT PASS name", "XWVM-RESULT FAIL name:
# why", "XWVM-RESULT INFO name: text"; "XWVM-BOOTED" comes first and "XWVM-DONE" last, after
# DISK is unmounted (so the host can read the logs from the image).
#
# The lab: the firewall end of a veth pair in the root namespace, where the unit runs the
# daemon, the peer end in a network namespace; documentation addresses only (203.0.113.0/24,
# 2001:db8:1::/64), no default route, and no network device to the outside in the first place.
# A blocklist feed is served by busybox httpd on 127.0.0.1.

set -u
DISK=$1
LOGS=$DISK/guest
RESULTS=$LOGS/results
CONSOLE=/dev/ttyS0
mkdir -p "$LOGS"
: >"$RESULTS"

say() { echo "$1" >"$CONSOLE"; }
result() {
	echo "$1" >>"$RESULTS"
	say "XWVM-RESULT $1"
}
pass() { result "PASS $1"; }
fail() { result "FAIL $1: $2"; }
info() { result "INFO $1: $2"; }
# check NAME WHY-IF-NOT COMMAND...: PASS when COMMAND succeeds.
check() {
	local name=$1 why=$2
	shift 2
	if "$@"; then pass "$name"; else fail "$name" "$why"; fi
}

say "XWVM-BOOTED $(uname -r)"

FW_IF=xwvmf
PEER_NS=xwvm-peer
PEER_IF=xwvmp
FW_V4=203.0.113.1
FW_V6=2001:db8:1::1
PEER_V4=203.0.113.2
PEER_V6=2001:db8:1::2
# In the config's block rules.
BLOCKED_PREFIX_V4=203.0.113.64/26
BLOCKED_PREFIX_V6=2001:db8:1::100/120
BLOCKED_V4=203.0.113.66
BLOCKED_V6=2001:db8:1::105
# In the feed only, which the daemon cannot fetch until the timer's sync.
FEED_PREFIX_V4=203.0.113.128/26
FEED_PREFIX_V6=2001:db8:1::200/120
FEED_V4=203.0.113.130
FEED_V6=2001:db8:1::205

CONFIG=/etc/xdpwall/xdpwall.toml
TOKEN_FILE=/etc/xdpwall/ops.token
PIN_DIR=/sys/fs/bpf/xdpwall
FEED_ROOT=/run/xwvm-feed
FEED_PORT=8080
UNIT=xdpwall.service
FEEDS_UNIT=xdpwall-feeds.service
FEEDS_TIMER=xdpwall-feeds.timer

finish() {
	[ -n "${HTTPD_PID:-}" ] && kill "$HTTPD_PID" 2>/dev/null
	ip netns del "$PEER_NS" 2>/dev/null
	journalctl -b --no-pager >"$LOGS/journal.txt" 2>&1
	journalctl -b --no-pager -o short-monotonic -u "$UNIT" >"$LOGS/xdpwall.journal" 2>&1
	journalctl -b --no-pager -o short-monotonic -u "$FEEDS_UNIT" -u "$FEEDS_TIMER" >"$LOGS/xdpwall-feeds.journal" 2>&1
	local summary
	summary="$(grep -c '^PASS' "$RESULTS") passed, $(grep -c '^FAIL' "$RESULTS") failed"
	cd /
	sync
	umount "$DISK" || say "XWVM-NOTE could not unmount $DISK"
	say "XWVM-DONE $summary"
}
trap finish EXIT

in_peer() { nsenter --net=/run/netns/$PEER_NS "$@"; }

# replies SOURCE DEST: echo replies the peer receives pinging DEST from SOURCE (3 sent).
replies() {
	in_peer ping -n -q -c 3 -i 0.2 -W 1 -I "$1" "$2" 2>/dev/null |
		sed -n 's/.*transmitted, \([0-9]*\) received.*/\1/p'
}
passes() { [ "$(replies "$1" "$2")" = 3 ]; }
dropped() { [ "$(replies "$1" "$2")" = 0 ]; }

api() { curl -s --max-time 10 -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "http://127.0.0.1:9180$1"; }
readyz() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:9180/readyz)" = 200 ]; }
xdp_attached() { ip -d link show dev "$FW_IF" | grep -q 'prog/xdp'; }
egress_attached() { tc filter show dev "$FW_IF" egress 2>/dev/null | grep -q xdpwall; }
pins() { find "$PIN_DIR" -mindepth 1 -not -type d -printf '%i %P\n' 2>/dev/null | sort; }
prop() { systemctl show -p "$2" --value "$1"; }

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

# ---- the system ----------------------------------------------------------------------------
info system "Debian $(cat /etc/debian_version), Linux $(uname -r), $(systemctl --version | head -1)"
check systemd-pid1 "PID 1 is $(cat /proc/1/comm)" test "$(cat /proc/1/comm)" = systemd

# ---- dpkg -i -------------------------------------------------------------------------------
if dpkg -i "$DISK/xdpwall.deb" >"$LOGS/dpkg-install.log" 2>&1; then
	pass dpkg-install
else
	fail dpkg-install "dpkg -i failed: $(tail -3 "$LOGS/dpkg-install.log" | tr '\n' ' ')"
	exit 1
fi
info package "$(dpkg-query -W -f='${Package} ${Version} ${Architecture}, Depends: ${Depends}' xdpwall)"
check installed-disabled "is-enabled: $(systemctl is-enabled $UNIT $FEEDS_TIMER 2>&1 | tr '\n' ' ')" \
	test "$(systemctl is-enabled $UNIT $FEEDS_TIMER 2>&1 | tr '\n' ' ')" = "disabled disabled "
check installed-stopped "is-active: $(systemctl is-active $UNIT)" test "$(systemctl is-active $UNIT)" = inactive
check conffile "conffiles: $(dpkg-query -W -f='${Conffiles}' xdpwall)" \
	grep -q "$CONFIG" <(dpkg-query -W -f='${Conffiles}' xdpwall)
# The installed units as this systemd reads them (no man pages in the guest to look up).
if systemd-analyze verify --man=no $UNIT $FEEDS_UNIT $FEEDS_TIMER >"$LOGS/verify.log" 2>&1 &&
	! grep -q . "$LOGS/verify.log"; then
	pass units-verify
else
	fail units-verify "systemd-analyze verify: $(head -3 "$LOGS/verify.log" | tr '\n' ' ')"
fi

# ---- the lab, the config, the feed server --------------------------------------------------
lab_up() {
	ip netns add "$PEER_NS" &&
		ip link add "$FW_IF" type veth peer name "$PEER_IF" netns "$PEER_NS" &&
		ip addr add "$FW_V4/24" dev "$FW_IF" &&
		ip addr add "$FW_V6/64" dev "$FW_IF" nodad &&
		for a in "$PEER_V4/24" "$BLOCKED_V4/24" "$FEED_V4/24"; do
			ip -n "$PEER_NS" addr add "$a" dev "$PEER_IF" || return 1
		done &&
		for a in "$PEER_V6/64" "$BLOCKED_V6/64" "$FEED_V6/64"; do
			ip -n "$PEER_NS" addr add "$a" dev "$PEER_IF" nodad || return 1
		done &&
		ip -n "$PEER_NS" link set lo up &&
		ip link set "$FW_IF" up && ip -n "$PEER_NS" link set "$PEER_IF" up
}
if ! lab_up; then
	fail lab "creating the namespace and the veth pair failed"
	exit 1
fi
check lab-ping "the lab does not answer pings without xdpwall" wait_for 10 passes "$PEER_V4" "$FW_V4"

# A write token of our own: the feeds unit is told about it in feeds.env (as the README says).
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
echo "XDPWALL_TOKEN_FILE=$TOKEN_FILE" >/etc/xdpwall/feeds.env
# The feed: fetched by the daemon at start (404: nothing served yet) and then hourly, so only
# the timer's `xdpwall feeds sync` can bring its entries in. Documentation ranges need
# allow_special.
cat >"$CONFIG" <<EOF
# Written by xtask/vm/systemd-checks.sh.
interfaces = ["$FW_IF"]

[api]
tokens = [ { name = "ops", scope = "write", file = "$TOKEN_FILE" } ]

[[feeds]]
name = "xwvm-fixture"
url = "http://127.0.0.1:$FEED_PORT/feed.txt"
format = "plain"
interval = "1h"
min_interval = "1s"
allow_special = true

[[rules]]
cidr = "$BLOCKED_PREFIX_V4"
action = "block"

[[rules]]
cidr = "$BLOCKED_PREFIX_V6"
action = "block"
EOF
check check-config "xdpwall check-config: $(xdpwall check-config --config "$CONFIG" 2>&1 | tail -2 | tr '\n' ' ')" \
	xdpwall check-config --config "$CONFIG"
mkdir -p "$FEED_ROOT"
busybox httpd -f -p "127.0.0.1:$FEED_PORT" -h "$FEED_ROOT" &
HTTPD_PID=$!

# ---- systemctl enable --now: Type=notify, the hardened unit attaches -----------------------
if systemctl enable --now $UNIT >"$LOGS/enable.log" 2>&1; then
	pass enable-now
else
	fail enable-now "systemctl enable --now failed: $(tail -3 "$LOGS/enable.log" | tr '\n' ' ')"
	journalctl -b --no-pager -u $UNIT | tail -20 >"$LOGS/enable-failure.txt"
	exit 1
fi
STATE="$(prop $UNIT Type) $(prop $UNIT ActiveState) $(prop $UNIT SubState)"
check active-notify "Type ActiveState SubState: $STATE" test "$STATE" = "notify active running"
check enabled "is-enabled: $(systemctl is-enabled $UNIT)" test "$(systemctl is-enabled $UNIT)" = enabled
check readyz "/readyz did not answer 200" readyz
check xdp-attached "no XDP program on $FW_IF: $(ip -d link show dev "$FW_IF" | head -3 | tr '\n' ' ')" xdp_attached
MAIN_PID=$(prop $UNIT MainPID)
# CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39) and nothing else; no new privileges.
CAPS="$(sed -n 's/^CapBnd:\t//p' /proc/"$MAIN_PID"/status) nnp=$(sed -n 's/^NoNewPrivs:\t//p' /proc/"$MAIN_PID"/status)"
check unit-capabilities "the daemon (pid $MAIN_PID) runs with $CAPS" test "$CAPS" = "000000c000001000 nnp=1"
if XDPWALL_TOKEN_FILE=$TOKEN_FILE xdpwall status >"$LOGS/status.txt" 2>&1; then
	pass cli-status
	info status "$(head -4 "$LOGS/status.txt" | tr -s ' \n' ' ')"
else
	fail cli-status "xdpwall status: $(tail -2 "$LOGS/status.txt" | tr '\n' ' ')"
fi
check blocked-v4-dropped "pings from $BLOCKED_V4 answered" dropped "$BLOCKED_V4" "$FW_V4"
check unlisted-v4-passes "pings from $PEER_V4 lost" passes "$PEER_V4" "$FW_V4"
check blocked-v6-dropped "pings from $BLOCKED_V6 answered" dropped "$BLOCKED_V6" "$FW_V6"
check unlisted-v6-passes "pings from $PEER_V6 lost" passes "$PEER_V6" "$FW_V6"
check feed-source-passes-before-sync "pings from $FEED_V4 dropped before any feed sync" passes "$FEED_V4" "$FW_V4"
info feed-before-timer "$(api /v1/feeds | jq -c '.feeds[0] | {entries, last_error}')"

# ---- systemctl restart: no gap, the pins reused --------------------------------------------
pins >"$LOGS/pins-before"
check pins-present "nothing pinned under $PIN_DIR" test -s "$LOGS/pins-before"
# The peer pings from a blocked and from an unlisted source all through the restart. Not
# through in_peer: $! must be ping itself (nsenter execs it), which SIGINT makes print its
# counts and exit.
nsenter --net=/run/netns/$PEER_NS ping -n -i 0.05 -W 1 -I "$BLOCKED_V4" "$FW_V4" \
	>"$LOGS/restart-blocked.ping" 2>&1 &
PING_BLOCKED=$!
nsenter --net=/run/netns/$PEER_NS ping -n -i 0.05 -W 1 -I "$PEER_V4" "$FW_V4" \
	>"$LOGS/restart-unlisted.ping" 2>&1 &
PING_UNLISTED=$!
sleep 1
RESTART_STARTED=$(date +%s%N)
systemctl restart $UNIT >"$LOGS/restart.log" 2>&1
rc=$?
RESTART_MS=$((($(date +%s%N) - RESTART_STARTED) / 1000000))
sleep 1
kill -INT "$PING_BLOCKED" "$PING_UNLISTED"
# Bounded: a ping that ignored the signal must not hold up the run.
wait_for 10 eval '! kill -0 "$PING_BLOCKED" 2>/dev/null && ! kill -0 "$PING_UNLISTED" 2>/dev/null'
kill -KILL "$PING_BLOCKED" "$PING_UNLISTED" 2>/dev/null
wait "$PING_BLOCKED" "$PING_UNLISTED" 2>/dev/null
NEW_PID=$(prop $UNIT MainPID)
check restart "systemctl restart exited $rc, active: $(systemctl is-active $UNIT), pid $MAIN_PID -> $NEW_PID" \
	test "$rc $(systemctl is-active $UNIT)" = "0 active" -a "$NEW_PID" != "$MAIN_PID"
counts() { sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) received.*/\1 \2/p' "$1"; }
read -r SENT GOT <<<"$(counts "$LOGS/restart-blocked.ping")"
info restart-pings "systemctl restart took ${RESTART_MS} ms; blocked source: ${SENT:-?} sent, ${GOT:-?} answered; unlisted: $(counts "$LOGS/restart-unlisted.ping")"
check restart-no-gap-blocked "pings from $BLOCKED_V4 during the restart: ${SENT:-?} sent, ${GOT:-?} answered" \
	test "${GOT:-x}" = 0 -a "${SENT:-0}" -ge 20
read -r SENT GOT <<<"$(counts "$LOGS/restart-unlisted.ping")"
# The last echo request may still be in flight when ping is interrupted.
check restart-no-gap-unlisted "pings from $PEER_V4 during the restart: ${SENT:-?} sent, ${GOT:-?} answered" \
	test "${SENT:-0}" -ge 20 -a "$((${SENT:-0} - ${GOT:-0}))" -le 1
pins >"$LOGS/pins-after"
check restart-reuses-pins "pins changed: $(diff "$LOGS/pins-before" "$LOGS/pins-after" | grep '^[<>]' | head -4 | tr '\n' ' ')" \
	cmp -s "$LOGS/pins-before" "$LOGS/pins-after"
MODE=$(api /v1/status | jq -r '.interfaces[0].mode')
check restart-reuses-xdp-link "status: XDP link $MODE" test "$MODE" = reused
check restart-ready "/readyz after the restart" readyz

# ---- the feeds timer runs `xdpwall feeds sync` under its unit ------------------------------
printf '# xdpwall vm-test fixture\n%s\n%s\n' "$FEED_PREFIX_V4" "$FEED_PREFIX_V6" >"$FEED_ROOT/feed.txt"
mkdir -p /etc/systemd/system/$FEEDS_TIMER.d
cat >/etc/systemd/system/$FEEDS_TIMER.d/xwvm.conf <<EOF
# Fire once, two seconds after the timer starts (the test cannot wait half an hour).
[Timer]
OnCalendar=
OnActiveSec=2s
AccuracySec=1s
RandomizedDelaySec=0
EOF
systemctl daemon-reload
if systemctl enable --now $FEEDS_TIMER >"$LOGS/timer.log" 2>&1; then
	pass timer-enable-now
else
	fail timer-enable-now "$(tail -3 "$LOGS/timer.log" | tr '\n' ' ')"
fi
feeds_ran() { [ "$(prop $FEEDS_UNIT ExecMainExitTimestampMonotonic)" != 0 ]; }
check feeds-timer-fired "$FEEDS_UNIT did not run within 90 s of the timer's start" wait_for 90 feeds_ran
RESULT="$(prop $FEEDS_UNIT Result) $(prop $FEEDS_UNIT ExecMainStatus)"
journalctl -b --no-pager -o cat -u $FEEDS_UNIT >"$LOGS/feeds-sync.txt" 2>&1
check feeds-service-success "Result ExecMainStatus: $RESULT; $(tail -3 "$LOGS/feeds-sync.txt" | tr '\n' ' ')" \
	test "$RESULT" = "success 0"
info feeds-sync-output "$(grep -i xwvm-fixture "$LOGS/feeds-sync.txt" | head -2 | tr '\n' ' ')"
check feed-applied "feed: $(api /v1/feeds | jq -c '.feeds[0] | {entries, last_error}')" \
	test "$(api /v1/feeds | jq '.feeds[0].entries')" = 2
check feed-v4-dropped "pings from $FEED_V4 (in the feed) answered" wait_for 10 dropped "$FEED_V4" "$FW_V4"
check feed-v6-dropped "pings from $FEED_V6 (in the feed) answered" wait_for 10 dropped "$FEED_V6" "$FW_V6"
systemctl disable --now $FEEDS_TIMER >/dev/null 2>&1
rm -r /etc/systemd/system/$FEEDS_TIMER.d
systemctl daemon-reload

# ---- dpkg -i over the running package (the upgrade path): restarted on the same pins ------
MAIN_PID=$(prop $UNIT MainPID)
pins >"$LOGS/pins-before-upgrade"
dpkg -i "$DISK/xdpwall.deb" >"$LOGS/dpkg-upgrade.log" 2>&1
rc=$?
NEW_PID=$(prop $UNIT MainPID)
check upgrade-restarts "dpkg -i over the running package exited $rc, active: $(systemctl is-active $UNIT), pid $MAIN_PID -> $NEW_PID" \
	test "$rc $(systemctl is-active $UNIT)" = "0 active" -a "$NEW_PID" != "$MAIN_PID"
check upgrade-keeps-enabled "is-enabled: $(systemctl is-enabled $UNIT)" test "$(systemctl is-enabled $UNIT)" = enabled
pins >"$LOGS/pins-after-upgrade"
check upgrade-reuses-pins "pins changed: $(diff "$LOGS/pins-before-upgrade" "$LOGS/pins-after-upgrade" | grep '^[<>]' | head -4 | tr '\n' ' ')" \
	cmp -s "$LOGS/pins-before-upgrade" "$LOGS/pins-after-upgrade"
check upgrade-still-blocks "pings from $BLOCKED_V4 answered after the upgrade" dropped "$BLOCKED_V4" "$FW_V4"
check upgrade-still-blocks-feed "pings from $FEED_V4 answered after the upgrade" dropped "$FEED_V4" "$FW_V4"

# ---- systemctl stop keeps the filter; xdpwall detach removes it ----------------------------
systemctl stop $UNIT >"$LOGS/stop.log" 2>&1
rc=$?
check stop "systemctl stop exited $rc, is-active: $(systemctl is-active $UNIT)" \
	test "$rc $(systemctl is-active $UNIT)" = "0 inactive"
check stop-keeps-xdp "no XDP program on $FW_IF after stop" xdp_attached
check stop-still-blocks "pings from $BLOCKED_V4 answered after stop" dropped "$BLOCKED_V4" "$FW_V4"
check stop-still-blocks-feed "pings from $FEED_V4 answered after stop" dropped "$FEED_V4" "$FW_V4"
check stop-still-passes "pings from $PEER_V4 lost after stop" passes "$PEER_V4" "$FW_V4"

xdpwall detach --config "$CONFIG" >"$LOGS/detach.log" 2>&1
rc=$?
check detach "xdpwall detach exited $rc: $(tail -2 "$LOGS/detach.log" | tr '\n' ' ')" test "$rc" = 0
if xdp_attached; then fail detach-no-xdp "XDP still attached to $FW_IF"; else pass detach-no-xdp; fi
if egress_attached; then fail detach-no-egress "an egress filter is left on $FW_IF"; else pass detach-no-egress; fi
check detach-no-pins "left under $PIN_DIR: $(pins | head -4 | tr '\n' ' ')" test -z "$(pins)"
check detach-blocked-passes "pings from $BLOCKED_V4 still dropped after detach" passes "$BLOCKED_V4" "$FW_V4"

# ---- dpkg -r keeps the config, dpkg -P removes it ------------------------------------------
if dpkg -r xdpwall >"$LOGS/dpkg-remove.log" 2>&1; then
	pass dpkg-remove
else
	fail dpkg-remove "dpkg -r failed: $(tail -3 "$LOGS/dpkg-remove.log" | tr '\n' ' ')"
fi
check remove-keeps-config "$CONFIG gone or not ours after dpkg -r" grep -q "$FW_IF" "$CONFIG"
check remove-removes-binary "/usr/bin/xdpwall is still there" test ! -e /usr/bin/xdpwall
check remove-removes-units "the unit files are still there: $(ls /lib/systemd/system/xdpwall* /usr/lib/systemd/system/xdpwall* 2>/dev/null | tr '\n' ' ')" \
	test -z "$(ls /lib/systemd/system/xdpwall* /usr/lib/systemd/system/xdpwall* 2>/dev/null)"
STATUS=$(dpkg-query -W -f='${db:Status-Status}' xdpwall 2>&1)
check remove-config-files-state "dpkg status: $STATUS" test "$STATUS" = config-files
LOAD=$(prop $UNIT LoadState)
check remove-unit-unloaded "$UNIT LoadState $LOAD after dpkg -r (no daemon-reload?)" \
	test "$LOAD" = not-found -o "$LOAD" = masked
if dpkg -P xdpwall >"$LOGS/dpkg-purge.log" 2>&1; then
	pass dpkg-purge
else
	fail dpkg-purge "dpkg -P failed: $(tail -3 "$LOGS/dpkg-purge.log" | tr '\n' ' ')"
fi
check purge-removes-config "$CONFIG still there after dpkg -P" test ! -e "$CONFIG"
LEFT=$(find /etc/systemd/system -name 'xdpwall*' 2>/dev/null | tr '\n' ' ')
check purge-removes-unit-links "left in /etc/systemd/system: $LEFT" test -z "$LEFT"
