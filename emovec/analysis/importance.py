"""Word importance: which words of a prompt the model's answer depends on.

Two measures of the "why stimuli work" study (Li et al., "The Good, The Bad, and Why",
arXiv 2312.11111), both min–max normalised over the prompt's words:

* **gradient**: the L2 norm of the gradient of the target's loss with respect to a word's input
  embeddings, the gradients of its sub-tokens summed first;
* **deletion**: ``|Δ loss|`` when the word is removed from the prompt.

The loss is the mean negative log-likelihood per token of ``target`` (an answer, a label),
teacher-forced right after the prompt. A *word* is a whitespace-separated run of the prompt.

>>> result = word_importance(model, tokenizer, "Is this review positive? I loved it.", " yes")
>>> result.share({"loved"})   # the share of importance on "loved"
>>> result                    # a heat-map in a notebook; print(result.to_terminal()) elsewhere
"""

from __future__ import annotations

import html
import math
import string
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from emovec.analysis._importance_inputs import Encoded, encode, without_word, word_spans

Method = Literal["gradient", "deletion"]
_METHODS = ("gradient", "deletion")


def _bare(word: str) -> str:
    """A word as matched by :meth:`WordImportance.share`: case-folded, punctuation stripped."""
    return word.strip(string.punctuation).casefold()


def min_max(values: Iterable[float]) -> list[float]:
    """``values`` scaled to [0, 1] by their minimum and maximum; all zeros when they are equal."""
    values = list(values)
    if not values:
        return []
    low, high = min(values), max(values)
    if high == low:
        return [0.0] * len(values)
    return [(v - low) / (high - low) for v in values]


# --- the model passes: one forward and backward pass, or batched losses


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the block, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _embedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Module):
        raise TypeError("The model has no input embeddings: give a Hugging Face causal LM.")
    return embedding


def _device(model: nn.Module) -> torch.device:
    return next(_embedding(model).parameters()).device


def _target_nll(
    logits: torch.Tensor, ids: torch.Tensor, starts: list[int], lengths: list[int]
) -> torch.Tensor:
    """Per row, the mean NLL of ``ids[row, start : start + length]`` under ``logits``."""
    losses = []
    for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        predicted = logits[row, start - 1 : start + length - 1]
        predicted = predicted.to(torch.promote_types(predicted.dtype, torch.float32))
        losses.append(F.cross_entropy(predicted, ids[row, start : start + length]))
    return torch.stack(losses)


def gradient_norms(model: nn.Module, encoded: Encoded, num_words: int) -> tuple[list[float], float]:
    """Each word's summed-gradient norm, and the loss."""
    ids = torch.tensor([encoded.context + encoded.target], device=_device(model))
    with torch.enable_grad():
        embeds = _embedding(model)(ids).detach().requires_grad_(True)
        logits = model(
            inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=False
        ).logits
        loss = _target_nll(logits, ids, [len(encoded.context)], [len(encoded.target)])[0]
        (grad,) = torch.autograd.grad(loss, embeds)
    grad = grad[0, : len(encoded.context)].double()
    owners = torch.tensor(encoded.token_words, device=grad.device)
    sums = torch.zeros(num_words, grad.shape[-1], dtype=grad.dtype, device=grad.device)
    sums.index_add_(0, owners[owners >= 0], grad[owners >= 0])
    return sums.norm(dim=-1).tolist(), float(loss.detach())


@torch.no_grad()
def losses(model: nn.Module, batch: list[Encoded]) -> list[float]:
    """The target loss of each encoded prompt, in one right-padded forward pass."""
    rows = [e.context + e.target for e in batch]
    width = max(len(r) for r in rows)
    device = _device(model)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, device=device)
        mask[i, : len(row)] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    starts, lengths = [len(e.context) for e in batch], [len(e.target) for e in batch]
    return _target_nll(logits, ids, starts, lengths).tolist()


# --- how it looks: an HTML heat-map for notebooks, coloured text for a terminal

# The colour of importance 1; importance 0 is white.
_HOT = (220, 38, 38)


def _shade(score: float) -> tuple[int, int, int]:
    """White at 0 to ``_HOT`` at 1 (clamped)."""
    t = min(max(score, 0.0), 1.0)
    return tuple(round(255 + (hot - 255) * t) for hot in _HOT)  # type: ignore[return-value]


