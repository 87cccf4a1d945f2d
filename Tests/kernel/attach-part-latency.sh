# Part of the attach tier (sourced by attach-tests.sh or attach-only.sh, with attach-lib.sh's helpers).
# ---- attach --low-latency: the driver busy-polls its rings, the worker busy-polls (busyloop) -----
# latency_cpu_ticks PID: user+system clock ticks PID used during one second.
latency_cpu_ticks() {
    before=$(awk '{print $14 + $15}' /proc/$1/stat); sleep 1; after=$(awk '{print $14 + $15}' /proc/$1/stat)
    echo $((after - before))
}
# latency_attach NAME SUBNET OPTIONS...: an attach on a new tap NAME at SUBNET.2, the host at .1;
# leaves its pid in $latency_pid and its output in /tmp/NAME.log (stdout) and /tmp/NAME.trace (stderr).
latency_attach() {
    name=$1; subnet=$2; shift 2
    : >/tmp/$name.log
    vhostctl attach --tap $name --create --ip $subnet.2/24 --stats 0 --trace "$@" >/tmp/$name.log 2>/tmp/$name.trace &
    latency_pid=$!
    wait_for_tap $name && ip addr add $subnet.1/24 dev $name && ip link set $name up
    wait_for_attached /tmp/$name.log
}
latency_attach vhll0 10.0.31 --low-latency
ll_pinged=no; ping -A -c 3 -W 3 10.0.31.2 >/dev/null 2>&1 && ll_pinged=yes
ll_ticks=$(latency_cpu_ticks $latency_pid)
ll_busyloops=$(grep -c '^trace: VHOST_SET_VRING_BUSYLOOP_TIMEOUT(.*50.*) = 0' /tmp/vhll0.trace)
# The spinners apart: this (main) thread on the first CPU, the worker on the second (the VM has two).
ll_driver_cpus=$(status_field $latency_pid Cpus_allowed_list)
ll_worker_tid=$(sed -n 's/^worker of queue pair 0: .* tid \([0-9]*\) pinned to CPU 1$/\1/p' /tmp/vhll0.log)
ll_worker_cpus=$( [ -n "$ll_worker_tid" ] && status_field "$ll_worker_tid" Cpus_allowed_list)
kill -TERM $latency_pid; wait_for_exit $latency_pid
# The same endpoint without it: the driver sleeps in epoll, and no busyloop is set.
latency_attach vhll1 10.0.32
ll_idle_ticks=$(latency_cpu_ticks $latency_pid)
ll_plain_busyloops=$(grep -c 'BUSYLOOP_TIMEOUT' /tmp/vhll1.trace)
kill -TERM $latency_pid; wait_for_exit $latency_pid
# Clock ticks are 1/100 s: a driver spinning for a second uses about 100 (less under emulation,
# where the worker and the host side share the two CPUs), one asleep in epoll next to none.
if [ "$ll_pinged" = yes ] && grep -q "^attached to vhll0 .* poll mode, vhost busyloop 50 µs" /tmp/vhll0.log && [ "$ll_busyloops" -ge 2 ] \
    && [ "$ll_ticks" -ge 30 ] && [ "$ll_idle_ticks" -le 10 ] && [ "$ll_plain_busyloops" = 0 ] && [ "$ll_driver_cpus" = 0 ] && [ "$ll_worker_cpus" = 1 ]; then
    pass "attach --low-latency: answers ping; the kernel took VHOST_SET_VRING_BUSYLOOP_TIMEOUT 50 on both vrings; the idle driver spins ($ll_ticks ticks in 1 s, $ll_idle_ticks without --low-latency); driver on CPU $ll_driver_cpus, worker on CPU $ll_worker_cpus"
else
    fail "attach --low-latency" "ping $ll_pinged, busyloop ioctls $ll_busyloops (without: $ll_plain_busyloops), CPU ticks in 1 s idle $ll_ticks (without: $ll_idle_ticks), driver CPUs '$ll_driver_cpus', worker '$ll_worker_tid' CPUs '$ll_worker_cpus'; $(grep '^attached to\|^worker\|^low latency' /tmp/vhll0.log | tr '\n' ' ')"
fi

