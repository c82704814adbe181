#!/bin/sh
# udhcpc -s script for tests: configures only the address and records what happened, and
# the options of the last lease (udhcpc's variables) in $BT_EVENTS.env.
# udhcpc passes its own environment through, so BT_EVENTS comes from whoever started it.
# shellcheck disable=SC2154  # interface, ip and mask come from udhcpc
PATH=/usr/sbin:/usr/bin:/sbin:/bin
: "${BT_EVENTS:?BT_EVENTS must name the events file}"

case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    echo "deconfig -" >>"$BT_EVENTS"
    ;;
bound | renew)
    # $mask is the prefix length, $subnet the dotted mask.
    ip -4 addr replace "$ip/$mask" dev "$interface" || exit 1
    env >"$BT_EVENTS.env"
    echo "$1 $ip" >>"$BT_EVENTS"
    ;;
leasefail | nak)
    echo "$1 -" >>"$BT_EVENTS"
    ;;
esac
exit 0
