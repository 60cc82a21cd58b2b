"""The OpenAI chat-completions wire format: the request schema (checked strictly: a wrong
type is refused, never coerced), the error body, and the response and stream chunks.

Only what the server implements is accepted: an OpenAI field that would change the answer
in a way the server cannot honour (tools, logprobs, penalties, ``n`` > 1...) is refused with
400 when set to anything but its neutral value, and an unknown field is refused as the
OpenAI API refuses it, so a misspelt ``emotion`` never silently answers plain.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

__all__ = [
    "APIError",
    "ChatRequest",
    "Message",
    "chunk",
    "completion",
    "from_validation_error",
]


class APIError(Exception):
    """A refused request: its HTTP status and the OpenAI error body.

    Args:
        status: The HTTP status (4xx for the client's mistakes).
        message: What was wrong, and what to send instead.
        type: OpenAI's error type (``invalid_request_error``, ``rate_limit_error``...).
        param: The request field at fault, if one is.
        code: A short machine-readable code.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    """A text part of a message's content (``{"type": "text", "text": ...}``)."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    """One turn; ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None  # accepted and ignored, as templates have no place for it

    @field_validator("content", mode="wrap")
    @classmethod
    def _text_only(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(
                "content must be text, or a list of text parts ({'type': 'text', 'text': ...}); "
                "images, audio and files are not supported"
            ) from None

    def text(self) -> str:
        """The content as one text (text parts joined by newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def as_turn(self) -> dict[str, str]:
        """``{"role", "content"}`` for the chat template."""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: bool = False


class ChatRequest(_Strict):
    """``POST /v1/chat/completions``'s body: OpenAI's fields the server honours, and
    ``emotions`` (emotion → α, what :func:`emovec.steering.steer` takes) or
    ``emotion_policy`` (``"empathic"``: the mix chosen from the emotion recognised in the last
    user turn, :class:`emovec.empathy.EmpathicPolicy`)."""

    model: str
    messages: list[Message] = Field(min_length=1)
    emotions: dict[str, float] | None = None
    emotion_policy: Literal["empathic"] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    user: str | None = None
    # Neutral values only (checked by unsupported()).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop", mode="wrap")
    @classmethod
    def _texts(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise ValueError("stop must be a string or a list of strings") from None

    def unsupported(self) -> APIError | None:
        """The first field set to something the server cannot honour, as an error."""
        if self.n not in (None, 1):
            return APIError(400, "Only n=1 is served: send one request per answer.", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                return APIError(
                    400,
                    f"{name} is not supported: the bank's calibrated repetition penalty applies.",
                    param=name,
                )
        if self.logprobs:
            return APIError(400, "logprobs are not supported.", param="logprobs")
        if self.logit_bias:
            return APIError(400, "logit_bias is not supported.", param="logit_bias")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            return APIError(
                400,
                "Give max_tokens or max_completion_tokens, not both.",
                param="max_completion_tokens",
            )
        return None

    def stops(self) -> list[str]:
        """The stop strings (none, one, or a list)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def from_validation_error(error: ValidationError) -> APIError:
    """The first problem pydantic found, as a 400 naming the field."""
    first = error.errors(include_url=False)[0]
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
    ).lstrip(".")
    if first["type"] == "json_invalid":
        return APIError(400, f"The body is not valid JSON: {first['msg']}.", code="invalid_json")
    if first["type"] == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {where}.", param=where or None
        )
    message = f"{where}: {first['msg']}." if where else f"{first['msg']}."
    return APIError(400, message, param=where or None, code="invalid_value")


def new_id() -> str:
    """A completion id (``chatcmpl-`` and 24 hex digits)."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The token counts of one completion."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    completion_id: str,
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    completion_id: str,
    model: str,
    delta: dict[str, str] | None,
    finish_reason: str | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``: a delta (``None``: the usage chunk, no choices)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if counts is not None:
        body["usage"] = counts
    return body
