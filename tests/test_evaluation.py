"""Tests of the evaluation sweep: shape of the report, its files, and α recommendation.

The sweep runs a tiny random llama with the real offline scorer (nade) and the real MiniLM
embedder; the metrics themselves are tested on hand-made texts in test_metrics.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_model, build_tokenizer, random_bank

from emovec.cli import main
from emovec.evaluation import EvaluationReport, Tolerance, evaluate, recommend_alpha
from emovec.evaluation import sweep as evaluation
from emovec.evaluation.fluency import is_invented
from emovec.evaluation.metrics import is_degenerate
from emovec.evaluation.plots import pareto_front
from emovec.evaluation.scoring import NadeScorer
from emovec.evaluation.topic import MIN_PLAIN_SIMILARITY, SentenceEmbedder
from emovec.generation import Decoding, generate_answers
from emovec.vectors import EmotionVectors

QUERIES = ["i walked to the store today", "my sister called me", "the dog ran in the park"]
EMOTIONS = ["joy", "anger"]
ALPHAS = [-1.0, 0.0, 1.0]
DECODING = Decoding(max_new_tokens=4)


class WordJudge:
    """Flags every text containing one of ``words`` (a stand-in offensive judge)."""

    def __init__(self, *words: str) -> None:
        self.words = words
        self.seen: list[list[str]] = []

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.append(list(texts))
        return np.array([any(w in t.split() for w in self.words) for t in texts], dtype=bool)


# Words the tiny random model says in some answers and not in others.
JUDGE = WordJudge("before", "lonely")


@pytest.fixture
def default_judge(monkeypatch: pytest.MonkeyPatch) -> WordJudge:
    """The judge evaluate, rescored and calibrate load when given none."""
    judge = WordJudge(*JUDGE.words)
    monkeypatch.setattr("emovec.offensive.OffensiveJudge", lambda: judge)
    return judge


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, object, EmotionVectors]:
    model = build_model("llama")
    bank = random_bank(
        model.config.num_hidden_layers,
        model.config.hidden_size,
        ("joy", "anger", "fear"),
        layers=[1, 2],
    )
    return model, build_tokenizer(), bank


def _sweep(
    setup: tuple, scorer: NadeScorer, embedder: SentenceEmbedder, **options: object
) -> EvaluationReport:
    model, tokenizer, bank = setup
    settings: dict[str, object] = {
        "emotions": EMOTIONS,
        "alphas": ALPHAS,
        "queries": QUERIES,
        "decoding": DECODING,
        "prompt_baseline": True,
        "progress": False,
        "offensive_judge": JUDGE,
        **options,
    }
    return evaluate(model, tokenizer, bank, scorer=scorer, embedder=embedder, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def report(setup: tuple, scorer: NadeScorer, embedder: SentenceEmbedder) -> EvaluationReport:
    return _sweep(setup, scorer, embedder)


def test_report_has_one_record_per_query_condition_and_target(report: EvaluationReport) -> None:
    per_query = len(EMOTIONS) * (1 + 2 + 1)  # plain scored per emotion, α = ±1, prompt
    assert len(report.records) == len(QUERIES) * per_query
    keys = {(r["query"], r["recipe"], r["target"], r["alpha"]) for r in report.records}
    assert len(keys) == len(report.records)
    for record in report.records:
        assert 0.0 <= record["eps"] <= 1.0
        assert record["success"] in (0.0, 1.0)
        assert record["degenerate"] in (0.0, 1.0)
        assert set(record["scores"]) == set(NadeScorer().emotions)


def test_summary_rows_are_means_over_queries(report: EvaluationReport) -> None:
    summary = report.summary()
    assert {(r["recipe"], r["emotion"], r["alpha"]) for r in summary} == {
        (m, e, a)
        for e in EMOTIONS
        for m, a in [("plain", 0.0), ("vector", -1.0), ("vector", 1.0), ("prompt", 1.0)]
    }
    row = next(
        r for r in summary if (r["recipe"], r["emotion"], r["alpha"]) == ("vector", "joy", 1.0)
    )
    records = [
        r
        for r in report.records
        if (r["target"], r["alpha"], r["recipe"]) == ("joy", 1.0, "vector")
    ]
    assert row["n"] == len(QUERIES)
    assert row["eps"] == pytest.approx(sum(r["eps"] for r in records) / len(records))


def test_plain_answers_are_shared_and_similar_to_themselves(report: EvaluationReport) -> None:
    plain = [r for r in report.records if r["recipe"] == "plain"]
    for record in plain:
        assert record["sim_plain"] == pytest.approx(1.0, abs=1e-4)
    by_query = {}
    for record in plain:
        by_query.setdefault(record["query"], set()).add(record["answer"])
    assert all(len(answers) == 1 for answers in by_query.values())


def test_batched_rows_equal_one_condition_at_a_time(
    setup: tuple, report: EvaluationReport, scorer: NadeScorer, embedder: SentenceEmbedder
) -> None:
    alone = _sweep(setup, scorer, embedder, batch_size=1)
    assert [r["answer"] for r in alone.records] == [r["answer"] for r in report.records]


def test_steering_changes_the_answers(report: EvaluationReport) -> None:
    plain = {r["query"]: r["answer"] for r in report.records if r["recipe"] == "plain"}
    steered = [r for r in report.records if r["recipe"] == "vector" and r["alpha"] == 1.0]
    assert any(r["answer"] != plain[r["query"]] for r in steered)


def test_outputs_json_markdown_and_plot(report: EvaluationReport, tmp_path: Path) -> None:
    payload = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert len(payload["records"]) == len(report.records)
    assert payload["settings"]["alphas"] == ALPHAS
    markdown = report.to_markdown()
    for emotion in EMOTIONS:
        assert f"**{emotion}**" in markdown
    assert markdown.count("| vector | +1 |") == len(EMOTIONS)
    assert markdown.count("| prompt | +1 |") == len(EMOTIONS)
    png = report.plot(tmp_path / "r.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.parametrize("batch_size", [-1, 0, True])
def test_a_batch_size_below_one_is_refused(setup: tuple, batch_size: object) -> None:
    """-1 once gave a report of no answers that recommended α 0; 0 an obscure range()."""
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate(model, tokenizer, bank, queries=QUERIES, batch_size=batch_size, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        generate_answers(model, tokenizer, QUERIES, batch_size=batch_size)


def test_unknown_emotion_and_empty_queries_are_rejected(
    setup: tuple, scorer: NadeScorer, embedder: SentenceEmbedder
) -> None:
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match="sadness"):
        evaluate(
            model,
            tokenizer,
            bank,
            emotions=["sadness"],
            queries=QUERIES,
            scorer=scorer,
            embedder=embedder,
            offensive_judge=JUDGE,
            progress=False,
        )
    with pytest.raises(ValueError, match="No queries"):
        evaluate(
            model,
            tokenizer,
            bank,
            emotions=["joy"],
            queries=[],
            scorer=scorer,
            embedder=embedder,
            offensive_judge=JUDGE,
            progress=False,
        )


def _record(
    method: str,
    alpha: float,
    degenerate: float,
    ppl: float,
    sim_query: float = 0.5,
    offensive: float | None = 0.0,
    *,
    query: str = "q",
    target: str = "joy",
) -> dict[str, object]:
    """A record as evaluate writes it (``offensive=None``: as written before it was)."""
    record: dict[str, object] = {
        "query": query,
        "recipe": method,
        "target": target,
        "alpha": alpha,
        "answer": f"{method} {alpha} {query}",
        "eps": 0.5,
        "success": 1.0,
        "intensity": 0.0,
        "sim_query": sim_query,
        "sim_plain": 0.5,
        "perplexity": ppl,
        "distinct_1": 1.0,
        "distinct_2": 1.0,
        "degenerate": degenerate,
    }
    if offensive is not None:
        record["offensive"] = offensive
    return record


def test_recommend_alpha_picks_the_largest_alpha_within_the_default_tolerance() -> None:
    report = EvaluationReport(
        [
            _record("plain", 0.0, 0.0, 10.0),
            _record("vector", 1.0, 0.0, 12.0),
            _record("vector", 2.0, 0.05, 14.9, sim_query=0.35),  # at the limits
            _record("vector", 2.5, 0.0, 12.0, offensive=1.0),  # fluent, on topic, offensive
            _record("vector", 3.0, 0.0, 12.0, sim_query=0.3),  # fluent-looking but off topic
            _record("vector", 4.0, 0.6, 40.0),  # degenerate
            _record("vector", -1.0, 0.0, 11.0),  # negative α is never recommended
        ]
    )
    assert recommend_alpha(report) == {"joy": 2.0}
    assert recommend_alpha(report) == recommend_alpha(report, Tolerance())


def test_recommend_alpha_uses_the_tolerance_it_is_given() -> None:
    report = EvaluationReport(
        [
            _record("plain", 0.0, 0.0, 10.0),
            _record("vector", 1.0, 0.0, 12.0),
            _record("vector", 2.0, 0.05, 14.9, sim_query=0.35),
            _record("vector", 2.5, 0.0, 12.0, offensive=1.0),
            _record("vector", 3.0, 0.0, 12.0, sim_query=0.3),
            _record("vector", 4.0, 0.6, 40.0),
        ]
    )
    assert recommend_alpha(report, Tolerance(max_perplexity_ratio=1.3)) == {"joy": 1.0}
    assert recommend_alpha(report, Tolerance(max_perplexity_ratio=1.1)) == {"joy": 0.0}
    assert recommend_alpha(report, Tolerance(max_degenerate_increase=0.04)) == {"joy": 1.0}
    assert recommend_alpha(report, Tolerance(min_topic_ratio=0.71)) == {"joy": 1.0}
    assert recommend_alpha(report, Tolerance(max_offensive_increase=1.0)) == {"joy": 2.5}
    assert recommend_alpha(report, Tolerance(min_topic_ratio=0.6)) == {"joy": 3.0}
    assert recommend_alpha(report, Tolerance(max_offensive_increase=1.0, min_topic_ratio=0.6)) == {
        "joy": 3.0
    }
    lenient = Tolerance(1.0, 10.0, 0.0, 1.0)
    assert recommend_alpha(report, lenient) == {"joy": 4.0}


# --- topic retention and offensive rate -------------------------------------------------


def _hand_made() -> EvaluationReport:
    """Two queries, plain similarities 0.6 and 0.4, α = 1 answers at 0.3 and 0.4."""
    return EvaluationReport(
        [
            _record("plain", 0.0, 0.0, 10.0, sim_query=0.6, query="q1", offensive=None),
            _record("plain", 0.0, 0.0, 10.0, sim_query=0.4, query="q2", offensive=None),
            _record("vector", 1.0, 0.0, 12.0, sim_query=0.3, query="q1", offensive=None),
            _record("vector", 1.0, 0.0, 12.0, sim_query=0.4, query="q2", offensive=None),
        ]
    )


def test_summary_retention_is_the_ratio_of_mean_similarities() -> None:
    """(0.3 + 0.4) / (0.6 + 0.4) = 0.7, not the mean of 0.3 / 0.6 and 0.4 / 0.4 (0.75)."""
    rows = {r["recipe"]: r for r in _hand_made().summary()}
    assert rows["vector"]["retention"] == pytest.approx(0.7)
    assert rows["plain"]["retention"] == pytest.approx(1.0)


def test_retention_of_the_report_equals_a_hand_computation(report: EvaluationReport) -> None:
    """Per answer: its query similarity over its plain answer's (nan where that is under
    0.05, as for one of the tiny model's plain answers); per row: the ratio of the mean
    similarities over the same queries."""
    plain = {r["query"]: r["sim_query"] for r in report.records if r["recipe"] == "plain"}
    assert min(plain.values()) < MIN_PLAIN_SIMILARITY < max(plain.values())
    for record in report.records:
        if plain[record["query"]] < MIN_PLAIN_SIMILARITY:
            assert math.isnan(record["retention"])
            continue
        assert record["retention"] == pytest.approx(
            record["sim_query"] / plain[record["query"]], rel=1e-9
        )
    for row in report.summary():
        records = [
            r
            for r in report.records
            if (r["recipe"], r["target"], r["alpha"])
            == (row["recipe"], row["emotion"], row["alpha"])
        ]
        expected = sum(r["sim_query"] for r in records) / sum(plain[r["query"]] for r in records)
        assert row["retention"] == pytest.approx(expected, rel=1e-9)


def test_retention_needs_an_on_topic_plain_answer() -> None:
    """A plain similarity under MIN_PLAIN_SIMILARITY (0.05) leaves nothing to retain."""
    report = EvaluationReport(
        [
            _record("plain", 0.0, 0.0, 10.0, sim_query=0.04),
            _record("vector", 1.0, 0.0, 12.0, sim_query=0.3),
        ]
    )
    assert all(math.isnan(r["retention"]) for r in report.summary())
    assert "| vector | +1 | 0.500 | 1.00 | – |" in report.to_markdown()


def test_offensive_rate_comes_from_the_judge(report: EvaluationReport) -> None:
    """Each answer is flagged by the injected judge; a row's rate is the share flagged."""
    assert report.settings["offensive_judge"] == "WordJudge"
    for record in report.records:
        flagged = any(w in record["answer"].split() for w in JUDGE.words)
        assert record["offensive"] == float(flagged)
    rates = [row["offensive"] for row in report.summary()]
    assert len(set(rates)) > 1, rates  # the judge flags some answers, not all
    for row in report.summary():
        records = [
            r
            for r in report.records
            if (r["recipe"], r["target"], r["alpha"])
            == (row["recipe"], row["emotion"], row["alpha"])
        ]
        assert row["offensive"] == pytest.approx(
            sum(r["offensive"] for r in records) / len(records)
        )


