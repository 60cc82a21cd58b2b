"""steer(): the hooks add exactly sum(alpha * v) at the chosen layers, and nothing else changes.

How layer outputs are observed. PyTorch runs a module's forward hooks in registration order,
and a hook that returns a value replaces the output seen by the hooks after it and by the
rest of the model. So, around a steering hook on block ``l``:

* a capture hook registered BEFORE ``steer`` is entered sees block ``l``'s own output ``h``
  (pre-steering);
* a capture hook registered AFTER ``steer`` is entered (while it is applied) sees what the
  model actually passes on, ``h + delta``.

Both are taken in the same forward pass, so ``post - pre`` is exactly what steering added at
that layer, whatever the upstream layers did. Tests that need "layers before ``l`` are
bit-for-bit unchanged" compare the post-steering captures with a separate plain run.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import PAD_ID, build_model, random_bank
from conftest import capture_outputs as capture
from conftest import no_hooks_anywhere as _no_hooks_anywhere
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec import EmotionVectors, Steering, VectorModelMismatchError, find_layers, steer
from emovec.layers import default_layer_band
from emovec.steering import MAX_DOSE, RELATIVE_DOSE, DoseError
from emovec.vectors import Placement

# Random vectors are far above the dose guard; its warnings are tested in test_injector.py.
pytestmark = pytest.mark.filterwarnings("ignore::emovec.steering.DoseWarning")

CORE_ARCHS = ["llama", "qwen2", "gemma2", "gpt2", "gpt_neox"]
MORE_ARCHS = [*CORE_ARCHS, "phi3", "opt", "falcon", "gemma3_multimodal"]

PROMPT = "i walked to the store and then saw my friend at the park"
PROMPTS = ["i was happy today", "the dog ran home and then ate bread with my sister", "we"]


def _ids(tokenizer: PreTrainedTokenizerFast, text: str = PROMPT) -> torch.Tensor:
    return _encode(tokenizer, text)["input_ids"]


def _encode(tokenizer: PreTrainedTokenizerFast, text: str | list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(text, return_tensors="pt", padding=True, return_token_type_ids=False))


def _logits(model: nn.Module, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


def _expected_delta(
    bank: EmotionVectors, alphas: dict[str, float], layer: int, scale: str, n_layers: int
) -> torch.Tensor:
    if scale == "raw":
        return sum(a * bank.vector(e)[layer] for e, a in alphas.items())  # type: ignore[return-value]
    total = sum(a * bank.unit_vector(e)[layer] for e, a in alphas.items())
    return total * (RELATIVE_DOSE / n_layers)  # type: ignore[return-value]


def _bank_for(model: nn.Module, **kwargs: object) -> EmotionVectors:
    blocks = find_layers(model)
    hidden = model.get_input_embeddings().weight.shape[1]
    return random_bank(len(blocks), hidden, **kwargs)  # type: ignore[arg-type]


# --- exactness ------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["raw", "relative"])
@pytest.mark.parametrize("arch", MORE_ARCHS)
def test_each_layer_alone_gets_exactly_its_delta(
    arch: str, scale: str, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = build_model(arch)
    blocks = find_layers(model)
    bank = _bank_for(model)
    ids = _ids(tokenizer)
    alphas = {"joy": 1.5, "anger": -0.75}

    with capture(blocks) as plain:
        plain_logits = _logits(model, ids)

    for layer in range(len(blocks)):
        with steer(model, bank, layers=[layer], scale=scale, **alphas) as steering:
            assert steering.layers == [layer]
            with capture(blocks) as steered:  # registered after steering: sees h + delta
                steered_logits = _logits(model, ids)
        delta = _expected_delta(bank, alphas, layer, scale, n_layers=1)
        assert float(delta.norm()) > 0.1
        for before in range(layer):
            assert torch.equal(steered[before], plain[before])
        torch.testing.assert_close(steered[layer], plain[layer] + delta, rtol=1e-6, atol=1e-5)
        for after in range(layer + 1, len(blocks)):
            assert not torch.allclose(steered[after], plain[after])
        assert not torch.allclose(steered_logits, plain_logits)
        assert _no_hooks_anywhere(model)

    with capture(blocks) as again:
        assert torch.equal(_logits(model, ids), plain_logits)
    assert all(torch.equal(again[i], plain[i]) for i in range(len(blocks)))


@pytest.mark.parametrize("scale", ["raw", "relative"])
@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_several_layers_each_get_their_delta_and_others_none(
    arch: str, scale: str, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = build_model(arch, num_layers=4)
    blocks = find_layers(model)
    assert len(blocks) == 4
    bank = _bank_for(model)
    ids = _ids(tokenizer)
    chosen = [0, 2]
    alphas = {"joy": 0.8, "anger": 0.4}

    with (
        capture(blocks) as pre,
        steer(model, bank, layers=chosen, scale=scale, **alphas),
        capture(blocks) as post,
    ):
        _logits(model, ids)

    for layer in range(len(blocks)):
        if layer in chosen:
            delta = _expected_delta(bank, alphas, layer, scale, n_layers=len(chosen))
            torch.testing.assert_close(
                post[layer] - pre[layer], delta.expand_as(pre[layer]), rtol=1e-5, atol=1e-5
            )
            assert not torch.equal(post[layer], pre[layer])
        else:
            assert torch.equal(post[layer], pre[layer])


def test_relative_dose_is_split_over_the_band(tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model("llama", num_layers=4)
    bank = _bank_for(model)
    for band in ([1], [1, 2], [0, 1, 2, 3]):
        steering = steer(model, bank, joy=2.0, layers=band)
        for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
            expected = 2.0 * RELATIVE_DOSE / len(band) * bank.unit_vector("joy")[layer]
            torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-6)
            # alpha = 1 adds RELATIVE_DOSE x the typical hidden norm over the whole band.
            assert float(delta.norm()) == pytest.approx(
                2.0 * RELATIVE_DOSE / len(band) * float(bank.hidden_norms[layer]), rel=1e-5
            )


def test_raw_scale_ignores_band_width() -> None:
    model = build_model("llama", num_layers=4)
    bank = _bank_for(model)
    steering = steer(model, bank, joy=0.5, fear=-2.0, layers=[0, 1, 3], scale="raw")
    assert steering.layers == [0, 1, 3]
    for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
        expected = 0.5 * bank.vector("joy")[layer] - 2.0 * bank.vector("fear")[layer]
        torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-6)


def test_combination_argument_equals_keyword_strengths() -> None:
    model = build_model("llama")
    bank = _bank_for(model)
    by_keywords = steer(model, bank, joy=0.7, fear=-0.3, layers=[0, 1])
    by_combination = steer(model, 0.7 * bank["joy"] - 0.3 * bank["fear"], layers=[0, 1])
    assert by_keywords.layers == by_combination.layers == [0, 1]
    for a, b in zip(by_keywords.deltas(), by_combination.deltas(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TypeError):
        steer(model, bank["joy"], joy=1.0)
    with pytest.raises(TypeError):
        steer(model, {"joy": torch.zeros(3, 32)}, joy=1.0)  # type: ignore[arg-type]


# --- alpha = 0 ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_zero_strength_is_bit_identical(arch: str, tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model(arch)
    bank = _bank_for(model)
    ids = _ids(tokenizer)
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": PAD_ID}
    plain_logits = _logits(model, ids)
    plain_tokens = model.generate(ids, **settings)

    with steer(model, bank, joy=0.0, anger=0.0, layers=[0, 1, 2]) as steering:
        assert steering.layers == []
        assert torch.equal(_logits(model, ids), plain_logits)
        assert torch.equal(model.generate(ids, **settings), plain_tokens)

    with steer(model, bank, joy=1.0, anger=0.0, layers=[1], scale="raw") as steering:
        assert len(steering.deltas()) == 1
        assert not torch.equal(_logits(model, ids), plain_logits)


# --- batches --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", CORE_ARCHS)
def test_left_padded_batch_is_steered_on_every_row(
    arch: str, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = build_model(arch)
    blocks = find_layers(model)
    bank = _bank_for(model)
    batch = _encode(tokenizer, PROMPTS)
    assert (batch["attention_mask"][:, 0] == 0).any()  # really left-padded
    assert (batch["attention_mask"][:, -1] == 1).all()
    alphas = {"joy": 2.0, "fear": 1.0}

    with (
        capture(blocks) as pre,
        steer(model, bank, layers=[1], scale="raw", **alphas),
        capture(blocks) as post,
        torch.no_grad(),
    ):
        model(**batch)
    delta = _expected_delta(bank, alphas, 1, "raw", 1)
    torch.testing.assert_close(post[1] - pre[1], delta.expand_as(pre[1]), rtol=1e-5, atol=1e-5)
    assert torch.equal(post[0], pre[0]) and torch.equal(post[2], pre[2])

    new = 6
    settings = {
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "pad_token_id": PAD_ID,
    }
    with steer(model, bank, layers=[0, 1], **alphas):
        together = model.generate(**batch, **settings)[:, -new:]
        alone = [model.generate(**_encode(tokenizer, p), **settings)[0, -new:] for p in PROMPTS]
    plain = model.generate(**batch, **settings)[:, -new:]
    for row, single in enumerate(alone):
        assert torch.equal(together[row], single), (row, together[row], single)
    assert not torch.equal(together, plain)  # the steering did change the continuations


# --- hook lifetime --------------------------------------------------------------------


def test_hooks_are_removed_when_the_body_raises(tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model("llama")
    bank = _bank_for(model)
    ids = _ids(tokenizer)
    plain = _logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"), steer(model, bank, joy=1.0, layers=[0, 1, 2]):
        assert not torch.equal(_logits(model, ids), plain)
        raise RuntimeError("boom")
    assert _no_hooks_anywhere(model)
    assert torch.equal(_logits(model, ids), plain)


def test_steering_is_reusable(tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model("qwen2")
    bank = _bank_for(model)
    ids = _ids(tokenizer)
    plain = _logits(model, ids)
    steering = steer(model, bank, joy=1.0, anger=0.5, layers=[0, 2])
    assert isinstance(steering, Steering)
    assert not steering.active and _no_hooks_anywhere(model)  # nothing until applied

    with steering as entered:
        assert entered is steering and steering.active
        first = _logits(model, ids)
    assert not steering.active and torch.equal(_logits(model, ids), plain)
    assert not torch.equal(first, plain)

    with steering:
        assert torch.equal(_logits(model, ids), first)
        with pytest.raises(RuntimeError, match="already applied"), steering:
            pass  # pragma: no cover
        # The failed re-entry neither removed nor duplicated the applied hooks.
        assert steering.active and torch.equal(_logits(model, ids), first)
    assert not steering.active and torch.equal(_logits(model, ids), plain)

    assert steering.apply() is steering
    assert torch.equal(_logits(model, ids), first)
    with pytest.raises(RuntimeError, match="already applied"):
        steering.apply()
    assert torch.equal(_logits(model, ids), first)  # still applied exactly once
    steering.remove()
    steering.remove()  # harmless when not applied
    assert not steering.active and _no_hooks_anywhere(model)
    assert torch.equal(_logits(model, ids), plain)


def test_nested_steerings_add_up(tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model("llama")
    blocks = find_layers(model)
    bank = _bank_for(model)
    ids = _ids(tokenizer)

    with steer(model, bank, joy=1.0, layers=[1], scale="raw"):
        outer_only = _logits(model, ids)

    with steer(model, bank, joy=1.0, layers=[1], scale="raw"):
        with (
            capture(blocks) as pre,
            steer(model, bank, anger=0.5, layers=[1, 2], scale="raw"),
            capture(blocks) as post,
        ):
            _logits(model, ids)
        assert torch.equal(_logits(model, ids), outer_only)  # inner exit leaves the outer

    # ``pre`` was registered after the outer steering and before the inner one, so at
    # layer 1 it already includes the outer delta; compare against a plain run instead.
    with capture(blocks) as plain:
        _logits(model, ids)
    both = bank.vector("joy")[1] + 0.5 * bank.vector("anger")[1]
    torch.testing.assert_close(post[1] - plain[1], both.expand_as(pre[1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        post[1] - pre[1], (0.5 * bank.vector("anger")[1]).expand_as(pre[1]), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        post[2] - pre[2], (0.5 * bank.vector("anger")[2]).expand_as(pre[2]), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(post[0], pre[0])
    assert _no_hooks_anywhere(model)


# --- layer selection ------------------------------------------------------------------


def test_default_layers_come_from_the_bank() -> None:
    model = build_model("llama", num_layers=4)
    bank = random_bank(4, 32, layers=[2, 3])
    assert steer(model, bank, joy=1.0).layers == [2, 3]
    no_band = random_bank(4, 32)
    assert steer(model, no_band, joy=1.0).layers == default_layer_band(4) == [2]


def test_negative_layers_count_from_the_end() -> None:
    model = build_model("llama", num_layers=4)
    bank = _bank_for(model)
    assert steer(model, bank, joy=1.0, layers=[-1, 0, -4]).layers == [0, 3]


@pytest.mark.parametrize("layers", [[], [4], [0, 7], [-5], [-10]])
def test_out_of_range_layers_raise_value_error(layers: list[int]) -> None:
    model = build_model("llama", num_layers=4)
    bank = _bank_for(model)
    with pytest.raises(ValueError, match="out of range"):
        steer(model, bank, joy=1.0, layers=layers)
    assert _no_hooks_anywhere(model)


def test_block_layers_override(tokenizer: PreTrainedTokenizerFast) -> None:
    model = build_model("gpt2")
    bank = _bank_for(model)
    steering = steer(model, bank, joy=1.0, layers=[1], block_layers="transformer.h")
    with steering:
        assert len(model.transformer.h[1]._forward_hooks) == 1
        assert not model.transformer.h[0]._forward_hooks
    assert _no_hooks_anywhere(model)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("layers_delta", "hidden_delta"), [(1, 0), (-1, 0), (0, 8)])
def test_bank_of_another_shape_is_rejected_before_hooking(
    layers_delta: int, hidden_delta: int
) -> None:
    model = build_model("llama")
    bank = random_bank(3 + layers_delta, 32 + hidden_delta, model_name="other-model")
    with pytest.raises(VectorModelMismatchError) as info:
        steer(model, bank, joy=1.0, layers=[0])
    message = str(info.value)
    assert f"{3 + layers_delta} layers x {32 + hidden_delta} hidden" in message
    assert "3 layers x 32 hidden" in message
    assert "other-model" in message
    assert isinstance(info.value, ValueError)
    assert _no_hooks_anywhere(model)


def test_unknown_emotion_raises_key_error() -> None:
    model = build_model("llama")
    bank = _bank_for(model)
    with pytest.raises(KeyError, match="love"):
        steer(model, bank, love=1.0)
    assert _no_hooks_anywhere(model)


def test_bad_scale_raises() -> None:
    model = build_model("llama")
    with pytest.raises(ValueError, match="scale"):
        steer(model, _bank_for(model), joy=1.0, scale="huge")  # type: ignore[arg-type]


# --- dtype ----------------------------------------------------------------------------


def test_bf16_model_is_steered_in_bf16(tokenizer: PreTrainedTokenizerFast) -> None:
    model = copy.deepcopy(build_model("llama")).to(torch.bfloat16)
    blocks = find_layers(model)
    bank = _bank_for(model)
    ids = _ids(tokenizer)
    plain = _logits(model, ids)
    steering = steer(model, bank, joy=1.0, anger=-0.5, layers=[1], scale="raw")
    assert [d.dtype for d in steering.deltas()] == [torch.bfloat16]
    expected = (bank.vector("joy")[1] - 0.5 * bank.vector("anger")[1]).to(torch.bfloat16)
    torch.testing.assert_close(steering.deltas()[0], expected, rtol=1e-2, atol=1e-2)

    with capture(blocks) as pre, steering, capture(blocks) as post:
        logits = _logits(model, ids)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert post[1].dtype == torch.bfloat16
    assert torch.equal(post[1], pre[1] + steering.deltas()[0])
    assert not torch.equal(logits, plain)
    assert _no_hooks_anywhere(model)


# --- per-emotion placements -----------------------------------------------------------


def _placed_bank(num_layers: int = 6, *, band: list[int] | None = None) -> EmotionVectors:
    """joy and fear placed (own layers and dose); anger left to the bank's band."""
    return random_bank(num_layers, 32, ("joy", "anger", "fear"), layers=band).with_placements(
        {"joy": Placement([4, 1, 2], 0.8), "fear": Placement([2, 5], 0.3)}
    )


