"""Trained emotion vectors: only the vectors learn, a seed reproduces a bank, the bank steers
exactly what was trained and survives its file, bad triples and options are refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import EMOTION_WORDS, FILLER_WORDS, NEUTRAL_WORDS, build_model, build_tokenizer

from emovec import EmotionVectors, extract, steer, train
from emovec.datasets import (
    ResponsePair,
    default_calibration_queries,
    default_queries,
    default_triples,
)
from emovec.layers import training_band
from emovec.training import MIN_TRIPLES, OBJECTIVES

# Small and quick: every test trains for a handful of steps on tiny models, in float32.
FAST = {"steps": 12, "batch_size": 4, "eval_every": 3, "learning_rate": 0.3, "precision": None}


def make_triples(emotion: str, count: int, *, seed: int = 0) -> list[tuple[str, str, str]]:
    """Learnable triples: the emotional answer is made of the emotion's words, the neutral
    one of neutral words, after a query of filler words."""
    rng = random.Random(f"{emotion}-{seed}")
    triples = []
    for _ in range(count):
        query = " ".join(rng.choice(FILLER_WORDS) for _ in range(4))
        emotional = " ".join(rng.choice(EMOTION_WORDS[emotion]) for _ in range(6))
        neutral = " ".join(rng.choice(NEUTRAL_WORDS) for _ in range(6))
        triples.append((query, emotional, neutral))
    return triples


TRIPLES = {"joy": make_triples("joy", 16), "anger": make_triples("anger", 16)}


def _model(arch: str = "llama") -> torch.nn.Module:
    return build_model(arch, num_layers=4, initializer_range=0.2)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_only_the_vectors_learn(arch: str) -> None:
    model = _model(arch)
    model.train()  # a model left in training mode comes back in training mode
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.lm_head.weight.requires_grad_(True)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    bank = train(model, build_tokenizer(), TRIPLES, layers=[1, 2], progress=False, **FAST)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name  # bit for bit
        assert parameter.grad is None, name
        assert parameter.requires_grad == flags[name], name
    assert model.training
    # Something was learned, at the trained band only.
    for emotion in TRIPLES:
        norms = bank.vector(emotion).norm(dim=1)
        assert bool((norms[[1, 2]] > 0).all()) and float(norms[[0, 3]].abs().sum()) == 0.0
        record = bank.settings["training"][emotion]
        assert record["best_step"] > 0
        assert record["held_out_loss"] < record["held_out_history"][0]


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_lowers_its_held_out_loss(objective: str) -> None:
    bank = train(_model(), build_tokenizer(), TRIPLES, objective=objective, progress=False, **FAST)
    assert bank.settings["objective"] == objective
    for emotion in TRIPLES:
        record = bank.settings["training"][emotion]
        assert record["held_out_loss"] < record["held_out_history"][0]


def _plain_text_shift(model: torch.nn.Module, bank: EmotionVectors, texts: list[str]) -> float:
    """Mean KL from the unsteered model's next-token distributions to joy's at α = 1."""
    tokenizer = build_tokenizer()
    ids = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**ids).logits.log_softmax(-1)
        with steer(model, bank, joy=1.0):
            steered = model(**ids).logits.log_softmax(-1)
    kl = (plain.exp() * (plain - steered)).sum(-1)
    return float((kl * ids["attention_mask"]).sum() / ids["attention_mask"].sum())


def test_the_kl_term_keeps_plain_text_closer_to_the_unsteered_model() -> None:
    model = _model()
    triples = {"joy": TRIPLES["joy"]}
    neutral = [n for _, _, n in make_triples("joy", 8, seed=1)]
    free = train(model, build_tokenizer(), triples, objective="lm", progress=False, **FAST)
    kept = train(
        model,
        build_tokenizer(),
        triples,
        objective="lm+kl",
        kl_weight=2.0,
        progress=False,
        **FAST,
    )
    assert kept.settings["kl_weight"] == 2.0
    assert _plain_text_shift(model, kept, neutral) < 0.5 * _plain_text_shift(model, free, neutral)


def test_distillation_learns_from_the_instruction_it_is_given() -> None:
    triples = {"pride": make_triples("joy", 8)}
    with pytest.raises(ValueError, match="instruction for \\['pride'\\]"):
        train(_model(), build_tokenizer(), triples, objective="lm+distill", **FAST)
    bank = train(
        _model(),
        build_tokenizer(),
        triples,
        objective="lm+distill",
        instructions={"pride": "Answer as someone proud."},
        progress=False,
        **FAST,
    )
    assert bank.settings["instructions"] == {"pride": "Answer as someone proud."}
    record = bank.settings["training"]["pride"]
    assert record["held_out_loss"] < record["held_out_history"][0]


def test_at_alpha_one_steer_adds_exactly_the_trained_vectors(tmp_path: Path) -> None:
    model, tokenizer = _model(), build_tokenizer()
    bank = train(model, tokenizer, TRIPLES, layers=[1, 2, 3], progress=False, **FAST)
    path = bank.save(tmp_path / "trained.safetensors")
    loaded = EmotionVectors.load(path)
    for emotion in TRIPLES:
        assert torch.equal(loaded.vector(emotion), bank.vector(emotion))
        assert loaded.placements[emotion] == bank.placements[emotion]
        steering = steer(model, loaded, {emotion: 1.0})
        assert steering.layers == [1, 2, 3]
        for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
            torch.testing.assert_close(delta, bank.vector(emotion)[layer], rtol=1e-5, atol=1e-6)
    assert loaded.settings == bank.settings
    # Arithmetic and rows work on trained banks as on any other.
    mix = steer(model, 0.5 * loaded["joy"] - 0.25 * loaded["anger"])
    expected = 0.5 * bank.vector("joy")[2] - 0.25 * bank.vector("anger")[2]
    torch.testing.assert_close(mix.deltas()[1], expected, rtol=1e-5, atol=1e-6)


def test_the_same_seed_gives_the_same_bank_and_another_seed_another() -> None:
    tokenizer = build_tokenizer()
    first = train(_model(), tokenizer, TRIPLES, seed=3, progress=False, **FAST)
    again = train(_model(), tokenizer, TRIPLES, seed=3, progress=False, **FAST)
    other = train(_model(), tokenizer, TRIPLES, seed=4, progress=False, **FAST)
    for emotion in TRIPLES:
        assert torch.equal(first.vector(emotion), again.vector(emotion))
        assert not torch.equal(first.vector(emotion), other.vector(emotion))
    untimed = lambda bank: {  # noqa: E731
        **bank.settings,
        "training": {
            e: {k: v for k, v in record.items() if k != "seconds"}
            for e, record in bank.settings["training"].items()
        },
    }
    assert untimed(first) == untimed(again)


def test_the_shipped_emotions_share_one_yardstick() -> None:
    """Trained alone or together, the shipped emotions read their hidden norms over every
    shipped triple (their questions differ): a bank trained for joy alone doses it, and
    scales its learning rate, as the whole shipped bank does."""
    model, tokenizer = _model(), build_tokenizer()
    joy = train(model, tokenizer, emotions=["joy"], progress=False, **FAST)
    fear = train(model, tokenizer, emotions=["fear"], progress=False, **FAST)
    torch.testing.assert_close(joy.hidden_norms, fear.hidden_norms, rtol=0, atol=0)
    mine = train(model, tokenizer, TRIPLES, progress=False, **FAST)
    assert not torch.equal(mine.hidden_norms, joy.hidden_norms)  # the caller's own triples


def test_the_hidden_norms_are_extractions() -> None:
    """Training reads each distinct neutral answer once, weighed by the pairs it stands for
    (the shipped answers share theirs across emotions): the norms extraction reads."""
    model, tokenizer = _model(), build_tokenizer()
    pairs = zip(TRIPLES["joy"], TRIPLES["anger"], strict=True)
    anger = [(q, e, n) for (q, _, n), (_, e, _) in pairs]
    shared = {
        "joy": [ResponsePair(*t) for t in TRIPLES["joy"]],
        "anger": [ResponsePair(*t) for t in anger + make_triples("anger", 4, seed=1)],
    }
    trained = train(model, tokenizer, shared, progress=False, **FAST).hidden_norms
    read = extract(model, tokenizer, shared, reading="response", progress=False).hidden_norms
    torch.testing.assert_close(trained, read, rtol=1e-5, atol=0)
    distinct = {"joy": shared["joy"], "anger": shared["anger"][-4:]}  # each neutral once
    once = extract(model, tokenizer, distinct, reading="response", progress=False).hidden_norms
    assert not torch.allclose(trained, once, rtol=1e-5, atol=0)  # a shared one weighs twice


def test_rank1_vectors_share_one_direction() -> None:
    bank = train(
        _model(), build_tokenizer(), TRIPLES, layers=[0, 1, 2], parameterization="rank1",
        progress=False, **FAST,
    )  # fmt: skip
    rows = bank.vector("joy")[[0, 1, 2]]
    unit = rows / rows.norm(dim=1, keepdim=True)
    cosines = (unit @ unit.T).abs()
    torch.testing.assert_close(cosines, torch.ones(3, 3), rtol=0, atol=1e-5)


def test_the_file_records_how_the_bank_was_trained() -> None:
    bank = train(_model(), build_tokenizer(), TRIPLES, seed=7, progress=False, **FAST)
    settings = bank.settings
    assert settings["estimator"] == "trained" and settings["seed"] == 7
    assert settings["steps"] == FAST["steps"] and settings["objective"] == "lm"
    assert len(settings["data_sha256"]) == 64
    assert settings["training"]["joy"]["triples"] == 16
    assert settings["training"]["joy"]["held_out"] == 3  # a fifth of 16, rounded
    changed = {**TRIPLES, "joy": TRIPLES["joy"][:-1]}
    other = train(_model(), build_tokenizer(), changed, seed=7, progress=False, **FAST)
    assert other.settings["data_sha256"] != settings["data_sha256"]


def test_the_default_band_is_a_third_of_the_way_up() -> None:
    assert training_band(30) == list(range(10, 19))
    assert training_band(18) == list(range(6, 11))
    assert training_band(4) == [1]
    assert training_band(15) == list(range(5, 10))  # half up: 4.5 layers wide is 5
    assert training_band(1) == [0]


@pytest.mark.parametrize(
    ("triples", "message"),
    [
        ({"joy": make_triples("joy", MIN_TRIPLES - 1)}, "at least 5"),
        ({"joy": [*make_triples("joy", 6), ("q", "", "flat")]}, "empty"),
        ({"joy": [*make_triples("joy", 6), make_triples("joy", 6)[0]]}, "repeats"),
        ({"joy": [*make_triples("joy", 6), ("q", "happy")]}, "three strings"),
        ({"joy": [*make_triples("joy", 6), ("q", "happy", 3)]}, "three strings"),
        ({"joy": [*make_triples("joy", 6), "happy"]}, "three strings"),
        ({"joy": []}, "at least 5|no pairs"),
        ({}, "No pairs"),
    ],
)
def test_bad_triples_are_refused(triples: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(_model(), build_tokenizer(), triples, progress=False, **FAST)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"objective": "dpo"}, "objective"),
        ({"parameterization": "full"}, "parameterization"),
        ({"steps": 0}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"beta": 0}, "beta"),
        ({"kl_weight": float("inf")}, "kl_weight"),
        ({"held_out": 1.0}, "held_out"),
        ({"eval_every": 0}, "eval_every"),
        ({"layers": [9]}, "out of range"),
    ],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train(_model(), build_tokenizer(), TRIPLES, progress=False, **{**FAST, **options})


def test_bfloat16_autocast_trains_float32_vectors() -> None:
    bank = train(
        _model(),
        build_tokenizer(),
        TRIPLES,
        progress=False,
        **{**FAST, "precision": torch.bfloat16},
    )
    assert bank.vector("joy").dtype == torch.float32
    assert bank.settings["precision"] == "bfloat16"
    record = bank.settings["training"]["joy"]
    assert record["held_out_loss"] < record["held_out_history"][0]


def test_the_shipped_triples_ask_neither_calibration_nor_evaluation_queries() -> None:
    normalise = lambda q: " ".join(q.casefold().split())  # noqa: E731
    asked = {normalise(p.query) for pairs in default_triples().values() for p in pairs}
    assert len(asked) >= 400
    assert not asked & {normalise(q) for q in default_queries()}
    assert not asked & {normalise(q) for q in default_calibration_queries()}