def test_the_sweep_judges_invented_words_with_the_word_list(report: EvaluationReport) -> None:
    for record in report.records:
        assert record["invented"] == float(is_invented(record["answer"]))


def test_invented_rate_is_the_share_of_answers_judged_invented(
    setup: tuple,
    scorer: NadeScorer,
    embedder: SentenceEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each distinct answer is judged once (here by a stand-in that flags the tiny model's
    "before" and "lonely": the real list knows every word of its vocabulary); a row's rate
    is the share flagged, shown beside the degeneration rate."""
    seen: list[str] = []

    def flags(text: str, min_words: int = 2) -> bool:
        seen.append(text)
        return any(w in text.split() for w in JUDGE.words)

    monkeypatch.setattr("emovec.evaluation.records.is_invented", flags)
    report = _sweep(setup, scorer, embedder, prompt_baseline=False)
    assert sorted(seen) == sorted({r["answer"] for r in report.records})
    for record in report.records:
        assert record["invented"] == float(any(w in record["answer"].split() for w in JUDGE.words))
    summary = report.summary()
    assert len({row["invented"] for row in summary}) > 1  # some answers flagged, not all
    markdown = report.to_markdown()
    assert markdown.count("| distinct-2 | degenerate | invented |") == len(EMOTIONS)
    for row in summary:
        records = [
            r
            for r in report.records
            if (r["recipe"], r["target"], r["alpha"])
            == (row["recipe"], row["emotion"], row["alpha"])
        ]
        assert row["invented"] == pytest.approx(sum(r["invented"] for r in records) / len(records))
        assert f"| {row['degenerate']:.2f} | {row['invented']:.2f} |\n" in markdown + "\n"


def test_clean_is_passed_to_generation_and_recorded(
    setup: tuple,
    scorer: NadeScorer,
    embedder: SentenceEmbedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    real = evaluation.ask

    def spy(*args: object, **kwargs: object) -> list[str]:
        seen.append(kwargs.get("clean"))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluation, "ask", spy)
    unclean = _sweep(setup, scorer, embedder, clean=False, prompt_baseline=False)
    assert unclean.settings["clean"] is False
    assert seen and set(seen) == {False}
    seen.clear()
    clean = _sweep(setup, scorer, embedder, prompt_baseline=False)
    assert clean.settings["clean"] is True
    assert seen and set(seen) == {True}


def test_the_report_records_the_reference_retention(report: EvaluationReport) -> None:
    reference = report.settings["reference_retention"]
    assert list(reference) == EMOTIONS
    assert all(0.8 < value < 1.0 for value in reference.values())
    assert report.reference_retention == reference
    for emotion in EMOTIONS:
        assert (
            f"**{emotion}** (reference retention of the hand-written {emotion} answers: "
            f"{reference[emotion]:.2f})" in report.to_markdown()
        )


def test_an_old_report_loads_summarises_and_gets_offensive_when_rescored(
    tmp_path: Path, scorer: NadeScorer, embedder: SentenceEmbedder
) -> None:
    """A report from before retention and offensive: retention is recomputed on load, the
    offensive rate is nan (the tolerance does not hold it against a row) until rescored."""
    path = tmp_path / "old.json"
    old = _hand_made()
    path.write_text(json.dumps({"settings": {"scorer": "NadeScorer"}, "records": old.records}))
    loaded = EvaluationReport.from_json(path)
    assert [r["retention"] for r in loaded.records] == pytest.approx([1.0, 1.0, 0.5, 1.0])
    rows = {r["recipe"]: r for r in loaded.summary()}
    assert rows["vector"]["retention"] == pytest.approx(0.7)
    assert math.isnan(rows["vector"]["offensive"])
    assert loaded.reference_retention == {}
    markdown = loaded.to_markdown()
    assert "reference retention of the hand-written joy answers: –" in markdown
    assert "| vector | +1 | 0.500 | 1.00 | 0.70 | – |" in markdown
    assert recommend_alpha(loaded) == {"joy": 1.0}
    judge = WordJudge("vector")
    rescored = loaded.rescored(scorer, offensive_judge=judge, embedder=embedder)
    assert [r["offensive"] for r in rescored.records] == [0.0, 0.0, 1.0, 1.0]
    assert judge.seen == [[r["answer"] for r in old.records]]
    assert rescored.settings["offensive_judge"] == "WordJudge"
    assert set(rescored.reference_retention) == {"joy"}
    assert {r["recipe"]: r["offensive"] for r in rescored.summary()} == {
        "plain": 0.0,
        "vector": 1.0,
    }
    assert recommend_alpha(rescored) == {"joy": 0.0}  # now measured: +1.0 offensive


def _before_invented_words() -> EvaluationReport:
    """A report from before invented words were judged: clean plain answers, word salad at
    α = 1 (both queries)."""
    answers = {"plain": "The garden is green in spring.", "vector": "Mountainry, disgustinating!"}
    records = [
        {**r, "answer": answers[str(r["recipe"])]}
        for r in [
            _record("plain", 0.0, 0.0, 10.0, query="q1"),
            _record("plain", 0.0, 0.0, 10.0, query="q2"),
            _record("vector", 1.0, 0.0, 12.0, query="q1"),
            _record("vector", 1.0, 0.0, 12.0, query="q2"),
        ]
    ]
    return EvaluationReport(records)  # type: ignore[arg-type]


def test_an_old_report_without_invented_words_loads_and_gets_them_when_rescored(
    tmp_path: Path, scorer: NadeScorer, embedder: SentenceEmbedder
) -> None:
    """Unmeasured, the invented rate is nan (shown as –) and the tolerance does not hold it
    against a row; rescoring judges every answer, and then the salad is refused."""
    path = tmp_path / "old.json"
    old = _before_invented_words()
    path.write_text(json.dumps({"settings": {"scorer": "NadeScorer"}, "records": old.records}))
    loaded = EvaluationReport.from_json(path)
    assert all("invented" not in r for r in loaded.records)
    assert all(math.isnan(row["invented"]) for row in loaded.summary())
    assert "| 0.00 | – |" in loaded.to_markdown()
    assert recommend_alpha(loaded) == {"joy": 1.0}
    rescored = loaded.rescored(scorer, embedder=embedder)  # offensive measured: no judge
    assert [r["invented"] for r in rescored.records] == [0.0, 0.0, 1.0, 1.0]
    assert {r["recipe"]: r["invented"] for r in rescored.summary()} == {"plain": 0.0, "vector": 1.0}
    assert "| 0.00 | 1.00 |" in rescored.to_markdown()
    assert recommend_alpha(rescored) == {"joy": 0.0}  # now measured: +1.0 invented
    assert recommend_alpha(rescored, Tolerance(max_invented_increase=1.0)) == {"joy": 1.0}


def test_rescoring_keeps_the_invented_flags_it_has(report: EvaluationReport) -> None:
    """Measured flags are kept, not judged again (a flag no answer earns survives)."""
    marked = EvaluationReport(
        [{**r, "invented": 1.0} for r in report.records], settings=report.settings
    )
    rescored = marked.rescored(_Constant(joy=0.5, anger=0.5))
    assert [r["invented"] for r in rescored.records] == [1.0] * len(report.records)


def test_rescoring_judges_degeneration_again_by_todays_rule(report: EvaluationReport) -> None:
    """Degeneration is a rule over the text: a report judged by an older rule (distinct-2
    alone) is judged again, and a loop of phrases it missed is counted."""
    loop = (
        "I'm annoyed by the lack of plans on the old town walk. I'm annoyed by the lack of "
        "plans, so I'm annoyed by the lack of plans again"
    )
    older = EvaluationReport(
        [{**r, "answer": loop, "degenerate": 0.0} for r in report.records[:1]]
        + [{**r, "degenerate": 1.0} for r in report.records[1:]],
        settings=report.settings,
    )
    rescored = older.rescored(_Constant(joy=0.5, anger=0.5))
    assert rescored.records[0]["degenerate"] == 1.0
    assert [r["degenerate"] for r in rescored.records[1:]] == [
        float(not r["answer"].strip() or is_degenerate(r["answer"])) for r in report.records[1:]
    ]


def test_cli_rescore_judges_the_invented_words_of_an_old_report(
    tmp_path: Path, default_judge: WordJudge
) -> None:
    source = tmp_path / "old" / "report.json"
    _before_invented_words().to_json(source)
    payload = json.loads(source.read_text())
    assert all("invented" not in r for r in payload["records"])
    assert main(["rescore", str(source), "--out", str(tmp_path / "again")]) == 0
    written = EvaluationReport.from_json(tmp_path / "again" / "report.json")
    assert [r["invented"] for r in written.records] == [0.0, 0.0, 1.0, 1.0]
    assert "| 0.00 | 1.00 |" in (tmp_path / "again" / "report.md").read_text()


def test_a_record_missing_a_field_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    records = [{k: v for k, v in r.items() if k != "sim_query"} for r in _hand_made().records]
    path.write_text(json.dumps({"settings": {}, "records": records}))
    with pytest.raises(ValueError, match="sim_query"):
        EvaluationReport.from_json(path)


def test_rescoring_keeps_the_offensive_flags_without_loading_a_judge(
    report: EvaluationReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(judge: object = None) -> object:
        raise AssertionError("no judge should be loaded")

    monkeypatch.setattr("emovec.offensive.OffensiveJudge", fail)
    rescored = report.rescored(_Constant(joy=0.5, anger=0.5))
    assert [r["offensive"] for r in rescored.records] == [r["offensive"] for r in report.records]
    assert [r["retention"] for r in rescored.records] == [r["retention"] for r in report.records]


# --- plots --------------------------------------------------------------------------


def test_plot_front_writes_a_png(report: EvaluationReport, tmp_path: Path) -> None:
    png = report.plot_front(tmp_path / "figures" / "front.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    points = report.front_points()
    assert set(points) == set(EMOTIONS)
    assert {p.label for p in points["joy"]} == {"plain", "α=-1", "α=+1", "prompt"}
    assert {p.kind for p in points["joy"]} == {"plain", "vector", "prompt"}
    assert not [p.name for p in (tmp_path / "figures").iterdir() if p.name != "front.png"]


def test_named_recipes_are_drawn_as_steered_points() -> None:
    """A recipe named other than "vector" (a method comparison's) gets the steered marker,
    not a kind the plot has no marker for."""
    report = _hand_made()
    records = [{**r, "recipe": "trained"} if r["recipe"] == "vector" else r for r in report.records]
    renamed = EvaluationReport(records, settings=report.settings)
    kinds = {(p.label, p.kind) for p in renamed.front_points()["joy"]}
    assert ("trained", "vector") in kinds and ("plain", "plain") in kinds


def test_plots_do_not_use_pyplot(tmp_path: Path) -> None:
    """Both figures draw on a bare Figure: pyplot (global state, a backend) is never loaded."""
    report = _hand_made()
    path = tmp_path / "report.json"
    report.to_json(path)
    code = (
        "import sys\n"
        "from emovec.evaluation import EvaluationReport\n"
        f"r = EvaluationReport.from_json({str(path)!r})\n"
        f"r.plot({str(tmp_path / 'a.png')!r}); r.plot_front({str(tmp_path / 'b.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_cli_eval_writes_reports_and_stores_the_recommendation(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    default_judge: WordJudge,
) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    vectors = tmp_path / "v.safetensors"
    random_bank(3, 32, ("joy", "anger"), layers=[1]).save(vectors)
    queries = tmp_path / "q.txt"
    queries.write_text("\n".join(QUERIES), encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--model",
            str(folder),
            "--vectors",
            str(vectors),
            "--queries",
            str(queries),
            "--alphas",
            "0",
            "1",
            "--max-new-tokens",
            "3",
            "--out",
            str(out),
            "--store-recommendation",
            "--no-clean",
        ]
    )
    assert code == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert names == {"report.json", "report.md", "report.png", "front.png"}
    assert (out / "front.png").read_bytes().startswith(b"\x89PNG")
    written = EvaluationReport.from_json(out / "report.json")
    assert written.settings["clean"] is False
    assert written.settings["offensive_judge"] == "WordJudge" and default_judge.seen
    stored = EmotionVectors.load(vectors).settings["recommended_alpha"]
    assert stored == recommend_alpha(written)
    printed = capsys.readouterr().out
    assert "recommended α" in printed
    reference = written.reference_retention
    assert f"(hand-written answers {reference['joy']:.2f})" in printed


def test_a_hugging_face_classifier_plugs_in(setup: tuple, embedder: SentenceEmbedder) -> None:
    from test_scoring import build_classifier

    from emovec.evaluation.scoring import ClassifierScorer

    model, tokenizer, bank = setup
    scorer = ClassifierScorer(build_classifier(), build_tokenizer(), emotions=EMOTIONS)
    report = evaluate(
        model,
        tokenizer,
        bank,
        alphas=[0.0, 1.0],
        queries=QUERIES[:2],
        decoding=DECODING,
        scorer=scorer,
        embedder=embedder,
        offensive_judge=JUDGE,
        progress=False,
    )
    assert report.settings["scorer"] == "ClassifierScorer"
    assert report.settings["emotions"] == EMOTIONS  # the bank's emotions the classifier knows
    for record in report.records:
        expected = scorer([record["answer"]])[0, EMOTIONS.index(record["target"])]
        assert record["eps"] == pytest.approx(float(expected), abs=1e-6)


class _Constant:
    """Scores every text the same, emotion by emotion as given."""

    def __init__(self, **scores: float) -> None:
        self.emotions = tuple(scores)
        self._row = np.array(list(scores.values()))

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.tile(self._row, (len(texts), 1))


def test_success_is_judged_against_every_emotion_of_the_bank(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    """Evaluating anger alone must not make anger win by default: joy, which the bank and
    the scorer both know, still outscores it."""
    model, tokenizer, bank = setup
    alone = evaluate(
        model,
        tokenizer,
        bank,
        emotions=["anger"],
        alphas=[0.0, 1.0],
        queries=QUERIES[:2],
        decoding=DECODING,
        scorer=_Constant(joy=0.6, anger=0.3, fear=0.1),
        embedder=embedder,
        offensive_judge=JUDGE,
        progress=False,
    )
    assert {r["target"] for r in alone.records} == {"anger"}
    assert all(r["success"] == 0.0 for r in alone.records)
    joy = evaluate(
        model,
        tokenizer,
        bank,
        emotions=["joy"],
        alphas=[1.0],
        queries=QUERIES[:2],
        decoding=DECODING,
        scorer=_Constant(joy=0.6, anger=0.3, fear=0.1),
        embedder=embedder,
        offensive_judge=JUDGE,
        progress=False,
    )
    assert all(r["success"] == 1.0 for r in joy.records if r["answer"].strip())


def test_repetition_penalty_reaches_generate(setup: tuple) -> None:
    """A strong penalty forbids the tiny model's greedy loops; 1 leaves the answers alone."""
    model, tokenizer, _ = setup
    plain = generate_answers(model, tokenizer, QUERIES, max_new_tokens=12)
    same = generate_answers(model, tokenizer, QUERIES, max_new_tokens=12, repetition_penalty=1.0)
    assert same == plain
    penalised = generate_answers(
        model, tokenizer, QUERIES, max_new_tokens=12, repetition_penalty=1e6
    )
    assert penalised != plain
    for answer in penalised:
        words = answer.split()
        assert len(words) == len(set(words)), answer
    with pytest.raises(ValueError, match="repetition_penalty"):
        generate_answers(model, tokenizer, QUERIES, repetition_penalty=0.0)


def test_rescoring_rejudges_emotion_and_keeps_everything_else(
    report: EvaluationReport, tmp_path: Path
) -> None:
    again = EvaluationReport.from_json(report.to_json(tmp_path / "report.json"))
    rescored = again.rescored(_Constant(anger=0.7, joy=0.2, sadness=0.1))
    assert rescored.settings["scorer"] == "_Constant"
    assert rescored.settings["rivals"] == ["joy", "anger"]  # sadness: not in the bank
    kept = ("query", "recipe", "target", "alpha", "answer", "sim_query", "perplexity")
    for old, new in zip(report.records, rescored.records, strict=True):
        assert {k: new[k] for k in kept} == {k: old[k] for k in kept}
        assert new["scores"] == {"anger": 0.7, "joy": 0.2, "sadness": 0.1}
        assert new["eps"] == new["scores"][new["target"]]
        assert new["success"] == float(new["target"] == "anger" and bool(new["answer"].strip()))
    assert report.records[0]["scores"] != rescored.records[0]["scores"]  # the original is kept


def test_rescoring_with_the_same_scorer_changes_nothing(
    report: EvaluationReport, scorer: NadeScorer
) -> None:
    assert report.rescored(scorer).records == report.records


def test_rescoring_needs_a_scorer_for_every_evaluated_emotion(report: EvaluationReport) -> None:
    with pytest.raises(ValueError, match="cannot judge \\['joy'\\]"):
        report.rescored(_Constant(anger=1.0))


def test_a_file_that_is_not_a_report_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"answers": []}))
    with pytest.raises(ValueError, match="not an emovec evaluation report"):
        EvaluationReport.from_json(path)


