"""POST /api/process on the real server: one JPEG or PNG in, one JPEG of the requested size out; each
kind of bad input gets its 4xx and a message naming the problem; the model is shared fairly with live
sessions; too many requests at once get 503."""

from __future__ import annotations

import asyncio
import contextlib
import io

import httpx
import pytest
import simplejpeg
from PIL import Image

from bench.live import LiveUser, camera_jpeg, jpeg_size, run_server

ECHO = ("--pipeline", "bench.echo_pipeline")
SMALL = {"width": "256", "height": "256"}


@pytest.fixture(scope="module")
def server():
    with run_server(*ECHO, "--max-frame-bytes", "200000", "--max-frame-pixels", "100000", "--max-process-requests", "2") as s:
        yield s


def png(width: int = 200, height: int = 150, mode: str = "RGB", colour=(200, 40, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def post(server, files=None, data=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.http}/api/process", files=files, data=data, timeout=60, **kwargs)


def test_jpeg_in_jpeg_of_the_requested_size_out(server):
    frame = camera_jpeg(4, width=320, height=240)
    response = post(server, files={"file": ("cam.jpg", frame, "image/jpeg")}, data={"width": "320", "height": "256"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert jpeg_size(response.content) == (320, 256)
    # The echo model returns its input, cropped to fill: the image went through, not just a size.
    out = simplejpeg.decode_jpeg(response.content).astype(int)
    original = simplejpeg.decode_jpeg(frame).astype(int)
    assert abs(out[..., 0].mean() - original[..., 0].mean()) < 12 and out[:, :20, 0].mean() < out[:, -20:, 0].mean()


@pytest.mark.parametrize("mode, colour", [("RGB", (200, 40, 20)), ("RGBA", (200, 40, 20, 128)), ("L", 90), ("P", 3)])
def test_png_in_jpeg_out(server, mode, colour):
    response = post(server, files={"file": ("x.png", png(mode=mode, colour=colour), "image/png")}, data=SMALL)
    assert response.status_code == 200, response.text
    assert jpeg_size(response.content) == (256, 256)
    if mode == "RGB":
        r, g, b = simplejpeg.decode_jpeg(response.content).reshape(-1, 3).mean(axis=0)
        assert abs(r - 200) < 8 and abs(g - 40) < 8 and abs(b - 20) < 8


def test_parameters_are_form_fields_with_the_pipeline_defaults(server):
    inverted = post(server, files={"file": ("x.png", png(colour=(200, 40, 20)), "image/png")}, data={"invert": "true"})
    assert inverted.status_code == 200, inverted.text
    assert jpeg_size(inverted.content) == (512, 512)  # the echo pipeline's default size
    r, g, b = simplejpeg.decode_jpeg(inverted.content).reshape(-1, 3).mean(axis=0)
    assert abs(r - 55) < 8 and abs(g - 215) < 8 and abs(b - 235) < 8


def truncated_png() -> bytes:
    data = png(400, 200)
    return data[: len(data) // 2]


def with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    sof = jpeg.find(b"\xff\xc0")
    return jpeg[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9 :]


def multipart(parts: list[tuple[str, bytes, bool]], boundary: str = "xyz") -> bytes:
    body = b""
    for name, value, is_file in parts:
        filename = f'; filename="{name}.bin"' if is_file else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


JPEG = camera_jpeg(1)
BAD_REQUESTS = [
    # (name, request arguments, status, words the message must contain)
    ("not an image", {"files": {"file": ("a.txt", b"hello, not an image")}}, 415, "not a JPEG or PNG"),
    ("gif", {"files": {"file": ("a.gif", b"GIF89a" + bytes(100))}}, 415, "not a JPEG or PNG"),
    ("truncated jpeg", {"files": {"file": ("a.jpg", JPEG[:600])}}, 400, "JPEG"),
    ("truncated png", {"files": {"file": ("a.png", truncated_png())}}, 400, "damaged PNG"),
    ("over the byte cap", {"files": {"file": ("a.jpg", b"\xff\xd8\xff" + bytes(210_000))}}, 413, "limit is 200000"),
    ("jpeg over the pixel cap", {"files": {"file": ("a.jpg", camera_jpeg(2, 400, 300))}}, 413, "limit is 100000 pixels"),
    ("png over the pixel cap", {"files": {"file": ("a.png", png(400, 300))}}, 413, "400x300"),
    ("jpeg header claiming a huge size", {"files": {"file": ("a.jpg", with_declared_size(JPEG, 30000, 30000))}}, 413, "30000x30000"),
    ("request over the cap", {"files": {"file": ("a.jpg", bytes(600_000))}}, 413, "Request is"),
    ("out of range", {"files": {"file": ("a.jpg", JPEG)}, "data": {"width": "4096"}}, 422, "'width'"),
    ("not a multiple of 8", {"files": {"file": ("a.jpg", JPEG)}, "data": {"height": "300"}}, 422, "multiple of 8"),
    ("wrong type", {"files": {"file": ("a.jpg", JPEG)}, "data": {"width": "big"}}, 422, "'width'"),
    ("negative delay", {"files": {"file": ("a.jpg", JPEG)}, "data": {"delay_ms": "-5"}}, 422, "delay_ms"),
    ("unknown parameter", {"files": {"file": ("a.jpg", JPEG)}, "data": {"colour": "red"}}, 422, "Unknown parameter 'colour'"),
    ("prompt too long", {"files": {"file": ("a.jpg", JPEG)}, "data": {"prompt": "x" * 1001}}, 422, "'prompt'"),
    ("parameter twice", {"files": {"file": ("a.jpg", JPEG)}, "data": {"width": ["256", "320"]}}, 422, "given twice"),
    ("no file", {"data": {"width": "256"}}, 400, "No image"),
    ("file sent as a text field", {"data": {"file": "not a file"}}, 400, "must be a file upload"),
    ("two files", {"files": [("file", ("a.jpg", JPEG)), ("other", ("b.jpg", JPEG))]}, 400, "Too many files"),
    ("json body", {"json": {"width": 256}}, 415, "multipart/form-data"),
    ("raw jpeg body", {"content": JPEG, "headers": {"content-type": "image/jpeg"}}, 415, "multipart/form-data"),
    (
        "multipart without a boundary",
        {"content": multipart([("file", JPEG, True)]), "headers": {"content-type": "multipart/form-data"}},
        400,
        "boundary",
    ),
    (
        "broken multipart",
        {"content": b"--xyz\r\nthis is not a part header\r\n\r\n", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
        400,
        "Malformed form",
    ),
]


@pytest.mark.parametrize("name, request_args, status, expected", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_its_status_and_a_message(server, name, request_args, status, expected):
    response = httpx.post(f"{server.http}/api/process", timeout=60, **request_args)
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    assert expected in response.json()["detail"], response.json()


def test_model_error_is_a_500_and_the_next_request_works(server):
    failed = post(server, files={"file": ("a.jpg", JPEG)}, data={"fail": "true", **SMALL})
    assert failed.status_code == 500
    assert failed.json() == {"detail": "Model error: RuntimeError: stand-in model failure"}
    assert post(server, files={"file": ("a.jpg", JPEG)}, data=SMALL).status_code == 200


async def in_progress(server, http: httpx.AsyncClient) -> float:
    for line in (await http.get(f"{server.http}/metrics")).text.splitlines():
        if line.startswith("live_diffusion_process_requests "):
            return float(line.split()[1])
    raise AssertionError("live_diffusion_process_requests not in /metrics")


def test_too_many_requests_at_once_get_503(server):
    async def scenario():
        async with httpx.AsyncClient(timeout=60) as http:

            async def slow():
                files = {"file": ("a.jpg", JPEG)}
                return await http.post(f"{server.http}/api/process", files=files, data={"delay_ms": "1500", **SMALL})

            first = [asyncio.create_task(slow()) for _ in range(2)]
            while await in_progress(server, http) < 2:  # both are in progress now (the limit is 2)
                await asyncio.sleep(0.02)
            refused = await slow()
            done = await asyncio.gather(*first)
            return refused, done

    refused, done = asyncio.run(scenario())
    assert refused.status_code == 503
    assert "limit is 2" in refused.json()["detail"] and refused.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200]
    assert post(server, files={"file": ("a.jpg", JPEG)}, data=SMALL).status_code == 200  # the places are free again


async def live_frames_out(server, http: httpx.AsyncClient) -> float:
    """Frames the server has generated for live sessions so far (its own counter)."""
    for line in (await http.get(f"{server.http}/metrics")).text.splitlines():
        if line.startswith('live_diffusion_frames_out_total{source="live"} '):
            return float(line.split()[1])
    raise AssertionError("live_diffusion_frames_out_total{source=\"live\"} not in /metrics")


def test_shares_the_model_fairly_with_live_sessions(server):
    """Requests and live sessions take turns. Two live sessions (each always has its next frame ready
    by the time the model is free) and two scripts sending requests back to back: a request waits
    for at most the frame in progress and one frame of each session, and the sessions keep getting
    frames while the scripts go on. Counted in frames, from the server's own counter, not timed."""
    sessions, scripts, requests_each = 2, 2, 3
    live = {"delay_ms": 150, "width": 256, "height": 256}

    async def scenario():
        async with httpx.AsyncClient(timeout=90) as http, contextlib.AsyncExitStack() as stack:
            users = [await stack.enter_async_context(LiveUser(server, live)) for _ in range(sessions)]
            for user in users:
                await user.frames(1)  # streaming
            drains = [asyncio.create_task(user.frames(10_000, timeout=600)) for user in users]

            async def script() -> list[tuple[int, float]]:
                seen = []
                for _ in range(requests_each):
                    before = await live_frames_out(server, http)
                    response = await http.post(
                        f"{server.http}/api/process", files={"file": ("a.jpg", JPEG)}, data={"delay_ms": "150", **SMALL}
                    )
                    seen.append((response.status_code, await live_frames_out(server, http) - before))
                return seen

            started = await live_frames_out(server, http)
            results = await asyncio.gather(*(script() for _ in range(scripts)))
            during = await live_frames_out(server, http) - started
            health = (await http.get(f"{server.http}/api/health")).json()
            for drain in drains:
                drain.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
        return results, during, health

    results, during, health = asyncio.run(scenario())
    assert all(status == 200 for script in results for status, _ in script), results
    # Ahead of a request in the turn order: the live frame in progress, and each session once. One
    # more frame may finish between each reading of the counter and the request's start or end.
    assert max(frames for script in results for _, frames in script) <= 1 + sessions + 2, results
    # Between one request of a script and its next, each session had its turn.
    assert during >= sessions * (requests_each - 1), (during, results)
    assert health["users"] == sessions  # one-shot jobs are not users


def test_openapi_documents_the_endpoint(server):
    spec = httpx.get(f"{server.http}/openapi.json").json()
    operation = spec["paths"]["/api/process"]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["file"] == {"type": "string", "format": "binary", "description": "The image: JPEG or PNG"}
    assert schema["required"] == ["file"]
    assert schema["properties"]["delay_ms"]["maximum"] == 5000.0  # the pipeline's parameters, with their bounds
    assert "image/jpeg" in operation["responses"]["200"]["content"]
    assert {"400", "413", "415", "422", "500", "503"} <= set(operation["responses"])
    for path in ("/api/view/{token}", "/api/viewer-token/{user_id}", "/metrics"):
        assert path in spec["paths"], path
