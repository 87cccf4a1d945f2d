#!/bin/sh
# attach tier part: passed descriptors (--tap-fd, --vhost-fd) and network namespaces (--netns).
# Sourced by attach-tests.sh or attach-only.sh (pass/fail and the helpers of attach-lib.sh).

# fds_helper TAP VHOST ARGS...: the privileged helper a VMM's manager would be, as the host's python3:
# opens TAP (a tap name: TUNSETIFF IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, brought up with 10.78.0.1/24; or
# a path, opened as it is) as fd 3 and VHOST (a path; owned:PATH is set up with VHOST_SET_OWNER
# first) as fd 4, then becomes nobody with no
# capabilities and executes vhostctl ARGS (the same process: $! is attach's pid).
# `host` chroots to /host, where the guest's /tmp is bound: vhostctl is run from there.
cp "$(command -v vhostctl)" /tmp/fds-vhostctl
cat >/tmp/fds-helper.py <<'EOF'
import fcntl, os, struct, subprocess, sys
tap, vhost, args = sys.argv[1], sys.argv[2], sys.argv[3:]
if tap.startswith("/"):
    t = os.open(tap, os.O_RDWR)
else:
    t = os.open("/dev/net/tun", os.O_RDWR)
    # TUNSETIFF = _IOW('T', 202, int); IFF_TAP 0x2 | IFF_NO_PI 0x1000 | IFF_VNET_HDR 0x4000
    fcntl.ioctl(t, 0x400454ca, struct.pack("16sH", tap.encode(), 0x2 | 0x1000 | 0x4000))
    subprocess.run(["ip", "addr", "add", "10.78.0.1/24", "dev", tap], check=True)
    subprocess.run(["ip", "link", "set", "dev", tap, "up"], check=True)
owned = vhost.startswith("owned:")
vhost = vhost[len("owned:"):] if owned else vhost
v = os.open(vhost, os.O_RDWR if vhost.startswith("/dev/") else os.O_RDONLY)
if owned: fcntl.ioctl(v, 0xAF01)   # VHOST_SET_OWNER = _IO(0xAF, 0x01): the device now has an owner
# Out of the way first (t or v may be 3 or 4 already), then to 3 and 4, inheritable across exec.
t, v = fcntl.fcntl(t, fcntl.F_DUPFD, 10), fcntl.fcntl(v, fcntl.F_DUPFD, 10)
os.dup2(t, 3); os.dup2(v, 4); os.close(t); os.close(v)
os.set_inheritable(3, True); os.set_inheritable(4, True)
os.setgroups([]); os.setgid(65534); os.setuid(65534)   # setuid from root clears every capability
os.execv("/tmp/fds-vhostctl", ["vhostctl"] + args)
EOF

# ---- --tap-fd/--vhost-fd as nobody without capabilities: ping answers ----------------------------
: >/tmp/fds.log
host python3 /tmp/fds-helper.py vhfd0 /dev/vhost-net attach --tap-fd 3 --vhost-fd 4 --ip 10.78.0.2/24 --stats 0 >/tmp/fds.log 2>&1 &
fds_pid=$!
wait_for_attached /tmp/fds.log
fds_uid=$(status_field $fds_pid Uid); fds_cap=$(status_field $fds_pid CapEff)
if [ "$fds_uid" = "65534 65534 65534 65534" ] && [ "$fds_cap" = 0000000000000000 ] && grep -q "^attached to vhfd0" /tmp/fds.log; then
    pass "attach --tap-fd 3 --vhost-fd 4 started as nobody: uid $fds_uid, CapEff $fds_cap, attached to vhfd0 (name from TUNGETIFF)"
else
    fail "attach --tap-fd as nobody" "uid '$fds_uid' CapEff '$fds_cap': $(head -c 400 /tmp/fds.log)"
fi
rx_before=$(cat /sys/class/net/vhfd0/statistics/rx_packets 2>/dev/null || echo 0)
if ping -A -c 3 -W 3 10.78.0.2 >/tmp/fds-ping.txt 2>&1; then
    rx_after=$(cat /sys/class/net/vhfd0/statistics/rx_packets)
    pass "ping through the passed descriptors answers ($(grep -o '[0-9]* packets received' /tmp/fds-ping.txt); the tap received $((rx_after - rx_before)) frames)"
