"""An offline offensive-language judge, and decoding that cannot write slurs or obscenities.

The judge is alt-profanity-check's linear model (TF-IDF words, calibrated linear SVM; inside its
wheel). The block list is derived at runtime from that judge: the words of its vocabulary it
flags *on their own* (137 at :data:`OFFENSIVE_THRESHOLD`), less the 12 the shipped answers and
stories use or pluralise ("bloody", "sick", "stink(s)", …) and :data:`_ORDINARY_WORDS`. Chosen
over better-profanity's list by measurement: that list holds only 90 of the judge's 137 words
(it lacks "idiot" and slur variants such as "faggots", "nigguh", "retards") and 9 words of the
shipped clean answers ("vomit", "urine", "screw", …).

Each word is blocked lower/Capitalised/UPPER, mid-sentence (after a space) and at a word start
(no space: start of the answer, after a newline or quote). A spelling without the space fires
only after a token that ends a word, so "ass" stays possible inside "Cassidy". Spellings that
would fire inside a shipped text, or inside a common word the judge finds clean ("Assess",
"cocktail", "Nigeria"), are dropped: every shipped text stays writable token for token.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from types import ModuleType
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

__all__ = [
    "OFFENSIVE_THRESHOLD",
    "BlockWordsLogitsProcessor",
    "OffensiveJudge",
    "bad_words_ids",
    "blocked_words",
    "clean_generation_kwargs",
    "clean_logits_processor",
    "offensive_rate",
]

# alt-profanity-check 1.9.1 on the 600 shipped hand-written texts (100 neutral + 5 × 100
# emotional, clean by construction) flags 12 / 1 / 1 / 1 at > 0.5 / 0.8 / 0.9 / 0.95; the one
# left at 0.9 (0.17 %) is a disgust answer at 0.953. Answers with "fuck" or a slur score ≥ 0.99.
OFFENSIVE_THRESHOLD = 0.9
_INSTALL = "pip install 'alt-profanity-check>=1.7.2'"
_WORD = re.compile(r"(?u)\b\w\w+\b")  # the judge's own token pattern
_CLEAN_ALONE = 0.5  # a word the judge scores below this on its own is clean
# Flagged alone, yet needed by clean text (identity, anatomy, violence; "fool" would also block
# "fooled"), or fragments of censored spellings ("f*cking" gives "cking").
_ORDINARY_WORDS = frozenset(
    "gay homosexual queer queers kill die sex racist nazis rapist pedophile psychopath "  # noqa: SIM905
    "vagina penis semen garbage fool looser ck cking ing".split()
)


def _profanity_check() -> ModuleType:
    try:
        return importlib.import_module("profanity_check")
    except ImportError as err:
        raise ModuleNotFoundError(
            f"The offensive-language judge needs alt-profanity-check: {_INSTALL} "
            "(or generate with clean=False / --no-clean)."
        ) from err


class OffensiveJudge:
    """Probability that a text is offensive (alt-profanity-check), and flags at a threshold.

    Args:
        threshold: Flag texts whose probability exceeds this, in (0, 1).

    Raises:
        ValueError: for a threshold outside (0, 1) or NaN.
        ModuleNotFoundError: when alt-profanity-check is not installed.
    """

    def __init__(self, threshold: float = OFFENSIVE_THRESHOLD) -> None:
        if not 0.0 < float(threshold) < 1.0:  # NaN fails too
            raise ValueError(f"threshold must lie strictly between 0 and 1, not {threshold!r}.")
        self.threshold = float(threshold)
        self._predict_prob = _profanity_check().predict_prob

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Offensiveness probability per text; empty or whitespace-only text scores 0."""
        items = [texts] if isinstance(texts, str) else list(texts)
        probs = np.zeros(len(items))
        kept = [i for i, text in enumerate(items) if text.strip()]
        if kept:
            probs[kept] = self._predict_prob([items[i] for i in kept])
        return probs

    def flags(self, texts: str | Sequence[str]) -> np.ndarray:
        """Boolean array: which texts score above :attr:`threshold`."""
        return np.asarray(self(texts) > self.threshold)


def offensive_rate(texts: Sequence[str], judge: OffensiveJudge | None = None) -> float:
    """Share of ``texts`` that ``judge`` (default: :class:`OffensiveJudge`) flags.

    Raises:
        ValueError: for no texts.
    """
    if not texts:
        raise ValueError("offensive_rate needs at least one text.")
    return float(np.mean((judge or OffensiveJudge()).flags(texts)))


