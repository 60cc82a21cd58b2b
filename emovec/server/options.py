"""The server's limits and batching settings, fixed when the app is built."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DRAIN_TIMEOUT", "ServerOptions"]

DRAIN_TIMEOUT = 30.0
"""Seconds a shutdown waits for requests in flight before it cancels them."""


@dataclass(frozen=True)
class ServerOptions:
    """How ``emovec serve`` batches requests and what it accepts.

    Attributes:
        model_name: The model's id in ``GET /v1/models``; a request naming another model is
            refused (404, as OpenAI does).
        batch_window: Seconds a request waits for others to share its batch (counted from the
            oldest waiting request's arrival).
        max_batch: Most requests generated together in one batched ``generate``.
        max_queue: Most requests admitted at once (generating or waiting); one more gets
            429.
        max_tokens: Most new tokens a request may ask for (``max_tokens``).
        default_tokens: New tokens when a request gives no ``max_tokens`` (at most
            ``max_tokens``; fewer if the context ends sooner).
        max_strength: Largest ``|α|`` of one emotion in a request's ``emotions``.
        max_dose: The dose a request's mix may reach (see :func:`emovec.steering.steer`);
            ``None``: the bank's own limit for each mix (1.5 times its calibrated dose, at
            least ``MAX_DOSE``). Above it a request is refused, never clamped.
        clean: Clean decoding (slurs and obscenities blocked), for every request.
        max_body_bytes: Largest request body.
        max_stop: Most ``stop`` strings in a request (OpenAI allows 4).

    Raises:
        ValueError: For counts below 1, a negative or infinite window, or limits that are
            not finite and positive.
    """

    model_name: str = "emovec"
    batch_window: float = 0.01
    max_batch: int = 8
    max_queue: int = 64
    max_tokens: int = 1024
    default_tokens: int = 256
    max_strength: float = 5.0
    max_dose: float | None = None
    clean: bool = True
    max_body_bytes: int = 512 * 1024
    max_stop: int = 4

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("model_name must not be empty.")
        for name in ("max_batch", "max_queue", "max_tokens", "default_tokens", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}.")
        if (
            isinstance(self.max_stop, bool)
            or not isinstance(self.max_stop, int)
            or self.max_stop < 0
        ):
            raise ValueError(f"max_stop must be a count (0 or more), not {self.max_stop!r}.")
        if not (math.isfinite(self.batch_window) and self.batch_window >= 0):
            raise ValueError(
                f"batch_window must be finite seconds, 0 or more, not {self.batch_window}."
            )
        limits = {"max_strength": self.max_strength, "max_dose": self.max_dose}
        for name, limit in limits.items():
            if limit is not None and not (math.isfinite(limit) and limit > 0):
                raise ValueError(f"{name} must be finite and positive, not {limit}.")
