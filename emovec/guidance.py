"""Guidance in logit space: each next token chosen from a mix of a steered and a plain pass,
or pushed toward what the question contributes (:func:`query_guidance_kwargs`).

While a :class:`~emovec.steering.Steering` is applied, ``model.generate`` runs the steered
model; :class:`PlainGuidance`, a logits processor, runs the same model once more per step with
the steering paused (its own KV cache; paused in the generating thread or task only) and
mixes the two next-token distributions::

    log p(t) = weight · log p_steered(t) + (1 − weight) · log p_plain(t)

``weight`` 1 is the steered model alone, 0 the plain one; in between the plain pass, which
still reads the question unsteered, holds the answer to its topic while the steered pass
lends it its tone. The cost is a second forward pass per token (``benchmarks/`` measures it).

Usage::

    with steer(model, vecs, joy=1.0) as steering:
        guide = PlainGuidance(model, steering, inputs["attention_mask"], weight=0.5)
        model.generate(**inputs, logits_processor=[guide], do_sample=False)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, LogitsProcessor, RepetitionPenaltyLogitsProcessor
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._placement import query_guidance_of
from emovec.steering import Steering

__all__ = ["PlainGuidance", "query_guidance_kwargs"]


class PlainGuidance(LogitsProcessor):
    """A logits processor mixing the steered next-token distribution with the plain model's.

    One instance serves one ``generate`` call (it keeps the plain pass's cache).

    Args:
        model: The steered model (the one ``generate`` runs).
        steering: The steering applied while generating; paused for the plain pass.
        attention_mask: The prompt's attention mask, ``[batch, prompt_length]`` (left padding
            is read from it).
        weight: Share of the steered distribution, in [0, 1].
        repetition_penalty: The penalty ``generate`` applies (it reaches only the steered
            scores, so the plain ones get it here).

    Raises:
        ValueError: If ``weight`` is outside [0, 1] or not finite.
    """

    def __init__(
        self,
        model: nn.Module,
        steering: Steering,
        attention_mask: torch.Tensor,
        *,
        weight: float = 0.5,
        repetition_penalty: float = 1.0,
    ) -> None:
        if isinstance(weight, bool) or not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
            raise ValueError(f"weight must be a number in [0, 1], not {weight!r}.")
        self.model = model
        self.steering = steering
        self.weight = float(weight)
        self._mask = attention_mask.detach().clone()
        self._penalty = (
            RepetitionPenaltyLogitsProcessor(repetition_penalty)
            if repetition_penalty != 1.0
            else None
        )
        self._cache: DynamicCache | None = None
        self._seen = 0
        # transformers ≥ 5.24 names the cache argument ``cache`` (``past_key_values`` before).
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def _plain_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        if batch != self._mask.shape[0]:
            raise ValueError(
                f"PlainGuidance got {batch} rows but its attention mask has "
                f"{self._mask.shape[0]}; beam search and several sequences per prompt are not "
                "supported (use one sequence per row)."
            )
        grown = length - self._mask.shape[1]
        if grown < 0:
            raise ValueError("PlainGuidance serves one generate call; make a new one per call.")
        if grown:
            ones = self._mask.new_ones(batch, grown)
            self._mask = torch.cat([self._mask, ones], dim=1)
        mask = self._mask.to(input_ids.device)
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        if self._cache is None:
            self._cache = DynamicCache()
        new = input_ids[:, self._seen :]
        with torch.no_grad(), self.steering.paused():
            out = self.model(
                input_ids=new,
                attention_mask=mask,
                position_ids=positions[:, self._seen :],
                use_cache=True,
                **{self._cache_argument: self._cache},
            )
        self._seen = length
        return out.logits[:, -1, :].float()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        plain = self._plain_logits(input_ids)
        if self._penalty is not None:
            plain = self._penalty(input_ids, plain)
        steered = torch.log_softmax(scores.float(), dim=-1)
        mixed = self.weight * steered + (1.0 - self.weight) * torch.log_softmax(plain, dim=-1)
        # Tokens another processor ruled out (-inf) stay ruled out.
        mixed = torch.where(torch.isneginf(scores), scores.float(), mixed)
        return mixed.to(scores.dtype)  # type: ignore[return-value]


def query_guidance_kwargs(
    tokenizer: PreTrainedTokenizerBase,
    query_free_prompts: Sequence[str],
    scale: float,
    device: torch.device,
    steering: Steering | None = None,
) -> dict[str, Any]:
    """``model.generate`` keywords for context-aware decoding (Shi et al., 2023): each next
    token's logits pushed away from those the model gives without the question::

        logits = scale · (l(t | prompt) − l(t | query-free prompt)) + l(t | query-free prompt)

    so what the question contributes is amplified ``scale`` times, and what the model would
    say whatever was asked (under steering: the emotion's stock phrases) is damped. It is
    transformers' own classifier-free guidance (``guidance_scale`` with
    ``negative_prompt_ids``): a second pass per token, with its own cache, over the
    query-free prompt (the same system turn; the user turn without the question). Applied
    steering steers that pass too, so the emotion stays in both and only the topic is
    amplified.

    Args:
        tokenizer: The model's tokenizer (left padding, as for generation).
        query_free_prompts: One formatted prompt per batch row, without the question.
        scale: The amplification, ≥ 1 (1: none).
        device: Where the model's inputs go.
        steering: The applied steering, if any; it must steer every position without a
            schedule (the second pass's calls would be mistaken for new prompts).

    Raises:
        TypeError: If ``scale`` is not a number.
        ValueError: If ``scale`` is not finite or below 1, or ``steering`` steers only
            some positions or follows a schedule.
    """
    scale = query_guidance_of(scale)
    if steering is not None and (steering.positions != "all" or steering.schedule is not None):
        raise ValueError(
            "query_guidance needs steering at every position without a schedule "
            f"(got positions={steering.positions!r}, schedule={steering.schedule})."
        )
    batch = tokenizer(
        list(query_free_prompts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
        return_attention_mask=True,
    )
    return {
        "guidance_scale": scale,
        "negative_prompt_ids": batch["input_ids"].to(device),
        "negative_prompt_attention_mask": batch["attention_mask"].to(device),
    }
