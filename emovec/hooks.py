"""The hooks that steer: how fixed per-layer vectors meet the hidden states during forward.

:func:`emovec.steering.steer` decides *what* each layer receives (the deltas, their dose);
this module applies it: the :class:`Steering` hooks, the steering methods (how a layer's
vector meets a hidden state), the :class:`Schedule` over generated tokens, and the tracker
that tells prompt positions from generated ones under the KV cache and without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from emovec.layers import layer_output, replace_layer_output

__all__ = ["METHODS", "SINK_RATIO", "Method", "Positions", "Schedule", "Steering", "steered"]

Positions = Literal["all", "prompt", "generated", "last"]
Method = Literal["add", "project", "angular"]
METHODS: tuple[Method, ...] = ("add", "project", "angular")

# A position whose hidden norm exceeds this many typical norms is an attention sink (on
# SmolLM2 the first token's norm is ~100x the others'): "project" leaves it alone.
SINK_RATIO = 10.0


@dataclass(frozen=True)
class Schedule:
    """Strength over the generated tokens, as a factor on α.

    ``begin`` for the first ``hold`` generated tokens, then linearly to ``end`` over ``ramp``
    tokens, then ``end``. Prompt positions (when steered) get factor 1.

    Examples:
        ``Schedule(begin=1.5, hold=8, end=0.5, ramp=16)``: strong while the answer sets its
        tone, then lighter. ``Schedule(begin=0.0, hold=4, end=1.0, ramp=8)``: ramp in once
        the answer has begun.
    """

    begin: float = 1.0
    hold: int = 0
    end: float = 1.0
    ramp: int = 1

    def __post_init__(self) -> None:
        for name in ("begin", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Schedule.{name} must be a number, not {value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"Schedule.{name} must be finite, not {value}.")
        for name in ("hold", "ramp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Schedule.{name} must be an integer, not {value!r}.")
        if self.hold < 0 or self.ramp < 1:
            raise ValueError(f"Schedule needs hold >= 0 and ramp >= 1, not {self}.")

    def factors(self, generated_index: torch.Tensor) -> torch.Tensor:
        """Factor for each generated token index (0 = the first generated token)."""
        progress = ((generated_index - self.hold).to(torch.float32) / self.ramp).clamp(0, 1)
        return self.begin + (self.end - self.begin) * progress

    def to_dict(self) -> dict[str, Any]:
        return {"begin": self.begin, "hold": self.hold, "end": self.end, "ramp": self.ramp}


def steered(
    hidden: torch.Tensor, added: torch.Tensor, method: Method, typical_norm: float
) -> torch.Tensor:
    """``hidden`` ``[batch, seq, H]`` steered by ``added`` (broadcastable) under ``method``.

    Where ``added`` is zero the hidden state is returned bit-identical, for every method.
    """
    if method == "add":
        return hidden + added
    size = added.norm(dim=-1, keepdim=True)
    steered = size > 0
    if method == "angular":
        moved = hidden + added
        norm = hidden.norm(dim=-1, keepdim=True)
        rotated = moved * (norm / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.where(steered, rotated, hidden)
    direction = added / size.clamp_min(torch.finfo(hidden.dtype).tiny)
    component = (hidden * direction).sum(dim=-1, keepdim=True)
    lift = torch.minimum((size - component).clamp_min(0), 2 * size)
    sink = hidden.norm(dim=-1, keepdim=True) > SINK_RATIO * typical_norm
    lift = torch.where(steered & ~sink, lift, 0)
    return torch.where(lift > 0, hidden + lift * direction, hidden)


def past_length(kwargs: Mapping[str, Any]) -> int:
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


class CallTracker:
    """Knows, for the current forward call, where its positions sit in the sequence.

    With a KV cache, a call's first position is the cache length, and the prompt is whatever
    the first, cache-less call saw. Without a cache, ``generate`` re-runs the whole sequence
    one token longer each step; such a call continues the previous one. (So, without a cache,
    a new ``generate`` whose prompt is exactly the previous call's tokens plus one looks like
    a continuation: re-enter the steering between such calls, which resets this tracker.)
    """

    def __init__(self) -> None:
        self.offset = 0
        self.prompt_length: int | None = None
        self._previous: torch.Tensor | None = None

    def reset(self) -> None:
        self.offset, self.prompt_length, self._previous = 0, None, None

    def before_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        first = ids if isinstance(ids, torch.Tensor) else embeds
        if not isinstance(first, torch.Tensor):
            return
        width = int(first.shape[1])
        past = past_length(kwargs)
        if past > 0:
            self.offset = past
            if self.prompt_length is None:  # steering began in the middle of a generation
                self.prompt_length = past
            return
        self.offset = 0
        previous = self._previous
        continues = (
            kwargs.get("use_cache") is False
            and isinstance(ids, torch.Tensor)
            and previous is not None
            and self.prompt_length is not None
            and ids.shape[0] == previous.shape[0]
            and ids.shape[1] == previous.shape[1] + 1
            and torch.equal(ids[:, :-1], previous)
        )
        if not continues:
            self.prompt_length = width
        self._previous = ids.detach() if isinstance(ids, torch.Tensor) else None


def _block_placement(block: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    """Where the block computes, if its parameters say so (not for offloaded "meta" ones)."""
    for parameter in block.parameters():
        if parameter.is_floating_point():
            if parameter.device.type == "meta":
                return None
            return parameter.device, parameter.dtype
    return None


class Steering:
    """Hooks adding fixed per-layer vectors to a model's decoder layers.

    Use as a context manager (re-enterable after exit) or with :meth:`apply` / :meth:`remove`
    where ``with`` does not fit, such as notebook cells. Build it with :func:`steer`.

    Attributes:
        positions: Which positions are steered.
        method: How a layer's vector meets the hidden state (see the module docstring).
        schedule: Strength over the generated tokens, or ``None`` for constant.
        dose: Per batch row (one entry unless ``rows`` was given), ``Σ_l ‖delta_l‖ / ‖h_l‖``
            after any clamping.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        deltas: Mapping[int, torch.Tensor],
        *,
        positions: Positions = "all",
        method: Method = "add",
        schedule: Schedule | None = None,
        hidden_norms: Mapping[int, float] | None = None,
        dose: Sequence[float] = (0.0,),
    ) -> None:
        if positions not in ("all", "prompt", "generated", "last"):
            raise ValueError(
                f"positions must be 'all', 'prompt', 'generated' or 'last', not {positions!r}."
            )
        if method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, not {method!r}.")
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, not {type(schedule).__name__}.")
        if schedule is not None and positions in ("prompt", "last"):
            raise ValueError(
                f"A schedule varies the strength over generated tokens; positions={positions!r} "
                "does not tell them apart. Use positions='generated' or 'all'."
            )
        self.positions: Positions = positions
        self.method: Method = method
        self.schedule = schedule
        self.dose = list(dose)
        self._model = model
        self._tracker = CallTracker()
        self._paused = False
        norms = dict(hidden_norms or {})
        self._targets: list[tuple[int, nn.Module, torch.Tensor, float]] = []
        for index, delta in sorted(deltas.items()):
            placement = _block_placement(blocks[index])
            # Cast and move once here, not on every forward step (the hook corrects it once
            # more for blocks whose weights arrive at call time, e.g. accelerate offloading).
            if placement is not None:
                delta = delta.to(device=placement[0], dtype=placement[1])
            self._targets.append((index, blocks[index], delta, norms.get(index, math.inf)))
        self._handles: list[RemovableHandle] = []

    @property
    def layers(self) -> list[int]:
        """Indices of the hooked layers (empty when every strength is zero)."""
        return [index for index, *_ in self._targets]

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def deltas(self) -> list[torch.Tensor]:
        """What each hooked layer adds (``[hidden]``, or ``[rows, hidden]``), in layer order."""
        return [delta for _, _, delta, _ in self._targets]

    def apply(self) -> Steering:
        """Start steering. Raises if this steering is already applied."""
        if self._handles:
            raise RuntimeError("This steering is already applied; remove() it first.")
        self._tracker.reset()
        try:
            if self._targets and (
                self.positions in ("prompt", "generated") or self.schedule is not None
            ):
                self._handles.append(
                    self._model.register_forward_pre_hook(
                        self._tracker.before_forward, with_kwargs=True
                    )
                )
            for _, block, delta, norm in self._targets:
                self._handles.append(block.register_forward_hook(self._hook(delta, norm)))
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Stop steering; safe to call when not applied."""
        while self._handles:
            self._handles.pop().remove()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward calls inside this block run unsteered (the hooks stay in place).

        Used for a plain pass beside the steered one, e.g. by :mod:`emovec.guidance`.
        """
        before, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = before

    def __enter__(self) -> Steering:
        return self.apply()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _weights(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Per-position factor ``[seq]`` for this call (``None``: 1 everywhere)."""
        positions, tracker, schedule = self.positions, self._tracker, self.schedule
        width = hidden.shape[1]
        if positions == "all" and schedule is None:
            return None
        if positions == "last":
            weights = torch.zeros(width, device=hidden.device)
            weights[-1] = 1.0
            return weights
        if tracker.prompt_length is None:
            raise RuntimeError(
                f"positions={positions!r} (or a schedule) needs the forward calls to go through "
                "the model given to steer(), which tells prompt from generated positions."
            )
        absolute = tracker.offset + torch.arange(width, device=hidden.device)
        index = absolute - tracker.prompt_length
        generated = index >= 0
        if positions == "prompt":
            return (~generated).to(torch.float32)
        factors = schedule.factors(index) if schedule is not None else torch.ones(width)
        factors = torch.where(generated, factors.to(hidden.device), 1.0)
        return factors if positions == "all" else factors * generated

    def _hook(self, delta: torch.Tensor, typical_norm: float) -> Any:
        placed = {"delta": delta}

        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if self._paused:
                return output
            hidden = layer_output(output)
            delta = placed["delta"]
            if delta.device != hidden.device or delta.dtype != hidden.dtype:
                delta = placed["delta"] = delta.to(device=hidden.device, dtype=hidden.dtype)
            if delta.dim() == 2 and delta.shape[0] != hidden.shape[0]:
                raise ValueError(
                    f"steer(rows=...) gave {delta.shape[0]} rows but the batch has "
                    f"{hidden.shape[0]}; pass one mix per row (sampling several sequences "
                    "per prompt multiplies the batch)."
                )
            added = delta[:, None, :] if delta.dim() == 2 else delta[None, None, :]
            weights = self._weights(hidden)
            if weights is not None:
                added = added * weights[None, :, None].to(hidden.dtype)
            return replace_layer_output(output, steered(hidden, added, self.method, typical_norm))

        return hook
