#!/usr/bin/env bash
# Set up everything and run the whole test suite: Python tests (unit, the real server on loopback,
# NDI on loopback) and the web page's checks, unit tests and end-to-end tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh dev,bench,scale

if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing Chromium for the browser tests"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

export HF_HUB_OFFLINE=1
if [ -f frontend/package.json ]; then
  npm run check --prefix frontend
  npm test --prefix frontend
  if [ -x /usr/bin/chromium ]; then
    npm run e2e --prefix frontend
  else
    echo "test: /usr/bin/chromium missing: browser tests skipped (apt-get install chromium)" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
