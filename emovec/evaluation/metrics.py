"""Text metrics for evaluating steered generations: repetition, lexicon intensity and
fluency (topic similarity and retention: :mod:`emovec.evaluation.topic`).

Everything here runs offline. The lexicon is the NRC emotion lexicon bundled with ``nrclex``,
an optional dependency imported only when used.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.models import cache_argument, forward_parameters, input_device

__all__ = [
    "NRC_EMOTIONS",
    "distinct_n",
    "is_degenerate",
    "lexicon_intensity",
    "perplexity",
    "repeated_share",
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


def repeated_share(text: str, n: int = 3) -> float:
    """Share of a text's word n-grams that repeat an earlier one (words lower-cased,
    punctuation ignored): ``1 - distinct-n`` over its words.

    Args:
        text: The text.
        n: The n-gram length.

    Returns:
        A share in [0, 1); 0.0 when the text has fewer than ``n`` words.
    """
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def is_degenerate(
    text: str, threshold: float = 0.5, min_words: int = 8, max_repeated: float = 0.1
) -> bool:
    """Whether a text has collapsed into repetition: its distinct-2 is below ``threshold``
    (a stutter: "the the the"), or more than ``max_repeated`` of its word trigrams repeat
    an earlier one (a loop of phrases: "I'm furious now, and I'm furious now"), which
    distinct-2 barely sees in a text otherwise varied.

    Texts shorter than ``min_words`` words are never judged degenerate: with a handful of
    bigrams one repeated pair already moves distinct-2 a lot, so short answers would be
    flagged for ordinary phrasing rather than for looping. The shipped hand-written answers
    and the plain answers of SmolLM2 at repetition penalty 1.15 are never degenerate; at
    penalty 1.0 3 % of its plain answers loop (docs/evaluation.md).

    Args:
        text: The text; words are split on whitespace.
        threshold: The smallest share of unique word bigrams a healthy text has.
        min_words: The fewest words a text needs before it is judged.
        max_repeated: The largest share of repeated word trigrams a healthy text has.

    Returns:
        ``True`` when the text is long enough and stutters or loops.
    """
    if len(text.split()) < min_words:
        return False
    return distinct_n(text, 2) < threshold or repeated_share(text, 3) > max_repeated


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

    Answers to the same prompt share its pass: per batch each distinct prompt is run once
    (left-padded, positions counted from its first token) and its key/value cache copied to
    the rows of its answers, which then run as a continuation (right-padded). An evaluation
    scores many answers per query (every emotion, dose and recipe), so the prompts, about
    half of each sequence on a chat model, are no longer recomputed per answer; the LM head
    runs only where an answer token is predicted.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Full prompt strings, already chat-formatted.
        answers: One answer per prompt.
        batch_size: Answers per forward pass.

    Returns:
        Perplexities, shape ``[len(answers)]``; ``nan`` where an answer has no tokens to score.

    Raises:
        ValueError: If ``prompts`` and ``answers`` differ in length.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"Got {len(prompts)} prompts for {len(answers)} answers.")
    result = np.full(len(answers), math.nan)
    rows = _scored_rows(tokenizer, prompts, answers)
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    takes = forward_parameters(model)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        nll, scored = _answer_nll(model, batch, pad, device, takes)
        for (index, _, _), total, count in zip(batch, nll.tolist(), scored.tolist(), strict=True):
            result[index] = math.exp(total / count)
    return result


# (index of the answer, the ids it follows (never empty), the answer's ids to score).
_Row = tuple[int, tuple[int, ...], list[int]]


def _scored_rows(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str]
) -> list[_Row]:
    """The answers with a token to score, grouped by prompt (the longest prompts last) and
    by length within a group, so that a batch holds few prompts and little padding."""
    bos = tokenizer.bos_token_id
    prompt_ids: dict[str, tuple[int, ...]] = {}
    rows: list[_Row] = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        if prompt not in prompt_ids:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            # Give the first answer token something to be predicted from.
            prompt_ids[prompt] = tuple(ids or ([bos] if bos is not None else []))
        context = prompt_ids[prompt]
        if not context:  # no prompt and no BOS: the answer's first token is never predicted
            context, answer_ids = tuple(answer_ids[:1]), answer_ids[1:]
        if answer_ids:
            rows.append((i, context, answer_ids))
    rows.sort(key=lambda row: (len(row[1]), row[1], len(row[2])))
    return rows


def _answer_nll(
    model: PreTrainedModel,
    batch: Sequence[_Row],
    pad: int,
    device: torch.device,
    takes: frozenset[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each row's answer tokens, and how many there are."""
    contexts = list(dict.fromkeys(context for _, context, _ in batch))
    of_row = torch.tensor([contexts.index(context) for _, context, _ in batch])
    width = max(len(context) for context in contexts)
    context_ids = torch.full((len(contexts), width), pad, dtype=torch.long)
    context_mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for row, context in enumerate(contexts):
        context_ids[row, width - len(context) :] = torch.tensor(context)
        context_mask[row, width - len(context) :] = 1
    # The answer's last token is predicted but never read: the continuation stops before it.
    span = max(len(answer) for _, _, answer in batch)
    targets = torch.full((len(batch), span), pad, dtype=torch.long)
    scored = torch.zeros((len(batch), span), dtype=torch.bool)
    for row, (_, _, answer) in enumerate(batch):
        targets[row, : len(answer)] = torch.tensor(answer)
        scored[row, : len(answer)] = True
    # An explicit dynamic cache, which the continuation can grow (left to itself, a model may
    # make a static one sized to the context).
    cache = DynamicCache()
    cached = {cache_argument(model): cache, "use_cache": True}
    with torch.inference_mode():
        first = model(
            **_inputs(context_ids, context_mask, context_mask.cumsum(-1) - 1, device, takes),
            **({"logits_to_keep": 1} if "logits_to_keep" in takes else {}),
            **cached,
        )
        logits = first.logits[:, -1:].float()[of_row.to(first.logits.device)]
        if span > 1:
            cache.batch_select_indices(of_row.to(device))
            mask = torch.cat([context_mask[of_row], scored[:, :-1].long()], dim=1)
            positions = context_mask[of_row].sum(-1, keepdim=True) + torch.arange(span - 1)
            rest = model(
                **_inputs(targets[:, :-1], mask, positions, device, takes),
                **cached,
            )
            logits = torch.cat([logits, rest.logits.float()], dim=1)
        # logsumexp minus the target's logit is its NLL without a vocabulary-wide
        # log-softmax copy; gathered on the device so that only [batch, span] values return.
        picked = logits.gather(-1, targets.to(logits.device).unsqueeze(-1)).squeeze(-1)
        nll = (logits.logsumexp(-1) - picked).cpu()
    return (nll * scored).sum(1), scored.sum(1)


def _inputs(
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    device: torch.device,
    takes: frozenset[str],
) -> dict[str, torch.Tensor]:
    """Forward arguments, with explicit positions where the model takes them (left padding
    must not move a position)."""
    inputs: dict[str, torch.Tensor] = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
    }
    if "position_ids" in takes:
        inputs["position_ids"] = positions.clamp(min=0).to(device)
    return inputs
