#!/usr/bin/env bash
# The brushtail demo: two edge sites in network namespaces, each a brushtaild serving its own
# subscriber link, both serving one pool and replicating their leases over mutual-TLS DTLS
# (certificates made by `brushtail pki` here), and real DHCP clients (ISC dhclient, busybox
# udhcpc, Kea's perfdhcp as a relay) getting leases at site A from the slow path, renewing
# them in the kernel (the XDP fast path) and releasing them; a roaming subscriber leased at
# site A is moved to site B's link and keeps its address.
# Run as root on Debian 12: `sudo bash scripts/demo.sh`. Everything it creates is named
# bt-demo-* (namespaces, and the pin directories /sys/fs/bpf/bt-demo*) and removed on exit,
# even on failure or ^C.
#
#   site A: bt-demo-srv    bt-demo-sw                         subscribers
#   [brushtaild]--sub0 ==== up0--[br0]--p1 ==== eth0 [bt-demo-cpe1: dhclient]
#    |  198.18.0.1/16 XDP  XDP       |--p2 ==== eth0 [bt-demo-cpe2: udhcpc]
#    |                               |--p3 ==== eth0 [bt-demo-relay: perfdhcp, 198.18.0.2]
#    |                               `--p4 ==== eth0 [bt-demo-roam: dhclient]
#   peer0 198.19.0.1/24                   |  moved (the roaming step)
#    || DTLS, UDP 6767                    v
#   peer0 198.19.0.2/24    bt-demo-sw-b
#    |                               ,--p4 ==== eth0 [bt-demo-roam]
#   [brushtaild]--sub0 ==== up0--[br0]
#   site B: bt-demo-srv-b  (198.18.0.3/16, XDP; the same pool as site A)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
LEASE_TIME=${LEASE_TIME:-60}  # short, so dhclient renews (at T1 = 50%) during the demo
ns_srv=bt-demo-srv ns_sw=bt-demo-sw ns_cpe1=bt-demo-cpe1 ns_cpe2=bt-demo-cpe2 ns_relay=bt-demo-relay
ns_srv_b=bt-demo-srv-b ns_sw_b=bt-demo-sw-b ns_roam=bt-demo-roam
all_ns=("$ns_srv" "$ns_sw" "$ns_cpe1" "$ns_cpe2" "$ns_relay" "$ns_srv_b" "$ns_sw_b" "$ns_roam")
pin_dir=/sys/fs/bpf/bt-demo pin_dir_b=/sys/fs/bpf/bt-demo-b  # the fast paths' pinned maps
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
    rm -rf "$pin_dir" "$pin_dir_b" "$work"
}
trap cleanup EXIT

if [[ $EUID -ne 0 ]]; then
    echo "demo.sh needs root (network namespaces): sudo bash scripts/demo.sh" >&2
    exit 1
fi

step "Installing what the demo needs (Debian packages, BCC headers, venv)"
bash scripts/setup.sh

step "Building two sites' subscriber links and the link between the sites, in namespaces"
remove_namespaces 2>/dev/null || true  # left over from an interrupted run
rm -rf "$pin_dir" "$pin_dir_b"
for ns in "${all_ns[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
ip link add sub0 netns "$ns_srv" type veth peer name up0 netns "$ns_sw"
ip -n "$ns_sw" link add br0 type bridge
ip -n "$ns_sw" link set up0 master br0
for i in 1 2 3 4; do
    case $i in 3) peer=$ns_relay ;; 4) peer=$ns_roam ;; *) peer=bt-demo-cpe$i ;; esac
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
# Site B: its own link (a bridge with no subscriber yet) and its own server address in the
# same subnet, since it serves the same pool.
ip link add sub0 netns "$ns_srv_b" type veth peer name up0 netns "$ns_sw_b"
ip -n "$ns_sw_b" link add br0 type bridge
ip -n "$ns_sw_b" link set up0 master br0 up
ip -n "$ns_sw_b" link set br0 up
ip -n "$ns_srv_b" addr add 198.18.0.3/16 dev sub0
ip -n "$ns_srv_b" link set sub0 up
in_ns "$ns_sw_b" "$python" -m tests.e2e.xdp_pass up0
# The sites' own link, for replication only.
ip link add peer0 netns "$ns_srv" type veth peer name peer0 netns "$ns_srv_b"
ip -n "$ns_srv" addr add 198.19.0.1/24 dev peer0
ip -n "$ns_srv_b" addr add 198.19.0.2/24 dev peer0
ip -n "$ns_srv" link set peer0 up
ip -n "$ns_srv_b" link set peer0 up
echo "site A: sub0 198.18.0.1/16; cpe1, cpe2, a relay and a roaming subscriber on its link"
echo "site B: sub0 198.18.0.3/16 on a link of its own; the sites peer on 198.19.0.1-2"

