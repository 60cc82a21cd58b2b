"""Pair files (JSON Lines, JSON, CSV) and the shipped pairs."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from emovec import BASIC_EMOTIONS, PromptPair, default_pairs, read_pairs
from emovec.datasets import (
    available_emotions,
    default_answer_pairs,
    default_calibration_queries,
    default_extraction_queries,
    default_queries,
    default_triples,
    validate_pairs,
)

PAIRS = [
    PromptPair("I won the race and could not stop smiling.", "I ran the race and finished."),
    PromptPair('She said "thank you", and I beamed, café ☕', 'She said "thank you", café ☕'),
    PromptPair("Commas, everywhere, joyfully", "Commas, everywhere"),
]


def test_read_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(p._asdict(), ensure_ascii=False) for p in PAIRS]
    path.write_text("\n".join([lines[0], "", lines[1], "   ", lines[2]]) + "\n", encoding="utf-8")
    pairs = read_pairs(path)
    assert pairs == PAIRS
    assert all(isinstance(p, PromptPair) for p in pairs)


def test_read_jsonl_accepts_two_item_lists_and_str_paths(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(list(p)) for p in PAIRS), encoding="utf-8")
    assert read_pairs(str(path)) == PAIRS


def test_read_json_list(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    records = [PAIRS[0]._asdict(), list(PAIRS[1]), PAIRS[2]._asdict()]
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    assert read_pairs(path) == PAIRS


def test_read_json_that_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"joy": [PAIRS[0]._asdict()]}), encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list"):
        read_pairs(path)


def test_read_csv(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotional", "neutral"])
        writer.writerows(PAIRS)
    assert read_pairs(path) == PAIRS


def test_read_csv_with_columns_in_another_order(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "neutral", "emotional"])
        writer.writeheader()
        for i, p in enumerate(PAIRS):
            writer.writerow({"id": i, "neutral": p.neutral, "emotional": p.emotional})
    assert read_pairs(path) == PAIRS


def test_read_csv_keeps_newlines_inside_quoted_fields(tmp_path: Path) -> None:
    # A story of two paragraphs is a valid CSV field when quoted; csv.writer quotes it.
    story = PromptPair("First I cried.\nThen I smiled again.", "First I sat.\nThen I stood.")
    path = tmp_path / "pairs.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotional", "neutral"])
        writer.writerow(story)
    assert read_pairs(path) == [story]


def test_read_csv_row_missing_a_field_is_an_error(tmp_path: Path) -> None:
    # A short row must not turn into the literal text "None".
    path = tmp_path / "pairs.csv"
    path.write_text("emotional,neutral\nI was thrilled to see her\n", encoding="utf-8")
    with pytest.raises(ValueError):
        read_pairs(path)


def test_read_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("emotional,calm\na,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="neutral"):
        read_pairs(path)


def test_bad_json_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    good = json.dumps(PAIRS[0]._asdict())
    path.write_text(
        "\n".join([good, "", good, '{"emotional": "a", "neutral": ', good]), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"pairs\.jsonl:4: not valid JSON"):
        read_pairs(path)


def test_record_without_neutral_names_the_item(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(PAIRS[0]._asdict()) + "\n" + json.dumps({"emotional": "x"}), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"item 2: missing key 'neutral'"):
        read_pairs(path)


@pytest.mark.parametrize("record", ["just a string", ["one"], ["a", "b", "c"], 42])
def test_malformed_records_are_rejected(tmp_path: Path, record: object) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(ValueError, match="item 1"):
        read_pairs(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_pairs(tmp_path / "nope.jsonl")


def test_validate_pairs_normalises_every_form() -> None:
    checked = validate_pairs(
        {"pride": [("a b", "a c"), PromptPair("d e", "d f"), {"emotional": "g", "neutral": "h"}]}
    )
    assert checked == {
        "pride": [PromptPair("a b", "a c"), PromptPair("d e", "d f"), PromptPair("g", "h")]
    }


def test_default_pairs_unknown_emotion_names_the_shipped_ones() -> None:
    with pytest.raises(KeyError) as info:
        default_pairs(["joy", "schadenfreude"])
    message = str(info.value)
    assert "schadenfreude" in message
    shipped = available_emotions()
    assert set(BASIC_EMOTIONS) <= set(shipped)
    assert all(repr(name) in message for name in shipped)
    assert "'joy'" not in message.split(";")[0]  # only the unknown one is blamed


def test_default_pairs_selects_emotions_in_the_order_asked() -> None:
    pairs = default_pairs(["sadness", "joy"])
    assert list(pairs) == ["sadness", "joy"]
    assert pairs["joy"] == default_pairs(["joy"])["joy"]
    assert pairs["joy"] != pairs["sadness"]


def test_the_shipped_answer_pairs_share_queries_and_neutral_answers() -> None:
    pairs = default_answer_pairs()
    assert list(pairs) == list(BASIC_EMOTIONS)
    joy = pairs["joy"]
    assert len(joy) == 100
    for emotion, items in pairs.items():
        assert [p.query for p in items] == [p.query for p in joy], emotion
        assert [p.neutral for p in items] == [p.neutral for p in joy], emotion
        assert validate_pairs({emotion: items})[emotion] == items


def test_the_answer_pairs_never_use_evaluation_or_calibration_queries() -> None:
    """Calibration and evaluation each answer their own set."""
    used = {p.query for p in default_answer_pairs(["fear"])["fear"]}
    assert used <= set(default_extraction_queries()[60:])
    assert not used & set(default_queries())
    assert not used & set(default_calibration_queries())


def _words(query: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z']+", query.lower()))


@pytest.mark.parametrize(
    "other", [default_queries, default_extraction_queries], ids=["evaluation", "extraction"]
)
def test_the_calibration_queries_are_their_own_set(other: Callable[[], list[str]]) -> None:
    """80 distinct queries, none shared with (or a near copy of: at most 2/3 of the words in
    common) an evaluation or extraction query, so what calibration chooses on is never what
    a held-out evaluation scores."""
    calibration = default_calibration_queries()
    assert len(calibration) == 80 and len(set(calibration)) == 80
    for query in calibration:
        for theirs in other():
            overlap = len(_words(query) & _words(theirs)) / len(_words(query) | _words(theirs))
            assert overlap < 2 / 3, (query, theirs)


def test_the_calibration_queries_are_varied_like_the_evaluation_set() -> None:
    """How-to questions, explanations, opinions and descriptions, each a sizeable share of
    both sets (calibrating on opinions alone chose prompts that cost the topic of how-to
    questions; docs/methods.md)."""
    kinds = {
        "how-to": ("how do i", "how can i", "how should i"),
        "explain": ("can you explain",),
        "describe": ("describe", "tell me about"),
        "opinion": ("what do you think", "what is your", "is it better", "do you think"),
    }
    for queries in (default_calibration_queries()[:40], default_queries()[:40]):
        for kind, starts in kinds.items():
            share = sum(q.lower().startswith(starts) for q in queries) / len(queries)
            assert share >= 0.05, (kind, share)


def test_the_training_triples_add_questions_of_their_own_before_the_answer_pairs() -> None:
    """Anger, disgust, fear and sadness ship 100 more triples each; the answer pairs come last,
    so the share training holds out is always theirs."""
    triples, answers = default_triples(), default_answer_pairs()
    assert list(triples) == list(BASIC_EMOTIONS)
    assert triples["joy"] == answers["joy"]
    for emotion in ("anger", "disgust", "fear", "sadness"):
        extra, rest = triples[emotion][:-100], triples[emotion][-100:]
        assert rest == answers[emotion]
        assert len({" ".join(p.query.casefold().split()) for p in extra}) == len(extra) == 100
        assert validate_pairs({emotion: extra})[emotion] == extra
        assert not {p.query for p in extra} & {p.query for p in rest}
    assert default_triples(["fear"])["fear"] == triples["fear"]


@pytest.mark.parametrize(
    "other",
    [default_queries, default_calibration_queries, default_extraction_queries],
    ids=["evaluation", "calibration", "extraction"],
)
def test_no_training_question_is_a_near_copy_of_another_set(
    other: Callable[[], list[str]],
) -> None:
    """As for the calibration queries: at most 2/3 of the words in common with any query
    that calibration, evaluation or extraction asks."""
    theirs = [_words(q) for q in other()]
    for emotion, items in default_triples().items():
        for pair in items[:-100]:
            ours = _words(pair.query)
            worst = max(len(ours & t) / len(ours | t) for t in theirs)
            assert worst < 2 / 3, (emotion, pair.query)


def test_default_answer_pairs_unknown_emotion() -> None:
    with pytest.raises(KeyError, match="surprise"):
        default_answer_pairs(["joy", "surprise"])
