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