# ---- attach --rx-coalesce: a sink's stream wakes attach seldom; what gets an answer is not held --
# coalesce_sink NAME SUBNET OPTIONS...: attach on a new tap NAME takes 5,000 64-byte frames from
# pktgen, 200 µs apart (UDP to port 9 of its address, which it ignores): a stream slow enough that
# each frame finds attach asleep (a flood keeps it busy, and it wakes seldom either way); sets
# sink_frames (what attach received,
# from its counter line at stop), sink_taken (what the worker took off the tap: its tx_packets)
# and sink_calls (attach's wake-ups by the call eventfd).
coalesce_sink() {
    name=$1; subnet=$2; shift 2
    latency_attach $name $subnet --mac 52:54:00:c0:a1:35 "$@"
    taken_before=$(cat /sys/class/net/$name/statistics/tx_packets)
    echo rem_device_all >/proc/net/pktgen/kpktgend_0
    echo "add_device $name" >/proc/net/pktgen/kpktgend_0
    for c in "count 5000" "clone_skb 0" "delay 200000" "pkt_size 64" "dst_mac 52:54:00:c0:a1:35" "dst_min $subnet.2" "dst_max $subnet.2" \
             "src_min $subnet.1" "src_max $subnet.1" "udp_dst_min 9" "udp_dst_max 9"; do
        echo "$c" >/proc/net/pktgen/$name
    done
    echo start >/proc/net/pktgen/pgctrl  # returns when pktgen has sent its count
    echo rem_device_all >/proc/net/pktgen/kpktgend_0
    sleep 0.3  # at most the coalescing delay, and the worker's last batch
    sink_taken=$(( $(cat /sys/class/net/$name/statistics/tx_packets) - taken_before ))
    kill -TERM $latency_pid; wait_for_exit $latency_pid
    sink_frames=$(sed -n 's/^rx \([0-9]*\) frames.*/\1/p' /tmp/$name.log | tail -1)
    sink_calls=$(sed -n 's/^rx .* calls \([0-9]*\) .*/\1/p' /tmp/$name.log | tail -1)
}
coalesce_sink vhco0 10.0.33
auto_frames=$sink_frames auto_taken=$sink_taken auto_calls=$sink_calls
auto_line=$(grep '^attached to' /tmp/vhco0.log | sed 's/.*\(rx coalescing[^,]*\).*/\1/')
coalesce_sink vhco1 10.0.34 --rx-coalesce 0
off_frames=$sink_frames off_taken=$sink_taken off_calls=$sink_calls
# Answers are not held: with 32 frames or a whole second of coalescing, each ping is answered at
# once, since within a second of a reply every frame wakes attach (the host's IPv6 solicitations
# and reports between the pings too).
latency_attach vhco2 10.0.35 --rx-coalesce 32 --rx-coalesce-delay 1000
# The first exchange may wait (attach slept for 32 frames before it had answered anything: the ARP
# request waits the delay); every request after a reply must not: held, it would wait the second.
ping -c 1 -W 3 10.0.35.2 >/dev/null 2>&1
ping -c 4 -i 0.3 -W 3 10.0.35.2 >/tmp/vhco2.ping 2>&1
ping_slowest=$(sed -n 's/.*time=\([0-9]*\).*/\1/p' /tmp/vhco2.ping | sort -n | tail -1)
ping_times=$(sed -n 's/.*time=\([0-9.]*\).*/\1/p' /tmp/vhco2.ping | tr '\n' ' ')
ping_replies=$(grep -c 'time=' /tmp/vhco2.ping)
kill -TERM $latency_pid; wait_for_exit $latency_pid
# Without coalescing about every other frame wakes attach (a signal of the call eventfd); with it
# the threshold follows what a delay brings (5 frames here), and the delay ends every other sleep,
# which no signal does: 6.6 and 7.7 times fewer signals on 7.2 and 6.1. Both take every frame (the
# tap's count is the worker's, the rx count attach's).
# (attach's count also holds what came before pktgen: an IPv6 router solicitation, say.)
if [ "${auto_taken:-0}" -ge 5000 ] && [ "${auto_frames:-0}" -ge "$auto_taken" ] && [ "${off_taken:-0}" -ge 5000 ] && [ "${off_frames:-0}" -ge "$off_taken" ] \
    && [ -n "$auto_calls" ] && [ -n "$off_calls" ] && [ "$off_calls" -ge 1000 ] && [ $((auto_calls * 4)) -le "$off_calls" ] \
    && [ "$auto_line" = "rx coalescing adaptive up to 128 frames or 1 ms" ] && [ "$ping_replies" = 4 ] && [ "${ping_slowest:-9999}" -lt 100 ]; then
    pass "attach --rx-coalesce: 5,000 frames from pktgen 200 µs apart woke attach $auto_calls times with its default ($auto_line) against $off_calls with --rx-coalesce 0, every frame taken (tap $auto_taken/$off_taken, attach $auto_frames/$off_frames); with 32 frames or 1 s of coalescing, 4 pings after a first exchange answered at once (ms: $ping_times)"
