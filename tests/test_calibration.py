"""Calibration: candidate bands, the (emotion, band, dose, instruction) search in one
evaluation, its choice and its record.

The search runs a tiny random llama with the real offline scorer (nade) and the real MiniLM
embedder, and once with a constant scorer whose scores do not depend on the text, so that
the choice among ties is known. The choice rule itself is tested on hand-made trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import build_model, build_tokenizer, random_bank
from test_evaluation import JUDGE, WordJudge

from emovec.chat import Asking
from emovec.cli import build_parser, main
from emovec.evaluation import EvaluationReport, Tolerance
from emovec.evaluation import calibration as calibration_module
from emovec.evaluation import sweep as evaluation_module
from emovec.evaluation.calibration import (
    DEFAULT_BATCH_SIZE,
    calibrate,
    calibrated_repetition_penalty,
    candidate_bands,
)
from emovec.evaluation.choice import attainment
from emovec.evaluation.recipes import PERSONAS, PROMPT_INSTRUCTIONS
from emovec.evaluation.scoring import NadeScorer
from emovec.evaluation.topic import SentenceEmbedder
from emovec.evaluation.trials import Calibration, Trial, _choose, _setting_name
from emovec.generation import Decoding, generate_answers
from emovec.steering import RELATIVE_DOSE, steer
from emovec.vectors import EmotionVectors, Placement

QUERIES = ["i walked to the store today", "my sister called me", "the dog ran in the park"]
EMOTIONS = ["joy", "anger"]
BANDS = [(0, 1), (1, 2)]
DOSES = [0.5, 1.0]
DECODING = Decoding(max_new_tokens=4)


@pytest.fixture
def default_judge(monkeypatch: pytest.MonkeyPatch) -> WordJudge:
    """The judge calibrate loads when given none (the command line gives none)."""
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
        layers=[2],
    )
    return model, build_tokenizer(), bank


def _calibrate(setup: tuple, embedder: SentenceEmbedder, **options: Any) -> Calibration:
    model, tokenizer, bank = setup
    settings: dict[str, Any] = {
        "emotions": EMOTIONS,
        "bands": BANDS,
        "doses": DOSES,
        "queries": QUERIES,
        "decoding": DECODING,
        "embedder": embedder,
        "offensive_judge": JUDGE,
        "progress": False,
        **options,
    }
    return calibrate(model, tokenizer, bank, **settings)


@pytest.fixture(scope="module")
def calibration(setup: tuple, embedder: SentenceEmbedder, scorer: NadeScorer) -> Calibration:
    return _calibrate(setup, embedder, scorer=scorer)


# --- candidate bands ------------------------------------------------------------------


def test_candidate_bands_of_a_30_layer_model() -> None:
    """Width round(30/6) = 5, every 5 // 2 = 2 layers, from round(0.2*30) = 6 to
    round(0.67*30) - 5 // 2 = 18."""
    assert candidate_bands(30) == [tuple(range(s, s + 5)) for s in (6, 8, 10, 12, 14, 16, 18)]


def test_candidate_bands_other_depths_and_widths() -> None:
    """The same rule for a given width, a 12-layer stack (step 1) and a 3-layer one (width 1)."""
    assert candidate_bands(30, width=4) == [
        tuple(range(s, s + 4)) for s in (6, 8, 10, 12, 14, 16, 18)
    ]
    assert candidate_bands(12) == [(s, s + 1) for s in range(2, 8)]
    assert candidate_bands(3) == [(1,), (2,)]


def test_default_candidate_bands_fit_any_depth() -> None:
    """With the default width every band is contiguous, non-empty and inside the stack."""
    for n in range(1, 81):
        bands = candidate_bands(n)
        assert bands, n
        for band in bands:
            assert band == tuple(range(band[0], band[0] + len(band)))
            assert band[0] >= 0 and band[-1] < n, (n, band)


def test_wide_candidate_bands_stay_inside_the_stack() -> None:
    """Any accepted width must give bands inside the stack (calibrate refuses others)."""
    for n in range(1, 41):
        for width in range(1, n + 1):
            for band in candidate_bands(n, width=width):
                assert band[0] >= 0 and band[-1] < n, (n, width, band)


@pytest.mark.parametrize("width", [-1, 31, 100])
def test_candidate_bands_reject_a_bad_width(width: int) -> None:
    """A band cannot be narrower than one layer or wider than the stack."""
    with pytest.raises(ValueError, match="width"):
        candidate_bands(30, width=width)


def test_candidate_bands_reject_width_zero() -> None:
    """A zero width is as wrong as a negative one."""
    with pytest.raises(ValueError, match="width"):
        candidate_bands(30, width=0)


# --- the search -----------------------------------------------------------------------


def test_calibrate_tries_every_emotion_band_and_dose(calibration: Calibration) -> None:
    """One trial per (emotion, band, dose), every band and dose from the candidates."""
    assert len(calibration.trials) == len(EMOTIONS) * len(BANDS) * len(DOSES)
    tried = {(t.emotion, t.placement.layers, t.placement.dose) for t in calibration.trials}
    assert tried == {(e, b, d) for e in EMOTIONS for b in BANDS for d in DOSES}
    assert all(t.placement.instruction is None for t in calibration.trials)  # instructions=(False,)
    assert [(t.emotion, t.placement.layers, t.placement.dose) for t in calibration.trials] == [
        (e, b, d) for e in EMOTIONS for b in BANDS for d in DOSES
    ]  # per emotion, band by band, dose by dose
    for trial in calibration.trials:
        assert 0.0 <= trial.success <= 1.0 and 0.0 <= trial.eps <= 1.0
        assert 0.0 <= trial.degenerate <= 1.0 and 0.0 <= trial.offensive <= 1.0
        assert 0.0 <= trial.invented <= 1.0
    assert set(calibration.plain) == set(EMOTIONS)
    for plain in calibration.plain.values():
        assert set(plain) == {
            "success",
            "eps",
            "degenerate",
            "sim_query",
            "retention",
            "offensive",
            "invented",
            "median_perplexity",
        }
        assert plain["retention"] == pytest.approx(1.0)


def test_trials_carry_the_retention_and_offensive_rate_of_their_evaluation(
    calibration: Calibration,
) -> None:
    """Each trial's retention and offensive rate are those of its summary row in the one
    report, the row of the recipe named after the setting, at α = 1."""
    assert calibration.report is not None
    summary = calibration.report.summary()
    for trial in calibration.trials:
        (row,) = [
            r
            for r in summary
            if r["recipe"] == _setting_name(trial.placement.layers, trial.placement.dose, False)
            and r["emotion"] == trial.emotion
        ]
        assert row["alpha"] == 1.0 and row["n"] == len(QUERIES)
        assert trial.retention == row["retention"]
        assert trial.offensive == row["offensive"]
        assert trial.invented == row["invented"]
        assert trial.retention == pytest.approx(
            trial.sim_query / calibration.plain[trial.emotion]["sim_query"]
        )
    assert calibration.settings["offensive_judge"] == "WordJudge"
    assert calibration.settings["clean"] is True
    reference = calibration.reference_retention
    assert list(reference) == EMOTIONS and all(0.8 < v < 1.0 for v in reference.values())


