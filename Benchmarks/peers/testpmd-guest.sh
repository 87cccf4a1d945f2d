#!/bin/sh
# The guest half of Benchmarks/peers/testpmd (run inside Scripts/vm --host-root as root).
# Arguments: TRIALS SECONDS FRAME_SIZE [RUNS] (RUNS: the runs to interleave, as the host's --runs).
PATH=/opt/bin:$PATH
trials=$1 seconds=$2 size=$3 runs=${4:-}
. /opt/bin/guest-lib.sh
results=/tmp/peer-results.txt; : >"$results"

# testpmd's memory: 2 MiB huge pages, mounted where the chrooted testpmd looks.
echo 256 >/proc/sys/vm/nr_hugepages
mount -t hugetlbfs hugetlbfs /host/dev/hugepages || { echo "peer: cannot mount hugetlbfs for testpmd"; exit 1; }

# testpmd_driver_ns PID WORKER: the CPU time of testpmd's threads (its forwarding lcore spins), the
# vhost worker aside where it is one of them (6.4+).
testpmd_driver_ns() {
    sum=0
    for t in /proc/$1/task/[0-9]*; do
        [ "$(basename "$t")" = "$2" ] && continue
        sum=$((sum + $(awk '{print $1}' "$t/schedstat" 2>/dev/null || echo 0)))
    done
    echo $sum
}

# measure_window TAP COUNTER PID: the tap's COUNTER, the worker's and PID's other threads' CPU
# time over $seconds; sets window to "PPS DRIVER_NS WORKER_NS 0" per frame (the columns of
# vhostctl's runs; no calls counted), or to nothing when the counter did not move.
measure_window() {
    a=$(stat "$1" "$2") t0=$(uptime_cs) wa=$(oncpu_ns "$worker_tid") da=$(testpmd_driver_ns "$3" "$worker_tid")
    sleep "$seconds"
    b=$(stat "$1" "$2") t1=$(uptime_cs) wb=$(oncpu_ns "$worker_tid") db=$(testpmd_driver_ns "$3" "$worker_tid")
    window=
    [ "$b" -gt "$a" ] && window="$(( (b - a) * 100 / (t1 - t0) )) $(( (db - da) / (b - a) )) $(( (wb - wa) / (b - a) )) 0"
    return 0
}

testpmd_pid() {
    for p in /proc/[0-9]*; do
        case $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) in *dpdk-testpmd*iface=vhpeer0*) basename "$p"; return ;; esac
    done
}

# testpmd MODE (txonly|rxonly): one run; appends "testpmd-MODE PPS" to the results.
testpmd() {
    mode=$1 tap=vhpeer0 worker_tid=
    # Non-interactive with --stats-period it forwards until SIGINT.
    host dpdk-testpmd -l 0,1 -n 1 --no-pci --file-prefix=peer --huge-dir=/dev/hugepages -m 256 \
        --vdev="net_virtio_user0,path=/dev/vhost-net,iface=$tap,queue_size=512,queues=1" \
        -- --forward-mode="$mode" --txpkts="$size" --nb-cores=1 --stats-period=1 >/tmp/testpmd.log 2>&1 &
    pid=$!
    i=0; while [ $i -lt 600 ] && ! ip link show $tap >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
    ip link set $tap up 2>/dev/null
    # testpmd's pid (chroot and env exec it): the owner of the vhost device.
    tpid=$(testpmd_pid)
    i=0; while [ $i -lt 100 ] && ! pin_worker "$tpid"; do sleep 0.1; i=$((i + 1)); done
    [ $i -lt 100 ] || echo "peer: the vhost worker of testpmd ($tpid) was not found to pin"
    # pktgen stops for good on a device without carrier ("odev not running"): wait until
    # virtio-user has started the port (the tap's carrier comes on when vhost attaches it) and
    # testpmd forwards, else a run can move nothing (seen on 6.1: 0 and 1 frames in a trial).
    i=0; while [ $i -lt 600 ] && ! { [ "$(cat /sys/class/net/$tap/carrier 2>/dev/null)" = 1 ] && grep -q "packet forwarding" /tmp/testpmd.log; }; do
        sleep 0.1; i=$((i + 1))
    done
    [ $i -lt 600 ] || echo "peer: testpmd did not start forwarding on $tap within 60 s"
    [ "$mode" = rxonly ] && pktgen_start $tap
    sleep 1  # warm-up
    if [ "$mode" = txonly ]; then counter=rx_packets; else counter=tx_packets; fi
    measure_window $tap $counter "$tpid"
    [ "$mode" = rxonly ] && pktgen_stop
    kill -INT "$tpid" 2>/dev/null; wait "$pid" 2>/dev/null
    i=0; while [ $i -lt 100 ] && ip link show $tap >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
    if [ -n "$window" ]; then
        # The same columns as vhostctl's runs: pps, driver and worker ns per frame, calls per frame
        # (testpmd polls: none).
        echo "testpmd-$mode $window" >>"$results"
    else
        echo "peer: testpmd $mode moved no frames:"; tail -20 /tmp/testpmd.log
        echo "testpmd-$mode 0" >>"$results"
    fi
}

