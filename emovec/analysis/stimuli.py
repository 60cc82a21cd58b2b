"""Emotional stimuli (EmotionPrompt EP01–EP11, EmotionAttack EA01–EA22) and their vectors.

The stimuli ship as data (``emovec/data/stimuli/stimuli.jsonl``), texts exactly as published
(Li et al., arXiv 2307.11760 and 2312.11111). An EmotionPrompt stimulus is placed after the
task (``task + " " + stimulus``), an EmotionAttack stimulus before it (``stimulus + " " +
task``). :func:`apply` places one or several; :func:`stimulus_vectors` turns each stimulus
into a direction, the mean per-layer hidden-state difference (prompt with the stimulus) −
(prompt) over a prompt set, in an :class:`~emovec.EmotionVectors` bank that ``steer`` takes
like any other (one "emotion" per stimulus, named by its lower-case id: ``ep02``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal, TypeAlias

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import PromptPair
from emovec.extraction import DEFAULT_BATCH_SIZE, Reading, Template, extract
from emovec.vectors import EmotionVectors

__all__ = [
    "Stimulus",
    "StimulusLike",
    "apply",
    "stimuli",
    "stimulus",
    "stimulus_name",
    "stimulus_pairs",
    "stimulus_vectors",
]

Side = Literal["after", "before"]


@dataclass(frozen=True)
class Stimulus:
    """One emotional stimulus.

    Attributes:
        id: ``"EP01"`` … ``"EP11"`` (EmotionPrompt), ``"EA01"`` … ``"EA22"`` (EmotionAttack).
        text: The stimulus, as published.
        side: Where it goes: ``"after"`` the task (EmotionPrompt) or ``"before"`` it
            (EmotionAttack).
        theories: The psychological theories it draws on (``"self_monitoring"``,
            ``"social_cognitive"``, ``"cognitive_emotion_regulation"``,
            ``"negative_life_events"``, ``"emotional_arousal"``).
        combines: The stimuli it is made of (EP06 combines EP01–EP03), else empty.
        arousal_rank: For the arousal stimuli EA16–EA22, their published arousal rank (1 the
            highest), else ``None``.
    """

    id: str
    text: str
    side: Side
    theories: tuple[str, ...] = ()
    combines: tuple[str, ...] = ()
    arousal_rank: int | None = None

    def __post_init__(self) -> None:
        if not self.id.strip() or not self.text.strip():
            raise ValueError(f"A stimulus needs an id and a text, got {self!r}.")
        if self.side not in ("after", "before"):
            raise ValueError(
                f"Stimulus {self.id}: side must be 'after' or 'before', not {self.side!r}."
            )


StimulusLike: TypeAlias = "str | Stimulus"


@lru_cache(maxsize=1)
def _shipped() -> tuple[Stimulus, ...]:
    path = resources.files("emovec") / "data" / "stimuli" / "stimuli.jsonl"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            records.append(
                Stimulus(
                    id=raw["id"],
                    text=raw["text"],
                    side=raw["side"],
                    theories=tuple(raw.get("theories", ())),
                    combines=tuple(raw.get("combines", ())),
                    arousal_rank=raw.get("arousal_rank"),
                )
            )
    return tuple(records)


def stimuli(kind: Literal["all", "EP", "EA"] = "all") -> list[Stimulus]:
    """The shipped stimuli, in id order: all, only EmotionPrompt (``"EP"``) or only
    EmotionAttack (``"EA"``)."""
    if kind not in ("all", "EP", "EA"):
        raise ValueError(f"kind must be 'all', 'EP' or 'EA', not {kind!r}.")
    return [s for s in _shipped() if kind == "all" or s.id.startswith(kind)]


def stimulus(which: StimulusLike) -> Stimulus:
    """A stimulus record: a :class:`Stimulus` as given, or a shipped one by id (any case).

    Raises:
        KeyError: for an id that is not shipped, listing those that are.
    """
    if isinstance(which, Stimulus):
        return which
    if not isinstance(which, str):
        raise TypeError(f"A stimulus is an id such as 'EP02' or a Stimulus, not {which!r}.")
    found = {s.id: s for s in _shipped()}.get(which.strip().upper())
    if found is None:
        raise KeyError(
            f"No stimulus {which!r}; shipped: EP01–EP11 and EA01–EA22 (see stimuli()). Pass "
            "a Stimulus(id, text, side) for your own."
        )
    return found


def _records(which: StimulusLike | Sequence[StimulusLike]) -> list[Stimulus]:
    items = [which] if isinstance(which, str | Stimulus) else list(which)
    records = [stimulus(item) for item in items]
    ids = [r.id for r in records]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"Stimulus {repeated} given twice; give each stimulus once.")
    return records


def apply(prompt: str, which: StimulusLike | Sequence[StimulusLike]) -> str:
    """``prompt`` with the stimuli placed by their rules.

    EmotionPrompt stimuli go after the task in the order given, EmotionAttack stimuli before
    it in the order given, each joined by one space: ``apply(task, ["EA01", "EP01",
    "EP02"])`` is ``EA01 + " " + task + " " + EP01 + " " + EP02``. Whitespace around the
    prompt is dropped; an empty list gives the prompt unchanged.

    Args:
        prompt: The task text.
        which: A stimulus id (``"EP02"``), a :class:`Stimulus`, or a sequence of them.

    Raises:
        KeyError: for an unknown id. ValueError: for an empty prompt or a stimulus given twice.
    """
    if not prompt.strip():
        raise ValueError("apply() needs a non-empty prompt to place stimuli around.")
    records = _records(which)
    before = [r.text for r in records if r.side == "before"]
    after = [r.text for r in records if r.side == "after"]
    return " ".join([*before, prompt.strip(), *after])


def stimulus_name(which: StimulusLike | Sequence[StimulusLike]) -> str:
    """The bank name of a stimulus or a combination: lower-case ids joined by ``_``
    (``"ep02"``, ``"ep01_ep02"``)."""
    return "_".join(r.id.lower() for r in _records(which))


def stimulus_pairs(
    prompts: Sequence[str], which: StimulusLike | Sequence[StimulusLike]
) -> list[PromptPair]:
    """``PromptPair(emotional=apply(prompt, which), neutral=prompt)`` per prompt."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("Give a non-empty list of prompts (not a single string).")
    return [PromptPair(apply(p, which), p.strip()) for p in prompts]