step "The cluster CA and a certificate for each site (brushtail pki)"
cli() { "$python" -m brushtaild.cli "$@"; }
brushtail() { cli "$@" --config "$work/brushtail.yaml"; }
brushtail_b() { cli "$@" --config "$work/brushtail-b.yaml"; }
cli pki init --ca-dir "$work/ca" --name "demo cluster CA" | sed 's/^/  /'
for site in demo-a demo-b; do
    cli pki issue "$site" --ca-dir "$work/ca" --out "$work/pki/$site" | sed 's/^/  /'
done
cli pki list --ca-dir "$work/ca" | sed 's/^/  /'

step "Starting brushtaild at both sites (lease time ${LEASE_TIME}s; the fast paths compile in a few seconds)"
# site_config SITE SERVER_ID PEER_SITE PEER_ADDRESS LISTEN_ADDRESS PIN_DIR STATE_DIR: one
# site's file. Both serve the same pool (replication requires the same pools and ranges at
# every site); each allocates new leases from the blocks of it that it owns.
site_config() {
    cat <<EOF
site: $1
interface: sub0
server_id: $2
state_dir: $work/$7
control_socket: $work/$7.sock
pools:
  - name: residential
    subnet: 198.18.0.0/16
    ranges: ["198.18.1.0-198.18.255.254"]
    routers: [$2]
    dns_servers: [$2]
    lease_time: $LEASE_TIME
fastpath:
  enabled: true
  xdp_mode: native
  pin_dir: $6
replication:
  listen: $5:6767
  ca: $work/pki/$1/ca.crt
  certificate: $work/pki/$1/site.crt
  key: $work/pki/$1/site.key
  peers:
    - site: $3
      address: $4
  tuning:
    anti_entropy_interval: 5  # 30 s by default; shorter, so that the peers show up soon
EOF
}
site_config demo-a 198.18.0.1 demo-b 198.19.0.2 198.19.0.1 "$pin_dir" state >"$work/brushtail.yaml"
site_config demo-b 198.18.0.3 demo-a 198.19.0.1 198.19.0.2 "$pin_dir_b" state-b \
    >"$work/brushtail-b.yaml"
cli check-config "$work/brushtail.yaml"
cli check-config "$work/brushtail-b.yaml"
# What `systemctl status` would show: each daemon's STATUS= lines, received on a socket of
# our own (NOTIFY_SOCKET), one file per site.
status_listener='
import signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        for line in sock.recv(4096).decode(errors="replace").splitlines():
            if line.startswith("STATUS="):
                print(line[len("STATUS="):], file=out)
'
# start_site NAMESPACE CONFIG LOG STATUS: brushtaild in NAMESPACE, its STATUS= lines in
# STATUS. `ip netns exec` gives its command a private /sys without bpffs, where the daemon
# would pin into a bpffs of its own; nsenter puts it back in our mount namespace (the
# host's /sys/fs/bpf), keeping the server's network namespace.
start_site() {
    in_ns "$1" "$python" -c "$status_listener" "$4.sock" "$4" &
    wait_for_socket "$4.sock"
    in_ns "$1" nsenter --mount="/proc/$$/ns/mnt" --wd="$repo" \
        env NOTIFY_SOCKET="$4.sock" "$python" -m brushtaild --config "$2" >"$3" 2>&1 &
}
wait_for_socket() {
    local deadline=$((SECONDS + 10))
    until [[ -S $1 ]]; do
        ((SECONDS < deadline)) || fail "no socket $1"
        sleep 0.05
    done
}
start_site "$ns_srv" "$work/brushtail.yaml" "$work/brushtaild.log" "$work/status-a"
start_site "$ns_srv_b" "$work/brushtail-b.yaml" "$work/brushtaild-b.log" "$work/status-b"
# Live, except the lines of perfdhcp's hundred relayed clients (its MACs start 00:0c:01),
# which are summed up after it runs.
for site in a b; do
    log=$work/brushtaild.log
    [[ $site == b ]] && log=$work/brushtaild-b.log
    tail -n +1 -f "$log" --pid=$$ 2>/dev/null |
        grep --line-buffered -v 'mac=00:0c:01:' | sed -u "s/^/  brushtaild $site: /" &
done
wait_for "$work/brushtaild.log" "started" 60 || fail "brushtaild did not start at site A"
wait_for "$work/brushtaild-b.log" "started" 60 || fail "brushtaild did not start at site B"

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

