"""Paired neutral / emotional texts for extraction, and the shipped data.

A pair tells the same first-person story twice: once flatly, once with the emotion. Only the
emotion differs, so the mean hidden-state difference over many pairs isolates it. A
:class:`ResponsePair` is the response-conditioned variant: two answers to one query, read after
the query so that only the answer's tokens are averaged.

Two sets ship: story pairs (``data/pairs``) and hand-written answer pairs (``data/answers``:
100 everyday extraction queries, each answered neutrally and with each basic emotion, on
topic). The answers also serve as labelled texts for checking an emotion judge. Training
(:func:`emovec.training.train`) learns from the answer pairs and, for anger, disgust, fear and
sadness, 100 more hand-written triples per emotion with questions of their own
(``data/triples``): :func:`default_triples`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from emovec._files import read_text

__all__ = [
    "BASIC_EMOTIONS",
    "Pairs",
    "PromptPair",
    "ResponsePair",
    "UserMessage",
    "available_emotions",
    "default_answer_pairs",
    "default_calibration_queries",
    "default_extraction_queries",
    "default_instructions",
    "default_pairs",
    "default_queries",
    "default_triples",
    "default_user_messages",
    "read_pairs",
    "read_queries",
    "validate_pairs",
]

BASIC_EMOTIONS = ("joy", "anger", "disgust", "fear", "sadness")


class PromptPair(NamedTuple):
    """One story told with the emotion and without it."""

    emotional: str
    neutral: str


class ResponsePair(NamedTuple):
    """Two answers to one query: one given with the emotion, one given neutrally."""

    query: str
    emotional: str
    neutral: str


Pair = PromptPair | ResponsePair
Pairs = Mapping[str, Sequence[Pair]]


def _data_dir() -> Path:
    return Path(str(resources.files("emovec") / "data" / "pairs"))


def available_emotions() -> list[str]:
    """Emotions the package ships pairs for."""
    return sorted(p.stem for p in _data_dir().glob("*.jsonl"))


def default_pairs(emotions: Iterable[str] | None = None) -> dict[str, list[Pair]]:
    """The shipped pairs, for ``emotions`` (default: the five basic emotions).

    Raises:
        KeyError: for an emotion the package ships no pairs for.
    """
    wanted = list(emotions) if emotions is not None else list(BASIC_EMOTIONS)
    shipped = available_emotions()
    unknown = [e for e in wanted if e not in shipped]
    if unknown:
        raise KeyError(
            f"No shipped pairs for {unknown}; shipped: {shipped}. Pass your own pairs "
            "(extract(..., pairs={'pride': [(emotional, neutral), ...]})) for other emotions."
        )
    return {e: read_pairs(_data_dir() / f"{e}.jsonl") for e in wanted}


def default_answer_pairs(emotions: Iterable[str] | None = None) -> dict[str, list[ResponsePair]]:
    """The shipped hand-written answer pairs (query, emotional answer, neutral answer) for
    ``emotions`` (default: the five basic emotions, the only ones shipped).

    Raises:
        KeyError: for an emotion the package ships no answers for.
    """
    folder = _data_dir().parent / "answers"
    wanted = list(emotions) if emotions is not None else list(BASIC_EMOTIONS)
    unknown = [e for e in wanted if not (folder / f"{e}.jsonl").is_file()]
    if unknown:
        shipped = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise KeyError(
            f"No shipped answer pairs for {unknown}; shipped: {shipped}. Pass your own "
            "(query, emotional, neutral) pairs for other emotions."
        )
    return {e: [ResponsePair(*p) for p in read_pairs(folder / f"{e}.jsonl")] for e in wanted}


def default_triples(emotions: Iterable[str] | None = None) -> dict[str, list[ResponsePair]]:
    """The shipped training triples (query, emotional answer, neutral answer) per emotion.

    An emotion's own extra triples (``data/triples``: 100 each for anger, disgust, fear and
    sadness, everyday questions of their own, none an extraction, calibration or evaluation
    query), followed by its answer pairs (:func:`default_answer_pairs`). The answer pairs come
    last, so the share :func:`emovec.training.train` holds out is always theirs.

    Raises:
        KeyError: for an emotion the package ships no answers for.
    """
    answers = default_answer_pairs(emotions)
    folder = _data_dir().parent / "triples"
    return {
        emotion: [
            *(ResponsePair(*p) for p in _read_if_shipped(folder / f"{emotion}.jsonl")),
            *pairs,
        ]
        for emotion, pairs in answers.items()
    }


def _read_if_shipped(path: Path) -> list[Pair]:
    return read_pairs(path) if path.is_file() else []


def _pair_from_record(record: object, where: str) -> Pair:
    if isinstance(record, ResponsePair):
        return record
    if isinstance(record, Mapping) and record.get("query") is not None:
        texts3 = (record.get("query"), record.get("emotional"), record.get("neutral"))
        if all(isinstance(t, str) for t in texts3):
            return ResponsePair(*(str(t) for t in texts3))
        raise ValueError(
            f"{where}: a response pair needs 'query', 'emotional' and 'neutral' texts."
        )
    if isinstance(record, Mapping):
        missing = [k for k in ("emotional", "neutral") if record.get(k) is None]
        if missing:
            raise ValueError(
                f"{where}: missing key {missing[0]!r}; need 'emotional' and 'neutral'."
            )
        texts = (record["emotional"], record["neutral"])
    elif isinstance(record, Sequence) and not isinstance(record, str) and len(record) == 2:
        texts = (record[0], record[1])
    else:
        texts = (None, None)
    if all(isinstance(t, str) for t in texts):
        return PromptPair(str(texts[0]), str(texts[1]))
    raise ValueError(
        f"{where}: expected two texts as {{'emotional': ..., 'neutral': ...}} or "
        f"(emotional, neutral), got {record!r}."
    )


def read_pairs(path: str | Path) -> list[Pair]:
    """Read pairs from JSON Lines, a JSON list, or CSV with ``emotional,neutral`` columns.

    Records with a ``query`` field (or column) become :class:`ResponsePair` items.
    """
    path = Path(path)
    text = read_text(path, "pairs")
    if path.suffix == ".csv":
        records: list[object] = list(csv.DictReader(io.StringIO(text, newline="")))
    elif path.suffix == ".json":
        loaded = json.loads(text)
        if not isinstance(loaded, list):
            raise ValueError(f"{path}: expected a JSON list of pairs.")
        records = loaded
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}).") from err
    return [_pair_from_record(r, f"{path} item {i}") for i, r in enumerate(records, 1)]


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def validate_pairs(pairs: Mapping[str, Iterable[object]]) -> dict[str, list[Pair]]:
    """Normalise user pairs to :class:`PromptPair` / :class:`ResponsePair` lists, rejecting
    unusable data.

    Raises:
        ValueError: on no emotions, an emotion without pairs, empty or identical texts, or an
            emotional text given twice for one emotion (a duplicate counts double in the mean).
    """
    if not pairs:
        raise ValueError("No pairs given: pass {emotion: [(emotional, neutral), ...]}.")
    checked: dict[str, list[Pair]] = {}
    for emotion, items in pairs.items():
        normalised = [
            _pair_from_record(item, f"{emotion!r} pair {i}") for i, item in enumerate(items, 1)
        ]
        if not normalised:
            raise ValueError(f"Emotion {emotion!r} has no pairs.")
        seen: dict[str, int] = {}
        for i, pair in enumerate(normalised, 1):
            if not pair.emotional.strip() or not pair.neutral.strip():
                raise ValueError(f"{emotion!r} pair {i} has an empty text.")
            if isinstance(pair, ResponsePair) and not pair.query.strip():
                raise ValueError(f"{emotion!r} pair {i} has an empty query.")
            key = _key(pair.emotional)
            if key in seen:
                raise ValueError(
                    f"{emotion!r} pair {i} repeats the emotional text of pair {seen[key]} "
                    f"({pair.emotional[:60]!r}); remove the duplicate."
                )
            seen[key] = i
            if pair.emotional.strip() == pair.neutral.strip():
                raise ValueError(
                    f"{emotion!r} pair {i}: emotional and neutral texts are identical, so the "
                    "pair carries no emotion."
                )
        checked[emotion] = normalised
    return checked


def default_instructions() -> dict[str, str]:
    """The shipped instruction per emotion ("Answer as someone ..."), and the neutral one
    under the key ``"neutral"``."""
    text = (resources.files("emovec") / "data" / "instructions.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


class UserMessage(NamedTuple):
    """A user's message to an assistant, labelled with the emotion it carries.

    Attributes:
        text: The message.
        emotion: One of the five basic emotions, or ``"neutral"``.
        context: ``"support"``, ``"tutor"`` or ``"companion"``.
        explicit: Whether the message names its emotion (else only the situation implies it).
    """

    text: str
    emotion: str
    context: str
    explicit: bool


def default_user_messages(split: str = "heldout") -> list[UserMessage]:
    """The shipped hand-labelled user messages of ``split`` (``"calibration"``: 12 per label,
    for fitting; ``"heldout"``: 24 per label, for measuring), six labels: the five basic
    emotions and ``"neutral"``, a third each to a support desk, a tutor and a companion.

    Raises:
        ValueError: For another split.
    """
    if split not in ("calibration", "heldout"):
        raise ValueError(f"split must be 'calibration' or 'heldout', not {split!r}.")
    text = (resources.files("emovec") / "data" / "user_messages.jsonl").read_text("utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [
        UserMessage(r["text"], r["emotion"], r["context"], bool(r["explicit"]))
        for r in records
        if r["split"] == split
    ]


def _query_lines(name: str) -> list[str]:
    text = (resources.files("emovec") / "data" / name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_queries() -> list[str]:
    """The shipped evaluation queries: everyday neutral requests, never used for extraction
    or calibration."""
    return _query_lines("queries.txt")


def default_calibration_queries() -> list[str]:
    """The shipped calibration queries: everyday requests disjoint from both other sets.

    What calibration chooses layers, doses and recipes on: how-to questions, explanations,
    opinions and descriptions in the proportions of the evaluation set, so that a choice
    made here carries over to the held-out :func:`default_queries`.
    """
    return _query_lines("calibration_queries.txt")


def default_extraction_queries() -> list[str]:
    """Queries answered for response-conditioned extraction; disjoint from the evaluation set."""
    return _query_lines("extraction_queries.txt")


def read_queries(path: str | Path) -> list[str]:
    """Queries from a text file (one per line), JSON list, or JSON Lines with a ``query`` key.

    Raises:
        ValueError: when the file holds no queries.
    """
    path = Path(path)
    text = read_text(path, "queries")
    if path.suffix == ".json":
        queries = [str(q) for q in json.loads(text)]
    elif path.suffix == ".jsonl":
        queries = [str(json.loads(line)["query"]) for line in text.splitlines() if line.strip()]
    else:
        queries = [line.strip() for line in text.splitlines() if line.strip()]
    if not queries:
        raise ValueError(f"{path} holds no queries.")
    return queries