else
    fail "ping through the passed descriptors" "$(cat /tmp/fds-ping.txt) | $(head -c 400 /tmp/fds.log)"
fi
kill -TERM $fds_pid 2>/dev/null; wait_for_exit $fds_pid
if grep -q "stopped on signal 15" /tmp/fds.log && ! ip link show vhfd0 >/dev/null 2>&1; then
    pass "attach --tap-fd stops on SIGTERM; the tap went with the last descriptor"
else
    fail "attach --tap-fd stop" "$(tail -c 300 /tmp/fds.log)"
fi

# ---- a multiqueue tap: two queues (3, 5) and two vhost-net devices (4, 6), as nobody ---------------
cat >/tmp/fds-helper-mq.py <<'EOF'
import fcntl, os, struct, subprocess
fds = []
for _ in range(2):   # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE: each TUNSETIFF adds a queue
    t = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(t, 0x400454ca, struct.pack("16sH", b"vhfdmq0", 0x2 | 0x1000 | 0x4000 | 0x100))
    fds += [t, os.open("/dev/vhost-net", os.O_RDWR)]
subprocess.run(["ip", "addr", "add", "10.79.0.1/24", "dev", "vhfdmq0"], check=True)
subprocess.run(["ip", "link", "set", "dev", "vhfdmq0", "up"], check=True)
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
for target, fd in zip((3, 4, 5, 6), high):
    os.dup2(fd, target); os.set_inheritable(target, True)
os.setgroups([]); os.setgid(65534); os.setuid(65534)
os.execv("/tmp/fds-vhostctl", ["vhostctl", "attach", "--tap-fd", "3", "--vhost-fd", "4", "--tap-fd", "5", "--vhost-fd", "6",
                               "--queue-pairs", "2", "--ip", "10.79.0.2/24", "--stats", "0"])
EOF
: >/tmp/fds-mq.log
host python3 /tmp/fds-helper-mq.py >/tmp/fds-mq.log 2>&1 &
mq_pid=$!
wait_for_attached /tmp/fds-mq.log
if grep -q "^attached to vhfdmq0 .* 2 queue pair(s)" /tmp/fds-mq.log && [ "$(status_field $mq_pid CapEff)" = 0000000000000000 ] && ping -A -c 3 -W 3 10.79.0.2 >/tmp/fds-mq-ping.txt 2>&1; then
    pass "attach on two passed queues of a multiqueue tap as nobody: 2 queue pairs, ping answers ($(grep -o '[0-9]* packets received' /tmp/fds-mq-ping.txt))"
else
    fail "attach on two passed queues" "$(cat /tmp/fds-mq-ping.txt 2>/dev/null | tail -2) | $(head -c 400 /tmp/fds-mq.log)"
fi
kill -TERM $mq_pid 2>/dev/null; wait_for_exit $mq_pid

# ---- wrong descriptors: refused with one line naming the option, the fd and what it is -----------
echo regular >/tmp/fds-regular
expect_error "--vhost-fd on a regular file is refused" 64 "vhost-fd 4 is a regular file (/tmp/fds-regular), not the vhost-net device" \
    host python3 /tmp/fds-helper.py vhfd1 /tmp/fds-regular attach --tap-fd 3 --vhost-fd 4 --ip 10.78.0.2/24
expect_error "--vhost-fd of a device that has an owner is refused" 64 "vhost-fd 4 is a vhost-net device already in use" \
    host python3 /tmp/fds-helper.py vhfd3 owned:/dev/vhost-net attach --tap-fd 3 --vhost-fd 4 --ip 10.78.0.2/24
expect_error "--tap-fd on /dev/null is refused" 64 "tap-fd 3 is the character device 1:3 (/dev/null), not a tun/tap queue" \
    host python3 /tmp/fds-helper.py /dev/null /dev/vhost-net attach --tap-fd 3 --vhost-fd 4 --ip 10.78.0.2/24
