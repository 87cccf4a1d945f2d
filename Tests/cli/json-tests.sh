#!/usr/bin/env bash
# Tests/cli/json-tests.sh VHOSTCTL: the commands that run without a kernel print JSON that matches
# docs/json.md (Tests/kernel/json-schemas.py) with --json, before or after the subcommand; `script
# run --junit FILE` writes JUnit XML a parser reads; data goes to standard output and errors to
# standard error with the documented exit codes. The kernel's commands (attach, demo, bench,
# migrate-test, cleanup) are checked the same way in Tests/kernel/attach-tests.sh.
# Prints "PASS"/"FAIL" per case and a closing "json tier: N passed, M failed" line.
set -uo pipefail
CTL=${1:?usage: json-tests.sh PATH-TO-VHOSTCTL}
here=$(cd "$(dirname "$0")" && pwd)
schemas=$here/../kernel/json-schemas.py
docs=$here/../../docs/json.md
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1${2:+: $2}"; }

# run NAME WANT-STATUS COMMAND...: runs it with stdout in $work/out, stderr in $work/err.
run() {
    local want=$1; shift
    timeout 20 "$@" >"$work/out" 2>"$work/err"; status=$?
    [[ $status == "$want" ]]
}
# matches SCHEMA: $work/out matches the command's schema.
matches() { python3 "$schemas" "$1" "$work/out" >"$work/schema" 2>&1; }
# no_errors_on_stdout: standard output carries data only.
no_errors_on_stdout() { ! grep -q "vhostctl: \(error\|warning\)" "$work/out"; }

printf 'open\nset-owner\nexpect EBUSY\nset-owner\nlet f = get-features\nexpect $f contains VERSION_1\n' >"$work/pass.vhost"
printf 'open\nset-owner\nexpect EINVAL\nset-owner\nget-features\n' >"$work/miss.vhost"
printf 'open\nno-such-command 1\n' >"$work/malformed.vhost"

# ---- the schemas and docs/json.md agree ----
if out=$(python3 "$schemas" --check-docs "$docs" 2>&1); then pass "docs/json.md documents every command and field of the schemas"; else fail "docs/json.md vs json-schemas.py" "$out"; fi

# ---- script run --json: a statement object per line and a summary ----
for position in after before; do
    if [[ $position == after ]]; then cmd=("$CTL" script run --in-process --json "$work/pass.vhost"); else cmd=("$CTL" --json script run --in-process "$work/pass.vhost"); fi
    if run 0 "${cmd[@]}" && matches script-run && no_errors_on_stdout \
        && python3 -c 'import json,sys; l=[json.loads(x) for x in open(sys.argv[1])]; s=l[-1]; st=[x for x in l if x["event"]=="statement"]; sys.exit(not (s["passed"] and s["exit_status"]==0 and s["statements"]==len(st)==5 and s["missed"]==0 and [x["command"] for x in st]==["open","set-owner","set-owner","get-features","expect"] and st[1]["line"]==2))' "$work/out" \
        && grep -q "every command did what was expected" "$work/err"; then
        pass "script run --json ($position the subcommand): 5 statement objects and a passing summary on stdout, the text on stderr"
    else
        fail "script run --json ($position)" "exit $status; $(cat "$work/schema"); stdout: $(head -c 600 "$work/out")"
    fi
done

if run 1 "$CTL" script run --in-process --keep-going --json --junit "$work/miss.xml" "$work/miss.vhost" && matches script-run && no_errors_on_stdout \
    && python3 -c 'import json,sys; l=[json.loads(x) for x in open(sys.argv[1])]; s=l[-1]; m=[x for x in l if x["event"]=="statement" and not x["as_expected"]]; sys.exit(not (not s["passed"] and s["exit_status"]==1 and s["missed"]==1 and len(m)==1 and m[0]["line"]==4 and m[0]["command"]=="set-owner"))' "$work/out" \
    && grep -q "^vhostctl: error: 1 expectation(s) missed" "$work/err"; then
    pass "script run --keep-going --json: the missed statement is as_expected false, the summary says exit 1, the error is on stderr"
else
    fail "script run --json with a miss" "exit $status; $(cat "$work/schema"); stdout: $(head -c 600 "$work/out"); stderr: $(head -c 300 "$work/err")"
fi

# ---- --junit: XML a JUnit reader parses, a test case per statement, a failure per miss ----
junit_counts() {  # FILE: "tests failures failed-case-names" as a JUnit reader sees them
    python3 - "$1" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
cases = [c for s in suites for c in s.findall("testcase")]
failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
assert root.tag == "testsuites" and len(suites) == 1
assert int(suites[0].get("tests")) == len(cases) and int(suites[0].get("failures")) == len(failed)
print(len(cases), len(failed), "|".join(failed))
PY
}
if counts=$(junit_counts "$work/miss.xml" 2>&1) && [[ $counts == "4 1 "*":4:1 set-owner" ]] && [[ $(stat -c %a "$work/miss.xml") == 600 ]]; then
    pass "script run --junit: 4 test cases, the missed set-owner at line 4 a failure (mode 0600)"
