"""Guidance in logit space: each next token chosen from a steered pass mixed with a second
pass of the same model: the plain model (:class:`PlainGuidance`) or the prompt without the
question (:class:`QueryGuidance`).

While a :class:`~emovec.steering.Steering` is applied, ``model.generate`` runs the steered
model; these logits processors run the same model once more per step (with its own KV cache)
and mix the two next-token distributions::

    log p(t) = weight · log p_generate(t) + (1 − weight) · log p_second(t)

- :class:`PlainGuidance`: the second pass is the same prompt with the steering paused (in the
  generating thread or task only); ``weight`` in [0, 1], 1 being the steered model alone and
  0 the plain one. In between the plain pass, which still reads the question unsteered,
  holds the answer to its topic while the steered pass lends it its tone.
- :class:`QueryGuidance`: the second pass is the prompt without the question, steered too;
  ``weight`` ≥ 1 amplifies what the question contributes (context-aware decoding, Shi et al.,
  2023), so what the model would say whatever was asked (under steering: the emotion's stock
  phrases) is damped.

Both passes get ``generate``'s repetition penalty on their raw logits, *before* the mix (as a
processor ahead of ``generate``'s own ones would not: transformers' built-in guidance applies
the penalty to the mixed log-probabilities, where it barely moves a confident token). The cost
is a second forward pass per token (``benchmarks/`` measures it).

Usage::

    with steer(model, vecs, joy=1.0) as steering:
        guide = PlainGuidance(model, steering, inputs["attention_mask"], weight=0.5)
        model.generate(**inputs, logits_processor=[guide], do_sample=False)
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers import DynamicCache, LogitsProcessor

from emovec._placement import check_guided_steering, query_guidance_of
from emovec.hooks import Steering
from emovec.models import cache_argument

__all__ = ["PlainGuidance", "QueryGuidance"]


def repetition_penalty_of(value: object) -> float:
    """A repetition penalty as ``generate`` takes it: a finite positive number (1 = off).

    Raises:
        ValueError: Otherwise (also for a bool or a string).
    """
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise ValueError(
            f"repetition_penalty must be a finite positive number (1 = off), not {value!r}."
        )
    return float(value)


class _SecondPass(LogitsProcessor):
    """Mixes ``generate``'s next-token scores with a second pass over ``context`` followed by
    the tokens generated so far. One instance serves one ``generate`` call (it keeps the
    second pass's cache).

    Args:
        model: The model ``generate`` runs.
        steering: The applied steering; paused for the second pass if ``paused``.
        prompt_mask: The prompt's attention mask, ``[batch, prompt_length]``.
        context: The second pass's prompt and its attention mask (left padded), or ``None``:
            the prompt itself.
        weight: Share of ``generate``'s log-probabilities.
        repetition_penalty: The penalty ``generate`` applies (given to the second pass here).
        paused: Whether the second pass runs with the steering paused.
    """

    def __init__(
        self,
        model: nn.Module,
        steering: Steering | None,
        prompt_mask: torch.Tensor,
        context: tuple[torch.Tensor, torch.Tensor] | None,
        weight: float,
        repetition_penalty: float,
        paused: bool,
    ) -> None:
        self.model = model
        self.steering = steering
        self.weight = float(weight)
        self._prompt_length = prompt_mask.shape[1]
        self._rows = prompt_mask.shape[0]
        self._context = None if context is None else (context[0].detach(), context[1].detach())
        self._mask = (prompt_mask if context is None else context[1]).detach().clone()
        self._paused = paused
        self._penalty = repetition_penalty_of(repetition_penalty)
        self._prompt_mask = prompt_mask.detach().clone()
        self._cache: DynamicCache | None = None
        self._seen = 0
        self._calls = 0  # steps served: generate adds one token to input_ids per step
        self._cache_argument = cache_argument(model)

    def _second_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch = input_ids.shape[0]
        name = type(self).__name__
        if batch != self._rows:
            raise ValueError(
                f"{name} got {batch} rows but was made for {self._rows}; beam search and "
                "several sequences per prompt are not supported (use one sequence per row)."
            )
        expected = self._prompt_length + self._calls
        if input_ids.shape[1] != expected:
            raise ValueError(
                f"{name} was made for a prompt of {self._prompt_length} tokens"
                + (f" and has served {self._calls} steps" if self._calls else "")
                + f", but generate gave {input_ids.shape[1]} tokens: another prompt, another "
                "padding or a second generate call. Make a new one for each generate call, "
                "from the attention mask that call gets."
            )
        self._calls += 1
        if self._context is None:
            ids = input_ids
        else:
            generated = input_ids[:, self._prompt_length :]
            ids = torch.cat([self._context[0].to(input_ids.device), generated], dim=1)
        grown = ids.shape[1] - self._mask.shape[1]
        if grown < 0:
            raise ValueError(f"{name} serves one generate call; make a new one per call.")
        if grown:
            self._mask = torch.cat([self._mask, self._mask.new_ones(batch, grown)], dim=1)
        mask = self._mask.to(input_ids.device)
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        if self._cache is None:
            self._cache = DynamicCache()
        pausing: AbstractContextManager[None] = (
            self.steering.paused() if self._paused and self.steering else nullcontext()
        )
        with torch.no_grad(), pausing:
            out = self.model(
                input_ids=ids[:, self._seen :],
                attention_mask=mask,
                position_ids=positions[:, self._seen :],
                use_cache=True,
                **{self._cache_argument: self._cache},
            )
        self._seen = ids.shape[1]
        return out.logits[:, -1, :].float()

    def _penalised(self, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the repetition penalty on every token of ``input_ids`` but the
        prompt's padding (as recent transformers' ``generate`` does): positive logits
        divided, negative ones multiplied."""
        prompt = self._prompt_mask.to(input_ids.device).long()
        generated = prompt.new_ones(len(input_ids), input_ids.shape[1] - self._prompt_length)
        counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
        counts.scatter_add_(1, input_ids, torch.cat([prompt, generated], dim=1))
        seen = counts > 0
        penalised = torch.where(logits < 0, logits * self._penalty, logits / self._penalty)
        return torch.where(seen, penalised, logits)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        second = self._second_logits(input_ids)
        if self._penalty != 1.0:
            second = self._penalised(input_ids, second)
        first = torch.log_softmax(scores.float(), dim=-1)
        mixed = self.weight * first + (1.0 - self.weight) * torch.log_softmax(second, dim=-1)
        # Tokens another processor ruled out (-inf) stay ruled out.
        mixed = torch.where(torch.isneginf(scores), scores.float(), mixed)
        return mixed.to(scores.dtype)  # type: ignore[return-value]


class PlainGuidance(_SecondPass):
    """A logits processor mixing the steered next-token distribution with the plain model's::

        log p(t) = weight · log p_steered(t) + (1 − weight) · log p_plain(t)

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
        ValueError: If ``weight`` is outside [0, 1] or not finite, or ``repetition_penalty``
            is not a finite positive number.
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
        super().__init__(
            model, steering, attention_mask, None, weight, repetition_penalty, paused=True
        )


class QueryGuidance(_SecondPass):
    """A logits processor for context-aware decoding (Shi et al., 2023): each next token's
    log-probabilities pushed away from those the model gives without the question::

        log p(t) = scale · (log p(t | prompt) − log p(t | query-free)) + log p(t | query-free)

    so what the question contributes is amplified ``scale`` times. The query-free prompt is
    the same system turn with the user turn without the question. Applied steering steers
    that pass too, so the emotion stays in both and only the topic is amplified. One instance
    serves one ``generate`` call.

    Args:
        model: The model ``generate`` runs.
        attention_mask: The prompt's attention mask, ``[batch, prompt_length]``.
        query_free: The query-free prompts' input ids and attention mask, one row per prompt,
            left padded.
        scale: The amplification, ≥ 1 (1: none).
        repetition_penalty: The penalty ``generate`` applies (given to the query-free pass
            here, so it acts on both passes' logits before the mix).
        steering: The applied steering, if any; it must steer every position without a
            schedule (the second pass's calls would be mistaken for new prompts).

    Raises:
        TypeError: If ``scale`` is not a number.
        ValueError: If ``scale`` is not finite or below 1, ``repetition_penalty`` not a finite
            positive number, the query-free rows do not match
            the prompt's, or ``steering`` steers only some positions or follows a schedule.
    """

    def __init__(
        self,
        model: nn.Module,
        attention_mask: torch.Tensor,
        query_free: tuple[torch.Tensor, torch.Tensor],
        scale: float,
        *,
        repetition_penalty: float = 1.0,
        steering: Steering | None = None,
    ) -> None:
        scale = query_guidance_of(scale)
        if steering is not None:
            check_guided_steering(steering.positions, steering.schedule)
        ids, mask = query_free
        if ids.shape != mask.shape or ids.shape[0] != attention_mask.shape[0]:
            raise ValueError(
                f"Give one query-free row per prompt row: ids {tuple(ids.shape)} and mask "
                f"{tuple(mask.shape)} for {attention_mask.shape[0]} prompts."
            )
        super().__init__(
            model, steering, attention_mask, query_free, scale, repetition_penalty, paused=False
        )