def heat_map_html(words: Sequence[str], scores: Sequence[float], caption: str) -> str:
    """The words as ``<span>`` s whose background deepens with their score; all text escaped.

    Each span's tooltip (``title``) gives the score to three decimals.
    """
    spans = []
    for word, score in zip(words, scores, strict=True):
        red, green, blue = _shade(score)
        spans.append(
            f'<span style="background-color: rgb({red}, {green}, {blue}); color: #111; '
            f'padding: 1px 3px; border-radius: 3px" title="{score:.3f}">'
            f"{html.escape(word)}</span>"
        )
    return (
        '<div class="emovec-importance" style="line-height: 1.9; font-family: sans-serif">'
        f'<div style="font-size: smaller; color: #555">{html.escape(caption)}</div>'
        f"{' '.join(spans)}</div>"
    )


def heat_map_ansi(words: Sequence[str], scores: Sequence[float]) -> str:
    """The words on 24-bit ANSI backgrounds that deepen with their score, black text."""
    out = []
    for word, score in zip(words, scores, strict=True):
        red, green, blue = _shade(score)
        out.append(f"\x1b[38;2;0;0;0;48;2;{red};{green};{blue}m{word}\x1b[0m")
    return " ".join(out)


@dataclass(frozen=True)
class WordImportance:
    """The importance of each word of a prompt for a target.

    Attributes:
        prompt: The prompt as given.
        target: The target whose loss was measured.
        method: ``"gradient"`` or ``"deletion"``.
        words: The prompt's whitespace-separated words.
        scores: Each word's importance, min–max normalised to [0, 1].
        raw: Each word's importance before normalisation (gradient norm, or ``|Δ loss|``).
        loss: The target's mean per-token negative log-likelihood after the whole prompt.
    """

    prompt: str
    target: str
    method: str
    words: tuple[str, ...]
    scores: tuple[float, ...]
    raw: tuple[float, ...]
    loss: float

    def __post_init__(self) -> None:
        if not len(self.words) == len(self.scores) == len(self.raw):
            raise ValueError("Give one score and one raw value per word.")

    def share(self, words: Iterable[str], *, raw: bool = False) -> float:
        """The share of the total importance that falls on the prompt's words in ``words``.

        Words match case-insensitively, leading and trailing punctuation ignored
        (``"career."`` is ``"career"``); every occurrence counts.

        Args:
            words: The words to sum over (the study's measure: a stimulus's positive words).
            raw: Share of the unnormalised values instead of the min–max normalised scores.

        Returns:
            A number in [0, 1]; NaN if every word's importance is 0.
        """
        wanted = {_bare(w) for w in words}
        return self.share_at(
            (i for i, word in enumerate(self.words) if _bare(word) in wanted), raw=raw
        )

    def share_at(self, indices: Iterable[int], *, raw: bool = False) -> float:
        """The share of the total importance on the words at ``indices`` (each counted once).

        Returns:
            A number in [0, 1]; NaN if every word's importance is 0.

        Raises:
            IndexError: an index outside the prompt's words.
        """
        values = self.raw if raw else self.scores
        chosen = set(indices)
        if any(not 0 <= i < len(values) for i in chosen):
            raise IndexError(f"Word indices run from 0 to {len(values) - 1}: got {sorted(chosen)}.")
        total = sum(values)
        if total == 0:
            return math.nan
        return sum(values[i] for i in chosen) / total

    def to_html(self) -> str:
        """The prompt as a heat-map: each word's background deepens with its score (escaped)."""
        caption = f"{self.method} importance for target {self.target!r}"
        return heat_map_html(self.words, self.scores, caption)

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_terminal(self) -> str:
        """The prompt in ANSI colours: each word's background deepens with its score."""
        return heat_map_ansi(self.words, self.scores)


def _deletion(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    target: str,
    *,
    chat: bool,
    batch_size: int,
    progress: bool,
) -> tuple[list[float], float]:
    """Each word's ``|Δ loss|`` on deletion, and the loss of the whole prompt."""
    variants = [prompt] + [without_word(prompt, i) for i in range(len(word_spans(prompt)))]
    encoded = [encode(tokenizer, text, target, chat=chat) for text in variants]
    values: list[float] = []
    starts = range(0, len(encoded), batch_size)
    for start in tqdm(starts, desc="deletion", disable=not progress, unit="batch"):
        values.extend(losses(model, encoded[start : start + batch_size]))
    base = values[0]
    return [abs(loss - base) for loss in values[1:]], base