# net_header_option SPEC: "--net-header H" for a SPEC ending in /H (vhost or tap), else nothing.
net_header_option() { case $1 in */*) echo "--net-header ${1##*/}" ;; esac; }

# vhostctl SCENARIO MODE: one run of vhostctl bench backends; appends "vhostctl-SCENARIO-MODE PPS"
# (the tap's count per second, as for testpmd) and the driver and worker CPU per frame.
vhostctl_run() {
    scenario=$1 name=$1-$2
    # MODE[+N][@US][/vhost|/tap]: +N RX interrupt coalescing of N frames, or adaptive (auto)
    # (--rx-coalesce; without it, 0: off); @US the worker's busy-loop of US µs (--busyloop-timeout;
    # without it, bench's default for the kernel); /H who adds the virtio-net header (--net-header;
    # without it, bench's default: vhost).
    header=$(net_header_option "$2"); set -- "$1" "${2%%/*}"
    spec=${2%%@*} busyloop= coalesce=0
    case $2 in *@*) busyloop="--busyloop-timeout ${2#*@}" ;; esac
    mode=${spec%%+*}
    case $spec in *+*) coalesce=${spec#*+} ;; esac
    if ! vhostctl bench backends --scenario "$scenario" --backend vhost --mode "$mode" --rx-coalesce "$coalesce" $busyloop $header --frame-size "$size" --trials 1 \
            --seconds "$seconds" --warmup 1 --worker-cpu 0 --driver-cpu 1 --json-file /tmp/v.json --force >/tmp/v.log 2>&1; then
        echo "peer: vhostctl bench failed:"; tail -20 /tmp/v.log; echo "vhostctl-$name 0" >>"$results"; return
    fi
    host python3 -c '
import json, sys
x = json.load(open("/tmp/v.json"))["results"][0]; t = x["trials"][0]
far = t["tx_counted_by_tap"] if sys.argv[1] == "tx" else t["rx_tap_passed"]
print("vhostctl-%s %d %.0f %.0f %.3f" % (sys.argv[2], far / t["seconds"], x["driver_ns_per_frame_median"], x.get("worker_ns_per_frame_median", 0),
      x.get("calls_per_frame_median", 0)))' \
        "$scenario" "$name" >>"$results"
}

