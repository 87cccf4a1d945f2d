#!/bin/sh
# Kernel-tier checks of `vhostctl attach`, run as root inside Scripts/vm --host-root: the
# endpoint runs on the real kernel's vhost-net, and real clients check it from the host side —
# busybox ping, bash's /dev/udp, and the host's tshark (through chroot /host).
# Prints PASS/FAIL per check and "attach tier: N passed, M failed".
# The tier's parts (attach-part-*.sh beside this file) are sourced at the end; attach-only.sh runs
# parts alone.
ATTACH_DIR=$(dirname "$0")
. "$ATTACH_DIR/attach-lib.sh"

echo "attach tests on $(uname -r)"

# ---- info: usable, features and parameters by name, as text and JSON ---------------------------
if vhostctl info >/tmp/info.txt 2>&1 && grep -q "vhost-net: usable" /tmp/info.txt && grep -q "F_VERSION_1" /tmp/info.txt \
    && grep -q "IFF_VNET_HDR" /tmp/info.txt && grep -q "vhost.max_mem_regions = " /tmp/info.txt; then
    pass "info shows vhost-net usable, features, tap features and module parameters by name"
else
    fail "info" "$(cat /tmp/info.txt)"
fi
vhostctl info --json >/tmp/info.json 2>&1
ok=$(host python3 -c 'import json; d=json.load(open("/tmp/info.json")); print(d["usable"] and "F_VERSION_1" in d["features"]["names"] and "IFF_MULTI_QUEUE" in d["tap_features"]["names"] and d["module_parameters"]["vhost.max_mem_regions"].isdigit() and d["kernel"] != "")' 2>&1)
if [ "$ok" = True ]; then pass "info --json parses and carries the same facts"; else fail "info --json" "$ok: $(head -c 400 /tmp/info.json)"; fi
# ---- info as a doctor: every check, with a status, its fact and (when not ok) the fix ----------
# Doctor.checkNames (Sources/vhostctl/Doctor.swift): every one is reported, in text and in JSON.
doctor_checks="vhost-net-module vhost-net-device tun net-admin huge-pages worker-mode memory-regions locked-memory cgroup network-namespace kvm"
missing=""
for check in $doctor_checks; do grep -Eq "^  (ok|warning|problem) +$check: " /tmp/info.txt || missing="$missing $check"; done
if [ -z "$missing" ] && grep -Eq "^  ok +vhost-net-module: vhost_net is (loaded|built into)" /tmp/info.txt && grep -Eq "^  ok +vhost-net-device: /dev/vhost-net .*opened" /tmp/info.txt \
    && grep -Eq "^  ok +memory-regions: max_mem_regions=[0-9]+" /tmp/info.txt && grep -Eq "^  ok +kvm: " /tmp/info.txt; then
    pass "info reports every doctor check (module, device, tun, huge pages, worker mode, regions, memlock, cgroup, netns, kvm)"
else
    fail "info doctor checks" "missing:$missing; $(sed -n '/^checks:/,$p' /tmp/info.txt | tr '\n' ' ' | head -c 600)"