expect_error "--tap-fd on /dev/net/tun without TUNSETIFF is refused" 64 "tap-fd 3 is /dev/net/tun attached to no interface" \
    host python3 /tmp/fds-helper.py /dev/net/tun /dev/vhost-net attach --tap-fd 3 --vhost-fd 4 --ip 10.78.0.2/24
expect_error "--tap-fd of a tap with --tun is refused" 64 "tap-fd 3 is a tap (IFF_TAP) vhfd2, but --tun asks for IFF_TUN" \
    host python3 /tmp/fds-helper.py vhfd2 /dev/vhost-net attach --tap-fd 3 --vhost-fd 4 --tun --ip 10.78.0.2/24
expect_error "--tap-fd without an inherited descriptor is refused" 64 "tap-fd 7 is not open" vhostctl attach --tap-fd 7 --ip 10.78.0.2/24

# ---- --netns: the tap lives in the namespace, ping from inside it answers --------------------------
host ip netns add vhns1
# The host's ip keeps /run/netns in /host/run; the guest's vhostctl reads the guest's /run/netns.
mkdir -p /run/netns && touch /run/netns/vhns1 && mount --bind /host/run/netns/vhns1 /run/netns/vhns1
: >/tmp/fds-ns.log
vhostctl attach --netns vhns1 --tap vhns0 --create --ip 10.77.0.2/24 --stats 0 >/tmp/fds-ns.log 2>&1 &
ns_pid=$!
wait_for_attached /tmp/fds-ns.log
host ip netns exec vhns1 ip addr add 10.77.0.1/24 dev vhns0
host ip netns exec vhns1 ip link set dev vhns0 up
# The host has no ping and the guest's busybox cannot enter a namespace: the host's python3 pings
# (three ICMP echo requests on a raw socket; the replies with their id and sequence counted).
cat >/tmp/fds-ping.py <<'PING'
import os, socket, struct, sys, time
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); return ~(s + (s >> 16)) & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); sock.settimeout(3)
ident, got = os.getpid() & 0xffff, 0
for seq in range(1, 4):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"vhostctl-netns"
    sock.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (sys.argv[1], 0))
    deadline = time.time() + 3
    while time.time() < deadline:
        try: data = sock.recv(2048)
        except socket.timeout: break
        icmp = data[(data[0] & 0xf) * 4:]
        if icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq): got += 1; break
print("%d packets received" % got); sys.exit(0 if got == 3 else 1)
PING
if host ip netns exec vhns1 python3 /tmp/fds-ping.py 10.77.0.2 >/tmp/fds-ns-ping.txt 2>&1; then
    pass "attach --netns vhns1: ping from inside the namespace answers ($(grep -o '[0-9]* packets received' /tmp/fds-ns-ping.txt))"
else
    fail "attach --netns ping" "$(cat /tmp/fds-ns-ping.txt) | $(head -c 400 /tmp/fds-ns.log)"
fi
ns_placed=0
if ! ip link show vhns0 >/dev/null 2>&1 && host ip netns exec vhns1 ip link show vhns0 >/dev/null 2>&1; then
    ns_placed=1
    pass "attach --netns: the tap is in the namespace, not in the root namespace"
else
    fail "attach --netns placement" "root: $(ip link show vhns0 2>&1 | head -1); ns: $(host ip netns exec vhns1 ip link show vhns0 2>&1 | head -1)"
fi
kill -TERM $ns_pid 2>/dev/null; wait_for_exit $ns_pid
if [ $ns_placed = 1 ] && grep -q "tap vhns0 removed" /tmp/fds-ns.log && ! host ip netns exec vhns1 ip link show vhns0 >/dev/null 2>&1; then
    pass "attach --netns: after SIGTERM the tap is gone from the namespace"
else
    fail "attach --netns stop" "$(tail -c 300 /tmp/fds-ns.log)"
fi
expect_error "--netns of a missing namespace is refused" 64 "no network namespace at /run/netns/vhnone" vhostctl attach --netns vhnone --tap vhns9 --create
umount /run/netns/vhns1 2>/dev/null; rm -f /run/netns/vhns1
host ip netns del vhns1