step "Roaming: a subscriber leased at site A is moved to site B's link and keeps its address"
roam=(dhclient -4 -v -sf "$repo/tests/e2e/dhclient-script.sh" -e "BT_EVENTS=$work/roam.events"
      -lf "$work/roam.leases" -pf "$work/roam.pid" eth0)
# Not through in_ns: $! must be dhclient itself, which is unplugged below.
ip netns exec "$ns_roam" "${roam[@]}" -d >"$work/roam-a.log" 2>&1 &
roam_pid=$!
wait_for "$work/roam.events" BOUND 15 || fail "the roaming subscriber got no lease at site A"
roam_ip=$(awk '$1 == "BOUND" {print $2}' "$work/roam.events" | tail -n 1)
mac_roam=$(in_ns "$ns_roam" cat /sys/class/net/eth0/address)
echo "at site A, on A's link: $roam_ip (mac $mac_roam)"
# Site A sent the lease to site B as it committed it.
wait_for_listed() {
    local deadline=$((SECONDS + 5))
    until brushtail_b leases --mac "$mac_roam" --state bound 2>/dev/null | grep -q "$roam_ip"; do
        ((SECONDS < deadline)) || fail "site B does not list $roam_ip"
        sleep 0.1
    done
}
wait_for_listed
echo "  site B already lists it, from site A (brushtail leases at B):"
brushtail_b leases --mac "$mac_roam" | sed 's/^/    /'
# The CPE is unplugged (dhclient killed: it sends nothing more, its lease file stays) and
# plugged into site B's switch; as after any loss of carrier it asks for the address it
# has (INIT-REBOOT, a broadcast REQUEST), and site B, which has never seen it, answers from
# the replicated lease. (Not `dhclient -x`: that starts a client of its own first, whose
# REQUEST site A would answer.)
{ kill -KILL "$roam_pid" && wait "$roam_pid"; } 2>/dev/null || true
ip -n "$ns_sw" link set p4 netns "$ns_sw_b"
ip -n "$ns_sw_b" link set p4 master br0 up
echo "p4 moved from A's switch (bt-demo-sw) to B's (bt-demo-sw-b); dhclient started again"
: >"$work/roam.events"
in_ns "$ns_roam" "${roam[@]}" -d >"$work/roam-b.log" 2>&1 &
wait_for "$work/roam.events" '^\(REBOOT\|BOUND\|NAK\|FAIL\)' 15 ||
    fail "the roaming subscriber got no answer at site B"
read -r event address <"$work/roam.events"
[[ $address == "$roam_ip" ]] || fail "at site B the subscriber got $event $address, not $roam_ip"
wait_for "$work/brushtaild-b.log" "ack .*mac=$mac_roam " 5 || fail "site B logged no ack"
echo "at site B, on B's link: $event $address, the same address; site B's log (the slow path:"
echo "the address is in a block site A owns, so site B extends it by a bounded amount only):"
grep "ack .*mac=$mac_roam " "$work/brushtaild-b.log" | sed 's/^/    /'
echo "  brushtail leases at both sites:"
brushtail leases --mac "$mac_roam" | sed 's/^/    A: /'
brushtail_b leases --mac "$mac_roam" | sed 's/^/    B: /'
echo "  brushtail peers at both sites:"
brushtail peers | sed 's/^/    A: /'
brushtail_b peers | sed 's/^/    B: /'
# STATUS= comes every 5 s; wait for one that names the peer as up.
wait_for "$work/status-a" "peers: 1/1 up" 15 || fail "site A's STATUS names no peer up"
wait_for "$work/status-b" "peers: 1/1 up" 15 || fail "site B's STATUS names no peer up"
echo "  STATUS= (what systemctl status shows):"
echo "    A: $(tail -n 1 "$work/status-a")"
echo "    B: $(tail -n 1 "$work/status-b")"

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

step "Asking the running daemon at site A: brushtail status, brushtail leases"
brushtail status | sed 's/^/  /'
echo
brushtail leases --limit 5 | sed 's/^/  /'

step "Stopping site A's brushtaild (SIGTERM); the leases stay on disk"
ip netns pids "$ns_srv" | xargs -r kill -TERM
sleep 1
echo "  without the daemon, brushtail status says so (exit 3) and the store is read directly:"
brushtail status 2>&1 | sed 's/^/  /' || true
brushtail leases --store --all --limit 5 | sed 's/^/  /'
echo
echo "Demo complete: dhclient and udhcpc got their leases from the slow path, renewed them"
echo "in the kernel (XDP, recorded in the lease store) and released them on the slow path;"
echo "the two sites peered over mutual-TLS DTLS, and a subscriber leased at site A kept its"
echo "address when it was moved to site B's link."
