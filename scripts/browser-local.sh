#!/usr/bin/env bash
# Headless Chromium for `make ui-test`: Debian's `chromium` and `chromium-driver`, installed
# with apt when missing (root; idempotent: nothing is done when both are on PATH).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
  echo "browser-local: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "browser-local: chromium and chromium-driver are missing, and installing them needs root" \
       "(sudo apt-get install -y chromium chromium-driver)" >&2
  exit 1
fi
if ! have apt-get; then
  echo "browser-local: chromium and chromium-driver are missing and this is not a Debian-like" \
       "system (no apt-get): install Chromium and its ChromeDriver by hand" >&2
  exit 1
fi
echo "browser-local: installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium chromium-driver >/dev/null
if ! have chromium || ! have chromedriver; then
  echo "browser-local: apt-get finished but chromium or chromedriver is still not on PATH" >&2
  exit 1
fi
echo "browser-local: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version | head -1)"