def _placed_delta(
    bank: EmotionVectors, emotion: str, alpha: float, layers: list[int], dose: float
) -> dict[int, torch.Tensor]:
    """alpha * dose / len(layers) * the unit vector, at each of ``layers``."""
    return {i: alpha * dose / len(layers) * bank.unit_vector(emotion)[i] for i in layers}


def _dose(bank: EmotionVectors, steering: Steering) -> float:
    return sum(
        float(delta.norm()) / float(bank.hidden_norms[layer])
        for layer, delta in zip(steering.layers, steering.deltas(), strict=True)
    )


def test_placement_gives_an_emotion_its_own_layers_and_dose() -> None:
    """Without layers=, a placed emotion is steered at its layers with alpha x its dose."""
    model = build_model("llama", num_layers=6)
    bank = _placed_bank(band=[3])
    steering = steer(model, bank, joy=1.5)
    assert steering.layers == [1, 2, 4]
    expected = _placed_delta(bank, "joy", 1.5, [1, 2, 4], 0.8)
    for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
        torch.testing.assert_close(delta, expected[layer], rtol=1e-6, atol=1e-6)
    assert steering.dose == [pytest.approx(1.5 * 0.8, rel=1e-5)]
    assert steering.dose[0] == pytest.approx(_dose(bank, steering), rel=1e-5)
    # The same bank without placements steers joy at the band, at RELATIVE_DOSE.
    plain = steer(model, bank.without_placements(), joy=1.5)
    assert plain.layers == [3]
    assert plain.dose == [pytest.approx(1.5 * RELATIVE_DOSE, rel=1e-5)]