@lru_cache(maxsize=1)
def _shipped_texts() -> tuple[str, ...]:
    """Every text of the shipped answers, triples and story pairs (clean by construction)."""
    root = resources.files("emovec") / "data"
    texts: dict[str, None] = {}
    for folder in ("answers", "triples", "pairs"):
        for entry in sorted((root / folder).iterdir(), key=lambda e: e.name):
            for line in entry.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    texts.update(dict.fromkeys(str(v) for v in json.loads(line).values()))
    return tuple(texts)


@lru_cache(maxsize=1)
def _vocabulary_scores() -> tuple[tuple[str, float], ...]:
    """Each word of the judge's vocabulary with the probability it gets on its own."""
    judge = _profanity_check()
    try:
        vectorizer = importlib.import_module("profanity_check.profanity_check").vectorizer
        words = [str(w) for w in vectorizer.get_feature_names_out()]
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"Unsupported alt-profanity-check layout; {_INSTALL}") from err
    return tuple(zip(words, map(float, judge.predict_prob(words)), strict=True))


@lru_cache(maxsize=1)
def blocked_words() -> tuple[str, ...]:
    """The default block list: words the judge flags alone, less those clean text needs."""
    shipped = {w for text in _shipped_texts() for w in _WORD.findall(text.lower())}
    flagged = {w for w, prob in _vocabulary_scores() if prob > OFFENSIVE_THRESHOLD}
    needed = shipped & flagged  # ... and their plurals: "stink" is shipped, so is "stinks"
    return tuple(
        sorted(
            word
            for word in flagged - shipped - _ORDINARY_WORDS
            if word.isalpha() and not {word.removesuffix("s"), word.removesuffix("es")} & needed
        )
    )


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def _spellings(tokenizer: PreTrainedTokenizerBase, word: str) -> dict[tuple[int, ...], bool]:
    """Token ids of ``word``'s spellings, each mapped to whether it fires anywhere (the
    mid-sentence form) or only at a word start (the form without a space)."""
    head, found = _encode(tokenizer, "a"), {}
    for form in dict.fromkeys((word.lower(), word.capitalize(), word.upper())):
        after = _encode(tokenizer, f"a {form}")  # robust to tokenizers that add a prefix space
        mid = after[len(head) :] if after[: len(head)] == head else _encode(tokenizer, f" {form}")
        found[mid] = True
        found.setdefault(_encode(tokenizer, form), False)
    unk = tokenizer.unk_token_id
    return {ids: anywhere for ids, anywhere in found.items() if ids and unk not in ids}


