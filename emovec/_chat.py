"""The chat prompt: queries rendered in the model's chat template (or ``Q: … A:``), tokenised
and padded for ``generate``, and checked against the model's context.

Text from outside the program (a command line argument, an HTTP request) may contain the
template's own control tokens (``<|im_end|>``, ``<|im_start|>system``). Tokenised with the
prompt, they would open and close turns: a user could write the system turn. With
``parse_special=False`` the queries' text is tokenised apart from the template, special
tokens split as the plain text they are; prompts without any are tokenised as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.layers import context_length

# Stand-ins for the query while the template is rendered (Unicode private use: no text and
# no template writes them).
_QUERY_MARK = "\ue000"


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token's text if the tokenizer adds one on its own, else ``""``."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return str(bos) if ids[:1] == [bos_id] else ""


def _query_list(queries: Sequence[str]) -> list[str]:
    """``queries`` as a list of texts; one string is refused (it would be answered character
    by character)."""
    if isinstance(queries, str):
        raise TypeError(
            f"queries must be a list of texts, not one string: pass [{queries[:40]!r}]."
        )
    queries = list(queries)
    wrong = [q for q in queries if not isinstance(q, str)]
    if wrong:
        raise TypeError(f"queries must be texts, not {wrong[0]!r} ({type(wrong[0]).__name__}).")
    return queries


def asked(query: str, *instructions: str | None) -> str:
    """The user turn: ``query`` with each given instruction appended, one space apart (the
    one rule for where an emotion's instruction goes, in steering, evaluation, training and
    the model's own answers)."""
    return " ".join([query, *(text for text in instructions if text)])


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
    queries = _query_list(queries)
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


def _special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The texts the tokenizer reads as one special token wherever they appear."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    texts = {str(t) for t in tokenizer.all_special_tokens}
    texts |= {token.content for token in added.values() if getattr(token, "special", False)}
    return sorted(t for t in texts if t)


def _ids(
    tokenizer: PreTrainedTokenizerBase, text: str, *, split_special: bool = False
) -> list[int]:
    options = {"split_special_tokens": True} if split_special else {}
    return list(tokenizer(text, add_special_tokens=False, **options)["input_ids"])


def _literal_ids(tokenizer: PreTrainedTokenizerBase, query: str, system: str | None) -> list[int]:
    """The prompt of ``query`` with the template's tokens parsed and the query's text kept
    as text (its special tokens split into ordinary ones)."""
    rendered = format_prompts(tokenizer, [_QUERY_MARK], [system])[0]
    if rendered.count(_QUERY_MARK) != 1:
        raise ValueError("The chat template does not write the user's text as given.")
    before, after = rendered.split(_QUERY_MARK)
    return (
        _ids(tokenizer, before)
        + _ids(tokenizer, query, split_special=True)
        + _ids(tokenizer, after)
    )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    systems: Sequence[str | None] | None = None,
    *,
    parse_special: bool = True,
) -> list[list[int]]:
    """Each query's prompt (:func:`format_prompts`) as token ids.

    ``parse_special=False`` keeps special tokens written in a query as text (see the module
    docstring); prompts of queries without any are the same ids either way.
    """
    queries = _query_list(queries)
    prompts = format_prompts(tokenizer, queries, systems)
    encoded = [list(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    if parse_special:
        return encoded
    specials = _special_texts(tokenizer)
    turns = list(systems) if systems is not None else [None] * len(queries)
    for row, (query, system) in enumerate(zip(queries, turns, strict=True)):
        if any(special in query for special in specials):
            encoded[row] = _literal_ids(tokenizer, query, system)
    return encoded


def check_context(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> None:
    """Every prompt and its new tokens within the model's context, checked before the first
    ``generate``: beyond it a model answers garbage (or runs for minutes first)."""
    limit = context_length(model)
    if limit is None or not prompts:
        return
    longest = max(len(ids) for ids in prompts)
    if longest + max_new_tokens > limit:
        raise ValueError(
            f"A prompt of {longest} tokens and max_new_tokens={max_new_tokens} exceed the "
            f"model's context of {limit} tokens; shorten the prompt or ask for fewer tokens."
        )


def padded(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Token ids as a padded batch (input ids and attention mask) on ``device``; the
    tokenizer pads on its side (left, as load_model sets it, for generation)."""
    batch = tokenizer.pad(
        {"input_ids": [list(ids) for ids in prompts]},
        return_tensors="pt",
        return_attention_mask=True,
    )
    return {key: batch[key].to(device) for key in ("input_ids", "attention_mask")}


def tokenized(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], device: torch.device
) -> dict[str, torch.Tensor]:
    """Formatted prompts (strings carrying their special tokens) as a padded batch."""
    return padded(
        tokenizer, tokenizer(list(prompts), add_special_tokens=False)["input_ids"], device
    )
