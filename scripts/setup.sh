#!/usr/bin/env bash
# Set up what the server needs, idempotently: .venv with torch and the dependencies, and the web page.
#   scripts/setup.sh [EXTRAS]      e.g. scripts/setup.sh dev,ndi
# torch comes first, on its own, at the version requirements/torch.txt pins: a CPU build where there
# is no NVIDIA GPU (a plain `pip install torch` on Linux pulls a multi-GB CUDA build), PyTorch's
# CUDA 12.8 build where nvidia-smi is found, PyPI's build on macOS. Override with TORCH_SPEC and
# TORCH_INDEX_URL, e.g.
#   TORCH_SPEC=torch==2.13.0 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 scripts/setup.sh
# Then the exact versions locked in requirements/base.txt and requirements/<extra>.txt (made by
# scripts/lock.sh; they leave torch out), and the project itself, without resolving anything again.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-$(grep -E '^torch==' requirements/torch.txt)}"

locks=(-r requirements/base.txt)
IFS=',' read -r -a names <<< "$extras"
for name in "${names[@]}"; do
  name="$(echo "$name" | tr -d '[:space:]' | tr 'A-Z_.' 'a-z--')"
  [ -n "$name" ] || continue
  if [ "$name" = torch ] || [ ! -f "requirements/$name.txt" ]; then
    echo "setup: no lock file for the extra '$name' (requirements/$name.txt): see scripts/lock.sh" >&2
    exit 1
  fi
  locks+=(-r "requirements/$name.txt")
done

# The web page installs and builds beside the Python set-up: neither needs the other.
web_page="" web_page_log="$(mktemp)"
trap 'rm -f "$web_page_log"' EXIT
if [ -f frontend/package.json ]; then
  if command -v npm >/dev/null 2>&1; then
    (
      if [ ! -d frontend/node_modules ] || [ frontend/package-lock.json -nt frontend/node_modules ]; then
        echo "setup: installing the web page's packages"
        npm ci --prefix frontend --no-audit --no-fund
        touch frontend/node_modules
      fi
      echo "setup: building the web page"
      npm run build --prefix frontend
    ) > "$web_page_log" 2>&1 &
    web_page=$!
  else
    echo "setup: npm not found: the web page is not built (install Node.js 20 or newer)" >&2
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# uv installs wheels several times faster than pip (in parallel; compiled, as pip does, so that no
# process compiles them again). pip stays the way where uv cannot be had.
if "$venv/bin/uv" --version >/dev/null 2>&1 || "${pip[@]}" install --quiet -r requirements/uv.txt; then
  install=("$venv/bin/uv" pip install --python "$venv/bin/python" --quiet --compile-bytecode)
else
  echo "setup: uv could not be installed: pip installs everything (slower)" >&2
  install=("${pip[@]}" install --quiet)
fi

torch_wanted() {  # is torch missing, or (for a torch==X spec) another version than X?
  "$venv/bin/python" - "$torch_spec" <<'EOF'
import re, sys
from importlib.metadata import PackageNotFoundError, version
try:
    installed = version("torch").split("+")[0]  # 2.13.0+cpu is 2.13.0
except PackageNotFoundError:
    sys.exit(0)
pinned = re.fullmatch(r"\s*torch\s*==\s*([^\s;+]+)\s*", sys.argv[1])
sys.exit(0 if pinned and pinned.group(1) != installed else 1)
EOF
}
reachable() {  # is this package index reachable (a wheel cache or mirror may stand in for it)?
  "$venv/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1/torch/" 2>/dev/null
}

if torch_wanted; then
  if [ "$(uname)" = "Darwin" ]; then  # PyPI's macOS wheels use Metal (mps)
    echo "setup: installing $torch_spec"
    "${pip[@]}" install "$torch_spec" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  elif command -v nvidia-smi >/dev/null 2>&1; then
    index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
    echo "setup: installing $torch_spec (CUDA build from $index)"
    if reachable "$index"; then
      "${pip[@]}" install "$torch_spec" --index-url "$index"
    else  # PyTorch's index is out of reach: PyPI's Linux wheel (also a CUDA build), or a mirror
      "${pip[@]}" install "$torch_spec"
    fi
  else
    index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    echo "setup: no NVIDIA GPU: installing $torch_spec (CPU build)"
    if reachable "$index"; then
      "${install[@]}" "$torch_spec" --index-url "$index" --extra-index-url https://pypi.org/simple
    elif [ -n "${PIP_FIND_LINKS:-}" ] && [ "${install[0]}" != "${pip[0]}" ]; then
      # PyTorch's index is out of reach, and pip is told of a wheel cache (PIP_FIND_LINKS): uv too.
      "${install[@]}" "$torch_spec" --find-links "$PIP_FIND_LINKS"
    else  # whatever the package index offers (a mirror, or pip's own configuration)
      "${pip[@]}" install "$torch_spec"
    fi
  fi
fi

echo "setup: installing the locked dependencies${extras:+ with extras [$extras]}"
"${install[@]}" --no-deps "${locks[@]}"
"${install[@]}" --no-deps -e .
if ! problems="$("${pip[@]}" check)"; then
  echo "$problems" >&2
  echo "setup: the environment does not hold together (a lock file out of date? see scripts/lock.sh)" >&2
  exit 1
fi

if [ -n "$web_page" ]; then
  if ! wait "$web_page"; then
    cat "$web_page_log" >&2
    echo "setup: building the web page failed" >&2
    exit 1
  fi
  cat "$web_page_log"
fi
