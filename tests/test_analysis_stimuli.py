"""Emotional stimuli: shipped records, placement, stimulus vectors, label scoring and the
stimulus experiment's report, on tiny random models."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Literal

import pytest
import torch
from conftest import VOCAB, build_model, build_tokenizer, capture_outputs, decoder_blocks
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec import steer
from emovec._files import NotWritableError
from emovec.analysis.experiment import (
    Condition,
    add_stimuli_parser,
    main_stimuli,
    run_experiment,
    standard_error,
)
from emovec.analysis.stimuli import (
    Stimulus,
    apply,
    stimuli,
    stimulus,
    stimulus_name,
    stimulus_pairs,
    stimulus_vectors,
)
from emovec.analysis.tasks import ANSWER_CUE, TaskItem, label_scores, sample_correct, task_items

TASK = "Is this sentence positive or negative?\nThe film was great."


# --- shipped stimuli and placement ------------------------------------------------------


def test_shipped_stimuli_have_their_rules_and_theories() -> None:
    ep, ea = stimuli("EP"), stimuli("EA")
    assert [s.id for s in ep] == [f"EP{i:02d}" for i in range(1, 12)]
    assert [s.id for s in ea] == [f"EA{i:02d}" for i in range(1, 23)]
    assert {s.side for s in ep} == {"after"} and {s.side for s in ea} == {"before"}
    assert stimulus("EP02").text == "This is very important to my career."
    assert stimulus("ea17").text == "A child is laughing joyfully."
    assert "social_cognitive" in stimulus("EP09").theories
    assert set(stimulus("EP07").theories) == {"social_cognitive", "cognitive_emotion_regulation"}
    assert stimulus("EP06").combines == ("EP01", "EP02", "EP03")
    assert stimulus("EA22").arousal_rank == 1 and stimulus("EA01").arousal_rank is None


def test_ep_goes_after_the_task_and_ea_before() -> None:
    assert apply(TASK, "EP02") == TASK + " This is very important to my career."
    assert apply(TASK, "EA01") == "Your friend Bob is sick. " + TASK
    assert apply("  " + TASK + "\n", []) == TASK


def test_combined_stimuli_keep_their_order_on_each_side() -> None:
    ep01, ep02 = stimulus("EP01").text, stimulus("EP02").text
    ea01, ea02 = stimulus("EA01").text, stimulus("EA02").text
    combined = apply(TASK, ["EA02", "EP02", "EA01", "EP01"])
    assert combined == f"{ea02} {ea01} {TASK} {ep02} {ep01}"
    assert stimulus_name(["EP02", "ep01"]) == "ep02_ep01"


def test_bad_stimuli_are_refused_with_a_remedy() -> None:
    with pytest.raises(KeyError, match="EP01–EP11"):
        apply(TASK, "EP99")
    with pytest.raises(ValueError, match="twice"):
        apply(TASK, ["EP01", "ep01"])
    with pytest.raises(ValueError, match="non-empty prompt"):
        apply("  ", "EP01")
    with pytest.raises(ValueError, match="side"):
        Stimulus("X", "text", "middle")  # type: ignore[arg-type]


# --- stimulus vectors ---------------------------------------------------------------------

PROMPTS = ["i walked to the park", "she cooked soup at home", "we saw a bird in the garden"]
AFTER = Stimulus("XP1", "i was very happy today .", "after")
BEFORE = Stimulus("XA1", "the dog was afraid .", "before")


def _block_outputs(model: nn.Module, text: str) -> list[torch.Tensor]:
    """Per layer ``[tokens, hidden]``: HF's hidden states, except the last layer's, which HF
    gives after the final norm; that one from a hook on the block."""
    tokenizer = build_tokenizer()
    encoded = tokenizer(text, return_tensors="pt")
    blocks = list(decoder_blocks(model, "llama"))
    with torch.no_grad(), capture_outputs(blocks) as seen:
        hidden = model(**encoded, output_hidden_states=True).hidden_states
    layers = [hidden[i + 1][0] for i in range(len(blocks) - 1)]
    return [*layers, seen[len(blocks) - 1][0]]


@pytest.mark.parametrize("reading", ["mean", "last"])
def test_stimulus_vector_is_the_hand_computed_mean_difference(
    tokenizer: PreTrainedTokenizerFast, reading: Literal["mean", "last"]
) -> None:
    model = build_model("llama", num_layers=3)
    bank = stimulus_vectors(
        model,
        tokenizer,
        PROMPTS,
        [AFTER, BEFORE, [BEFORE, AFTER]],
        reading=reading,
        progress=False,
    )
    assert bank.emotions == ["xp1", "xa1", "xa1_xp1"]

    def read(text: str) -> torch.Tensor:  # [layers, hidden]; position 0 is <bos>
        per_layer = _block_outputs(model, text)
        return torch.stack([h[1:].mean(0) if reading == "mean" else h[-1] for h in per_layer])

    for name, which in (("xp1", AFTER), ("xa1", BEFORE), ("xa1_xp1", [BEFORE, AFTER])):
        expected = torch.stack(
            [read(pair.emotional) - read(pair.neutral) for pair in stimulus_pairs(PROMPTS, which)]
        ).mean(0)
        torch.testing.assert_close(bank.vector(name), expected, rtol=1e-4, atol=1e-5)
    assert bank.settings["source"] == "stimuli"


# --- scoring --------------------------------------------------------------------------------


def _planted(label: str, bias: float = 40.0) -> nn.Module:
    """A tiny llama whose LM head favours ``label``'s token by ``bias`` logits."""
    model = build_model("llama", num_layers=2)
    head = nn.Linear(32, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[VOCAB[label]] = bias
    model.lm_head = head
    return model


def test_label_scores_are_the_log_likelihoods_of_full_sequences(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = build_model("llama", num_layers=2)
    contexts = ["i was at home" + ANSWER_CUE, "the dog ran" + ANSWER_CUE]
    labels = [["happy", "happy glad", "sad"], ["angry", "calm"]]
    scores = label_scores(model, tokenizer, contexts, labels, batch_size=2)
    for context, names, got in zip(contexts, labels, scores, strict=True):
        for k, name in enumerate(names):
            ctx = tokenizer(context)["input_ids"]
            lab = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ctx + lab])).logits[0].double()
            logp = logits.log_softmax(-1)
            want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(lab))
            assert math.isclose(float(got[k]), want, rel_tol=1e-6, abs_tol=1e-6)


