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
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from transformers import DynamicCache, LogitsProcessor

from emovec._placement import check_guided_steering, query_guidance_of
from emovec.hooks import Steering
from emovec.models import cache_argument

__all__ = ["BatchQueryGuidance", "PlainGuidance", "QueryGuidance"]


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

        log p(t) = gamma · (log p(t | prompt) − log p(t | query-free)) + log p(t | query-free)

    so what the question contributes is amplified ``gamma`` times. The query-free prompt is
    the same system turn with the user turn without the question. Applied steering steers
    that pass too, so the emotion stays in both and only the topic is amplified. One instance
    serves one ``generate`` call.

    Args:
        model: The model ``generate`` runs.
        attention_mask: The prompt's attention mask, ``[batch, prompt_length]``.
        query_free: The query-free prompts' input ids and attention mask, one row per prompt,
            left padded.
        gamma: The amplification, ≥ 1 (1: none).
        repetition_penalty: The penalty ``generate`` applies (given to the query-free pass
            here, so it acts on both passes' logits before the mix).
        steering: The applied steering, if any; it must steer every position without a
            schedule (the second pass's calls would be mistaken for new prompts).

    Raises:
        TypeError: If ``gamma`` is not a number.
        ValueError: If ``gamma`` is not finite or below 1, ``repetition_penalty`` not a finite
            positive number, the query-free rows do not match
            the prompt's, or ``steering`` steers only some positions or follows a schedule.
    """

    def __init__(
        self,
        model: nn.Module,
        attention_mask: torch.Tensor,
        query_free: tuple[torch.Tensor, torch.Tensor],
        gamma: float,
        *,
        repetition_penalty: float = 1.0,
        steering: Steering | None = None,
    ) -> None:
        gamma = query_guidance_of(gamma)
        if steering is not None:
            check_guided_steering(steering.positions, steering.schedule)
        ids, mask = query_free
        if ids.shape != mask.shape or ids.shape[0] != attention_mask.shape[0]:
            raise ValueError(
                f"Give one query-free row per prompt row: ids {tuple(ids.shape)} and mask "
                f"{tuple(mask.shape)} for {attention_mask.shape[0]} prompts."
            )
        super().__init__(
            model, steering, attention_mask, query_free, gamma, repetition_penalty, paused=False
        )


class BatchQueryGuidance(LogitsProcessor):
    """Query guidance for the batch ``generate`` runs it on, made at the first step from the
    rows it meets: what :meth:`emovec.chat.SteeredChat.generate_kwargs` hands to your own
    ``model.generate`` or ``pipeline``, where the attention mask is never seen.

    Left padding is read from the prompt rows themselves (each row's leading pad tokens;
    ``generate`` infers its own mask the same way), unless ``attention_mask`` is given.
    Several sequences per prompt (``num_return_sequences``) repeat each row's query-free
    prompt as ``generate`` repeats the rows. A step that is not the next of the previous one
    (another prompt: a new ``generate`` call, or the next prompt of a ``pipeline``) starts a
    new :class:`QueryGuidance`. Beam search, which reorders rows between steps and so would
    pair a row with another row's second pass, is refused at the step it first reorders.

    Args:
        model: The model ``generate`` runs.
        query_free: Token ids of each prompt row's query-free prompt (formatted, carrying its
            special tokens), or one row for every prompt row.
        gamma: The amplification, ≥ 1.
        pad_token_id: The pad token of the prompt rows (``None``: rows are never padded).
        repetition_penalty: The penalty ``generate`` applies.
        steering: The applied steering, if any (see :class:`QueryGuidance`).
        attention_mask: The prompt rows' mask, when the caller has it.

    Raises:
        ValueError: If a query-free prompt is empty or starts with the pad token (padding
            could not be told from the prompt; give ``attention_mask``), or, while
            generating, if the batch is not a multiple of the query-free rows or beam search
            reorders the rows.
    """

    def __init__(
        self,
        model: nn.Module,
        query_free: Sequence[Sequence[int]],
        gamma: float,
        *,
        pad_token_id: int | None,
        repetition_penalty: float = 1.0,
        steering: Steering | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        self._gamma = query_guidance_of(gamma)
        self._penalty = repetition_penalty_of(repetition_penalty)
        if steering is not None:
            check_guided_steering(steering.positions, steering.schedule)
        self._free = [list(ids) for ids in query_free]
        if not self._free or not all(self._free):
            raise ValueError("Give a non-empty query-free prompt per row.")
        if attention_mask is None and any(ids[0] == pad_token_id for ids in self._free):
            raise ValueError(
                "The prompts start with the pad token, so their padding cannot be read from "
                "them; give attention_mask (the prompt batch's)."
            )
        self._model, self._steering, self._pad = model, steering, pad_token_id
        self._mask = None if attention_mask is None else attention_mask.detach()
        self._guide: QueryGuidance | None = None
        self._prompt_length = 0
        self._last: torch.Tensor | None = None

    def _rows_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._mask is not None and self._mask.shape == input_ids.shape:
            return self._mask.to(input_ids.device)
        if self._mask is not None:
            raise ValueError(
                f"attention_mask is {tuple(self._mask.shape)} but generate's prompt rows are "
                f"{tuple(input_ids.shape)}; give the mask of the batch generated."
            )
        if self._pad is None:
            return torch.ones_like(input_ids)
        return (input_ids != self._pad).long().cummax(dim=1).values

    def _start(self, input_ids: torch.Tensor) -> QueryGuidance:
        batch, rows = input_ids.shape[0], len(self._free)
        free = self._free * batch if rows == 1 else self._free
        if batch % len(free):
            raise ValueError(
                f"generate runs {batch} rows for {len(free)} query-free prompts; give one "
                "per prompt row."
            )
        repeats = batch // len(free)
        free = [ids for ids in free for _ in range(repeats)]
        width = max(len(ids) for ids in free)
        ids = input_ids.new_full((batch, width), 0 if self._pad is None else self._pad)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(free):
            ids[row, width - len(tokens) :] = torch.tensor(tokens, device=ids.device)
            mask[row, width - len(tokens) :] = 1
        self._prompt_length = input_ids.shape[1]
        return QueryGuidance(
            self._model,
            self._rows_mask(input_ids),
            (ids, mask),
            self._gamma,
            repetition_penalty=self._penalty,
            steering=self._steering,
        )

    def _step(self, input_ids: torch.Tensor) -> QueryGuidance:
        """The guidance serving this step: the running one, or a new one for a new prompt."""
        last, guide = self._last, self._guide
        if last is None or guide is None:
            return self._start(input_ids)
        follows = (
            input_ids.shape[0] == last.shape[0]
            and input_ids.shape[1] == last.shape[1] + 1
            and torch.equal(input_ids[:, : self._prompt_length], last[:, : self._prompt_length])
        )
        if not follows:
            return self._start(input_ids)
        if not torch.equal(input_ids[:, :-1], last):
            raise ValueError(
                "Query guidance follows each row with its own second pass, and beam search "
                "reorders the rows; decode with num_beams=1 (greedy or sampling)."
            )
        return guide

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._guide = self._step(input_ids)
        self._last = input_ids.detach()
        return self._guide(input_ids, scores)
