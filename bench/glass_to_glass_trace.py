"""The server of the glass-to-glass benchmark with a trace of each frame's way through it: where the
time goes on the WebRTC path. Starts `server/main.py` unchanged, after wrapping (in this process only)
the functions a frame passes through, each recording the wall-clock time (time.time(), the clock the
page's performance.timeOrigin + now also reads):

up (the page's camera track):
- aiortc's jitter buffer (`JitterBuffer.add`, video): the first and the last (marker) RTP packet of
  each frame, and the moment the buffer hands the frame on to the decoder;
- aiortc's VP8 decoder (`Vp8Decoder.decode`, its thread): start and end;
- the session's slot (`SessionManager.video_frame`): the decoded frame arrives;
the worker (`Worker._outcomes`: decode or to RGB, the model, the JPEG or the pixels), with the code
read from the model's output (the echo model: the input) at the picture's centre;
down (the output track):
- `OutputTrack.recv` returns the frame (the output reached the track);
- aiortc's VP8 encoder (`Vp8Encoder.encode`, an executor thread): start, end, bytes.

    python bench/glass_to_glass_trace.py TRACE.jsonl [server/main.py's options]

The events go to TRACE.jsonl (one JSON array a line, written every half second and at exit);
bench/glass_to_glass.py --trace joins them with the page's events by frame code and time.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_events: list[list[Any]] = []
_lock = threading.Lock()
_local = threading.local()


def record(*event: Any) -> None:
    with _lock:
        _events.append(list(event))


def _writer(path: Path) -> None:
    with path.open("w") as out:
        def flush() -> None:
            with _lock:
                batch = _events[:]
                _events.clear()
            for event in batch:
                out.write(json.dumps(event) + "\n")
            out.flush()

        atexit.register(flush)
        while True:
            time.sleep(0.5)
            flush()


def _centre(pixels: Any) -> list[float]:
    """Mean RGB of the 8x8 square at the centre of an HxWx3 array or a PIL image."""
    import numpy as np

    array = np.asarray(pixels)
    h, w = array.shape[:2]
    square = array[h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4, :3]
    return [round(float(v), 1) for v in square.reshape(-1, 3).mean(axis=0)]


def _middle(image: Any) -> Any:
    """The 8x8 square at the centre of a PIL image (the whole image need not be converted)."""
    w, h = image.size
    return image.crop((w // 2 - 4, h // 2 - 4, w // 2 + 4, h // 2 + 4))


def install() -> None:
    from aiortc import jitterbuffer
    from aiortc.codecs import vpx

    from server import sessions, webrtc, worker

    add = jitterbuffer.JitterBuffer.add

    def traced_add(self: Any, packet: Any) -> Any:
        now = time.time()
        if getattr(self, "_is_video", False):
            seen = self.__dict__.setdefault("_g2g_seen", {})
            first, last = seen.get(packet.timestamp, (now, None))
            seen[packet.timestamp] = (first, now if packet.marker else last)
            if len(seen) > 64:
                for key in list(seen)[:32]:
                    del seen[key]
        pli, frame = add(self, packet)
        if frame is not None and getattr(self, "_is_video", False):
            first, last = self._g2g_seen.get(frame.timestamp, (None, None))
            frame._g2g = (first, last, now)
        return pli, frame

    jitterbuffer.JitterBuffer.add = traced_add

    decode = vpx.Vp8Decoder.decode

    def traced_decode(self: Any, encoded_frame: Any) -> Any:
        start = time.time()
        frames = decode(self, encoded_frame)
        end = time.time()
        first, last, released = getattr(encoded_frame, "_g2g", (None, None, None))
        for frame in frames:
            record("up", id(frame), first, last, released, start, end, len(encoded_frame.data))
        return frames

    vpx.Vp8Decoder.decode = traced_decode

    video_frame = sessions.SessionManager.video_frame

    def traced_video_frame(self: Any, session: Any, frame: Any) -> None:
        record("slot", id(frame.video), time.time())
        video_frame(self, session, frame)

    sessions.SessionManager.video_frame = traced_video_frame

    from bench import echo_pipeline

    predict = echo_pipeline.Pipeline.predict_batch

    def traced_predict(self: Any, batch: Any, images: Any) -> Any:
        outputs = predict(self, batch, images)
        _local.colours = [_centre(_middle(image)) for image in outputs]
        return outputs

    echo_pipeline.Pipeline.predict_batch = traced_predict

    outcomes = worker.Worker._outcomes

    def traced_outcomes(self: Any, jobs: Any) -> Any:
        _local.colours = []
        start = time.time()
        results = outcomes(self, jobs)
        end = time.time()
        colours = _local.colours if len(_local.colours) == len(jobs) else [None] * len(jobs)
        for (_, frame), colour in zip(jobs, colours):
            record("work", id(frame.video) if frame.video is not None else None, start, end, colour)
        return results

    worker.Worker._outcomes = traced_outcomes

    recv = webrtc.OutputTrack.recv

    async def traced_recv(self: Any) -> Any:
        frame = await recv(self)
        pixels = self.session.output.pixels
        record("recv", id(frame), time.time(), _centre(pixels) if pixels is not None else None)
        return frame

    webrtc.OutputTrack.recv = traced_recv

    encode = vpx.Vp8Encoder.encode

    def traced_encode(self: Any, frame: Any, force_keyframe: bool = False) -> Any:
        start = time.time()
        payloads, timestamp = encode(self, frame, force_keyframe)
        record("encode", id(frame), start, time.time(), sum(len(p) for p in payloads), self.target_bitrate)
        return payloads, timestamp

    vpx.Vp8Encoder.encode = traced_encode


def main() -> int:
    path = Path(sys.argv[1])
    threading.Thread(target=_writer, args=(path,), daemon=True, name="g2g-trace").start()
    install()
    from server.main import main as server_main

    sys.argv = [str(REPO_ROOT / "server" / "main.py"), *sys.argv[2:]]
    return server_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
