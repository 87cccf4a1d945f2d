#!/bin/sh
# Shared by the guest halves of Benchmarks/peers (sourced inside Scripts/vm --host-root, as root):
# the host's tools through its root, the vhost worker's pinning and CPU time, pktgen as an RX
# source, and `vhostctl attach` as pktgen's sink. pktgen's frames are $size bytes.
host() { chroot /host /usr/bin/env HOME=/tmp PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"; }
stat() { cat "/sys/class/net/$1/statistics/$2"; }
uptime_cs() { awk '{ split($1, t, "."); print t[1] * 100 + t[2] }' /proc/uptime; }  # centiseconds

# pin_worker PID: the vhost worker of the device PID owns ("vhost-PID": a kernel thread before
# 6.4, a thread of PID from 6.4 on) to CPU 0.
# Sets worker_tid to the worker's thread id.
pin_worker() {
    for comm in /proc/[0-9]*/comm /proc/$1/task/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = "vhost-$1" ] || continue
        worker_tid=$(basename "$(dirname "$comm")"); host taskset -p -c 0 "$worker_tid" >/dev/null && return 0
    done
    return 1
}
# oncpu_ns TID: the nanoseconds thread TID has run (schedstat's first field), as vhostctl bench
# reads its own worker's; 0 when the thread is gone.
oncpu_ns() { awk '{print $1}' "/proc/$1/schedstat" 2>/dev/null || echo 0; }

pktgen_start() {  # TAP: pktgen floods TAP with SIZE-byte UDP frames, as vhostctl bench's rx source does
    echo rem_device_all >/proc/net/pktgen/kpktgend_0
    echo "add_device $1" >/proc/net/pktgen/kpktgend_0
    for c in "count 0" "clone_skb 0" "delay 0" "pkt_size $size" "dst_mac 52:54:00:be:4c:01" "src_min 10.79.0.1" "src_max 10.79.0.1" \
             "dst_min 10.79.0.2" "dst_max 10.79.0.2" "udp_dst_min 9" "udp_dst_max 9"; do
        echo "$c" >"/proc/net/pktgen/$1"
    done
    # pktgen's "start" blocks its writer until "stop".
    echo start >/proc/net/pktgen/pgctrl &
    pktgen_writer=$!
}
pktgen_stop() { echo stop >/proc/net/pktgen/pgctrl; wait "$pktgen_writer"; echo rem_device_all >/proc/net/pktgen/kpktgend_0; }

# attach_start TAP [ATTACH OPTIONS...]: `vhostctl attach` with pktgen's addresses on TAP (created),
# its worker pinned to CPU 0 and its own thread to CPU 1, logging to /tmp/attach-sink.log; sets
# apid and worker_tid. Fails (attach stopped) when it did not come up.
attach_start() {
    tap=$1; shift
    vhostctl attach --tap "$tap" --create --ip 10.79.0.2/24 --mac 52:54:00:be:4c:01 --user 0:0 --stats 0 "$@" >/tmp/attach-sink.log 2>&1 &
    apid=$!
    i=0; while [ $i -lt 300 ] && ! { grep -q "^attached to" /tmp/attach-sink.log && [ "$(cat /sys/class/net/$tap/carrier 2>/dev/null)" = 1 ]; }; do sleep 0.1; i=$((i + 1)); done
    if [ $i -ge 300 ] || ! pin_worker "$apid"; then
        echo "peer: attach did not come up on $tap:"; tail -5 /tmp/attach-sink.log; kill -INT "$apid" 2>/dev/null; wait "$apid"
        return 1
    fi
    host taskset -p -c 1 "$apid" >/dev/null  # attach's own thread (not -a: from 6.4 the worker is a thread of it)
}
# attach_stop: stops attach (SIGINT) and sets attach_calls to its wake-ups per received frame, from
# the counter line it prints when it stops (the whole run's: calls over RX frames).
attach_stop() {
    kill -INT "$apid"; wait "$apid"
    attach_calls=$(awk '/^rx [0-9]+ frames/ { for (i = 1; i <= NF; i++) if ($i == "calls") c = $(i + 1); if ($2 > 0) printf "%.3f", c / $2; else print 0 }' /tmp/attach-sink.log | tail -1)
    [ -n "$attach_calls" ] || attach_calls=0
}
