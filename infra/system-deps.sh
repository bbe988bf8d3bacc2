#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Debian's chromium (headless) for the
# labelling-view screenshot test. Installed with apt when missing and we are root; idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian package) for the screenshot test" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "chromium is missing and cannot be installed here (need root and apt-get); the screenshot test will fail" >&2
fi
