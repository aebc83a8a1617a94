"""OSC (Open Sound Control) over UDP: TouchDesigner, Resolume, Max or a phone app steer the sessions'
parameters, as performers drive their other tools.

`--osc-port PORT` listens on the server's `--host` (loopback unless it is wider). Addresses:

    /live/<param> VALUE              every streaming session
    /live/<session>/<param> VALUE    one session: the first 8 characters of its user id (what the logs show)
    /live/params                     the reply, to the sender: one /live/param message per parameter
                                     (name, type, default, min, max; min and max empty where none)
    /live/preset N                   recall preset N (1-9) of every streaming session (its page's presets)
    /live/<session>/preset N         of one session

A value is checked as the websocket checks it (the pipeline's parameter model, merged into the
session's parameters): out of range, of the wrong type or for no such parameter, it is refused with a
log line and nothing changes; never clamped. A session's page keeps its own changes: it sends all its
parameters with every frame, and only those it changed since its last message replace the session's
(server/protocol.py). At most `MAX_PACKETS_PER_S` packets a second are read; beyond it they are
dropped and counted, so a flood costs bounded CPU, and refusals are logged at most
`MAX_LOG_LINES_PER_S` a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import ValidationError
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from pipelines import ParamsModel
from server.protocol import describe_validation_error
from server.sessions import Session, SessionManager

log = logging.getLogger(__name__)

PREFIX = "/live"
MAX_PACKETS_PER_S = 2000
MAX_LOG_LINES_PER_S = 10
SESSION_PREFIX_CHARS = 8


class Budget:
    """So many events a second, counted in whole seconds: what is over is refused (and counted)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.second = 0
        self.used = 0
        self.refused = 0

    def take(self) -> bool:
        now = int(time.monotonic())
        if now != self.second:
            self.second, self.used = now, 0
        if self.used >= self.per_second:
            self.refused += 1
            return False
        self.used += 1
        return True


class OscReceiver(asyncio.DatagramProtocol):
    """The OSC endpoint: parses each packet (bundles included) and changes the sessions' parameters."""

    def __init__(self, sessions: SessionManager, params_type: type[ParamsModel]) -> None:
        self.sessions = sessions
        self.params_type = params_type
        self.transport: asyncio.DatagramTransport | None = None
        self.packets = Budget(MAX_PACKETS_PER_S)
        self.log_lines = Budget(MAX_LOG_LINES_PER_S)
        self.changes = 0  # parameter changes applied (to one session each)
        self.refusals = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, sender: tuple[str, int]) -> None:
        if not self.packets.take():
            return
        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except (ParseError, ValueError, IndexError) as error:  # python-osc's parsers raise all three
            self._refuse(sender, f"not an OSC packet ({str(error)[:100]})")
            return
        for message in messages:
            self._on_message(message.address, list(message.params), sender)

    def _on_message(self, address: str, args: list[Any], sender: tuple[str, int]) -> None:
        parts = address.split("/")[1:]
        if not parts or f"/{parts[0]}" != PREFIX or len(parts) not in (2, 3):
            self._refuse(sender, f"unknown address {address[:80]!r}: expected {PREFIX}/<param> or {PREFIX}/<session>/<param>")
        elif parts[1:] == ["params"]:
            self._describe(sender)
        elif len(args) != 1:
            self._refuse(sender, f"{address[:80]} takes one value, got {len(args)}")
        else:
            if len(parts) == 2:
                targets = [s for s in self.sessions.all() if s.streaming]
            else:
                prefix = parts[1].lower()
                targets = [s for s in self.sessions.all() if len(prefix) == SESSION_PREFIX_CHARS and s.id.startswith(prefix)]
                if not targets:
                    self._refuse(sender, f"no session {parts[1][:16]!r} (the first {SESSION_PREFIX_CHARS} characters of a user id)")
                    return
            if parts[-1] == "preset":
                self._recall(targets, args[0], sender)
            else:
                self._set(targets, parts[-1], args[0], sender)

    def _set(self, targets: list[Session], name: str, value: Any, sender: tuple[str, int]) -> None:
        if name not in self.params_type.model_fields:
            self._refuse(sender, f"unknown parameter {name[:64]!r}; {PREFIX}/params lists them")
            return
        for session in targets:
            try:
                params = self.params_type.model_validate({**session.params.model_dump(), name: value})
            except ValidationError as error:
                self._refuse(sender, describe_validation_error(error))
                return  # the same value fails the same way for every session
            self.sessions.params_changed(session, params, tell_client=True)
            self.changes += 1

    def _recall(self, targets: list[Session], slot: Any, sender: tuple[str, int]) -> None:
        if isinstance(slot, float) and slot.is_integer():
            slot = int(slot)  # TouchDesigner and Resolume send numbers as floats
        if not isinstance(slot, int) or isinstance(slot, bool) or not 1 <= slot <= 9:
            self._refuse(sender, f"{PREFIX}/preset takes a slot from 1 to 9, got {str(slot)[:20]!r}")
            return
        for session in targets:
            preset = session.presets[slot - 1] if len(session.presets) >= slot else None
            if preset is None or not preset.params:  # the page sends an empty slot as a preset without values
                self._refuse(sender, f"session {session.short_id} has no preset {slot}")
                continue
            try:
                params = self.params_type.model_validate({**session.params.model_dump(), **preset.params})
            except ValidationError as error:  # checked when kept; a pipeline's rule across values may still refuse
                self._refuse(sender, f"preset {slot} of session {session.short_id}: {describe_validation_error(error)}")
                continue
            self.sessions.params_changed(session, params, tell_client=True)
            self.changes += 1

    def _describe(self, sender: tuple[str, int]) -> None:
        """One /live/param message per parameter to the sender: name, type, default, min, max."""
        schema = self.params_type.model_json_schema()["properties"]
        for name, field in schema.items():
            builder = OscMessageBuilder(f"{PREFIX}/param")
            for arg in (name, field.get("type", "string"), str(field.get("default", "")),
                        str(field.get("minimum", "")), str(field.get("maximum", ""))):
                builder.add_arg(arg)
            if self.transport is not None:
                self.transport.sendto(builder.build().dgram, sender)

    def _refuse(self, sender: tuple[str, int], problem: str) -> None:
        self.refusals += 1
        if self.log_lines.take():
            log.info("OSC from %s:%d refused: %s", sender[0], sender[1], problem)


async def listen(host: str, port: int, sessions: SessionManager, params_type: type[ParamsModel]) -> tuple[asyncio.DatagramTransport, OscReceiver]:
    """The OSC endpoint on host:port (UDP); close the transport to stop it."""
    receiver = OscReceiver(sessions, params_type)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: receiver, local_addr=(host, port))
    log.info("OSC: listening on udp://%s:%d (%s/<param> VALUE)", host, transport.get_extra_info("sockname")[1], PREFIX)
    return transport, receiver
