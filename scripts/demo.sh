#!/usr/bin/env bash
# The brushtail demo: a subscriber link in network namespaces, brushtaild serving it, and
# real DHCP clients (ISC dhclient, busybox udhcpc, Kea's perfdhcp as a relay) getting leases
# from the slow path, renewing them in the kernel (the XDP fast path) and releasing them.
# Run as root on Debian 12: `sudo bash scripts/demo.sh`. Everything it creates is named
# bt-demo-* (namespaces, and the pin directory /sys/fs/bpf/bt-demo) and removed on exit,
# even on failure or ^C.
#
#   bt-demo-srv            bt-demo-sw                         subscribers
#   [brushtaild]--sub0 ==== up0--[br0]--p1 ==== eth0 [bt-demo-cpe1: dhclient]
#    198.18.0.1/16  XDP    XDP       |--p2 ==== eth0 [bt-demo-cpe2: udhcpc]
#                                    `--p3 ==== eth0 [bt-demo-relay: perfdhcp, 198.18.0.2]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
LEASE_TIME=${LEASE_TIME:-60}  # short, so dhclient renews (at T1 = 50%) during the demo
ns_srv=bt-demo-srv ns_sw=bt-demo-sw ns_cpe1=bt-demo-cpe1 ns_cpe2=bt-demo-cpe2 ns_relay=bt-demo-relay
all_ns=("$ns_srv" "$ns_sw" "$ns_cpe1" "$ns_cpe2" "$ns_relay")
pin_dir=/sys/fs/bpf/bt-demo  # the fast path's pinned maps
work=$(mktemp -d /tmp/brushtail-demo.XXXXXX)
python=$repo/.venv/bin/python

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\n\033[1;31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# wait_for FILE PATTERN SECONDS: until a line of FILE matches PATTERN.
wait_for() {
    local deadline=$((SECONDS + $3))
    until grep -q "$2" "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

remove_namespaces() {
    for ns in "${all_ns[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null
    done
    sleep 0.5
    for ns in "${all_ns[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
        ip netns del "$ns" 2>/dev/null
    done
}
cleanup() {
    set +e
    remove_namespaces
    rm -rf "$pin_dir" "$work"
}
trap cleanup EXIT

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh needs root (network namespaces): sudo bash scripts/demo.sh" >&2
    exit 1
fi

step "Installing what the demo needs (Debian packages, BCC headers, venv)"
bash scripts/setup.sh

step "Building the subscriber link in network namespaces"
remove_namespaces 2>/dev/null || true  # left over from an interrupted run
rm -rf "$pin_dir"
for ns in "${all_ns[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
ip link add sub0 netns "$ns_srv" type veth peer name up0 netns "$ns_sw"
ip -n "$ns_sw" link add br0 type bridge
ip -n "$ns_sw" link set up0 master br0
for i in 1 2 3; do
    peer=$([[ $i == 3 ]] && echo "$ns_relay" || echo "bt-demo-cpe$i")
    ip link add "p$i" netns "$ns_sw" type veth peer name eth0 netns "$peer"
    ip -n "$ns_sw" link set "p$i" master br0 up
    ip -n "$peer" link set eth0 up
done
ip -n "$ns_sw" link set up0 up
ip -n "$ns_sw" link set br0 up
ip -n "$ns_srv" addr add 198.18.0.1/16 dev sub0
ip -n "$ns_srv" link set sub0 up
ip -n "$ns_relay" addr add 198.18.0.2/16 dev eth0
# The fast path answers with XDP_TX on sub0, in native mode as on a real NIC. On a veth
# the reply is delivered only if the peer (up0, the switch's port) runs an XDP program too:
# it gets one that passes everything, and the bridge forwards the replies as usual.
# (Generic mode on sub0 would need no peer program, but is not what a NIC runs.)
in_ns "$ns_sw" "$python" -m tests.e2e.xdp_pass up0
echo "server sub0 198.18.0.1/16; subscribers cpe1, cpe2 and a relay on one bridged link"

step "Starting brushtaild (lease time ${LEASE_TIME}s; the fast path compiles in a few seconds)"
cat >"$work/brushtail.yaml" <<EOF
site: demo
interface: sub0
server_id: 198.18.0.1
state_dir: $work/state
control_socket: $work/control.sock
pools:
  - name: residential
    subnet: 198.18.0.0/16
    ranges: ["198.18.1.0-198.18.255.254"]
    routers: [198.18.0.1]
    dns_servers: [198.18.0.1]
    lease_time: $LEASE_TIME
fastpath:
  enabled: true
  xdp_mode: native
  pin_dir: $pin_dir
EOF
"$python" -m brushtaild.cli check-config "$work/brushtail.yaml"
# `ip netns exec` gives its command a private /sys without bpffs, where the daemon would
# pin into a bpffs of its own; nsenter puts it back in our mount namespace (the host's
# /sys/fs/bpf), keeping the server's network namespace.
in_ns "$ns_srv" nsenter --mount="/proc/$$/ns/mnt" --wd="$repo" \
    "$python" -m brushtaild --config "$work/brushtail.yaml" >"$work/brushtaild.log" 2>&1 &
# Live, except the lines of perfdhcp's hundred relayed clients (its MACs start 00:0c:01),
# which are summed up after it runs.
tail -n +1 -f "$work/brushtaild.log" --pid=$$ 2>/dev/null |
    grep --line-buffered -v 'mac=00:0c:01:' | sed -u 's/^/  brushtaild: /' &
wait_for "$work/brushtaild.log" "started" 60 || fail "brushtaild did not start"

step "cpe1: ISC dhclient gets a lease"
dh=(dhclient -4 -v -sf "$repo/tests/e2e/dhclient-script.sh" -e "BT_EVENTS=$work/cpe1.events"
    -lf "$work/cpe1.leases" -pf "$work/cpe1.pid" eth0)
in_ns "$ns_cpe1" "${dh[@]}" -d >"$work/dhclient.log" 2>&1 &
wait_for "$work/cpe1.events" BOUND 15 || fail "dhclient got no lease"
echo "cpe1 eth0: $(ip -n "$ns_cpe1" -4 -br addr show dev eth0)"
mac1=$(in_ns "$ns_cpe1" cat /sys/class/net/eth0/address)

step "cpe2: busybox udhcpc gets a lease, then renews it (SIGUSR1), answered in the kernel"
# Not through in_ns: $! must be udhcpc itself, which the signals below are for.
ip netns exec "$ns_cpe2" env BT_EVENTS="$work/cpe2.events" \
    udhcpc -f -i eth0 -s "$repo/tests/e2e/udhcpc-script.sh" -t 5 -T 1 >"$work/udhcpc.log" 2>&1 &
udhcpc_pid=$!
wait_for "$work/cpe2.events" bound 15 || fail "udhcpc got no lease"
echo "cpe2 eth0: $(ip -n "$ns_cpe2" -4 -br addr show dev eth0)"
mac2=$(in_ns "$ns_cpe2" cat /sys/class/net/eth0/address)
sleep 1
# udhcpc sends its renewal before it opens the socket it listens on, and the kernel's ACK
# is usually there first; a second later udhcpc asks again by broadcast: two ACKs, both XDP.
kill -USR1 "$udhcpc_pid"
wait_for "$work/cpe2.events" renew 5 || fail "udhcpc did not renew"
# brushtaild records what the kernel answered (lease store, then log) within a second.
wait_for "$work/brushtaild.log" "ack .*mac=$mac2 .*path=fast" 5 || fail "not renewed in the kernel"
echo "cpe2 events: $(tr '\n' ';' <"$work/cpe2.events")"

step "relay: perfdhcp sends 100 relayed clients through giaddr 198.18.0.2"
in_ns "$ns_relay" perfdhcp -4 -l eth0 -r 50 -R 100 -n 100 -W 1000000 198.18.0.1 \
    >"$work/perfdhcp.txt" 2>&1 || true  # exit 3 only means some exchange was not answered
grep -E '^(Rate|\*\*\*Statistics for|sent packets|received packets|drops:)' "$work/perfdhcp.txt" |
    sed 's/^/  perfdhcp: /'
grep -q '^received packets: [1-9]' "$work/perfdhcp.txt" || fail "perfdhcp got no answer"
relayed=$(grep -c 'INFO ack .*mac=00:0c:01:' "$work/brushtaild.log" || true)
echo "  brushtaild: $relayed relayed clients bound through 198.18.0.2 (their log lines not shown)"

# From here on, every decision the kernel makes is traced (at most 100 a second).
"$python" -m brushtaild.cli trace --config "$work/brushtail.yaml" >"$work/trace.txt" 2>&1 &
trace_pid=$!

step "cpe1: waiting for dhclient to renew on its own at T1 ($((LEASE_TIME / 2))s), in the kernel"
wait_for "$work/cpe1.events" RENEW $((LEASE_TIME / 2 + 10)) || fail "dhclient did not renew"
echo "cpe1 events: $(tr '\n' ';' <"$work/cpe1.events")"
wait_for "$work/brushtaild.log" "ack .*mac=$mac1 .*path=fast" 5 || fail "not renewed in the kernel"

step "What the server counted (Prometheus, 127.0.0.1:9967 in the server namespace)"
metrics() { in_ns "$ns_srv" "$python" - "$@" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9967/metrics", timeout=5).read().decode()
for line in text.splitlines():
    # Labelled counters only once they count something; gauges always.
    if line.startswith(tuple(sys.argv[1:])) and not ("{" in line and line.endswith(" 0.0")):
        print("    " + line)
EOF
}
echo "  fast path (XDP, in the kernel; entries: leases it answers for; misses: clients with"
echo "  no lease yet, passed to the slow path):"
metrics "dhcp_fastpath_requests_total{" dhcp_cache_ dhcp_fastpath_up
echo "  slow path (userspace):"
metrics "dhcp_slowpath_requests_total{" dhcp_pool_addresses "dhcp_lease_writes_total " \
    "dhcp_lease_commit_seconds_count"
echo "  renewals the kernel answered, as brushtaild recorded them (lease store and log):"
grep 'path=fast' "$work/brushtaild.log" | sed 's/^/    /'

step "Both subscribers release their leases (the slow path's job: their entries go)"
kill -USR2 "$udhcpc_pid"
in_ns "$ns_cpe1" "${dh[@]}" -r >/dev/null 2>&1
for mac in "$mac1" "$mac2"; do
    wait_for "$work/brushtaild.log" "release .*mac=$mac " 5 || fail "no release from $mac"
done
metrics dhcp_cache_entries 'dhcp_fastpath_requests_total{result="message"}'

step "What the kernel decided meanwhile: brushtail trace (Ctrl-C ends it)"
kill -INT "$trace_pid"
wait "$trace_pid" || fail "brushtail trace failed: $(cat "$work/trace.txt")"
grep -v 'events shown' "$work/trace.txt" | tail -n 6 | sed 's/^/  /'
grep 'events shown' "$work/trace.txt" | sed 's/^/  /'

step "Asking the running daemon: brushtail status, brushtail leases"
brushtail() { "$python" -m brushtaild.cli "$@" --config "$work/brushtail.yaml"; }
brushtail status | sed 's/^/  /'
echo
brushtail leases --limit 5 | sed 's/^/  /'

step "Stopping brushtaild (SIGTERM); the leases stay on disk"
ip netns pids "$ns_srv" | xargs -r kill -TERM
sleep 1
echo "  without the daemon, brushtail status says so (exit 3) and the store is read directly:"
brushtail status 2>&1 | sed 's/^/  /' || true
brushtail leases --store --all --limit 5 | sed 's/^/  /'
echo
echo "Demo complete: dhclient and udhcpc got their leases from the slow path, renewed them"
echo "in the kernel (XDP, recorded in the lease store) and released them on the slow path."
