#!/usr/bin/env bash
# Set up everything and run the whole test suite: Python tests (unit, the real server on loopback,
# NDI on loopback) and the web page's checks, unit tests and end-to-end tests in headless Chromium.
#   ./test.sh            everything          ./test.sh -k server     pytest's arguments go to pytest
# The end-to-end tests run beside the rest; their log is test-artifacts/e2e.log, shown in full when they
# fail. TEST_WORKERS (default 3: the suite waits on servers and browsers) sets pytest's workers.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p test-artifacts

chromium=""
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing Chromium for the browser tests (beside the set-up)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
    > test-artifacts/chromium-install.log 2>&1 &
  chromium=$!
fi
scripts/setup.sh dev,bench,scale
echo "test: set up in ${SECONDS} s"
if [ -n "$chromium" ] && ! wait "$chromium"; then
  cat test-artifacts/chromium-install.log >&2
  echo "test: installing Chromium failed" >&2
fi

export HF_HUB_OFFLINE=1
# The browser tests run beside everything else (the suite keeps about one core busy at a time, and the
# tests hold on a loaded machine); pytest runs on three workers (its tests wait on servers and
# browsers much of the time: three keep two cores busy).
e2e=""
if [ -f frontend/package.json ] && [ -x /usr/bin/chromium ]; then
  echo "test: browser tests running beside the rest (test-artifacts/e2e.log)"
  npm run e2e:built --prefix frontend > test-artifacts/e2e.log 2>&1 &  # the page was built by setup
  e2e=$!
elif [ -f frontend/package.json ]; then
  echo "test: /usr/bin/chromium missing: browser tests skipped (apt-get install chromium)" >&2
fi

status=0
if [ -f frontend/package.json ]; then
  npm run check --prefix frontend || status=$?
  npm test --prefix frontend || status=$?
fi
.venv/bin/python -m pytest -n "${TEST_WORKERS:-3}" --dist loadfile "$@" || status=$?
if [ -n "$e2e" ]; then
  if wait "$e2e"; then
    grep -E '^# (tests|pass|fail|skipped|duration_ms)' test-artifacts/e2e.log | sed 's/^/test: browser tests: /'
  else
    cat test-artifacts/e2e.log
    echo "test: browser tests failed (test-artifacts/e2e.log)" >&2
    status=1
  fi
fi
echo "test: done in ${SECONDS} s"
exit "$status"