def test_placed_and_unplaced_emotions_add_linearly() -> None:
    """Each emotion adds its own placed delta (unplaced: the band at RELATIVE_DOSE), the
    hooked layers are the union, and the dose is sum_l |delta_l| / h_l of the sum."""
    model = build_model("llama", num_layers=6)
    for band in ([0, 3], None):
        bank = _placed_bank(band=band)
        anger_layers = band if band is not None else default_layer_band(6)
        alphas = {"joy": 1.0, "anger": -0.5, "fear": 2.0}
        steering = steer(model, bank, **alphas)
        parts = [
            _placed_delta(bank, "joy", 1.0, [1, 2, 4], 0.8),
            _placed_delta(bank, "anger", -0.5, anger_layers, RELATIVE_DOSE),
            _placed_delta(bank, "fear", 2.0, [2, 5], 0.3),
        ]
        expected: dict[int, torch.Tensor] = {}
        for part in parts:
            for layer, delta in part.items():
                expected[layer] = expected.get(layer, torch.zeros(32)) + delta
        assert steering.layers == sorted(expected) == sorted({1, 2, 4, 5, *anger_layers})
        for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
            torch.testing.assert_close(delta, expected[layer], rtol=1e-5, atol=1e-6)
        assert len(steering.dose) == 1
        assert steering.dose[0] == pytest.approx(_dose(bank, steering), rel=1e-5)


