#!/usr/bin/env bash
# GPU check: model-path fps of every pipeline, batching, torch.compile, temporal consistency's cost and
# the serving path, within a fixed time, as JSON and Markdown (bench/gpu_check.py; docs/benchmarks.md).
#
#   bench/gpu_check.sh                  # a GPU host, no hub needed: under 8 minutes
#   bench/gpu_check.sh --quick          # miniature models, any machine: the code path, in seconds
#   bench/gpu_check.sh --help
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
[[ -x "$python" ]] || python="$(command -v python3 || command -v python)"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$python" "$root/bench/gpu_check.py" "$@"
