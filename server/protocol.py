"""The websocket conversation of one user (the Real-Time-LCM protocol; docs/protocol.md).

Server -> client: {"status": "connected"}, "wait", "send_frame", "timeout", "error".
Client -> server, in reply to send_frame: {"status": "next_frame"}, then the parameters as a JSON
object, then (image pipelines) one binary JPEG; an empty binary message means "no frame yet".
At any other time, where the pipeline takes one (an IP-Adapter set-up): {"status": "image_prompt"}
then one binary JPEG, the image prompt sent with each of this client's frames from then on (checked
as a frame is; answered with an info message), or {"status": "image_prompt", "clear": true}. And
{"status": "presets", "presets": [{"name", "params"}, ...]}: the page's presets, which OSC's
/live/preset N recalls; the server tells the client of parameters changed from elsewhere with
{"status": "params", "params": {...}}.

Every bad message gets {"status": "error", "message": ...} naming the problem, and the conversation
goes on: the client is asked for a new frame. Only this client is affected. Only a frame (text
pipelines: a valid parameter message) keeps the session from its idle timeout, and a client that sends
nothing but bad messages is disconnected after `MAX_ERRORS_IN_A_ROW` of them (nothing but frames
the worker cannot decode: `sessions.MAX_DAMAGED_FRAMES_IN_A_ROW`).

A frame's header is checked here (size caps, JPEG); its pixels are decoded by the worker, and only
if the frame is still the latest when the worker takes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Literal

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from pipelines import ParamsModel
from server.config import Config
from server.frames import Frame
from server.imaging import FrameError, check_jpeg
from server.sessions import AlreadyConnected, Preset, ServerFull, Session, SessionManager, canonical_user_id

log = logging.getLogger(__name__)

MAX_TEXT_MESSAGE_CHARS = 65_536
MAX_PRESETS = 9  # slots 1 to 9: keys 1-9 on the page, /live/preset N over OSC
MAX_PRESET_NAME_CHARS = 64
MAX_ERRORS_IN_A_ROW = 100  # bad messages without a good one between them: the client is broken or hostile

Expecting = Literal["status", "params", "image", "skip_image", "image_prompt"]
_UNSENT = object()  # a parameter the page has not sent before


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"])
        if not name:  # a rule across parameters, such as low <= high
            problems.append(item["msg"].removeprefix("Value error, "))
        elif item["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {name[:64]!r}")
        else:
            problems.append(f"invalid parameter {name[:64]!r}: {item['msg']}")
    message = "; ".join(problems)[:1000]
    return message[:1].upper() + message[1:]


def parse_json(text: str) -> Any:
    """A client's JSON message, or ValueError saying what is wrong with it (any text at all)."""
    if len(text) > MAX_TEXT_MESSAGE_CHARS:
        raise ValueError(f"Message is {len(text)} characters; the limit is {MAX_TEXT_MESSAGE_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # invalid UTF-8 on the wire (see server/websockets.py)
        raise ValueError("Message is not valid UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("Message is not valid JSON") from None
    except RecursionError:
        raise ValueError("Message is nested too deeply") from None
    except ValueError as error:  # an integer of thousands of digits, say
        raise ValueError(f"Message is not usable JSON ({str(error)[:100]})") from None


class Conversation:
    """One websocket: it parses the client's messages and tells the session manager what they mean;
    the manager decides what happens to the session (docs in server/sessions.py)."""

    def __init__(
        self,
        websocket: WebSocket,
        sessions: SessionManager,
        params_type: type[ParamsModel],
        input_mode: str,
        config: Config,
        takes_image_prompt: bool = False,
    ) -> None:
        self.ws = websocket
        self.sessions = sessions
        self.params_type = params_type
        self.input_mode = input_mode
        self.config = config
        self.expecting: Expecting = "status"
        self.params: ParamsModel | None = None  # validated, waiting for its image
        self._params_base: ParamsModel | None = None  # the session's parameters they were merged into
        self._changed: dict[str, Any] = {}  # what the page changed in them
        self.new_source = False  # the client's next frame comes from another input (next_frame's new_source)
        self.takes_image_prompt = takes_image_prompt
        self.errors_in_a_row = 0
        # The page sends the same parameters with every frame: the last text and what it validated to,
        # so an unchanged message costs neither JSON parsing nor validation.
        self._last_params_text: str | None = None
        self._last_params: ParamsModel | None = None
        # The parameters the page sent last: only those it changes since replace the session's, so a
        # change from elsewhere (OSC) stays until the page itself changes that control.
        self._last_values: dict[str, Any] = {}

    async def run(self, user_id: str) -> None:
        await self.ws.accept()
        session = await self._open(user_id)
        if session is None:
            return
        log.info("session %s: connected (%d users)", session.short_id, len(self.sessions))
        # The stream token lets the owner's page open its stream however many others hold (docs/protocol.md).
        self.sessions.send(session, {"status": "connected", "message": "Connected", "stream_token": session.stream_token})
        self.sessions.send(session, {"status": "wait"})
        reader = asyncio.create_task(self._read(session))
        writer = asyncio.create_task(self._write(session))
        tasks = {reader, writer, asyncio.create_task(session.ended.wait())}  # ended: by shutdown, say
        if self.config.idle_timeout or self.config.max_session_length:
            tasks.add(asyncio.create_task(self._time_out(session)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            self.sessions.end(session)  # the client left, or a timeout: what is queued (the reason) goes out
            if writer not in done:
                await self._flush(writer)
        finally:
            for task in tasks:
                task.cancel()
            self.sessions.end(session)
            await self._close_socket()
            log.info(
                "session %s: closed after %.0f s, %d frames in, %d out, %d dropped (%d users)",
                session.short_id, time.monotonic() - session.created_at, session.stats.frames_in,
                session.stats.frames_out, session.stats.frames_dropped, len(self.sessions),
            )

    async def _open(self, user_id: str) -> Session | None:
        canonical = canonical_user_id(user_id)
        try:
            if canonical is None:
                raise ValueError(user_id)
            return self.sessions.open(canonical, self.params_type())
        except ValueError:
            refusal = "Invalid user id: expected a UUID"
        except ServerFull:
            refusal = "Server is full"
            self.sessions.metrics.errors.labels("busy").inc()
        except AlreadyConnected:
            refusal = "This user id is already connected; open a new session with a new id"
        log.info("refused a connection: %s", refusal)
        try:
            await self.ws.send_text(json.dumps({"status": "error", "message": refusal}))
        except Exception:  # the client left already
            pass
        await self._close_socket()
        return None

    @staticmethod
    async def _flush(writer: asyncio.Task[None]) -> None:
        """Let the writer send what is queued (a timeout message, say) up to the session's end."""
        try:
            await asyncio.wait_for(writer, 2.0)
        except Exception:  # the client does not read, or left
            writer.cancel()

    async def _close_socket(self) -> None:
        try:
            await self.ws.close()
        except Exception:  # already closed by the client or the server
            pass

    async def _write(self, session: Session) -> None:
        while (message := await self.sessions.next_message(session)) is not None:
            await self.ws.send_text(json.dumps(message))

    def _time_left(self, session: Session) -> tuple[float, str]:
        now = time.monotonic()
        limits = []
        if self.config.idle_timeout:
            idle_since = self.sessions.idle_since(session)
            limits.append((
                # While the server owes the client a frame, look again one timeout later.
                self.config.idle_timeout if idle_since is None else idle_since + self.config.idle_timeout - now,
                f"Session timed out: no frame or parameters for {self.config.idle_timeout:g} s",
            ))
        if self.config.max_session_length:
            limits.append((
                session.created_at + self.config.max_session_length - now,
                f"Session ended: the limit is {self.config.max_session_length:g} s a session",
            ))
        return min(limits)

    async def _time_out(self, session: Session) -> None:
        """Sleep until the session's idle timeout or length limit, whichever comes first; activity in
        the meantime moves the idle deadline, so look again then."""
        while (time_left := self._time_left(session))[0] > 0:
            await asyncio.sleep(time_left[0])
        reason = time_left[1]
        log.info("session %s: %s", session.short_id, reason)
        self.sessions.end(session, {"status": "timeout", "message": reason})

    async def _read(self, session: Session) -> None:
        while not session.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                self._on_binary(session, message["bytes"])
            else:
                self._on_text(session, message.get("text") or "")
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
                log.info("session %s: %d bad messages in a row; closing", session.short_id, self.errors_in_a_row)
                self.sessions.end(
                    session, {"status": "error", "message": f"{MAX_ERRORS_IN_A_ROW} bad messages in a row: closing"}
                )
                return

    def _refuse(self, session: Session, problem: str, *, skip_image: bool = False) -> None:
        log.info("session %s: %s", session.short_id, problem[:200])
        self.errors_in_a_row += 1
        self.sessions.metrics.errors.labels("input").inc()
        self.params = None
        self.expecting = "skip_image" if skip_image and self.input_mode == "image" else "status"
        self.sessions.frame_refused(session, problem)

    def _on_text(self, session: Session, text: str) -> None:
        if self.expecting == "params":
            self._on_params(session, text)
            return
        if self.expecting == "image":
            self._refuse(session, "Expected a binary JPEG frame after the parameters; got a text message")
        if self.expecting == "image_prompt":
            self._refuse(session, "Expected a binary JPEG image prompt after {\"status\": \"image_prompt\"}; got a text message")
        self.expecting = "status"
        try:
            message = parse_json(text)
        except ValueError as error:
            self._refuse(session, str(error))
            return
        if not isinstance(message, dict) or "status" not in message:
            self._refuse(session, "Expected a JSON object with a 'status' key")
        elif message["status"] == "next_frame":
            self.expecting = "params"
            self.new_source = self.new_source or message.get("new_source") is True
        elif message["status"] == "image_prompt":
            self._on_image_prompt_announced(session, message)
        elif message["status"] == "presets":
            self._on_presets(session, message)
        else:
            self._refuse(session, f"Unknown status {str(message['status'])[:64]!r}")

    def _on_params(self, session: Session, text: str) -> None:
        changed: dict[str, Any] = {}
        if text == self._last_params_text and session.params is self._last_params:
            params = self._last_params  # the same message on the same parameters: the same result
        else:
            try:
                values = parse_json(text)
            except ValueError as error:
                self._refuse(session, str(error), skip_image=True)
                return
            if not isinstance(values, dict):
                self._refuse(session, "Parameters must be a JSON object", skip_image=True)
                return
            changed = {name: value for name, value in values.items() if self._last_values.get(name, _UNSENT) != value}
            try:
                params = self.params_type.model_validate({**session.params.model_dump(), **changed})
            except ValidationError as error:
                self._refuse(session, describe_validation_error(error), skip_image=True)
                return
            self._last_values = values
            if params == session.params:
                params = session.params  # unchanged: keep the one object (cheap comparisons from here on)
            self._last_params_text, self._last_params = text, params
        self.errors_in_a_row = 0
        if self.input_mode == "image":
            self.params, self._params_base, self._changed = params, session.params, changed
            self.expecting = "image"
        else:
            self.expecting = "status"
            self.sessions.activity(session)  # a text pipeline's page says it is there by its parameters
            self.sessions.frame_accepted(session, Frame(params, None))

    def _on_presets(self, session: Session, message: dict[str, Any]) -> None:
        """The page's presets (slots 1 to MAX_PRESETS), for OSC's /live/preset: each checked against
        the session's parameters, all kept or none."""
        presets = message.get("presets")
        if not isinstance(presets, list) or len(presets) > MAX_PRESETS:
            self._refuse(session, f"Presets: expected a list of at most {MAX_PRESETS}")
            return
        kept = []
        for slot, preset in enumerate(presets, 1):
            name = preset.get("name") if isinstance(preset, dict) else None
            values = preset.get("params") if isinstance(preset, dict) else None
            if not isinstance(name, str) or len(name) > MAX_PRESET_NAME_CHARS or not isinstance(values, dict):
                self._refuse(session, f'Preset {slot}: expected {{"name": text of at most {MAX_PRESET_NAME_CHARS} '
                                      'characters, "params": {...}}')
                return
            try:
                self.params_type.model_validate({**session.params.model_dump(), **values})
            except ValidationError as error:
                self._refuse(session, f"Preset {slot} ({name[:64]}): {describe_validation_error(error)}")
                return
            kept.append(Preset(name, values))
        self.errors_in_a_row = 0
        self.sessions.presets_set(session, kept)

    def _on_image_prompt_announced(self, session: Session, message: dict[str, Any]) -> None:
        if not self.takes_image_prompt:
            self._refuse(session, "This pipeline takes no image prompt (its set-up has no IP-Adapter)")
        elif message.get("clear") is True:
            self.sessions.image_prompt_set(session, None)
            self.errors_in_a_row = 0
            log.info("session %s: image prompt cleared", session.short_id)
            self.sessions.send(session, {"status": "info", "message": "Image prompt cleared: the camera frame is the image prompt"})
        else:
            self.expecting = "image_prompt"  # its JPEG comes next

    def _on_image_prompt(self, session: Session, data: bytes) -> None:
        try:
            check_jpeg(data, max_bytes=self.config.max_frame_bytes, max_pixels=self.config.max_frame_pixels)
        except FrameError as error:
            self._refuse(session, f"Image prompt: {error}")
            return
        self.sessions.image_prompt_set(session, data)
        self.errors_in_a_row = 0
        log.info("session %s: image prompt set (%d bytes)", session.short_id, len(data))
        self.sessions.send(session, {"status": "info", "message": "Image prompt set"})

    def _on_binary(self, session: Session, data: bytes) -> None:
        expecting, self.expecting = self.expecting, "status"
        if expecting == "skip_image":
            return
        if expecting == "image_prompt":
            self._on_image_prompt(session, data)
            return
        if expecting != "image" or self.params is None:
            self._refuse(session, "Expected a JSON text message; got binary data")
            return
        params, self.params = self.params, None
        if session.params is not self._params_base:  # changed elsewhere (OSC) since the parameters came: keep that
            try:
                params = self.params_type.model_validate({**session.params.model_dump(), **self._changed})
            except ValidationError:  # the page's changes no longer fit the new values: the session's stand
                params = session.params
        if not data:  # the client has no frame yet: not activity (a page left open with no camera times out)
            self.sessions.no_frame_yet(session)
            return
        try:
            check_jpeg(data, max_bytes=self.config.max_frame_bytes, max_pixels=self.config.max_frame_pixels)
        except FrameError as error:
            self._refuse(session, str(error))
            return
        self.sessions.activity(session)
        self.sessions.frame_accepted(session, Frame(params, data, new_source=self.new_source, image_prompt=session.image_prompt))
        self.new_source = False