def test_placed_deltas_reach_the_hidden_states(tokenizer: PreTrainedTokenizerFast) -> None:
    """In a real forward pass each placed layer's output moves by exactly its delta and the
    other layers' outputs are not touched by a hook."""
    model = build_model("llama", num_layers=6)
    blocks = find_layers(model)
    bank = _placed_bank(band=[0])
    alphas = {"joy": 1.0, "anger": 0.7}
    expected = _placed_delta(bank, "joy", 1.0, [1, 2, 4], 0.8)
    expected[0] = 0.7 * RELATIVE_DOSE * bank.unit_vector("anger")[0]
    with (
        capture(blocks) as pre,
        steer(model, bank, **alphas) as steering,
        capture(blocks) as post,
    ):
        _logits(model, _ids(tokenizer))
    assert steering.layers == [0, 1, 2, 4]
    for layer in range(len(blocks)):
        if layer in expected:
            torch.testing.assert_close(
                post[layer] - pre[layer],
                expected[layer].expand_as(pre[layer]),
                rtol=1e-5,
                atol=1e-5,
            )
        else:
            assert torch.equal(post[layer], pre[layer])
    assert _no_hooks_anywhere(model)


def test_explicit_layers_override_every_placement() -> None:
    """layers= puts every emotion at those layers with alpha = 1 meaning RELATIVE_DOSE."""
    model = build_model("llama", num_layers=6)
    bank = _placed_bank(band=[3])
    steering = steer(model, bank, joy=1.0, fear=-1.0, layers=[0, 3])
    assert steering.layers == [0, 3]
    for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
        expected = (RELATIVE_DOSE / 2) * (
            bank.unit_vector("joy")[layer] - bank.unit_vector("fear")[layer]
        )
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)
    unplaced = steer(model, bank.without_placements(), joy=1.0, fear=-1.0, layers=[0, 3])
    for a, b in zip(steering.deltas(), unplaced.deltas(), strict=True):
        assert torch.equal(a, b)