def stimulus_vectors(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    which: Sequence[StimulusLike | Sequence[StimulusLike]] | None = None,
    *,
    reading: Reading = "mean",
    template: Template = "plain",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> EmotionVectors:
    """One vector per stimulus: the per-layer mean of (prompt + stimulus) − (prompt).

    The readings are :func:`emovec.extract`'s (``reading="mean"`` averages each text's
    content tokens, ``"last"`` reads its last token), so the bank steers like any other:
    ``with steer(model, bank, ep02=1.0): ...``.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its (fast) tokenizer.
        prompts: The prompt set the differences are averaged over.
        which: Stimuli (ids or records); an entry that is itself a sequence is a combination
            (``[["EP01", "EP02"]]`` gives ``ep01_ep02``). Default: the eleven EP stimuli.
        reading: ``"mean"`` or ``"last"`` (see :func:`emovec.extract`).
        template: ``"plain"`` or ``"chat"`` (see :func:`emovec.extract`).
        batch_size: Texts per forward pass.
        progress: Show a progress bar.

    Returns:
        The bank, one entry per stimulus named by :func:`stimulus_name`.
    """
    if reading not in ("mean", "last"):
        raise ValueError(f"reading must be 'mean' or 'last' for stimuli, not {reading!r}.")
    chosen = list(which) if which is not None else list(stimuli("EP"))
    if not chosen:
        raise ValueError("Give at least one stimulus.")
    pairs: dict[str, list[PromptPair]] = {}
    for entry in chosen:
        name = stimulus_name(entry)
        if name in pairs:
            raise ValueError(f"Stimulus {name!r} given twice; give each once.")
        pairs[name] = stimulus_pairs(prompts, entry)
    bank = extract(
        model,
        tokenizer,
        pairs,
        reading=reading,
        template=template,
        batch_size=batch_size,
        progress=progress,
    )
    return bank.with_settings(source="stimuli", prompts=len(prompts))
