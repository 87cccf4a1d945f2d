# Shared helpers for Scripts/*. Source it; it sets REPO and defines the functions below.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

say() { printf '%s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${SCRIPT_NAME:-swift-vhost}" "$*" >&2; exit "${DIE_STATUS:-2}"; }

# ensure_packages CMD:PACKAGE ...: installs the Debian package when the command is missing.
ensure_packages() {
    local missing=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}; pkg=${pair#*:}
        if [[ $cmd == /* ]]; then [[ -e $cmd ]] && continue
        else command -v "$cmd" >/dev/null 2>&1 && continue; fi
        missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    say "installing ${missing[*]} ..."
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed"
        apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    fi
}

# The host has a usable vhost-net: the device node exists and we are root.
host_has_vhost_net() { [[ -e /dev/vhost-net && $(id -u) -eq 0 ]]; }

# build_static PRODUCT...: builds fully static release binaries (they run in the VM's initramfs
# with no libraries) into $REPO/.build-static/release.
build_static() {
    local product log
    log=$(mktemp)
    for product in "$@"; do
        if ! (cd "$REPO" && swift build -c release --scratch-path .build-static -Xswiftc -static-executable --product "$product") >"$log" 2>&1; then
            grep -vE "in statically linked applications requires" "$log" >&2
            rm -f "$log"
            die "static build of $product failed"
        fi
        [[ -x $REPO/.build-static/release/$product ]] || die "static build of $product produced no binary"
    done
    rm -f "$log"
}
