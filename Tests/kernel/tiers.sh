#!/bin/sh
# tiers.sh TIER...: the kernel tiers of one boot (Scripts/test boots each kernel once for both):
#   kernel  vhost-kernel-tests (the shipped scripts at /opt/examples)
#   attach  attach-tests.sh (beside this file; needs Scripts/vm --host-root for the host's tools)
# Each tier prints its own lines and closing count; after each, "==tier-status TIER STATUS" gives
# its exit status, so Scripts/test counts the tiers apart. Exits 0: the statuses are the result.
for tier in "$@"; do
    case $tier in
        kernel) vhost-kernel-tests; status=$? ;;
        attach) sh "$(dirname "$0")/attach-tests.sh"; status=$? ;;
        *) echo "tiers.sh: no tier '$tier' (kernel or attach)"; status=2 ;;
    esac
    echo "==tier-status $tier $status"
done
exit 0
