#!/bin/sh
# Debian's chromium for tests/test_browser_ui.py (Playwright drives it; no browser is downloaded).
# Idempotent: does nothing when the browser is there. Installs it with apt-get when run as root
# (CI, the project's machines). When it can't, it says why and leaves the verdict to the test,
# which then fails in CI (CI=true) and skips with the reason on a developer's machine: the other
# tests still run either way.
set -u
CHROMIUM="${MEMBERFLOW_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser: $CHROMIUM is missing and this is not root with apt-get; install Debian's" \
        "chromium (apt-get install chromium) to run the browser test" >&2
    exit 0
fi
echo "browser: installing Debian's chromium (apt-get install chromium)"
log="$(mktemp)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q && apt-get install -y -q chromium; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "browser: apt-get could not install chromium; the browser test will say so" >&2
fi
rm -f "$log"
exit 0
