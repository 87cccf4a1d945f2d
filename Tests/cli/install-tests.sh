#!/usr/bin/env bash
# Tests/cli/install-tests.sh: a fresh `Scripts/install --prefix` into a temporary directory, then
# what a user gets from it: `vhostctl --version` (before and after a subcommand) names the
# revision; every command's `--help` exits 0; every man page renders with `man -l`, one per
# command, and `man vhostctl-attach` finds its page; `bash -n`, `zsh -n` and `fish -n` accept the
# completion scripts, zsh's compinit registers its function, and the completions offer what the
# commands take: `vhostctl attach --` lists attach's options (bash and fish), `--features` the
# feature names, `--worker-cpu` the CPUs online (asked of vhostctl at completion time).
# Installs man-db, groff, zsh and fish when missing. Prints PASS/FAIL per check and a closing
# "install tests: N passed, N failed" line; exits non-zero on any failure.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
source "$REPO/Scripts/lib/common.sh"
ensure_packages man:man-db groff:groff zsh:zsh fish:fish /usr/bin/python3:python3
prefix=$(mktemp -d); work=$(mktemp -d); trap 'rm -rf "$prefix" "$work"' EXIT
passed=0 failed=0
pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
finish() { echo "install tests: $passed passed, $failed failed"; [[ $failed -eq 0 ]]; exit; }

if "$REPO/Scripts/install" --prefix "$prefix" >"$work/install.log" 2>&1; then
    pass "Scripts/install --prefix $prefix"
else
    cat "$work/install.log"; fail "Scripts/install --prefix $prefix"; finish
fi
CTL=$prefix/bin/vhostctl
export PATH=$prefix/bin:$PATH

# ---- the version -------------------------------------------------------------------------------
version=$("$CTL" --version 2>&1); status=$?
expected_revision='unknown revision'
if head=$(git -C "$REPO" rev-parse --short=7 HEAD 2>/dev/null); then expected_revision="git $head"; fi
if [[ $status -eq 0 && $version =~ ^vhostctl\ [0-9]+\.[0-9]+\.[0-9]+\ \(.*\)$ && $version == *"($expected_revision"* ]]; then
    pass "vhostctl --version: $version"
else
    fail "vhostctl --version: exit $status, '$version' (want 'vhostctl X.Y.Z ($expected_revision…)')"
fi
after=$("$CTL" info --version 2>&1); status=$?
if [[ $status -eq 0 && $after == "$version" ]]; then pass "vhostctl info --version prints the same"; else fail "vhostctl info --version: exit $status, '$after'"; fi

