#!/bin/sh
# Part of the attach tier (sourced by attach-tests.sh or attach-only.sh, with attach-lib.sh's
# helpers): RSS steering (--rss), the tap's send buffer (--sndbuf), the worker CPUs
# (--worker-cpu LIST) and the emulated IOMMU (--iommu), each checked on the far side: the queue
# each frame reached in the capture, the tap's own send buffer, /proc's CPU lists, ping and the
# IOTLB messages with their addresses.

# steering_flows PORT: 256 UDP flows from the host (source ports 40000-40255) to 10.0.0.2:PORT,
# 4 datagrams each; each is waited for as --udp-echo sends it back, so every frame has been through
# the endpoint when this returns. Prints "echoed N".
steering_flows() {
    host python3 -c '
import socket, sys
port = int(sys.argv[1]); echoed = 0
for flow in range(256):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.0.0.1", 40000 + flow)); s.settimeout(2)
    for n in range(4):
        s.sendto(b"flow %d datagram %d" % (flow, n), ("10.0.0.2", port))
        try:
            s.recvfrom(2048); echoed += 1
        except socket.timeout:
            pass
    s.close()
print("echoed", echoed)' "$1"
}

# steering_spread PCAPNG PORT QUEUES: from the capture (one interface per queue pair), the frames
# the host sent to PORT per queue, and how many reached another queue than the steering program's
# hash predicts (docs/rss.md: the same hash, in Python). Prints "counts A,B,C,D total N mismatches M".
steering_spread() {
    host python3 -c '
import struct, sys
path, port, queues = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
M = 0x9E3779B1
def steering_hash(f):
    def load(offset, n):
        if offset < 0 or offset + n > len(f): raise IndexError
        return int.from_bytes(f[offset:offset + n], "big")
    h = 0
    def mix(word):
        nonlocal h
        h = ((h ^ word) * M) & 0xffffffff
    try:
        kind = load(12, 2)
        if kind == 0x0800:
            ihl = (load(14, 1) & 0x0f) * 4
            mix(load(26, 4)); mix(load(30, 4))
            if load(20, 2) & 0x3fff == 0 and load(23, 1) in (6, 17):
                mix(load(14 + ihl, 4))
        elif kind == 0x86dd:
            for word in range(8): mix(load(22 + 4 * word, 4))
            if load(20, 1) in (6, 17): mix(load(54, 4))
        else:
            return 0
    except IndexError:
        return 0
    return (h ^ (h >> 16)) & 0xffff
data = open(path, "rb").read()
counts = [0] * queues; mismatches = 0; i = 0
while i + 12 <= len(data):
    kind, length = struct.unpack_from("<II", data, i)
    if length < 12: break
    if kind == 6:  # an enhanced packet block: interface (the queue pair), lengths, the frame
        queue, _, _, captured = struct.unpack_from("<IIII", data, i + 8)
        f = data[i + 28:i + 28 + captured]
        if len(f) >= 38 and f[12:14] == b"\x08\x00" and f[23] == 17 and f[30:34] == bytes([10, 0, 0, 2]) \
                and int.from_bytes(f[14 + (f[14] & 15) * 4 + 2:14 + (f[14] & 15) * 4 + 4], "big") == port:
            counts[queue] += 1
            if steering_hash(f) % queues != queue: mismatches += 1
    i += length
print("counts %s total %d mismatches %d" % (",".join(map(str, counts)), sum(counts), mismatches))' "$@"
}

# steering_run NAME OPTIONS...: attach on a fresh 4-queue tap vhrss0 with OPTIONS, the 256 flows,
# then stopped; the capture at /tmp/NAME.pcapng, the log at /tmp/NAME.log, the flows' result in
# /tmp/NAME.flows.
steering_run() {
    name=$1; shift
    rm -f /tmp/$name.pcapng; : >/tmp/$name.log
    vhostctl attach --tap vhrss0 --create --queue-pairs 4 --ip 10.0.0.2/24 --udp-echo 7 --pcap /tmp/$name.pcapng --stats 0 "$@" >/tmp/$name.log 2>&1 &
    steering_pid=$!
    wait_for_attached /tmp/$name.log
    ip addr add 10.0.0.1/24 dev vhrss0 2>/dev/null
    ip link set vhrss0 up
    steering_flows 7 >/tmp/$name.flows 2>&1
    kill -INT $steering_pid; wait_for_exit $steering_pid
}

# ---- --rss: 256 flows over 4 queues, each queue 10%-40%, each flow on the predicted queue -------
steering_run rss --rss
spread=$(steering_spread /tmp/rss.pcapng 7 4 2>&1)
set -- $(echo "$spread" | tr ',' ' ')
# "counts A B C D total N mismatches M" → $2..$5, $7, $9
if [ "$1" = counts ] && [ "$7" -ge 1000 ] && [ "$9" = 0 ] && grep -q "^rss: a steering program" /tmp/rss.log; then
    ok=1; for c in $2 $3 $4 $5; do [ $((c * 100)) -ge $(($7 * 10)) ] && [ $((c * 100)) -le $(($7 * 40)) ] || ok=0; done
    if [ $ok = 1 ]; then pass "--rss: 256 UDP flows over 4 queues: $spread (each queue 10%-40%, every frame on the queue the program's hash predicts; $(cat /tmp/rss.flows))"
    else fail "--rss spread" "a queue outside 10%-40%: $spread"; fi