fi
ok=$(host python3 -c '
import json, sys
d = json.load(open("/tmp/info.json"))
names = sys.argv[1].split()
checks = d["checks"]
got = [c["name"] for c in checks]
bad = [c for c in checks if c["status"] not in ("ok", "warning", "problem") or not c["fact"] or (c["status"] != "ok" and c["status"] != "warning" and not c.get("fix"))]
worker = [c["fact"] for c in checks if c["name"] == "worker-mode"][0]
major, minor = (int(x) for x in d["kernel"].split(".")[:2])
want_worker = "thread of the owner" if (major, minor) >= (6, 4) else "kernel thread"
selectable = "VHOST_SET_FORK_FROM_OWNER" in worker and (major, minor) >= (6, 12)
print(got == names and not bad and (want_worker in worker or selectable) or "got %s, bad %s, worker %r" % (got, bad, worker))' "$doctor_checks" 2>&1)
if [ "$ok" = True ]; then pass "info --json: a checks array with every check, status and fact, the worker mode this kernel has"; else fail "info --json checks" "$ok"; fi
hostip tuntap add dev vhdoc0 mode tap multi_queue && hostip link set dev vhdoc0 mtu 1280
vhostctl info --tap vhdoc0 >/tmp/info-tap.txt 2>&1
if grep -Eq "^  warning +tap: vhdoc0: tap, multi-queue[ ,].*MTU 1280" /tmp/info-tap.txt && grep -q "fix: ip link set dev vhdoc0 mtu 1500" /tmp/info-tap.txt; then
    hostip link set dev vhdoc0 mtu 1500
    vhostctl info --tap vhdoc0 >/tmp/info-tap.txt 2>&1
    if grep -Eq "^  ok +tap: vhdoc0: tap, multi-queue[ ,].*MTU 1500" /tmp/info-tap.txt; then
        pass "info --tap: a tap with MTU 1280 is a warning with the fix; at 1500 it is ok"
    else
        fail "info --tap at MTU 1500" "$(grep ' tap: ' /tmp/info-tap.txt)"
    fi
else
    fail "info --tap with MTU 1280" "$(grep -A1 ' tap: ' /tmp/info-tap.txt | tr '\n' ' ')"
fi
hostip link del vhdoc0
vhostctl info --tap lo >/tmp/info-tap.txt 2>&1
if grep -Eq "^  problem +tap: lo is not a tun/tap device" /tmp/info-tap.txt; then pass "info --tap lo: not a tap, a problem"; else fail "info --tap lo" "$(grep -A1 ' tap: ' /tmp/info-tap.txt | tr '\n' ' ')"; fi

# ---- demo: the main job, end to end ------------------------------------------------------------
if timeout 120 vhostctl demo --seconds 0.3 >/tmp/demo.txt 2>&1 && grep -q "^summary: all 5 checks passed" /tmp/demo.txt && ! ip link show vhdemo0 >/dev/null 2>&1; then
    pass "demo: $(grep -c '✓' /tmp/demo.txt) checks marked ✓, summary says all passed, tap removed"
else
    fail "demo" "$(cat /tmp/demo.txt)"
fi

# ---- a NIC endpoint: ARP, ping, UDP echo, pcap ------------------------------------------------
: >/tmp/attach.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vht0 --create --ip 10.0.0.2/24 --udp-echo 7 --pcap /tmp/attach.pcap --stats 1 >/tmp/attach.log 2>&1 &
pid=$!
if wait_for_tap vht0; then pass "attach --create makes the tap"; else fail "attach --create makes the tap" "$(cat /tmp/attach.log)"; fi
ip addr add 10.0.0.1/24 dev vht0
ip link set vht0 up
if ping -A -c 3 -W 3 10.0.0.2 >/tmp/ping.txt 2>&1; then
    pass "ping from the host stack gets replies ($(grep -o '[0-9]* packets received' /tmp/ping.txt))"
else
    fail "ping from the host stack gets replies" "$(cat /tmp/ping.txt)"
fi
ip neigh show 10.0.0.2 >/tmp/neigh.txt 2>&1
if grep -q "52:54:00:12:34:56" /tmp/neigh.txt; then pass "ARP resolved the endpoint's MAC"; else fail "ARP resolved the endpoint's MAC" "$(ip neigh)"; fi
reply=$(host bash -c 'exec 3<>/dev/udp/10.0.0.2/7; printf "hello-vhost-udp" >&3; IFS= read -r -t 5 -N 15 r <&3; printf "%s" "$r"' 2>&1)
if [ "$reply" = "hello-vhost-udp" ]; then pass "a UDP datagram is echoed (bash /dev/udp)"; else fail "a UDP datagram is echoed" "got '$reply'"; fi
sleep 1.2
if grep -q "^rx [0-9]* frames" /tmp/attach.log; then pass "live counters are printed"; else fail "live counters are printed" "$(cat /tmp/attach.log)"; fi
kill -TERM $pid
if wait_for_exit $pid; then wait $pid; status=$?; else status=timeout; fi
if [ "$status" = 0 ] && ! ip link show vht0 >/dev/null 2>&1; then
    pass "SIGTERM stops cleanly and leaves no tap ($(tail -n 2 /tmp/attach.log | head -n 1))"
else
    fail "SIGTERM stops cleanly and leaves no tap" "status $status; $(ip link show vht0 2>&1 | head -n1); $(tail -n 3 /tmp/attach.log)"
fi

# tshark (the host's) reads the pcap and sees the ICMP echo replies, the ARP reply and the UDP echo.
# One pass writes the fields of every frame (tshark takes seconds to start under emulation). Fields:
# protocols, icmp.type, ip.src, ip.dst, arp.opcode, arp.src, udp.srcport, the UDP payload in hex.
read_pcap=no
if host tshark -r /tmp/attach.pcap -T fields -e frame.protocols -e icmp.type -e ip.src -e ip.dst -e arp.opcode -e arp.src.proto_ipv4 \
    -e udp.srcport -e udp.payload >/tmp/tshark.txt 2>/tmp/tshark.err; then
    read_pcap=yes
    replies=$(awk -F'\t' '$2 == "0" && $3 == "10.0.0.2"' /tmp/tshark.txt | wc -l)
    requests=$(awk -F'\t' '$2 == "8" && $4 == "10.0.0.2"' /tmp/tshark.txt | wc -l)
    arp=$(awk -F'\t' '$5 == "2" && $6 == "10.0.0.2"' /tmp/tshark.txt | wc -l)
    # The echo from port 7 carries "hello-vhost-udp" (68656c6c6f2d76686f73742d756470 in hex).
    udp=$(awk -F'\t' '$7 == "7" && $3 == "10.0.0.2" && index($8, "68656c6c6f2d76686f73742d756470")' /tmp/tshark.txt | wc -l)
    if [ "$replies" -ge 3 ] && [ "$requests" -ge 3 ] && [ "$arp" -ge 1 ] && [ "$udp" -ge 1 ]; then
        pass "tshark reads the pcap: $requests echo requests, $replies replies, $arp ARP replies, $udp UDP echoes"
    else
        fail "tshark sees the expected frames" "requests $requests replies $replies arp $arp udp $udp; $(head -n 20 /tmp/tshark.txt | tr '\n' ' ')"
    fi
else
    fail "tshark reads the pcap" "$(cat /tmp/tshark.err)"
fi

# ---- replay: the frames of a pcap file are transmitted into the tap ----------------------------
frames=$(wc -l </tmp/tshark.txt)  # the frames tshark read above, a line each
# tshark must have read the file, and it must hold frames: 0 replayed of 0 proves nothing.
if [ "$read_pcap" != yes ] || [ "$frames" -lt 1 ]; then frames=none; fi
hostip tuntap add dev vhrep0 mode tap
ip link set vhrep0 up
before=$(cat /sys/class/net/vhrep0/statistics/rx_packets)
timeout 30 vhostctl attach --tap vhrep0 --replay /tmp/attach.pcap --duration 1 --stats 0 >/tmp/replay.log 2>&1; status=$?
after=$(cat /sys/class/net/vhrep0/statistics/rx_packets)
if [ "$frames" != none ] && [ "$status" = 0 ] && [ $((after - before)) -eq "$frames" ] && ip link show vhrep0 >/dev/null 2>&1; then
    pass "--replay transmits all $frames frames of the pcap, and an existing tap is left in place"
else
    fail "--replay transmits the pcap's frames" "status $status, tap counted $((after - before)) of $frames; $(cat /tmp/replay.log)"
fi

# ---- IPv6: ND both ways, DAD, ping -6 to the link-local and the global address, UDP over IPv6, pcapng ----
# The endpoint's link-local address is the EUI-64 of its MAC: 52:54:00:12:34:56 → fe80::5054:ff:fe12:3456.
ll6=fe80::5054:ff:fe12:3456
# wait_for_ipv6 IFACE: the host's own IPv6 addresses on IFACE have finished DAD (none tentative).
wait_for_ipv6() { i=0; while [ $i -lt 100 ]; do hostip -6 addr show dev "$1" 2>/dev/null | has "inet6 fe80" && ! hostip -6 addr show dev "$1" | has tentative && return 0; sleep 0.1; i=$((i + 1)); done; return 1; }
: >/tmp/attach6.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vht6 --create --queue-pairs 2 --ip 10.0.6.2/24 --ip6 fd00:6::2/64 --udp-echo 7 --pcap /tmp/attach6.pcapng --stats 1 >/tmp/attach6.log 2>&1 &
pid=$!
wait_for_attached /tmp/attach6.log
hostip -6 addr add fd00:6::1/64 dev vht6 nodad
wait_for_ipv6 vht6
if grep -q "^attached to vht6 .*ip6 $ll6/64 fd00:6::2/64" /tmp/attach6.log; then pass "attach --ip6: the link-local address from the MAC (EUI-64) and the given one"; else fail "attach --ip6 addresses" "$(head -n 3 /tmp/attach6.log)"; fi
if ping -6 -A -c 3 -W 3 -I vht6 "$ll6%vht6" >/tmp/ping6.txt 2>&1; then
    pass "ping -6 to the endpoint's link-local address gets replies ($(grep -o '[0-9]* packets received' /tmp/ping6.txt))"
else
    fail "ping -6 to the endpoint's link-local address" "$(cat /tmp/ping6.txt)"
fi
if ping -6 -A -c 3 -W 3 fd00:6::2 >/tmp/ping6g.txt 2>&1; then
    pass "ping -6 to the endpoint's global address gets replies ($(grep -o '[0-9]* packets received' /tmp/ping6g.txt))"
else
    fail "ping -6 to the endpoint's global address" "$(cat /tmp/ping6g.txt)"
fi
# The host resolved the endpoint by neighbour discovery (its solicitation, the endpoint's advertisement).
if hostip -6 neigh show dev vht6 | has "^fd00:6::2 lladdr 52:54:00:12:34:56"; then pass "neighbour discovery resolved the endpoint's MAC on the host"; else fail "the host's neighbour entry for fd00:6::2" "$(hostip -6 neigh show dev vht6 | tr '\n' ' ')"; fi
reply=$(host bash -c 'exec 3<>/dev/udp/fd00:6::2/7; printf "hello-vhost-udp6" >&3; IFS= read -r -t 5 -N 16 r <&3; printf "%s" "$r"' 2>&1)
if [ "$reply" = "hello-vhost-udp6" ]; then pass "a UDP datagram over IPv6 is echoed (bash /dev/udp)"; else fail "a UDP datagram over IPv6 is echoed" "got '$reply'"; fi
reply=$(host bash -c "exec 3<>/dev/udp/$ll6%vht6/7; printf 'hello-link-local' >&3; IFS= read -r -t 5 -N 16 r <&3; printf '%s' \"\$r\"" 2>&1)
if [ "$reply" = "hello-link-local" ]; then pass "a UDP datagram to the link-local address is echoed"; else fail "a UDP datagram to the link-local address is echoed" "got '$reply'"; fi
# Duplicate-address detection: the host claims the endpoint's own address with DAD; the endpoint's
# advertisement makes the host give it up (dadfailed).
hostip -6 addr add fd00:6::2/64 dev vht6
i=0; while [ $i -lt 80 ] && ! hostip -6 addr show dev vht6 | has "fd00:6::2/64.*dadfailed"; do sleep 0.1; i=$((i + 1)); done
if hostip -6 addr show dev vht6 | has "fd00:6::2/64.*dadfailed"; then
    pass "duplicate-address detection by the host for fd00:6::2, which the endpoint owns, is answered: the host marks it dadfailed"
else
    fail "DAD for the endpoint's address is answered" "$(hostip -6 addr show dev vht6 | tr '\n' ' ')"
fi
hostip -6 addr del fd00:6::2/64 dev vht6 2>/dev/null
kill -TERM $pid; wait_for_exit $pid
if grep -q "dad [1-9]" /tmp/attach6.log; then pass "the endpoint counts the DAD probe it answered ($(tail -n 3 /tmp/attach6.log | grep -o 'nd [0-9/]* dad [0-9]*' | head -n 1))"; else fail "the DAD counter" "$(tail -n 3 /tmp/attach6.log)"; fi
# One pass of tshark writes the fields of every frame of the pcapng (it takes seconds to start under
# emulation): 1 number, 2 interface id, 3 interface name, 4 direction (0x00000001 in, 0x00000002 out),
# 5 IPv6 next header, 6 ICMPv6 type, 7 IPv6 source, 8 NA solicited flag, 9 echo reply's request, 10 comment,
# 11 ICMPv6 checksum status (1 good), 12 "_ws.malformed" where tshark found the frame malformed.
host tshark -r /tmp/attach6.pcapng -T fields -e frame.number -e frame.interface_id -e frame.interface_name -e frame.packet_flags_direction \
    -e ipv6.nxt -e icmpv6.type -e ipv6.src -e icmpv6.nd.na.flag.s -e icmpv6.resp_to -e frame.comment -e icmpv6.checksum.status -e _ws.malformed \
    >/tmp/attach6.fields 2>/tmp/tshark6.err
# tshark decodes every ND and ICMPv6 frame the endpoint sent, and finds each checksum good.
sent6=$(awk -F'\t' '$4 == "0x00000002" && $5 ~ /(^|,)58(,|$)/' /tmp/attach6.fields | wc -l)
good6=$(awk -F'\t' '$4 == "0x00000002" && $11 == "1" && $12 == ""' /tmp/attach6.fields | wc -l)
types6=$(awk -F'\t' '$4 == "0x00000002" && $6 != "" { print $6 }' /tmp/attach6.fields | sort -un | tr '\n' ' ')
if [ "$sent6" -gt 0 ] && [ "$sent6" = "$good6" ] && [ "$types6" = "129 135 136 " ]; then
    pass "tshark decodes all $sent6 ICMPv6 frames the endpoint sent (types $types6) with valid checksums"
else
    fail "tshark on the endpoint's ICMPv6" "sent $sent6, good $good6, types '$types6'"
fi
# ND both ways: the endpoint's own solicitation (to confirm the host it learned), and the host's answer.
ns=$(awk -F'\t' '$4 == "0x00000002" && $6 == "135" && $7 != "::"' /tmp/attach6.fields | wc -l)
dad=$(awk -F'\t' '$4 == "0x00000002" && $6 == "135" && $7 == "::"' /tmp/attach6.fields | wc -l)
# A boolean field is "1" from some tshark versions and "True" from others.
na=$(awk -F'\t' '$4 == "0x00000001" && $6 == "136" && ($8 == "1" || $8 == "True")' /tmp/attach6.fields | wc -l)
if [ "$ns" -ge 1 ] && [ "$na" -ge 1 ] && [ "$dad" -ge 2 ]; then
    pass "neighbour discovery both ways: the endpoint solicits the host ($ns), the host answers ($na solicited advertisements), and it probed its own addresses at start ($dad DAD probes)"
else
    fail "ND from the endpoint" "solicitations $ns, host advertisements $na, DAD probes $dad"
fi
# pcapng: the direction and the queue of each frame; a reply on the queue its request came on.
cut -f2-4,10 /tmp/attach6.fields >/tmp/pcapng6.txt  # interface id and name, direction, comment
bad=$(awk -F'\t' '!($1 == 0 || $1 == 1) || $2 != "vht6 queue " $1 || ($3 != "0x00000001" && $3 != "0x00000002") || $4 !~ /^virtio-net header: flags 0x/' /tmp/pcapng6.txt | wc -l)
dirs=$(cut -f3 /tmp/pcapng6.txt | sort -u | tr '\n' ' ')
# Each echo reply (type 129) names its request's frame number (resp_to): the two on one queue.
pairs=$(awk -F'\t' '$6 == "129" && $9 != ""' /tmp/attach6.fields | wc -l)
mismatch=$(awk -F'\t' '{ queue[$1] = $2 } $6 == "129" && $9 != "" { reply[$9] = $2 } END { for (req in reply) if (queue[req] != reply[req]) n++; print n + 0 }' /tmp/attach6.fields)
if [ -s /tmp/pcapng6.txt ] && [ "$bad" = 0 ] && [ "$dirs" = "0x00000001 0x00000002 " ] && [ "$pairs" -gt 0 ] && [ "$mismatch" = 0 ]; then
    pass "tshark reads the pcapng: $(wc -l </tmp/pcapng6.txt) frames, each with its queue's interface (id and name), its direction and its virtio-net header; each echo reply on its request's queue"
else
    fail "tshark on the pcapng" "$bad frames without interface, direction or header; directions '$dirs'; $mismatch replies on another queue; $(cat /tmp/tshark6.err | head -c 200)"
fi
# Replay of the pcapng sends the same frames (the tap counts them).
frames=$(wc -l </tmp/attach6.fields)
hostip tuntap add dev vhrep6 mode tap
ip link set vhrep6 up
before=$(cat /sys/class/net/vhrep6/statistics/rx_packets)
timeout 30 vhostctl attach --tap vhrep6 --replay /tmp/attach6.pcapng --pcap /tmp/replay6.pcapng --duration 1 --stats 0 >/tmp/replay6.log 2>&1; status=$?
after=$(cat /sys/class/net/vhrep6/statistics/rx_packets)
same=$(host python3 -c '
import subprocess, sys
def frames(path, where):
    out = subprocess.run(["tshark", "-r", path, "-Y", where, "-T", "fields", "-e", "frame.len", "-e", "frame.protocols"], capture_output=True, text=True).stdout
    return out.splitlines()
print(sorted(frames("/tmp/attach6.pcapng", "frame.packet_flags_direction == 1 || frame.packet_flags_direction == 2")) == sorted(frames("/tmp/replay6.pcapng", "frame.packet_flags_direction == 2")))' 2>&1)
if [ "$status" = 0 ] && [ $((after - before)) -eq "$frames" ] && [ "$same" = True ]; then
    pass "--replay of the pcapng sends the same $frames frames (counted by the tap; the replay's own capture has them, by length and protocols, as outbound)"
else
    fail "--replay of the pcapng" "status $status, tap counted $((after - before)) of $frames, same: $same; $(cat /tmp/replay6.log | tr '\n' ' ')"
fi
hostip link del vhrep6

# ---- an L3 tun: vhost-net on a tun in IFF_TUN mode, IPv4 and IPv6 without ARP or ND ----------------
: >/tmp/tun.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhtun0 --create --tun --ip 10.0.11.2/24 --ip6 fd00:11::2/64 --udp-echo 7 --pcap /tmp/tun.pcapng --stats 0 >/tmp/tun.log 2>&1 &
pid=$!
wait_for_attached /tmp/tun.log
ip addr add 10.0.11.1/24 dev vhtun0
hostip -6 addr add fd00:11::1/64 dev vhtun0
type=$(cat /sys/class/net/vhtun0/type 2>/dev/null)
if [ "$type" = 65534 ] && ping -A -c 3 -W 3 10.0.11.2 >/tmp/pingtun.txt 2>&1; then
    pass "attach --tun answers ping through vhost-net on an L3 tun (ARPHRD_NONE, no Ethernet header, virtio-net header on)"
else
    fail "attach --tun answers ping" "type '$type'; $(cat /tmp/pingtun.txt) $(cat /tmp/tun.log | tr '\n' ' ')"
fi
if ping -6 -A -c 3 -W 3 fd00:11::2 >/tmp/pingtun6.txt 2>&1; then
    pass "attach --tun answers ping -6 on the L3 tun"
else
    fail "attach --tun answers ping -6" "$(cat /tmp/pingtun6.txt)"
fi
reply=$(host bash -c 'exec 3<>/dev/udp/fd00:11::2/7; printf "tun-udp6" >&3; IFS= read -r -t 5 -N 8 r <&3; printf "%s" "$r"' 2>&1)
if [ "$reply" = "tun-udp6" ]; then pass "attach --tun echoes UDP over IPv6"; else fail "attach --tun echoes UDP over IPv6" "got '$reply'"; fi
kill -TERM $pid; wait_for_exit $pid
# One pass of tshark: 1 direction, 2 icmp.type, 3 icmpv6.type, 4 protocols, 5 comment.
host tshark -r /tmp/tun.pcapng -T fields -e frame.packet_flags_direction -e icmp.type -e icmpv6.type -e frame.protocols -e frame.comment >/tmp/tun.fields 2>/tmp/tun.tshark.err
tunframes=$(awk -F'\t' '$1 == "0x00000002" && ($2 == "0" || $3 == "129")' /tmp/tun.fields | wc -l)
nd=$(awk -F'\t' '$1 == "0x00000002" && $3 >= 133 && $3 <= 137 && $3 != ""' /tmp/tun.fields | wc -l)
if [ "$tunframes" -ge 6 ] && [ "$nd" = 0 ] && head -n 1 /tmp/tun.fields | cut -f4 | has "^raw:ip"; then
    pass "the tun's pcapng is raw IP (LINKTYPE_RAW): $tunframes echo replies, no neighbour discovery sent"
else
    fail "the tun's pcapng" "$tunframes echo replies, $nd ND frames; $(cut -f4 /tmp/tun.fields | head -n 2 | tr '\n' ' ')"
fi

# What tun wrote in num_buffers of the headers it handed over (no MRG_RXBUF: vhost leaves the field
# to tun). Not a check: docs/kernel-findings.md reads it per kernel.
echo "INFO tun's num_buffers on received frames, kernel $(uname -r): $(awk -F'\t' '$1 == "0x00000001" { print $5 }' /tmp/tun.fields | sed -n 's/.*num_buffers \([0-9]*\).*/\1/p' | sort | uniq -c | tr -s ' \n' ' ')"

# ---- offloads for what we send: TUNSETOFFLOAD follows the GUEST_ features; --offloads overrides ------
timeout 30 vhostctl attach --tap vhoff0 --create --features VERSION_1 EVENT_IDX MRG_RXBUF GUEST_CSUM GUEST_TSO4 --trace --duration 0.3 --stats 0 >/tmp/off.log 2>/tmp/off.trace
timeout 30 vhostctl attach --tap vhoff1 --create --features VERSION_1 EVENT_IDX MRG_RXBUF GUEST_CSUM GUEST_TSO4 --offloads csum --trace --duration 0.3 --stats 0 >/dev/null 2>/tmp/off1.trace
# VHOST_SET_FEATURES prints the features by name: vhost must not be asked for an offload (net.c would refuse it).
if grep -q '^trace: TUNSETOFFLOAD(0x3) = 0' /tmp/off.trace && grep -q '^trace: VHOST_SET_FEATURES(' /tmp/off.trace && ! grep '^trace: VHOST_SET_FEATURES(' /tmp/off.trace | has 'CSUM\|TSO' \
    && grep -q '^trace: TUNSETOFFLOAD(0x1) = 0' /tmp/off1.trace \
    && ! grep -q 'TUNSETOFFLOAD(0x3)' /tmp/off1.trace && grep -q "^offloads: NET_F_GUEST_CSUM NET_F_GUEST_TSO4" /tmp/off.log; then
    pass "the tap's TUNSETOFFLOAD follows the GUEST_ features (GUEST_CSUM GUEST_TSO4 → 0x3, as QEMU derives it), vhost is not asked for them, and --offloads csum overrides (0x1)"
else
    fail "TUNSETOFFLOAD from the features" "$(grep -E 'TUNSETOFFLOAD|SET_FEATURES' /tmp/off.trace /tmp/off1.trace | tr '\n' ' ')"
fi

# ---- a 20,000-byte UDP datagram: USO superframe (6.2+) or fragments, checked from the far side -------
# The far side is a second tap that python (the host's) opens without offloads, so the host stack
# must finish every checksum and cut every superframe itself before handing the frames to it; the
# request goes from there (10.0.14.2) through the host's forwarding to the endpoint (10.0.12.2).
cat >/tmp/far.py <<'PY'
import fcntl, json, os, select, struct, subprocess, sys, time
name, target, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", name.encode(), 0x0002 | 0x1000))   # TUNSETIFF (struct ifreq), IFF_TAP | IFF_NO_PI: no offloads
for cmd in (["ip", "link", "set", name, "up"], ["ip", "addr", "add", "10.0.14.1/24", "dev", name],
            ["ip", "neigh", "replace", "10.0.14.2", "lladdr", "02:00:00:00:00:14", "dev", name, "nud", "permanent"]):
    subprocess.run(cmd, check=True)
mine = bytes.fromhex(open("/sys/class/net/%s/address" % name).read().strip().replace(":", ""))
peer, src, dst = bytes.fromhex("020000000014"), bytes([10, 0, 14, 2]), bytes(int(x) for x in target.split("."))
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def send(payload, ident):
    u = struct.pack("!HHHH", 40000, 7, 8 + len(payload), 0) + payload
    c = csum(src + dst + struct.pack("!BBH", 0, 17, len(u)) + u) or 0xffff
    u = u[:6] + struct.pack("!H", c) + u[8:]
    off = 0
    while True:
        part = u[off:off + 1480]
        more = off + len(part) < len(u)
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, (0x2000 if more else 0) | off // 8, 64, 17, 0, src, dst)
        os.write(fd, mine + peer + b"\x08\x00" + h[:10] + struct.pack("!H", csum(h)) + h[12:] + part)
        off += len(part)
        if not more: return
def collect(want, seconds=5):
    result = {"datagrams": 0, "fragments": 0, "sizes": [], "checksums_ok": True, "data": b""}
    parts, end = {}, time.time() + seconds
    while time.time() < end and len(result["data"]) < want:
        if not select.select([fd], [], [], 0.2)[0]: continue
        f = os.read(fd, 70000)
        if len(f) < 42 or f[12:14] != b"\x08\x00" or f[23] != 17 or f[30:34] != src: continue
        ip = f[14:]; ihl = (ip[0] & 15) * 4; total = struct.unpack("!H", ip[2:4])[0]
        result["checksums_ok"] &= csum(ip[:ihl]) == 0
        frag, ident, body = struct.unpack("!H", ip[6:8])[0], struct.unpack("!H", ip[4:6])[0], ip[ihl:total]
        if frag & 0x3fff:
            result["fragments"] += 1
            parts.setdefault(ident, {})[(frag & 0x1fff) * 8] = (body, frag & 0x2000)
            got, whole, last = parts[ident], b"", None
            for o in sorted(got):
                if o != len(whole): break
                whole += got[o][0]; last = got[o][1]
            else:
                if last == 0: body = whole
                else: continue
            if last != 0 or len(body) != len(whole): continue
        u = body
        result["checksums_ok"] &= csum(ip[12:20] + struct.pack("!BBH", 0, 17, len(u)) + u) == 0
        result["datagrams"] += 1; result["sizes"].append(len(u) - 8); result["data"] += u[8:]
    return result
small = b"hello-far-side"
send(small, 1)
first = collect(len(small))
payload = bytes((i * 7) & 0xff for i in range(size))
send(payload, 2)
big = collect(size)
print(json.dumps({"small_ok": first["data"] == small and first["checksums_ok"], "whole": big["data"] == payload,
                  "datagrams": big["datagrams"], "fragments": big["fragments"], "sizes": sorted(set(big["sizes"])), "checksums_ok": big["checksums_ok"]}))
PY
kver=$(uname -r); kmajor=${kver%%.*}; kminor=${kver#*.}; kminor=${kminor%%.*}
if [ "$kmajor" -gt 6 ] || { [ "$kmajor" = 6 ] && [ "$kminor" -ge 2 ]; }; then uso=yes; else uso=no; fi
if [ $uso = no ]; then
    # The kernel's own refusal: tun before 6.2 does not know TUN_F_USO4|TUN_F_USO6 (EINVAL to TUNSETOFFLOAD).
    expect_error "USO before 6.2 (kernel $kver): HOST_USO is refused with tun's EINVAL to TUNSETOFFLOAD TUN_F_USO4|TUN_F_USO6" 69 "TUNSETOFFLOAD: EINVAL" \
        vhostctl attach --tap vhuso0 --create --ip 10.0.12.2/24 --features VERSION_1 EVENT_IDX CSUM HOST_USO
    if ip link show vhuso0 >/dev/null 2>&1; then fail "no tap left after the USO refusal"; else pass "no tap left after the USO refusal (kernel $kver)"; fi
    features="VERSION_1 EVENT_IDX CSUM"
else
    features="VERSION_1 EVENT_IDX CSUM HOST_USO"
fi
: >/tmp/uso.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhuso0 --create --ip 10.0.12.2/24 --udp-echo 7 --features $features --pcap /tmp/uso.pcapng --stats 0 >/tmp/uso.log 2>&1 &
pid=$!
wait_for_attached /tmp/uso.log
ip addr add 10.0.12.1/24 dev vhuso0
forwarding=$(cat /proc/sys/net/ipv4/ip_forward); echo 1 >/proc/sys/net/ipv4/ip_forward
ping -A -c 1 -W 3 10.0.12.2 >/dev/null 2>&1   # ARP resolved now, so the count below holds replies only
before=$(cat /sys/class/net/vhuso0/statistics/rx_packets)
far=$(timeout 60 host python3 /tmp/far.py vhfar0 10.0.12.2 20000 2>&1)
after=$(cat /sys/class/net/vhuso0/statistics/rx_packets)
echo "$forwarding" >/proc/sys/net/ipv4/ip_forward
kill -TERM $pid; wait_for_exit $pid
sent=$((after - before))
check=$(host python3 -c '
import json, sys
r = json.loads(sys.argv[1]); uso = sys.argv[2] == "yes"
ok = r["small_ok"] and r["whole"] and r["checksums_ok"]
ok = ok and (r["datagrams"] == 14 and r["fragments"] == 0 and r["sizes"] == [864, 1472] if uso else r["datagrams"] == 1 and r["fragments"] == 14)
print(ok)' "$far" $uso 2>&1)
superframes=$(host tshark -r /tmp/uso.pcapng -Y 'frame.packet_flags_direction == 2 && frame.len == 20042 && frame.comment contains "gso_type 0x05 hdr_len 42 gso_size 1472"' 2>/dev/null | wc -l)
if [ $uso = yes ]; then
    if [ "$check" = True ] && [ "$sent" = 2 ] && [ "$superframes" = 1 ]; then
        pass "a 20,000-byte UDP datagram comes back whole: it left the endpoint as one USO superframe (the tap counted 1 frame, the pcapng shows gso_type UDP_L4, gso_size 1472) that the kernel cut into 14 datagrams of 1472 bytes with valid checksums; the small reply's NEEDS_CSUM checksum was finished by the host"
    else
        fail "the 20,000-byte datagram through USO" "far side $far; tap counted $sent (want 2: the small reply and the superframe); superframes in the pcapng $superframes"
    fi
else
    if [ "$check" = True ] && [ "$sent" = 15 ]; then
        pass "a 20,000-byte UDP datagram comes back whole as 14 IP fragments with a valid checksum (no USO before 6.2, kernel $kver); the small reply's NEEDS_CSUM checksum was finished by the host"
    else
        fail "the 20,000-byte datagram in fragments" "far side $far; tap counted $sent (want 15)"
    fi
fi

# ---- --user drops root after setup ----------------------------------------------------------
hostip link del vhrep0
: >/tmp/user.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhusr0 --create --ip 10.0.1.2/24 --user 65534:65534 --stats 0 >/tmp/user.log 2>&1 &
pid=$!
wait_for_tap vhusr0; ip addr add 10.0.1.1/24 dev vhusr0; ip link set vhusr0 up
sleep 0.5
uids=$(grep '^Uid:' /proc/$pid/status | tr -s '\t ' ' ')
owner=$(cat /sys/class/net/vhusr0/owner 2>/dev/null)
printf '%s\n' "$uids" >/tmp/uids.txt
if grep -q "^Uid: 65534 65534 65534 65534" /tmp/uids.txt && [ "$owner" = 65534 ] && ping -A -c 2 -W 3 10.0.1.2 >/dev/null 2>&1; then
    pass "--user drops to uid 65534 after setup, owns the tap, and still answers ping"
else
    fail "--user drops root" "status '$uids', tap owner '$owner', $(cat /tmp/user.log)"
fi
kill -INT $pid; if wait_for_exit $pid; then wait $pid; status=$?; else status=timeout; fi
if [ "$status" = 0 ] && ! ip link show vhusr0 >/dev/null 2>&1; then pass "SIGINT after dropping root still detaches and removes the tap"; else fail "SIGINT after dropping root" "status $status"; fi

# ---- a raised MTU that the RX buffers cannot take is reported ----------------------------------
# The warning is a diagnostic: on standard error, never among the data on standard output.
vhostctl attach --tap vhmtu0 --create --stats 0.3 >/tmp/mtu.log 2>/tmp/mtu.err &
pid=$!
wait_for_attached /tmp/mtu.log
ip link set vhmtu0 mtu 9000
i=0; while [ $i -lt 50 ] && ! grep -q "^vhostctl: warning: tap vhmtu0 has MTU 9000" /tmp/mtu.err; do sleep 0.1; i=$((i + 1)); done
if grep -q "^vhostctl: warning: tap vhmtu0 has MTU 9000.*MRG_RXBUF" /tmp/mtu.err && ! grep -q "warning" /tmp/mtu.log; then
    pass "attach warns on standard error (not standard output) when the tap's MTU outgrows the RX buffers"
else
    fail "attach warns about a raised MTU on standard error" "stdout: $(cat /tmp/mtu.log) stderr: $(cat /tmp/mtu.err)"
fi
kill -TERM $pid; wait_for_exit $pid

# ---- --keep leaves the tap -------------------------------------------------------------------
timeout 30 vhostctl attach --tap vhkeep0 --create --keep --duration 0.5 --stats 0 >/dev/null 2>&1
if ip link show vhkeep0 >/dev/null 2>&1; then pass "--keep leaves a persistent tap"; hostip link del vhkeep0; else fail "--keep leaves a persistent tap"; fi

# ---- --trace shows the ioctl sequence in QEMU's order, decoded ---------------------------------
timeout 30 vhostctl attach --tap vhtr0 --create --trace --duration 0.3 --stats 0 >/dev/null 2>/tmp/trace.txt
order=$(grep -oE '^trace: (VHOST_[A-Z_]+|TUNSETIFF|TUNSETVNETHDRSZ)' /tmp/trace.txt | sed 's/trace: //' | uniq | tr '\n' ' ')
expected="TUNSETIFF VHOST_SET_OWNER VHOST_GET_FEATURES VHOST_SET_VRING_CALL VHOST_SET_VRING_ERR VHOST_SET_VRING_CALL VHOST_SET_VRING_ERR VHOST_SET_FEATURES VHOST_GET_BACKEND_FEATURES VHOST_SET_BACKEND_FEATURES VHOST_SET_MEM_TABLE VHOST_SET_VRING_NUM VHOST_SET_VRING_BASE VHOST_SET_VRING_ADDR VHOST_SET_VRING_KICK VHOST_SET_VRING_CALL VHOST_SET_VRING_NUM VHOST_SET_VRING_BASE VHOST_SET_VRING_ADDR VHOST_SET_VRING_KICK VHOST_SET_VRING_CALL TUNSETVNETHDRSZ VHOST_NET_SET_BACKEND VHOST_GET_VRING_BASE "
if [ "$order" = "$expected" ] && grep -q 'VHOST_SET_VRING_NUM(index: 1, num: 256) = 0' /tmp/trace.txt && grep -q 'VHOST_NET_SET_BACKEND(index: 0, fd: -1) = 0' /tmp/trace.txt; then
    pass "--trace prints every ioctl, decoded, in QEMU's vhost_net_start order"
else
    fail "--trace prints the ioctl sequence" "got: $order"
fi
# The tun and interface requests go through the same traced path: TUNSETIFF first, the SIOC*
# calls that bring the link up before the backends are attached.
all=$(grep -oE '^trace: [A-Z_]+' /tmp/trace.txt | sed 's/trace: //' | tr '\n' ' ')
case $all in
    "TUNSETIFF "*"SIOCGIFMTU "*"VHOST_SET_MEM_TABLE "*"TUNSETSNDBUF "*"SIOCGIFFLAGS "*"SIOCSIFFLAGS "*"VHOST_NET_SET_BACKEND "*) sioc=yes ;;
    *) sioc=no ;;
esac
if [ $sioc = yes ] && grep -q '^trace: SIOCSIFFLAGS(vhtr0, flags: 0x[0-9a-f]*) = 0' /tmp/trace.txt && grep -q '^trace: TUNSETIFF(name: vhtr0, flags: 0xd002) = ' /tmp/trace.txt; then
    pass "--trace shows TUNSETIFF (--create: IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_TUN_EXCL) and the SIOC* interface requests beside the vhost ioctls"
else
    fail "--trace shows TUNSETIFF (with IFF_TUN_EXCL: 0xd002) and SIOC*" "got: $all"
fi

# ---- migrate-test: rounds, pages per round, downtime; the copy equal and no frame lost ---------
if timeout 120 vhostctl migrate-test --tap vhmig0 >/tmp/migrate.txt 2>&1 && grep -q '^round 0: [0-9]* pages copied' /tmp/migrate.txt \
    && grep -q '^round 1: ' /tmp/migrate.txt && grep -q 'downtime [0-9.]* ms' /tmp/migrate.txt \
    && grep -q 'identical to the source, byte for byte' /tmp/migrate.txt && grep -q '^migration passed' /tmp/migrate.txt \
    && ! ip link show vhmig0 >/dev/null 2>&1; then
    pass "migrate-test prints the rounds, pages per round and downtime, and proves the copy and every frame ($(grep -c '^round' /tmp/migrate.txt) rounds, $(grep -o 'downtime [0-9.]* ms' /tmp/migrate.txt))"
else
    fail "migrate-test" "$(tail -n 12 /tmp/migrate.txt | tr '\n' ' ')"
fi

# ---- --worker-cpu: the vhost worker threads are found, reported and pinned ----------------------
: >/tmp/pin.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhpin0 --create --queues 2 --worker-cpu 1 --stats 0 >/tmp/pin.log 2>&1 &
pid=$!
wait_for_attached /tmp/pin.log
workers=$(grep -c "^worker vhost-$pid: tid [0-9]*, .*allowed CPUs 1$" /tmp/pin.log)
tids=$(sed -nE "s/^worker vhost-$pid: tid ([0-9]+),.*/\1/p" /tmp/pin.log)
pinned=0; for t in $tids; do grep -q "^Cpus_allowed_list:[[:space:]]*1$" /proc/$t/status 2>/dev/null && pinned=$((pinned + 1)); done
kill -TERM $pid; wait_for_exit $pid
if [ "$workers" = 2 ] && [ "$pinned" = 2 ]; then
    pass "--worker-cpu 1 reports both queue pairs' vhost workers and the kernel shows them pinned to CPU 1"
else
    fail "--worker-cpu" "workers reported $workers, pinned per /proc $pinned: $(cat /tmp/pin.log | tr '\n' ' ')"
fi

# ---- other backends: a macvtap on a dummy parent, a raw packet socket on a veth ----------------
hostip link add vhdum1 type dummy && hostip link set vhdum1 up
hostip link add vhmvl1 link vhdum1 type macvlan mode bridge && ip addr add 10.0.7.1/24 dev vhmvl1 && ip link set vhmvl1 up
: >/tmp/mvt.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhmvt1 --macvtap vhdum1 --ip 10.0.7.2/24 --stats 0 >/tmp/mvt.log 2>&1 &
pid=$!
wait_for_attached /tmp/mvt.log
if ping -A -c 3 -W 3 10.0.7.2 >/dev/null 2>&1 && grep -q "^attached to vhmvt1 (macvtap vhmvt1 on vhdum1)" /tmp/mvt.log; then
    pass "--macvtap: attach on a macvtap of a dummy parent answers ping from its sibling macvlan"
else
    fail "--macvtap" "$(cat /tmp/mvt.log | tr '\n' ' ')"
fi
kill -TERM $pid; wait_for_exit $pid
if ip link show vhmvt1 >/dev/null 2>&1; then fail "--macvtap removes the macvtap it created"; else pass "--macvtap removes the macvtap it created"; fi
# A macvtap this run did not create (another guest's NIC, say) is refused unless asked for, and left in place.
hostip link add vhmvx0 link vhdum1 type macvtap mode bridge
expect_error "an existing macvtap is refused without --existing-macvtap" 64 "pass --existing-macvtap" vhostctl attach --tap vhmvx0 --macvtap vhdum1
if timeout 30 vhostctl attach --tap vhmvx0 --macvtap vhdum1 --existing-macvtap --duration 0.5 --stats 0 >/tmp/mvx.log 2>&1 && ip link show vhmvx0 >/dev/null 2>&1; then
    pass "--existing-macvtap attaches to it, and leaves the macvtap it did not create"
else
    fail "--existing-macvtap" "$(ip link show vhmvx0 2>&1 | head -n 1); $(cat /tmp/mvx.log | tr '\n' ' ')"
fi
hostip link del vhmvx0 2>/dev/null
# Extended acknowledgements: a netlink request that fails carries the kernel's own words. With
# the macvtap module unloaded and module autoloading pointed at nothing, RTM_NEWLINK of kind
# "macvtap" fails in rtnl_newlink with NL_SET_ERR_MSG "Unknown device type" (EOPNOTSUPP).
if [ -e /modules/macvtap.ko ]; then  # only in the VM: never unload a host's macvtap
  if rmmod macvtap; then
    modprobe_path=$(cat /proc/sys/kernel/modprobe)
    echo /nonexistent-modprobe >/proc/sys/kernel/modprobe
    timeout 30 vhostctl attach --tap vhext0 --macvtap vhdum1 --stats 0 >/tmp/out.txt 2>/tmp/err.txt; got=$?
    echo "$modprobe_path" >/proc/sys/kernel/modprobe
    insmod /modules/macvtap.ko
    if [ "$got" != 0 ] && grep -q "RTM_NEWLINK create macvtap link vhext0 (kernel: Unknown device type" /tmp/err.txt && grep -q "EOPNOTSUPP" /tmp/err.txt && [ "$(wc -l </tmp/err.txt)" -le 1 ]; then
        pass "a failed netlink request shows the kernel's extended-ack message ($(head -c 200 /tmp/err.txt))"
    else
        fail "netlink extended ack" "exit $got, stderr: $(head -c 300 /tmp/err.txt)"
    fi
    if ip link show vhext0 >/dev/null 2>&1; then fail "nothing left after the refused macvtap" "vhext0 exists"; hostip link del vhext0; fi
  else
    fail "netlink extended ack" "rmmod macvtap failed (a macvtap left by an earlier check?)"
  fi
fi
hostip link del vhmvl1; hostip link del vhdum1
hostip link add vhve0 type veth peer name vhve1 && ip link set vhve0 up && ip addr add 10.0.8.1/24 dev vhve1 && ip link set vhve1 up
: >/tmp/ps.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --packet-socket vhve0 --ip 10.0.8.2/24 --stats 0 >/tmp/ps.log 2>&1 &
pid=$!
wait_for_attached /tmp/ps.log
if ping -A -c 3 -W 3 10.0.8.2 >/dev/null 2>&1 && grep -q "VHOST_NET_F_VIRTIO_NET_HDR" /tmp/ps.log; then
    pass "--packet-socket: attach through a raw packet socket on a veth answers ping from its peer"
else
    fail "--packet-socket" "$(cat /tmp/ps.log | tr '\n' ' ')"
fi
kill -TERM $pid; wait_for_exit $pid
hostip link del vhve0

# ---- nothing left behind: marks, the reaper, vhostctl cleanup (issue 21 item 3) ----------------
# children_of PID: the pids whose parent is PID (the host's procps, reading this machine's /proc).
children_of() { host ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' | tr '\n' ' '; }
# exited PID: no such process, or a zombie (the init of the VM may not reap an orphan at once).
exited() { [ ! -e "/proc/$1" ] || grep -q ') [ZX] ' "/proc/$1/stat" 2>/dev/null; }
# left_behind NAME...: what is left of a run: those links, /dev/tap nodes, entries of /run/vhostctl.
left_behind() {
    for n in "$@"; do ip link show "$n" >/dev/null 2>&1 && printf 'link %s; ' "$n"; done
    ls /dev/tap[0-9]* 2>/dev/null | tr '\n' ' '; ls -A /run/vhostctl 2>/dev/null | sed 's|^|/run/vhostctl/|' | tr '\n' ' '
}
# is_mark_of PID NAME: the link's alias is the creator mark of process PID.
is_mark_of() { grep -qx "vhostctl pid $1 start $(cut -d')' -f2 /proc/$1/stat | cut -d' ' -f21) pidns [0-9]*" "/sys/class/net/$2/ifalias" 2>/dev/null; }
grep -q '^nobody:' /etc/passwd 2>/dev/null || echo "nobody:x:65534:65534::/:/bin/sh" >>/etc/passwd
hostip link add vhdum2 type dummy && hostip link set vhdum2 up

# (a) kill -9 of attach and its reaper together (their own process group): the macvtap stays,
# marked; cleanup --dry-run lists it and removes nothing; cleanup removes it; nothing is left.
: >/tmp/lb1.log  # a fresh log: wait_for_attached must not read the last run's
setsid vhostctl attach --tap vhlb1 --macvtap vhdum2 --stats 0 >/tmp/lb1.log 2>&1 &
pid=$!
wait_for_attached /tmp/lb1.log
reaper=$(children_of $pid); reaper=${reaper%% *}
reaperargs=$(tr '\0' ' ' <"/proc/$reaper/cmdline" 2>/dev/null)
if is_mark_of $pid vhlb1; then marked=yes; else marked="no: '$(cat /sys/class/net/vhlb1/ifalias 2>&1)'"; fi
kill -9 -$pid; wait $pid 2>/dev/null; sleep 0.5
if [ "$marked" = yes ] && [ -n "$reaper" ] && printf '%s' "$reaperargs" | has "_reaper --pipe-fd [0-9]* --mark vhostctl pid $pid start" \
    && exited "$reaper" && ip link show vhlb1 >/dev/null 2>&1; then
    pass "a macvtap attach made carries its mark ($(cat /sys/class/net/vhlb1/ifalias)); kill -9 of attach and its reaper (pid $reaper) leaves it"
else
    fail "the macvtap's mark and the reaper" "marked $marked; reaper '$reaper' ($reaperargs); $(ip link show vhlb1 2>&1 | head -n 1); $(cat /tmp/lb1.log | tr '\n' ' ')"
fi
timeout 30 vhostctl cleanup --dry-run >/tmp/cleanup-a.txt 2>&1; dry=$?
if [ "$dry" = 0 ] && grep -q "^would remove macvtap vhlb1 (index [0-9]*): its creator, pid $pid started at tick [0-9]*, is gone" /tmp/cleanup-a.txt \
    && ip link show vhlb1 >/dev/null 2>&1; then
    pass "cleanup --dry-run lists the orphaned macvtap and removes nothing"
else
    fail "cleanup --dry-run" "exit $dry; $(cat /tmp/cleanup-a.txt | tr '\n' ' ')"
fi
timeout 30 vhostctl cleanup >/tmp/cleanup-a.txt 2>&1; status=$?
left=$(left_behind vhlb1)
if [ "$status" = 0 ] && grep -q "^removed macvtap vhlb1 (index [0-9]*): its creator, pid $pid " /tmp/cleanup-a.txt \
    && grep -q "^cleanup: 1 leftover removed" /tmp/cleanup-a.txt && [ -z "$left" ]; then
    pass "after kill -9 of both, vhostctl cleanup removes the macvtap: no link, no /dev/tap node, nothing in /run/vhostctl"
else
    fail "cleanup after kill -9 of attach and its reaper" "exit $status; left: $left; $(cat /tmp/cleanup-a.txt | tr '\n' ' ')"
fi

# (b) kill -9 of attach alone: its reaper deletes the macvtap within a second or two, then exits.
: >/tmp/lb2.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhlb2 --macvtap vhdum2 --stats 0 >/tmp/lb2.log 2>&1 &
pid=$!
wait_for_attached /tmp/lb2.log
reaper=$(children_of $pid); reaper=${reaper%% *}
kill -9 $pid; wait $pid 2>/dev/null
i=0; while [ $i -lt 30 ] && ip link show vhlb2 >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
sleep 0.2
left=$(left_behind vhlb2)
if [ -n "$reaper" ] && [ -z "$left" ] && exited "$reaper"; then
    pass "kill -9 of attach alone: its reaper (pid $reaper) deleted the macvtap within $((i / 10)).$((i % 10)) s and exited; nothing left"
else
    fail "the reaper after kill -9 of attach" "reaper '$reaper' exited: $(exited "$reaper" && echo yes || echo no); left: $left"
fi

# (c) SIGTERM with a macvtap, with and without --user: attach keeps no capability (the reaper
# deletes the macvtap), the run ends with status 0, and nothing is left.
for user in "" "--user 65534:65534"; do
    : >/tmp/lb3.log  # a fresh log: wait_for_attached must not read the last run's
    vhostctl attach --tap vhlb3 --macvtap vhdum2 $user --stats 0 >/tmp/lb3.log 2>&1 &
    pid=$!
    wait_for_attached /tmp/lb3.log
    capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/$pid/status)
    reaper=$(children_of $pid); reaper=${reaper%% *}
    kill -TERM $pid
    if wait_for_exit $pid; then wait $pid; status=$?; else status=timeout; fi
    left=$(left_behind vhlb3)
    if [ "$status" = 0 ] && [ "$capeff" = 0000000000000000 ] && [ -z "$left" ] && [ -n "$reaper" ] && exited "$reaper"; then
        pass "macvtap attach ${user:-without --user}: no capability after set-up, and SIGTERM leaves no link, node or process (reaper $reaper exited)"
    else
        fail "macvtap attach ${user:-without --user} on SIGTERM" "status $status, CapEff $capeff, reaper '$reaper', left: $left; $(tail -n 3 /tmp/lb3.log | tr '\n' ' ')"
    fi
done

# (d) tap, multiqueue tap and packet socket: no child process (no reaper is needed), a created tap
# carries the mark, and SIGTERM leaves no link, node or process.
hostip link add vhve2 type veth peer name vhve3 && ip link set vhve2 up
for backend in "--tap vhlb4 --create" "--tap vhlb5 --create --queues 2" "--packet-socket vhve2"; do
    : >/tmp/lb4.log  # a fresh log: wait_for_attached must not read the last run's
    vhostctl attach $backend --stats 0 >/tmp/lb4.log 2>&1 &
    pid=$!
    wait_for_attached /tmp/lb4.log
    kids=$(children_of $pid)
    name=$(printf '%s' "$backend" | sed -n 's/^--tap \([^ ]*\).*/\1/p')
    if [ -z "$name" ] || is_mark_of $pid "$name"; then marked=yes; else marked=no; fi
    kill -TERM $pid
    if wait_for_exit $pid; then wait $pid; status=$?; else status=timeout; fi
    left=$(left_behind vhlb4 vhlb5)
    if [ "$status" = 0 ] && [ -z "$kids" ] && [ "$marked" = yes ] && [ -z "$left" ]; then
        pass "attach $backend: no child process, ${name:+the tap marked, }SIGTERM leaves no link, node or process"
    else
        fail "attach $backend leaves nothing" "status $status, children '$kids', marked $marked, left: $left"
    fi
done
hostip link del vhve2

# (e) a set-up that fails after the macvtap was made and opened (a feature the kernel lacks):
# the macvtap is gone before the error is reported, and the reaper has exited.
timeout 30 vhostctl attach --tap vhlb6 --macvtap vhdum2 --features VERSION_1 RING_PACKED --trace >/dev/null 2>/tmp/lb6.err; status=$?
left=$(left_behind vhlb6)
reapers=$(host ps -eo pid,ppid,stat,args 2>/dev/null | grep "[_]reaper.*--link vhlb6" | tr '\n' ';')
if [ "$status" = 69 ] && grep -q "^trace: open(/dev/tap[0-9]*)" /tmp/lb6.err && tail -n 1 /tmp/lb6.err | has "does not offer F_RING_PACKED" \
    && [ -z "$left" ] && [ -z "$reapers" ]; then
    pass "a set-up failing after the macvtap was opened (exit 69) leaves no link, node or reaper"
else
    fail "a failed set-up with a macvtap" "exit $status; left: $left; reapers left: '$reapers'; $(grep -v '^trace' /tmp/lb6.err | head -c 300)"
fi

# (f) cleanup never removes a link whose creator runs, an unmarked macvtap, or a --keep tap.
: >/tmp/lb7.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhlb7 --macvtap vhdum2 --stats 0 >/tmp/lb7.log 2>&1 &
pid=$!
wait_for_attached /tmp/lb7.log
hostip link add vhlb8 link vhdum2 type macvtap
timeout 30 vhostctl attach --tap vhkeep1 --create --keep --duration 0.3 --stats 0 >/dev/null 2>&1
timeout 30 vhostctl cleanup >/tmp/cleanup-f.txt 2>&1; status=$?
if [ "$status" = 0 ] && ip link show vhlb7 >/dev/null 2>&1 && ip link show vhlb8 >/dev/null 2>&1 && ip link show vhkeep1 >/dev/null 2>&1 \
    && grep -q "^kept macvtap vhlb7: its creator (pid $pid) is running" /tmp/cleanup-f.txt && ! grep -q "vhlb8\|vhkeep1" /tmp/cleanup-f.txt \
    && [ -z "$(cat /sys/class/net/vhkeep1/ifalias 2>/dev/null)" ]; then
    pass "cleanup keeps the macvtap of a running attach, an unmarked macvtap (ip link add) and a --keep tap (unmarked)"
else
    fail "cleanup spares what is in use or not ours" "exit $status; $(cat /tmp/cleanup-f.txt | tr '\n' ' '); $(ip -o link show 2>&1 | grep -o 'vhlb[78]\|vhkeep1' | tr '\n' ' ')"
fi
kill -TERM $pid; wait_for_exit $pid
hostip link del vhlb8; hostip link del vhkeep1; hostip link del vhdum2
expect_error "cleanup without root" 77 "cleanup needs root or CAP_NET_ADMIN" su -s /bin/sh nobody -c "vhostctl cleanup"
# After every run above has ended, no reaper lives on (a zombie of a killed one aside).
sleep 1
lingering=$(host ps -eo pid,ppid,stat,args 2>/dev/null | awk '$3 !~ /^Z/' | grep "[v]hostctl _reaper" | tr '\n' ';')
if [ -z "$lingering" ]; then pass "no reaper outlives the attach runs of this block"; else fail "a reaper outlived its attach" "$lingering"; fi

# ---- teardown mid-traffic: SIGINT, SIGTERM, SIGHUP stop cleanly; after kill -9 the name is free --
# Each run writes a pcap and a recording: complete and mode 0600 after each signal; after kill -9
# nothing carries the final name.
net=20
for sig in INT TERM HUP KILL; do
    # A subnet of its own per signal: nothing the host kept from the run before (a neighbour
    # entry, a route on the interface that is going away) can stand in the way.
    net=$((net + 1))
    : >/tmp/sig.log  # a fresh log: wait_for_attached must not read the last run's
    vhostctl attach --tap vhsig0 --create --ip 10.0.$net.2/24 --stats 0 --pcap /tmp/sig-$sig.pcap --record /tmp/sig-$sig.vhost >/tmp/sig.log 2>&1 &
    pid=$!
    wait_for_attached /tmp/sig.log
    ip addr add 10.0.$net.1/24 dev vhsig0; ip link set vhsig0 up
    ping -A -c 100000 -W 1 10.0.$net.2 >/tmp/sigping.log 2>&1 &
    ppid=$!
    # Traffic first: wait for the first reply (ARP and the first echo), then let it run a while.
    i=0; while [ $i -lt 100 ] && ! grep -q "bytes from" /tmp/sigping.log; do sleep 0.1; i=$((i + 1)); done
    sleep 1
    replies=$(grep -c "bytes from" /tmp/sigping.log)
    kill -$sig $pid
    (sleep 15; kill -9 $pid 2>/dev/null) & watchdog=$!
    wait $pid; status=$?
    kill $watchdog 2>/dev/null
    kill $ppid 2>/dev/null; wait $ppid 2>/dev/null
    left=no; ip link show vhsig0 >/dev/null 2>&1 && left=yes
    if [ $sig = KILL ]; then
        # The kernel closes everything: the same name attaches again at once.
        if [ $left = no ] && [ "$replies" -gt 0 ] && timeout 30 vhostctl attach --tap vhsig0 --create --duration 0.5 --stats 0 >/dev/null 2>&1; then
            pass "kill -9 in the middle of traffic ($replies replies so far) leaves no tap, and a new run on the same name works"
        else
            fail "kill -9 mid-traffic" "tap left: $left, replies $replies"
        fi
        if [ ! -e /tmp/sig-KILL.pcap ] && [ ! -e /tmp/sig-KILL.vhost ]; then
            pass "kill -9: no partial pcap or recording under the final names ($(leftovers /tmp/sig-KILL.pcap) temporary pcap left, as a kill leaves)"
        else
            fail "kill -9 leaves a partial file under the final name" "$(ls -la /tmp/sig-KILL.* 2>&1 | tr '\n' ' ')"
        fi
        rm -f /tmp/.sig-KILL.*
    elif [ $left = no ] && [ $status -eq 0 ] && [ "$replies" -gt 0 ] && grep -q "stopped on signal" /tmp/sig.log; then
        pass "SIG$sig in the middle of traffic ($replies replies so far) stops cleanly (exit 0, backends detached) and leaves no tap"
    else
        fail "SIG$sig mid-traffic" "exit $status, tap left: $left, replies $replies: $(tail -n 3 /tmp/sig.log | tr '\n' ' '); ping: $(head -c 300 /tmp/sigping.log | tr '\n' ' ')"
    fi
    # The pcap's check comes after the SIGPIPE run below: one tshark reads all four captures.
    [ $sig = KILL ] || eval "replies_$sig=$replies"
done

# A closed standard output (`| head -1`): SIGPIPE stops attach like the others; the pcap and the
# recording are complete and renamed, the tap removed. The first counter line (at 4 s) is the
# first write after head has gone.
rm -f /tmp/pipe.status
( vhostctl attach --tap vhpipe0 --create --ip 10.0.31.2/24 --pcap /tmp/pipe.pcap --record /tmp/pipe.vhost --stats 4 2>/tmp/pipe.err; echo $? >/tmp/pipe.status ) | head -n 1 >/tmp/pipe.first &
wait_for_tap vhpipe0; ip addr add 10.0.31.1/24 dev vhpipe0; ip link set vhpipe0 up
ping -A -c 3 -W 2 10.0.31.2 >/tmp/pipeping.txt 2>&1
i=0; while [ $i -lt 150 ] && [ ! -s /tmp/pipe.status ]; do sleep 0.1; i=$((i + 1)); done
# The captures of SIGINT, SIGTERM, SIGHUP and SIGPIPE, read by one tshark: each must be complete
# (capinfos reads it to the end: a cut-short file is named in the .err) and hold an echo reply for
# every reply ping had seen before the signal.
capture_fields /tmp/teardown.fields /tmp/sig-INT.pcap /tmp/sig-TERM.pcap /tmp/sig-HUP.pcap /tmp/pipe.pcap -- icmp.type
position=0
for sig in INT TERM HUP; do
    eval "replies=\$replies_$sig"
    captured=$(capture_count /tmp/teardown.fields $position '$2 == "0"')
    position=$((position + 1))
    if [ "$(mode_owner /tmp/sig-$sig.pcap)" = "600 65534" ] && [ "$(mode_owner /tmp/sig-$sig.vhost)" = "600 65534" ] && ! grep -q "sig-$sig.pcap" /tmp/teardown.fields.err \
        && [ "$captured" -ge "$replies" ] && [ "$(leftovers /tmp/sig-$sig.pcap)" = 0 ] && [ "$(leftovers /tmp/sig-$sig.vhost)" = 0 ] \
        && timeout 30 vhostctl script check /tmp/sig-$sig.vhost 2>&1 | has "well formed"; then
        pass "SIG$sig: the pcap ($captured echo replies, ping saw $replies) and the recording are complete, mode 0600, owned by nobody, no temporary file left"
    else
        fail "SIG$sig: pcap and recording complete and 0600" "pcap $(mode_owner /tmp/sig-$sig.pcap), record $(mode_owner /tmp/sig-$sig.vhost), $captured replies captured of $replies, leftovers $(leftovers /tmp/sig-$sig.pcap)/$(leftovers /tmp/sig-$sig.vhost), capinfos/tshark: $(head -c 300 /tmp/teardown.fields.err)"
    fi
done
captured=$(capture_count /tmp/teardown.fields 3 '$2 == "0"')
if [ "$(cat /tmp/pipe.status 2>/dev/null)" = 0 ] && grep -q "^attached to vhpipe0" /tmp/pipe.first && ! ip link show vhpipe0 >/dev/null 2>&1 \
    && [ "$captured" -ge 3 ] && ! grep -q "pipe.pcap" /tmp/teardown.fields.err && [ "$(mode_owner /tmp/pipe.pcap)" = "600 65534" ] && [ "$(mode_owner /tmp/pipe.vhost)" = "600 65534" ] \
    && grep -q "^recorded [0-9]* lines to /tmp/pipe.vhost" /tmp/pipe.err && [ "$(leftovers /tmp/pipe.pcap)" = 0 ] \
    && timeout 30 vhostctl script check /tmp/pipe.vhost 2>&1 | has "well formed"; then
    pass "attach | head -1: SIGPIPE stops it (exit 0), the tap is removed, the pcap ($captured echo replies) and the recording are complete and 0600"
else
    fail "attach | head -1" "status '$(cat /tmp/pipe.status 2>/dev/null)', first '$(cat /tmp/pipe.first)', tap $(ip link show vhpipe0 >/dev/null 2>&1 && echo left || echo gone), $captured replies, pcap $(mode_owner /tmp/pipe.pcap), record $(mode_owner /tmp/pipe.vhost), $(cat /tmp/pipe.err | tr '\n' ' ')"
fi

# ---- least privilege: without options attach runs as nobody, with no capability and no-new-privs --
vhostctl attach --tap vhcap0 --create --ip 10.0.9.2/24 --stats 0 --verbose --pcap /tmp/cap.pcap --record /tmp/cap.vhost >/tmp/cap.log 2>/tmp/cap.err &
pid=$!
wait_for_attached /tmp/cap.log
ip addr add 10.0.9.1/24 dev vhcap0; ip link set vhcap0 up
uids=$(status_field $pid Uid); capeff=$(status_field $pid CapEff); capprm=$(status_field $pid CapPrm); capinh=$(status_field $pid CapInh)
capbnd=$(status_field $pid CapBnd); capamb=$(status_field $pid CapAmb); nnp=$(status_field $pid NoNewPrivs)
if [ "$uids" = "65534 65534 65534 65534" ] && [ "$capeff$capprm$capinh$capamb" = 0000000000000000000000000000000000000000000000000000000000000000 ] \
    && [ "$capbnd" = 0000000000000000 ] && [ "$nnp" = 1 ] && ping -A -c 3 -W 3 10.0.9.2 >/dev/null 2>&1 \
    && grep -q "^running as nobody (uid 65534, gid 65534): dropped every capability" /tmp/cap.log \
    && grep -q "^credentials: uid 65534/65534/65534/65534 gid 65534/65534/65534/65534 .*CapEff 0000000000000000 CapBnd 0000000000000000 CapAmb 0000000000000000 NoNewPrivs 1$" /tmp/cap.log; then
    pass "attach without options runs as nobody (Uid $uids), CapEff/CapPrm/CapInh/CapAmb/CapBnd 0, NoNewPrivs 1, says so (--verbose: $(grep '^credentials:' /tmp/cap.log | cut -c1-60)…), and answers ping"
else
    fail "least privilege after set-up" "Uid '$uids' CapEff $capeff CapPrm $capprm CapInh $capinh CapBnd $capbnd CapAmb $capamb NoNewPrivs $nnp; $(cat /tmp/cap.log | tr '\n' ' ')"
fi
kill -TERM $pid; if wait_for_exit $pid; then wait $pid; status=$?; else status=timeout; fi
if [ "$status" = 0 ] && ! ip link show vhcap0 >/dev/null 2>&1; then pass "SIGTERM as nobody: clean stop, the tap is removed"; else fail "the tap is removed at exit without privileges" "status $status"; fi
capture_fields /tmp/cap.fields /tmp/cap.pcap -- icmp.type ip.src ip.dst
requests=$(capture_count /tmp/cap.fields 0 '$2 == "8" && $4 == "10.0.9.2"')
replies=$(capture_count /tmp/cap.fields 0 '$2 == "0" && $3 == "10.0.9.2"')
if [ "$(mode_owner /tmp/cap.pcap)" = "600 65534" ] && [ "$requests" -ge 3 ] && [ "$replies" -ge 3 ] && [ "$(mode_owner /tmp/cap.vhost)" = "600 65534" ] \
    && timeout 30 vhostctl script check /tmp/cap.vhost 2>&1 | has "well formed"; then
    pass "its pcap ($requests echo requests, $replies replies) and recording are complete, mode 0600, owned by nobody"
else
    fail "pcap and recording as nobody" "pcap $(mode_owner /tmp/cap.pcap) with $requests requests, $replies replies; record $(mode_owner /tmp/cap.vhost); $(cat /tmp/cap.err | tr '\n' ' ')"
fi
# A symbolic link at an output path is refused before anything is set up, even with --force; its target is untouched.
echo keep >/tmp/victim.txt; ln -sf /tmp/victim.txt /tmp/planted.pcap
expect_error "a symbolic link at the --pcap path is refused" 73 "is a symbolic link" vhostctl attach --tap vhsym0 --create --pcap /tmp/planted.pcap
expect_error "a symbolic link at the --record path is refused even with --force" 73 "is a symbolic link" vhostctl attach --tap vhsym0 --create --record /tmp/planted.pcap --force
if [ "$(cat /tmp/victim.txt)" = keep ] && [ "$(mode_owner /tmp/victim.txt | cut -d' ' -f2)" = 0 ] && ! ip link show vhsym0 >/dev/null 2>&1; then
    pass "the link's target is untouched and no tap was made"
else
    fail "a refused symbolic link leaves its target and nothing else" "$(cat /tmp/victim.txt); $(ip link show vhsym0 2>&1 | head -n 1)"
fi
expect_error "an existing output file is refused without --force" 73 "already exists; pass --force" vhostctl attach --tap vhsym0 --create --pcap /tmp/victim.txt
hostip tuntap add dev vhown0 mode tap user 1000
expect_error "a persistent tap owned by another user is not taken over" 77 "owned by uid 1000" vhostctl attach --tap vhown0
if timeout 30 vhostctl attach --tap vhown0 --take-over-tap --duration 0.5 --stats 0 >/tmp/force.log 2>&1; then pass "--take-over-tap attaches to it"; else fail "--take-over-tap" "$(cat /tmp/force.log | tr '\n' ' ')"; fi
hostip link del vhown0

# ---- --queues 4: a multi-queue tap, one vhost-net fd per queue pair -----------------------------
: >/tmp/mq.log  # a fresh log: wait_for_attached must not read the last run's
vhostctl attach --tap vhmq0 --create --queue-pairs 4 --ip 10.0.2.2/24 --stats 0 >/tmp/mq.log 2>&1 &
pid=$!
wait_for_attached /tmp/mq.log
ip addr add 10.0.2.1/24 dev vhmq0; ip link set vhmq0 up
fds=$(ls -l /proc/$pid/fd 2>/dev/null | grep -c vhost-net)
if ping -A -c 3 -W 3 10.0.2.2 >/dev/null 2>&1 && [ "$fds" = 4 ] && [ -d /sys/class/net/vhmq0/queues/tx-3 ]; then
    pass "--queues 4 opens 4 vhost-net fds on a 4-queue tap and answers ping"
else
    fail "--queues 4" "vhost-net fds $fds; $(ls /sys/class/net/vhmq0/queues 2>&1 | tr '\n' ' '); $(cat /tmp/mq.log)"
fi
kill -TERM $pid; wait_for_exit $pid

# ---- a VM-like datapath from the command line: every datapath option at once -------------------
echo 16 >/proc/sys/vm/nr_hugepages
vhostctl attach --tap vhfull0 --create --ip 10.0.3.2/24 --udp-echo 7 --stats 0 --trace \
    --features VERSION_1 EVENT_IDX MRG_RXBUF INDIRECT_DESC --descriptors indirect --memory belowAndAbove4GiB \
    --hugepages --notify poll --busyloop-timeout 20 --dirty-log --offloads csum tso4 tso6 --queue-size 512 >/tmp/full.log 2>&1 &
pid=$!
wait_for_attached /tmp/full.log
ip addr add 10.0.3.1/24 dev vhfull0; ip link set vhfull0 up
reply=$(host bash -c 'exec 3<>/dev/udp/10.0.3.2/7; printf "all-options" >&3; IFS= read -r -t 5 -N 11 r <&3; printf "%s" "$r"' 2>&1)
if ping -A -c 2 -W 3 10.0.3.2 >/dev/null 2>&1 && [ "$reply" = "all-options" ]; then
    pass "attach with indirect descriptors, memory around a hole, hugepages, poll mode, busyloop, dirty log, offloads answers ping and UDP"
else
    fail "attach with every datapath option" "udp '$reply'; $(cat /tmp/full.log)"
fi
# Each option took effect, seen in what the kernel was told (--trace) or in what the process holds.
hugefree=$(awk '/^HugePages_Free/ {print $2}' /proc/meminfo)
ticks_before=$(awk '{print $14 + $15}' /proc/$pid/stat); sleep 1; ticks_after=$(awk '{print $14 + $15}' /proc/$pid/stat)
missing=""
# Every SET_FEATURES the run made (the dirty log adds LOG_ALL in a later one).
setfeat=$(grep 'trace: VHOST_SET_FEATURES(' /tmp/full.log | tr '\n' ' ')
for name in F_VERSION_1 F_EVENT_IDX NET_F_MRG_RXBUF F_INDIRECT_DESC VHOST_F_LOG_ALL; do
    case $setfeat in *"$name"*) ;; *) missing="$missing feature:$name" ;; esac
