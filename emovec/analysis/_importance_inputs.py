"""The inputs of word importance: a prompt's words, its framing, and which tokens make each word.

A *word* is a whitespace-separated run of the prompt's characters. The prompt is framed (a chat
template's user turn, or the bare text), tokenised, and each token is assigned to the word its
characters overlap most (the tokenizer's offsets mapping where it has one; otherwise the growth of
the common prefix between the encodings of ever longer prefixes of the prompt). The target is
tokenised on its own and teacher-forced after the framed prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

# A user turn that no prompt contains: the chat template is rendered around it once.
_SENTINEL = "\ue000emovec-prompt\ue001"


@dataclass(frozen=True)
class Encoded:
    """One framed prompt and its target, as token ids.

    Attributes:
        context: The ids of the framed prompt (special tokens and template included).
        target: The ids of the target, predicted after ``context``.
        token_words: For each id of ``context``, the index of the prompt word it belongs to, or
            ``-1`` (special tokens, the template, whitespace).
    """

    context: list[int]
    target: list[int]
    token_words: list[int]


def word_spans(prompt: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` character span of each whitespace-separated word of ``prompt``."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", prompt)]


def without_word(prompt: str, index: int) -> str:
    """``prompt`` with its ``index``-th word and the whitespace before it (or after it) removed."""
    spans = word_spans(prompt)
    start, end = spans[index]
    if index > 0:
        start = spans[index - 1][1]
    elif len(spans) > 1:
        end = spans[1][0]
    return prompt[:start] + prompt[end:]


def frame(tokenizer: PreTrainedTokenizerBase, *, chat: bool) -> tuple[str, str]:
    """The text before and after the prompt: a chat template's user turn, or nothing.

    Raises:
        ValueError: ``chat=True`` with a tokenizer that has no chat template.
    """
    if not chat:
        return "", ""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The tokenizer has no chat template: pass chat=False to score the bare prompt."
        )
    rendered = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
    )
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("The chat template does not place the user turn verbatim once.")
    before, after = rendered.split(_SENTINEL)
    return before, after


def encode(tokenizer: PreTrainedTokenizerBase, prompt: str, target: str, *, chat: bool) -> Encoded:
    """Tokenise ``prompt`` in its frame and ``target`` on its own; map tokens to words.

    Without a chat template the tokenizer adds its own special tokens (a BOS where it would);
    a chat template writes them itself.

    Raises:
        ValueError: an empty target, or no token before the target.
    """
    before, after = frame(tokenizer, chat=chat)
    text = before + prompt + after
    context = list(tokenizer(text, add_special_tokens=not chat)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if not target_ids:
        raise ValueError("The target tokenises to nothing: give a non-empty target.")
    if not context:
        raise ValueError(
            "No token precedes the target: use a tokenizer that adds a BOS token, or chat=True."
        )
    spans = [(start + len(before), end + len(before)) for start, end in word_spans(prompt)]
    offsets = _offsets(tokenizer, text, add_special_tokens=not chat)
    if offsets is not None and len(offsets) == len(context):
        token_words = words_by_offsets(offsets, spans)
    else:
        token_words = words_by_prefixes(tokenizer, text, spans, context, chat=chat)
    return Encoded(context, target_ids, token_words)


def _offsets(
    tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool
) -> list[tuple[int, int]] | None:
    """The character span of each token of ``text``, or ``None`` if the tokenizer has none."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


def words_by_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token's word: the span its characters overlap most, ``-1`` where none.

    A token that carries the space before a word (``"Ġword"``, ``"▁word"``) overlaps only that
    word; special tokens have empty offsets and belong to no word.
    """
    out = []
    for start, end in offsets:
        best, best_overlap = -1, 0
        for index, (w_start, w_end) in enumerate(spans):
            overlap = min(end, w_end) - max(start, w_start)
            if overlap > best_overlap:
                best, best_overlap = index, overlap
        out.append(best)
    return out


def words_by_prefixes(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    spans: list[tuple[int, int]],
    context: list[int],
    *,
    chat: bool,
) -> list[int]:
    """Each token's word without an offsets mapping (slow tokenizers).

    Word ``i`` owns the tokens that the encoding of ``text`` up to the end of word ``i`` adds to
    the common prefix with the full encoding; tokens before the first word or after the last
    belong to no word.
    """
    out = [-1] * len(context)
    start = _common_prefix(tokenizer(text[: spans[0][0]], add_special_tokens=not chat), context)
    for index, (_, end) in enumerate(spans):
        ids = tokenizer(text[:end], add_special_tokens=not chat)
        stop = _common_prefix(ids, context)
        for position in range(start, stop):
            out[position] = index
        start = max(start, stop)
    return out


def _common_prefix(encoded: object, context: list[int]) -> int:
    ids = list(encoded["input_ids"])  # type: ignore[index]
    length = 0
    for a, b in zip(ids, context, strict=False):
        if a != b:
            break
        length += 1
    return length
