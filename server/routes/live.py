"""A user's session: its websocket (server/protocol.py), its MJPEG streams, its WebRTC connection
(server/webrtc.py) and its read-only viewer links (server/streaming.py)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Literal

from fastapi import APIRouter, HTTPException, WebSocket
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from server import protocol, streaming, webrtc
from server.oneshot import ErrorResponse
from server.routes.deps import Live
from server.sessions import Session, TooManyStreams

SESSION_WAIT_S = 1.0  # a stream or viewer-token request waits this long for its user's websocket to connect
REFUSALS = {404: {"model": ErrorResponse}, 429: {"model": ErrorResponse}}

router = APIRouter()


class WebRtcOffer(BaseModel):
    """The page's WebRTC offer for its session, with the stream token its websocket was sent."""

    sdp: str = Field(max_length=webrtc.MAX_SDP_CHARS)
    type: Literal["offer"]
    stream_token: str = Field(max_length=64)


class WebRtcAnswer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"


class ViewerTokenResponse(BaseModel):
    viewer_token: str
    view_path: str


async def session_of(live: Live, user_id: str) -> Session:
    session = await live.sessions.wait_for(user_id, SESSION_WAIT_S)
    if session is None:
        raise HTTPException(404, "No session with this id is connected: open the websocket first")
    return session


@router.websocket("/api/ws/{user_id}")
async def websocket(websocket: WebSocket, user_id: str, live: Live) -> None:
    conversation = protocol.Conversation(
        websocket, live.sessions, live.loaded.pipeline.InputParams, live.info.input_mode, live.config,
        takes_image_prompt=live.info.takes_image_prompt,
    )
    task = asyncio.current_task()
    assert task is not None
    live.conversations.add(task)
    try:
        await conversation.run(user_id)
    finally:
        live.conversations.discard(task)


@router.get("/api/stream/{user_id}", response_class=StreamingResponse, responses=REFUSALS)
async def stream(user_id: str, live: Live, stream_token: str = "") -> Response:
    """The session's MJPEG stream. Every open stream of a session gets every frame (a few per session);
    the owner's (with the `stream_token` its websocket was sent) always opens, in place of another."""
    session = await session_of(live, user_id)
    owner = secrets.compare_digest(stream_token.encode(), session.stream_token.encode())
    try:
        return streaming.session_stream(session, live.sessions, owner=owner)
    except TooManyStreams as error:
        raise HTTPException(429, str(error)) from None


@router.post("/api/webrtc/{user_id}", responses={400: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                                                  404: {"model": ErrorResponse}})
async def webrtc_offer(user_id: str, offer: WebRtcOffer, live: Live) -> WebRtcAnswer:
    """WebRTC for the session (server/webrtc.py): the camera as a video track up, the output as one
    down, parameters over a data channel. A new offer replaces the session's connection (a reload)."""
    session = await session_of(live, user_id)
    if not secrets.compare_digest(offer.stream_token.encode(), session.stream_token.encode()):
        raise HTTPException(403, "Wrong stream token: only the page holding the session's websocket can send its camera")
    try:
        peer = await live.open_peer("page", session, offer.sdp)
    except webrtc.OfferError as error:
        raise HTTPException(400, str(error)) from None
    return WebRtcAnswer(sdp=peer.pc.localDescription.sdp)


@router.get("/api/viewer-token/{user_id}", responses={404: {"model": ErrorResponse}})
async def get_viewer_token(user_id: str, live: Live) -> ViewerTokenResponse:
    """The read-only viewer link of a connected session: GET `view_path` shows its frames."""
    session = await session_of(live, user_id)
    return ViewerTokenResponse(viewer_token=session.viewer_token, view_path=f"/api/view/{session.viewer_token}")


@router.get("/api/view/{token}", response_class=StreamingResponse, responses=REFUSALS)
async def view(token: str, live: Live) -> Response:
    """A session's MJPEG stream for read-only viewers (up to --max-viewers), until the session ends."""
    session = live.sessions.get_by_viewer_token(token)
    if session is None:
        raise HTTPException(404, "No session has this viewer link: the session has ended, or the link is wrong")
    try:
        return streaming.viewer_stream(session, live.sessions)
    except TooManyStreams as error:
        raise HTTPException(429, str(error)) from None
