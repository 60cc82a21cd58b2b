"""Text metrics for evaluating steered generations: repetition, lexicon intensity and
fluency (topic similarity and retention: :mod:`emovec.evaluation.topic`).

Everything here runs offline. The lexicon is the NRC emotion lexicon bundled with ``nrclex``,
an optional dependency imported only when used.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.models import input_device

__all__ = [
    "NRC_EMOTIONS",
    "distinct_n",
    "is_degenerate",
    "lexicon_intensity",
    "perplexity",
]

# The affect categories of the NRC lexicon: Plutchik's eight emotions and two sentiments.
NRC_EMOTIONS = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "sadness",
    "surprise",
    "trust",
    "positive",
    "negative",
)

_WORD = re.compile(r"[a-z']+")


# --- repetition -----------------------------------------------------------------------


def distinct_n(text: str, n: int = 2) -> float:
    """Share of distinct word n-grams; low values mean repetition.

    Args:
        text: The text; words are split on whitespace.
        n: The n-gram length.

    Returns:
        ``len(set(ngrams)) / len(ngrams)``, or 1.0 when the text has fewer than ``n`` words.
    """
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def is_degenerate(text: str, threshold: float = 0.5, min_words: int = 8) -> bool:
    """Whether a text has collapsed into repetition (distinct-2 below ``threshold``).

    Texts shorter than ``min_words`` words are never judged degenerate: with a handful of
    bigrams one repeated pair already moves distinct-2 a lot, so short answers would be
    flagged for ordinary phrasing rather than for looping.

    Args:
        text: The text; words are split on whitespace.
        threshold: The smallest share of unique word bigrams a healthy text has.
        min_words: The fewest words a text needs before it is judged.

    Returns:
        ``True`` when the text is long enough and its distinct-2 is under ``threshold``.
    """
    if len(text.split()) < min_words:
        return False
    return distinct_n(text, 2) < threshold


# --- lexicon --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _nrc() -> Mapping[str, frozenset[str]]:
    """The NRC lexicon bundled with nrclex: word → its affect categories, read once and
    immutable (nothing is shared that a caller could change)."""
    try:
        data = resources.files("nrclex.data").joinpath("nrc_en.json")
    except ModuleNotFoundError as err:
        raise ImportError("Lexicon intensity needs nrclex: pip install --no-deps nrclex") from err
    # Only the lexicon file is read: nrclex's raw-text path needs TextBlob and NLTK corpora.
    entries = json.loads(data.read_text(encoding="utf-8"))
    return MappingProxyType(
        {str(word): frozenset(map(str, emotions)) for word, emotions in entries.items()}
    )


def lexicon_intensity(texts: Sequence[str], emotion: str) -> np.ndarray:
    """NRC emotion-lexicon density of ``emotion`` in each text.

    The density is the number of word tokens whose lexicon entry includes ``emotion``
    divided by the number of word tokens. Tokens are runs of ``[a-z']`` in the lower-cased
    text, matched verbatim (no lemmatisation), so inflected forms missing from the lexicon
    do not count.

    Args:
        texts: The texts to measure.
        emotion: One of ``NRC_EMOTIONS``.

    Returns:
        Densities in [0, 1], shape ``[len(texts)]``; 0 for texts with no word tokens.

    Raises:
        ValueError: If ``emotion`` is not an NRC affect category.
    """
    if emotion not in NRC_EMOTIONS:
        raise ValueError(f"Unknown emotion {emotion!r}; the NRC lexicon has {list(NRC_EMOTIONS)}.")
    lexicon = _nrc()
    none: frozenset[str] = frozenset()
    densities = np.zeros(len(texts))
    for i, text in enumerate(texts):
        tokens = _WORD.findall(text.lower())
        if tokens:
            densities[i] = sum(emotion in lexicon.get(t, none) for t in tokens) / len(tokens)
    return densities


# --- fluency --------------------------------------------------------------------------


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """Perplexity of each answer given its prompt under ``model`` as it is.

    The prompt and the answer are tokenised separately (no special tokens) and their ids
    concatenated, so the scored span is exactly the answer's tokens; the perplexity is
    ``exp`` of their mean negative log-likelihood. Pass the answer as it follows the prompt:
    after a prompt ending in ``"A:"`` the model generated a leading space that a stripped
    answer lacks, which changes its first token. The caller makes sure the model is not
    steered.

    Sequences are left-padded (positions counted from each one's first token), so every
    answer ends at the batch's right edge and the LM head runs only over the answers' span
    (``logits_to_keep`` where the model takes it): on a chat model the prompt is about half
    of each sequence and the vocabulary-wide logits were most of the pass's memory traffic.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Full prompt strings, already chat-formatted.
        answers: One answer per prompt.
        batch_size: Sequences per forward pass.

    Returns:
        Perplexities, shape ``[len(answers)]``; ``nan`` where an answer has no tokens to score.

    Raises:
        ValueError: If ``prompts`` and ``answers`` differ in length.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"Got {len(prompts)} prompts for {len(answers)} answers.")
    result = np.full(len(answers), math.nan)
    bos = tokenizer.bos_token_id
    # (index, full ids, number of scored tokens at the end)
    rows: list[tuple[int, list[int], int]] = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        if not answer_ids:
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if not prompt_ids and bos is not None:
            prompt_ids = [bos]  # give the first answer token something to be predicted from
        ids = [*prompt_ids, *answer_ids]
        scored = len(ids) - max(len(prompt_ids), 1)  # position 0 is never predicted
        if scored > 0:
            rows.append((i, ids, scored))
    # Similar lengths together keep padding, and so wasted compute, small.
    rows.sort(key=lambda row: len(row[1]))
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    takes = _forward_parameters(model)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        # Logits at t predict the token at t + 1: the last `keep` positions but the very last
        # predict every scored token of the batch.
        keep = max(scored for _, _, scored in batch) + 1
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), keep - 1), dtype=torch.bool)
        for row, (_, ids, scored) in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
            mask[row, keep - 1 - scored :] = True
        inputs: dict[str, torch.Tensor | int] = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention.to(device),
        }
        if "position_ids" in takes:
            inputs["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0).to(device)
        if "logits_to_keep" in takes:
            inputs["logits_to_keep"] = keep
        with torch.inference_mode():
            logits = model(**inputs).logits[:, -keep:-1].float()
            # Gather on the device so that only [batch, keep] values come back; logsumexp
            # minus the target's logit is its NLL without a vocabulary-wide log-softmax copy.
            targets = input_ids[:, width - keep + 1 :].to(logits.device).unsqueeze(-1)
            nll = (logits.logsumexp(-1) - logits.gather(-1, targets).squeeze(-1)).cpu()
        mean_nll = (nll * mask).sum(1) / mask.sum(1)
        for row, (index, _, _) in enumerate(batch):
            result[index] = math.exp(float(mean_nll[row]))
    return result


def _forward_parameters(model: PreTrainedModel) -> frozenset[str]:
    """The arguments the model class's ``forward`` names (the class's, not the instance's:
    accelerate and other wrappers replace the instance's with ``*args, **kwargs``); empty if
    it cannot be inspected."""
    try:
        return frozenset(inspect.signature(type(model).forward).parameters)
    except (TypeError, ValueError):
        return frozenset()
