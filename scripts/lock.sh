#!/usr/bin/env bash
# Regenerate the lock files in requirements/ from pyproject.toml's ranges, with uv:
#   scripts/lock.sh                        keep the locked versions where the ranges still allow them
#   scripts/lock.sh --upgrade              move everything to the newest versions the ranges allow
#   scripts/lock.sh --upgrade-package X    move only X (and what it needs)
# Then run scripts/setup.sh and the tests: the locks are what every install gets.
#
# requirements/all.txt is one resolution of the project with every extra (but controlnet-aux, see
# below), for Linux, macOS and Windows and every Python the project supports (universal: markers
# say which lines apply where). requirements/base.txt and requirements/<extra>.txt are each complete
# (the base and that extra) and cut from that one resolution, so any set of them installs together.
# torch is pinned in requirements/torch.txt and left out of the locks, as are the packages only
# torch needs and only on Linux (its CUDA libraries, triton): scripts/setup.sh installs torch first,
# on its own, the CPU build or a CUDA build, and torch pins those packages itself.
set -euo pipefail
cd "$(dirname "$0")/.."

uv_version="$(sed -n 's/^uv==//p' requirements/uv.txt)"  # the one uv of setup.sh and this script
separate=(controlnet-aux)  # resolved after the rest, within all.txt: it pulls torchvision and timm

uv="${UV:-}"
if [ -z "$uv" ]; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/live-diffusion/uv-$uv_version"
  if [ ! -x "$tools/bin/uv" ]; then
    echo "lock: installing uv $uv_version in $tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"
  fi
  uv="$tools/bin/uv"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

read -r -a extras < <(python3 -c '
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {})
print(" ".join(sorted(extras)))')
together=()
for extra in "${extras[@]}"; do
  [[ " ${separate[*]} " == *" $extra "* ]] || together+=("$extra")
done

compile() {  # compile OUTPUT [uv options...]
  local out="$1"
  shift
  "$uv" pip compile pyproject.toml --quiet --universal --fork-strategy fewest \
    --annotation-style line --custom-compile-command "scripts/lock.sh" \
    -c requirements/torch.txt -o "$out" "$@"
}
extra_flags() { local e; for e in "$@"; do printf -- '--extra\n%s\n' "$e"; done; }
mapfile -t together_flags < <(extra_flags "${together[@]}")

# 1. The whole resolution, torch and its CUDA packages included (the committed all.txt seeds it,
#    so versions only move when the ranges or the arguments ask for it).
[ -f requirements/all.txt ] && cp requirements/all.txt "$tmp/full.txt"
echo "lock: resolving the project with [${together[*]}]"
compile "$tmp/full.txt" "${together_flags[@]}" "$@"

# 2. What to leave out: torch, and what only torch needs, only on Linux.
mapfile -t left_out < <(python3 - "$tmp/full.txt" <<'EOF'
import re, sys
parents, markers = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9._-]+)==\S+\s*(?:;\s*([^#]*?))?\s*(?:#\s*via\s*(.*))?$", line.rstrip())
    if m:
        name = m.group(1).lower()
        markers[name] = markers.get(name, "") + (m.group(2) or "<all>")
        parents[name] = {p.strip().split(" ")[0].lower() for p in (m.group(3) or "").split(",") if p.strip()}
out, grew = {"torch"}, True
while grew:
    grew = False
    for name, via in parents.items():
        if name not in out and via and via <= out and "sys_platform == 'linux'" in markers[name]:
            out.add(name)
            grew = True
print("\n".join(sorted(out)))
EOF
)
echo "lock: left out (installed with torch): ${left_out[*]}"
mapfile -t no_emit < <(printf -- '--no-emit-package\n%s\n' "${left_out[@]}")

# 3. The committed files: all.txt, then base and each extra cut from it.
mkdir -p requirements
compile requirements/all.txt "${together_flags[@]}" "${no_emit[@]}" "$@"
echo "lock: requirements/base.txt"
compile requirements/base.txt -c requirements/all.txt "${no_emit[@]}" "$@"
for extra in "${together[@]}"; do
  echo "lock: requirements/$extra.txt"
  compile "requirements/$extra.txt" --extra "$extra" -c requirements/all.txt "${no_emit[@]}" "$@"
done
for extra in "${separate[@]}"; do
  echo "lock: requirements/$extra.txt"
  compile "requirements/$extra.txt" --extra "$extra" -c requirements/all.txt "${no_emit[@]}" "$@"
done