def test_combination_argument_honours_placements() -> None:
    """steer(model, 2 * vecs["joy"]) is steer(model, vecs, joy=2): the placement applies."""
    model = build_model("llama", num_layers=6)
    bank = _placed_bank(band=[3])
    by_combination = steer(model, 2.0 * bank["joy"] - bank["anger"])
    by_keywords = steer(model, bank, joy=2.0, anger=-1.0)
    assert by_combination.layers == by_keywords.layers == [1, 2, 3, 4]
    for a, b in zip(by_combination.deltas(), by_keywords.deltas(), strict=True):
        assert torch.equal(a, b)


def test_rows_honour_placements(tokenizer: PreTrainedTokenizerFast) -> None:
    """Per-row mixes use each emotion's placement: each row gets its own deltas, zero where
    its emotions add nothing, and its own dose."""
    model = build_model("llama", num_layers=6)
    blocks = find_layers(model)
    bank = _placed_bank(band=[3])
    rows = [{"joy": 1.0}, {"anger": 0.5, "fear": 1.0}, {}]
    steering = steer(model, bank, rows=rows)
    joy = _placed_delta(bank, "joy", 1.0, [1, 2, 4], 0.8)
    mixed = _placed_delta(bank, "fear", 1.0, [2, 5], 0.3)
    mixed[3] = 0.5 * RELATIVE_DOSE * bank.unit_vector("anger")[3]
    assert steering.layers == [1, 2, 3, 4, 5]
    expected = {}
    for layer in steering.layers:
        expected[layer] = torch.stack(
            [joy.get(layer, torch.zeros(32)), mixed.get(layer, torch.zeros(32)), torch.zeros(32)]
        )
    for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
        assert delta.shape == (3, 32)
        torch.testing.assert_close(delta, expected[layer], rtol=1e-5, atol=1e-6)
    assert steering.dose[0] == pytest.approx(0.8, rel=1e-5)
    assert steering.dose[1] == pytest.approx(
        0.5 * RELATIVE_DOSE
        + sum(float(mixed[i].norm()) / float(bank.hidden_norms[i]) for i in (2, 5)),
        rel=1e-5,
    )
    assert steering.dose[2] == 0.0

    batch = _encode(tokenizer, PROMPTS)
    with capture(blocks) as pre, steering, capture(blocks) as post, torch.no_grad():
        model(**batch)
    for layer in steering.layers:
        added = post[layer] - pre[layer]
        torch.testing.assert_close(
            added, expected[layer][:, None, :].expand_as(added), rtol=1e-5, atol=1e-5
        )
    assert torch.equal(post[0], pre[0])