def test_cli_rescore_writes_the_rejudged_reports(report: EvaluationReport, tmp_path: Path) -> None:
    source = report.to_json(tmp_path / "eval" / "report.json")
    assert main(["rescore", str(source), "--scorer", "nade", "--out", str(tmp_path / "again")]) == 0
    written = EvaluationReport.from_json(tmp_path / "again" / "report.json")
    # Compared as JSON: a retention is nan where the plain answer is off topic, and nan != nan.
    assert json.dumps(written.records) == json.dumps(report.records)
    assert (tmp_path / "again" / "report.md").read_text().startswith("**anger**")
    assert (tmp_path / "again" / "report.png").stat().st_size > 0
    assert (tmp_path / "again" / "front.png").read_bytes().startswith(b"\x89PNG")


def test_cli_rescore_writes_beside_the_report_by_default(
    report: EvaluationReport, tmp_path: Path
) -> None:
    source = report.to_json(tmp_path / "eval" / "report.json")
    assert main(["rescore", str(source)]) == 0
    assert (tmp_path / "eval" / "rescored-nade" / "report.json").is_file()


def test_rescoring_an_older_report_keeps_the_bank_as_rivals(
    report: EvaluationReport, tmp_path: Path
) -> None:
    """Reports written before the bank was recorded still judge against every emotion the
    first judge scored, not only the evaluated ones: joy (top here) still wins."""
    older = EvaluationReport(
        [r for r in report.records if r["target"] == "anger"],
        settings={k: v for k, v in report.settings.items() if k not in ("rivals", "bank_emotions")},
    )
    rescored = older.rescored(_Constant(joy=0.6, anger=0.3, fear=0.1))
    assert rescored.settings["rivals"][0] == "joy"
    assert all(r["success"] == 0.0 for r in rescored.records)