@lru_cache(maxsize=8)
def _word_ends(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Per token id: is its text empty or does it end in a non-alphanumeric character?"""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([not t or not t[-1].isalnum() for t in texts], dtype=torch.bool)


def _fired(
    table: dict[tuple[int, ...], bool], streams: Iterable[Sequence[int]], ends: list[bool]
) -> set[tuple[int, ...]]:
    """The sequences of ``table`` the blocker would fire on somewhere in ``streams``."""
    by_first: dict[int, list[tuple[int, ...]]] = {}
    for ids in table:
        by_first.setdefault(ids[0], []).append(ids)
    fired = set()
    for stream in streams:
        for j, token in enumerate(stream):
            for ids in by_first.get(token, ()):
                start = table[ids] or j == 0 or stream[j - 1] >= len(ends) or ends[stream[j - 1]]
                if start and tuple(stream[j : j + len(ids)]) == ids:
                    fired.add(ids)
    return fired


def _clean_streams(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Canonical tokens of the shipped texts, and of the common spellings (one token after a
    space) of words the judge finds clean alone that contain a blocked word."""
    blocked = re.compile("|".join(blocked_words()))
    spellings = [
        spelling
        for word, prob in _vocabulary_scores()
        if prob < _CLEAN_ALONE and blocked.search(word)
        for spelling in dict.fromkeys((word, word.capitalize()))
        if len(_encode(tokenizer, f" {spelling}")) == 1
    ]
    texts = [*_shipped_texts(), *spellings, *(f" {s}" for s in spellings)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@lru_cache(maxsize=8)
def _sequences(
    tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...] | None
) -> tuple[tuple[tuple[int, ...], bool], ...]:
    table: dict[tuple[int, ...], bool] = {}
    for word in words if words is not None else blocked_words():
        for ids, anywhere in _spellings(tokenizer, word).items():
            table[ids] = table.get(ids, False) or anywhere
    if words is None:  # the default list leaves clean text writable token for token
        ends = _word_ends(tokenizer).tolist()
        for ids in _fired(table, _clean_streams(tokenizer), ends):
            del table[ids]
    return tuple(sorted(table.items()))


def _chosen(words: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if words is None else (words,) if isinstance(words, str) else tuple(words)


def bad_words_ids(
    tokenizer: PreTrainedTokenizerBase, words: Iterable[str] | None = None
) -> list[list[int]]:
    """Deduplicated token-id sequences of every spelling of every blocked word.

    Args:
        tokenizer: The tokenizer of the model that generates.
        words: Words to block instead of :func:`blocked_words`.
    """
    return [list(ids) for ids, _ in _sequences(tokenizer, _chosen(words))]


class BlockWordsLogitsProcessor(LogitsProcessor):
    """Sets to -inf each token that would complete a blocked sequence; leaves the rest as is.

    Args:
        sequences: Token ids per blocked spelling, each with ``True`` to block it anywhere or
            ``False`` to block it only after a token that ends a word (or at the very start).
        word_ends: Per token id, whether its text ends a word.
    """

    def __init__(
        self, sequences: Sequence[tuple[Sequence[int], bool]], word_ends: torch.Tensor
    ) -> None:
        by_length: dict[int, list[tuple[Sequence[int], bool]]] = {}
        for ids, anywhere in sequences:
            by_length.setdefault(len(ids) - 1, []).append((ids, anywhere))
        columns = sorted({ids[-1] for ids, _ in sequences})  # every token that may be banned
        slot = {token: i for i, token in enumerate(columns)}
        self._ends, self._columns = word_ends.bool(), torch.tensor(columns, dtype=torch.long)
        self._groups = [  # per prefix length n: prefixes [N, n], banned slots [N], anywhere [N]
            (
                torch.tensor([list(ids[:-1]) for ids, _ in group], dtype=torch.long),
                torch.tensor([slot[ids[-1]] for ids, _ in group], dtype=torch.long),
                torch.tensor([anywhere for _, anywhere in group], dtype=torch.bool),
                all(anywhere for _, anywhere in group),
            )
            for _, group in sorted(by_length.items())
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        device, (batch, length) = scores.device, input_ids.shape
        if self._ends.device != device:
            self._ends, self._columns = self._ends.to(device), self._columns.to(device)
            self._groups = [
                (p.to(device), b.to(device), a.to(device), e) for p, b, a, e in self._groups
            ]
        hits = scores.new_zeros(batch, len(self._columns))
        for prefixes, slots, anywhere, everywhere in self._groups:
            n = prefixes.shape[-1]
            if n > length:
                continue
            if n:
                match = (input_ids[:, None, length - n :] == prefixes).all(dim=-1)
            else:
                match = torch.ones(batch, len(slots), dtype=torch.bool, device=device)
            if not everywhere and n < length:  # word-start spellings need a word end before
                before, size = input_ids[:, length - n - 1], len(self._ends)
                at_start = (before >= size) | self._ends[before.clamp(max=size - 1)]
                match &= anywhere | at_start[:, None]
            hits.index_add_(1, slots, match.to(hits.dtype))
        out = scores.clone()  # only the columns that may be banned are rewritten
        out[:, self._columns] = scores[:, self._columns].masked_fill(hits > 0, -math.inf)
        return out  # type: ignore[return-value]


def clean_logits_processor(
    tokenizer: PreTrainedTokenizerBase, words: Iterable[str] | None = None
) -> BlockWordsLogitsProcessor:
    """A processor that keeps ``words`` (default :func:`blocked_words`) out of generated text."""
    return BlockWordsLogitsProcessor(_sequences(tokenizer, _chosen(words)), _word_ends(tokenizer))


def clean_generation_kwargs(
    tokenizer: PreTrainedTokenizerBase,
    *,
    words: Iterable[str] | None = None,
    logits_processor: Iterable[LogitsProcessor] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``model.generate(**inputs, **clean_generation_kwargs(tok))``.

    Args:
        tokenizer: The model's tokenizer.
        words: Words to block instead of :func:`blocked_words`.
        logits_processor: Your own processors, kept and run before the blocker.
    """
    blocker = clean_logits_processor(tokenizer, words)
    return {"logits_processor": LogitsProcessorList([*(logits_processor or ()), blocker])}
