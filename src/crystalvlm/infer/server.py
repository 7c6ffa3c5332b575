"""An OpenAI-compatible HTTP server for a GenerationEngine, plus a web chat page.

    app = build_app(engine, "crystalvlm-tiny", api_key="secret")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: `POST /v1/chat/completions` (streamed as server-sent events in OpenAI's chunk format when
`"stream": true`), `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `GET /` (the chat page),
`GET /openapi.json` (the schema, from the pydantic models of openai_protocol.py) and `GET /docs`
(a page that shows it; it loads nothing from elsewhere, so it works offline).
With an API key, the `/v1` routes want `Authorization: Bearer <key>` and answer 401 without it.
Every refusal is a 4xx (503 when busy) with OpenAI's error body; the server keeps serving after any
of them. Concurrent requests are batched together by a background worker (request_batcher.py).

Limits. All are the operator's (`ServerLimits`, `crystalvlm serve --help`); no request can change them.

* Body: at most `max_request_bytes`, refused while it arrives, and all of it within `body_timeout_s`;
  parsed and checked off the event loop.
* Text: message count, then characters (`max_prompt_chars`, a bound no prompt within
  `max_prompt_tokens` exceeds) before anything is tokenised, then tokens, images included.
* Stop strings: how many, and how long each (matching them costs grows with the square of the length).
* Images: how many per request, bytes each, pixels each (from the header, before decoding), and the
  decoded pixels all requests being answered hold together (`max_pending_pixels`); only PNG, JPEG,
  WebP, GIF and BMP are decoded. Remote images are fetched only when allowed, from public addresses
  only, with one deadline and no redirects (remote_images.py).
* Load: requests being answered at once (`max_concurrent_requests`) and waiting in the batcher
  (`max_pending`); over either, 503 with `Retry-After`.
* Clients that hang up: a streamed answer stops when its stream is closed, a plain one when the
  connection is seen closed while it waits; either way its generation is cancelled.

Browsers. A key-less server on localhost is reachable from any web page the user opens. Two checks
keep such pages out: a POST must say `Content-Type: application/json` (a page can send text/plain
without asking, but JSON only after a CORS preflight, which this server never grants), and the `Host`
header must be a name the server answers to (`allowed_hosts`: localhost, the bound host, names the
operator adds) or a literal IP address, so a page on a domain rebound to 127.0.0.1 is refused.

Failures. An unexpected error answers 500 with a generic message; the details go to the server log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import html
import ipaddress
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Iterable

import anyio
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from crystalvlm.infer.engine import GenerationEngine, GenerationRequest, RequestError
from crystalvlm.infer.limits import Admission, Busy
from crystalvlm.infer.openai_protocol import (
    ApiError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    ServerLimits,
    chunk_body,
    completion_body,
    decode_images,
    error_body,
    fetch_remote_images,
    model_object,
    models_body,
    new_completion_id,
    parse_chat_request,
    usage_chunk_body,
)
from crystalvlm.infer.request_batcher import QueueFull, RequestBatcher

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
DISCONNECT_POLL_S = 0.25  # how often a waiting plain request looks whether its client is still there
INTERNAL_ERROR = "the server failed while answering this request; the details are in the server log"


def build_app(engine: GenerationEngine, model_name: str, api_key: str | None = None,
              limits: ServerLimits = ServerLimits(), allowed_hosts: Iterable[str] = LOCAL_HOSTS) -> FastAPI:
    """`allowed_hosts`: the names the Host header may carry (IP addresses are always accepted); "*"
    accepts any."""
    if limits.max_prompt_chars is None:
        limits = dataclasses.replace(limits, max_prompt_chars=prompt_chars_bound(engine, limits.max_prompt_tokens))
    batcher = RequestBatcher(engine, wait_s=limits.batch_wait_ms / 1000, max_pending=limits.max_pending)
    admission = Admission(limits.max_concurrent_requests, limits.max_pending_pixels)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="crystalvlm", summary=f"an OpenAI-compatible server for {model_name}", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.admission = admission
    app.add_middleware(HostCheck, allowed=allowed_hosts)

    # ------------------------------------------------------------------ errors in OpenAI's shape
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(error.detail), code=str(error.status_code)), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse(error_body(INTERNAL_ERROR, "server_error"), status_code=500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or incorrect API key; send 'Authorization: Bearer <key>'", code="invalid_api_key")

    errors = {status: {"model": ErrorResponse, "description": description} for status, description in (
        (400, "a refused request"), (401, "no or a wrong API key"), (404, "an unknown model"),
        (408, "the body arrived too slowly"), (413, "a body or an image over the limits"), (415, "not Content-Type: application/json"),
        (503, "busy: retry later"))}

    # ------------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        page = _static("chat.html")
        # The name goes into HTML text and a JavaScript string: escaped for each.
        page = page.replace("{{MODEL_NAME_JSON}}", json.dumps(model_name).replace("<", "\\u003c"))
        page = page.replace("{{MODEL_NAME}}", html.escape(model_name))
        # The page's max-tokens field starts at a value this server accepts and stops at its limit.
        page = page.replace("{{MAX_TOKENS}}", str(limits.max_tokens))
        page = page.replace("{{DEFAULT_MAX_TOKENS}}", str(min(128, limits.max_tokens)))
        return HTMLResponse(page.replace("{{NEEDS_KEY}}", "true" if api_key else "false"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs_page() -> HTMLResponse:
        return HTMLResponse(_static("docs.html").replace("{{MODEL_NAME}}", html.escape(model_name)))

    @app.get("/health", summary="whether the server is up, and how many requests wait")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "pending": batcher.pending}

    @app.get("/v1/models", response_model=ModelList, responses={401: errors[401]}, summary="the model served")
    async def list_models(request: Request) -> dict:
        check_key(request)
        return models_body(model_name, started)

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses={401: errors[401], 404: errors[404]},
             summary="one model")
    async def get_model(model_id: str, request: Request) -> dict:
        check_key(request)
        if model_id != model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server serves {model_name!r}", "model", "model_not_found")
        return model_object(model_name, started)

    @app.post(
        "/v1/chat/completions",
        summary="answer a conversation (images as image_url parts)",
        description="OpenAI's Chat Completions. With `\"stream\": true` the answer comes as server-sent events, "
                    "one `ChatCompletionChunk` each, then `data: [DONE]`.",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}},
        responses={200: {"model": ChatCompletion, "description": "the answer",
                         "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}}}},
                   **errors},
    )
    async def chat_completions(request: Request):
        check_key(request)
        _require_json(request)
        try:
            ticket = admission.admit()
        except Busy as error:
            raise _busy(error) from None
        handed_to_stream = False
        try:
            body = await _read_body(request, limits.max_request_bytes, limits.body_timeout_s)
            chat = await run_in_threadpool(parse_chat_request, body, model_name, limits)
            del body
            await fetch_remote_images(chat.images, limits)
            try:
                images = await run_in_threadpool(decode_images, chat.images, limits, ticket.hold_pixels)
            except Busy as error:
                raise _busy(error) from None
            chat.images = []  # the encoded bytes are no longer needed
            generation_request = GenerationRequest(chat.turns, images, cancel=threading.Event(), stop_strings=chat.stop_strings)
            prompt_tokens = await run_in_threadpool(_prompt_length, engine, generation_request, chat.config.max_new_tokens)
            if prompt_tokens > limits.max_prompt_tokens:
                raise ApiError(400, f"the prompt has {prompt_tokens} tokens (images included); this server accepts at most "
                                    f"{limits.max_prompt_tokens}", "messages", "context_length_exceeded")
            try:
                job = batcher.submit(generation_request, chat.config, stream=chat.stream)
            except QueueFull as error:
                raise _busy(error) from None
            completion_id = new_completion_id()
            if chat.stream:
                def close(job=job) -> None:
                    batcher.cancel(job)  # a no-op once it has finished
                    ticket.release()

                response = ClosingStream(
                    _events(job, completion_id, model_name, chat.include_usage), close,
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
                handed_to_stream = True
                return response
            result = await _answer_unless_hung_up(request, job, batcher)
            if result is None:
                return Response(status_code=499)  # nobody reads it; the status is for the access log
            return completion_body(completion_id, model_name, result.text, result.finish_reason, result.prompt_tokens,
                                   len(result.token_ids), chat.config.describe())
        finally:
            if not handed_to_stream:
                ticket.release()

    def openapi() -> dict:
        """FastAPI's schema, plus the request model (the route reads its body itself, off the event loop)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (ChatCompletionRequest, ChatCompletionChunk):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def prompt_chars_bound(engine: GenerationEngine, max_prompt_tokens: int) -> int:
    """Characters of text that certainly make more than `max_prompt_tokens` tokens: no token stands for
    more characters than its vocabulary entry has (byte-level entries spell each byte as one
    character), doubled for normalisers that merge characters."""
    vocabulary = engine.tokenizer.get_vocab()
    longest = max((len(entry) for entry in vocabulary), default=1)
    return max_prompt_tokens * max(longest, 1) * 2