# attach_sink: `vhostctl attach` (its defaults) as the sink of pktgen's frames, addressed to its MAC
# and IPv4 address (UDP to port 9, which it ignores); appends "vhostctl-rx-attach PPS DRIVER WORKER CALLS"
# counted by the tap as for testpmd, the driver being attach's threads but the worker, and CALLS its
# wake-ups per frame.
# attach_sink SPEC: SPEC is [+auto|+N][@US][/vhost|/tap]: +N attach's --rx-coalesce N (without it,
# its default), @US the worker's busy-loop of US µs (--busyloop-timeout), /H attach's --net-header H;
# the run is named "vhostctl-rx-attachSPEC".
attach_sink() {
    worker_tid= name=vhostctl-rx-attach$1
    options=$(net_header_option "$1"); set -- "${1%%/*}"
    case ${1%%@*} in +*) spec=${1%%@*}; options="$options --rx-coalesce ${spec#+}" ;; esac
    case $1 in *@*) options="$options --busyloop-timeout ${1#*@}" ;; esac
    if ! attach_start vhpeer1 $options; then echo "$name 0" >>"$results"; return; fi
    pktgen_start vhpeer1
    sleep 1  # warm-up
    measure_window vhpeer1 tx_packets "$apid"
    pktgen_stop
    attach_stop
    if [ -n "$window" ]; then
        echo "$name ${window% 0} $attach_calls" >>"$results"
    else
        echo "peer: attach received nothing:"; tail -5 /tmp/attach-sink.log; echo "$name 0" >>"$results"
    fi
}

[ -n "$runs" ] || runs="testpmd:txonly vhostctl:tx:interrupt vhostctl:tx:poll testpmd:rxonly vhostctl:rx:interrupt vhostctl:rx:interrupt+auto vhostctl:rx:interrupt+64 vhostctl:rx:poll attach:sink"
count=$(echo $runs | wc -w)
echo "peer: kernel $(uname -r), $trials interleaved trials of $seconds s, $size-byte frames; worker on CPU 0, driver on CPU 1"
t=0
while [ $t -lt "$trials" ]; do
    # Rotate the order each trial, so that no run always goes first.
    set -- $runs; k=0; while [ $k -lt $((t % count)) ]; do set -- "$@" "$1"; shift; k=$((k + 1)); done
    for run in "$@"; do
        case $run in
            testpmd:*) testpmd "${run#testpmd:}" ;;
            vhostctl:*) r=${run#vhostctl:}; vhostctl_run "${r%%:*}" "${r#*:}" ;;
            attach:sink*) attach_sink "${run#attach:sink}" ;;
        esac
        tail -1 "$results" | sed "s/^/trial $((t + 1)): /"
    done
    t=$((t + 1))
done
host python3 -c '
import statistics, sys
runs = {}
cpu = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault(f[0], []).append(int(f[1]))
    if len(f) >= 5: cpu.setdefault(f[0], []).append((float(f[2]), float(f[3]), float(f[4])))
med = {k: statistics.median(v) for k, v in runs.items()}
print("| run | median pps | min–max | ratio to testpmd | driver ns/frame | worker ns/frame | worker vs testpmd | driver/worker | calls/frame |")
print("|---|---|---|---|---|---|---|---|---|")
# TX runs first, then RX, each in the order the runs were named.
for k in sorted(runs, key=lambda k: (k.split("-")[1] not in ("txonly", "tx"), list(runs).index(k))):
    peer = "testpmd-txonly" if "tx" in k.split("-")[1] else "testpmd-rxonly"
    base = med.get(peer)  # none when the runs named no testpmd run of that direction
    d = w = c = "-"; share = "-"; against = "-"
    if k in cpu:
        dm = statistics.median(c[0] for c in cpu[k]); wm = statistics.median(c[1] for c in cpu[k])
        d, w = "%.0f" % dm, "%.0f" % wm
        spins = k.startswith("testpmd") or k.split("@")[0].endswith("poll")
        share = ("%.2f× (spins)" if spins else "%.2f×") % (dm / wm) if wm > 0 else "-"
        c = "%.3f" % statistics.median(c[2] for c in cpu[k])
        # The worker CPU per frame driven by us, against the same worker driven by testpmd.
        pw = statistics.median(c[1] for c in cpu.get(peer, [])) if cpu.get(peer) else 0
        if pw > 0 and not k.startswith("testpmd"): against = "%.2f×" % (wm / pw)
    print("| %s | %d | %d–%d | %s | %s | %s | %s | %s | %s |" % (k, med[k], min(runs[k]), max(runs[k]), "%.2f×" % (med[k] / base) if base else "-", d, w, against, share, c))' "$results"
