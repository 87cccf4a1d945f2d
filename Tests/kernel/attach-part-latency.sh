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
