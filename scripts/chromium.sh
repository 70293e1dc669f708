#!/usr/bin/env bash
# Debian's Chromium for the browser tests (Playwright drives it through `executable_path`;
# Playwright's own browser download is not used): installs it if missing, prints its path.
set -euo pipefail
BIN="$(command -v chromium || true)"
if [ -z "$BIN" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium >/dev/null
  BIN="$(command -v chromium)"
fi
echo "$BIN"