def test_scoring_picks_a_planted_label(tokenizer: PreTrainedTokenizerFast) -> None:
    model = _planted("glad")
    contexts = [f"{p}{ANSWER_CUE}" for p in PROMPTS]
    scores = label_scores(model, tokenizer, contexts, [["happy", "glad", "sad"]] * 3)
    assert [int(s.argmax()) for s in scores] == [1, 1, 1]
    shares = sample_correct(scores, [1, 1, 1], temperature=1.0, draws=4)
    assert shares == [1.0, 1.0, 1.0]


def test_sampling_follows_the_temperature() -> None:
    scores = [torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)] * 200
    cold = sample_correct(scores, [0] * 200, temperature=0.05, draws=2, seed=1)
    hot = sample_correct(scores, [0] * 200, temperature=1e3, draws=2, seed=1)
    assert sum(cold) / 200 == 1.0
    assert abs(sum(hot) / 200 - 1 / 3) < 0.1
    assert hot == sample_correct(scores, [0] * 200, temperature=1e3, draws=2, seed=1)
    with pytest.raises(ValueError, match="greedy"):
        sample_correct(scores, [0] * 200, temperature=0.0, draws=2)


def test_standard_error_formula() -> None:
    assert standard_error([1, 0, 1, 1]) == pytest.approx(0.25)  # √(p(1−p)/(n−1)), p = .75
    assert standard_error([0.5, 1.0, 0.0]) == pytest.approx(math.sqrt(0.25 / 3))
    assert standard_error([1.0]) is None