else
    fail "--rss" "$spread; $(cat /tmp/rss.flows); $(tail -5 /tmp/rss.log | tr '\n' ' ')"
fi
# Without --rss tun spreads flows by its own hash: the prediction fails for some, so the check
# above holds only because the program is attached.
steering_run norss
spread=$(steering_spread /tmp/norss.pcapng 7 4 2>&1)
set -- $(echo "$spread" | tr ',' ' ')
if [ "$1" = counts ] && [ "$7" -ge 1000 ] && [ "$9" -gt 0 ]; then
    pass "without --rss the hash does not predict tun's own queue choice: $spread"
else
    fail "without --rss" "$spread; $(cat /tmp/norss.flows)"
fi
rm -f /tmp/rss.pcapng /tmp/norss.pcapng

# ---- --sndbuf: the tap's send buffer, as the kernel keeps it -----------------------------------
# No far side shows a tap queue's sndbuf: a queue the test attached itself would start at INT_MAX
# (tun.c tun_chr_open), not at the tap's. So the kernel's own answers are checked: --trace shows
# TUNSETSNDBUF accepted on each queue, and TUNGETSNDBUF on each reading the value back (attach
# prints what it read); without --sndbuf the default stays INT_MAX (vhost-net's batched TX).
for want in 1048576 2147483647; do
    : >/tmp/sndbuf.log
    if [ $want = 2147483647 ]; then opt=""; else opt="--sndbuf $want"; fi
    vhostctl attach --tap vhsnd0 --create --queue-pairs 2 --ip 10.0.0.2/24 --stats 0 --trace $opt >/tmp/sndbuf.log 2>&1 &
    pid=$!
    wait_for_attached /tmp/sndbuf.log
    ip addr add 10.0.0.1/24 dev vhsnd0; ip link set vhsnd0 up
    if ping -A -c 1 -W 3 10.0.0.2 >/dev/null 2>&1; then pinged=1; else pinged=0; fi
    kill -INT $pid; wait_for_exit $pid
    # The last TUNSETSNDBUF on each of the two queues (in order) must be $want, accepted.
    last=$(grep -o "TUNSETSNDBUF([0-9]*) = [0-9-]*" /tmp/sndbuf.log | tail -2 | tr '\n' ' ')
    if [ -n "$opt" ]; then read_back=$(grep -c "^sndbuf: $want bytes set on 2 queue(s); TUNGETSNDBUF reads $want\( \|$\)" /tmp/sndbuf.log); else read_back=1; fi
    if [ $pinged = 1 ] && [ "$last" = "TUNSETSNDBUF($want) = 0 TUNSETSNDBUF($want) = 0 " ] && [ "$read_back" = 1 ]; then
        pass "${opt:-no --sndbuf}: the last TUNSETSNDBUF on both queues is $want, accepted$([ -n "$opt" ] && echo ", and TUNGETSNDBUF reads it back"); ping answered"
    else
        fail "${opt:-no --sndbuf}" "ping $pinged; last: $last; $(grep -i sndbuf /tmp/sndbuf.log | tail -4 | tr '\n' ' ')"
    fi
done

# ---- --rx-queue-size / --tx-queue-size: the rings sized apart ----------------------------------
: >/tmp/rings.log
vhostctl attach --tap vhring0 --create --ip 10.0.0.2/24 --udp-echo 7 --stats 0 --trace --rx-queue-size 1024 --tx-queue-size 256 >/tmp/rings.log 2>&1 &
pid=$!
wait_for_attached /tmp/rings.log
ip addr add 10.0.0.1/24 dev vhring0; ip link set vhring0 up
if ping -A -c 3 -W 3 10.0.0.2 >/tmp/rings-ping.txt 2>&1; then pinged=1; else pinged=0; fi
# 300 datagrams echoed: more than the TX ring holds, so its 256 heads are reused.
echoed=$(host python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); n = 0
for i in range(300):
    s.sendto(b"ring %d" % i, ("10.0.0.2", 7))
    try:
        s.recvfrom(2048); n += 1
    except socket.timeout:
        pass
print(n)' 2>&1)
kill -INT $pid; wait_for_exit $pid
nums=$(grep -o "VHOST_SET_VRING_NUM(index: [01], num: [0-9]*) = 0" /tmp/rings.log | sort -u | tr '\n' ' ')
if [ $pinged = 1 ] && [ "$echoed" = 300 ] && [ "$nums" = "VHOST_SET_VRING_NUM(index: 0, num: 1024) = 0 VHOST_SET_VRING_NUM(index: 1, num: 256) = 0 " ]; then
    pass "--rx-queue-size 1024 --tx-queue-size 256: the kernel took $nums; ping answered, 300 of 300 UDP datagrams echoed"
