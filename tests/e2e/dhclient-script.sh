#!/bin/sh
# dhclient -sf script for tests: configures only the address and records what happened, and
# the options of the last lease (dhclient's new_* variables) in $BT_EVENTS.env.
# It stands in for Debian's /sbin/dhclient-script, which would rewrite the host's
# /etc/resolv.conf and routes. dhclient runs it with a clean environment: BT_EVENTS arrives
# through `dhclient -e`, and PATH is set here.
# shellcheck disable=SC2154  # reason, interface, old_* and new_* come from dhclient
PATH=/usr/sbin:/usr/bin:/sbin:/bin
: "${BT_EVENTS:?BT_EVENTS must name the events file}"

case "$reason" in
BOUND | RENEW | REBIND | REBOOT)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
        ip -4 addr del "$old_ip_address/$old_subnet_mask" dev "$interface" 2>/dev/null
    fi
    ip -4 addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" || exit 1
    env >"$BT_EVENTS.env"
    echo "$reason $new_ip_address" >>"$BT_EVENTS"
    ;;
RELEASE | EXPIRE | STOP)
    if [ -n "$old_ip_address" ]; then
        ip -4 addr del "$old_ip_address/$old_subnet_mask" dev "$interface" 2>/dev/null
    fi
    echo "$reason ${old_ip_address:--}" >>"$BT_EVENTS"
    ;;
FAIL | NAK)
    echo "$reason -" >>"$BT_EVENTS"
    ;;
TIMEOUT)
    # dhclient offers a lease from its file when no server answered; refusing it keeps a
    # silent server from looking like a working one.
    echo "$reason -" >>"$BT_EVENTS"
    exit 1
    ;;
esac
exit 0
