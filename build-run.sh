#!/usr/bin/env bash
# Set up everything (.venv, torch, dependencies, web page) and start the server; arguments go to
# the server:  ./build-run.sh --tiny   |   ./build-run.sh --pipeline img2img --host 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh "${EXTRAS:-}"
exec .venv/bin/python server/main.py "$@"