# ---- every command's --help ----------------------------------------------------------------------
# The commands, from the parser's own description of the tool.
"$CTL" --experimental-dump-help >"$work/dump.json" 2>&1 || fail "vhostctl --experimental-dump-help"
mapfile -t commands < <(python3 - "$work/dump.json" <<'PY'
import json, sys
def walk(command, path):
    yield " ".join(path)
    for sub in command.get("subcommands") or []:
        yield from walk(sub, path + [sub["commandName"]])
tool = json.load(open(sys.argv[1]))["command"]
for line in walk(tool, [tool["commandName"]]):
    print(line)
PY
)
if [[ ${#commands[@]} -ge 10 ]]; then pass "${#commands[@]} commands in the tool's description"; else fail "only ${#commands[@]} commands found in --experimental-dump-help"; fi
help_failures=()
for command in "${commands[@]}"; do
    read -ra words <<<"$command"
    # `vhostctl help` is the parser's help command: it takes a command name, not --help.
    [[ ${words[*]} == "vhostctl help" ]] && continue
    out=$("$CTL" "${words[@]:1}" --help 2>&1); status=$?
    [[ $status -eq 0 && $out == *"USAGE: $command"* ]] || help_failures+=("$command (exit $status)")
done
if [[ ${#help_failures[@]} -eq 0 ]]; then pass "--help exits 0 with its usage for every command"; else fail "--help: ${help_failures[*]}"; fi

# ---- man pages ---------------------------------------------------------------------------------
mandir=$prefix/share/man/man1
page_failures=()
for command in "${commands[@]}"; do
    page=$mandir/${command// /-}.1
    if [[ ! -f $page ]]; then page_failures+=("no page for '$command'"); continue; fi
    # Rendered as a user reads it, with groff's warnings on: any warning, or a page without its
    # name and synopsis, fails.
    rendered=$(MANWIDTH=100 man --warnings -P cat -l "$page" 2>"$work/man.err"); status=$?
    if [[ $status -ne 0 || -s $work/man.err || $rendered != *NAME* || $rendered != *SYNOPSIS* || $rendered != *"$command"* ]]; then
        page_failures+=("$(basename "$page"): exit $status $(head -c 200 "$work/man.err")")
    fi
done
pages=$(find "$mandir" -name '*.1' | wc -l)
if [[ ${#page_failures[@]} -eq 0 && $pages -eq ${#commands[@]} ]]; then
    pass "man -l renders each of the $pages pages, one per command"
else
    fail "man pages ($pages for ${#commands[@]} commands): ${page_failures[*]}"
fi
found=$(MANPATH=$prefix/share/man man -w vhostctl-attach 2>&1)
if [[ $found == "$mandir/vhostctl-attach.1" ]] && MANPATH=$prefix/share/man MANWIDTH=100 man -P cat vhostctl-attach 2>/dev/null | grep -q -- '--tap'; then
    pass "man vhostctl-attach finds and shows the installed page"
else
    fail "man vhostctl-attach: $found"
fi

# ---- completion scripts ------------------------------------------------------------------------
bash_script=$prefix/share/bash-completion/completions/vhostctl
zsh_script=$prefix/share/zsh/site-functions/_vhostctl
fish_script=$prefix/share/fish/vendor_completions.d/vhostctl.fish
if bash -n "$bash_script" 2>"$work/err"; then pass "bash -n accepts the bash completion"; else fail "bash -n: $(head -c 300 "$work/err")"; fi
if zsh -n "$zsh_script" 2>"$work/err"; then pass "zsh -n accepts the zsh completion"; else fail "zsh -n: $(head -c 300 "$work/err")"; fi
if fish -n "$fish_script" 2>"$work/err"; then pass "fish -n accepts the fish completion"; else fail "fish -n: $(head -c 300 "$work/err")"; fi
# zsh finds it on fpath the way a user's compinit does, and its function loads.
registered=$(zsh -f -c "fpath=(${zsh_script%/*} \$fpath); autoload -Uz compinit; compinit -u -d $work/zcompdump; autoload +X _vhostctl && print -r -- \${_comps[vhostctl]}" 2>&1)
if [[ $registered == _vhostctl ]]; then pass "zsh's compinit registers _vhostctl for vhostctl"; else fail "zsh compinit: '$registered'"; fi

# bash_complete LINE: what bash's completion offers for LINE (the cursor at its end), as bash
# calls the function: COMP_WORDS, COMP_CWORD, COMP_LINE, COMP_POINT set, and (command, current
# word, previous word) as arguments.
bash_complete() {
    bash -c '
        source "$1"
        COMP_LINE=$2; COMP_POINT=${#COMP_LINE}
        read -ra COMP_WORDS <<<"$COMP_LINE"
        [[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMPREPLY=()
        _vhostctl vhostctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf "%s\n" "${COMPREPLY[@]}"
    ' bash "$bash_script" "$1"
}
# offers WHAT CANDIDATES WANTED...: every wanted word is among the candidates.
offers() {
    local what=$1 candidates=$2 missing=() word; shift 2
    for word in "$@"; do grep -qxF -- "$word" <<<"$candidates" || missing+=("$word"); done
    if [[ ${#missing[@]} -eq 0 ]]; then pass "$what offers $*"; else fail "$what lacks ${missing[*]}; offered: $(tr '\n' ' ' <<<"$candidates" | head -c 400)"; fi
}
offers "bash: vhostctl attach --" "$(bash_complete 'vhostctl attach --')" \
    --tap --create --queues --features --pcap --stats --verbose --quiet --trace --device --help
offers "bash: vhostctl --trace scr" "$(bash_complete 'vhostctl --trace scr')" script
offers "bash: vhostctl attach --features EV" "$(bash_complete 'vhostctl attach --features EV')" EVENT_IDX
offers "bash: vhostctl bench backends --scenario" "$(bash_complete 'vhostctl bench backends --scenario ')" tx rx bidir ping udp-rr
# A custom completion: bash runs `vhostctl ---completion ...`, which lists the CPUs online now.
first_cpu=$(python3 -c 'import os; print(min(os.sched_getaffinity(0)))' 2>/dev/null || echo 0)
offers "bash: vhostctl bench backends --worker-cpu (CPUs online, asked of vhostctl)" \
    "$(bash_complete 'vhostctl bench backends --worker-cpu ')" none "$first_cpu"
# fish: its options with their help (fish cannot run the custom completions without a terminal).
fish_candidates=$(fish --no-config -c "source '$fish_script'; complete -C 'vhostctl attach --'" 2>&1 | cut -f1)
offers "fish: vhostctl attach --" "$fish_candidates" --tap --create --queues --features --verbose

finish
