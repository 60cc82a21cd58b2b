"""Finding the decoder layers of a causal language model.

Steering and extraction both hook the *output* of each decoder block (the residual stream
after the block). The blocks are found structurally rather than by class name: class names
change between transformers releases, and a hook that silently matches nothing is the worst
failure a steering library can have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "BlockDiscoveryError",
    "band_width",
    "context_length",
    "default_layer_band",
    "find_blocks",
    "hidden_size_of",
    "num_layers_of",
    "training_band",
]


def _half_up(x: float) -> int:
    """``x`` rounded half up (Python's ``round`` rounds half to even: 2.5 -> 2)."""
    return math.floor(x + 0.5)


def band_width(num_layers: int) -> int:
    """The width of a steering band: a sixth of the stack, rounded half up, at least one."""
    return max(1, _half_up(num_layers / 6))


def default_layer_band(num_layers: int) -> list[int]:
    """Layers steered when none are given: a band just before the middle of the stack.

    Early layers still encode surface form and late layers are committed to the next token.
    On SmolLM2 (30 layers) the band 12–16 gave the most even effect over the five emotions
    at the same dose (docs/strength-and-calibration.md); 10–19 and 6–14 were weaker on fear
    and disgust.
    """
    start = min(num_layers - 1, _half_up(0.4 * num_layers))
    return list(range(start, min(num_layers, start + band_width(num_layers))))


def training_band(num_layers: int) -> list[int]:
    """Layers trained when none are given (:func:`emovec.train`): from a third of the stack,
    three tenths of it wide (SmolLM2's 30 layers: 10–18). Wider than the band a mean
    difference is steered at: a trained vector learns how much each layer takes."""
    start = min(num_layers - 1, _half_up(num_layers / 3))
    return list(range(start, min(num_layers, start + max(1, _half_up(0.3 * num_layers)))))


def context_length(model: nn.Module) -> int | None:
    """The longest input the model's configuration admits, if it declares one."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class BlockDiscoveryError(LookupError):
    """Raised when the decoder layers of a model cannot be identified."""


def _text_config(model: nn.Module) -> object | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


def num_layers_of(model: nn.Module) -> int | None:
    """Number of decoder layers the model's (text) config declares, if any."""
    config = _text_config(model)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def hidden_size_of(model: nn.Module) -> int | None:
    """Width of the residual stream the model's (text) config declares, if any."""
    config = _text_config(model)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_block_stack(modules: nn.ModuleList) -> bool:
    """A stack of decoder blocks: at least one entry, all of one type, each with parameters."""
    if len(modules) == 0:
        return False
    first = type(modules[0])
    return all(type(m) is first for m in modules) and any(True for _ in modules[0].parameters())


def _parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _resolve_path(model: nn.Module, path: str) -> nn.Module:
    module: nn.Module = model
    for part in path.split("."):
        child = getattr(module, part, None)
        if not isinstance(child, nn.Module):
            raise BlockDiscoveryError(
                f"{type(model).__name__} has no module at {path!r} (stopped at {part!r})."
            )
        module = child
    return module


def find_blocks(
    model: nn.Module,
    blocks: str | Sequence[nn.Module] | None = None,
) -> list[nn.Module]:
    """Return the decoder blocks of ``model`` in depth order.

    Args:
        model: Any Hugging Face causal LM (or a bare decoder). Multimodal wrappers such as
            Gemma 3 are handled: the text stack is the one whose length matches the text
            config's layer count.
        blocks: Override for architectures this search does not understand: either a dotted
            attribute path to the block list (``"transformer.blocks"``) or the blocks
            themselves (``extract`` and ``steer`` take it as ``blocks=`` too).

    Returns:
        The blocks; the output of block ``i`` is what layer ``i`` of an emotion vector refers to.

    Raises:
        BlockDiscoveryError: when no stack of identical blocks is found, naming what was
            looked for and how to override.
    """
    if blocks is not None:
        if isinstance(blocks, str):
            stack = _resolve_path(model, blocks)
            if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
                raise BlockDiscoveryError(
                    f"blocks={blocks!r} names a {type(stack).__name__}, not a list of blocks."
                )
            found = list(stack)
        else:
            found = list(blocks)
        if not found or not all(isinstance(m, nn.Module) for m in found):
            raise BlockDiscoveryError(f"blocks={blocks!r} does not name a non-empty module list.")
        return found

    expected = num_layers_of(model)
    stacks = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and _is_block_stack(m)
    ]
    if expected is not None:
        stacks = [(name, m) for name, m in stacks if len(m) == expected]
    # Several candidates happen in multimodal models (a vision tower of the same depth); the
    # language stack is the one under the decoder when the model names it, else the heaviest.
    if len(stacks) > 1:
        decoder = _decoder_of(model)
        if decoder is not None:
            under = [(n, m) for n, m in stacks if any(m is d for d in decoder.modules())]
            stacks = under or stacks
    if not stacks:
        wanted = f"{expected} identical blocks" if expected else "identical blocks"
        raise BlockDiscoveryError(
            f"Could not find the decoder layers of {type(model).__name__}: looked for a "
            f"torch.nn.ModuleList of {wanted} (the config's num_hidden_layers). Pass "
            "blocks='dotted.path.to.blocks' (e.g. 'model.layers') to say where they are."
        )
    _, best = max(stacks, key=lambda item: _parameter_count(item[1]))
    return list(best)


def _decoder_of(model: nn.Module) -> nn.Module | None:
    get_decoder = getattr(model, "get_decoder", None)
    if not callable(get_decoder):
        return None
    try:
        decoder = get_decoder()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return decoder if isinstance(decoder, nn.Module) and decoder is not model else None


def layer_output(output: object) -> torch.Tensor:
    """The hidden states inside a decoder block's output (a tensor or a tuple led by one)."""
    hidden = output[0] if isinstance(output, tuple) else output
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"Decoder layer returned {type(output).__name__}, expected a tensor.")
    return hidden


def replace_layer_output(output: object, hidden: torch.Tensor) -> object:
    """``output`` with its hidden states replaced, keeping the container shape."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden
