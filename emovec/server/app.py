"""The HTTP app: ``POST /v1/chat/completions`` (plain or server-sent events),
``GET /v1/models`` and the playground page at ``GET /``, OpenAI's error body for every
refusal, and the batching scheduler's life (started with the app, drained and stopped with
it)."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from torch import nn
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.empathy import EmpathicPolicy
from emovec.server.batching import Job, Scheduler
from emovec.server.engine import Engine
from emovec.server.options import ServerOptions
from emovec.server.protocol import (
    APIError,
    ChatRequest,
    chunk,
    completion,
    from_validation_error,
    new_id,
    usage,
)
from emovec.vectors import EmotionVectors

__all__ = ["create_app"]

_log = logging.getLogger("emovec.server")

# The playground: one static file, no external requests (its own origin only).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-cache",
}


def create_app(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    bank: EmotionVectors,
    options: ServerOptions | None = None,
    *,
    policy: EmpathicPolicy | None = None,
) -> FastAPI:
    """An OpenAI-compatible app serving ``model`` steered with ``bank``, per request.

    Every request is answered as ``steer(model, bank, **emotions, tokenizer=tokenizer)``
    answers (its bank's recipe: prompt, decoding, clean decoding, query guidance); requests
    that arrive together share batched ``generate`` calls (see
    :mod:`emovec.server.batching`). Serve it with :func:`emovec.server.serve` or any ASGI
    server; the batching starts and stops with the app's lifespan.

    Args:
        model: The causal LM (its tokenizer left-padding with a pad token, as
            :func:`emovec.models.load_model` gives it).
        tokenizer: Its tokenizer.
        bank: The emotion vectors.
        options: Limits and batching (default :class:`ServerOptions`).
        policy: What ``"emotion_policy": "empathic"`` answers with (its classifier reads the
            last user turn; give it a tokenizer of its own, it runs beside the batches);
            ``None``: such requests are refused. The chosen mix and the recognised emotion
            come back under ``"emovec"`` in the completion (the first chunk when streaming).

    ``GET /`` serves the playground (``emovec/server/page.html``): a slider per emotion of
    the bank, and the plain and steered answers to a message streamed side by side.

    Returns:
        The app; ``app.state.scheduler`` is its :class:`~emovec.server.batching.Scheduler`.
    """
    options = options or ServerOptions()
    engine = Engine(model, tokenizer, bank, options)
    recognising = asyncio.Lock()  # one recognition at a time: the policy's tokenizer
    scheduler = Scheduler(engine.run, options)
    page = importlib.resources.files("emovec.server").joinpath("page.html").read_text("utf-8")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(engine.warm_up)
        scheduler.start()
        try:
            yield
        finally:
            await scheduler.close()

    app = FastAPI(title="emovec", lifespan=lifespan)
    app.state.scheduler = scheduler

    @app.exception_handler(APIError)
    async def refused(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
        body = APIError(error.status_code, message).body()
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        _log.exception("request failed")
        body = APIError(500, f"Internal error: {error}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": options.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "emovec",
                    "emotions": list(bank.emotions),
                }
            ],
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        body = await _body(request, options.max_body_bytes)
        try:
            asked = ChatRequest.model_validate_json(body)
        except ValidationError as err:
            raise from_validation_error(err) from None
        chosen: dict[str, Any] | None = None
        if asked.emotion_policy is not None:
            async with recognising:
                asked, chosen = await asyncio.to_thread(_empathic, asked, policy)
        job = engine.admit(asked)
        scheduler.submit(job)
        completion_id = new_id()
        if asked.stream:
            usage_too = asked.stream_options is not None and asked.stream_options.include_usage
            return StreamingResponse(
                _events(job, scheduler, completion_id, options.model_name, usage_too, chosen),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        try:
            while True:
                event = await job.events.get()
                if event[0] == "error":
                    raise event[1]
                if event[0] == "done":
                    _, reason, content, tokens = event
                    answer = completion(
                        completion_id, options.model_name, content, reason, len(job.prompt), tokens
                    )
                    return JSONResponse(answer if chosen is None else {**answer, "emovec": chosen})
        finally:
            scheduler.withdraw(job)

    return app


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    too_large = APIError(
        413, f"The body is larger than this server accepts ({limit} bytes).", code="too_large"
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


def _sse(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


def _empathic(
    asked: ChatRequest, policy: EmpathicPolicy | None
) -> tuple[ChatRequest, dict[str, Any]]:
    """The request with the mix the policy chose for its last user turn, and what it chose."""
    if policy is None:
        raise APIError(
            400,
            "This server answers no emotion_policy: it was started without one.",
            param="emotion_policy",
        )
    if asked.emotions:
        raise APIError(400, "Give emotions or emotion_policy, not both.", param="emotion_policy")
    users = [message.text() for message in asked.messages if message.role == "user"]
    if not users:
        raise APIError(400, "The messages have no user turn to answer.", param="messages")
    try:
        recognition = policy.recognise(users[-1:])[0]
    except ValueError as err:
        raise APIError(400, f"The last user turn cannot be read: {err}", param="messages") from None
    mix = policy.mix_for(recognition)
    recognised = {"emotion": recognition.emotion, "probability": round(recognition.probability, 4)}
    return asked.model_copy(update={"emotions": mix}), {"emotions": mix, "recognised": recognised}


async def _events(
    job: Job,
    scheduler: Scheduler,
    completion_id: str,
    model: str,
    usage_too: bool,
    chosen: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """The answer as OpenAI's chunks, then ``[DONE]``; a client leaving ends its row. What
    an emotion policy chose rides on the first chunk, under ``"emovec"``."""
    try:
        first = chunk(completion_id, model, {"role": "assistant", "content": ""})
        yield _sse(first if chosen is None else {**first, "emovec": chosen})
        while True:
            event = await job.events.get()
            if event[0] == "delta":
                yield _sse(chunk(completion_id, model, {"content": event[1]}))
                continue
            if event[0] == "error":
                yield _sse(event[1].body())
            else:
                _, reason, _, tokens = event
                yield _sse(chunk(completion_id, model, {}, reason))
                if usage_too:
                    yield _sse(
                        chunk(completion_id, model, None, counts=usage(len(job.prompt), tokens))
                    )
            break
        yield _sse("[DONE]")
    finally:
        scheduler.withdraw(job)