else
    fail "--rx-queue-size 1024 --tx-queue-size 256" "ping $pinged, echoed $echoed; nums: $nums; $(grep -i 'rings\|error' /tmp/rings.log | head -3 | tr '\n' ' ')"
fi

# ---- --worker-cpu LIST: each queue pair's worker on its own CPU ---------------------------------
if [ "$(grep -c ^processor /proc/cpuinfo)" -ge 2 ]; then
    : >/tmp/workers.log
    vhostctl attach --tap vhcpu0 --create --queue-pairs 2 --ip 10.0.0.2/24 --stats 0 --worker-cpu 0,1 >/tmp/workers.log 2>&1 &
    pid=$!
    wait_for_attached /tmp/workers.log
    # "worker of queue pair N: vhost-P tid T pinned to CPU C": /proc/T/status must say C alone.
    seen=""; bad=""
    while read -r _ _ _ _ pair _ _ tid _ _ _ cpu; do
        pair=${pair%:}
        allowed=$(status_field "$tid" Cpus_allowed_list)
        [ "$allowed" = "$cpu" ] && [ "$cpu" = "$pair" ] || bad="$bad pair $pair tid $tid allowed '$allowed' (want $pair)"
        seen="$seen $pair:$tid:$allowed"
    done <<EOF
$(grep "^worker of queue pair" /tmp/workers.log)
EOF
    # Every vhost worker of this attach is one of those (task mode: threads of attach; 6.1: kthreads).
    workers=$(for t in /proc/$pid/task/* /proc/[0-9]*; do [ "$(cat $t/comm 2>/dev/null)" = "vhost-$pid" ] && basename $t; done | sort -u | wc -l)
    if [ -z "$bad" ] && [ "$(echo $seen | wc -w)" = 2 ] && [ "$workers" = 2 ]; then
        pass "--worker-cpu 0,1: queue pair 0's worker runs on CPU 0 only, pair 1's on CPU 1 (/proc/TID/status:$seen)"
    else
        fail "--worker-cpu 0,1" "seen:$seen;$bad; $workers workers; $(grep -i worker /tmp/workers.log | tr '\n' ' ')"
    fi
    kill -INT $pid; wait_for_exit $pid
fi
expect_error "--worker-cpu with 3 CPUs for 2 queue pairs is refused" 64 "3 CPUs for 2 queue pair" vhostctl attach --tap vhx0 --create --queue-pairs 2 --worker-cpu 0-2
expect_error "--worker-cpu with an offline CPU is refused" 64 "CPU 4000 is not online" vhostctl attach --tap vhx0 --create --worker-cpu 4000

# ---- --iommu: ping through the emulated IOMMU, IOTLB misses answered with IOVA != GPA -----------
: >/tmp/iommu.log
vhostctl attach --tap vhmmu0 --create --ip 10.0.0.2/24 --stats 0 --iommu --trace >/tmp/iommu.log 2>&1 &
pid=$!
wait_for_attached /tmp/iommu.log
ip addr add 10.0.0.1/24 dev vhmmu0; ip link set vhmmu0 up
if ping -A -c 3 -W 3 10.0.0.2 >/tmp/iommu-ping.txt 2>&1; then pinged=1; else pinged=0; fi
kill -INT $pid; wait_for_exit $pid
# The memory table's guest-physical ranges, and the IOVAs of the misses and updates.
iommu=$(host python3 -c '
import re, sys
text = open("/tmp/iommu.log").read()
gpas = [(int(g, 16), int(s, 16)) for g, s in re.findall(r"gpa[:=] ?(0x[0-9a-f]+),? (?:size|memory_size)[:=] ?(0x[0-9a-f]+)", text)]
miss = [int(x, 16) for x in re.findall(r"IOTLB miss\(iova: (0x[0-9a-f]+)", text)]
update = [int(x, 16) for x in re.findall(r"IOTLB update\(iova: (0x[0-9a-f]+)", text)]
inside = [i for i in miss + update if any(g <= i < g + s for g, s in gpas)]
print("regions %d misses %d updates %d iova-in-gpa %d" % (len(gpas), len(miss), len(update), len(inside)))' 2>&1)
set -- $iommu
if [ $pinged = 1 ] && [ "$1" = regions ] && [ "$2" -ge 1 ] && [ "$4" -ge 1 ] && [ "$6" -ge 1 ] && [ "$8" = 0 ]; then
    pass "--iommu: ping answered ($(grep -o '[0-9]* packets received' /tmp/iommu-ping.txt)); --trace: $iommu (no IOVA inside the memory table's GPAs)"
else
    fail "--iommu" "ping $pinged; $iommu; $(grep -m3 -i 'iotlb\|MEM_TABLE' /tmp/iommu.log | tr '\n' ' ' | head -c 600)"
fi
