"""Recipes in evaluate(): named ways of making answers emotional, compared in one sweep.

Each recipe's answers must be exactly what that recipe gives when run alone: its placement
steered at its layers and dose, its instruction added to the user's turn, its positions and
method, whatever other recipes share the batch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import build_model, build_tokenizer, random_bank

from emovec import Schedule, steer
from emovec.evaluation import EvaluationReport, Recipe, evaluate
from emovec.evaluation.recipes import PERSONAS, PROMPT_INSTRUCTIONS
from emovec.evaluation.scoring import NadeScorer
from emovec.evaluation.topic import SentenceEmbedder
from emovec.generation import Decoding, generate_answers
from emovec.vectors import EmotionVectors, Placement

pytestmark = pytest.mark.filterwarnings("ignore::emovec.steering.DoseWarning")

QUERIES = ["i walked to the store today", "my sister called me"]
DECODING = Decoding(max_new_tokens=4)


class _NoJudge:
    def flags(self, texts: list[str]) -> np.ndarray:
        return np.zeros(len(texts), dtype=bool)


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, object, EmotionVectors]:
    model = build_model("llama")
    bank = random_bank(
        model.config.num_hidden_layers, model.config.hidden_size, ("joy", "anger"), layers=[1]
    )
    return model, build_tokenizer(), bank


RECIPES = {
    "early": Recipe(placement=Placement((0, 1), 0.4)),
    "late+instruction": Recipe(placement=Placement((1, 2), 0.3), instruct=True),
    "generated": Recipe(positions="generated"),
    "angular": Recipe(method="angular"),
    "persona": Recipe(placement=Placement((1, 2), 0.2), persona=True),
    # Plain for the first 2 answer tokens, then the emotion ramps in (and a strong dose, so
    # that the schedule visibly changes the answer).
    # The question amplified against the instruction alone (context-aware decoding).
    "query-guided": Recipe(placement=Placement((1, 2), 0.3), instruct=True, query_guidance=2.0),
    "ramp": Recipe(
        placement=Placement((1, 2), 2.0), positions="generated", schedule=Schedule(0.0, 2, 1.0, 3)
    ),
}


@pytest.fixture(scope="module")
def report(setup: tuple, scorer: NadeScorer, embedder: SentenceEmbedder) -> EvaluationReport:
    model, tokenizer, bank = setup
    return evaluate(
        model,
        tokenizer,
        bank,
        alphas=[1.0],
        queries=QUERIES,
        decoding=DECODING,
        scorer=scorer,
        embedder=embedder,
        recipes=RECIPES,
        offensive_judge=_NoJudge(),  # type: ignore[arg-type]
        clean=False,
        batch_size=16,
        progress=False,
    )


def _alone(setup: tuple, name: str, emotion: str, query: str) -> str:
    model, tokenizer, bank = setup
    recipe = RECIPES[name]
    placed = bank if recipe.placement is None else bank.with_placements({emotion: recipe.placement})
    instruction = recipe.instruction(placed, emotion)
    asked = query if instruction is None else f"{query} {instruction}"
    system = recipe.system(placed, emotion)
    options = {
        "positions": recipe.positions,
        "method": recipe.method,
        "schedule": recipe.schedule,
        "max_dose": math.inf,
    }
    with steer(model, placed, **{emotion: 1.0}, **options):  # type: ignore[arg-type]
        (answer,) = generate_answers(
            model,
            tokenizer,
            [asked],
            max_new_tokens=DECODING.max_new_tokens,
            clean=False,
            systems=[system],
            query_guidance=recipe.query_guidance,
            query_free=[instruction or ""],
        )
    return answer


def test_each_recipe_answers_as_it_would_alone(setup: tuple, report: EvaluationReport) -> None:
    seen = set()
    for record in report.records:
        if record["recipe"] == "plain":
            continue
        seen.add(record["recipe"])
        expected = _alone(setup, record["recipe"], record["target"], record["query"])
        assert record["answer"] == expected, record["recipe"]
    assert seen == set(RECIPES)


def test_recipes_are_summarised_and_recorded_by_name(report: EvaluationReport) -> None:
    methods = {(row["recipe"], row["emotion"]) for row in report.summary()}
    assert {(name, e) for name in RECIPES for e in ("joy", "anger")} <= methods
    assert report.settings["recipes"]["late+instruction"]["placement"]["layers"] == [1, 2]
    assert report.settings["recipes"]["angular"]["method"] == "angular"
    assert report.settings["recipes"]["ramp"]["schedule"] == {
        "begin": 0.0,
        "hold": 2,
        "end": 1.0,
        "ramp": 3,
    }


def test_a_scheduled_recipe_differs_from_the_same_recipe_unscheduled(
    setup: tuple, report: EvaluationReport
) -> None:
    """The schedule reaches the hooks: held plain at first, the answer starts as plain's."""
    model, tokenizer, bank = setup
    scheduled = {r["query"]: r["answer"] for r in report.records if r["recipe"] == "ramp"}
    plain = {r["query"]: r["answer"] for r in report.records if r["recipe"] == "plain"}
    placed = bank.with_placements({"joy": RECIPES["ramp"].placement})
    query = QUERIES[0]
    with steer(model, placed, joy=1.0, positions="generated", max_dose=math.inf):
        (unscheduled,) = generate_answers(
            model, tokenizer, [query], max_new_tokens=DECODING.max_new_tokens, clean=False
        )
    assert unscheduled != scheduled[query]
    assert scheduled[query].split()[:1] == plain[query].split()[:1]


