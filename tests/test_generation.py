"""format_prompts(): the prompt strings carry their own special tokens, tokenised without more."""

from __future__ import annotations

import pytest
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


def test_with_instructions_adds_the_calibrated_instruction_of_raised_emotions() -> None:
    from conftest import random_bank

    from emovec.generation import with_instructions
    from emovec.vectors import Placement

    bank = random_bank(4, 8, ("joy", "anger", "fear")).with_placements(
        {
            "joy": Placement((1, 2), 0.2, "Sound thrilled."),
            "anger": Placement((1,), 0.3, "Sound furious."),
        }
    )
    assert with_instructions("Hi?", bank, {"joy": 1.0}) == "Hi? Sound thrilled."
    assert with_instructions("Hi?", bank, {"joy": 0.5, "anger": 1}) == (
        "Hi? Sound thrilled. Sound furious."
    )
    assert with_instructions("Hi?", bank, {"joy": -1.0, "fear": 1.0}) == "Hi?"  # none to add
    assert with_instructions("Hi?", bank, {}) == "Hi?"


def test_system_turns_lead_each_prompt_and_personas_join() -> None:
    from conftest import random_bank

    from emovec.generation import persona_for
    from emovec.vectors import Placement

    tokenizer = build_tokenizer(bos=True)
    assert format_prompts(tokenizer, ["i was happy", "we"], ["Be glad.", None]) == [
        "<bos>Be glad.\nQ: i was happy\nA:",
        "<bos>Q: we\nA:",
    ]
    with pytest.raises(ValueError, match="one system turn per query"):
        format_prompts(tokenizer, ["a", "b"], ["x"])
    bank = random_bank(4, 8, ("joy", "anger")).with_placements(
        {"joy": Placement((1,), 0.2, persona="You are glad."), "anger": Placement((1,), 0.2)}
    )
    assert persona_for(bank, {"joy": 1.0}) == "You are glad."
    assert persona_for(bank, {"joy": -1.0}) is None
    assert persona_for(bank, {"anger": 1.0}) is None


def test_a_chat_template_gets_the_system_turn() -> None:
    tokenizer = build_tokenizer(bos=True)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert format_prompts(tokenizer, ["hi"], ["Be sad."]) == ["<system>Be sad.<user>hi<assistant>"]
    assert format_prompts(tokenizer, ["hi"]) == ["<user>hi<assistant>"]


def test_emotional_prompt_is_the_query_asked_as_calibrated() -> None:
    from conftest import random_bank

    from emovec.generation import emotional_prompt
    from emovec.vectors import Placement

    tokenizer = build_tokenizer(bos=True)
    bank = random_bank(4, 8, ("joy", "anger")).with_placements(
        {"joy": Placement((1,), 0.2, instruction="Sound glad.", persona="You are glad.")}
    )
    assert emotional_prompt(tokenizer, "hi", bank, {"joy": 1.0}) == (
        "<bos>You are glad.\nQ: hi Sound glad.\nA:"
    )
    assert emotional_prompt(tokenizer, "hi", bank, {"anger": 1.0}) == "<bos>Q: hi\nA:"
