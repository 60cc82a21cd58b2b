"""The logit lens of a causal LM: its final norm and LM head, found structurally.

The head is ``model.get_output_embeddings()``. The final norm is found by watching one tiny
forward pass: it is the module that takes the last decoder block's output and returns exactly
what the head is fed (``model.norm``, ``transformer.ln_f``, ``decoder.final_layer_norm``...).
No class or attribute names are matched, so renamed or new architectures work as long as that
structure holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from emovec._scope import reading_hook, scoped_reading
from emovec.layers import find_blocks, layer_output
from emovec.models import input_device

__all__ = ["LensError", "find_lens"]  # used by emovec.analysis.decode


class LensError(LookupError):
    """Raised when a model's LM head or final norm cannot be identified."""


@dataclass(frozen=True)
class _Lens:
    """What reads a final hidden state as logits: ``head(norm(h))``.

    Attributes:
        head: The LM head (the output embeddings).
        norm: The final norm between the last block and the head, or ``None`` when the head
            reads the last block's output directly.
    """

    head: nn.Module
    norm: nn.Module | None

    def logits(self, hidden: torch.Tensor, *, norm: bool) -> torch.Tensor:
        """Float32 logits ``[rows, vocab]`` of ``hidden`` ``[rows, hidden]``, through the final
        norm first when ``norm`` (and the model has one)."""
        x = hidden
        with torch.inference_mode():
            if norm and self.norm is not None:
                x = self.norm(x.to(**_placement(self.norm, x)))
            return self.head(x.to(**_placement(self.head, x))).float().cpu()


def _placement(module: nn.Module, fallback: torch.Tensor) -> dict[str, Any]:
    """The device and floating dtype of ``module``'s first parameter (or ``fallback``'s)."""
    parameter = next(module.parameters(), None)
    if parameter is None or not parameter.is_floating_point():
        return {"device": fallback.device, "dtype": fallback.dtype}
    return {"device": parameter.device, "dtype": parameter.dtype}


def _same(a: object, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


def _head_of(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        raise LensError(
            f"{type(model).__name__} has no LM head (get_output_embeddings() returned "
            f"{head!r}): decoding needs a causal LM such as AutoModelForCausalLM gives."
        )
    return head


def find_lens(model: PreTrainedModel, *, norm: bool = True) -> _Lens:
    """The LM head of ``model`` and, if ``norm``, its final norm, found from one forward pass
    of two tokens (without ``norm`` no pass is run and the lens has no norm).

    Raises:
        LensError: when the model has no head, or when no single module maps the last
            block's output to the head's input (say, a norm followed by a projection).
    """
    head = _head_of(model)
    if not norm:
        return _Lens(head=head, norm=None)
    last = find_blocks(model)[-1]
    seen: dict[str, torch.Tensor] = {}
    candidates: list[tuple[nn.Module, object, object]] = []
    excluded = {id(m) for m in last.modules()} | {id(m) for m in head.modules()}

    def after_last(_module: nn.Module, _args: Any, output: Any) -> None:
        seen["last"] = layer_output(output).detach()

    def before_head(_module: nn.Module, args: Any) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen["head"] = args[0].detach()

    def watch(module: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, args: Any, output: Any) -> None:
            if "last" in seen and "head" not in seen and args:
                candidates.append((module, args[0], output))

        return hook

    key = object()  # another thread's forward pass meanwhile goes by these hooks
    handles = [
        last.register_forward_hook(reading_hook(key, after_last)),
        head.register_forward_pre_hook(reading_hook(key, before_head)),
    ]
    handles += [
        m.register_forward_hook(reading_hook(key, watch(m)))
        for m in model.modules()
        if id(m) not in excluded
    ]
    ids = torch.tensor([[1, 2]], device=input_device(model))
    try:
        with torch.inference_mode(), scoped_reading(key):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if "last" not in seen or "head" not in seen:
        raise LensError(
            f"A forward pass of {type(model).__name__} did not reach both its last decoder "
            "block and its LM head, so its logit lens is unknown."
        )
    fed, last_output = seen["head"], seen["last"]
    # Hooks fire as modules finish, so the innermost module that does the mapping comes first.
    for module, given, output in candidates:
        if _same(given, last_output) and _same(output, fed):
            return _Lens(head=head, norm=module)
    if _same(last_output, fed):
        return _Lens(head=head, norm=None)
    raise LensError(
        f"Could not find the final norm of {type(model).__name__}: no single module maps the "
        "last decoder block's output to the LM head's input. Decode with norm=False to read "
        "directions through the LM head alone."
    )
