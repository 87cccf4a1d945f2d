#!/bin/sh
# What every part of the attach tier shares: PASS/FAIL counting, the host's tools, waiting helpers.
# Sourced by attach-tests.sh (the whole tier, which then sources its parts: attach-*.sh beside it)
# and by attach-part.sh (one or more parts alone, while developing one).
PATH=/opt/bin:$PATH
# A pipeline fails when any of its commands fails, not only the last (busybox ash has pipefail too,
# for the guest, where bash is only the host's).
set -o pipefail
# `CMD | has PATTERN` is `CMD | grep -q PATTERN` that reads all its input: under pipefail,
# grep -q stops at the first match and CMD then dies of SIGPIPE, failing the pipeline.
has() { grep -c "$@" >/dev/null; }
passed=0; failed=0
# With ATTACH_TIMES=1 each line starts with the guest's uptime, to find where the tier's time goes.
stamp() { [ -n "$ATTACH_TIMES" ] && printf '[%s] ' "$(cut -d' ' -f1 /proc/uptime)"; }
pass() { passed=$((passed + 1)); echo "$(stamp)PASS $1"; }
fail() { failed=$((failed + 1)); echo "$(stamp)FAIL $1${2:+: $2}"; }
# `host CMD` runs the host's own CMD (a script, so that `timeout` can run it too).
mkdir -p /tmp/bin
if [ -d /host/usr ]; then  # in Scripts/vm --host-root: the host's root is mounted at /host
    printf '#!/bin/sh\nexec chroot /host /usr/bin/env HOME=/tmp PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin "$@"\n' >/tmp/bin/host
else                      # on a host with vhost-net: its tools are right here
    printf '#!/bin/sh\nexec "$@"\n' >/tmp/bin/host
fi
chmod +x /tmp/bin/host
PATH=/tmp/bin:$PATH
# The host's own tools for what busybox lacks (ip tuntap, tshark, bash's /dev/udp).
hostip() { host ip "$@"; }
wait_for_tap() { i=0; while [ $i -lt 100 ]; do ip link show "$1" >/dev/null 2>&1 && return 0; sleep 0.1; i=$((i + 1)); done; return 1; }
wait_for_attached() { i=0; while [ $i -lt 300 ] && ! grep -q "^attached to" "$1"; do sleep 0.1; i=$((i + 1)); done; }
wait_for_exit() { i=0; while [ $i -lt 100 ]; do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; i=$((i + 1)); done; kill -9 "$1"; return 1; }

# expect_error NAME STATUS TEXT COMMAND...: COMMAND fails with STATUS and prints TEXT on stderr.
expect_error() {
    name=$1; want=$2; text=$3; shift 3
    timeout 30 "$@" >/tmp/out.txt 2>/tmp/err.txt; got=$?
    # grep reads the files itself: under pipefail, `cat | grep -q` fails when grep stops early.
    if [ "$got" = "$want" ] && grep -q -- "$text" /tmp/out.txt /tmp/err.txt && [ "$(wc -l </tmp/err.txt)" -le 1 ]; then
        pass "$name (exit $got: $(head -c 160 /tmp/err.txt | tr '\n' ' '))"
    else
        fail "$name" "exit $got (want $want), stderr: $(head -c 300 /tmp/err.txt | tr '\n' ' ')"
    fi
}

# attach runs as nobody after set-up unless told otherwise: the user must exist (the VM's /etc is bare).
grep -q '^nobody:' /etc/passwd 2>/dev/null || echo "nobody:x:65534:65534::/:/bin/sh" >>/etc/passwd
# status_field PID FIELD: the value of FIELD in /proc/PID/status, white space squeezed to one space.
status_field() { sed -n "s/^$2:[[:space:]]*//p" /proc/$1/status | tr -s '\t ' '  ' | sed 's/ *$//'; }
# mode_owner FILE: "MODE UID" (e.g. "600 65534"), or "missing".
mode_owner() { stat -c '%a %u' "$1" 2>/dev/null || echo missing; }
# leftovers PATH: the temporary files an output at PATH could have left beside it.
leftovers() { ls -a "$(dirname "$1")" | grep -c "^\.$(basename "$1")\.vhostctl-"; }
# capture_fields OUT FILE... -- FIELD...: the FIELDs of every frame of several classic pcap files
# from one tshark, which takes seconds to start under emulation (capinfos and mergecap do not).
# Each line of OUT is a frame: the position of its file (0, 1, ...: mergecap -I none keeps each
# file's interface apart), then the fields, tab-separated. capinfos reads each file to its end:
# one cut short, damaged or missing is named in OUT.err, and the function fails.
capture_fields() {
    cf_out=$1; shift; cf_files=""
    while [ $# -gt 0 ] && [ "$1" != -- ]; do cf_files="$cf_files $1"; shift; done; shift
    cf_fields=""; for cf_field in "$@"; do cf_fields="$cf_fields -e $cf_field"; done
    : >"$cf_out.err"; cf_status=0
    for cf_file in $cf_files; do host capinfos -c "$cf_file" >/dev/null 2>>"$cf_out.err" || cf_status=1; done
    host mergecap -I none -a -w /tmp/capture-fields.pcapng $cf_files 2>>"$cf_out.err" || cf_status=1
    host tshark -r /tmp/capture-fields.pcapng -T fields -e frame.interface_id $cf_fields >"$cf_out" 2>>"$cf_out.err" || cf_status=1
    return $cf_status
}
# capture_count OUT FILE-POSITION AWK-CONDITION: how many of capture_fields' frames of one file
# match (the fields are $2, $3, ...).
capture_count() { awk -F'\t' -v file="$2" "\$1 == file && ($3)" "$1" | wc -l; }

