import os
import sys
from pathlib import Path

import pytest

# Tests run offline, as on the project's machines: a missing model fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
# One torch thread, here and in the servers the tests start (they inherit it): the miniature models
# gain nothing from two, and on a busy 2-core machine a second thread that waits for a taken core
# makes a frame many times slower (docs/benchmarks.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The servers the tests start are forked from a process that has imported torch and diffusers already
# (bench/live.py, run_server): a second each instead of ten.
os.environ.setdefault("LD_FORK_SERVERS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.live import run_server  # noqa: E402


@pytest.fixture(scope="module")
def img2img_server():
    """The real server with --tiny img2img, shared by the tests of one module."""
    with run_server("--tiny", "--pipeline", "img2img", "--log-level", "debug") as server:
        yield server


# Modules with tests of 15 s or more (benchmarks run short, a thousand frames) come first: on several
# workers (./test.sh gives each a module at a time) they then start early, and the workers end
# together. The sort is stable: each module's tests stay together, in their order.
SLOW_FIRST = (
    "test_gpu_check.py", "test_bench.py", "test_soak.py", "test_temporal.py", "test_bench_temporal.py",
    "test_loading.py", "test_scale_out.py", "test_pipelines.py", "test_setup_streams.py", "test_setup_equivalence.py",
    "test_residual_guidance.py", "test_setups.py", "test_glass_to_glass.py", "test_webrtc.py", "test_pix2pix.py",
    "test_osc.py", "test_headless.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