done
grep -q 'trace: VHOST_SET_MEM_TABLE(nregions: 2,.*gpa: 0x100000000' /tmp/full.log || missing="$missing memory-around-the-hole"
grep -q 'trace: VHOST_SET_VRING_BUSYLOOP_TIMEOUT(index: 0, num: 20)' /tmp/full.log && grep -q 'trace: VHOST_SET_VRING_BUSYLOOP_TIMEOUT(index: 1, num: 20)' /tmp/full.log || missing="$missing busyloop"
grep -q 'trace: VHOST_SET_LOG_BASE(' /tmp/full.log || missing="$missing dirty-log"
grep -q 'trace: TUNSETOFFLOAD(0x7)' /tmp/full.log || missing="$missing offloads"
grep -q 'trace: VHOST_SET_VRING_NUM(index: 0, num: 512)' /tmp/full.log || missing="$missing queue-size"
[ "$hugefree" -lt 16 ] || missing="$missing hugepages(free $hugefree of 16)"
# Poll mode spins: the process uses most of a CPU while idle (interrupt mode would sleep).
[ $((ticks_after - ticks_before)) -ge 30 ] || missing="$missing poll-mode($((ticks_after - ticks_before)) ticks in 1 s)"
if [ -z "$missing" ]; then
    pass "every option took effect: features, two regions around the hole, busyloop, log base, offloads, ring size in --trace; huge pages in use; poll mode spinning ($((ticks_after - ticks_before)) ticks in 1 s)"