def test_acceptability_is_the_tolerance_of_fluency_against_plain(
    calibration: Calibration,
) -> None:
    """Each trial is acceptable exactly when it is as fluent as the default Tolerance allows
    against the plain answers of its emotion (retention is scored, not filtered)."""
    for trial in calibration.trials:
        expected = Tolerance().fluent(asdict(trial), calibration.plain[trial.emotion])
        assert trial.acceptable == expected, trial


def test_calibrate_chooses_the_acceptable_trial_nearest_both_bars(
    calibration: Calibration,
) -> None:
    """Per emotion: the acceptable trial with the highest attainment (success over 0.8 and
    retention over 0.7, each capped at 1); no placement where nothing was acceptable."""
    for emotion in EMOTIONS:
        fine = [t for t in calibration.trials if t.emotion == emotion and t.acceptable]
        if not fine:
            assert emotion not in calibration.placements
            continue
        chosen = calibration.placements[emotion]
        winner = next(t for t in fine if t.placement == chosen)  # one of the acceptable
        for other in fine:
            assert (
                attainment(other.success, other.retention)
                <= attainment(winner.success, winner.retention) + 1e-9
            )
    assert set(calibration.placements) <= set(EMOTIONS)


def test_calibration_settings_record_the_run(calibration: Calibration) -> None:
    """The settings say what was searched and how it was scored."""
    settings = calibration.settings
    assert settings["queries"] == len(QUERIES)
    assert settings["bands"] == [list(b) for b in BANDS]
    assert settings["doses"] == DOSES
    assert settings["tolerance"] == asdict(Tolerance())
    assert settings["tolerance"] == {
        "max_degenerate_increase": 0.05,
        "max_perplexity_ratio": 10.0,
        "min_topic_ratio": 0.7,
        "max_offensive_increase": 0.02,
        "max_invented_increase": 0.05,
    }
    assert settings["target_success"] == 0.8
    assert settings["personas"] == [False] and settings["positions"] == [None]
    assert settings["decoding"] == asdict(DECODING)
    assert settings["scorer"] == "NadeScorer"
    assert settings["instructions"] == [False] and settings["instruction_texts"] == {}


def test_apply_stores_the_placements_and_the_record(
    setup: tuple, calibration: Calibration, tmp_path: Path
) -> None:
    """apply() gives a bank whose placements are the chosen ones, whose settings record the
    run and the chosen trials' scores; both survive save and load."""
    _, _, bank = setup
    applied = calibration.apply(bank)
    assert applied.placements == calibration.placements
    assert bank.placements == {}  # the input bank is unchanged
    record = applied.settings["calibration"]
    assert {k: v for k, v in record.items() if k != "chosen"} == calibration.settings
    assert set(record["chosen"]) == set(calibration.placements)
    for emotion, chosen in record["chosen"].items():
        trial = next(
            t
            for t in calibration.trials
            if t.emotion == emotion
            and t.placement.layers == calibration.placements[emotion].layers
            and t.placement.dose == calibration.placements[emotion].dose
        )
        assert chosen == {
            "layers": list(trial.placement.layers),
            "dose": trial.placement.dose,
            "success": trial.success,
            "eps": trial.eps,
            "degenerate": trial.degenerate,
            "retention": trial.retention,
            "offensive": trial.offensive,
            "invented": trial.invented,
        }
    loaded = EmotionVectors.load(applied.save(tmp_path / "calibrated.safetensors"))
    assert loaded.placements == calibration.placements
    assert loaded.settings["calibration"] == record
    assert loaded.recommended_layers == bank.recommended_layers


def test_markdown_and_dict_list_every_trial(calibration: Calibration) -> None:
    """The markdown has a plain row per emotion and a row per trial, the chosen ones marked;
    the dict is JSON and holds the same trials and placements."""
    markdown = calibration.to_markdown()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(EMOTIONS) + len(calibration.trials)  # header, plain, trials
    assert markdown.count("**chosen**") == len(calibration.placements)
    assert markdown.count("outside tolerance") == sum(not t.acceptable for t in calibration.trials)
    for emotion in EMOTIONS:
        assert f"| {emotion} | plain | 0 |" in markdown
        reference = calibration.reference_retention[emotion]
        assert f"| reference retention {reference:.2f} |" in markdown
        assert f"| {emotion} | 0–1 | 0.5 |" in markdown and f"| {emotion} | 1–2 | 1 |" in markdown
    payload = json.loads(json.dumps(calibration.to_dict()))
    assert payload["settings"] == json.loads(json.dumps(calibration.settings))
    assert len(payload["trials"]) == len(calibration.trials)
    assert payload["trials"][0]["layers"] == list(calibration.trials[0].placement.layers)
    assert payload["placements"] == {e: p.to_dict() for e, p in calibration.placements.items()}


# --- the choice, with a scorer that ignores the text ----------------------------------


@dataclass
class ConstantScorer:
    """Scores every text the same: joy 0.6, anger 0.3, fear 0.1."""

    emotions: tuple[str, ...] = ("joy", "anger", "fear")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.array([0.6, 0.3, 0.1]), (len(texts), 1))


