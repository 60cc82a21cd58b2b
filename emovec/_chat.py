"""The chat prompt: conversations (or single queries, a conversation of one user turn)
rendered in the model's chat template (or ``Q: … A:``), tokenised and padded for
``generate``, and checked against the model's context.

Text from outside the program (a command line argument, an HTTP request) may contain the
template's own control tokens (``<|im_end|>``, ``<|im_start|>system``). Tokenised with the
prompt, they would open and close turns: a user could write the system turn. With
``parse_special=False`` each message's text is tokenised apart from the template, special
tokens split as the plain text they are; prompts without any are tokenised as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.layers import context_length

# A message's text is marked while the template is rendered as OPEN, its index, CLOSE
# (Unicode private use: no template writes them; a message that does is itself kept as text,
# so a marker in the rendered prompt is always one of ours).
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

Conversation = Sequence[Mapping[str, str]]


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


def conversation_of(messages: Conversation) -> list[dict[str, str]]:
    """``messages`` checked and copied: a non-empty list of ``{"role": str, "content": str}``
    (other keys are dropped).

    Raises:
        TypeError: For a message that is not a mapping, or a role or content that is not
            text (one string for the whole conversation included).
        ValueError: For no messages, or a message without a role or content.
    """
    if isinstance(messages, (str, Mapping)):
        raise TypeError(
            "A conversation is a list of messages ({'role': ..., 'content': ...}), not "
            f"{type(messages).__name__}."
        )
    checked: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"Message {index} is {type(message).__name__}, not a mapping.")
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise ValueError(f"Message {index} has no {missing[0]}.")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not isinstance(content, str):
            wrong = "role" if not isinstance(role, str) else "content"
            raise TypeError(
                f"Message {index}'s {wrong} must be text, not {type(message[wrong]).__name__}."
            )
        checked.append({"role": role, "content": content})
    if not checked:
        raise ValueError("The conversation has no messages.")
    return checked


def _single(query: str, system: str | None) -> list[dict[str, str]]:
    """One query as a conversation: the system turn (if any) and the user turn."""
    return [*([{"role": "system", "content": system}] if system else []), _user(query)]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def format_conversations(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation]
) -> list[str]:
    """Each conversation in the chat template, ready for the assistant's next turn; without a
    chat template, system turns as lines of their own, user turns as ``Q: …``, assistant turns
    as ``A: …``, then ``A:``.

    The prompts carry their own special tokens and are tokenised with
    ``add_special_tokens=False``: a chat template writes them itself; without one, the BOS
    token leads when the tokenizer would add it (base models such as Gemma 3 degenerate
    without it: "A\nA\nA…").

    Raises:
        TypeError, ValueError: For a conversation that is not a list of messages
            (:func:`conversation_of`).
    """
    checked = [conversation_of(c) for c in conversations]
    if getattr(tokenizer, "chat_template", None):
        return [
            str(tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True))
            for c in checked
        ]
    bos = _bos_prefix(tokenizer)
    lead = {"user": "Q: ", "assistant": "A: "}
    return [
        bos + "".join(f"{lead.get(m['role'], '')}{m['content']}\n" for m in c) + "A:"
        for c in checked
    ]


def format_prompts(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    systems: Sequence[str | None] | None = None,
) -> list[str]:
    """Wrap queries as a user turn in the chat template, or as ``Q: … A:`` without one
    (:func:`format_conversations` of one user turn each).

    ``systems`` gives a system turn per query (``None``: the template's default); without a
    chat template it leads the prompt as a line of its own.
    """
    return format_conversations(tokenizer, _conversations(queries, systems))


def _conversations(
    queries: Sequence[str], systems: Sequence[str | None] | None
) -> list[list[dict[str, str]]]:
    queries = _query_list(queries)
    systems = list(systems) if systems is not None else [None] * len(queries)
    if len(systems) != len(queries):
        raise ValueError(f"Give one system turn per query: {len(systems)} for {len(queries)}.")
    return [_single(q, system) for q, system in zip(queries, systems, strict=True)]


def _special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The texts the tokenizer reads as one special token wherever they appear."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    texts = {str(t) for t in tokenizer.all_special_tokens}
    texts |= {token.content for token in added.values() if getattr(token, "special", False)}
    return sorted(t for t in texts if t)


def _ids(
    tokenizer: PreTrainedTokenizerBase, text: str, *, split_special: bool = False
) -> list[int]:
    if not text:
        return []
    options = {"split_special_tokens": True} if split_special else {}
    return list(tokenizer(text, add_special_tokens=False, **options)["input_ids"])


def _literal_ids(
    tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, str]], literal: set[int]
) -> list[int]:
    """The prompt of ``conversation`` with the template's tokens parsed and the text of the
    messages in ``literal`` kept as text (their special tokens split into ordinary ones)."""
    marked = [
        {**m, "content": f"{_OPEN}{k}{_CLOSE}"} if k in literal else m
        for k, m in enumerate(conversation)
    ]
    pieces = _MARKER.split(format_conversations(tokenizer, [marked])[0])
    found = [int(k) for k in pieces[1::2]]
    if sorted(found) != sorted(literal):
        raise ValueError("The chat template does not write the messages' text as given.")
    ids = _ids(tokenizer, pieces[0])
    for k, after in zip(found, pieces[2::2], strict=True):
        ids += _ids(tokenizer, conversation[k]["content"], split_special=True)
        ids += _ids(tokenizer, after)
    return ids


def encode_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Conversation],
    *,
    parse_special: bool = True,
) -> list[list[int]]:
    """Each conversation's prompt (:func:`format_conversations`) as token ids.

    ``parse_special=False`` keeps special tokens written in any message as text (see the
    module docstring); prompts of conversations without any are the same ids either way.
    """
    checked = [conversation_of(c) for c in conversations]
    if not checked:
        return []
    prompts = format_conversations(tokenizer, checked)
    encoded = [list(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    if parse_special:
        return encoded
    specials = [*_special_texts(tokenizer), _OPEN, _CLOSE]
    for row, conversation in enumerate(checked):
        literal = {
            k for k, m in enumerate(conversation) if any(t in m["content"] for t in specials)
        }
        if literal:
            encoded[row] = _literal_ids(tokenizer, conversation, literal)
    return encoded


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    systems: Sequence[str | None] | None = None,
    *,
    parse_special: bool = True,
) -> list[list[int]]:
    """Each query's prompt (:func:`format_prompts`) as token ids
    (:func:`encode_conversations` of one user turn each).

    ``parse_special=False`` keeps special tokens written in a query as text (see the module
    docstring); prompts of queries without any are the same ids either way.
    """
    return encode_conversations(
        tokenizer, _conversations(queries, systems), parse_special=parse_special
    )


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
