"""response_pairs(): the model's own answers under instructions, cached on disk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import build_model

from emovec import extract
from emovec.datasets import (
    ResponsePair,
    default_answer_pairs,
    default_extraction_queries,
    default_queries,
)
from emovec.responses import default_instructions, response_pairs

QUERIES = ["i called my friend", "the bus came", "my sister", "the rain"]


class FakeGenerator:
    """Stands in for generate_answers: answers named after the instruction, counted."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.calls: list[str] = []
        self.answers = answers or {}

    def __call__(
        self, _model: object, _tok: object, prompts: Sequence[str], **_: object
    ) -> list[str]:
        instruction = prompts[0].split(" ", 1)[1] if prompts else ""
        for query in QUERIES:
            if prompts[0].startswith(query + " "):
                instruction = prompts[0][len(query) + 1 :]
        self.calls.append(instruction)
        if instruction in self.answers:
            return list(self.answers[instruction])
        word = "calm" if "matter-of-fact" in instruction else "happy"
        return [f"we were {word} at the {i} store" for i in range(len(prompts))]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeGenerator:
    generator = FakeGenerator()
    monkeypatch.setattr("emovec.responses.generate_answers", generator)
    return generator


def test_shipped_extraction_queries_are_disjoint_from_the_evaluation_queries() -> None:
    extraction = default_extraction_queries()
    assert len(extraction) >= 100
    assert len(set(extraction)) == len(extraction)
    normalise = lambda q: " ".join(q.lower().split())  # noqa: E731
    assert not {normalise(q) for q in extraction} & {normalise(q) for q in default_queries()}


def test_every_emotion_and_neutral_have_a_shipped_instruction() -> None:
    instructions = default_instructions()
    for emotion in ("neutral", "joy", "anger", "disgust", "fear", "sadness", "surprise", "calm"):
        assert instructions[emotion].strip()


def test_pairs_are_built_from_the_answers(fake: FakeGenerator, tmp_path: Path) -> None:
    model = build_model("llama")
    pairs = response_pairs(
        model,
        None,
        ["joy", "anger"],
        queries=QUERIES,
        cache=tmp_path,
        progress=False,  # type: ignore[arg-type]
    )
    assert list(pairs) == ["joy", "anger"]
    assert len(fake.calls) == 3  # neutral answered once, shared by both emotions
    first = pairs["joy"][0]
    assert first == ResponsePair(
        "i called my friend", "we were happy at the 0 store", "we were calm at the 0 store"
    )
    # The instruction follows the task, EmotionPrompt's placement.
    assert fake.calls[1] == default_instructions()["joy"]


def test_answers_are_cached_per_instruction(fake: FakeGenerator, tmp_path: Path) -> None:
    model = build_model("llama")
    first = response_pairs(model, None, ["joy"], queries=QUERIES, cache=tmp_path, progress=False)  # type: ignore[arg-type]
    assert len(fake.calls) == 2
    again = response_pairs(model, None, ["joy"], queries=QUERIES, cache=tmp_path, progress=False)  # type: ignore[arg-type]
    assert len(fake.calls) == 2 and again == first
    # A new emotion generates only its own answers; the neutral ones come from the cache.
    response_pairs(model, None, ["joy", "fear"], queries=QUERIES, cache=tmp_path, progress=False)  # type: ignore[arg-type]
    assert fake.calls[2:] == [default_instructions()["fear"]]
    # Other queries or another model are other cache entries.
    response_pairs(model, None, ["joy"], queries=QUERIES[:2], cache=tmp_path, progress=False)  # type: ignore[arg-type]
    assert len(fake.calls) == 5
    other = build_model("llama")  # the same config, other weights
    with torch.no_grad():
        other.get_input_embeddings().weight[0, 0] += 1.0
    response_pairs(other, None, ["joy"], queries=QUERIES, cache=tmp_path, progress=False)  # type: ignore[arg-type]
    assert len(fake.calls) == 7
    # No cache: always generated, nothing written.
    before = sorted(tmp_path.rglob("*.json"))
    response_pairs(model, None, ["joy"], queries=QUERIES, cache=False, progress=False)  # type: ignore[arg-type]
    assert len(fake.calls) == 9 and sorted(tmp_path.rglob("*.json")) == before


def test_a_damaged_cache_entry_is_regenerated(fake: FakeGenerator, tmp_path: Path) -> None:
    model = build_model("llama")
    response_pairs(model, None, ["joy"], queries=QUERIES, cache=tmp_path, progress=False)  # type: ignore[arg-type]
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 2 and not list(tmp_path.rglob(".*"))  # no staging files left
    files[0].write_text("{not json", encoding="utf-8")
    response_pairs(model, None, ["joy"], queries=QUERIES, cache=tmp_path, progress=False)  # type: ignore[arg-type]
    assert len(fake.calls) == 3
    assert json.loads(files[0].read_text(encoding="utf-8"))["answers"]


def test_unusable_answers_are_left_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    instructions = default_instructions()
    fake = FakeGenerator(
        {
            instructions["neutral"]: ["we were at home", "the bus came", "we ate", "it rained"],
            # empty, equal to the neutral answer, fine, and a repeat of the fine one
            instructions["joy"]: ["  ", "the bus came", "we laughed", "we laughed"],
            instructions["anger"]: ["", "the bus came", "", ""],
        }
    )
    monkeypatch.setattr("emovec.responses.generate_answers", fake)
    model = build_model("llama")
    pairs = response_pairs(model, None, ["joy"], queries=QUERIES, cache=False, progress=False)  # type: ignore[arg-type]
    assert pairs["joy"] == [ResponsePair("my sister", "we laughed", "we ate")]
    with pytest.raises(ValueError, match="anger"):
        response_pairs(model, None, ["anger"], queries=QUERIES, cache=False, progress=False)  # type: ignore[arg-type]


def test_custom_emotion_needs_its_instruction(fake: FakeGenerator) -> None:
    model = build_model("llama")
    with pytest.raises(ValueError, match="instruction"):
        response_pairs(model, None, ["pride"], queries=QUERIES, cache=False, progress=False)  # type: ignore[arg-type]
    pairs = response_pairs(
        model,
        None,  # type: ignore[arg-type]
        queries=QUERIES,
        instructions={"pride": "Answer full of pride."},
        cache=False,
        progress=False,
    )
    assert list(pairs) == ["pride"] and len(pairs["pride"]) == 4
    with pytest.raises(ValueError, match="queries"):
        response_pairs(model, None, ["joy"], queries=[], cache=False, progress=False)  # type: ignore[arg-type]


def test_extract_reads_the_generated_responses_it_is_given(
    fake: FakeGenerator, tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path))
    monkeypatch.setattr("emovec.responses.default_extraction_queries", lambda: QUERIES)
    model = build_model("llama")
    pairs = response_pairs(model, tokenizer, ["joy"], queries=QUERIES, progress=False)
    again = response_pairs(model, tokenizer, ["joy"], queries=QUERIES, progress=False)
    assert again == pairs
    assert len(fake.calls) == 2  # the second call read the cache under $EMOVEC_CACHE
    bank = extract(model, tokenizer, pairs, reading="response", progress=False)
    assert bank.settings["reading"] == "mean_over_answer_tokens"
    # Extraction generates nothing: without pairs it reads the hand-written answers.
    shipped = extract(model, tokenizer, emotions=["joy"], reading="response", progress=False)
    by_pairs = extract(
        model, tokenizer, default_answer_pairs(["joy"]), reading="response", progress=False
    )
    assert torch.equal(shipped.vector("joy"), by_pairs.vector("joy"))
    assert len(fake.calls) == 2