def test_instruction_comes_from_the_placement_then_the_default(setup: tuple) -> None:
    _, _, bank = setup
    asked = Placement((1,), 0.3, instruction="Sound thrilled.")
    placed = bank.with_placements({"joy": asked})
    assert Recipe().instruction(placed, "joy") == "Sound thrilled."  # the bank as calibrated
    assert Recipe(instruct=False).instruction(placed, "joy") is None
    assert Recipe().instruction(bank, "joy") is None
    assert Recipe(instruct=True).instruction(bank, "anger") == PROMPT_INSTRUCTIONS["anger"]
    assert placed.instruction("joy") == "Sound thrilled." and bank.instruction("joy") is None


def test_recipe_names_and_layers_are_checked(setup: tuple, scorer: NadeScorer) -> None:
    model, tokenizer, bank = setup
    common = {"alphas": [1.0], "queries": QUERIES, "decoding": DECODING, "scorer": scorer}
    with pytest.raises(ValueError, match="names other than"):
        evaluate(model, tokenizer, bank, recipes={"plain": Recipe()}, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        evaluate(model, tokenizer, bank, layers=[1], recipes=RECIPES, **common)  # type: ignore[arg-type]


def test_placement_instruction_round_trips_through_the_file(setup: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, _, bank = setup
    written = Placement((1, 2), 0.3, "Sound furious.", "You are furious.", "generated")
    placed = bank.with_placements({"anger": written, "joy": Placement((1,), 0.2)})
    loaded = EmotionVectors.load(placed.save(tmp_path / "v.safetensors"))
    assert loaded.placements == {"anger": written, "joy": Placement((1,), 0.2)}
    with pytest.raises(ValueError, match="instruction"):
        Placement((1,), 0.3, instruction="  ")


def test_persona_comes_from_the_placement_then_the_default(setup: tuple) -> None:
    _, _, bank = setup
    placed = bank.with_placements({"joy": Placement((1,), 0.3, persona="You are glad.")})
    assert Recipe().system(placed, "joy") == "You are glad."
    assert Recipe(persona=False).system(placed, "joy") is None
    assert Recipe().system(bank, "joy") is None
    assert Recipe(persona=True).system(bank, "anger") == PERSONAS["anger"]
    assert placed.persona("joy") == "You are glad."
