#!/bin/sh
# The full soak inside one VM boot (Scripts/soak runs it): the four layouts of
# Sources/VhostKernelTests/SoakTests.swift, two processes side by side (each layout has its own
# tap), so that both vCPUs work: the test thread, not the vhost worker, is what limits a soak
# under emulation. Prints every line of both; exits non-zero if either failed.
frames=${1:?frames}
run() { env VHOST_SOAK_FRAMES="$frames" vhost-kernel-tests "$1" --no-datapath-suite 2>&1 | sed "s/^/[$2] /"; }
start=$(cut -d' ' -f1 /proc/uptime)
( run "interleaved, inline header" A; run "interleaved, indirect tables" A ) > /tmp/soak-a.log &
a=$!
( run "interleaved, header in its own" B; run "(RX), MRG_RXBUF" B ) > /tmp/soak-b.log &
b=$!
# Both logs as they grow, so a run of hours shows its progress lines.
tail -f /tmp/soak-a.log /tmp/soak-b.log 2>/dev/null &
t=$!
wait $a; wait $b
sleep 1; kill $t 2>/dev/null
end=$(cut -d' ' -f1 /proc/uptime)
passed=$(cat /tmp/soak-a.log /tmp/soak-b.log | grep -c '] PASS soak')
failed=$(cat /tmp/soak-a.log /tmp/soak-b.log | grep -c '] FAIL')
echo "soak on $(uname -r): $passed passed, $failed failed, $frames frames per direction and layout, $(awk "BEGIN { printf \"%.0f\", $end - $start }") s in all"
[ "$passed" -eq 4 ] && [ "$failed" -eq 0 ]