def test_a_nan_score_is_never_a_success(report: EvaluationReport) -> None:
    rescored = report.rescored(_Constant(joy=math.nan, anger=0.5))
    assert all(r["success"] == 0.0 for r in rescored.records)


@pytest.mark.parametrize(
    ("points", "front"),
    [
        # (retention, success): b beats a on both, c trades retention for success, d is
        # beaten by c, e ties c exactly (neither dominates the other), f has no retention.
        (
            [(0.5, 0.2), (0.6, 0.4), (0.3, 0.9), (0.2, 0.8), (0.3, 0.9), (math.nan, 1.0)],
            [2, 4, 1],
        ),
        ([(1.0, 0.0), (0.9, 0.0), (0.1, 0.5), (0.1, 0.4), (0.05, 0.5)], [2, 0]),
        ([(0.4, 0.4)], [0]),
        ([], []),
    ],
)
def test_pareto_front_is_exactly_the_non_dominated_points(
    points: list[tuple[float, float]], front: list[int]
) -> None:
    got = pareto_front(points)
    assert got == front
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    dominated = {
        i
        for i in finite
        for j in finite
        if points[j][0] >= points[i][0] and points[j][1] >= points[i][1] and points[j] != points[i]
    }
    assert set(got) == set(finite) - dominated