@dataclass(frozen=True)
class RejectAnger(Tolerance):
    """Accepts every steered row except anger's."""

    def fluent(self, row: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
        return row["emotion"] != "anger"


def test_ties_go_to_the_most_on_topic_and_unacceptable_emotions_keep_the_default(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    """With text-blind scores success ties, so joy gets its most on-topic trial;
    anger, never acceptable, gets no placement and keeps the bank's band and RELATIVE_DOSE
    after apply()."""
    model, _, bank = setup
    calibration = _calibrate(setup, embedder, scorer=ConstantScorer(), tolerance=RejectAnger())
    joy = [t for t in calibration.trials if t.emotion == "joy"]
    anger = [t for t in calibration.trials if t.emotion == "anger"]
    assert all(t.acceptable for t in joy) and not any(t.acceptable for t in anger)
    assert {t.eps for t in joy} == {0.6} and {t.eps for t in anger} == {0.3}
    winner = max(joy, key=lambda t: t.retention)  # success ties: the first most on-topic
    assert calibration.placements == {
        "joy": Placement(winner.placement.layers, winner.placement.dose)
    }
    assert calibration.settings["scorer"] == "ConstantScorer"

    applied = calibration.apply(bank)
    assert set(applied.placements) == {"joy"}
    assert set(applied.settings["calibration"]["chosen"]) == {"joy"}
    steering = steer(model, applied, anger=1.0)
    assert steering.layers == [2]
    torch.testing.assert_close(
        steering.deltas()[0], RELATIVE_DOSE * bank.unit_vector("anger")[2], rtol=1e-6, atol=1e-6
    )
    joy_steering = steer(model, applied, joy=1.0, max_dose=math.inf)
    assert joy_steering.layers == list(winner.placement.layers)
    assert joy_steering.dose == [pytest.approx(winner.placement.dose, rel=1e-5)]


def test_apply_drops_a_stale_placement_of_an_emotion_found_too_broken(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    """A bank calibrated before keeps no placement for an emotion this calibration tried and
    rejected everywhere; emotions it did not try keep theirs."""
    _, _, bank = setup
    old = Placement((0,), 0.2)
    placed = bank.with_placements({"anger": old, "fear": old})
    calibration = _calibrate(setup, embedder, scorer=ConstantScorer(), tolerance=RejectAnger())
    assert sorted(calibration.emotions) == sorted(EMOTIONS)
    applied = calibration.apply(placed)
    assert set(applied.placements) == {"joy", "fear"}
    assert applied.placements["fear"] == old
    assert set(applied.settings["calibration"]["chosen"]) == {"joy"}
    assert "earlier" not in applied.settings["calibration"]  # no record came with fear's


def test_apply_keeps_the_record_of_placements_it_did_not_revisit(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    """Calibrating some emotions again keeps the others' placements and the record of the
    calibration that found them; re-calibrating every placed emotion drops that record."""
    _, _, bank = setup
    first = _calibrate(setup, embedder, scorer=ConstantScorer(), emotions=["joy", "fear"])
    once = first.apply(bank)
    assert set(once.placements) == {"joy", "fear"}
    again = _calibrate(setup, embedder, scorer=ConstantScorer(), emotions=["joy"])
    twice = again.apply(once)
    assert twice.placements["fear"] == once.placements["fear"]
    record = twice.settings["calibration"]
    assert set(record["chosen"]) == {"joy"}
    assert record["earlier"] == once.settings["calibration"]
    everything = _calibrate(setup, embedder, scorer=ConstantScorer(), emotions=["joy", "fear"])
    assert "earlier" not in everything.apply(twice).settings["calibration"]


def _trial(
    success: float,
    eps: float,
    dose: float,
    acceptable: bool = True,
    layers: tuple = (1, 2),
    sim_query: float = 0.5,
    offensive: float = 0.0,
    invented: float = 0.0,
) -> Trial:
    return Trial(
        emotion="joy",
        placement=Placement(layers, dose),
        success=success,
        eps=eps,
        degenerate=0.0,
        sim_query=sim_query,
        retention=sim_query / 0.5,
        offensive=offensive,
        median_perplexity=10.0,
        acceptable=acceptable,
        invented=invented,
    )


def test_choose_prefers_the_trial_nearest_both_bars() -> None:
    """Success past the bar buys nothing: 0.8 success at 0.7 retention beats 1.0 at 0.5 and
    0.6 at 0.9; an unacceptable trial never wins, however good."""
    on_bar = _trial(0.8, 0.1, 0.35, sim_query=0.35)  # retention 0.7
    loud = _trial(1.0, 0.9, 0.5, sim_query=0.25)  # retention 0.5
    quiet = _trial(0.6, 0.1, 0.25, sim_query=0.45)  # retention 0.9
    broken = _trial(1.0, 1.0, 0.5, acceptable=False, sim_query=0.5)
    for order in ([on_bar, loud, quiet, broken], [broken, quiet, loud, on_bar]):
        assert _choose(order, _PLAIN, Tolerance()) is on_bar


def test_choose_breaks_ties_by_success_then_retention_then_order() -> None:
    """Equal attainment: the more successful; equal too, the earlier trial."""
    capped = _trial(1.0, 0.3, 1.0, sim_query=0.4)  # 1 + 1
    exact = _trial(0.8, 0.3, 0.35, sim_query=0.35)  # 1 + 1
    assert _choose([exact, capped], _PLAIN, Tolerance()) is capped
    a = _trial(0.8, 0.3, 0.75, layers=(0, 1))
    b = _trial(0.8, 0.3, 0.5, layers=(2, 3))
    assert _choose([a, b], _PLAIN, Tolerance()) is a and _choose([b, a], _PLAIN, Tolerance()) is b


def test_choose_raises_the_bar_it_is_given() -> None:
    """With target_success 1, success up to 1 counts: the louder trial wins."""
    on_bar = _trial(0.8, 0.1, 0.35, sim_query=0.35)
    loud = _trial(1.0, 0.9, 0.5, sim_query=0.3)  # retention 0.6
    assert _choose([on_bar, loud], _PLAIN, Tolerance()) is on_bar
    assert _choose([on_bar, loud], _PLAIN, Tolerance(), target_success=1.0) is loud


def test_choose_returns_none_without_an_acceptable_trial() -> None:
    """Nothing acceptable (or nothing at all) means no placement."""
    assert _choose([_trial(1.0, 1.0, 0.5, acceptable=False)], _PLAIN, Tolerance()) is None
    assert _choose([], _PLAIN, Tolerance()) is None


def test_calibration_from_hand_made_trials() -> None:
    """apply(), to_markdown() and to_dict() of a Calibration built by hand."""
    trials = [
        _trial(0.5, 0.4, 0.5),
        _trial(0.9, 0.7, 1.0, sim_query=0.4),
        _trial(1.0, 0.9, 0.75, acceptable=False, layers=(2, 3), offensive=0.25, invented=0.5),
    ]
    plain = {
        "joy": {
            "success": 0.25,
            "eps": 0.125,
            "degenerate": 0.0,
            "sim_query": 0.5,
            "retention": 1.0,
            "offensive": 0.0,
            "median_perplexity": 10.0,
        }
    }
    settings = {"queries": 4, "reference_retention": {"joy": 0.93}}
    calibration = Calibration(trials, {"joy": Placement((1, 2), 1.0)}, plain, settings)
    bank = random_bank(4, 8, ("joy", "anger")).with_placements({"anger": Placement([0], 0.4)})
    applied = calibration.apply(bank)
    assert applied.placements == {"joy": Placement((1, 2), 1.0), "anger": Placement([0], 0.4)}
    assert applied.settings["calibration"] == {
        **settings,
        "chosen": {
            "joy": {
                "layers": [1, 2],
                "dose": 1.0,
                "success": 0.9,
                "eps": 0.7,
                "degenerate": 0.0,
                "retention": 0.8,
                "offensive": 0.0,
                "invented": 0.0,
            }
        },
    }
    markdown = calibration.to_markdown()
    assert (
        "| joy | plain | 0 | 0.25 | 0.125 | 1.00 | 0.00 | 0.00 | – | 0.50 | 10.0 | "
        "reference retention 0.93 |" in markdown
    )  # a plain row from before invented words were measured
    assert (
        "| joy | 1–2 | 1 | 0.90 | 0.700 | 0.80 | 0.00 | 0.00 | 0.00 | 0.40 | 10.0 | **chosen** |"
        in markdown
    )
    assert (
        "| joy | 1–2 | 0.5 | 0.50 | 0.400 | 1.00 | 0.00 | 0.00 | 0.00 | 0.50 | 10.0 |  |"
        in markdown
    )
    assert (
        "| joy | 2–3 | 0.75 | 1.00 | 0.900 | 1.00 | 0.25 | 0.00 | 0.50 | 0.50 | 10.0 | "
        "outside tolerance |" in markdown
    )
    payload = calibration.to_dict()
    assert payload["placements"] == {"joy": {"layers": [1, 2], "dose": 1.0}}
    assert payload["plain"] == plain and payload["settings"] == settings
    assert [t["retention"] for t in payload["trials"]] == [1.0, 0.8, 1.0]
    assert [t["offensive"] for t in payload["trials"]] == [0.0, 0.0, 0.25]
    assert [t["invented"] for t in payload["trials"]] == [0.0, 0.0, 0.5]
    assert [t["success"] for t in payload["trials"]] == [0.5, 0.9, 1.0]


# --- tolerance ------------------------------------------------------------------------

_PLAIN = {
    "degenerate": 0.25,
    "median_perplexity": 10.0,
    "sim_query": 0.5,
    "offensive": 0.0,
    "invented": 0.125,
}


def _row(**changes: float) -> dict[str, Any]:
    return {**_PLAIN, "emotion": "joy", "success": 1.0, **changes}


def test_tolerance_defaults() -> None:
    """Topic retention ≥ 0.7, offensive ≤ plain + 0.02, degeneration ≤ plain + 0.05,
    invented ≤ plain + 0.05, median perplexity ≤ 10× plain."""
    assert Tolerance() == Tolerance(
        max_degenerate_increase=0.05,
        max_perplexity_ratio=10.0,
        min_topic_ratio=0.7,
        max_offensive_increase=0.02,
        max_invented_increase=0.05,
    )


def test_tolerance_accepts_rows_at_each_limit() -> None:
    """Plain itself and rows exactly at each default limit are acceptable (inclusive)."""
    tolerance = Tolerance()
    assert tolerance.accepts(_row(), _PLAIN)
    assert tolerance.accepts(_row(sim_query=0.35), _PLAIN)  # retention 0.7
    assert tolerance.accepts(_row(offensive=0.02), _PLAIN)  # plain + 0.02
    assert tolerance.accepts(_row(degenerate=0.3), _PLAIN)  # plain + 0.05
    assert tolerance.accepts(_row(invented=0.175), _PLAIN)  # plain + 0.05
    assert tolerance.accepts(_row(invented=0.4), {**_PLAIN, "invented": 0.35})  # 8/20 vs 7/20
    assert tolerance.accepts(_row(median_perplexity=100.0), _PLAIN)  # exactly 10x
    assert tolerance.accepts(_row(degenerate=0.0, median_perplexity=1.0, sim_query=0.9), _PLAIN)
    assert Tolerance(max_degenerate_increase=0.25).accepts(_row(degenerate=0.5), _PLAIN)
    assert Tolerance(max_offensive_increase=0.5).accepts(_row(offensive=0.5), _PLAIN)
    assert Tolerance(max_invented_increase=0.5).accepts(_row(invented=0.625), _PLAIN)


@pytest.mark.parametrize(
    ("changes", "tolerance"),
    [
        ({"sim_query": 0.34}, Tolerance()),  # retention 0.68 < 0.7: off topic
        ({"sim_query": 0.4}, Tolerance(min_topic_ratio=0.9)),
        ({"offensive": 0.03}, Tolerance()),  # +0.03 > +0.02
        ({"offensive": 0.5}, Tolerance(max_offensive_increase=0.25)),
        ({"degenerate": 0.3125}, Tolerance()),  # +0.0625 > +0.05
        ({"degenerate": 0.625}, Tolerance(max_degenerate_increase=0.25)),
        ({"invented": 0.185}, Tolerance()),  # +0.06 > +0.05
        ({"invented": 1.0}, Tolerance()),
        ({"invented": 0.5}, Tolerance(max_invented_increase=0.25)),
        ({"median_perplexity": 100.5}, Tolerance()),  # > 10x
        ({"median_perplexity": 25.0}, Tolerance(max_perplexity_ratio=2.0)),
        ({"median_perplexity": math.nan}, Tolerance()),  # empty answers: no perplexity
    ],
)
def test_tolerance_rejects_rows_beyond_a_limit(
    changes: dict[str, float], tolerance: Tolerance
) -> None:
    """Each limit alone rejects a row that is otherwise identical to plain."""
    assert not tolerance.accepts(_row(**changes), _PLAIN)
    assert tolerance.accepts(_row(), _PLAIN)


def test_an_unmeasured_offensive_rate_is_not_held_against_a_row() -> None:
    """Reports from before the offensive judge: no rate (nan or absent), no offensive limit."""
    without = {k: v for k, v in _PLAIN.items() if k != "offensive"}
    assert Tolerance().accepts(_row(offensive=math.nan), _PLAIN)
    assert Tolerance().accepts(_row(offensive=1.0), {**_PLAIN, "offensive": math.nan})
    assert Tolerance().accepts({k: v for k, v in _row().items() if k != "offensive"}, without)


def test_an_unmeasured_invented_rate_is_not_held_against_a_row() -> None:
    """Reports from before invented words were judged: no rate (nan or absent), no limit;
    measured on both sides, the same row is refused."""
    salad = _row(invented=1.0)
    assert not Tolerance().accepts(salad, _PLAIN)
    assert Tolerance().accepts(salad, {**_PLAIN, "invented": math.nan})
    assert Tolerance().accepts(_row(invented=math.nan), _PLAIN)
    without = {k: v for k, v in _PLAIN.items() if k != "invented"}
    assert Tolerance().accepts(salad, without)
    assert Tolerance().accepts({k: v for k, v in salad.items() if k != "invented"}, _PLAIN)


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doses", [[], [0.0], [-0.5], [0.5, math.nan], [math.inf], [0.5, -1.0, 1.0]]
)
def test_bad_doses_are_rejected(setup: tuple, doses: list[float]) -> None:
    """Doses must be finite and positive, and there must be some."""
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match="doses"):
        calibrate(model, tokenizer, bank, doses=doses, queries=QUERIES, progress=False)


def test_a_trained_banks_layer_weights_are_never_silently_dropped(
    setup: tuple, embedder: SentenceEmbedder, scorer: NadeScorer
) -> None:
    """Calibration spreads a dose evenly over a band; a trained placement's learned weights
    would be lost, so such a bank is refused (its emotions without them still calibrate)."""
    model, tokenizer, bank = setup
    trained = bank.with_placements({"joy": Placement((1, 2), 0.5, weights=(0.8, 0.2))})
    with pytest.raises(ValueError, match=r"\[.joy.\] share their dose.*train --alpha"):
        calibrate(model, tokenizer, trained, queries=QUERIES, progress=False)
    _calibrate((model, tokenizer, trained.without_placements()), embedder, scorer=scorer)


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5, math.nan, True, "0.8"])
def test_bad_target_success_is_rejected(setup: tuple, target: float) -> None:
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match="target_success"):
        calibrate(model, tokenizer, bank, target_success=target, queries=QUERIES, progress=False)


