"""Batched text generation helpers shared by the CLI, evaluation and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.guidance import PlainGuidance
from emovec.hooks import Steering
from emovec.models import input_device
from emovec.offensive import clean_generation_kwargs
from emovec.vectors import EmotionVectors

__all__ = [
    "Decoding",
    "emotional_prompt",
    "format_prompts",
    "generate_answers",
    "persona_for",
    "with_instructions",
]


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; greedy by default, or sampling with temperature/top-p and a seed.

    ``repetition_penalty`` (1 = off) applies to plain and steered answers alike.
    """

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    repetition_penalty: float = 1.0


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token's text if the tokenizer adds one on its own, else ``""``."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return str(bos) if ids[:1] == [bos_id] else ""


def format_prompts(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    systems: Sequence[str | None] | None = None,
) -> list[str]:
    """Wrap queries as a user turn in the chat template, or as ``Q: … A:`` without one.

    The prompts carry their own special tokens and are tokenised with
    ``add_special_tokens=False``: a chat template writes them itself; without one, the BOS
    token leads when the tokenizer would add it (base models such as Gemma 3 degenerate
    without it: "A\nA\nA…"). ``systems`` gives a system turn per query (``None``: the
    template's default); without a chat template it leads the prompt as a line of its own.
    """
    systems = list(systems) if systems is not None else [None] * len(queries)
    if len(systems) != len(queries):
        raise ValueError(f"Give one system turn per query: {len(systems)} for {len(queries)}.")
    if getattr(tokenizer, "chat_template", None):
        return [
            str(
                tokenizer.apply_chat_template(
                    [
                        *([{"role": "system", "content": system}] if system else []),
                        {"role": "user", "content": q},
                    ],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
            for q, system in zip(queries, systems, strict=True)
        ]
    bos = _bos_prefix(tokenizer)
    lead = [f"{system}\n" if system else "" for system in systems]
    return [f"{bos}{first}Q: {q}\nA:" for q, first in zip(queries, lead, strict=True)]


def with_instructions(query: str, vectors: EmotionVectors, strengths: Mapping[str, float]) -> str:
    """``query`` with the calibrated instruction of every emotion steered with α > 0.

    A bank whose placements were calibrated with an instruction (the "hybrid" recipe: a
    short request for the emotion in the user's turn plus a smaller vector dose) is meant to
    be steered with it; ``steer`` cannot change the prompt, so the prompt is built here.
    Suppressed emotions (α ≤ 0) and emotions without an instruction add nothing.
    """
    asked = [vectors.instruction(e) for e, alpha in strengths.items() if alpha > 0]
    return " ".join([query, *(text for text in asked if text)])


def persona_for(vectors: EmotionVectors, strengths: Mapping[str, float]) -> str | None:
    """The system turn for steering ``strengths``: the calibrated personas of the emotions
    raised (α > 0), joined, or ``None`` (the model's default system prompt)."""
    personas = [vectors.persona(e) for e, alpha in strengths.items() if alpha > 0]
    return " ".join(text for text in personas if text) or None


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


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    repetition_penalty: float = 1.0,
    clean: bool = True,
    steering: Steering | None = None,
    guidance: float | None = None,
    systems: Sequence[str | None] | None = None,
) -> list[str]:
    """Answer each query (batched, left-padded) and return only the new text.

    ``repetition_penalty`` > 1 divides the logits of tokens already in the sequence (CTRL's
    penalty, as in ``transformers``); 1 leaves decoding untouched. ``clean`` keeps slurs and
    obscenities out of the answers (:func:`emovec.offensive.clean_generation_kwargs`; needs
    alt-profanity-check); ``False`` decodes unfiltered. ``guidance`` (with the applied
    ``steering``) mixes each next token's steered distribution with the plain model's,
    ``guidance`` being the steered share (:class:`emovec.guidance.PlainGuidance`).
    ``systems`` gives each query a system turn (see :func:`format_prompts`).
    """
    if guidance is not None and steering is None:
        raise ValueError("guidance needs the applied steering: pass steering=.")
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be positive, not {repetition_penalty}.")
    answers: list[str] = []
    device = input_device(model)
    prompts = format_prompts(tokenizer, queries, systems)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    blocker = clean_generation_kwargs(tokenizer) if clean else {}
    for start in range(0, len(prompts), batch_size):
        torch.manual_seed(seed + start)
        batch = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        processors = list(blocker.get("logits_processor", []))
        if guidance is not None and steering is not None:
            guide = PlainGuidance(
                model,
                steering,
                batch["attention_mask"],
                weight=guidance,
                repetition_penalty=repetition_penalty,
            )
            processors.insert(0, guide)
        with torch.inference_mode():
            output = model.generate(  # type: ignore[operator]
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                repetition_penalty=repetition_penalty,
                **sampling,
                **{**blocker, "logits_processor": processors},
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers.extend(
            t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        )
    return answers