else
    fail "script run --junit" "$counts"
fi
if run 0 "$CTL" script run --in-process --junit "$work/pass.xml" "$work/pass.vhost" && counts=$(junit_counts "$work/pass.xml" 2>&1) && [[ $counts == "5 0 " ]]; then
    pass "script run --junit on a passing script: 5 test cases, no failure"
else
    fail "script run --junit (passing)" "exit $status; $counts"
fi
# A malformed script runs nothing: exit 64, the problem on stderr, a summary on stdout, an error case in the report.
if run 64 "$CTL" script run --in-process --json --junit "$work/bad.xml" "$work/malformed.vhost" && matches script-run \
    && grep -q "^vhostctl: error: .*malformed.vhost:2:1" "$work/err" && [[ $(wc -l <"$work/out") == 1 ]] \
    && counts=$(junit_counts "$work/bad.xml" 2>&1) && [[ $counts == "1 1 "* ]]; then
    pass "script run --json on a malformed script: exit 64, the problem on stderr, one summary line, a failed case in the JUnit report"
else
    fail "script run --json on a malformed script" "exit $status; $(cat "$work/schema"); stdout: $(head -c 300 "$work/out"); stderr: $(head -c 300 "$work/err"); $counts"
fi
ln -s /dev/null "$work/link.xml"
if run 73 "$CTL" script run --in-process --junit "$work/link.xml" "$work/pass.vhost" && grep -q "^vhostctl: error: --junit .*symbolic link" "$work/err" && [[ ! -s $work/out ]]; then
    pass "script run --junit at a symbolic link: exit 73, one line on stderr, nothing run"
else
    fail "script run --junit at a symbolic link" "exit $status; stderr: $(cat "$work/err"); stdout: $(head -c 200 "$work/out")"
fi

# ---- script check --json ----
if run 0 "$CTL" script check --json "$work/pass.vhost" && matches script-check; then
    pass "script check --json matches its schema"
else
    fail "script check --json" "exit $status; $(cat "$work/schema")"
fi
if run 64 "$CTL" --json script check "$work/malformed.vhost" && [[ ! -s $work/out ]] && grep -q "^vhostctl: error:" "$work/err"; then
    pass "script check --json on a malformed script: exit 64, nothing on stdout, the problem on stderr"
else
    fail "script check --json (malformed)" "exit $status; stdout: $(head -c 200 "$work/out")"
fi

if run 0 "$CTL" --json script commands && matches script-commands \
    && python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(not any(c["name"]=="set-owner" for c in d))' "$work/out"; then
    pass "script commands --json matches its schema and lists set-owner"
else
    fail "script commands --json" "exit $status; $(cat "$work/schema")"
fi

# ---- usage errors: exit 64, one line on stderr, nothing on stdout ----
for args in "bench backends --frame-size 64,x" "--verbose --quiet info" "attach --queue-pairs 0 --tap x" "script run --no-such-option x"; do
    # shellcheck disable=SC2086
    if run 64 "$CTL" $args && [[ ! -s $work/out ]] && [[ $(wc -l <"$work/err") == 1 ]] && grep -q "^vhostctl: error:" "$work/err"; then
        pass "vhostctl $args: exit 64, one line on stderr, nothing on stdout"
    else
        fail "vhostctl $args" "exit $status; stdout: $(head -c 200 "$work/out"); stderr: $(head -c 300 "$work/err")"
    fi
done

# ---- info on a host without vhost-net: the doctor names the problem and the fix ----------------
# (This tier runs on the host Scripts/test runs on; the attach tier checks info where vhost-net is.)
if [[ -e /dev/vhost-net || -d /sys/module/vhost_net ]]; then
    echo "PASS (does not apply: this host has vhost-net) info on a host without vhost-net names the fix; the attach tier checks info with it"
    passed=$((passed + 1))
else
    "$CTL" info >"$work/info.txt" 2>&1; status=$?
    if [[ $status -eq 69 ]] && grep -q "^vhost-net: NOT usable: .*modprobe vhost_net" "$work/info.txt" \
        && grep -A1 "^  problem  vhost-net-module:" "$work/info.txt" | grep -q "fix: modprobe vhost_net" \
        && grep -A1 "^  problem  vhost-net-device:" "$work/info.txt" | grep -q "fix: modprobe vhost_net"; then
        pass "info on a host without vhost-net (exit 69): the module and the device are problems, each with the fix modprobe vhost_net"
    else
        fail "info on a host without vhost-net" "exit $status: $(head -c 600 "$work/info.txt")"
    fi
fi

echo "json tier: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
