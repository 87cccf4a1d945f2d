#!/bin/sh
# attach-only.sh PART...: runs parts of the attach tier (attach-part-*.sh, beside this file) alone,
# with the helpers of attach-lib.sh, as root in Scripts/vm --host-root; for developing one part.
# Prints "attach tier (parts): N passed, M failed".
ATTACH_DIR=$(dirname "$0")
. "$ATTACH_DIR/attach-lib.sh"
echo "attach tests on $(uname -r)"
for part in "$@"; do . "$ATTACH_DIR/$(basename "$part")"; done
echo "attach tier (parts): $passed passed, $failed failed"
[ "$failed" -eq 0 ]
