#!/bin/sh
# Attach tier, part "control": attach --control's socket (vhostctl ctl) and the per-queue
# statistics, checked against what the kernel and the far side saw: the host's echoes, the tap's
# own counters and carrier in /sys/class/net, the socket's mode and owner. Sourced by
# attach-tests.sh (or attach-only.sh) with the helpers of attach-lib.sh.

# control_udp DST FLOWS PER_FLOW [WAIT]: from the host, FLOWS UDP sockets (each its own source
# port: its own flow) send PER_FLOW datagrams each to DST port 7; prints "sent N", then, with
# WAIT=hold, "early K" (echoes already back 0.5 s later) and waits for a line on standard input
# before counting the rest; prints "echoes M" (every echo received within 10 s).
control_udp() {
    host python3 -c '
import socket, sys, select, time
dst, flows, per, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "hold"
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
for i, s in enumerate(socks):
    s.setblocking(False)
    for j in range(per):
        s.sendto(b"ctl-%d-%d" % (i, j), (dst, 7))
print("sent", flows * per, flush=True)
def drain():
    n = 0
    for s in socks:
        while True:
            try: s.recv(2048); n += 1
            except BlockingIOError: break
    return n
got = 0
if hold:
    time.sleep(0.5)
    got = drain()
    print("early", got, flush=True)
    sys.stdin.readline()
deadline = time.time() + 10
while got < flows * per and time.time() < deadline:
    select.select(socks, [], [], 0.2)
    got += drain()
print("echoes", got, flush=True)' "$@"
}
# control_field JSONFILE EXPR: a Python expression over the reply `r` (the host's python3).
control_field() { host python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>&1; }
# control_wait_carrier TAP VALUE: waits up to 3 s for /sys/class/net/TAP/carrier to read VALUE.
control_wait_carrier() { i=0; while [ $i -lt 30 ]; do [ "$(cat /sys/class/net/$1/carrier 2>/dev/null)" = "$2" ] && return 0; sleep 0.1; i=$((i + 1)); done; return 1; }
# control_raw LINE: sends LINE (and a newline) on the socket as root from the host's python, prints the reply line.
control_raw() { host python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\n"); print(s.recv(65536).decode().strip())' "$1" "$2" 2>&1; }

# ---- one queue pair: the socket, stats, stop/resume without loss, link down/up, bad requests ----
csock=/tmp/vhctl.sock
rm -f $csock
: >/tmp/ctl.log
vhostctl attach --tap vhctl0 --create --ip 10.0.21.2/24 --udp-echo 7 --stats 1 --control $csock >/tmp/ctl.log 2>&1 &
cpid=$!
wait_for_tap vhctl0 && ip addr add 10.0.21.1/24 dev vhctl0 && ip link set vhctl0 up
wait_for_attached /tmp/ctl.log
if [ "$(mode_owner $csock)" = "600 65534" ] && [ -S $csock ]; then
    pass "control: --control makes a socket, mode 0600, owned by the user attach runs as (nobody)"
else
    fail "control: the socket's mode and owner" "$(mode_owner $csock); $(cat /tmp/ctl.log)"
fi
ping -A -c 2 -W 3 10.0.21.2 >/dev/null 2>&1
# stop: the datapath is not serviced; the host's datagrams wait in the tap's queue; resume: all arrive.
n=100
vhostctl ctl $csock stop >/tmp/ctl-stop.txt 2>&1; st=$?
mkfifo /tmp/ctl-go; control_udp 10.0.21.2 1 $n hold </tmp/ctl-go >/tmp/ctl-udp.txt 2>&1 &
upid=$!
exec 7>/tmp/ctl-go
i=0; while [ $i -lt 50 ] && ! grep -q '^early' /tmp/ctl-udp.txt; do sleep 0.1; i=$((i + 1)); done
vhostctl ctl $csock resume >/tmp/ctl-resume.txt 2>&1; rt=$?
echo go >&7; exec 7>&-
wait $upid; rm -f /tmp/ctl-go
if [ $st = 0 ] && [ $rt = 0 ] && grep -q "^early 0$" /tmp/ctl-udp.txt && grep -q "^echoes $n$" /tmp/ctl-udp.txt; then
    pass "control: stop holds the datapath (no echo while stopped), resume: all $n UDP datagrams sent meanwhile are echoed"
else
    fail "control: stop/resume loses nothing" "stop $st resume $rt: $(tr '\n' ' ' </tmp/ctl-udp.txt) $(cat /tmp/ctl-stop.txt /tmp/ctl-resume.txt | tr '\n' ' ')"
fi
# link down/up: TUNSETCARRIER after the privilege drop; the host sees carrier and operstate.
vhostctl ctl $csock link down >/tmp/ctl-link.txt 2>&1; lt=$?
if [ $lt = 0 ] && control_wait_carrier vhctl0 0 && [ "$(cat /sys/class/net/vhctl0/operstate)" != up ]; then
    vhostctl ctl $csock link up >>/tmp/ctl-link.txt 2>&1; lt=$?
    if [ $lt = 0 ] && control_wait_carrier vhctl0 1 && i=0 && while [ $i -lt 30 ] && [ "$(cat /sys/class/net/vhctl0/operstate)" != up ]; do sleep 0.1; i=$((i + 1)); done \
        && [ "$(cat /sys/class/net/vhctl0/operstate)" = up ] && ping -A -c 1 -W 3 10.0.21.2 >/dev/null 2>&1; then
        pass "control: link down → the host's carrier 0 and operstate $(cat /sys/class/net/vhctl0/operstate 2>/dev/null) after up; ping answers again"
    else
        fail "control: link up" "exit $lt carrier $(cat /sys/class/net/vhctl0/carrier) operstate $(cat /sys/class/net/vhctl0/operstate): $(tr '\n' ' ' </tmp/ctl-link.txt)"
    fi
else
    fail "control: link down" "exit $lt carrier $(cat /sys/class/net/vhctl0/carrier 2>&1) operstate $(cat /sys/class/net/vhctl0/operstate): $(tr '\n' ' ' </tmp/ctl-link.txt)"
fi
# stats against the tap's own counters, once the flow has stopped.
control_udp 10.0.21.2 8 50 go >/dev/null 2>&1
sleep 0.3
# The tap's count before and after the reply: a frame of the host's own may land in between.
tap_before=$(cat /sys/class/net/vhctl0/statistics/tx_packets)
vhostctl ctl $csock stats --json >/tmp/ctl-stats.json 2>&1
tap_tx=$(cat /sys/class/net/vhctl0/statistics/tx_packets)
cp "${JSON_SCHEMAS:-/opt/bin/json-schemas.py}" /tmp/ctl-schemas.py 2>/dev/null
if problem=$(host python3 /tmp/ctl-schemas.py ctl /tmp/ctl-stats.json 2>&1); then pass "control: ctl stats --json matches its schema ($problem)"; else fail "control: ctl stats --json schema" "$problem: $(head -c 300 /tmp/ctl-stats.json)"; fi
ours=$(control_field /tmp/ctl-stats.json 'r["queues"][0]["rx"]["frames"] + r["queues"][0]["rx"]["drops"]')
tapj=$(control_field /tmp/ctl-stats.json 'r["tap"]["tx_packets_toward_us"]')
if [ "$(control_field /tmp/ctl-stats.json 'r["ok"]')" = True ] && [ "$ours" -gt 400 ] 2>/dev/null && [ $((100 * (tap_tx - ours))) -le "$tap_tx" ] && [ $((100 * (ours - tap_tx))) -le "$tap_tx" ] && [ "$tapj" -ge "$tap_before" ] 2>/dev/null && [ "$tapj" -le "$tap_tx" ]; then
    pass "control: stats' RX frames + drops ($ours) match the tap's tx_packets ($tap_tx) within 1%, and its tap counters are the tap's"
else
    fail "control: stats match the tap's counters" "ours $ours, tap tx_packets $tap_before before the reply and $tap_tx after, reply's $tapj: $(head -c 600 /tmp/ctl-stats.json)"
fi
# The rates: a flow between two stats (both taken with the link quiet), so that the second reply's
# RX rate of every queue pair times its interval is what the tap passed toward us meanwhile.
control_udp 10.0.21.2 8 40 go >/dev/null 2>&1
sleep 0.3
vhostctl ctl $csock stats --json >/tmp/ctl-stats2.json 2>&1
tap_tx2=$(cat /sys/class/net/vhctl0/statistics/tx_packets)
by_rate=$(control_field /tmp/ctl-stats2.json 'round(sum(q["rx"]["frames_per_second"] for q in r["queues"]) * r["interval_seconds"])')
passed_on=$((tap_tx2 - tap_tx))
if [ "$by_rate" -gt 300 ] 2>/dev/null && [ $((100 * (passed_on - by_rate))) -le "$passed_on" ] && [ $((100 * (by_rate - passed_on))) -le "$passed_on" ]; then
    pass "control: stats' RX rates × their interval ($by_rate frames over $(control_field /tmp/ctl-stats2.json 'round(r["interval_seconds"], 2)') s) match the tap's tx_packets meanwhile ($passed_on) within 1%"
else
    fail "control: stats rates against the tap" "rates × interval $by_rate, tap passed $passed_on: $(head -c 600 /tmp/ctl-stats2.json)"
fi
# Bad requests get an error reply; the socket keeps serving.
bad1=$(control_raw $csock 'this is not json')
bad2=$(control_raw $csock '{"command":"queue","args":["99999999999999999999999","disable"]}')
bad3=$(control_raw $csock "{\"command\":\"$(head -c 5000 /dev/zero | tr '\0' x)\"}")
vhostctl ctl $csock stats >/tmp/ctl-after.txt 2>&1; at=$?
if echo "$bad1" | has '"ok":false' && echo "$bad2" | has '"ok":false' && echo "$bad3" | has '"ok":false' && [ $at = 0 ] && grep -q "^queue 0: rx" /tmp/ctl-after.txt && kill -0 $cpid; then
    pass "control: malformed, out-of-range and over-long requests get error replies; attach keeps serving"
else
    fail "control: bad requests" "1: $bad1 2: $bad2 3: $(echo "$bad3" | head -c 200) after: $at $(head -c 300 /tmp/ctl-after.txt)"
fi
# Another user (uid 4242, neither root nor nobody): the 0600 socket refuses the connection; with
# the mode opened up on purpose, SO_PEERCRED still refuses with an error reply.
other() { host setpriv --reuid=4242 --regid=4242 --clear-groups python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror); sys.exit()
# attach may refuse (reply and close) before the request is sent: the reply is read all the same.
try:
    s.sendall(b"{\"command\":\"stop\"}\n")
except OSError:
    pass
print(s.recv(4096).decode().strip())' $csock 2>&1; }
o1=$(other)
chmod 666 $csock; o2=$(other); chmod 600 $csock
running=$(vhostctl ctl $csock stats --json 2>&1 | host python3 -c 'import json, sys; print(json.load(sys.stdin)["stopped"])' 2>&1)
if echo "$o1" | has "connect: Permission denied" && echo "$o2" | has '"ok":false' && echo "$o2" | has "uid 4242" && [ "$running" = False ]; then
    pass "control: uid 4242 cannot connect ($o1); with the socket opened up, SO_PEERCRED refuses it ($(echo "$o2" | head -c 120)) and nothing stopped"
else
    fail "control: another user is refused" "0600: $o1; 0666: $o2; stopped: $running"
fi
kill -TERM $cpid
if wait_for_exit $cpid; then wait $cpid; cst=$?; else cst=timeout; fi
if [ "$cst" = 0 ] && [ ! -e $csock ]; then pass "control: attach stops cleanly and removes its socket"; else fail "control: socket removed at exit" "status $cst; $(ls -l $csock 2>&1); $(tail -n 3 /tmp/ctl.log)"; fi
if grep -Eq "^rx [0-9]+ frames" /tmp/ctl.log && grep -Eq "^queue 0: rx [0-9]+ frames .* frames/s .*\| tx " /tmp/ctl.log && grep -Eq "^tap vhctl0: host sent toward us [1-9][0-9]* \(tx_packets\), dropped before our ring [0-9]+ \(tx_dropped\)" /tmp/ctl.log; then
    pass "control: --stats prints the counter line, a line per queue pair with rates, and the tap's counters ($(grep '^queue 0' /tmp/ctl.log | tail -n 1 | head -c 100))"
else
    fail "control: --stats per-queue lines" "$(grep -E '^(rx|queue|tap) ' /tmp/ctl.log | tail -n 3)"
fi

# ---- two queue pairs: queue 1 disable steers every flow to queue 0; enable spreads them again ----
csock2=/tmp/vhctl2.sock
: >/tmp/ctl2.log
vhostctl attach --tap vhctl1 --create --queue-pairs 2 --ip 10.0.22.2/24 --udp-echo 7 --stats 0.5 --json --control $csock2 >/tmp/ctl2.json 2>/tmp/ctl2.log &
cpid=$!
wait_for_tap vhctl1 && ip addr add 10.0.22.1/24 dev vhctl1 && ip link set vhctl1 up
wait_for_attached /tmp/ctl2.log
ping -A -c 1 -W 3 10.0.22.2 >/dev/null 2>&1
# control_rx FILE: "q0 q1", the RX frames of each queue pair in a stats reply.
control_rx() { vhostctl ctl $csock2 stats --json >"$1" 2>&1; control_field "$1" '" ".join(str(q["rx"]["frames"]) for q in r["queues"])'; }
set -- $(control_rx /tmp/ctl2-a.json)
a0=$1 a1=$2
e1=$(control_udp 10.0.22.2 32 2 go | tail -n 1)
set -- $(control_rx /tmp/ctl2-b.json)
b0=$1 b1=$2
vhostctl ctl $csock2 queue 1 disable >/tmp/ctl2-q.txt 2>&1; qd=$?
# Counted from after the disable: the host's own frames (ARP, ND) may reach queue 1 before it.
set -- $(control_rx /tmp/ctl2-bd.json)
bd0=$1 bd1=$2
e2=$(control_udp 10.0.22.2 32 2 go | tail -n 1)
set -- $(control_rx /tmp/ctl2-c.json)
c0=$1 c1=$2
vhostctl ctl $csock2 queue 0 disable >>/tmp/ctl2-q.txt 2>&1; last=$?
vhostctl ctl $csock2 queue 1 enable >>/tmp/ctl2-q.txt 2>&1; qe=$?
e3=$(control_udp 10.0.22.2 32 2 go | tail -n 1)
set -- $(control_rx /tmp/ctl2-d.json)
d0=$1 d1=$2
if [ "$e1 $e2 $e3" = "echoes 64 echoes 64 echoes 64" ] && [ $qd = 0 ] && [ $qe = 0 ] && [ $last != 0 ] && grep -q "last enabled" /tmp/ctl2-q.txt \
    && [ $((b0 - a0)) -gt 0 ] && [ $((b1 - a1)) -gt 0 ] && [ "$c1" = "$bd1" ] && [ $((c0 - bd0)) -ge 64 ] && [ $((d0 - c0)) -gt 0 ] && [ $((d1 - c1)) -gt 0 ]; then
    pass "control: 32 flows spread over both queues ($((b0 - a0))/$((b1 - a1))); queue 1 disabled: all on queue 0 ($((c0 - bd0))/$((c1 - bd1))); the last queue is kept; enabled: both again ($((d0 - c0))/$((d1 - c1)))"
else
    fail "control: queue disable/enable" "echoes: $e1/$e2/$e3; disable $qd enable $qe last $last; rx a $a0 $a1 b $b0 $b1 bd $bd0 $bd1 c $c0 $c1 d $d0 $d1; $(tr '\n' ' ' </tmp/ctl2-q.txt)"
fi
kill -TERM $cpid
wait_for_exit $cpid
# --stats with --json: every stats object carries both queue pairs and the tap's counters.
if problem=$(host python3 /tmp/ctl-schemas.py attach /tmp/ctl2.json 2>&1) && ok=$(host python3 -c 'import json, sys
d = [json.loads(l) for l in open(sys.argv[1])]
s = [x for x in d if x["event"] == "stats"]
print(len(s) >= 1 and all([q["queue_pair"] for q in x["queues"]] == [0, 1] and "tx_packets_toward_us" in x["tap"] for x in s) and s[-1]["queues"][0]["rx"]["frames"] > 0)' /tmp/ctl2.json 2>&1) && [ "$ok" = True ]; then
    pass "control: attach --stats --json: each stats object has both queue pairs and the tap's counters, matching the schema"
else
    fail "control: attach --stats --json per-queue" "$problem $ok: $(tail -n 2 /tmp/ctl2.json | head -c 400)"
fi

# ---- offloads and dirty-log after the privilege drop, as the kernel reports them ----------------
# control_txcsum IFACE: the interface's tx-checksumming (ETHTOOL_GTXCSUM through SIOCETHTOOL):
# TUNSETOFFLOAD's TUN_F_CSUM sets NETIF_F_HW_CSUM on the tap (tun.c set_offload).
control_txcsum() { host python3 -c 'import array, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
value = array.array("I", [0x16, 0])
request = struct.pack("16sP", sys.argv[1].encode(), value.buffer_info()[0]) + bytes(16)
fcntl.ioctl(s, 0x8946, request)
print(value[1])' "$1" 2>&1; }
csock3=/tmp/vhctl3.sock
: >/tmp/ctl3.log
vhostctl attach --tap vhctl2 --create --ip 10.0.23.2/24 --features VERSION_1 EVENT_IDX GUEST_CSUM --stats 0 --sndbuf 1048576 --trace --control $csock3 >/tmp/ctl3.log 2>&1 &
cpid=$!
wait_for_tap vhctl2 && ip addr add 10.0.23.1/24 dev vhctl2 && ip link set vhctl2 up
wait_for_attached /tmp/ctl3.log
x0=$(control_txcsum vhctl2)
vhostctl ctl $csock3 offloads none >/tmp/ctl3-o.txt 2>&1; o1=$?
x1=$(control_txcsum vhctl2)
# A resume prepares the tap as at start (the configured offloads, a send buffer of INT_MAX): the
# control socket sets what `offloads` and --sndbuf asked again after it.
vhostctl ctl $csock3 stop >>/tmp/ctl3-o.txt 2>&1 && vhostctl ctl $csock3 resume >>/tmp/ctl3-o.txt 2>&1; sr=$?
x1r=$(control_txcsum vhctl2)
sndbuf_after=$(grep -o "TUNSETSNDBUF([0-9]*) = [0-9-]*" /tmp/ctl3.log | tail -n 1)
if [ $sr = 0 ] && [ "$x1 $x1r" = "0 0" ] && [ "$sndbuf_after" = "TUNSETSNDBUF(1048576) = 0" ] && ping -A -c 1 -W 3 10.0.23.2 >/dev/null 2>&1; then
    pass "control: after stop and resume the offloads set by ctl (tx-checksumming $x1r) and --sndbuf ($sndbuf_after, the last) hold; ping answers"
else
    fail "control: offloads and sndbuf across resume" "exit $sr, tx-csum $x1 then $x1r, last $sndbuf_after: $(tail -n 3 /tmp/ctl3-o.txt | tr '\n' ' ')"
fi
vhostctl ctl $csock3 offloads csum >>/tmp/ctl3-o.txt 2>&1; o2=$?
x2=$(control_txcsum vhctl2)
vhostctl ctl $csock3 offloads tso4 >>/tmp/ctl3-o.txt 2>&1; o3=$?
if [ "$x0 $x1 $x2" = "1 0 1" ] && [ $o1 = 0 ] && [ $o2 = 0 ] && [ $o3 != 0 ] && grep -q "only the RX offloads set up at start" /tmp/ctl3-o.txt; then
    pass "control: offloads none → the tap's tx-checksumming off, csum → on again (TUNSETOFFLOAD as nobody); tso4, never negotiated, is refused"
else
    fail "control: offloads" "tx-csum $x0 $x1 $x2; exits $o1 $o2 $o3: $(tr '\n' ' ' </tmp/ctl3-o.txt)"
fi
vhostctl ctl --json $csock3 dirty-log on >/tmp/ctl3-d1.json 2>&1; d1=$?
ping -A -c 3 -W 3 10.0.23.2 >/dev/null 2>&1; pg=$?
vhostctl ctl --json $csock3 dirty-log on >/tmp/ctl3-d2.json 2>&1; d2=$?
p2=$(control_field /tmp/ctl3-d2.json 'r["dirty_pages"]')
if [ $d1 = 0 ] && [ $d2 = 0 ] && [ $pg = 0 ] && [ "$p2" -gt 0 ] 2>/dev/null; then
    pass "control: dirty-log on as nobody; after a ping the kernel has marked $p2 dirty pages, and ping still answers"
else
    fail "control: dirty-log" "exits $d1 $d2 ping $pg: $(cat /tmp/ctl3-d1.json /tmp/ctl3-d2.json | tr '\n' ' ')"
fi
# pcap start/stop: a capture made as nobody, mode 0600, holding the ping's frames (read by tshark).
rm -f /tmp/ctl-cap.pcapng
vhostctl ctl $csock3 pcap start /tmp/ctl-cap.pcapng >/tmp/ctl3-p.txt 2>&1; c1=$?
ping -A -c 2 -W 3 10.0.23.2 >/dev/null 2>&1
vhostctl ctl $csock3 pcap stop >>/tmp/ctl3-p.txt 2>&1; c2=$?
replies=$(host tshark -r /tmp/ctl-cap.pcapng -Y 'icmp.type == 0 && ip.src == 10.0.23.2' 2>/dev/null | wc -l)
if [ $c1 = 0 ] && [ $c2 = 0 ] && [ "$(mode_owner /tmp/ctl-cap.pcapng)" = "600 65534" ] && [ "$replies" -ge 2 ]; then
    pass "control: pcap start/stop writes a capture as nobody (mode 0600) that tshark reads: $replies echo replies"
else
    fail "control: pcap start/stop" "exits $c1 $c2, $(mode_owner /tmp/ctl-cap.pcapng), replies $replies: $(tr '\n' ' ' </tmp/ctl3-p.txt)"
fi
kill -TERM $cpid
wait_for_exit $cpid
