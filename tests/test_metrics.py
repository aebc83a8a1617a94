"""GET /metrics on the real server: Prometheus text that a real parser reads, with values that move as
frames are served, dropped and refused."""

from __future__ import annotations

import asyncio

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.live import Client, camera_jpeg, mjpeg_frames, run_server, take
from server.metrics import Metrics

ECHO = ("--pipeline", "bench.echo_pipeline")
SMALL = {"width": 256, "height": 256}


@pytest.fixture(scope="module")
def server():
    with run_server(*ECHO, "--max-users", "1") as s:
        yield s


def scrape(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, labels) -> value, read by prometheus-client's own parser."""
    response = httpx.get(f"{server.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_values_move_as_frames_are_served(server):
    before = scrape(server)

    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            stream = mjpeg_frames(server, client.user_id, http)
            pump = asyncio.create_task(client.pump({"delay_ms": 100, **SMALL}, frames=3))
            await take(stream, 3)
            await pump
            during = scrape(server)
            # a bad frame, then a model error
            await client.recv_until("send_frame")
            await client.send_frame(SMALL, b"not a jpeg")
            await client.recv_until("error")
            await client.recv_until("send_frame")
            await client.send_frame({"fail": True, **SMALL}, camera_jpeg(0))
            await client.recv_until("error")
            # a one-shot request
            response = await http.post(
                f"{server.http}/api/process", files={"file": ("a.jpg", camera_jpeg(1))}, data={"width": "256", "height": "256"}
            )
            assert response.status_code == 200
        await client.close()
        return during

    during = asyncio.run(scenario())
    server.wait_for_users(0)
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "live_diffusion_sessions") == 1 and value(after, "live_diffusion_sessions") == 0
    assert moved("live_diffusion_frames_in_total", source="live") == 4  # 3 good frames and the failing one
    assert moved("live_diffusion_frames_out_total", source="live") == 3
    assert moved("live_diffusion_frames_in_total", source="process") == 1
    assert moved("live_diffusion_frames_out_total", source="process") == 1
    assert moved("live_diffusion_errors_total", kind="input") == 1
    assert moved("live_diffusion_errors_total", kind="model") == 1
    assert moved("live_diffusion_inference_seconds_count") == 5  # every frame the model took
    assert moved("live_diffusion_inference_seconds_sum") >= 0.3  # three frames of 100 ms at least
    assert moved("live_diffusion_queue_wait_seconds_count") == 5
    assert moved("live_diffusion_latency_seconds_count") == 4  # published frames: 3 live, 1 one-shot
    assert moved("live_diffusion_latency_seconds_sum") >= 0.3
    # The histograms are cumulative: the 100 ms frames are at or below the 1 s bucket, none below 0.1 s.
    assert moved("live_diffusion_inference_seconds_bucket", le="1.0") >= 3
    assert moved("live_diffusion_inference_seconds_bucket", le="0.05") <= 2  # the failing frame, the one-shot
    assert moved("live_diffusion_inference_seconds_bucket", le="+Inf") == 5


def test_frames_replaced_in_the_slot_count_as_dropped(server):
    before = scrape(server)

    async def scenario():
        client = Client(server)
        await client.connect()
        async with httpx.AsyncClient(timeout=60) as http:
            first = asyncio.create_task(take(mjpeg_frames(server, client.user_id, http), 1))
            await client.recv_until("send_frame")
            for seed in range(10):  # never waiting for send_frame, with a slow model
                await client.send_frame({"delay_ms": 300, **SMALL}, camera_jpeg(seed))
            await first
        await client.close()

    asyncio.run(scenario())
    server.wait_for_users(0)
    after = scrape(server)
    dropped, taken = (
        value(after, name, **labels) - value(before, name, **labels)
        for name, labels in (
            ("live_diffusion_frames_dropped_total", {"stage": "input"}),
            ("live_diffusion_inference_seconds_count", {}),
        )
    )
    # Each frame was taken by the model or replaced by the next, but for one left in the slot at the end.
    assert dropped + taken in (9, 10), (dropped, taken)
    assert dropped >= 5, (dropped, taken)


def test_refusals_count_as_busy(server):
    before = value(scrape(server), "live_diffusion_errors_total", kind="busy")

    async def scenario():
        first, second = Client(server), Client(server)
        await first.connect()
        refusal = await second.connect()  # --max-users 1
        await first.close()
        return refusal

    assert asyncio.run(scenario()) == {"status": "error", "message": "Server is full"}
    assert value(scrape(server), "live_diffusion_errors_total", kind="busy") == before + 1
    server.wait_for_users(0)


def test_each_app_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.frames_in.labels("live").inc(3)
    assert first.registry.get_sample_value("live_diffusion_frames_in_total", {"source": "live"}) == 3
    assert second.registry.get_sample_value("live_diffusion_frames_in_total", {"source": "live"}) == 0
    assert prometheus_client.REGISTRY.get_sample_value("live_diffusion_frames_in_total", {"source": "live"}) is None
    assert b"live_diffusion_errors_total" in first.render()
