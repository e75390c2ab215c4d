#!/usr/bin/env bash
# Installs the system services the test suite drives, when they are missing (idempotent):
#   - PostgreSQL server binaries (Debian `postgresql`): tests/services.py runs its own throwaway
#     cluster on a free port, so the package's own `main` cluster is never used or needed;
#   - Debian's Chromium (`chromium`): Playwright drives it via executable_path=/usr/bin/chromium
#     (`playwright install` cannot download browsers here).
# Without root or sudo it prints what to install and exits 0 (the tests that need the services
# skip with that reason), except under CI=true, where it fails.
set -euo pipefail

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# a font, so that pages render text (the README screenshot) instead of empty boxes
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ]; then
    echo "test services: postgresql and chromium present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
    [ -t 0 ] || as_root+=(-n) # no terminal to ask for a password on: fail instead of hanging
else
    msg="test services: missing ${missing[*]} and not root, no sudo; install with: apt-get install ${missing[*]}"
    if [ "${CI:-}" = "true" ]; then
        echo "$msg" >&2
        exit 1
    fi
    echo "$msg (the tests that need them will skip)" >&2
    exit 0
fi

log=$(mktemp /tmp/test_services.XXXXXX.log)
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then "${as_root[@]}" rm -f /usr/sbin/policy-rc.d; fi
    rm -f "$log"
}
trap cleanup EXIT

# Keep the packages' daemons (the postgresql `main` cluster) from being started by the install:
# the tests start their own server, so a running system cluster would only waste memory.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi

start=$SECONDS
if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "test services: failed to install ${missing[*]} (see above)" >&2
    exit 1
fi
echo "test services: installed ${missing[*]} in $((SECONDS - start))s"
