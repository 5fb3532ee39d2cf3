#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the portal's browser test (tests/portal/test_browser.py).
# Playwright drives it through executable_path=/usr/bin/chromium, so Playwright never downloads a browser.
#
# Idempotent: returns at once when the browser is already there. Installs with apt-get only when it is
# missing (as root, or through sudo when available). Override the binary with CORRAL_CHROMIUM.
set -euo pipefail

CHROMIUM="${CORRAL_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "chromium is already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and this system has no apt-get: install Chromium and set CORRAL_CHROMIUM" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "chromium is missing: run 'apt-get install -y chromium' as root" >&2
        exit 1
    fi
fi

echo "installing Debian's chromium (once; about a minute)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
"$CHROMIUM" --version
