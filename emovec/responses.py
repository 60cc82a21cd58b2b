"""Response-conditioned pairs: the model's own answers under emotional and neutral instructions.

Dong et al. derive emotion vectors from the model's *responses*: each query is answered once
under an emotional instruction and once under a neutral one, and the vector is read from the
answers alone, after the bare query (the instruction is not shown again), so what it captures
is how the model itself writes with the emotion. Generating is the slow part, so answers are
cached on disk per (model, instruction, queries, settings) and a rerun reuses them; the neutral
answers are shared by every emotion.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._chat import asked
from emovec._files import write_text
from emovec.datasets import (
    BASIC_EMOTIONS,
    ResponsePair,
    default_extraction_queries,
    default_instructions,
)
from emovec.generation import generate_answers
from emovec.models import cache_dir

__all__ = ["NEUTRAL", "default_instructions", "response_pairs"]

NEUTRAL = "neutral"


def _model_fingerprint(model: PreTrainedModel) -> str:
    """Identifies the weights well enough that answers of another model are never reused."""
    weight = cast(torch.Tensor, model.get_input_embeddings().weight)
    sample = weight.detach()[:4, :16].float().cpu().flatten().tolist()
    config = model.config.to_json_string(use_diff=False)
    return hashlib.sha256(f"{config}{sample}".encode()).hexdigest()[:16]


def _answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    instruction: str,
    settings: Mapping[str, int],
    cache: Path | None,
) -> list[str]:
    key = json.dumps([instruction, list(queries), dict(settings)], ensure_ascii=False)
    path = None
    if cache is not None:
        name = hashlib.sha256(key.encode()).hexdigest()[:24]
        path = cache / _model_fingerprint(model) / f"{name}.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                if stored.get("key") == key and len(stored.get("answers", [])) == len(queries):
                    return [str(a) for a in stored["answers"]]
            except (OSError, json.JSONDecodeError):
                pass  # a damaged cache entry is regenerated and overwritten
    # EmotionPrompt appends its stimulus after the task; the same placement here.
    prompts = [asked(query, instruction) for query in queries]
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"],
        clean=False,  # extraction reads the model's own answers as they come (and cached)
    )
    if path is not None:
        payload = {"key": key, "instruction": instruction, "answers": answers}
        write_text(path, json.dumps(payload, ensure_ascii=False))
    return answers


def response_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    emotions: Sequence[str] | None = None,
    *,
    queries: Sequence[str] | None = None,
    instructions: Mapping[str, str] | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> dict[str, list[ResponsePair]]:
    """Answer every query under each emotion's instruction and under the neutral one.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer.
        emotions: Emotions to answer for (default: the five basic emotions, or every emotion
            in ``instructions`` when given).
        queries: Queries to answer; default: the shipped extraction queries (disjoint from
            the evaluation queries).
        instructions: Emotion → instruction appended to each query, plus ``"neutral"``;
            entries override the shipped ones (so a custom emotion needs only its own).
        max_new_tokens: Answer length.
        batch_size: Queries per ``generate`` call.
        cache: ``True`` for the user cache directory, a folder, or ``False`` for none.
        progress: Show a progress bar over the conditions.

    Returns:
        ``{emotion: [ResponsePair(query, emotional_answer, neutral_answer), ...]}``; queries
        where either answer came out empty, both came out the same, or the emotional answer
        repeats an earlier one, are left out.

    Raises:
        ValueError: for an emotion without an instruction, or when no usable pair is left.
    """
    merged = {**default_instructions(), **(instructions or {})}
    if emotions is None:
        custom = [e for e in (instructions or {}) if e != NEUTRAL]
        emotions = custom or list(BASIC_EMOTIONS)
    missing = [e for e in emotions if e not in merged]
    if missing:
        raise ValueError(
            f"No instruction for {missing}: pass instructions={{{missing[0]!r}: 'Answer as "
            "someone ...'}}."
        )
    chosen = list(queries) if queries is not None else default_extraction_queries()
    if not chosen:
        raise ValueError("No queries to answer.")
    folder: Path | None
    if cache is True:
        folder = cache_dir() / "responses"
    elif cache is False:
        folder = None
    else:
        folder = Path(cache)
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    conditions = [NEUTRAL, *emotions]
    answers: dict[str, list[str]] = {}
    for condition in tqdm(conditions, desc="answering", disable=not progress, unit="condition"):
        answers[condition] = _answers(model, tokenizer, chosen, merged[condition], settings, folder)
    pairs: dict[str, list[ResponsePair]] = {}
    for emotion in emotions:
        seen: set[str] = set()
        pairs[emotion] = []
        for query, emotional, neutral in zip(
            chosen, answers[emotion], answers[NEUTRAL], strict=True
        ):
            usable = emotional.strip() and neutral.strip() and emotional != neutral
            if usable and emotional not in seen:  # a repeated answer would count double
                seen.add(emotional)
                pairs[emotion].append(ResponsePair(query, emotional, neutral))
        if not pairs[emotion]:
            raise ValueError(
                f"Every answer for {emotion!r} was empty or equal to the neutral answer; "
                "try more max_new_tokens or another instruction."
            )
    return pairs
