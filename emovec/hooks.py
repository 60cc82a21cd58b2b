"""The hooks that steer: how fixed per-layer vectors meet the hidden states during forward.

:func:`emovec.steering.steer` decides *what* each layer receives (the deltas, their dose);
this module applies it: the :class:`Steering` hooks, the steering methods (how a layer's
vector meets a hidden state) and the :class:`~emovec.Schedule` over generated tokens. Where
the hooks act (the context that applied them) and which positions a forward call holds is
:mod:`emovec._scope`'s part.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from emovec import _scope
from emovec._doses import DoseError, cast_delta, check_hidden_norms, median_norm
from emovec._placement import Schedule
from emovec.layers import layer_output, replace_layer_output

__all__ = ["METHODS", "SINK_RATIO", "Method", "Positions", "Steering", "steered"]

Positions = Literal["all", "prompt", "generated", "last"]
Method = Literal["add", "project", "angular"]
METHODS: tuple[Method, ...] = ("add", "project", "angular")

# A position whose hidden norm exceeds this many typical norms is an attention sink (on
# SmolLM2 the first token's norm is ~100x the others'): "project" leaves it alone.
SINK_RATIO = 10.0


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


def _block_device_dtype(block: nn.Module) -> tuple[torch.device, torch.dtype] | None:
    """Where and in what dtype the block computes, if its parameters say so (not for
    offloaded "meta" ones)."""
    for parameter in block.parameters():
        if parameter.is_floating_point():
            if parameter.device.type == "meta":
                return None
            return parameter.device, parameter.dtype
    return None


@dataclass
class _Target:
    """One hooked layer: its block, the delta its hook adds, its typical hidden norm."""

    index: int
    block: nn.Module
    delta: torch.Tensor
    typical_norm: float


class Steering:
    """Hooks adding fixed per-layer vectors to a model's decoder layers.

    Use as a context manager (re-enterable after exit) or with :meth:`apply` / :meth:`remove`
    where ``with`` does not fit, such as notebook cells. Build it with :func:`steer`, whose
    docstring says where it acts: only in the context (thread, asyncio task) that applied it.

    Attributes:
        positions: Which positions are steered.
        method: How a layer's vector meets the hidden state (see the module docstring).
        schedule: Strength over the generated tokens, or ``None`` for constant.
        dose: Per batch row (one entry unless ``rows`` was given), ``Σ_l ‖delta_l‖ / ‖h_l‖``
            after any clamping.

    Raises:
        DoseError: for deltas that are not finite, or not in the model's dtype.
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
                "A schedule varies the factor on α over generated tokens; "
                f"positions={positions!r} does not tell them apart. Use positions='generated' "
                "or 'all'."
            )
        self.positions: Positions = positions
        self.method: Method = method
        self.schedule = schedule
        self.dose = list(dose)
        self._model = model
        norms = dict(hidden_norms or {})
        self._targets: list[_Target] = []
        for index, delta in sorted(deltas.items()):
            if not bool(torch.isfinite(delta).all()):
                raise DoseError(f"The steering vector for layer {index} is not finite.")
            where = _block_device_dtype(blocks[index])
            # Cast and move once here, not on every forward step (the hook does it once
            # more for blocks whose weights arrive at call time, e.g. accelerate offloading).
            if where is not None:
                delta = cast_delta(delta, *where, index)
            norm = float(norms.get(index, math.inf))
            self._targets.append(_Target(index, blocks[index], delta, norm))
        self._handles: list[RemovableHandle] = []
        self._key: object | None = None  # this application's key, while applied
        # The live hidden-norm check: the first active forward measures each layer once.
        self._live: dict[int, float] = {}
        self._to_measure = {t.index for t in self._targets if math.isfinite(t.typical_norm)}

    @property
    def layers(self) -> list[int]:
        """Indices of the hooked layers (empty when every strength is zero)."""
        return [target.index for target in self._targets]

    @property
    def active(self) -> bool:
        """Whether the steering is applied (it then steers the context that applied it)."""
        return self._key is not None

    def _repr_html_(self) -> str:
        """One line of HTML for notebooks: where, how and how strongly it steers."""
        state = "applied" if self.active else "not applied"
        dose = ", ".join(f"{d:.3g}" for d in self.dose)
        where = html.escape(f"layers {self.layers}, {self.method}, positions {self.positions}")
        return f"<div><b>Steering</b> ({state}): {where}, dose {dose}</div>"

    def deltas(self) -> list[torch.Tensor]:
        """What each hooked layer's hook adds, in the order of :attr:`layers`.

        Each is ``[hidden]`` (added to every row) or, with ``rows=``, ``[rows, hidden]`` (one
        per batch row), in the block's dtype and device: the very tensors the hooks add. With
        ``method="add"`` a steered position of layer ``l`` leaves the block as exactly
        ``h + delta_l`` (times the schedule's factor where one is given; positions not
        steered are left as they are). With ``"project"`` and ``"angular"`` ``delta_l`` is
        the target the method aims at (see :func:`steered`): what reaches ``h`` depends on
        ``h``, so read it from a forward pass.
        """
        return [target.delta for target in self._targets]

    def apply(self) -> Steering:
        """Start steering the current context (thread or task) until :meth:`remove`.

        Raises:
            RuntimeError: If this steering is already applied (in any context).
        """
        if self._key is not None:
            raise RuntimeError("This steering is already applied; remove() it first.")
        try:
            if self._targets and (self.positions != "all" or self.schedule is not None):
                self._handles.append(
                    self._model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
                )
            for target in self._targets:
                self._handles.append(target.block.register_forward_hook(self._hook(target)))
        except Exception:
            self.remove()
            raise
        self._key = object()
        _scope.put(self._key, _scope.Call())
        return self

    def remove(self) -> None:
        """Stop steering, in every context; safe to call when not applied."""
        key, self._key = self._key, None
        while self._handles:
            self._handles.pop().remove()
        _scope.drop(key)  # other contexts keep a stale key, which no hook answers to

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward calls inside this block run unsteered (the hooks stay in place).

        Pauses only the current context. Used for a plain pass beside the steered one, e.g.
        by :mod:`emovec.guidance`.
        """
        key = self._key
        saved = _scope.call_of(key)
        if saved is None:
            yield
            return
        _scope.drop(key)
        try:
            yield
        finally:
            if self._key is key:  # still applied: active again, where it was
                _scope.put(key, saved)

    def __enter__(self) -> Steering:
        return self.apply()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _before_forward(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        _scope.advance(self._key, args, kwargs)

    def _weights(self, hidden: torch.Tensor, call: _scope.Call) -> torch.Tensor | None:
        """Per-position factor ``[seq]`` for this call (``None``: 1 everywhere)."""
        positions, schedule = self.positions, self.schedule
        width = hidden.shape[1]
        if positions == "all" and schedule is None:
            return None
        if positions == "last" and call.prompt_length is None:  # a call outside the model
            weights = torch.zeros(width, device=hidden.device)
            weights[-1] = 1.0
            return weights
        if call.prompt_length is None:
            raise RuntimeError(
                f"positions={positions!r} (or a schedule) needs the forward calls to go through "
                "the model given to steer(), which tells prompt from generated positions."
            )
        absolute = call.offset + torch.arange(width, device=hidden.device)
        index = absolute - call.prompt_length
        if positions == "last":  # the newest position as each token is read
            return (index >= -1).to(torch.float32)
        generated = index >= 0
        if positions == "prompt":
            return (~generated).to(torch.float32)
        factors = schedule.factors(index) if schedule is not None else torch.ones(width)
        factors = torch.where(generated, factors.to(hidden.device), 1.0)
        return factors if positions == "all" else factors * generated

    def _measure(self, target: _Target, hidden: torch.Tensor) -> None:
        """Note the live hidden norm at ``target``'s layer; once every steered layer is
        measured, compare them with the bank's (one warning at most per steering)."""
        if target.index not in self._to_measure or target.index in self._live:
            return
        self._live[target.index] = median_norm(hidden, SINK_RATIO)
        if set(self._live) >= self._to_measure:
            self._to_measure = set()
            recorded = {t.index: t.typical_norm for t in self._targets}
            check_hidden_norms(self._live, recorded)

    def _hook(self, target: _Target) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            call = _scope.call_of(self._key)
            if call is None:  # not applied in this context
                return output
            hidden = layer_output(output)
            delta = target.delta
            if delta.device != hidden.device or delta.dtype != hidden.dtype:
                delta = target.delta = cast_delta(delta, hidden.device, hidden.dtype, target.index)
            if delta.dim() == 2 and delta.shape[0] != hidden.shape[0]:
                raise ValueError(
                    f"steer(rows=...) gave {delta.shape[0]} rows but the batch has "
                    f"{hidden.shape[0]}; pass one mix per row (sampling several sequences "
                    "per prompt multiplies the batch)."
                )
            if self._to_measure:
                self._measure(target, hidden)
            added = delta[:, None, :] if delta.dim() == 2 else delta[None, None, :]
            weights = self._weights(hidden, call)
            if weights is not None:
                added = added * weights[None, :, None].to(hidden.dtype)
            return replace_layer_output(
                output, steered(hidden, added, self.method, target.typical_norm)
            )

        return hook
