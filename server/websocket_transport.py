"""uvicorn's websocket transport with one change: a text message that is not valid UTF-8 reaches the
conversation (as text with the bad bytes escaped, which `protocol.parse_json` refuses with an error
message) instead of closing the connection with a traceback in the log. A client's broken message
costs that message, as every other bad message does, not its session.
"""

from __future__ import annotations

from typing import Any


def protocol_class() -> Any:
    """The transport for uvicorn.Config(ws=...): the lenient one where this uvicorn has the method it
    changes, else uvicorn's own choice."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return "auto"
    if not callable(getattr(WebSocketsSansIOProtocol, "send_receive_event_to_app", None)):
        return "auto"

    class LenientTextProtocol(WebSocketsSansIOProtocol):
        def send_receive_event_to_app(self) -> None:
            if self.curr_msg_data_type == "text" and not self.close_sent:
                data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
                try:
                    data.decode()
                except UnicodeDecodeError:
                    self.frames = []
                    self.queue.put_nowait({"type": "websocket.receive", "text": data.decode(errors="surrogateescape")})
                    if not self.read_paused:
                        self.read_paused = True
                        self.transport.pause_reading()
                    return
            super().send_receive_event_to_app()

    return LenientTextProtocol
