"""format_prompts(): the prompt strings carry their own special tokens, tokenised without more."""

from __future__ import annotations

from conftest import BOS_ID, build_tokenizer

from emovec.generation import format_prompts


def test_plain_prompts_lead_with_bos_when_the_tokenizer_adds_one() -> None:
    # Base models such as Gemma 3 need the BOS that the tokenizer would add: without it
    # Gemma-3-270M answers "A\nA\nA…".
    tokenizer = build_tokenizer(bos=True)
    assert format_prompts(tokenizer, ["i was happy", "we"]) == [
        "<bos>Q: i was happy\nA:",
        "<bos>Q: we\nA:",
    ]
    ids = tokenizer(format_prompts(tokenizer, ["i was happy"]), add_special_tokens=False)
    assert ids["input_ids"][0][0] == BOS_ID
    assert ids["input_ids"][0].count(BOS_ID) == 1


def test_plain_prompts_have_no_bos_when_the_tokenizer_adds_none() -> None:
    tokenizer = build_tokenizer(bos=False)
    assert format_prompts(tokenizer, ["i was happy"]) == ["Q: i was happy\nA:"]


def test_chat_template_writes_its_own_special_tokens() -> None:
    tokenizer = build_tokenizer(bos=True)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompts(tokenizer, ["i was happy"]) == ["<user>i was happy<assistant>"]
