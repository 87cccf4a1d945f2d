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

# bounded NAME FILE [OPTIONS...]: `script check` on a hostile file ends with exit 64 (or 77) within
# a second, with at most 101 lines on stderr (100 problems and a count), and never echoes the
# secret marker planted in the file outside the script's directory.
secret=SECRET_MARKER_7c1e
mkdir -p "$work/scripts" "$work/outside"
printf '%s root:x:0:0\n' "$secret" > "$work/outside/secret.vhost"
bounded() {
    local name=$1 file=$2; shift 2
    local start end status ms lines
    start=$(date +%s%N)
    timeout 10 "$CTL" script check "$@" "$file" >"$work/out" 2>"$work/err"; status=$?
    end=$(date +%s%N); ms=$(((end - start) / 1000000))
    lines=$(wc -l <"$work/err")
    if [[ ($status -eq 64 || $status -eq 77) && $ms -le 1000 && $lines -le 101 ]] && ! grep -q "$secret" "$work/out" "$work/err"; then
        echo "PASS $name (check): exit $status in $ms ms: $(head -n1 "$work/err" | head -c 200)"
        passed=$((passed + 1))
    else
        echo "FAIL $name (check): exit $status in $ms ms, $lines lines (want 64 within 1000 ms, at most 101 lines, no $secret)"
        head -c 600 "$work/err"; echo
        failed=$((failed + 1))
    fi
}

# Includes 40 deep (the limit is 16): a chain of files.
for i in $(seq 0 40); do printf 'include "n%d.vhost"\n' $((i + 1)) > "$work/scripts/n$i.vhost"; done
bounded include-deep "$work/scripts/n0.vhost"
# Include fan-out: 100 includes of 100 different files, each including all of them again.
for i in $(seq 0 99); do for j in $(seq 0 99); do echo "include \"f$j.vhost\""; done > "$work/scripts/f$i.vhost"; done
bounded include-fan-out-100x100 "$work/scripts/f0.vhost"
# Huge numbers: past 2^64, past every limit, in every place a number goes.
printf 'memory 99999999999999999999999999999\nalloc 0x1ffffffffffffffff\nsleep 18446744073709551616\nrepeat 99999999999999999999 {\n}\nset-vring-num 4294967296 1\n' > "$work/scripts/huge.vhost"
bounded huge-numbers "$work/scripts/huge.vhost"
# Binary garbage: 1 MiB of pseudo-random bytes (fixed seed).
awk 'BEGIN { srand(21); for (i = 0; i < 1048576; i++) printf "%c", int(rand() * 256) }' LC_ALL=C > "$work/scripts/garbage.vhost"
bounded binary-garbage "$work/scripts/garbage.vhost"
# One line of 8 MiB, and 100 lines of 80 KiB words (each quoted in a problem, shortened).
head -c 8388608 /dev/zero | tr '\0' 'a' > "$work/scripts/long-line.vhost"
bounded long-line "$work/scripts/long-line.vhost"
for i in $(seq 100); do head -c 81920 /dev/zero | tr '\0' 'q'; echo; done > "$work/scripts/long-words.vhost"
bounded long-words "$work/scripts/long-words.vhost"
# NUL bytes and invalid UTF-8 in commands, strings and includes.
printf 'memory\0 1M\n\xc3\x28 tap\n\xff\xfe\xfd\ninclude "\0/etc/passwd"\nopen /dev/\xc0\xaf\n' > "$work/scripts/nul-utf8.vhost"
bounded nul-and-invalid-utf8 "$work/scripts/nul-utf8.vhost"
# Includes of a file outside the script's directory: ../, absolute, through a symbolic link, and
# the same file a line inside an allowed include; the secret never appears.
printf 'include "../outside/secret.vhost"\n' > "$work/scripts/out-relative.vhost"
bounded include-outside-relative "$work/scripts/out-relative.vhost"
printf 'include "%s/outside/secret.vhost"\n' "$work" > "$work/scripts/out-absolute.vhost"
bounded include-outside-absolute "$work/scripts/out-absolute.vhost"
ln -sf ../outside/secret.vhost "$work/scripts/link.vhost"
printf 'include "link.vhost"\n' > "$work/scripts/out-link.vhost"
bounded include-outside-symlink "$work/scripts/out-link.vhost"
printf 'include "/etc/shadow"\ninclude "/proc/self/environ"\n' > "$work/scripts/out-system.vhost"
bounded include-system-files "$work/scripts/out-system.vhost"

echo "hostile scripts: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
