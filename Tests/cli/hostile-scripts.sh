#!/usr/bin/env bash
# Tests/cli/hostile-scripts.sh VHOSTCTL: scripts that once crashed or hung `vhostctl script`
# (issue: "a runner that cannot crash") end with one clear line and exit 64 (malformed, or over a
# limit) or 1 (a run that failed) within a second, and never on a signal. They run on the
# in-process device (`script run --in-process`), so no kernel and no root are needed; `script
# check` runs on each too. Prints "PASS"/"FAIL" per case and a closing "N passed, N failed" line.
set -uo pipefail
CTL=${1:?usage: hostile-scripts.sh PATH-TO-VHOSTCTL}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
passed=0 failed=0

# case NAME MODE(check|run) LINES...: writes the script, runs it, checks status, time and output.
case_() {
    local name=$1 mode=$2; shift 2
    local file=$work/$name.vhost
    printf '%s\n' "$@" > "$file"
    local start end status out lines
    start=$(date +%s%N)
    if [[ $mode == run ]]; then
        timeout 10 "$CTL" script run --in-process "$file" >"$work/out" 2>"$work/err"; status=$?
    else
        timeout 10 "$CTL" script check "$file" >"$work/out" 2>"$work/err"; status=$?
    fi
    end=$(date +%s%N)
    local ms=$(((end - start) / 1000000))
    out=$(grep -c 'vhostctl: error:' "$work/err")
    lines=$(wc -l <"$work/err")
    if [[ ($status -eq 64 || $status -eq 1) && $ms -le 1000 && $out -eq 1 && $lines -eq 1 ]]; then
        echo "PASS $name ($mode): exit $status in $ms ms: $(grep 'vhostctl: error:' "$work/err" | head -c 200)"
        passed=$((passed + 1))
    else
        echo "FAIL $name ($mode): exit $status in $ms ms (want 64 or 1 within 1000 ms and one line on stderr, got $lines)"
        sed -n '1,5p' "$work/err"
        failed=$((failed + 1))
    fi
}

case_ memory-near-top run 'memory 0x7ffffffffffff001'
case_ alloc-huge run 'memory 1M' 'alloc 0xffffffffffffffff'
case_ sleep-huge run 'sleep 0x4000000000000000'
case_ memory-at-top run 'memory 4K 0xfffffffffffff000' 'alloc 16'
case_ features-array-huge run 'open' 'set-owner' 'get-features-array 0xffffffffffffffff'
case_ iotlb-miss-huge run 'open' 'set-owner' 'iotlb-miss timeout=0xffffffffffffffff'
case_ receive-timeout-huge run 'open' 'set-owner' 'memory 1M' 'ring 0 256' 'receive 0 timeout=0xffffffffffffffff'
case_ ring-size-variable run 'memory 1M' 'repeat 2 as i {' 'ring 0 $i-1' '}'
case_ memory-huge check 'memory 0xffffffffffffffff'
deep=(); for i in $(seq 40); do deep+=('repeat 2 {'); done; for i in $(seq 40); do deep+=('}'); done
case_ repeat-deep check "${deep[@]}"

# Include fan-out: six includes of itself and one through ./ (cycles compared on canonical paths).
{ for i in 1 2 3 4 5 6; do echo 'include "./a.vhost"'; done; echo 'include "././a.vhost"'; } > "$work/a.vhost"
start=$(date +%s%N); timeout 10 "$CTL" script check "$work/a.vhost" >"$work/out" 2>"$work/err"; status=$?; end=$(date +%s%N)
ms=$(((end - start) / 1000000))
if [[ ($status -eq 64 || $status -eq 1) && $ms -le 1000 ]]; then
    echo "PASS include fan-out (check): exit $status in $ms ms: $(grep -m1 'include' "$work/err" | head -c 200)"; passed=$((passed + 1))
else
    echo "FAIL include fan-out (check): exit $status in $ms ms"; sed -n '1,5p' "$work/err"; failed=$((failed + 1))
fi

echo "hostile scripts: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
