#!/usr/bin/env bash
# System packages the test suite needs beyond Python, installed with apt when missing and we are root; idempotent:
# - chromium (headless) for the labelling-view and report screenshot tests;
# - podman, which podman-compose (a dev dependency) drives to check infra/compose/compose.yml (tests/test_deploy.py).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v podman >/dev/null 2>&1 || missing+=(podman)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (Debian packages) for the test suite" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "${missing[*]} missing and cannot be installed here (need root and apt-get); their tests will fail" >&2
fi
