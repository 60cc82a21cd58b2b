"""The model passes of word importance: one forward and backward pass, or batched losses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from emovec.analysis._importance_inputs import Encoded


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the block, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _embedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Module):
        raise TypeError("The model has no input embeddings: give a Hugging Face causal LM.")
    return embedding


def _device(model: nn.Module) -> torch.device:
    return next(_embedding(model).parameters()).device


def _target_nll(
    logits: torch.Tensor, ids: torch.Tensor, starts: list[int], lengths: list[int]
) -> torch.Tensor:
    """Per row, the mean NLL of ``ids[row, start : start + length]`` under ``logits``."""
    losses = []
    for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        predicted = logits[row, start - 1 : start + length - 1]
        predicted = predicted.to(torch.promote_types(predicted.dtype, torch.float32))
        losses.append(F.cross_entropy(predicted, ids[row, start : start + length]))
    return torch.stack(losses)


def gradient_norms(model: nn.Module, encoded: Encoded, num_words: int) -> tuple[list[float], float]:
    """Each word's summed-gradient norm, and the loss."""
    ids = torch.tensor([encoded.context + encoded.target], device=_device(model))
    with torch.enable_grad():
        embeds = _embedding(model)(ids).detach().requires_grad_(True)
        logits = model(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=False
        ).logits
        loss = _target_nll(logits, ids, [len(encoded.context)], [len(encoded.target)])[0]
        (grad,) = torch.autograd.grad(loss, embeds)
    grad = grad[0, : len(encoded.context)].double()
    owners = torch.tensor(encoded.token_words, device=grad.device)
    sums = torch.zeros(num_words, grad.shape[-1], dtype=grad.dtype, device=grad.device)
    sums.index_add_(0, owners[owners >= 0], grad[owners >= 0])
    return sums.norm(dim=-1).tolist(), float(loss.detach())


@torch.no_grad()
def losses(model: nn.Module, batch: list[Encoded]) -> list[float]:
    """The target loss of each encoded prompt, in one right-padded forward pass."""
    rows = [e.context + e.target for e in batch]
    width = max(len(r) for r in rows)
    device = _device(model)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, device=device)
        mask[i, : len(row)] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    starts, lengths = [len(e.context) for e in batch], [len(e.target) for e in batch]
    return _target_nll(logits, ids, starts, lengths).tolist()