def _static(name: str) -> str:
    return resources.files("crystalvlm.infer").joinpath(f"static/{name}").read_text(encoding="utf-8")


def _busy(error: Exception) -> ApiError:
    return ApiError(503, f"the server is busy ({error}); retry later", code="server_overloaded", kind="server_error",
                    headers={"Retry-After": "1"})


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = f"'{media_type}'" if media_type else "none"
        raise ApiError(415, f"the request body must be sent with Content-Type: application/json (got {shown})",
                       code="unsupported_media_type")


def _prompt_length(engine: GenerationEngine, request: GenerationRequest, max_new_tokens: int) -> int:
    try:
        return engine.prepare(request, max_new_tokens).length
    except RequestError as error:
        raise ApiError(400, str(error), "messages") from None


async def _read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body has {declared} bytes; at most {max_bytes} are accepted", code="request_too_large")
    body = bytearray()
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_bytes:
                    raise ApiError(413, f"the request body is over {max_bytes} bytes", code="request_too_large")
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s", code="request_timeout") from None
    return bytes(body)


async def _answer_unless_hung_up(request: Request, job, batcher: RequestBatcher):
    """The job's result; None (and the job cancelled) once the client has closed its connection."""
    try:
        while True:
            done, _ = await asyncio.wait({job.result}, timeout=DISCONNECT_POLL_S)
            if done:
                return job.result.result()
            if await request.is_disconnected():
                log.info("client gone: cancelling its request")
                batcher.cancel(job)
                return None
    except asyncio.CancelledError:
        batcher.cancel(job)
        raise


class ClosingStream(StreamingResponse):
    """A streamed response that calls `on_close` however it ends: finished, the client gone (even
    before the first event, when the body's generator never starts and its `finally` never runs),
    or failed."""

    def __init__(self, content, on_close, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def _events(job, completion_id: str, model_name: str, include_usage: bool):
    """Server-sent events: a role chunk, content chunks, a finishing chunk, optionally usage, [DONE]."""
    created = int(time.time())

    def event(body: dict) -> str:
        return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"

    try:
        yield event(chunk_body(completion_id, model_name, created, {"role": "assistant", "content": ""}))
        while (piece := await job.pieces.get()) is not None:
            yield event(chunk_body(completion_id, model_name, created, {"content": piece}))
        try:
            result = job.result.result()
        except Exception as error:
            log.error("a streamed generation failed", exc_info=error)
            yield event(error_body(INTERNAL_ERROR, "server_error"))
            yield "data: [DONE]\n\n"
            return
        yield event(chunk_body(completion_id, model_name, created, {}, result.finish_reason))
        if include_usage:
            yield event(usage_chunk_body(completion_id, model_name, created, result.prompt_tokens, len(result.token_ids)))
        yield "data: [DONE]\n\n"
    finally:
        # The client went away (or we are done): stop generating for it.
        job.request.cancel.set()


# ---------------------------------------------------------------------------- the Host header
class HostCheck:
    """ASGI middleware: answer only requests whose Host header names this server (DNS rebinding).

    Starlette's TrustedHostMiddleware does the same for names, but answers in plain text and has no
    notion of "any literal IP address"; this one answers in OpenAI's error shape.
    """

    def __init__(self, app, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {_host_name(name) for name in allowed}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and "*" not in self.allowed:
            header = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
            if not self.accepts(header):
                shown = repr(header[:100]) if header else "missing"
                message = (f"the Host header ({shown}) is not a name this server answers to; it answers to "
                           f"{', '.join(sorted(self.allowed))} and IP addresses (the operator adds names with --allowed-host)")
                response = JSONResponse(error_body(message, code="host_not_allowed", param="Host"), status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def accepts(self, header: str) -> bool:
        name = _host_name(header)
        if not name:
            return False
        if name in self.allowed:
            return True
        try:
            ipaddress.ip_address(name)  # a literal address: no DNS name a page could rebind
        except ValueError:
            return False
        return True


def _host_name(value: str) -> str:
    """'Example.COM.:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") > 1:  # a bare IPv6 address (an --allowed-host value)
        return value
    return value.partition(":")[0].rstrip(".")
