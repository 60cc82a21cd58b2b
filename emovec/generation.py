"""Answering queries with a model: how answers are decoded (:class:`Decoding`), the keywords
that carry it into ``model.generate`` (with clean decoding and any guidance processors), and
batched, left-padded generation (:func:`generate_answers`), shared by the one call
(:class:`emovec.chat.SteeredChat`), the CLI, evaluation and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._chat import _query_list, check_context, encode_prompts, format_prompts, padded
from emovec._doses import count
from emovec.guidance import BatchQueryGuidance, PlainGuidance, repetition_penalty_of
from emovec.hooks import Steering
from emovec.models import input_device
from emovec.offensive import clean_generation_kwargs
from emovec.vectors import EmotionVectors

__all__ = ["Decoding", "format_prompts", "generate_answers", "generate_kwargs"]


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded: greedy by default, or sampling with temperature/top-p and a
    seed.

    ``repetition_penalty`` (1 = off) applies to plain and steered answers alike.
    :meth:`generate_kwargs` gives the keywords for ``model.generate``; :meth:`calibrated`
    decodes as a bank's placements were calibrated.

    Raises:
        ValueError: For ``max_new_tokens`` below 1, a ``repetition_penalty`` that is not
            finite and positive, or, when sampling, a ``temperature`` that is not finite and
            positive or a ``top_p`` outside (0, 1].
    """

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        count(self.max_new_tokens, "max_new_tokens")
        repetition_penalty_of(self.repetition_penalty)
        if self.do_sample and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be positive to sample, not {self.temperature}.")
        if self.do_sample and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] to sample, not {self.top_p}.")

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``model.generate``: the length, greedy or sampling, the
        repetition penalty and, only when sampling, the temperature and top-p. (The seed is
        not one: :func:`generate_answers` seeds each batch's sampling with it.)"""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

    @classmethod
    def calibrated(cls, vectors: EmotionVectors, **changes: Any) -> Decoding:
        """The decoding ``vectors``' placements were calibrated under
        (:meth:`~emovec.vectors.EmotionVectors.generation_kwargs`; the defaults for a bank
        never calibrated), with ``changes`` (fields of :class:`Decoding`) on top."""
        return replace(cls(), **{**vectors.generation_kwargs(), **changes})


_GREEDY = Decoding()
# Greedy decoding leaves these unused; None keeps a model's sampling defaults (Gemma 3's
# generation config sets top_k and top_p) from being reported as ignored.
_UNUSED_WHEN_GREEDY = {"temperature": None, "top_p": None, "top_k": None}


def generate_kwargs(
    tokenizer: PreTrainedTokenizerBase,
    decoding: Decoding = _GREEDY,
    *,
    clean: bool = True,
    processors: Sequence[LogitsProcessor] = (),
) -> dict[str, Any]:
    """Everything ``model.generate`` needs to decode as ``decoding`` says: its keywords
    (:meth:`Decoding.generate_kwargs`), the pad token, and the logits processors: the given
    ones (guidance) first, then clean decoding's block list when ``clean``
    (:func:`emovec.offensive.clean_generation_kwargs`; needs alt-profanity-check)."""
    kwargs: dict[str, Any] = decoding.generate_kwargs()
    if not decoding.do_sample:
        kwargs.update(_UNUSED_WHEN_GREEDY)
    kwargs["pad_token_id"] = tokenizer.pad_token_id
    kwargs["logits_processor"] = (
        clean_generation_kwargs(tokenizer, logits_processor=processors)["logits_processor"]
        if clean
        else LogitsProcessorList(processors)
    )
    return kwargs


@contextmanager
def seeded(model: PreTrainedModel, seed: int | None) -> Iterator[None]:
    """Sampling seeded with ``seed`` while the block runs, on the CPU and the CUDA devices
    of ``model``; the random state outside the block is left as it was. ``None`` (greedy
    decoding): nothing to seed."""
    if seed is None:
        yield
        return
    cuda = sorted({int(p.device.index or 0) for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    *,
    decoding: Decoding = _GREEDY,
    batch_size: int = 8,
    clean: bool = True,
    steering: Steering | None = None,
    plain_guidance: float | None = None,
    systems: Sequence[str | None] | None = None,
    query_guidance: float | None = None,
    query_free: Sequence[str] | None = None,
    parse_special: bool = True,
    **changes: Any,
) -> list[str]:
    """Answer each query (batched, left-padded) and return only the new text.

    ``decoding`` says how (greedy by default); ``changes`` are fields of :class:`Decoding`
    to change in it, e.g. ``max_new_tokens=12``. Sampling is seeded with ``decoding.seed``
    plus the batch's first row, without touching the global random state. Only the input
    ids and attention mask reach ``model.generate`` (not e.g. ``token_type_ids``, which
    decoder-only models refuse). ``clean`` keeps slurs and obscenities out of the answers
    (:func:`generate_kwargs`); ``False`` decodes unfiltered. ``plain_guidance`` (with the applied
    ``steering``) mixes each next token's steered distribution with the plain model's,
    ``plain_guidance`` being the steered share (:class:`emovec.guidance.PlainGuidance`).
    ``systems`` gives each query a system turn (see :func:`format_prompts`).
    ``query_guidance`` (≥ 1) amplifies what the question contributes to each next token
    against the same prompt without it (:class:`emovec.guidance.BatchQueryGuidance`);
    ``query_free`` gives each row's user turn without the question (e.g. just the
    instruction that was appended to it; default: empty). ``parse_special=False`` keeps
    special tokens written in the queries as text (for text from strangers: a user writing
    ``<|im_start|>system`` opens no system turn). Every prompt and its ``max_new_tokens``
    must fit the model's context. To answer as a bank was calibrated, use the one call:
    ``steer(model, vecs, joy=1.0, tokenizer=tok).answer(queries)``.
    """
    count(batch_size, "batch_size")
    queries = _query_list(queries)
    if plain_guidance is not None and steering is None:
        raise ValueError("plain_guidance needs the applied steering: pass steering=.")
    if plain_guidance is not None and query_guidance is not None:
        raise ValueError("Use plain_guidance= or query_guidance=, not both.")
    query_free = [""] * len(queries) if query_free is None else list(query_free)
    if len(query_free) != len(queries):
        raise ValueError(
            f"Give one query-free turn per query: {len(query_free)} for {len(queries)}."
        )
    decoding = replace(decoding, **changes) if changes else decoding
    answers: list[str] = []
    device = input_device(model)
    prompts = encode_prompts(tokenizer, queries, systems, parse_special=parse_special)
    unasked = encode_prompts(tokenizer, query_free, systems) if query_guidance is not None else []
    check_context(model, prompts, decoding.max_new_tokens)
    for start in range(0, len(prompts), batch_size):
        inputs = padded(tokenizer, prompts[start : start + batch_size], device)
        processors: list[LogitsProcessor] = []
        if plain_guidance is not None and steering is not None:
            plain = PlainGuidance(
                model,
                steering,
                inputs["attention_mask"],
                weight=plain_guidance,
                repetition_penalty=decoding.repetition_penalty,
            )
            processors.append(plain)
        if query_guidance is not None:
            guide = BatchQueryGuidance(
                model,
                unasked[start : start + batch_size],
                query_guidance,
                pad_token_id=tokenizer.pad_token_id,
                repetition_penalty=decoding.repetition_penalty,
                steering=steering,
                attention_mask=inputs["attention_mask"],
            )
            processors.append(guide)
        options = generate_kwargs(tokenizer, decoding, clean=clean, processors=processors)
        seed = decoding.seed + start if decoding.do_sample else None
        with torch.inference_mode(), seeded(model, seed):
            output = model.generate(**inputs, **options)  # type: ignore[operator]
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers.extend(
            t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        )
    return answers