def test_shipped_tasks_are_balanced_and_valid() -> None:
    every = task_items()
    assert len(every) == 144 and {i.task for i in every} == {"sentiment", "topic", "arithmetic"}
    some = task_items(per_task=20)
    sentiment = [i.answer for i in some if i.task == "sentiment"]
    topic = [i.answer for i in some if i.task == "topic"]
    assert sentiment.count("positive") == 10 and sentiment.count("negative") == 10
    assert all(topic.count(t) == 5 for t in ("sports", "food", "weather", "music"))
    for item in every:
        if item.task == "arithmetic":
            left, op, right, _ = item.text.split()
            result = int(left) + int(right) if op == "+" else int(left) - int(right)
            assert item.answer == str(result) and len(item.labels) == 4
    with pytest.raises(KeyError, match="shipped"):
        task_items(tasks=["poetry"])


# --- the experiment -----------------------------------------------------------------------


def _items() -> list[TaskItem]:
    texts = ["i was at home", "the dog ran", "we saw a bird", "she ate bread"]
    answers = ["glad", "sad", "glad", "happy"]
    return [
        TaskItem("mood", "how was it ?", t, ("happy", "glad", "sad"), a)
        for t, a in zip(texts, answers, strict=True)
    ]


def test_experiment_reports_every_condition_and_writes_its_files(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model = _planted("glad")
    out = tmp_path / "report"
    report = run_experiment(
        model,
        tokenizer,
        tasks=_items(),
        stimuli=["EP02", "EP01+EA01"],
        steered=["EP02"],
        temperatures=[1.0],
        draws=3,
        vector_prompts=PROMPTS,
        out=out,
        progress=False,
    )
    names = [(r.condition.name, r.temperature) for r in report.results]
    assert names == [
        (c, t) for c in ("none", "EP02", "EP01+EA01", "steer EP02") for t in (None, 1.0)
    ]
    for r in report.results:  # the planted label wins whatever the prompt
        assert r.correct == (1.0, 0.0, 1.0, 0.0) and r.accuracy == 0.5
        assert r.standard_error == pytest.approx(standard_error([1, 0, 1, 0]))
        assert r.condition.kind == "none" or (r.delta == 0.0 and r.delta_se == 0.0)
    data = json.loads((out / "stimuli.json").read_text())
    assert data["results"][2]["condition"] == "EP02" and data["settings"]["items"] == 4
    assert data["results"][0]["tasks"]["mood"]["accuracy"] == 0.5
    assert "| steer EP02 | T=1 | 0.500 ± 0.289 |" in (out / "stimuli.md").read_text()
    assert (out / "stimuli.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steered_condition_changes_the_scores(tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model("llama", num_layers=2)
    bank = stimulus_vectors(model, tokenizer, PROMPTS, [AFTER], progress=False)
    contexts, labels = [PROMPTS[0] + ANSWER_CUE], [["happy", "sad"]]
    plain = label_scores(model, tokenizer, contexts, labels)
    with steer(model, bank, xp1=1.0):
        steered = label_scores(model, tokenizer, contexts, labels)
    assert not torch.allclose(plain[0], steered[0])
    assert Condition("steer", ("EP02",)).name == "steer EP02"


def test_an_unwritable_report_folder_fails_before_any_work(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotWritableError):
        run_experiment(None, tokenizer, out=blocker / "sub")
    parser = argparse.ArgumentParser()
    add_stimuli_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stimuli", "--out", str(blocker / "sub"), "--draws", "2"])
    assert args.draws == 2 and args.steer == ["EP02"] and args.run is main_stimuli
    with pytest.raises(NotWritableError):  # before the model is loaded
        main_stimuli(args)
