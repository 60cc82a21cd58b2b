"""Where steering acts: the context that applied it, and the forward call's positions there.

A :class:`~emovec.hooks.Steering`'s hooks sit on the model, which every thread shares; they
act only where the steering is active in the current :mod:`contextvars` context. Applying
a steering marks it active in the applying context, under a key made for that application.
A thread started with :class:`threading.Thread` runs in a fresh context, so a plain
``generate`` in another thread is not steered; an asyncio task copies the context that
creates it, so tasks created inside ``with steer(...)`` are.

Each active key also holds its :class:`Call`: where the current forward call's positions
sit in the sequence (prompt vs generated). It lives in the context too, so two threads or
tasks steering at once keep separate counts. Values are never mutated, only replaced.

Hooks that *read* the model (extraction, the read-out behind emotion recognition,
EmotionDecode's readings) are scoped the same way (:func:`scoped_reading`,
:func:`reading_hook`): while one thread reads hidden states, a ``generate`` in another thread
(a server answering while it recognises the next message) passes the reading's hooks by,
neither feeding them nor stopped by them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch


@dataclass(frozen=True)
class Call:
    """Where the current forward call of an active steering sits.

    Attributes:
        prompt_length: The prompt's length (padded), fixed by the generation's first call;
            ``None`` until a call went through the model's pre-hook.
        offset: Absolute position of the call's first position (the cache length).
        ids: The call's input ids when it ran without a KV cache, to tell the next step of
            the same generation from a new prompt.
    """

    prompt_length: int | None = None
    offset: int = 0
    ids: torch.Tensor | None = None


# Per context: active key -> its Call. Each change sets a new mapping; none is mutated.
_ACTIVE: ContextVar[Mapping[object, Call]] = ContextVar(
    "emovec_active_steering", default=MappingProxyType({})
)


def call_of(key: object | None) -> Call | None:
    """The key's call state if it is active in the current context, else ``None``."""
    return None if key is None else _ACTIVE.get().get(key)


def put(key: object, call: Call) -> None:
    """Mark ``key`` active in the current context, with ``call`` as its state."""
    _ACTIVE.set({**_ACTIVE.get(), key: call})


def drop(key: object) -> None:
    """Make ``key`` inactive in the current context (harmless when it is not active)."""
    active = _ACTIVE.get()
    if key in active:
        _ACTIVE.set({k: v for k, v in active.items() if k is not key})


# Per context: the readings under way (their keys). Set anew on entry, reset on exit.
_READING: ContextVar[frozenset[object]] = ContextVar("emovec_reading", default=frozenset())


@contextmanager
def scoped_reading(key: object) -> Iterator[None]:
    """Within the block, the hooks of the reading ``key`` act in this context only."""
    token = _READING.set(_READING.get() | {key})
    try:
        yield
    finally:
        _READING.reset(token)


def reads_here(key: object) -> bool:
    """Whether the reading ``key`` is under way in the current context."""
    return key in _READING.get()


def reading_hook(key: object, hook: Callable[..., None]) -> Callable[..., None]:
    """``hook``, run only where the reading ``key`` is under way: another thread's forward
    pass goes by it."""

    def scoped(*args: Any) -> None:
        if reads_here(key):
            hook(*args)

    return scoped


def past_length(kwargs: Mapping[str, Any]) -> int:
    """How many positions the KV cache handed to this call holds (0 without one)."""
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    # transformers ≥ 5.24 passes the cache as ``cache`` (and no ``cache_position``).
    past = kwargs.get("past_key_values", kwargs.get("cache"))
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    try:  # legacy tuple-of-tuples cache
        return int(past[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


def _continues(previous: Call, ids: object, kwargs: Mapping[str, Any]) -> bool:
    """Whether a cache-less call is the next step of the previous one.

    Without a cache ``generate`` re-runs the whole sequence, one position longer each step:
    same batch, one more position, and every row's prefix one of the previous rows (beam
    search reorders and duplicates rows, so the prefix need not be the same row's).
    """
    before = previous.ids
    if not (
        kwargs.get("use_cache") is False
        and isinstance(ids, torch.Tensor)
        and before is not None
        and previous.prompt_length is not None
        and ids.shape[0] == before.shape[0]
        and ids.shape[1] == before.shape[1] + 1
    ):
        return False
    prefixes = ids[:, None, :-1] == before.to(ids.device)[None]  # [rows, previous rows, seq]
    return bool(prefixes.all(dim=-1).any(dim=-1).all())


def advance(key: object | None, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Record, for ``key`` if active here, where the forward call about to run sits.

    With a KV cache, a call's first position is the cache length and the prompt is what the
    first, cache-less call saw. Without one, a call that continues the previous one (see
    :func:`_continues`) keeps the prompt length; any other call starts a new prompt. (So a
    new cache-less ``generate`` whose prompt is exactly the previous call's rows plus one
    token looks like a continuation: re-enter the steering between such calls.)
    """
    previous = call_of(key)
    if previous is None or key is None:
        return
    ids = kwargs.get("input_ids", args[0] if args else None)
    first = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
    if not isinstance(first, torch.Tensor):
        return
    past = past_length(kwargs)
    if past > 0:
        prompt = previous.prompt_length if previous.prompt_length is not None else past
        put(key, Call(prompt, past, None))  # (steering may begin mid-generation)
        return
    width: int | None = int(first.shape[1])
    if _continues(previous, ids, kwargs):
        width = previous.prompt_length
    kept = ids.detach() if isinstance(ids, torch.Tensor) else None
    put(key, Call(width, 0, kept if kwargs.get("use_cache") is False else None))
