"""WHIP ingest and WHEP egress: the WebRTC-HTTP protocols that OBS (30 and later) and players speak.

- WHIP: POST /api/whip/{user_id} with an SDP offer (application/sdp) and `Authorization: Bearer
  <stream token>` (the page shows it): the client becomes the session's camera (server/webrtc.py,
  role "whip"). 201 with the answer and a Location; DELETE on the Location ends it.
- WHEP: POST /api/whep/{viewer_token} with an SDP offer: the session's output as a video track, for a
  viewer (the viewer link's token; counted against --max-viewers). 201 and a Location; DELETE ends it.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from server.oneshot import ErrorResponse
from server.routes.deps import Live
from server.routes.live import session_of
from server.sessions import Session, TooManyStreams
from server.webrtc import MAX_SDP_CHARS, OfferError, Peer, Role

SDP = "application/sdp"
REFUSALS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429)}

router = APIRouter()


async def read_offer(request: Request) -> str:
    """The request's SDP offer, bounded; 415 for another content type, 413 past MAX_SDP_CHARS."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != SDP:
        raise HTTPException(415, f"Send the SDP offer as {SDP}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SDP_CHARS:
            raise HTTPException(413, f"The offer is larger than {MAX_SDP_CHARS} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "The offer is not UTF-8 text") from None


def check_bearer(request: Request, session: Session) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), session.stream_token.encode()):
        raise HTTPException(401, "WHIP needs 'Authorization: Bearer <token>' with the session's token (shown on its page)",
                            headers={"WWW-Authenticate": "Bearer"})


async def answered(live: Live, role: Role, session: Session, offer: str, location: str) -> Response:
    try:
        peer = await live.open_peer(role, session, offer)
    except OfferError as error:
        raise HTTPException(400, str(error)) from None
    except TooManyStreams as error:
        raise HTTPException(429, str(error)) from None
    return Response(peer.pc.localDescription.sdp, 201, media_type=SDP, headers={"Location": f"{location}/{peer.id}"})


def peer_of(live: Live, session: Session, role: Role, peer_id: str) -> Peer:
    peer = live.peers.get(peer_id)
    if peer is None or peer.session is not session or peer.role != role:
        raise HTTPException(404, "No such connection: it has ended already")
    return peer


@router.post("/api/whip/{user_id}", status_code=201, responses=REFUSALS)
async def whip(user_id: str, request: Request, live: Live) -> Response:
    """A WHIP client (OBS) as the session's camera; it replaces the session's previous one."""
    session = await session_of(live, user_id)
    check_bearer(request, session)
    return await answered(live, "whip", session, await read_offer(request), f"/api/whip/{user_id}")


@router.delete("/api/whip/{user_id}/{peer_id}", responses=REFUSALS)
async def whip_end(user_id: str, peer_id: str, request: Request, live: Live) -> Response:
    session = await session_of(live, user_id)
    check_bearer(request, session)
    await peer_of(live, session, "whip", peer_id).close()
    return Response(status_code=200)


@router.post("/api/whep/{token}", status_code=201, responses=REFUSALS)
async def whep(token: str, request: Request, live: Live) -> Response:
    """The session's output for a WHEP player, as a viewer link shows it."""
    session = live.sessions.get_by_viewer_token(token)
    if session is None:
        raise HTTPException(404, "No session has this viewer token: the session has ended, or the token is wrong")
    return await answered(live, "whep", session, await read_offer(request), f"/api/whep/{token}")


@router.delete("/api/whep/{token}/{peer_id}", responses=REFUSALS)
async def whep_end(token: str, peer_id: str, live: Live) -> Response:
    session = live.sessions.get_by_viewer_token(token)
    if session is None:
        raise HTTPException(404, "No session has this viewer token")
    await peer_of(live, session, "whep", peer_id).close()
    return Response(status_code=200)