@pytest.mark.parametrize(
    ("option", "value"),
    [("batch_size", -1), ("batch_size", 0), ("batch_size", 2.0), ("num_queries", -1)],
)
def test_counts_below_one_are_refused(setup: tuple, option: str, value: object) -> None:
    """A batch size of -1 generated nothing and chose nothing (the recipe was then deleted
    from the file); -1 queries silently dropped the last one."""
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match=f"{option} must be a positive integer"):
        calibrate(model, tokenizer, bank, progress=False, **{option: value})


@pytest.mark.parametrize(
    ("option", "value"),
    [("personas", [1]), ("personas", []), ("instructions", ["yes"]), ("positions", ["everywhere"])],
)
def test_bad_switches_are_rejected(setup: tuple, option: str, value: list[Any]) -> None:
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match=option):
        calibrate(model, tokenizer, bank, queries=QUERIES, progress=False, **{option: value})


@pytest.mark.parametrize("bands", [[[2, 3]], [[-1, 0]], [[0, 1], [5]], [[]]])
def test_bands_out_of_range_are_rejected(setup: tuple, bands: list[list[int]]) -> None:
    """Every band must be non-empty and inside the bank's layers (3 here)."""
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match="bands"):
        calibrate(model, tokenizer, bank, bands=bands, queries=QUERIES, progress=False)


