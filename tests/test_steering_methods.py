"""Steering methods ("add", "project", "angular"), schedules and per-row placements.

The arithmetic is checked twice: on ``steered`` directly with hand-made tensors, and through
``steer`` on a tiny model, where a recording hook registered before the steering sees each
block's own output ``h`` and one registered after sees what the model passes on.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import PAD_ID, build_model, no_hooks_anywhere, random_bank, recording
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec import EmotionVectors, find_blocks, steer
from emovec.hooks import steered
from emovec.steering import SINK_RATIO, Schedule
from emovec.vectors import Placement

pytestmark = pytest.mark.filterwarnings("ignore::emovec.steering.DoseWarning")

PROMPTS = ["i was happy today", "the dog ran home and then ate bread with my sister", "we"]
NEW = 6
GREEDY = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD_ID}


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return build_model("llama").eval()


def _bank(model: nn.Module, **kwargs: object) -> EmotionVectors:
    hidden = model.get_input_embeddings().weight.shape[1]
    return random_bank(len(find_blocks(model)), hidden, **kwargs)  # type: ignore[arg-type]


def _encode(tokenizer: PreTrainedTokenizerFast, text: str | list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(text, return_tensors="pt", padding=True, return_token_type_ids=False))


# --- the arithmetic of one position ---------------------------------------------------


def test_add_is_a_plain_sum() -> None:
    hidden, added = torch.randn(2, 3, 8), torch.randn(1, 1, 8)
    assert torch.equal(steered(hidden, added, "add", 1.0), hidden + added)


def test_project_lifts_the_component_to_the_target_and_no_further() -> None:
    u = torch.tensor([1.0, 0.0, 0.0])
    added = 2.0 * u[None, None]  # target component 2
    hidden = torch.tensor(
        [
            [
                [0.0, 5.0, 0.0],  # component 0: lifted by 2 (what add adds)
                [1.5, 0.0, 1.0],  # component 1.5: lifted by 0.5 only
                [3.0, 1.0, 0.0],  # already past the target: untouched
                [-9.0, 0.0, 0.0],  # points away: lifted by at most 2 * target = 4
            ]
        ]
    )
    out = steered(hidden, added, "project", typical_norm=10.0)
    expected = hidden.clone()
    expected[0, 0, 0] += 2.0
    expected[0, 1, 0] += 0.5
    expected[0, 3, 0] += 4.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(out[0, 2], hidden[0, 2])  # bit-identical where nothing is lifted


def test_project_spares_attention_sinks() -> None:
    added = torch.tensor([[[1.0, 0.0]]])
    sink = torch.tensor([[[0.0, SINK_RATIO * 3.0 + 1.0], [0.0, 1.0]]])
    out = steered(sink, added, "project", typical_norm=3.0)
    assert torch.equal(out[0, 0], sink[0, 0])
    torch.testing.assert_close(out[0, 1], torch.tensor([1.0, 1.0]))


def test_angular_keeps_the_norm_and_turns_toward_the_direction() -> None:
    hidden, added = torch.randn(3, 5, 16), torch.randn(1, 1, 16)
    out = steered(hidden, added, "angular", 1.0)
    torch.testing.assert_close(out.norm(dim=-1), hidden.norm(dim=-1), rtol=1e-5, atol=1e-5)
    expected = (hidden + added) * hidden.norm(dim=-1, keepdim=True)
    expected = expected / (hidden + added).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity
    assert bool((cosine(out, added, dim=-1) > cosine(hidden, added, dim=-1)).all())


@pytest.mark.parametrize("method", ["add", "project", "angular"])
def test_zero_added_is_bit_identical(method: str) -> None:
    hidden = torch.randn(2, 4, 8)
    added = torch.zeros(2, 1, 8)
    added[0] = torch.randn(8)  # row 1 gets nothing
    out = steered(hidden, added, method, 1.0)  # type: ignore[arg-type]
    assert torch.equal(out[1], hidden[1])
    assert not torch.equal(out[0], hidden[0])


# --- schedules ------------------------------------------------------------------------


def test_schedule_factors() -> None:
    decay = Schedule(begin=2.0, hold=2, end=0.5, ramp=3)
    torch.testing.assert_close(
        decay.factors(torch.arange(7)), torch.tensor([2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.5])
    )
    ramp_in = Schedule(begin=0.0, hold=1, end=1.0, ramp=2)
    torch.testing.assert_close(ramp_in.factors(torch.arange(4)), torch.tensor([0, 0, 0.5, 1]))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"begin": math.nan}, ValueError),
        ({"end": math.inf}, ValueError),
        ({"ramp": 0}, ValueError),
        ({"hold": -1}, ValueError),
        ({"hold": 1.5}, TypeError),
        ({"begin": "1"}, TypeError),
        ({"begin": True}, TypeError),
    ],
)
def test_schedule_refuses_bad_values(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        Schedule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_schedule_scales_each_generated_token(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast, use_cache: bool
) -> None:
    """Generated token k gets schedule(k) × the delta; prompt positions get nothing."""
    bank = _bank(llama)
    schedule = Schedule(begin=2.0, hold=1, end=0.0, ramp=3)
    batch = _encode(tokenizer, PROMPTS)
    prompt = batch["input_ids"].shape[1]
    block = find_blocks(llama)[1]
    steering = steer(llama, bank, joy=1.0, layers=[1], positions="generated", schedule=schedule)
    delta = steering.deltas()[0]
    with recording(block) as pre, steering, recording(block) as post:
        llama.generate(**batch, **GREEDY, use_cache=use_cache)
    factors = schedule.factors(torch.arange(NEW))
    for call, (before, after) in enumerate(zip(pre, post, strict=True)):
        start = prompt + call - 1 if use_cache and call else 0
        for offset in range(before.shape[1]):
            index = start + offset - prompt
            expected = factors[index] * delta if index >= 0 else torch.zeros_like(delta)
            torch.testing.assert_close(
                after[:, offset] - before[:, offset],
                expected.expand(before.shape[0], -1),
                rtol=0,
                atol=1e-5,
            )
    assert no_hooks_anywhere(llama)


def test_schedule_needs_generated_positions(llama: nn.Module) -> None:
    bank = _bank(llama)
    for positions in ("prompt", "last"):
        with pytest.raises(ValueError, match="schedule"):
            steer(llama, bank, joy=1.0, positions=positions, schedule=Schedule())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Schedule"):
        steer(llama, bank, joy=1.0, schedule={"begin": 1})  # type: ignore[arg-type]


# --- methods through steer ------------------------------------------------------------


@pytest.mark.parametrize("method", ["project", "angular"])
def test_methods_through_steer_match_the_arithmetic(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast, method: str
) -> None:
    bank = _bank(llama)
    block = find_blocks(llama)[2]
    batch = _encode(tokenizer, PROMPTS)
    steering = steer(
        llama,
        bank,
        rows=[{"joy": 1.0}, {"anger": -0.5}, {}],
        layers=[2],
        method=method,
        positions="all",
    )  # type: ignore[arg-type]
    norm = float(bank.hidden_norms[2])
    with recording(block) as pre, steering, recording(block) as post, torch.no_grad():
        llama(**batch)
    expected = steered(pre[0], steering.deltas()[0][:, None, :], method, norm)  # type: ignore[arg-type]
    torch.testing.assert_close(post[0], expected, rtol=0, atol=1e-5)
    assert torch.equal(post[0][2], pre[0][2])  # the plain row is untouched
    if method == "angular":
        torch.testing.assert_close(post[0].norm(dim=-1), pre[0].norm(dim=-1), rtol=1e-5, atol=1e-4)


def test_project_defaults_to_generated_positions(llama: nn.Module) -> None:
    bank = _bank(llama)
    assert steer(llama, bank, joy=1.0, method="project").positions == "generated"
    assert steer(llama, bank, joy=1.0, method="project", positions="all").positions == "all"
    assert steer(llama, bank, joy=1.0).positions == "all"
    with pytest.raises(ValueError, match="method"):
        steer(llama, bank, joy=1.0, method="rotate")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["add", "project", "angular"])
def test_rows_with_left_padding_and_cache_match_each_row_alone(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast, method: str
) -> None:
    bank = _bank(llama)
    rows = [{"joy": 1.0}, {"anger": 0.8}, {}]
    batch = _encode(tokenizer, PROMPTS)
    options = {"layers": [1, 2], "method": method, "positions": "generated"}
    with steer(llama, bank, rows=rows, **options):  # type: ignore[arg-type]
        together = llama.generate(**batch, **GREEDY)[:, -NEW:]
    for row, (prompt, mix) in enumerate(zip(PROMPTS, rows, strict=True)):
        encoded = _encode(tokenizer, prompt)
        with steer(llama, bank, **mix, **options):  # type: ignore[arg-type]
            alone = llama.generate(**encoded, **GREEDY)[0, -NEW:]
        with steer(llama, bank, **mix, **options):  # type: ignore[arg-type]
            uncached = llama.generate(**encoded, **GREEDY, use_cache=False)[0, -NEW:]
        assert torch.equal(together[row], alone), (method, row)
        assert torch.equal(alone, uncached), (method, row)


# --- rows with their own placements ---------------------------------------------------


def test_rows_from_copies_with_other_placements_match_each_alone(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    bank = _bank(llama)
    early = bank.with_placements({"joy": Placement((0, 1), 0.3)})
    late = bank.with_placements({"joy": Placement((1, 2), 0.6)})
    steering = steer(llama, bank, rows=[early["joy"], late["joy"], {}])
    by_layer = dict(zip(steering.layers, steering.deltas(), strict=True))
    for row, copy in enumerate((early, late)):
        alone = steer(llama, copy, joy=1.0)
        for layer, delta in zip(alone.layers, alone.deltas(), strict=True):
            torch.testing.assert_close(by_layer[layer][row], delta)
    assert (
        not by_layer[0][1].any() and not by_layer[2][0].any() and by_layer[1].all(dim=1)[:2].all()
    )
    torch.testing.assert_close(torch.tensor(steering.dose[:2]), torch.tensor([0.3, 0.6]))
    other = random_bank(bank.num_layers, bank.hidden_size, seed=99)
    with pytest.raises(ValueError, match="same bank"):
        steer(llama, bank, rows=[other["joy"]])


def test_paused_steering_runs_plain(llama: nn.Module, tokenizer: PreTrainedTokenizerFast) -> None:
    bank = _bank(llama)
    batch = _encode(tokenizer, PROMPTS)
    with torch.no_grad():
        plain = llama(**batch).logits
        with steer(llama, bank, joy=1.0) as steering:
            with steering.paused():
                paused = llama(**batch).logits
            steered_logits = llama(**batch).logits
    assert torch.equal(paused, plain)
    assert not torch.equal(steered_logits, plain)


def test_placements_carry_their_positions(llama: nn.Module) -> None:
    bank = _bank(llama).with_placements(
        {
            "joy": Placement((1,), 0.3, positions="generated"),
            "anger": Placement((1,), 0.3, positions="all"),
        }
    )
    assert steer(llama, bank, joy=1.0).positions == "generated"
    assert steer(llama, bank, joy=1.0, positions="all").positions == "all"
    assert steer(llama, bank, fear=1.0).positions == "all"  # no placement: the default
    with pytest.raises(ValueError, match="different positions"):
        steer(llama, bank, joy=1.0, anger=0.5)
    assert steer(llama, bank, joy=1.0, anger=0.5, positions="generated").positions == "generated"
    with pytest.raises(ValueError, match="positions"):
        Placement((1,), 0.3, positions="answer")


def test_placements_carry_their_schedules(llama: nn.Module, tmp_path: Path) -> None:
    ramp = Schedule(0.0, 6, 1.0, 8)
    bank = _bank(llama).with_placements(
        {
            "joy": Placement((1,), 0.3, positions="generated", schedule=ramp),
            "anger": Placement((1,), 0.3, schedule=Schedule(1.5, 2, 1.0, 4)),
            "fear": Placement((1,), 0.3, positions="generated"),
        }
    )
    assert steer(llama, bank, joy=1.0).schedule == ramp
    assert steer(llama, bank, joy=1.0, fear=0.5).schedule == ramp  # fear records none
    other = Schedule(2.0, 1, 1.0, 1)
    assert steer(llama, bank, joy=1.0, schedule=other).schedule == other
    assert steer(llama, bank, joy=1.0, layers=[1]).schedule is None  # explicit layers: none
    assert steer(llama, bank, fear=1.0).schedule is None
    with pytest.raises(ValueError, match="different schedule"):
        steer(llama, bank, joy=1.0, anger=0.5, positions="generated")
    # The file keeps it, as the mapping Schedule.to_dict() writes.
    bank.save(tmp_path / "bank.safetensors")
    loaded = EmotionVectors.load(tmp_path / "bank.safetensors")
    assert loaded.placements["joy"].schedule == ramp
    assert loaded.placements["joy"].to_dict()["schedule"] == ramp.to_dict()
    assert Placement((1,), 0.3, schedule={"hold": 3}).schedule == Schedule(hold=3)
    with pytest.raises(ValueError, match="schedule"):
        Placement((1,), 0.3, schedule={"hold": 3, "speed": 2})
    with pytest.raises(TypeError, match="hold"):
        Placement((1,), 0.3, schedule={"hold": "3"})