else
    fail "every option took effect" "missing:$missing; $(grep -E 'trace: (VHOST_SET_FEATURES|VHOST_SET_MEM_TABLE|TUNSETOFFLOAD)' /tmp/full.log | head -3)"
fi
kill -TERM $pid; wait_for_exit $pid
echo 0 >/proc/sys/vm/nr_hugepages

# ---- bench: configurations side by side, with medians, ratios and a latency histogram -----------
if timeout 120 vhostctl bench --trials 1 --seconds 0.2 --latency 50 --configs event-idx poll indirect --json >/tmp/bench.json 2>/tmp/bench.err; then
    ok=$(host python3 -c 'import json,sys; d=json.load(open("/tmp/bench.json")); c=d["configs"]; print(len(c)==3 and all(x["tx_pps_median"]>0 and x["rx_pps_median"]>0 for x in c) and c[0]["tx_ratio"]=="1.000" and d["rtt_ns"]["count"]==50 and 0<d["rtt_ns"]["p50"]<=d["rtt_ns"]["p99"])' 2>&1)
    if [ "$ok" = True ]; then pass "bench --json: 3 configurations measured with ratios, 50 round trips in the histogram"; else fail "bench --json" "$ok: $(cat /tmp/bench.json)"; fi
else
    fail "bench runs" "$(cat /tmp/bench.err)"