# --- command line ---------------------------------------------------------------------


def test_cli_calibrate_writes_placements_and_reports(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    default_judge: WordJudge,
) -> None:
    """`emovec calibrate` writes the calibrated bank to --out (leaving --vectors alone) and
    the trials to DIR/calibration.md and DIR/calibration.json, the Pareto front to
    DIR/front.png, and every answer to DIR/answers.json."""
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    vectors = tmp_path / "v.safetensors"
    random_bank(3, 32, ("joy", "anger"), layers=[0]).save(vectors)
    before = vectors.read_bytes()
    out = tmp_path / "calibrated.safetensors"
    report = tmp_path / "report"
    code = main(
        [
            "calibrate",
            "--model",
            str(folder),
            "--vectors",
            str(vectors),
            "--out",
            str(out),
            "--bands",
            "1-2",
            "--doses",
            "0.5",
            "--queries",
            "2",
            "--max-new-tokens",
            "3",
            "--repetition-penalty",
            "1.1",
            "--max-degenerate-increase",
            "1",
            "--min-topic-ratio",
            "0.05",
            "--max-offensive-increase",
            "1",
            "--max-invented-increase",
            "0.5",
            "--report",
            str(report),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert vectors.read_bytes() == before
    assert {p.name for p in report.iterdir()} == {
        "calibration.md",
        "calibration.json",
        "front.png",
        "answers.json",
    }
    assert (report / "front.png").read_bytes().startswith(b"\x89PNG")
    answers = EvaluationReport.from_json(report / "answers.json")
    assert {r["target"] for r in answers.records} == {"joy", "anger"}
    assert {r["recipe"] for r in answers.records} == {"plain", "1-2@0.5"}
    assert len({r["query"] for r in answers.records}) == 2
    payload = json.loads((report / "calibration.json").read_text(encoding="utf-8"))
    assert payload["settings"]["bands"] == [[1, 2]]
    assert payload["settings"]["doses"] == [0.5] and payload["settings"]["queries"] == 2
    assert payload["settings"]["decoding"]["max_new_tokens"] == 3
    assert payload["settings"]["decoding"]["repetition_penalty"] == 1.1
    assert payload["settings"]["tolerance"]["max_degenerate_increase"] == 1.0
    assert payload["settings"]["tolerance"]["min_topic_ratio"] == 0.05
    assert payload["settings"]["tolerance"]["max_offensive_increase"] == 1.0
    assert payload["settings"]["tolerance"]["max_invented_increase"] == 0.5
    assert payload["settings"]["tolerance"]["max_perplexity_ratio"] == 10.0  # the default
    assert {(t["emotion"], tuple(t["layers"]), t["dose"]) for t in payload["trials"]} == {
        ("joy", (1, 2), 0.5),
        ("anger", (1, 2), 0.5),
    }
    markdown = (report / "calibration.md").read_text(encoding="utf-8")
    assert markdown.count("| 1–2 | 0.5 |") == 2
    calibrated = EmotionVectors.load(out)
    expected = {
        t["emotion"]: Placement(t["layers"], t["dose"])
        for t in payload["trials"]
        if t["acceptable"]
    }
    assert expected, "no trial was acceptable: the test would check nothing"
    assert calibrated.placements == expected
    assert {e: p.to_dict() for e, p in calibrated.placements.items()} == payload["placements"]
    assert set(calibrated.settings["calibration"]["chosen"]) == set(expected)
    assert calibrated.recommended_layers == (0,)
    assert f"wrote placements for {sorted(expected)} to {out}" in captured.out


def test_calibrated_repetition_penalty_is_read_from_the_record(
    setup: tuple, calibration: Calibration
) -> None:
    """A calibrated bank says which repetition penalty its placements hold for; others: 1."""
    _, _, bank = setup
    assert calibrated_repetition_penalty(bank) == 1.0
    assert calibrated_repetition_penalty(calibration.apply(bank)) == 1.0
    record = {**calibration.settings, "decoding": {"repetition_penalty": 1.15}}
    assert calibrated_repetition_penalty(bank.with_settings(calibration=record)) == 1.15


class FearScorer:
    """Fear for every non-empty text."""

    emotions: tuple[str, ...] = ("joy", "anger", "fear")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.array([0.1, 0.2, 0.7]), (len(texts), 1))


def test_rescoring_redecides_from_the_kept_answers(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    """Joy wins every answer under the first judge and fear (a rival in the bank) under the
    second: joy's success drops to 0 while fluency and topic stay as they were."""
    first = _calibrate(setup, embedder, scorer=ConstantScorer(), tolerance=RejectAnger())
    assert first.report is not None
    assert {r["recipe"] for r in first.report.records} == {"plain"} | {
        _setting_name(b, d, False) for b in BANDS for d in DOSES
    }
    again = first.rescored(FearScorer())
    assert again.report is not None and again.report.settings["scorer"] == "FearScorer"
    assert [r["answer"] for r in again.report.records] == [
        r["answer"] for r in first.report.records
    ]  # the same answers, judged again
    assert again.settings["scorer"] == "FearScorer" and first.settings["scorer"] == "ConstantScorer"
    assert again.tolerance == first.tolerance  # the custom tolerance is kept: anger stays out
    assert "anger" not in again.placements
    for before, after in zip(first.trials, again.trials, strict=True):
        assert (before.emotion, before.placement.layers, before.placement.dose) == (
            after.emotion,
            after.placement.layers,
            after.placement.dose,
        )
        assert (before.sim_query, before.degenerate) == (after.sim_query, after.degenerate)
        assert after.success == 0.0
        # Empty answers never succeed, so joy's share is that of non-empty answers.
        assert (before.success > 0) == (before.emotion == "joy")


def test_a_calibration_without_answers_cannot_be_rescored() -> None:
    with pytest.raises(ValueError, match="kept no answers"):
        Calibration([], {}).rescored(ConstantScorer())


def test_rescoring_can_tighten_the_tolerance_without_a_new_judge(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    first = _calibrate(setup, embedder, scorer=ConstantScorer())
    strict = first.rescored(tolerance=Tolerance(max_perplexity_ratio=0.0), target_success=1.0)
    assert strict.settings["scorer"] == "ConstantScorer"
    assert strict.settings["tolerance"]["max_perplexity_ratio"] == 0.0
    assert strict.settings["target_success"] == 1.0
    assert not any(t.acceptable for t in strict.trials) and not strict.placements
    assert [t.success for t in strict.trials] == [t.success for t in first.trials]


def test_rescoring_refuses_a_bar_outside_zero_to_one(
    setup: tuple, embedder: SentenceEmbedder
) -> None:
    first = _calibrate(setup, embedder, scorer=ConstantScorer())
    with pytest.raises(ValueError, match="target_success must be in"):
        first.rescored(target_success=-0.1)


def test_calibration_plot_front_shows_every_trial(calibration: Calibration, tmp_path: Path) -> None:
    """One point per trial and the plain answers per emotion, the chosen one marked."""
    points = calibration.front_points()
    assert set(points) == set(EMOTIONS)
    for emotion in EMOTIONS:
        trials = [t for t in calibration.trials if t.emotion == emotion]
        assert len(points[emotion]) == len(trials) + 1
        assert [p.kind for p in points[emotion]].count("plain") == 1
        assert [p.kind for p in points[emotion]].count("chosen") == int(
            emotion in calibration.placements
        )
        assert {p.label for p in points[emotion] if p.kind != "plain"} == {
            f"{b[0]}–{b[-1]} ×{d:g}" for b in BANDS for d in DOSES
        }
    png = calibration.plot_front(tmp_path / "front.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


# --- the grid as one evaluation -------------------------------------------------------


def test_the_whole_grid_is_one_evaluation_with_the_plain_answers_once(
    setup: tuple, embedder: SentenceEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One evaluate call, α = 1, one recipe per setting; the plain rows are generated once
    (one per query), every steered row once, and batches mix settings (rows of different
    doses in one generate call)."""
    evaluations: list[dict[str, Any]] = []
    real_evaluate = calibration_module.evaluate

    def counting_evaluate(*args: Any, **kwargs: Any) -> EvaluationReport:
        evaluations.append(kwargs)
        return real_evaluate(*args, **kwargs)

    calls: list[tuple[int, list[float] | None]] = []
    real_ask = evaluation_module.ask

    def recording_ask(model: Any, tokenizer: Any, queries: Any, *args: Any, **kwargs: Any) -> Any:
        steering = kwargs.get("steering")
        calls.append((len(queries), None if steering is None else list(steering.dose)))
        return real_ask(model, tokenizer, queries, *args, **kwargs)

    monkeypatch.setattr(calibration_module, "evaluate", counting_evaluate)
    monkeypatch.setattr(evaluation_module, "ask", recording_ask)
    result = _calibrate(setup, embedder, scorer=ConstantScorer(), batch_size=5)

    names = {_setting_name(b, d, False) for b in BANDS for d in DOSES}
    assert names == {"0-1@0.5", "0-1@1.0", "1-2@0.5", "1-2@1.0"}
    assert len(evaluations) == 1
    assert evaluations[0]["alphas"] == [1.0] and set(evaluations[0]["recipes"]) == names
    assert all(r.placement is not None for r in evaluations[0]["recipes"].values())
    assert sum(n for n, doses in calls if doses is None) == len(QUERIES)  # plain: once
    steered = [d for _, doses in calls if doses is not None for d in doses]
    per_dose = len(QUERIES) * len(EMOTIONS) * len(BANDS)
    assert sorted(steered) == pytest.approx(sorted(d for d in DOSES for _ in range(per_dose)))
    assert all(n <= 5 for n, _ in calls)
    assert len(calls) == math.ceil(len(QUERIES) / 5) + math.ceil(len(steered) / 5)
    assert any(doses and max(doses) - min(doses) > 0.1 for _, doses in calls)
    assert len(result.trials) == len(EMOTIONS) * len(BANDS) * len(DOSES)


def test_each_trial_answers_as_its_placement_steered_alone(
    setup: tuple, calibration: Calibration
) -> None:
    """Per-row placements are exact: a trial's answers are those of its emotion steered at
    α = 1 alone with the trial's placement, which is α = dose / RELATIVE_DOSE at its band."""
    model, tokenizer, bank = setup
    report = calibration.report
    assert report is not None
    plain = {r["query"]: r["answer"] for r in report.records if r["recipe"] == "plain"}
    changed = 0
    for trial in calibration.trials:
        name = _setting_name(trial.placement.layers, trial.placement.dose, False)
        got = {
            r["query"]: r["answer"]
            for r in report.records
            if r["recipe"] == name and r["target"] == trial.emotion
        }
        placed = bank.with_placements({trial.emotion: trial.placement})
        with steer(model, placed, max_dose=math.inf, **{trial.emotion: 1.0}) as steering:
            alone = _answers_alone(model, tokenizer, steering)
        assert [got[q] for q in QUERIES] == alone, trial
        changed += sum(answer != plain[q] for q, answer in zip(QUERIES, alone, strict=True))
        banded = steer(
            model,
            bank,
            layers=list(trial.placement.layers),
            max_dose=math.inf,
            **{trial.emotion: trial.placement.dose / RELATIVE_DOSE},
        )
        assert steering.layers == banded.layers == list(trial.placement.layers)
        for mine, old in zip(steering.deltas(), banded.deltas(), strict=True):
            torch.testing.assert_close(mine, old, rtol=1e-6, atol=1e-7)
    assert changed > 0  # steering changed answers: not plain compared with plain


def _answers_alone(
    model: torch.nn.Module, tokenizer: Any, steering: Any, **options: Any
) -> list[str]:
    """QUERIES answered in one batch of DECODING's length under the applied steering."""
    return generate_answers(
        model,
        tokenizer,
        QUERIES,
        max_new_tokens=DECODING.max_new_tokens,
        batch_size=len(QUERIES),
        steering=steering,
        **options,
    )


def _saved(
    result: Calibration, bank: EmotionVectors, folder: Path
) -> tuple[EmotionVectors, EvaluationReport]:
    """The calibrated bank saved and loaded again (its placements kept), and the report of
    the calibration's answers."""
    loaded = EmotionVectors.load(result.apply(bank).save(folder / "calibrated.safetensors"))
    assert loaded.placements == result.placements
    assert result.report is not None
    return loaded, result.report


def _answers_of(report: EvaluationReport, recipe: str, emotion: str) -> dict[str, str]:
    """Each query's answer under one setting (recipe name) for one emotion."""
    return {
        r["query"]: r["answer"]
        for r in report.records
        if r["recipe"] == recipe and r["target"] == emotion
    }


@dataclass(frozen=True)
class OnlySettingsEndingIn(Tolerance):
    """Accepts only the settings whose recipe name ends in ``suffix`` (e.g.
    ``"+instruction"``: those that asked for the emotion in the query)."""

    suffix: str = ""

    def fluent(self, row: Mapping[str, Any], plain: Mapping[str, Any]) -> bool:
        return str(row["recipe"]).endswith(self.suffix)


def test_instructions_try_every_setting_with_and_without_and_store_the_chosen_one(
    setup: tuple, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    """instructions=(False, True) tries each band × dose with and without the emotion's
    instruction; a chosen instructed setting stores PROMPT_INSTRUCTIONS[emotion] in the
    placement, the saved bank returns it from instruction(), and steering that bank with it
    gives the trial's answers again."""
    model, tokenizer, bank = setup
    result = _calibrate(
        setup,
        embedder,
        scorer=ConstantScorer(),
        instructions=(False, True),
        tolerance=OnlySettingsEndingIn(suffix="+instruction"),
    )
    assert len(result.trials) == 2 * len(EMOTIONS) * len(BANDS) * len(DOSES)
    for emotion in EMOTIONS:
        text = PROMPT_INSTRUCTIONS[emotion]
        tried = [
            (t.placement.layers, t.placement.dose, t.placement.instruction)
            for t in result.trials
            if t.emotion == emotion
        ]
        assert tried == [(b, d, i) for b in BANDS for d in DOSES for i in (None, text)]
        mine = [t for t in result.trials if t.emotion == emotion]
        assert [t.acceptable for t in mine] == [t.placement.instruction is not None for t in mine]
    assert result.settings["instructions"] == [False, True]
    assert result.settings["instruction_texts"] == {e: PROMPT_INSTRUCTIONS[e] for e in EMOTIONS}
    assert set(result.placements) == set(EMOTIONS)
    assert {e: p.instruction for e, p in result.placements.items()} == {
        e: PROMPT_INSTRUCTIONS[e] for e in EMOTIONS
    }

    loaded, report = _saved(result, bank, tmp_path)
    chosen = loaded.settings["calibration"]["chosen"]
    for emotion in EMOTIONS:
        assert loaded.instruction(emotion) == PROMPT_INSTRUCTIONS[emotion]
        assert chosen[emotion]["instruction"] == PROMPT_INSTRUCTIONS[emotion]
    assert loaded.instruction("fear") is None  # not calibrated

    for emotion, placement in result.placements.items():
        name = _setting_name(placement.layers, placement.dose, True)
        got = _answers_of(report, name, emotion)
        asked = [Asking.of({emotion: 1.0}, loaded.placements).user_turn(q) for q in QUERIES]
        assert asked == [f"{q} {PROMPT_INSTRUCTIONS[emotion]}" for q in QUERIES]
        chat = steer(model, loaded, max_dose=math.inf, tokenizer=tokenizer, **{emotion: 1.0})
        alone = chat.answer(
            QUERIES, max_new_tokens=DECODING.max_new_tokens, batch_size=len(QUERIES)
        )
        assert [got[q] for q in QUERIES] == alone, emotion

    markdown = result.to_markdown()
    assert markdown.count(" + instruction |") == len(result.trials) // 2
    assert markdown.count("**chosen**") == len(EMOTIONS)
    labels = {p.label for p in result.front_points()["joy"] if p.kind != "plain"}
    assert labels == {
        f"{b[0]}–{b[-1]} ×{d:g}{i}" for b in BANDS for d in DOSES for i in ("", " + instruction")
    }

    again = result.rescored()  # the same answers and judge decide the same
    assert [(t.placement, t.acceptable, t.success) for t in again.trials] == [
        (t.placement, t.acceptable, t.success) for t in result.trials
    ]
    assert again.placements == result.placements
    default = result.rescored(tolerance=Tolerance())  # re-decided under the default tolerance
    assert default.settings["instruction_texts"] == result.settings["instruction_texts"]
    assert all(
        t.acceptable == Tolerance().fluent(asdict(t), result.plain[t.emotion])
        for t in default.trials
    )


def test_personas_and_positions_are_searched_and_stored(
    setup: tuple, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    """personas=(False, True) × positions=(None, "generated") tries each band × dose four
    ways; a chosen one stores PERSONAS[emotion] and "generated" in the placement, and
    steering the saved bank with that system turn gives the trial's answers again."""
    model, tokenizer, bank = setup
    result = _calibrate(
        setup,
        embedder,
        scorer=ConstantScorer(),
        personas=(False, True),
        positions=(None, "generated"),
        tolerance=OnlySettingsEndingIn(suffix="+persona+generated"),
    )
    assert len(result.trials) == 4 * len(EMOTIONS) * len(BANDS) * len(DOSES)
    ways = [(None, None), (None, "generated"), ("p", None), ("p", "generated")]
    for emotion in EMOTIONS:
        tried = [
            (
                t.placement.layers,
                t.placement.dose,
                t.placement.persona and "p",
                t.placement.positions,
            )
            for t in result.trials
            if t.emotion == emotion
        ]
        assert tried == [(b, d, *w) for b in BANDS for d in DOSES for w in ways]
    assert result.settings["personas"] == [False, True]
    assert result.settings["positions"] == [None, "generated"]
    assert result.settings["persona_texts"] == {e: PERSONAS[e] for e in EMOTIONS}
    assert {e: (p.persona, p.positions) for e, p in result.placements.items()} == {
        e: (PERSONAS[e], "generated") for e in EMOTIONS
    }
    labels = {p.label for p in result.front_points()["joy"] if p.kind == "chosen"}
    assert len(labels) == 1 and labels.pop().endswith(" + persona on generated")

    loaded, report = _saved(result, bank, tmp_path)
    for emotion, placement in result.placements.items():
        assert loaded.persona(emotion) == PERSONAS[emotion]
        name = _setting_name(placement.layers, placement.dose, False, True, "generated")
        got = _answers_of(report, name, emotion)
        with steer(model, loaded, max_dose=math.inf, **{emotion: 1.0}) as steering:
            alone = _answers_alone(
                model, tokenizer, steering, systems=[PERSONAS[emotion]] * len(QUERIES)
            )
        assert [got[q] for q in QUERIES] == alone, emotion


def test_query_guidance_is_searched_and_stored(
    setup: tuple, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    """query_guidance=(None, 2.0) tries each band × dose with and without it; the chosen
    γ is stored in the placement, and the saved bank answers through the one call
    exactly as the trial did."""
    model, tokenizer, bank = setup
    doses = [0.01, 0.02]  # the random bank's norms dwarf the model's: steer gently
    result = _calibrate(
        setup,
        embedder,
        scorer=ConstantScorer(),
        doses=doses,
        query_guidance=(None, 2),
        tolerance=OnlySettingsEndingIn(suffix="+query-2.0"),
    )
    assert len(result.trials) == 2 * len(EMOTIONS) * len(BANDS) * len(doses)
    for emotion in EMOTIONS:
        tried = [
            (t.placement.layers, t.placement.dose, t.placement.query_guidance)
            for t in result.trials
            if t.emotion == emotion
        ]
        assert tried == [(b, d, g) for b in BANDS for d in doses for g in (None, 2.0)]
    assert result.settings["query_guidance"] == [None, 2.0]
    assert {p.query_guidance for p in result.placements.values()} == {2.0}
    labels = {p.label for p in result.front_points()["joy"] if p.kind == "chosen"}
    assert len(labels) == 1 and labels.pop().endswith(", query guidance 2")

    loaded, report = _saved(result, bank, tmp_path)
    for emotion, placement in result.placements.items():
        name = _setting_name(placement.layers, placement.dose, False, False, None, 2.0)
        got = _answers_of(report, name, emotion)
        chat = steer(model, loaded, {emotion: 1.0}, max_dose=math.inf, tokenizer=tokenizer)
        with chat:
            alone = chat.answer(
                QUERIES, max_new_tokens=DECODING.max_new_tokens, batch_size=len(QUERIES)
            )
            unguided = _answers_alone(model, tokenizer, chat)
        assert [got[q] for q in QUERIES] == alone, emotion
        assert alone != unguided, emotion  # the guidance changed the answers: it was applied


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"query_guidance": (0.5,)}, ">= 1"),
        ({"query_guidance": ()}, "query_guidance"),
        ({"query_guidance": (None, 1.5), "positions": (None, "generated")}, "every position"),
    ],
)
def test_bad_query_guidance_is_rejected(
    setup: tuple, embedder: SentenceEmbedder, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _calibrate(setup, embedder, scorer=ConstantScorer(), **options)


@pytest.mark.parametrize("instructions", [(), ("yes",), (1,)])
def test_instructions_must_be_booleans(setup: tuple, instructions: tuple[Any, ...]) -> None:
    model, tokenizer, bank = setup
    with pytest.raises(ValueError, match="instructions"):
        calibrate(
            model, tokenizer, bank, instructions=instructions, queries=QUERIES, progress=False
        )


def test_an_instruction_for_an_emotion_without_one_fails_before_generating(
    setup: tuple, embedder: SentenceEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An emotion PROMPT_INSTRUCTIONS lacks cannot be tried with an instruction: said at once."""
    model, tokenizer, _ = setup
    bank = random_bank(3, 32, ("joy", "wonder"), layers=[2])

    def no_generation(*args: Any, **kwargs: Any) -> list[str]:
        raise AssertionError("generated before checking the instructions")

    monkeypatch.setattr(evaluation_module, "ask", no_generation)
    scorer = ConstantScorer(emotions=("joy", "wonder", "fear"))
    with pytest.raises(ValueError, match="wonder"):
        calibrate(
            model,
            tokenizer,
            bank,
            instructions=(False, True),
            scorer=scorer,
            queries=QUERIES,
            embedder=embedder,
            offensive_judge=JUDGE,
            progress=False,
        )


def test_cli_calibrate_defaults_are_the_library_defaults(
    setup: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every calibrate option the library has a default for reads it from the library, and
    --instructions asks for each setting with and without the instruction."""
    import inspect

    from emovec import _cli_commands

    defaults = inspect.signature(calibrate).parameters
    args = build_parser().parse_args(["calibrate"])
    assert args.doses == list(defaults["doses"].default)
    assert args.queries == defaults["num_queries"].default
    assert args.target_success == defaults["target_success"].default == 0.8
    assert args.batch_size == defaults["batch_size"].default == DEFAULT_BATCH_SIZE
    assert args.max_new_tokens == defaults["decoding"].default.max_new_tokens
    assert args.repetition_penalty == defaults["decoding"].default.repetition_penalty
    assert args.instructions is False and defaults["instructions"].default == (False,)

    seen: list[dict[str, Any]] = []

    def fake_calibrate(*args: Any, **kwargs: Any) -> Calibration:
        seen.append(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(_cli_commands, "_load", lambda args: setup)
    monkeypatch.setattr(calibration_module, "calibrate", fake_calibrate)
    out = str(tmp_path / "out.safetensors")
    assert main(["calibrate", "--out", out]) == 2
    assert main(["calibrate", "--out", out, "--instructions"]) == 2
    assert main(["calibrate", "--out", out, "--query-guidance", "none", "1.3"]) == 2
    assert [k["instructions"] for k in seen] == [(False,), (False, True), (False,)]
    assert [k["query_guidance"] for k in seen] == [[None], [None], [None, 1.3]]
    assert defaults["query_guidance"].default == (None,)
    assert seen[0]["decoding"] == defaults["decoding"].default
    assert seen[0]["batch_size"] == DEFAULT_BATCH_SIZE