def test_combined_keeps_one_set_of_plain_answers_and_every_steered_one() -> None:
    """Two sweeps over the same queries (one per α): one plain row, both steered rows, the
    recipes of both, the first's other settings."""
    plain = [_record("plain", 0.0, 0.0, 10.0, query=q) for q in ("q1", "q2")]
    first = EvaluationReport(
        [*plain, *(_record("vector", 1.0, 0.0, 12.0, query=q) for q in ("q1", "q2"))],
        settings={"recipes": {"vector": {"instruct": False}}, "split": "calibration"},
    )
    second = EvaluationReport(
        [*plain, *(_record("gentle", 0.5, 0.0, 11.0, query=q) for q in ("q1", "q2"))],
        settings={"recipes": {"gentle": {"instruct": True}}, "split": "other"},
    )
    both = EvaluationReport.combined([first, second])
    assert len(both.records) == 6
    assert sorted((r["recipe"], r["alpha"]) for r in both.summary()) == [
        ("gentle", 0.5),
        ("plain", 0.0),
        ("vector", 1.0),
    ]
    assert both.settings == {
        "recipes": {"vector": {"instruct": False}, "gentle": {"instruct": True}},
        "split": "calibration",
    }
    assert EvaluationReport.combined([first]).records == first.records


def test_combined_joins_sweeps_over_other_emotions_of_the_same_queries() -> None:
    """One sweep per emotion: each emotion's plain answers come from the sweep that has them;
    where two sweeps both have them they must agree, and every sweep answers the same queries."""

    def sweep(target: str, queries: tuple[str, ...] = ("q1", "q2")) -> list[dict[str, object]]:
        return [
            _record(recipe, alpha, 0.0, 10.0, query=q, target=target)
            for q in queries
            for recipe, alpha in (("plain", 0.0), ("vector", 1.0))
        ]

    joy, fear = EvaluationReport(sweep("joy")), EvaluationReport(sweep("fear"))
    both = EvaluationReport.combined([joy, fear])
    assert len(both.records) == 8
    assert {(r["recipe"], r["emotion"]) for r in both.summary()} == {
        (recipe, emotion) for recipe in ("plain", "vector") for emotion in ("joy", "fear")
    }
    # A third sweep with joy's plain answers again, and the same: accepted, nothing doubled.
    again = EvaluationReport([r for r in sweep("joy") if r["recipe"] == "plain"])
    assert len(EvaluationReport.combined([joy, fear, again]).records) == 8

    changed = [{**r, "answer": "other"} if r["recipe"] == "plain" else r for r in sweep("joy")]
    with pytest.raises(ValueError, match="plain answers differ"):
        EvaluationReport.combined([fear, joy, EvaluationReport(changed)])
    with pytest.raises(ValueError, match="plain answers differ"):
        EvaluationReport.combined([joy, EvaluationReport(sweep("fear", ("q1", "q3")))])


def test_combined_refuses_reports_that_are_not_comparable() -> None:
    """Other plain answers (other queries or decoding) or the same rows twice are refused."""
    report = EvaluationReport([_record("plain", 0.0, 0.0, 10.0), _record("vector", 1.0, 0.0, 12.0)])
    other_queries = EvaluationReport(
        [_record("plain", 0.0, 0.0, 10.0, query="elsewhere"), _record("v2", 1.0, 0.0, 12.0)]
    )
    with pytest.raises(ValueError, match="plain answers differ"):
        EvaluationReport.combined([report, other_queries])
    with pytest.raises(ValueError, match="appear in two reports"):
        EvaluationReport.combined([report, report])
    with pytest.raises(ValueError, match="at least one"):
        EvaluationReport.combined([])