else
    fail "attach --rx-coalesce" "auto: $auto_frames frames (tap $auto_taken) $auto_calls calls ('$auto_line'); off: $off_frames frames (tap $off_taken) $off_calls calls; ping: $ping_replies replies, ms: $ping_times"
fi

# ---- attach --net-header vhost: the worker adds the virtio-net header, the tap carries none ----
# The tap's flags are the kernel's (tun_flags: IFF_VNET_HDR 0x4000 absent); pings and UDP echo
# must still be answered, with the header vhost writes (zeroes) in front of every frame. The
# refusal with an offload feature is counted apart: it is not the feature working.
latency_attach vhnh0 10.0.36 --net-header vhost --udp-echo 7
nh_flags=$(cat /sys/class/net/vhnh0/tun_flags 2>/dev/null)
nh_pinged=no; ping -c 3 -i 0.2 -W 3 10.0.36.2 >/dev/null 2>&1 && nh_pinged=yes
nh_echo=$(host bash -c 'exec 3<>/dev/udp/10.0.36.2/7; printf "vhost-hdr" >&3; IFS= read -r -t 5 -N 9 r <&3; printf "%s" "$r"' 2>&1)
kill -TERM $latency_pid; wait_for_exit $latency_pid
if [ -n "$nh_flags" ] && [ $((nh_flags & 0x4000)) = 0 ] && [ "$nh_pinged" = yes ] && [ "$nh_echo" = vhost-hdr ] \
    && grep -q 'TUNSETIFF(name: vhnh0, flags: 0x9002)' /tmp/vhnh0.trace && ! grep -q TUNSETVNETHDRSZ /tmp/vhnh0.trace; then
    pass "attach --net-header vhost: the tap without IFF_VNET_HDR (tun_flags $nh_flags), no TUNSETVNETHDRSZ; ping and UDP echo answered"
else
    fail "attach --net-header vhost" "tun_flags '$nh_flags', ping $nh_pinged, echo '$nh_echo'; $(grep -o 'TUNSETIFF([^)]*)' /tmp/vhnh0.trace | head -1)"
fi
# The same on an L3 tun (IFF_TUN): vhost's header before raw IP, the tun without IFF_VNET_HDR
# (tun_flags IFF_TUN 0x1 and IFF_NO_PI 0x1000 only).
latency_attach vhnh2 10.0.37 --tun --net-header vhost --udp-echo 7
nt_flags=$(cat /sys/class/net/vhnh2/tun_flags 2>/dev/null)
nt_pinged=no; ping -c 3 -i 0.2 -W 3 10.0.37.2 >/dev/null 2>&1 && nt_pinged=yes
nt_echo=$(host bash -c 'exec 3<>/dev/udp/10.0.37.2/7; printf "tun-vhdr" >&3; IFS= read -r -t 5 -N 8 r <&3; printf "%s" "$r"' 2>&1)
kill -TERM $latency_pid; wait_for_exit $latency_pid
if [ "$nt_flags" = 0x1001 ] && [ "$nt_pinged" = yes ] && [ "$nt_echo" = tun-vhdr ] && ! grep -q TUNSETVNETHDRSZ /tmp/vhnh2.trace; then
    pass "attach --tun --net-header vhost: the L3 tun without IFF_VNET_HDR (tun_flags $nt_flags), no TUNSETVNETHDRSZ; ping and UDP echo answered"
else
    fail "attach --tun --net-header vhost" "tun_flags '$nt_flags', ping $nt_pinged, echo '$nt_echo'; $(grep -o 'TUNSETIFF([^)]*)' /tmp/vhnh2.trace | head -1); $(tail -n 2 /tmp/vhnh2.log | tr '\n' ' ')"
fi
expect_error "attach --net-header vhost refuses an offload feature, naming it" 64 "--net-header vhost: offloads (.*GUEST_CSUM" \
    vhostctl attach --tap vhnh1 --create --net-header vhost --features VERSION_1 EVENT_IDX GUEST_CSUM
