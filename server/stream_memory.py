"""Each session's temporal-consistency memory (pipelines/_temporal.py), and the budget they share
(--temporal-memory-mb): owned by the inference thread.

Before a session's frame runs, what its memory will hold at the frame's parameters is computed
(`pipeline.memory_bytes`, known before any frame). If that fits in what the other sessions leave of
the budget, the memory holds it all; if not, it banks fewer layers (`max_bytes`); if not even its
latents fit, the frame runs without memory, as at temporal_consistency 0. Either way the session hears
so once (and again when it changes back). `held` is what all memories hold now, for health and metrics.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from pipelines import SupportsStreamMemory
from server.frames import Frame
from server.sessions import Session, Source

MIB = 2**20


@dataclass
class _Planned:
    bytes: int  # what the memory holds at its session's last frame's parameters
    fit: str  # "full", "lowered" or "off": what the session was last told


class StreamMemories:
    def __init__(self, pipeline: SupportsStreamMemory, budget: int) -> None:
        self.pipeline = pipeline
        self.budget = budget
        self._memories: weakref.WeakKeyDictionary[Session, Any] = weakref.WeakKeyDictionary()
        self._planned: weakref.WeakKeyDictionary[Session, _Planned] = weakref.WeakKeyDictionary()
        self.held = 0  # bytes all sessions' memories hold, as of the last frame

    def for_frames(self, jobs: list[tuple[Source, Frame]]) -> tuple[list[Any], list[str | None]]:
        """Each frame's stream memory (None: a one-shot job, or a session whose memory does not fit),
        and what its session should hear about it."""
        memories: list[Any] = []
        notices: list[str | None] = []
        for source, frame in jobs:
            if not isinstance(source, Session):
                memories.append(None)
                notices.append(None)
                continue
            memory, notice = self._fitted(source, frame)
            memories.append(memory)
            notices.append(notice)
        return memories, notices

    def count(self) -> None:
        """After a frame: what the memories of the sessions still open hold."""
        self.held = sum(memory.nbytes() for session, memory in list(self._memories.items()) if not session.closed)

    def _fitted(self, session: Session, frame: Frame) -> tuple[Any, str | None]:
        memory = self._memories.get(session)
        if memory is None or frame.new_source:  # its first frame, or the first of another input
            memory = self._memories[session] = self.pipeline.new_memory()
        needed = self.pipeline.memory_bytes(frame.params)
        others = sum(p.bytes for s, p in list(self._planned.items()) if s is not session and not s.closed)
        free = max(0, self.budget - others)
        previous = self._planned.get(session)
        if needed <= free:
            memory.max_bytes = None
            planned = _Planned(needed, "full")
        elif (lowered := self.pipeline.memory_bytes(frame.params, max_bytes=free)) <= free:
            memory.max_bytes = free
            planned = _Planned(lowered, "lowered")
        else:
            del self._memories[session]  # what it held goes now
            memory = None
            planned = _Planned(0, "off")
        self._planned[session] = planned
        if planned.fit == (previous.fit if previous else "full"):
            return memory, None
        return memory, self._notice(planned, needed, free, frame)

    def _notice(self, planned: _Planned, needed: int, free: int, frame: Frame) -> str:
        size = f"{getattr(frame.params, 'width', '?')}x{getattr(frame.params, 'height', '?')}"
        what = f"{_mib(needed)} at {size}, {getattr(frame.params, 'steps', '?')} steps"
        budget = f"{_mib(free)} of the server's {_mib(self.budget)} (--temporal-memory-mb) are free"
        if planned.fit == "full":
            return "Temporal consistency is on in full again"
        if planned.fit == "lowered":
            return (f"Temporal consistency lowered: it needs {what}; {budget}, so it carries over "
                    f"{_mib(planned.bytes)} (fewer attention layers)")
        return (f"Temporal consistency is off for now: it needs {what}; {budget}. "
                "A smaller size or fewer steps need less")


def _mib(count: int) -> str:
    return f"{count / MIB:.0f} MiB" if count >= 10 * MIB else f"{count / MIB:.1f} MiB"
