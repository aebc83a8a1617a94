"""Every model set-up (pipelines/_setups.py) streams through the real server with --tiny: each of the
anchor's module names that is a set-up here, and one composed from the flags alone. A module of its
own so that the test workers can run it beside tests/test_pipelines.py."""

from __future__ import annotations

import pytest

import pipelines
import pipelines._setups
from bench.live import run_server
from tests.test_pipelines import assert_streams

# Every anchor module name that is a set-up here (the others are modules: tests/test_pipelines.py).
SET_UPS = [name for name in pipelines.setups() if name not in pipelines._setups.ANCHOR_MODULES]


@pytest.mark.parametrize("name", SET_UPS)
def test_every_set_up_streams_through_the_server(name):
    with run_server("--tiny", "--pipeline", name) as server:
        assert_streams(server, name, frames=1)  # the server's warm-up frame was the set-up's first


def test_a_set_up_of_ones_own_streams_through_the_server():
    with run_server("--tiny", "--base", "sd15", "--accelerator", "pcm:2", "--controlnet", "depth,canny,qr") as server:
        assert_streams(server, "setup")