def test_raw_scale_uses_placement_layers_but_not_its_dose() -> None:
    """scale="raw" adds alpha x the raw vector at the placement's layers; the dose (a
    relative-scale quantity) and the band width do not scale it."""
    model = build_model("llama", num_layers=6)
    bank = _placed_bank(band=[3])
    steering = steer(model, bank, joy=2.0, anger=-1.0, scale="raw")
    assert steering.layers == [1, 2, 3, 4]
    for layer, delta in zip(steering.layers, steering.deltas(), strict=True):
        expected = torch.zeros(32)
        if layer in (1, 2, 4):
            expected = expected + 2.0 * bank.vector("joy")[layer]
        if layer == 3:
            expected = expected - bank.vector("anger")[layer]
        torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-6)
    stronger = bank.with_placements({"joy": Placement([1, 2, 4], 5.0)})
    again = steer(model, stronger, joy=2.0, anger=-1.0, scale="raw")
    for a, b in zip(steering.deltas(), again.deltas(), strict=True):
        assert torch.equal(a, b)


def test_dose_guard_sees_the_placed_dose() -> None:
    """The guard measures the placement's dose: alpha x dose, not alpha x RELATIVE_DOSE."""
    model = build_model("llama", num_layers=6)
    bank = random_bank(6, 32, layers=[3]).with_placements({"joy": Placement([2, 3], 0.7)})
    assert steer(model, bank, joy=1.0, guard="raise").dose == [pytest.approx(0.7, rel=1e-5)]
    with pytest.raises(DoseError):
        steer(model, bank, joy=1.2, guard="raise")  # 0.84 > MAX_DOSE
    clamped = steer(model, bank, joy=2.0, guard="clamp")
    assert clamped.dose == [pytest.approx(MAX_DOSE, rel=1e-5)]
    assert _no_hooks_anywhere(model)
