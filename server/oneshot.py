"""POST /api/process: one image in, one generated JPEG out, for scripts.

The image and the parameters get the same checks as a websocket frame: the pipeline's `InputParams`
(unknown keys and out-of-range values are errors, never clamped) and the frame byte and pixel caps,
checked before any pixel is decoded. The frame then takes its turn with the live sessions (a job in
the session manager's turn order), so scripts share the model fairly with performers.

The body must arrive within --upload-timeout; only then does the request take one of the
--max-process-requests places, for at most --process-timeout while it waits for and goes through the
model. More requests than places are refused at once with 503.

Errors are JSON, {"detail": "..."}, with the status saying whose fault it is (docs/protocol.md):
400 a malformed form, a missing or damaged image; 408 the body came too slowly; 413 over the size
caps; 415 not a form, or an image that is not a JPEG or PNG; 422 a bad parameter; 500 the model
failed; 503 busy, the model unavailable, or shutting down; 504 no image within --process-timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable

from fastapi import HTTPException
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from pipelines import ParamsModel
from server.frames import Frame, Result
from server.imaging import FrameError, FrameTooLarge, UnsupportedFrame, check_image
from server.protocol import describe_validation_error
from server.sessions import Job, SessionManager

log = logging.getLogger(__name__)

FILE_FIELD = "file"
MAX_FIELD_BYTES = 65_536  # one parameter's value (a prompt is at most a few thousand characters)
MAX_FIELDS = 64
FORM_OVERHEAD_BYTES = 256 * 1024  # the parameters and the multipart framing, on top of the image
RETRY_AFTER_S = 1
UPLOADS_PER_SLOT = 4  # uploads in progress at once, per --max-process-requests place


class ErrorResponse(BaseModel):
    detail: str


_ERROR = {"model": ErrorResponse}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "The generated frame, `width` x `height` pixels"},
    400: {**_ERROR, "description": "Malformed multipart form; no image in `file`; a damaged image"},
    408: {**_ERROR, "description": "The request did not arrive within --upload-timeout"},
    413: {**_ERROR, "description": "Request or image over --max-frame-bytes, or image over --max-frame-pixels"},
    415: {**_ERROR, "description": "The body is not a form (multipart/form-data), or the image is not a JPEG or PNG"},
    422: {**_ERROR, "description": "An unknown parameter, or a value out of range or of the wrong type"},
    500: {**_ERROR, "description": "The model failed (a server fault)"},
    503: {**_ERROR, "description": "Too many requests in progress or the model unavailable (see Retry-After), or shutting down"},
    504: {**_ERROR, "description": "No image within --process-timeout (the model is busy or stalled)"},
}


class _BodyTooLarge(Exception):
    pass


def openapi_body(params_type: type[ParamsModel], input_mode: str) -> dict[str, Any]:
    """The request body for the OpenAPI docs: the image and the pipeline's parameters as form fields
    (the handler reads the form itself, with size caps, so FastAPI cannot describe it on its own)."""
    schema = params_type.model_json_schema()
    defs = schema.get("$defs", {})
    properties: dict[str, Any] = {}
    if input_mode == "image":
        properties[FILE_FIELD] = {"type": "string", "format": "binary", "description": "The image: JPEG or PNG"}
    properties.update(_inline_refs(schema.get("properties", {}), defs))
    body = {"type": "object", "properties": properties, "required": [FILE_FIELD] if input_mode == "image" else []}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(value, defs) for value in node]
    return node


class OneShot:
    """The one-shot API of one app: its limits, and the way from a request to the worker and back.

    A request first uploads (at most `UPLOADS_PER_SLOT * max_requests` at once, each within
    `upload_timeout`), then takes one of `max_requests` places while its frame waits for and goes
    through the model (within `process_timeout`): a slow upload never holds a place."""

    def __init__(
        self,
        sessions: SessionManager,
        params_type: type[ParamsModel],
        input_mode: str,
        *,
        max_requests: int,
        max_frame_bytes: int,
        max_frame_pixels: int,
        upload_timeout: float,
        process_timeout: float,
        shutdown: asyncio.Event,
    ) -> None:
        self.sessions = sessions
        self.metrics = sessions.metrics
        self.params_type = params_type
        self.input_mode = input_mode
        self.max_requests = max_requests
        self.max_uploads = UPLOADS_PER_SLOT * max_requests
        self.max_frame_bytes = max_frame_bytes
        self.max_frame_pixels = max_frame_pixels
        self.upload_timeout = upload_timeout
        self.process_timeout = process_timeout
        self.shutdown = shutdown
        self.uploads = 0  # event loop only
        self.in_progress = 0

    async def process(self, request: Request, model_available: Callable[[], bool]) -> bytes:
        """The generated JPEG for this request, or an HTTPException saying what is wrong."""
        try:
            frame = await self._receive(request)
            if not model_available():
                raise _busy("The model is not available right now (its thread is restarting or stalled); try again shortly")
            if self.in_progress >= self.max_requests:
                raise _busy(f"Too many one-shot requests in progress (the limit is {self.max_requests}); try again shortly")
            self.in_progress += 1
            try:
                with self.metrics.process_requests.track_inprogress():
                    return await self._generate(frame)
            finally:
                self.in_progress -= 1
        except HTTPException as error:
            if error.status_code == 503:
                self.metrics.errors.labels("busy").inc()
            elif 400 <= error.status_code < 500:
                self.metrics.errors.labels("input").inc()
            raise

    async def _receive(self, request: Request) -> Frame:
        """The request's frame, read within the upload timeout and checked (its header: the pixels are
        decoded by the worker)."""
        if self.uploads >= self.max_uploads:
            raise _busy(f"Too many uploads in progress (the limit is {self.max_uploads}); try again shortly")
        self.uploads += 1
        try:
            return await asyncio.wait_for(self._read_frame(request), self.upload_timeout)
        except asyncio.TimeoutError:
            raise HTTPException(
                408, f"The request did not arrive within {self.upload_timeout:g} s (--upload-timeout)"
            ) from None
        except ClientDisconnect:  # nobody reads the answer; no traceback for it
            log.info("one-shot: the client left during its upload")
            raise HTTPException(400, "The client disconnected during the upload") from None
        finally:
            self.uploads -= 1

    async def _read_frame(self, request: Request) -> Frame:
        form = await self._read_form(request)
        try:
            upload, values = self._split(form)
            params = self._validate(values)
            data = await upload.read() if upload is not None else None
        finally:
            await form.close()
        if data is not None:
            try:
                check_image(data, max_bytes=self.max_frame_bytes, max_pixels=self.max_frame_pixels)
            except FrameTooLarge as error:
                raise HTTPException(413, str(error)) from None
            except UnsupportedFrame as error:
                raise HTTPException(415, str(error)) from None
            except FrameError as error:
                raise HTTPException(400, str(error)) from None
        return Frame(params, data)

    async def _read_form(self, request: Request) -> FormData:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise HTTPException(
                415, f"Send multipart/form-data (the image in a {FILE_FIELD!r} field, the parameters as fields); "
                f"got {content_type[:100] or 'no content type'!r}"
            )
        limit = self.max_frame_bytes + FORM_OVERHEAD_BYTES
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(
                413, f"Request is {declared[:20]} bytes; the limit is {limit} (--max-frame-bytes plus the form)"
            )
        body = _capped(request.stream(), limit)
        parser: MultiPartParser | FormParser
        if content_type == "multipart/form-data":
            parser = MultiPartParser(
                request.headers, body, max_files=1, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
            )
            parser.spool_max_size = limit  # the image stays in memory: no file I/O on the event loop
        else:  # parameters only: text pipelines (an image pipeline hears that the image is missing)
            parser = FormParser(request.headers, body, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
        try:
            return await parser.parse()
        except MultiPartException as error:
            raise HTTPException(400, f"Malformed form: {error.message}") from None
        except _BodyTooLarge:
            raise HTTPException(413, f"Request is over {limit} bytes (--max-frame-bytes plus the form)") from None

    def _split(self, form: FormData) -> tuple[UploadFile | None, dict[str, str]]:
        upload, values = None, {}
        for name, value in form.multi_items():
            if name == FILE_FIELD:
                if not isinstance(value, UploadFile):
                    raise HTTPException(
                        400, f"The {FILE_FIELD!r} field must be a file upload (curl: -F {FILE_FIELD}=@photo.jpg)"
                    )
                upload = value
            elif isinstance(value, UploadFile):
                raise HTTPException(400, f"Unexpected file in the field {name[:64]!r}: send the image in {FILE_FIELD!r}")
            elif name in values:
                raise HTTPException(422, f"Parameter {name[:64]!r} is given twice")
            else:
                values[name] = value
        if self.input_mode == "image" and upload is None:
            raise HTTPException(400, f"No image: send a JPEG or PNG file in the {FILE_FIELD!r} field")
        if self.input_mode != "image" and upload is not None:
            raise HTTPException(400, "This pipeline makes images from text: send the parameters only, no file")
        return upload, values

    def _validate(self, values: dict[str, str]) -> ParamsModel:
        try:
            return self.params_type.model_validate(values)  # form values are text: "0.5", "true", "512"
        except ValidationError as error:
            raise HTTPException(422, describe_validation_error(error)) from None

    async def _generate(self, frame: Frame) -> bytes:
        """The frame takes its turn with the live sessions; its JPEG, or the error that says why not."""
        reply: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        job = Job(frame, reply)
        self.sessions.submit(job)
        shutdown = asyncio.ensure_future(self.shutdown.wait())
        try:
            await asyncio.wait({reply, shutdown}, timeout=self.process_timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            shutdown.cancel()
            self.sessions.cancel(job)  # a job still waiting (shutdown, deadline) is never taken
        if not reply.done():
            if self.shutdown.is_set():
                raise HTTPException(503, "The server is shutting down")
            self.metrics.errors.labels("deadline").inc()
            raise HTTPException(
                504, f"No image within {self.process_timeout:g} s (--process-timeout): the model is busy or stalled"
            )
        result = reply.result()
        if result.jpeg is not None:
            return result.jpeg
        if result.error_kind == "input":
            raise HTTPException(400, result.error or "The image cannot be decoded")
        if result.error_kind == "deadline":
            raise HTTPException(504, result.error or "The model took too long")
        raise HTTPException(500, result.error or "Model error")


def _busy(message: str) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge()
        yield chunk