def word_importance(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    target: str,
    *,
    method: Method = "gradient",
    chat: bool = False,
    batch_size: int = 8,
    progress: bool = False,
) -> WordImportance:
    """How much each word of ``prompt`` matters to the model's producing ``target``.

    Args:
        model: A Hugging Face causal LM; put in eval mode for the call (its mode is restored).
            No parameter gradient is computed or accumulated.
        tokenizer: Its tokenizer. A fast tokenizer's offsets map tokens to words; a slow one's
            mapping comes from encoding ever longer prefixes of the prompt.
        prompt: The text whose words are scored.
        target: The continuation whose loss is measured, tokenised on its own and appended to
            the prompt's tokens. Without a chat template write it as it would follow the prompt
            (``" positive"`` with its space, for byte-level BPE tokenizers).
        method: ``"gradient"`` (one forward and one backward pass) or ``"deletion"`` (one
            forward pass per word, batched).
        chat: Frame the prompt as the user turn of the tokenizer's chat template, the target as
            the assistant's answer; otherwise the bare prompt with the tokenizer's own special
            tokens (a BOS where it adds one). The template's own tokens are never scored.
        batch_size: Prompts per forward pass for ``"deletion"``.
        progress: Show a progress bar for ``"deletion"``.

    Returns:
        The words, their normalised scores and raw values, and the loss.

    Raises:
        ValueError: an unknown method, an empty prompt or target, ``chat=True`` without a chat
            template, or no token before the target.
    """
    if method not in _METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(_METHODS)}.")
    spans = word_spans(prompt)
    if not spans:
        raise ValueError("The prompt has no words: give a non-empty prompt.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    with evaluating(model):
        if method == "gradient":
            encoded = encode(tokenizer, prompt, target, chat=chat)
            raw, loss = gradient_norms(model, encoded, len(spans))
        else:
            raw, loss = _deletion(
                model,
                tokenizer,
                prompt,
                target,
                chat=chat,
                batch_size=batch_size,
                progress=progress,
            )
    words = tuple(prompt[a:b] for a, b in spans)
    return WordImportance(prompt, target, method, words, tuple(min_max(raw)), tuple(raw), loss)


@dataclass(frozen=True)
class StimulusShare:
    """How much of a prompt's importance falls on an emotional stimulus and its positive words.

    Attributes:
        importance: The importance of every word of the prompt (task and stimulus).
        stimulus_words: The indices of the stimulus's words in ``importance.words``.
        positive_words: The indices of the stimulus's positive words (a subset).
    """

    importance: WordImportance
    stimulus_words: tuple[int, ...]
    positive_words: tuple[int, ...]

    @property
    def stimulus(self) -> float:
        """The share of importance on the stimulus's words."""
        return self.importance.share_at(self.stimulus_words)

    @property
    def positive(self) -> float:
        """The share of importance on the stimulus's positive words (the study's measure)."""
        return self.importance.share_at(self.positive_words)


def stimulus_share(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task_prompt: str,
    stimulus_text: str,
    target: str,
    positive_words: Iterable[str],
    *,
    side: Literal["after", "before"] = "after",
    method: Method = "gradient",
    chat: bool = False,
    batch_size: int = 8,
) -> StimulusShare:
    """The importance share of a stimulus added to a task, and of its positive words.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer.
        task_prompt: The task without a stimulus.
        stimulus_text: The stimulus (e.g. EP02 "This is very important to my career.").
        target: The continuation whose loss is measured (see :func:`word_importance`).
        positive_words: The stimulus's positive words (matched as :meth:`WordImportance.share`
            matches, but only within the stimulus).
        side: ``"after"`` the task (EmotionPrompt: ``task + " " + stimulus``) or
            ``"before"`` it (EmotionAttack: ``stimulus + " " + task``).
        method: ``"gradient"`` or ``"deletion"``.
        chat: Frame the prompt with the tokenizer's chat template.
        batch_size: Prompts per forward pass for ``"deletion"``.

    Raises:
        ValueError: an empty task or stimulus, an unknown side, or a positive word that is
            not in the stimulus.
    """
    task_words, stimulus_count = len(word_spans(task_prompt)), len(word_spans(stimulus_text))
    if not task_words or not stimulus_count:
        raise ValueError("Give a task and a stimulus with at least one word each.")
    if side == "after":
        prompt, first = f"{task_prompt} {stimulus_text}", task_words
    elif side == "before":
        prompt, first = f"{stimulus_text} {task_prompt}", 0
    else:
        raise ValueError(f"side must be 'after' or 'before', got {side!r}.")
    result = word_importance(
        model, tokenizer, prompt, target, method=method, chat=chat, batch_size=batch_size
    )
    stimulus = tuple(range(first, first + stimulus_count))
    wanted = {_bare(w) for w in positive_words}
    present = {_bare(result.words[i]) for i in stimulus}
    if missing := sorted(wanted - present):
        raise ValueError(f"Positive words not in the stimulus: {', '.join(missing)}.")
    positive = tuple(i for i in stimulus if _bare(result.words[i]) in wanted)
    return StimulusShare(result, stimulus, positive)
