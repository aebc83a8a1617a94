#!/usr/bin/env bash
# Set up what the server needs, idempotently: .venv with torch and the dependencies, and the web page.
#   scripts/setup.sh [EXTRAS]      e.g. scripts/setup.sh dev,ndi
# torch comes first, on its own: a CPU build where there is no NVIDIA GPU (a plain `pip install torch`
# on Linux pulls a multi-GB CUDA build). Override with TORCH_SPEC and TORCH_INDEX_URL, e.g.
#   TORCH_SPEC=torch TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname)" = "Darwin" ]; then
    # PyPI's Linux wheels are CUDA builds; macOS wheels use Metal (mps).
    echo "setup: installing torch (GPU build)"
    "${pip[@]}" install "${TORCH_SPEC:-torch}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  else
    echo "setup: no NVIDIA GPU: installing the CPU build of torch"
    index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    if "$venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$index/torch/" 2>/dev/null; then
      "${pip[@]}" install "${TORCH_SPEC:-torch==2.13.0}" --index-url "$index" --extra-index-url https://pypi.org/simple
    else  # PyTorch's index is out of reach: whatever the package index offers (a mirror or wheel cache)
      "${pip[@]}" install "${TORCH_SPEC:-torch==2.13.0}"
    fi
  fi
fi

echo "setup: installing the dependencies${extras:+ with extras [$extras]}"
"${pip[@]}" install --quiet -e ".${extras:+[$extras]}"

if [ -f frontend/package.json ]; then
  if command -v npm >/dev/null 2>&1; then
    if [ ! -d frontend/node_modules ] || [ frontend/package-lock.json -nt frontend/node_modules ]; then
      echo "setup: installing the web page's packages"
      npm ci --prefix frontend --no-audit --no-fund
      touch frontend/node_modules
    fi
    echo "setup: building the web page"
    npm run build --prefix frontend
  else
    echo "setup: npm not found: the web page is not built (install Node.js 20 or newer)" >&2
  fi
fi