fi
if ip link show vhbench0 >/dev/null 2>&1; then fail "bench removes its tap"; else pass "bench removes its tap"; fi

# ---- bench backends: vhost against the userspace tap path; JSON, CSV, SVG; pktgen; XDP drop -----
if timeout 600 vhostctl bench backends --scenario tx --backend vhost,tap --frame-size 64,1500 --trials 2 --seconds 0.3 --warmup 0.1 \
        --json-file /tmp/b.json --csv /tmp/b.csv --svg /tmp/b.svg >/tmp/bb.txt 2>&1; then
    ok=$(host python3 -c '
import json
d = json.load(open("/tmp/b.json")); r = d["results"]
print(len(r) == 4 and {(x["backend"], x["frame_size"]) for x in r} == {("vhost", 64), ("vhost", 1500), ("tap", 64), ("tap", 1500)}
      and all(x["pps"]["median"] > 0 and x["driver_ns_per_frame_median"] > 0 and len(x["trials"]) == 2 for x in r)
      and all(t["tx_sent"] > 0 and t["tx_counted_by_tap"] == t["tx_sent"] for x in r for t in x["trials"])
      and all((x.get("worker_ns_per_frame_median") is not None) == (x["backend"] == "vhost") for x in r)
      and d["environment"]["kernel"] != "" and d["method"]["interleaved"])' 2>&1)
    rows=$(($(wc -l </tmp/b.csv) - 1))
    if [ "$ok" = True ] && [ "$rows" = 8 ] && host rsvg-convert /tmp/b.svg -o /tmp/b.png 2>/tmp/rsvg.err && [ "$(head -c 4 /tmp/b.png | od -An -c | tr -d ' ')" = "211PNG" ]; then
        pass "bench backends tx vhost,tap × 64,1500: JSON parses, every TX frame counted by the tap, CPU per frame of driver (and worker for vhost), 8 CSV rows, SVG renders to PNG"
    else
        fail "bench backends report" "$ok; csv rows $rows; $(cat /tmp/rsvg.err 2>/dev/null); $(tail -12 /tmp/bb.txt)"
    fi
else
    fail "bench backends runs" "$(tail -20 /tmp/bb.txt)"
fi
if timeout 300 vhostctl bench backends --scenario rx --backend vhost,tap --frame-size 64 --trials 1 --seconds 0.5 --warmup 0 --json-file /tmp/r.json >/tmp/br.txt 2>&1; then
    ok=$(host python3 -c '
import json
d = json.load(open("/tmp/r.json")); r = d["results"]
print(d["environment"]["rx_source"] == "pktgen" and all(x["pps"]["median"] > 0 and x["trials"][0]["rx_source"] == "pktgen" and x["trials"][0]["rx_received"] >= 1000
      and x["trials"][0]["rx_tap_passed"] >= x["trials"][0]["rx_received"] for x in r))' 2>&1)
    if [ "$ok" = True ]; then pass "bench backends rx: pktgen is the source, pps reported for vhost and tap ($(grep -E '^rx ' /tmp/br.txt | awk '{print $2 ": " $8 " pps"}' | tr '\n' ' '))"; else fail "bench backends rx with pktgen" "$ok; $(tail -8 /tmp/br.txt)"; fi
else
    fail "bench backends rx runs" "$(tail -20 /tmp/br.txt)"
fi
# Whose virtio-net header (--net-header): vhost adds it (VHOST_NET_F_VIRTIO_NET_HDR) and the tap is
# opened without IFF_VNET_HDR (0x4000), or the tap carries it. RX sweeps both; TX takes the default,
# which is vhost's only from Linux 6.9 (before it the batched TX path reads a stale header:
# docs/kernel-findings.md). The tap's flags are the kernel's (/sys/class/net/TAP/tun_flags),
# sampled while the runs go; every TX frame must be counted by the tap and pktgen's frames arrive.
nh_tx=vhost; case $(uname -r) in [1-5].*|6.[0-8].*) nh_tx=tap ;; esac
{ vhostctl bench backends --scenario rx --backend vhost --net-header vhost,tap --frame-size 64 --trials 1 --seconds 0.6 --warmup 0 --json-file /tmp/nh.json \
    && vhostctl bench backends --scenario tx --backend vhost --frame-size 64 --trials 1 --seconds 0.6 --warmup 0 --json-file /tmp/nht.json; } >/tmp/bnh.txt 2>&1 &
bench_pid=$!
: >/tmp/nh-flags
while kill -0 $bench_pid 2>/dev/null; do cat /sys/class/net/vhbench0/tun_flags >>/tmp/nh-flags 2>/dev/null; sleep 0.05; done
if wait $bench_pid; then
    flags=$(sort -u /tmp/nh-flags | tr '\n' ' ')
    with=0 without=0
    for f in $flags; do if [ $((f & 0x4000)) -ne 0 ]; then with=1; else without=1; fi; done
    ok=$(host python3 -c '
import json, sys
r = json.load(open("/tmp/nh.json"))["results"]; t = json.load(open("/tmp/nht.json"))["results"]
print(sorted(x["net_header"] for x in r) == ["tap", "vhost"] and [x["net_header"] for x in t] == [sys.argv[1]]
      and all(y["rx_received"] >= 1000 and y["rx_tap_passed"] >= y["rx_received"] for x in r for y in x["trials"])
      and all(y["tx_sent"] > 0 and y["tx_counted_by_tap"] == y["tx_sent"] for x in t for y in x["trials"]))' $nh_tx 2>&1)
    if [ "$ok" = True ] && [ $with = 1 ] && [ $without = 1 ]; then
        pass "bench backends --net-header: RX with the tap without IFF_VNET_HDR and with it (tun_flags $flags), pktgen's frames received either way; TX by default with the header of the $nh_tx on $(uname -r), every frame counted by the tap"
    else
        fail "bench backends --net-header" "$ok; tun_flags seen: $flags; TX expected the $nh_tx's header; $(tail -8 /tmp/bnh.txt)"
    fi
else
    fail "bench backends --net-header runs" "$(tail -20 /tmp/bnh.txt)"
fi
if timeout 300 vhostctl bench backends --scenario tx --backend vhost,tap --frame-size 64 --trials 1 --seconds 0.3 --warmup 0 --xdp-drop --json-file /tmp/x.json >/tmp/bx.txt 2>&1; then
    ok=$(host python3 -c '
import json
r = json.load(open("/tmp/x.json"))["results"]
print(json.load(open("/tmp/x.json"))["method"]["xdp_drop"] and all(t["tx_sent"] > 0 and t["tx_dropped_at_tap"] == t["tx_sent"] == t["tx_counted_by_tap"] for x in r for t in x["trials"]))' 2>&1)
    if [ "$ok" = True ]; then pass "bench backends --xdp-drop: every TX frame dropped by the XDP program on the tap (rx_dropped = sent), for vhost and tap"; else fail "bench backends --xdp-drop" "$ok; $(tail -8 /tmp/bx.txt)"; fi
else
    fail "bench backends --xdp-drop runs" "$(tail -20 /tmp/bx.txt)"
fi
# Queue pairs: each pair on its own queue of a multiqueue tap, driven by its own thread. The tap
# counts every TX frame of both queues; pktgen's flows reach both RX queues.
if timeout 600 vhostctl bench backends --scenario tx,rx --backend vhost,tap --frame-size 64 --queue-pairs 1,2 --trials 1 --seconds 0.4 --warmup 0 \
        --json-file /tmp/q.json --svg /tmp/q.svg >/tmp/bq.txt 2>&1; then
    ok=$(host python3 -c '
import json
r = json.load(open("/tmp/q.json"))["results"]
two = [x for x in r if x["queue_pairs"] == 2]
print(len(r) == 8 and len(two) == 4
      and all(t["tx_sent"] > 0 and t["tx_counted_by_tap"] == t["tx_sent"] and len(t["queue_tx_sent"]) == 2 and min(t["queue_tx_sent"]) > 0 for x in two if x["scenario"] == "tx" for t in x["trials"])
      and all(len(t["queue_rx_received"]) == 2 and min(t["queue_rx_received"]) > 0 and t["rx_tap_passed"] >= t["rx_received"] for x in two if x["scenario"] == "rx" for t in x["trials"]))' 2>&1)
    if [ "$ok" = True ] && grep -q "scaling with queue pairs" /tmp/q.svg && host rsvg-convert /tmp/q.svg -o /tmp/q.png 2>/tmp/rsvg.err; then
        pass "bench backends --queue-pairs 1,2: both queues of vhost and tap move frames, the tap counts every TX frame, pktgen's queue map reaches both RX queues; the scaling chart renders"
    else
        fail "bench backends --queue-pairs" "$ok; $(cat /tmp/rsvg.err 2>/dev/null); $(tail -12 /tmp/bq.txt)"
    fi
else
    fail "bench backends --queue-pairs runs" "$(tail -20 /tmp/bq.txt)"
fi
# 64 KiB TSO: TCPv4 superframes with a GSO header; the tap counts each whole (rx_bytes = 65536 a
# frame), and a PACKET_VNET_HDR socket on the tap sees a first one as one GSO packet (gso_type
# TCPV4, gso_size 1448): an oversized frame without GSO would be counted the same way.
if timeout 300 vhostctl bench backends --scenario tx --backend vhost,tap --frame-size 1500,64k --trials 1 --seconds 0.3 --warmup 0 --json-file /tmp/t.json >/tmp/bt.txt 2>&1; then
    ok=$(host python3 -c '
import json
r = json.load(open("/tmp/t.json"))["results"]
big = [x for x in r if x["frame_size"] == 65536]
print(len(r) == 4 and len(big) == 2 and all(x["tso"] and x["gbps_median"] > 0 for x in big) and not any(x["tso"] for x in r if x["frame_size"] == 1500)
      and all(t.get("tso_verified") is True for x in big for t in x["trials"])
      and all(t["tx_sent"] > 0 and t["tx_counted_by_tap"] == t["tx_sent"] and t["tx_bytes_counted_by_tap"] == x["frame_size"] * t["tx_sent"] for x in r for t in x["trials"]),
      " ".join("%s %d B: %.2f Gbit/s" % (x["backend"], x["frame_size"], x["gbps_median"]) for x in r))' 2>&1)
    if [ "${ok%% *}" = True ]; then pass "bench backends --frame-size 1500,64k: TSO superframes through vhost and tap, each counted whole by the tap (${ok#True })"; else fail "bench backends 64k TSO" "$ok; $(tail -8 /tmp/bt.txt)"; fi
else
    fail "bench backends 64k TSO runs" "$(tail -20 /tmp/bt.txt)"
fi
expect_error "bench backends refuses TSO frame sizes outside tx, naming the scenario" 64 "only the tx scenario sends" \
    vhostctl bench backends --scenario rx --frame-size 64k
expect_error "bench backends refuses TSO frame sizes with --xdp-drop, which would drop them uncounted" 64 "without counting them" \
    vhostctl bench backends --scenario tx --frame-size 64k --xdp-drop
# Latency: the host's own stack counts what it answered (ICMP echo replies, UDP datagrams in).
snmp() { awk -v key="$1:" -v name="$2" '$1 == key { if (!seen) { for (i = 2; i <= NF; i++) col[$i] = i; seen = 1 } else { print $col[name]; exit } }' /proc/net/snmp; }
echo_replies=$(snmp Icmp OutEchoReps); udp_in=$(snmp Udp InDatagrams)
if timeout 300 vhostctl bench backends --scenario latency --backend vhost,tap --frame-size 64 --trials 2 --seconds 0.5 --warmup 0 \
        --json-file /tmp/l.json --svg /tmp/l.svg >/tmp/bl.txt 2>&1; then
    echo_replies=$(($(snmp Icmp OutEchoReps) - echo_replies)); udp_in=$(($(snmp Udp InDatagrams) - udp_in))
    ok=$(host python3 -c '
import json, sys
r = json.load(open("/tmp/l.json"))["results"]
pings = sum(t["latency_ns"]["completed"] for x in r if x["scenario"] == "ping" for t in x["trials"])
udps = sum(t["latency_ns"]["completed"] for x in r if x["scenario"] == "udp-rr" for t in x["trials"])
l = [x["latency_ns"] for x in r]
print({(x["scenario"], x["backend"]) for x in r} == {(s, b) for s in ("ping", "udp-rr") for b in ("vhost", "tap")}
      and all(y["count"] > 0 and 0 < y["p50"] <= y["p99"] <= y["p99_9"] <= y["max"] for y in l)
      and all(x["driver_ns_per_frame_median"] > 0 for x in r)
      and 0 < pings <= int(sys.argv[1]) and 0 < udps <= int(sys.argv[2]), pings, udps)' "$echo_replies" "$udp_in" 2>&1)
    if [ "${ok%% *}" = True ] && host rsvg-convert /tmp/l.svg -o /tmp/l.png 2>/tmp/rsvg.err && grep -q 'round-trip latency, cumulative' /tmp/l.svg; then
        pass "bench backends latency (ping, udp-rr) × vhost,tap: p50 ≤ p99 ≤ p99.9 ≤ max; the host answered every round trip counted ($echo_replies ICMP echo replies and $udp_in UDP datagrams in /proc/net/snmp; JSON: ${ok#True }); CDF chart renders"
    else
        fail "bench backends latency" "$ok; host saw $echo_replies echo replies, $udp_in UDP datagrams; $(cat /tmp/rsvg.err 2>/dev/null); $(tail -8 /tmp/bl.txt)"
    fi
else
    fail "bench backends latency runs" "$(tail -20 /tmp/bl.txt)"
fi
if ip link show vhbench0 >/dev/null 2>&1; then fail "bench backends removes its tap"; else pass "bench backends removes its tap"; fi

# ---- script: QEMU's sequence from a file, each ioctl printed; kernel rules as expectations -------
if timeout 60 vhostctl script ${EXAMPLES:-/opt/bin}/qemu-vhost-net-start.vhost >/tmp/script.txt 2>&1 \
    && grep -q "VHOST_NET_SET_BACKEND(index: 1, fd: " /tmp/script.txt && grep -q "= -EBUSY, EBUSY as expected" /tmp/script.txt \
    && grep -q "= -EINVAL, EINVAL as expected" /tmp/script.txt && grep -q "every command did what was expected" /tmp/script.txt \
    && ! ip link show vhscript0 >/dev/null 2>&1; then
    pass "script (the old spelling, no 'run') runs QEMU's vhost_net_start sequence from Examples/, EBUSY and EINVAL as expected ($(grep -c 'VHOST_' /tmp/script.txt) ioctl lines)"
else
    fail "script: the example" "$(cat /tmp/script.txt)"
fi
printf 'open\nset-owner\nset-vring-num 0 256\nset-backend 0 -1\ntap vhscr1\nset-backend 0 tap\n' >/tmp/efault.vhost
expect_error "script: a backend before ring addresses is EFAULT, reported, not a crash" 1 "EFAULT" vhostctl script run /tmp/efault.vhost
printf 'tap vhbad0\nopen\nset-owner\nset-vring-nmu 0 256\nexpect ENOPE\nset-owner\n' >/tmp/bad.vhost
timeout 30 vhostctl script run /tmp/bad.vhost >/tmp/out.txt 2>/tmp/err.txt; got=$?
if [ "$got" = 64 ] && grep -q "bad.vhost:4:1: expected a command, found 'set-vring-nmu'; did you mean set-vring-num?" /tmp/err.txt \
    && grep -q "bad.vhost:5:8: expected ok or an errno name after expect, found 'ENOPE'" /tmp/err.txt && [ "$(wc -l </tmp/err.txt)" = 3 ] \
    && [ ! -s /tmp/out.txt ] && ! ip link show vhbad0 >/dev/null 2>&1; then
    pass "script run: malformed, each problem at file:line:column with what was expected and found, nothing run (no tap made, exit 64)"
else
    fail "script: malformed" "exit $got; $(cat /tmp/err.txt) $(cat /tmp/out.txt)"
fi
timeout 30 vhostctl script check /tmp/bad.vhost >/tmp/out.txt 2>/tmp/err.txt; got=$?
if [ "$got" = 64 ] && grep -q "bad.vhost:4:1:" /tmp/err.txt && ! ip link show vhbad0 >/dev/null 2>&1; then
    pass "script check: exits 64 on the malformed script, same messages, no kernel touched"
else
    fail "script check on a malformed script" "exit $got; $(cat /tmp/err.txt)"
fi
if timeout 30 vhostctl script check ${EXAMPLES:-/opt/bin}/qemu-vhost-net-start.vhost >/tmp/out.txt 2>&1 && grep -q "well formed" /tmp/out.txt; then
    pass "script check: the example is well formed (exit 0)"
else
    fail "script check on the example" "$(cat /tmp/out.txt)"
fi
printf 'open\nset-owner\nexpect EINVAL\nset-vring-num 0 256\n' >/tmp/unmet.vhost
expect_error "script: an unmet expectation stops with the line" 1 "unmet.vhost:4:1: expected EINVAL" vhostctl script run /tmp/unmet.vhost
expect_error "script: missing file (EX_NOINPUT)" 66 "cannot read script" vhostctl script run /tmp/no-such.vhost

# ---- scripts as input: a script's tap is one it creates, its open the vhost-net device ----------
hostip tuntap add dev vhexist0 mode tap
printf 'tap vhexist0\n' >/tmp/exist.vhost
expect_error "script: tap NAME on an existing tap the script did not create is refused (exit 77)" 77 "did not create it" vhostctl script run /tmp/exist.vhost
if timeout 30 vhostctl script run --allow-existing-tap /tmp/exist.vhost >/tmp/out.txt 2>&1 && grep -q "every command did what was expected" /tmp/out.txt \
    && ip link show vhexist0 >/dev/null 2>&1; then
    pass "script: --allow-existing-tap attaches to the existing tap (and leaves it: it is not the script's)"
else
    fail "script --allow-existing-tap" "$(tail -3 /tmp/out.txt)"
fi
hostip tuntap del dev vhexist0 mode tap
printf 'tap vhmine0\ntap vhmine0\nlink up\n' >/tmp/mine.vhost
if timeout 30 vhostctl script run /tmp/mine.vhost >/tmp/out.txt 2>&1 && ! ip link show vhmine0 >/dev/null 2>&1; then
    pass "script: tap NAME again on the tap it created in this run is allowed, and the tap is gone after the run"
else
    fail "script: its own tap twice" "$(tail -3 /tmp/out.txt)"
fi
printf 'open /dev/null\n' >/tmp/open-null.vhost
expect_error "script: open of another character device is refused before it is opened (exit 77)" 77 "opens only the vhost-net character device" vhostctl script run /tmp/open-null.vhost
printf 'root:x:0:0\n' >/tmp/not-a-device
printf 'open /tmp/not-a-device\n' >/tmp/open-file.vhost
expect_error "script: open of a regular file is refused (exit 77)" 77 "is a regular file, not a character device" vhostctl script run /tmp/open-file.vhost
ln -sf /dev/vhost-net /tmp/vhost-net-link
printf 'open /tmp/vhost-net-link\nset-owner\n' >/tmp/open-link.vhost
if timeout 30 vhostctl script run /tmp/open-link.vhost >/tmp/out.txt 2>&1 && grep -q "every command did what was expected" /tmp/out.txt; then
    pass "script: open of a link to /dev/vhost-net is the vhost-net device (10:238) and works"
else
    fail "script: open through a link to /dev/vhost-net" "$(tail -3 /tmp/out.txt)"
fi
rm -f /tmp/vhost-net-link /tmp/not-a-device

# ---- record and replay: demo's ioctls and ring operations, replayed with the kernel's answers ----
if timeout 120 vhostctl demo --tap vhrec0 --seconds 0.3 --record /tmp/demo.vhost >/tmp/demo-rec.txt 2>&1 \
    && grep -q "^set-backend 1 tap" /tmp/demo.vhost && grep -q "^expect features == " /tmp/demo.vhost \
    && grep -q "^send 1 count=" /tmp/demo.vhost && grep -q "^expect base " /tmp/demo.vhost; then
    pass "demo --record writes a script: $(grep -cv '^#' /tmp/demo.vhost) lines, $(grep -c '^expect' /tmp/demo.vhost) of them the kernel's answers"
else
    fail "demo --record" "$(tail -5 /tmp/demo-rec.txt) $(head -40 /tmp/demo.vhost)"
fi
if timeout 120 vhostctl script run /tmp/demo.vhost >/tmp/replay.txt 2>&1 && grep -q "every command did what was expected" /tmp/replay.txt \
    && ! ip link show vhrec0 >/dev/null 2>&1; then
    pass "script run of the recording: the same kernel answers on the same kernel ($(grep -c ': yes (' /tmp/replay.txt) values and $(grep -c 'as expected' /tmp/replay.txt) errnos compared)"
else
    fail "replay of demo's recording" "$(grep -v '^#' /tmp/replay.txt | tail -8)"
fi
# A recording whose answer differs (TX base one higher) must be reported at its line.
awk '/^expect base / && !done { print "expect base " $3 + 1; done = 1; next } { print }' /tmp/demo.vhost >/tmp/demo-changed.vhost
line=$(grep -n '^expect base ' /tmp/demo-changed.vhost | head -1 | cut -d: -f1)
timeout 120 vhostctl script run /tmp/demo-changed.vhost >/tmp/out.txt 2>/tmp/err.txt; got=$?
if [ "$got" = 1 ] && grep -q "demo-changed.vhost:$line:1: expected base == " /tmp/err.txt; then
    pass "a replay whose kernel answer differs names the first difference by line (exit 1)"
else
    fail "replay reports a difference" "exit $got; $(cat /tmp/err.txt)"
fi

# ---- --record on attach, bench and script run: each recording is well formed and replays ------
# recorded_ok NAME FILE: FILE holds a recording (vhost commands and the kernel's answers) that
# `script check` accepts; then `script run` replays it on this kernel (a tap it names is made
# anew and removed after).
recorded_ok() {
    name=$1; file=$2
    if [ -s "$file" ] && grep -q "^set-backend 1 tap" "$file" && grep -q "^expect features == " "$file" \
        && timeout 30 vhostctl script check "$file" >/tmp/check.txt 2>&1 && grep -q "well formed" /tmp/check.txt; then
        pass "$name --record writes a script that script check accepts ($(grep -cv '^#' "$file") lines, $(grep -c '^expect' "$file") of them the kernel's answers)"
    else
        fail "$name --record writes a well-formed script" "$(cat /tmp/check.txt 2>/dev/null) $(head -c 600 "$file" 2>/dev/null)"
        return
    fi
    tapname=$(sed -n 's/^tap //p' "$file" | head -n 1)
    if timeout 300 vhostctl script run "$file" >/tmp/replay-rec.txt 2>&1 && grep -q "every command did what was expected" /tmp/replay-rec.txt \
        && { [ -z "$tapname" ] || ! ip link show "$tapname" >/dev/null 2>&1; }; then
        pass "script run replays $name's recording: the same ioctls, frames and answers ($(grep -c ': yes (' /tmp/replay-rec.txt) values and $(grep -c 'as expected' /tmp/replay-rec.txt) errnos compared)"
    else
        fail "script run replays $name's recording" "$(grep -v '^#' /tmp/replay-rec.txt | tail -n 6)"
    fi
}
timeout 60 vhostctl attach --tap vhrec1 --create --duration 0.5 --stats 0 --record /tmp/attach-rec.vhost >/tmp/attach-rec.txt 2>&1; status=$?
if [ "$status" = 0 ] && grep -q "^recorded [0-9]* lines to /tmp/attach-rec.vhost" /tmp/attach-rec.txt; then
    recorded_ok attach /tmp/attach-rec.vhost
else
    fail "attach --record" "exit $status; $(tail -n 3 /tmp/attach-rec.txt)"
fi
timeout 300 vhostctl bench --tap vhbrec0 --configs event-idx --trials 1 --seconds 0.2 --latency 0 --record /tmp/bench-rec.vhost >/tmp/bench-rec.txt 2>&1; status=$?
if [ "$status" = 0 ] && grep -q "^recorded [0-9]* lines to /tmp/bench-rec.vhost" /tmp/bench-rec.txt; then
    recorded_ok bench /tmp/bench-rec.vhost
else
    fail "bench --record" "exit $status; $(tail -n 3 /tmp/bench-rec.txt)"
fi
# script run --record: a run of a script is recorded as the script's own requests and frames.
cat >/tmp/to-record.vhost <<'SCRIPT'
tap vhrec2
open
set-owner
get-features
set-features VERSION_1 EVENT_IDX
memory 4M
set-mem-table
ring 0 64
ring 1 64
set-vring-num 0 64
set-vring-num 1 64
set-vring-addr 0
set-vring-addr 1
set-vring-kick 0
set-vring-kick 1
set-vring-call 0
set-vring-call 1
set-vnet-hdr-size 12
set-backend 0 tap
set-backend 1 tap
send 1 count=20
host-expect count=20
post 0 count=8
set-backend 0 -1
set-backend 1 -1
get-vring-base 1
expect base 20
expect EBUSY
set-owner
SCRIPT
timeout 60 vhostctl script run /tmp/to-record.vhost --record /tmp/script-rec.vhost >/tmp/script-rec.txt 2>&1; status=$?
if [ "$status" = 0 ] && grep -q "^send 1 count=20 " /tmp/script-rec.vhost && grep -q "^expect base == 20" /tmp/script-rec.vhost \
    && grep -q "^expect EBUSY" /tmp/script-rec.vhost; then
    recorded_ok "script run" /tmp/script-rec.vhost
else
    fail "script run --record" "exit $status; $(tail -n 3 /tmp/script-rec.txt) $(head -c 600 /tmp/script-rec.vhost 2>/dev/null)"
fi

# ---- --keep-going: every missed expectation is reported with MISSED, the run goes on, exit 1 ----
printf 'open\nset-owner\nlet f = get-features\nexpect $f contains 0x8000000000000000\nexpect ok\nset-owner\nget-features\n' >/tmp/misses.vhost
timeout 30 vhostctl script run --keep-going /tmp/misses.vhost >/tmp/out.txt 2>/tmp/err.txt; got=$?
if [ "$got" = 1 ] && [ "$(grep -c '^MISSED ' /tmp/out.txt)" = 2 ] && grep -q '^MISSED /tmp/misses.vhost:4:1: expected .f contains 0x8000000000000000' /tmp/out.txt \
    && grep -q '^MISSED /tmp/misses.vhost:6:1: set-owner failed: .*EBUSY' /tmp/out.txt && grep -q '^/tmp/misses.vhost:7:1: get-features' /tmp/out.txt \
    && grep -q '2 expectation(s) missed' /tmp/err.txt; then
    pass "script run --keep-going: both missed expectations reported with MISSED (lines 4 and 6), the line after them ran, exit 1"
else
    fail "script run --keep-going" "exit $got; $(grep MISSED /tmp/out.txt | tr '\n' ' ') $(head -c 300 /tmp/err.txt)"
fi
timeout 30 vhostctl script run /tmp/misses.vhost >/tmp/out.txt 2>/tmp/err.txt; got=$?
if [ "$got" = 1 ] && ! grep -q '^MISSED' /tmp/out.txt && ! grep -q '^/tmp/misses.vhost:7:1:' /tmp/out.txt && grep -q '/tmp/misses.vhost:4:1: expected .f contains' /tmp/err.txt; then
    pass "script run without --keep-going stops at the first miss (line 4; line 7 never ran), exit 1"
else
    fail "script run stops at the first miss" "exit $got; $(tail -n 2 /tmp/out.txt) $(head -c 300 /tmp/err.txt)"
fi

# ---- every error case: one clear line, a non-zero documented exit code, nothing left behind ----
expect_error "not root" 77 "needs root or CAP_NET_ADMIN" su -s /bin/sh nobody -c "vhostctl attach --tap vhe0 --create"
expect_error "not root: info" 77 "needs root or access to /dev/vhost-net" su -s /bin/sh nobody -c "vhostctl info"
expect_error "no /dev/vhost-net (--device)" 69 "modprobe vhost_net" vhostctl attach --device /dev/no-vhost-net --tap vhe1 --create
if ip link show vhe1 >/dev/null 2>&1; then fail "nothing half set up after a failed attach" "tap vhe1 was left"; else pass "nothing half set up after a failed attach"; fi
if [ -e /modules/vhost_net.ko ]; then  # only in the VM: never unload a host's vhost_net
    if rmmod vhost_net; then
        expect_error "vhost_net unloaded: info says why" 69 "modprobe vhost_net" vhostctl info
        if grep -Eq "^  problem +vhost-net-module: the vhost_net module is not loaded" /tmp/out.txt && grep -q "^           fix: modprobe vhost_net" /tmp/out.txt; then
            pass "vhost_net unloaded: the doctor's module check is a problem with the fix modprobe vhost_net"
        else
            fail "vhost_net unloaded: doctor check" "$(sed -n '/^checks:/,$p' /tmp/out.txt | head -n 6 | tr '\n' ' ')"
        fi
        insmod /modules/vhost_net.ko
    else
        fail "vhost_net unloaded: info says why" "rmmod vhost_net failed"
    fi
fi
expect_error "tap name invalid" 64 "invalid tap name" vhostctl attach --tap "bad/name" --create
expect_error "tap name too long" 64 "1 to 15 characters" vhostctl attach --tap "a-very-long-tap-name" --create
expect_error "tap name taken by a non-tap" 64 "not a tap" vhostctl attach --tap lo
hostip tuntap add dev vhbusy0 mode tap
# IFF_TUN_EXCL: the kernel refuses the existing name (tun.c tun_set_iff), whatever its kind or queues.
expect_error "--create on an existing tap" 64 "already exists (TUNSETIFF with IFF_TUN_EXCL: EBUSY); drop --create" vhostctl attach --tap vhbusy0 --create
expect_error "--create --queues 2 on an existing tap" 64 "already exists (TUNSETIFF with IFF_TUN_EXCL" vhostctl attach --tap vhbusy0 --create --queues 2
expect_error "--create on an existing interface that is not a tap" 64 "already exists (TUNSETIFF with IFF_TUN_EXCL" vhostctl attach --tap lo --create
vhostctl attach --tap vhbusy0 --stats 0 >/dev/null 2>&1 &
pid=$!; sleep 1
expect_error "tap busy (another process has it)" 75 "busy" vhostctl attach --tap vhbusy0
kill -TERM $pid; wait_for_exit $pid
hostip link del vhbusy0
expect_error "tap missing without --create" 64 "does not exist; add --create" vhostctl attach --tap vhnone0
expect_error "malformed IP" 64 "not an IPv4 address" vhostctl attach --tap vhe2 --create --ip 10.0.0.300/24
expect_error "malformed IPv6 address" 64 "not a unicast IPv6 address" vhostctl attach --tap vhe2 --create --ip6 fd00::zz/64
expect_error "a multicast IPv6 address" 64 "not a unicast IPv6 address" vhostctl attach --tap vhe2 --create --ip6 ff02::1/64
expect_error "--tun with --macvtap" 64 "does not apply" vhostctl attach --tap vhe2 --tun --macvtap lo
expect_error "HOST_USO without CSUM" 64 "need NET_F_CSUM" vhostctl attach --tap vhe2 --create --features VERSION_1 HOST_USO
expect_error "malformed MAC" 64 "not a MAC address" vhostctl attach --tap vhe2 --create --mac 52:54:zz:00:00:01
expect_error "pcap missing (EX_NOINPUT)" 66 "does not exist" vhostctl attach --tap vhe2 --create --replay /tmp/no-such.pcap
expect_error "pcap output in a missing folder (EX_CANTCREAT)" 73 "cannot be created" vhostctl attach --tap vhe2 --create --pcap /tmp/no-such-dir/out.pcap
if ip link show vhe2 >/dev/null 2>&1; then fail "no tap left after an unwritable --pcap"; else pass "no tap left after an unwritable --pcap"; fi
printf 'this is not a pcap file at all' >/tmp/corrupt.pcap
expect_error "pcap corrupt (EX_DATAERR)" 65 "corrupt" vhostctl attach --tap vhe2 --create --replay /tmp/corrupt.pcap
head -c 100 /tmp/attach.pcap >/tmp/truncated.pcap
# A section header, then a block whose length (13) is not a multiple of 4.
printf '\012\015\015\012\034\000\000\000\115\074\053\032\001\000\000\000\377\377\377\377\377\377\377\377\034\000\000\000\001\000\000\000\015\000\000\000\000\000\000\000' >/tmp/broken.pcapng
expect_error "a pcapng with a broken block (EX_DATAERR)" 65 "malformed" vhostctl attach --tap vhe2 --create --replay /tmp/broken.pcapng
expect_error "pcap truncated (EX_DATAERR)" 65 "truncated" vhostctl attach --tap vhe2 --create --replay /tmp/truncated.pcap
expect_error "feature the kernel lacks" 69 "does not offer F_RING_PACKED" vhostctl attach --tap vhe3 --create --features VERSION_1 RING_PACKED
if ip link show vhe3 >/dev/null 2>&1; then fail "no tap left after a feature error"; else pass "no tap left after a feature error"; fi
expect_error "queue size not a power of 2" 64 "power of 2" vhostctl attach --tap vhe4 --create --queue-size 3
expect_error "indirect layout without INDIRECT_DESC" 64 "INDIRECT_DESC" vhostctl attach --tap vhe5 --create --descriptors indirect
expect_error "unknown offload" 64 "unknown offload" vhostctl attach --tap vhe5 --create --offloads tso9
expect_error "bench: unknown configuration" 64 "unknown configuration" vhostctl bench --configs nonsense

# ---- --json on every command: standard output parses and matches docs/json.md ----------------
# (Tests/kernel/json-schemas.py, run with the host's python3). Short runs: a few seconds in all.
cp "${JSON_SCHEMAS:-/opt/bin/json-schemas.py}" /tmp/json-schemas.py
# schema_ok NAME COMMAND FILE [PYTHON-CONDITION]: FILE matches COMMAND's schema and, with a
# condition, python's `d` (the document; for JSON Lines the list of objects) satisfies it. One
# python3 for both (it takes most of a second to start under emulation).
schema_ok() {
    name=$1; command=$2; file=$3; condition=${4:-True}
    ok=$(host python3 -c 'import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("json_schemas", "/tmp/json-schemas.py")
schemas = importlib.util.module_from_spec(spec); spec.loader.exec_module(schemas)
command, path, condition = sys.argv[1:4]
t = open(path, encoding="utf-8").read()
problem = schemas.validate(command, t)
if problem: sys.exit(f"{command} JSON does not match docs/json.md: {problem}")
try: d = json.loads(t)
except ValueError: d = [json.loads(l) for l in t.splitlines()]
print(bool(eval(condition)))' "$command" "$file" "$condition" 2>&1)
    if [ "$ok" = True ]; then pass "$name"; else fail "$name" "$ok: $(head -c 400 "$file")"; fi
}
vhostctl info --json >/tmp/j-info.json 2>/tmp/j-info.err
schema_ok "info --json matches its schema" info /tmp/j-info.json 'd["usable"]'
# attach: JSON Lines on stdout (attached, stats per interval, stopped); the text on stderr.
timeout 30 vhostctl attach --tap vhjs0 --create --ip 10.0.19.2/24 --stats 0.3 --duration 1.2 --json >/tmp/j-attach.json 2>/tmp/j-attach.err
if grep -q "^attached to vhjs0" /tmp/j-attach.err && ! grep -q "^attached to\|^rx " /tmp/j-attach.json; then pass "attach --json: the text lines go to stderr"; else fail "attach --json: the text lines go to stderr" "$(head -c 300 /tmp/j-attach.json)"; fi
schema_ok "attach --json: attached, a stats object per 0.3 s and stopped (no signal), matching the schema" attach /tmp/j-attach.json \
    'd[0]["event"]=="attached" and d[0]["interface"]=="vhjs0" and d[0]["queue_pairs"]==1 and sum(x["event"]=="stats" for x in d)>=2 and "signal" not in d[-1] and d[-1]["elapsed_seconds"]>=1.2'
# Global --json before the subcommand; stopped by SIGTERM, which the stopped object names.
vhostctl --json attach --tap vhjs1 --create --stats 0.3 >/tmp/j-attach2.json 2>/tmp/j-attach2.err &
pid=$!
wait_for_attached /tmp/j-attach2.err; sleep 0.8
kill -TERM $pid; wait_for_exit $pid
schema_ok "vhostctl --json attach, stopped by SIGTERM: the stopped object carries signal 15" attach /tmp/j-attach2.json 'd[-1]["event"]=="stopped" and d[-1]["signal"]==15'
timeout 120 vhostctl demo --tap vhjs2 --seconds 0.2 --json >/tmp/j-demo.json 2>/tmp/j-demo.err
schema_ok "demo --json matches its schema, every check passed, the steps on stderr" demo /tmp/j-demo.json 'd["passed"] and len(d["checks"])==5 and d["ping_replies"]==5'
timeout 120 vhostctl migrate-test --tap vhjs3 --rounds 2 --frames-per-round 4 --json >/tmp/j-mig.json 2>/tmp/j-mig.err
schema_ok "migrate-test --json matches its schema and passed" migrate-test /tmp/j-mig.json 'd["passed"] and d["identical"] and len(d["pages_per_round"])>=1'
timeout 120 vhostctl bench configs --tap vhjs4 --configs event-idx --trials 1 --seconds 0.1 --latency 10 --json >/tmp/j-configs.json 2>/tmp/j-configs.err
schema_ok "bench configs --json matches its schema" bench-configs /tmp/j-configs.json 'd["configs"][0]["name"]=="event-idx" and d["rtt_ns"]["count"]==10'
timeout 120 vhostctl bench backends --tap vhjs5 --scenario tx --backend vhost --frame-size 64 --trials 1 --seconds 0.1 --warmup 0 --json --json-file /tmp/j-backends-file.json >/tmp/j-backends.json 2>/tmp/j-backends.err
schema_ok "bench backends --json matches its schema (the table on stderr), --json-file holds the same" bench-backends /tmp/j-backends.json \
    'd["results"][0]["backend"]=="vhost" and d["results"][0]["pps"]["median"]>0 and json.load(open("/tmp/j-backends-file.json"))["results"][0]["scenario"]=="tx"'
timeout 120 vhostctl bench echo --tap vhjs6 --reply-path single --rate 2000 --source socket --trials 1 --seconds 0.2 --warmup 0 --json >/tmp/j-echo.json 2>/tmp/j-echo.err
schema_ok "bench echo --json matches its schema" bench-echo /tmp/j-echo.json 'd["paths"][0]["reply_path"]=="single" and len(d["paths"][0]["trials"])==1'
timeout 30 vhostctl cleanup --dry-run --json >/tmp/j-cleanup.json 2>/tmp/j-cleanup.err
schema_ok "cleanup --dry-run --json matches its schema" cleanup /tmp/j-cleanup.json 'd["dry_run"] and d["failed"]==0'
timeout 30 vhostctl script run --json ${EXAMPLES:-/opt/bin}/qemu-vhost-net-start.vhost >/tmp/j-script.json 2>/tmp/j-script.err
schema_ok "script run --json on the kernel matches its schema and passed" script-run /tmp/j-script.json 'd[-1]["passed"] and d[-1]["statements"]>5'

# ---- failures: the error on standard error, nothing on standard output, the documented code ----
# expect_stderr NAME STATUS TEXT COMMAND...
expect_stderr() {
    name=$1; want=$2; text=$3; shift 3
    timeout 30 "$@" >/tmp/out.txt 2>/tmp/err.txt; got=$?
    # With --json the human lines go to stderr too: the error is its one error line, and the last.
    if [ "$got" = "$want" ] && tail -n 1 /tmp/err.txt | grep -q -- "^vhostctl: error: .*$text" && [ "$(grep -c '^vhostctl: error:' /tmp/err.txt)" = 1 ] && [ ! -s /tmp/out.txt ]; then
        pass "$name: exit $got, the error on stderr, stdout empty"
    else
        fail "$name" "exit $got (want $want), stdout: $(head -c 200 /tmp/out.txt | tr '\n' ' '), stderr: $(head -c 300 /tmp/err.txt | tr '\n' ' ')"
    fi
}
expect_stderr "attach --json on a missing tap" 64 "does not exist" vhostctl attach --json --tap vhnone1
expect_stderr "demo --json on a taken name" 64 "already exists" vhostctl demo --json --tap lo
expect_stderr "migrate-test on a taken name" 64 "already exists" vhostctl migrate-test --tap lo
expect_stderr "bench backends --json on a taken name" 64 "already exists" vhostctl bench backends --json --tap lo
expect_stderr "bench echo without vhost-net (--device)" 69 "" vhostctl bench echo --json --device /dev/no-vhost-net --tap vhjs7
expect_stderr "cleanup --json without root" 77 "needs root" su -s /bin/sh nobody -c "vhostctl cleanup --json"
# info is a report: without root it still prints its JSON (usable false, the problem named), exit 77.
su -s /bin/sh nobody -c "vhostctl info --json" >/tmp/j-info2.json 2>/tmp/j-info2.err; status=$?
if [ "$status" = 77 ]; then schema_ok "info --json without root: exit 77, usable false with the problem" info /tmp/j-info2.json 'not d["usable"] and d["problem"]'; else fail "info --json without root" "exit $status"; fi

# ---- the parts: each a file beside this one, sharing pass/fail and the helpers ---------------
for part in "$ATTACH_DIR"/attach-part-*.sh; do [ -f "$part" ] && . "$part"; done

echo "attach tier: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
