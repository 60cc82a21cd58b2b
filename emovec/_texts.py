"""Texts to read: each pair's two texts rendered, tokenised, and batched by length.

A text is read over its ``content`` tokens only: never position 0 (an attention sink), never
special tokens, never the query a response follows or the chat template around a story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._chat import format_prompts
from emovec.datasets import Pair, ResponsePair

Template = Literal["plain", "chat"]
Reading = Literal["mean", "last", "response"]

# The story is read as the assistant's own words, the role steering later acts on.
_CHAT_PROMPT = "Tell me about something that happened to you recently."


@dataclass(frozen=True)
class _Item:
    """One text to read: ``context`` (a response's query) is fed but not read."""

    emotion: int
    slot: int  # row in the per-text store
    sign: float  # +1 emotional, -1 neutral
    context: str
    text: str


@dataclass(frozen=True)
class _Text:
    emotion: int
    slot: int
    sign: float
    input_ids: list[int]
    content: list[bool]  # tokens that are read


def _render(
    tokenizer: PreTrainedTokenizerBase, item: _Item, template: Template
) -> tuple[str, int, int, bool]:
    """The string fed to the model, the character span read, and whether the tokenizer
    should add its special tokens (a chat template writes its own)."""
    if item.context:
        # A response follows its formatted query exactly as generation produced it.
        prompt = format_prompts(tokenizer, [item.context])[0]
        separator = "" if prompt.endswith((" ", "\n")) else " "
        text = item.text.strip()
        rendered = prompt + separator + text
        # format_prompts writes the special tokens into the prompt itself.
        return rendered, len(rendered) - len(text), len(rendered), False
    if template == "plain":
        return item.text, 0, len(item.text), True
    text = item.text.strip()  # some templates trim the content themselves
    rendered = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": _CHAT_PROMPT}, {"role": "assistant", "content": text}],
            tokenize=False,
        )
    )
    start = rendered.rfind(text)
    if start < 0:
        raise ValueError(
            f"The chat template altered the text, so its tokens cannot be found: "
            f"{text[:60]!r}. Use template='plain'."
        )
    return rendered, start, start + len(text), False


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[_Item],
    template: Template,
    last_only: bool,
    max_length: int | None,
) -> list[_Text]:
    rendered = [_render(tokenizer, item, template) for item in items]
    special = set(tokenizer.all_special_ids)
    out = []
    for flag in (True, False):  # one tokenizer call per special-token setting
        chosen = [i for i, r in enumerate(rendered) if r[3] is flag]
        if not chosen:
            continue
        encoded = tokenizer(
            [rendered[i][0] for i in chosen],
            add_special_tokens=flag,
            return_offsets_mapping=True,
        )
        for index, ids, offsets in zip(
            chosen, encoded["input_ids"], encoded["offset_mapping"], strict=True
        ):
            item, (_, start, end, _) = items[index], rendered[index]
            if max_length is not None and len(ids) > max_length:
                raise ValueError(
                    f"A text of {len(ids)} tokens exceeds the limit of {max_length} (the "
                    f"model's context, or max_length): {item.text[:60]!r}... Shorten or split "
                    "it."
                )
            # Position 0 is an attention sink with a hidden norm ~100x the others on
            # SmolLM2; one such token would dominate every average.
            content = [
                pos > 0 and tok not in special and s >= start and e <= end and e > s
                for pos, (tok, (s, e)) in enumerate(zip(ids, offsets, strict=True))
            ]
            if not any(content):
                raise ValueError(f"Text has no tokens to read: {item.text!r}.")
            if last_only:
                last = max(i for i, keep in enumerate(content) if keep)
                content = [i == last for i in range(len(content))]
            out.append(_Text(item.emotion, item.slot, item.sign, list(ids), content))
    return out


def _batches(texts: list[_Text], batch_size: int) -> list[list[_Text]]:
    ordered = sorted(texts, key=lambda t: len(t.input_ids))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _collate(batch: list[_Text], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(t.input_ids) for t in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    content = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, text in enumerate(batch):
        n = len(text.input_ids)
        ids[row, :n] = torch.tensor(text.input_ids)
        attention[row, :n] = 1
        content[row, :n] = torch.tensor(text.content, dtype=torch.float32)
    return {
        "input_ids": ids.to(device),
        "attention_mask": attention.to(device),
        "content": content.to(device),
        "emotion": torch.tensor([t.emotion for t in batch], device=device),
        "slot": torch.tensor([t.slot for t in batch]),
        "sign": torch.tensor([t.sign for t in batch], device=device),
    }


def _items(checked: Mapping[str, Sequence[Pair]]) -> list[_Item]:
    items = []
    slot = 0
    for index, emotion in enumerate(checked):
        for pair in checked[emotion]:
            context = pair.query if isinstance(pair, ResponsePair) else ""
            items.append(_Item(index, slot, 1.0, context, pair.emotional))
            items.append(_Item(index, slot + 1, -1.0, context, pair.neutral))
            slot += 2
    return items
