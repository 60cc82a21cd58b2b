"""Batched text generation shared by the CLI, evaluation and benchmarks, and what a bank's
placements ask of the prompt when their emotions are raised: the calibrated instruction in the
user turn, the persona as the system turn, the query guidance (``steer`` cannot change the
prompt, so the prompt is built here)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._chat import (
    _query_list,
    asked,
    check_context,
    encode_prompts,
    format_prompts,
    padded,
    tokenized,
)
from emovec._doses import count
from emovec.guidance import PlainGuidance, QueryGuidance, repetition_penalty_of
from emovec.hooks import Steering
from emovec.models import input_device
from emovec.offensive import clean_generation_kwargs
from emovec.vectors import EmotionVectors

__all__ = [
    "Decoding",
    "emotional_answers",
    "emotional_guidance",
    "emotional_prompt",
    "format_prompts",
    "generate_answers",
    "persona_for",
    "query_guidance_for",
    "with_instructions",
]


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


# --- what a bank's placements ask of the prompt when their emotions are raised (α > 0)


def with_instructions(query: str, vectors: EmotionVectors, strengths: Mapping[str, float]) -> str:
    """``query`` with the calibrated instruction of every emotion steered with α > 0.

    A bank whose placements were calibrated with an instruction (the "hybrid" recipe: a
    short request for the emotion in the user's turn plus a smaller vector dose) is meant to
    be steered with it; ``steer`` cannot change the prompt, so the prompt is built here.
    Suppressed emotions (α ≤ 0) and emotions without an instruction add nothing.
    """
    return asked(query, *(vectors.instruction(e) for e, alpha in strengths.items() if alpha > 0))


def persona_for(vectors: EmotionVectors, strengths: Mapping[str, float]) -> str | None:
    """The system turn for steering ``strengths``: the calibrated personas of the emotions
    raised (α > 0), joined, or ``None`` (the model's default system prompt)."""
    personas = [vectors.persona(e) for e, alpha in strengths.items() if alpha > 0]
    return " ".join(text for text in personas if text) or None


def query_guidance_for(vectors: EmotionVectors, strengths: Mapping[str, float]) -> float | None:
    """The query guidance for steering ``strengths``: the largest of the raised emotions'
    placements' (α > 0), or ``None`` where none records one."""
    recorded = [
        placement.query_guidance
        for emotion, alpha in strengths.items()
        if alpha > 0
        and (placement := vectors.placements.get(emotion)) is not None
        and placement.query_guidance is not None
    ]
    return max(recorded) if recorded else None


def query_free_turn(vectors: EmotionVectors, strengths: Mapping[str, float]) -> str:
    """The user turn without the question: the raised emotions' instructions alone."""
    return with_instructions("", vectors, strengths).strip()


_GREEDY = Decoding()
# Greedy decoding leaves these unused; None keeps a model's sampling defaults (Gemma 3's
# generation config sets top_k and top_p) from being reported as ignored.
_UNUSED_WHEN_GREEDY = {"temperature": None, "top_p": None, "top_k": None}


@contextmanager
def _seeded(model: PreTrainedModel, seed: int | None) -> Iterator[None]:
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


def emotional_prompt(
    tokenizer: PreTrainedTokenizerBase,
    query: str,
    vectors: EmotionVectors,
    strengths: Mapping[str, float],
) -> str:
    """The prompt to steer ``strengths`` with: ``query`` in the chat template, with the
    calibrated instruction and persona of the raised emotions (:func:`with_instructions`,
    :func:`persona_for`). Tokenise it with ``add_special_tokens=False``."""
    asked = with_instructions(query, vectors, strengths)
    return format_prompts(tokenizer, [asked], [persona_for(vectors, strengths)])[0]


def emotional_guidance(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vectors: EmotionVectors,
    strengths: Mapping[str, float],
    attention_mask: torch.Tensor,
    *,
    steering: Steering | None = None,
    repetition_penalty: float = 1.0,
) -> list[QueryGuidance]:
    """The logits processors that give your own ``model.generate`` the raised emotions'
    calibrated query guidance (:func:`query_guidance_for`): one :class:`~emovec.guidance.
    QueryGuidance` against the query-free prompt (the same persona, the instructions alone),
    or none where no placement records it. Make them anew for each ``generate`` call.

    Args:
        model: The model ``generate`` runs.
        tokenizer: Its tokenizer (left padding).
        vectors: The bank steered.
        strengths: The strengths steered, as given to ``steer``.
        attention_mask: The mask of the batch of :func:`emotional_prompt` rows generated.
        steering: The applied steering (checked to steer every position).
        repetition_penalty: The penalty passed to ``generate``.
    """
    scale = query_guidance_for(vectors, strengths)
    if scale is None:
        return []
    rows = attention_mask.shape[0]
    free = format_prompts(
        tokenizer,
        [query_free_turn(vectors, strengths)] * rows,
        [persona_for(vectors, strengths)] * rows,
    )
    return [
        _query_guidance(model, tokenizer, attention_mask, free, scale, repetition_penalty, steering)
    ]


def _query_guidance(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    attention_mask: torch.Tensor,
    query_free_prompts: Sequence[str],
    scale: float,
    repetition_penalty: float,
    steering: Steering | None,
) -> QueryGuidance:
    """Query guidance for one batch: its formatted query-free prompts tokenised beside it."""
    free = tokenized(tokenizer, query_free_prompts, attention_mask.device)
    return QueryGuidance(
        model,
        attention_mask,
        (free["input_ids"], free["attention_mask"]),
        scale,
        repetition_penalty=repetition_penalty,
        steering=steering,
    )


def emotional_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    vectors: EmotionVectors,
    strengths: Mapping[str, float],
    **options: Any,
) -> list[str]:
    """Answer ``queries`` as the raised emotions' placements were calibrated, under the
    steering the caller applied: their instruction added to each query, their persona as the
    system turn and their query guidance (against the instruction alone). ``options`` go to
    :func:`generate_answers` (pass ``steering=`` so that query guidance can check it)."""
    queries = _query_list(queries)
    return generate_answers(
        model,
        tokenizer,
        [with_instructions(q, vectors, strengths) for q in queries],
        systems=[persona_for(vectors, strengths)] * len(queries),
        query_guidance=query_guidance_for(vectors, strengths),
        query_free=[query_free_turn(vectors, strengths)] * len(queries),
        **options,
    )


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    *,
    decoding: Decoding = _GREEDY,
    batch_size: int = 8,
    clean: bool = True,
    steering: Steering | None = None,
    guidance: float | None = None,
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
    (:func:`emovec.offensive.clean_generation_kwargs`; needs alt-profanity-check); ``False``
    decodes unfiltered. ``guidance`` (with the applied ``steering``) mixes each next
    token's steered distribution with the plain model's, ``guidance`` being the steered
    share (:class:`emovec.guidance.PlainGuidance`). ``systems`` gives each query a system
    turn (see :func:`format_prompts`). ``query_guidance`` (≥ 1) amplifies what the question
    contributes to each next token against the same prompt without it
    (:class:`emovec.guidance.QueryGuidance`); ``query_free`` gives each row's user
    turn without the question (e.g. just the instruction that was appended to it; default:
    empty). ``parse_special=False`` keeps special tokens written in the queries as text
    (for text from strangers: a user writing ``<|im_start|>system`` opens no system turn).
    Every prompt and its ``max_new_tokens`` must fit the model's context.
    """
    count(batch_size, "batch_size")
    queries = _query_list(queries)
    if guidance is not None and steering is None:
        raise ValueError("guidance needs the applied steering: pass steering=.")
    if guidance is not None and query_guidance is not None:
        raise ValueError("Use guidance= or query_guidance=, not both.")
    query_free = [""] * len(queries) if query_free is None else list(query_free)
    if len(query_free) != len(queries):
        raise ValueError(
            f"Give one query-free turn per query: {len(query_free)} for {len(queries)}."
        )
    decoding = replace(decoding, **changes) if changes else decoding
    answers: list[str] = []
    device = input_device(model)
    prompts = encode_prompts(tokenizer, queries, systems, parse_special=parse_special)
    unasked = format_prompts(tokenizer, query_free, systems) if query_guidance is not None else []
    check_context(model, prompts, decoding.max_new_tokens)
    options = decoding.generate_kwargs()
    if not decoding.do_sample:
        options.update(_UNUSED_WHEN_GREEDY)
    blocker = clean_generation_kwargs(tokenizer) if clean else {}
    for start in range(0, len(prompts), batch_size):
        inputs = padded(tokenizer, prompts[start : start + batch_size], device)
        processors = list(blocker.get("logits_processor", []))
        if guidance is not None and steering is not None:
            plain = PlainGuidance(
                model,
                steering,
                inputs["attention_mask"],
                weight=guidance,
                repetition_penalty=decoding.repetition_penalty,
            )
            processors.insert(0, plain)
        if query_guidance is not None:
            guide = _query_guidance(
                model,
                tokenizer,
                inputs["attention_mask"],
                unasked[start : start + batch_size],
                query_guidance,
                decoding.repetition_penalty,
                steering,
            )
            processors.insert(0, guide)
        seed = decoding.seed + start if decoding.do_sample else None
        with torch.inference_mode(), _seeded(model, seed):
            output = model.generate(  # type: ignore[operator]
                **inputs,
                pad_token_id=tokenizer.pad_token_id,
                **options,
                **{**blocker, "logits_processor": processors},
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers.extend(
            t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        )
    return answers
