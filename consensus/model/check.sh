#!/usr/bin/env bash
# Model-check the close arbitration with spin (Debian package `spin`):
#  1. the model (1 ticket per requester) must verify: full state space, no assertion violated;
#  2. the deliberately broken variant (-DBROKEN: close when "the bus looks dead" without
#     grants) must fail with an assertion violation;
#  3. with --deep, also 2 tickets per requester by a bitstate (supertrace) search, which
#     is partial: its coverage is printed.
# Exits non-zero unless 1 passes and 2 fails (and 3 passes when asked).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
deep=0
[[ "${1:-}" == "--deep" ]] && deep=1
if ! command -v spin >/dev/null; then
    echo "check.sh: spin not installed (apt-get install -y spin)" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/close_arbitration.pml" "$work/"
cd "$work"

run() { # $1 = label, $2 = extra cc flags, $3.. = spin flags
    local label="$1" ccflags="$2"; shift 2
    rm -f pan pan.* ./*.trail
    spin -a "$@" close_arbitration.pml >/dev/null
    # shellcheck disable=SC2086
    cc -O2 -w -DSAFETY -DMEMLIM=3000 $ccflags -o pan pan.c
    ./pan -m4000000 -E >"$label.out" 2>&1 || true
    grep -E "errors:|states, stored|assertion violated|max search depth|hash factor" "$label.out" | sed "s/^/  [$label] /"
    grep -q "errors: 0" "$label.out" && ! grep -q "max search depth too small" "$label.out"
}

echo "== spin: close arbitration, N=3, Q=2, 1 ticket (expect: verified, full state space)"
if run model "-DCOLLAPSE"; then
    echo "PASS: model verified"
else
    echo "FAIL: the model has an error or the search was incomplete"
    exit 1
fi
echo "== spin: broken variant -DBROKEN (expect: assertion violated)"
if run broken "-DCOLLAPSE" -DBROKEN; then
    echo "FAIL: spin did not catch the broken variant"
    exit 1
fi
grep -q "assertion violated" broken.out || { echo "FAIL: broken variant failed for another reason"; exit 1; }
echo "PASS: broken variant caught"
if [[ $deep == 1 ]]; then
    echo "== spin: 2 tickets per requester, bitstate search, 300 s cap (partial: no proof)"
    rm -f pan pan.* ./*.trail
    spin -a -DT=2 close_arbitration.pml >/dev/null
    cc -O2 -w -DSAFETY -DBITSTATE -o pan pan.c
    timeout 300 ./pan -m2000000 -w30 -E >deep.out 2>&1 || true
    grep -E "errors:|states, stored|assertion violated|hash factor" deep.out | sed "s/^/  [deep] /" || true
    tail -1 deep.out | sed "s/^/  [deep] /"
    if grep -q "assertion violated" deep.out; then
        echo "FAIL: violation in the 2-ticket model"
        exit 1
    fi
    echo "no violation found within the cap"
fi
