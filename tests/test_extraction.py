"""extract(): per-layer mean differences, checked against a by-hand reference."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import UNK_ID, another_thread_meanwhile, build_tokenizer, make_text_pairs
from conftest import build_model as _build_model
from torch import nn
from transformers import PreTrainedTokenizerFast

import emovec
from emovec import BASIC_EMOTIONS, PromptPair, extract, find_blocks
from emovec._texts import _CHAT_PROMPT
from emovec.datasets import ResponsePair
from emovec.diagnostics import diagnose
from emovec.estimators import mean_difference
from emovec.extraction import Activations, extract_activations, extract_with_diagnostics
from emovec.layers import default_layer_band

# Texts of several lengths (so batches are padded), one with a word the tokenizer does not
# know (an <unk> token, which is special and so excluded) and punctuation.
PAIRS: dict[str, list[tuple[str, str]]] = {
    "joy": [
        *make_text_pairs("joy", 3, words=4),
        *make_text_pairs("joy", 2, words=9, seed=1),
        (
            "i was so happy , zebra , and then we laughed !",
            "i was at home , zebra , and then we ate .",
        ),
    ],
    "anger": [
        *make_text_pairs("anger", 2, words=5),
        ("they yelled at me", "they called me"),
        *make_text_pairs("anger", 3, words=11, seed=2),
    ],
}


def build_model(arch: str) -> nn.Module:
    # Default-init tiny models (std 0.02) have hidden states of norm ~0.1 and emotion vectors
    # of norm ~0.02, too small for a 1e-5 tolerance to mean much; std 0.2 gives vectors of
    # norm ~1 per layer.
    return _build_model(arch, initializer_range=0.2)


def _block_outputs(model: nn.Module, input_ids: list[int]) -> list[torch.Tensor]:
    """Each block's output ``[seq, hidden]`` for one unpadded text, via forward hooks.

    Also checks them against ``output_hidden_states``: ``hidden_states[l + 1]`` is the output
    of block ``l`` for every block but the last (whose entry has the final norm applied).
    """
    blocks = find_blocks(model)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(
            lambda _m, _a, out, i=i: seen.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).detach().clone()
            )
        )
        for i, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            result = model(input_ids=torch.tensor([input_ids]), output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    hidden_states = result.hidden_states
    assert len(hidden_states) == len(blocks) + 1
    for layer in range(len(blocks) - 1):
        assert torch.equal(hidden_states[layer + 1], seen[layer])
    return [seen[i][0] for i in range(len(blocks))]


def reference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    pairs: Mapping[str, Sequence[tuple[str, str]]],
    *,
    exclude_first: bool = True,
    exclude_special: bool = True,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Vectors and hidden norms computed text by text, the slow obvious way, in float64.

    Tokens averaged: all but position 0 and special tokens (<bos>, <unk>, ...).
    """
    special = set(tokenizer.all_special_ids) if exclude_special else set()
    first = 1 if exclude_first else 0

    def content(text: str) -> tuple[list[torch.Tensor], int]:
        ids = tokenizer(text)["input_ids"]
        keep = [pos >= first and tok not in special for pos, tok in enumerate(ids)]
        assert any(keep)
        outputs = _block_outputs(model, ids)
        return [out[torch.tensor(keep)].double() for out in outputs], sum(keep)

    num_layers = len(find_blocks(model))
    vectors = {}
    norm_sum = torch.zeros(num_layers, dtype=torch.float64)
    norm_count = 0
    for emotion, items in pairs.items():
        diffs = []
        for emotional, neutral in items:
            emo_tokens, _ = content(emotional)
            neu_tokens, n = content(neutral)
            pairs_of_layers = zip(emo_tokens, neu_tokens, strict=True)
            diffs.append(torch.stack([e.mean(0) - u.mean(0) for e, u in pairs_of_layers]))
            norm_sum += torch.stack([u.norm(dim=-1).sum() for u in neu_tokens])
            norm_count += n
        vectors[emotion] = torch.stack(diffs).mean(0)
    return vectors, norm_sum / norm_count


CASES = [("llama", True), ("llama", False), ("gpt2", False), ("gpt_neox", True)]


@pytest.mark.parametrize(("arch", "bos"), CASES)
def test_vectors_match_the_by_hand_reference(arch: str, bos: bool) -> None:
    model = build_model(arch)
    tokenizer = build_tokenizer(bos=bos)
    # The unknown word really is there and really is a special token.
    assert UNK_ID in tokenizer(PAIRS["joy"][-1][0])["input_ids"]
    assert UNK_ID in tokenizer.all_special_ids

    bank = extract(model, tokenizer, PAIRS, batch_size=4, progress=False)
    expected, norms = reference(model, tokenizer, PAIRS)

    assert bank.emotions == ["joy", "anger"]
    assert bank.num_layers == 3 and bank.hidden_size == 32
    for emotion in PAIRS:
        torch.testing.assert_close(
            bank.vector(emotion), expected[emotion].float(), rtol=0, atol=1e-5
        )
        assert float(bank.vector(emotion).norm()) > 1e-2
    torch.testing.assert_close(bank.hidden_norms, norms.float(), rtol=1e-5, atol=1e-5)
    assert bank.recommended_layers == tuple(default_layer_band(3))
    assert bank.settings["pairs_per_emotion"] == {"joy": 6, "anger": 6}
    assert bank.settings["template"] == "plain"


@pytest.mark.parametrize(
    ("bos", "wrong"),
    [
        (False, {"exclude_first": False}),  # with <bos>, position 0 is special anyway
        (False, {"exclude_special": False}),  # <unk>
        (True, {"exclude_special": False}),  # <bos> and <unk>
    ],
)
def test_the_exclusions_are_observable(bos: bool, wrong: dict[str, bool]) -> None:
    """The reference test is sensitive: averaging position 0 or special tokens in would be
    caught by a wide margin."""
    model = build_model("llama")
    tokenizer = build_tokenizer(bos=bos)
    bank = extract(model, tokenizer, PAIRS, progress=False)
    vectors, _ = reference(model, tokenizer, PAIRS, **wrong)
    assert float((bank.vector("joy") - vectors["joy"].float()).abs().max()) > 1e-3


def test_extraction_leaves_another_threads_forward_pass_alone(tokenizer) -> None:
    """Another thread's forward pass through the model while extraction reads it is not
    read, and is not stopped at the deepest block."""
    model = _build_model("llama")
    pairs = {"joy": make_text_pairs("joy", 6)}
    alone = extract(model, tokenizer, pairs, progress=False)
    with another_thread_meanwhile(model, find_blocks(model)[0]) as seen:
        meanwhile = extract(model, tokenizer, pairs, progress=False)
    assert "error" not in seen, seen.get("error")
    torch.testing.assert_close(seen["logits"], seen["alone"], rtol=0, atol=0)
    assert torch.equal(meanwhile.vector("joy"), alone.vector("joy"))
    assert torch.equal(meanwhile.hidden_norms, alone.hidden_norms)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batch_size_does_not_change_the_result(arch: str, tokenizer) -> None:
    model = build_model(arch)
    banks = [extract(model, tokenizer, PAIRS, batch_size=b, progress=False) for b in (1, 7, 64)]
    for other in banks[1:]:
        for emotion in PAIRS:
            torch.testing.assert_close(
                other.vector(emotion), banks[0].vector(emotion), rtol=0, atol=1e-5
            )
        torch.testing.assert_close(other.hidden_norms, banks[0].hidden_norms, rtol=1e-6, atol=1e-5)


def test_pair_order_does_not_change_the_result(tokenizer) -> None:
    model = build_model("llama")
    forward = extract(model, tokenizer, PAIRS, batch_size=3, progress=False)
    backward = extract(
        model, tokenizer, {e: p[::-1] for e, p in PAIRS.items()}, batch_size=3, progress=False
    )
    for emotion in PAIRS:
        torch.testing.assert_close(
            forward.vector(emotion), backward.vector(emotion), rtol=0, atol=1e-5
        )


def test_chat_template_averages_only_over_the_reply() -> None:
    model = build_model("llama")
    tokenizer = build_tokenizer(bos=True)
    tokenizer.chat_template = (
        "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    )
    pairs = {"joy": PAIRS["joy"][:3]}
    bank = extract(model, tokenizer, pairs, template="chat", progress=False)
    assert bank.settings["template"] == "chat"

    def reply_mean(text: str) -> list[torch.Tensor]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _CHAT_PROMPT}, {"role": "assistant", "content": text}],
            tokenize=False,
        )
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id
        # Word-level tokenisation is context free: the reply is the k tokens before <eos>.
        k = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        outputs = _block_outputs(model, ids)
        return [out[len(ids) - 1 - k : len(ids) - 1].double().mean(0) for out in outputs]

    expected = torch.stack(
        [
            torch.stack([e - n for e, n in zip(reply_mean(emo), reply_mean(neu), strict=True)])
            for emo, neu in pairs["joy"]
        ]
    ).mean(0)
    torch.testing.assert_close(bank.vector("joy"), expected.float(), rtol=0, atol=1e-5)
    plain = extract(model, tokenizer, pairs, template="plain", progress=False)
    assert not torch.allclose(plain.vector("joy"), bank.vector("joy"), atol=1e-3)


def test_chat_template_that_trims_the_reply() -> None:
    # Gemma's chat templates write ``message['content'] | trim``; a story with a trailing
    # space or newline (as read from a file) must still be found in the rendered chat.
    model = build_model("llama")
    tokenizer = build_tokenizer(bos=True)
    tokenizer.chat_template = (
        "{% for m in messages %}<bos> {{ m['role'] }} : {{ m['content'] | trim }} <eos> "
        "{% endfor %}"
    )
    clean = {"joy": PAIRS["joy"][:2]}
    padded = {"joy": [(emotional + "\n", " " + neutral) for emotional, neutral in clean["joy"]]}
    expected = extract(model, tokenizer, clean, template="chat", progress=False)
    bank = extract(model, tokenizer, padded, template="chat", progress=False)
    torch.testing.assert_close(bank.vector("joy"), expected.vector("joy"), rtol=0, atol=1e-5)


def test_chat_template_requested_without_one_is_not_silently_different(tokenizer) -> None:
    """template="chat" on a tokenizer with no chat template must either refuse (ValueError)
    or do exactly what template="plain" does; not quietly drop the special tokens."""
    model = build_model("llama")
    assert getattr(tokenizer, "chat_template", None) is None
    plain = extract(model, tokenizer, PAIRS, template="plain", progress=False)
    try:
        chat = extract(model, tokenizer, PAIRS, template="chat", progress=False)
    except ValueError as err:
        assert "chat" in str(err)
        return
    for emotion in PAIRS:
        torch.testing.assert_close(chat.vector(emotion), plain.vector(emotion), rtol=0, atol=1e-5)


# --- inputs ---------------------------------------------------------------------------


def test_custom_emotion_accepts_tuples_prompt_pairs_and_dicts(tokenizer) -> None:
    model = build_model("llama")
    raw = make_text_pairs("joy", 3, seed=7)
    as_tuples = extract(model, tokenizer, {"pride": raw}, progress=False)
    mixed = [
        raw[0],
        PromptPair(*raw[1]),
        {"emotional": raw[2][0], "neutral": raw[2][1]},
    ]
    as_mixed = extract(
        model,
        tokenizer,
        {"pride": mixed},
        progress=False,
        model_name="custom-name",
        recommended_layers=[0, 2],
    )
    assert as_mixed.emotions == ["pride"]
    assert torch.equal(as_mixed.vector("pride"), as_tuples.vector("pride"))
    assert as_mixed.model_name == "custom-name"
    assert as_mixed.recommended_layers == (0, 2)
    as_generator = extract(model, tokenizer, {"pride": (p for p in raw)}, progress=False)
    assert torch.equal(as_generator.vector("pride"), as_tuples.vector("pride"))


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ({}, "No pairs"),
        ({"joy": []}, "no pairs"),
        ({"joy": [("", "i was at home")]}, "empty"),
        ({"joy": [("i was happy", "   ")]}, "empty"),
        ({"joy": [("i was at home", "i was at home")]}, "identical"),
        ({"joy": [("i was at home ", " i was at home")]}, "identical"),
        ({"joy": [("i was happy", "i was calm", "extra")]}, "expected"),
        ({"joy": [{"emotional": "i was happy"}]}, "neutral"),
        ({"joy": [("i was happy", "i was calm"), ("i  was Happy", "i was home")]}, "repeats"),
        ({"joy": [{"query": "", "emotional": "i was happy", "neutral": "i was"}]}, "query"),
    ],
)
def test_invalid_pairs_are_rejected(pairs: dict, match: str, tokenizer) -> None:
    model = build_model("llama")
    with pytest.raises(ValueError, match=match):
        extract(model, tokenizer, pairs, progress=False)


def test_text_longer_than_max_length_is_rejected(tokenizer) -> None:
    model = build_model("llama")
    long_text = "i walked to the store and then saw my friend at the park"
    assert len(tokenizer(long_text)["input_ids"]) == 14
    with pytest.raises(ValueError, match="limit of 8"):
        extract(
            model, tokenizer, {"joy": [(long_text, "i was calm")]}, max_length=8, progress=False
        )
    # Exactly max_length tokens is fine.
    bank = extract(
        model, tokenizer, {"joy": [(long_text, "i was calm")]}, max_length=14, progress=False
    )
    assert bank.emotions == ["joy"]


def test_the_model_context_is_the_default_length_limit(tokenizer) -> None:
    model = build_model("llama")
    assert model.config.max_position_embeddings == 128
    too_long = " ".join(["i walked to the store"] * 26)  # 130 tokens with <bos>
    with pytest.raises(ValueError, match="limit of 128"):
        extract(model, tokenizer, {"joy": [(too_long, "i was calm")]}, progress=False)


def test_text_without_content_tokens_is_rejected(tokenizer_no_bos) -> None:
    model = build_model("llama")
    # Without <bos>, a one-word text has only position 0, which is never averaged over.
    with pytest.raises(ValueError, match="no tokens"):
        extract(model, tokenizer_no_bos, {"joy": [("happy", "i was calm")]}, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"template": "story"}, "template"), ({"batch_size": 0}, "batch_size")]
)
def test_bad_settings_are_rejected(kwargs: dict, match: str, tokenizer) -> None:
    model = build_model("llama")
    with pytest.raises(ValueError, match=match):
        extract(model, tokenizer, PAIRS, progress=False, **kwargs)


# --- reading modes -------------------------------------------------------------------


def test_last_reading_takes_each_texts_last_token(tokenizer) -> None:
    model = build_model("llama")
    pairs = {"joy": PAIRS["joy"][:4]}
    bank = extract(model, tokenizer, pairs, reading="last", batch_size=3, progress=False)
    expected = torch.stack(
        [
            torch.stack(
                [
                    e[-1].double() - n[-1].double()
                    for e, n in zip(
                        _block_outputs(model, tokenizer(emo)["input_ids"]),
                        _block_outputs(model, tokenizer(neu)["input_ids"]),
                        strict=True,
                    )
                ]
            )
            for emo, neu in pairs["joy"]
        ]
    ).mean(0)
    torch.testing.assert_close(bank.vector("joy"), expected.float(), rtol=0, atol=1e-5)
    assert bank.settings["reading"] == "last_text_token"


RESPONSES = [
    ResponsePair("i called my friend", "i was so happy and then we laughed", "i was at home"),
    ResponsePair("the bus came", "we smiled , so glad !", "we took the bus to the office"),
    ResponsePair("my sister", "she was thrilled and proud", "she was at school"),
]


def test_response_reading_averages_exactly_the_answer_tokens(tokenizer) -> None:
    model = build_model("llama")
    bank = extract(model, tokenizer, {"joy": RESPONSES}, reading="response", progress=False)

    def answer_mean(query: str, answer: str) -> list[torch.Tensor]:
        prompt = f"Q: {query}\nA:"  # no chat template: the plain prompt generation uses
        ids = tokenizer(f"{prompt} {answer}")["input_ids"]
        k = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert ids[-k:] == tokenizer(answer, add_special_tokens=False)["input_ids"]
        return [out[-k:].double().mean(0) for out in _block_outputs(model, ids)]

    expected = torch.stack(
        [
            torch.stack(
                [
                    e - n
                    for e, n in zip(
                        answer_mean(p.query, p.emotional),
                        answer_mean(p.query, p.neutral),
                        strict=True,
                    )
                ]
            )
            for p in RESPONSES
        ]
    ).mean(0)
    torch.testing.assert_close(bank.vector("joy"), expected.float(), rtol=0, atol=1e-5)
    assert bank.settings["reading"] == "mean_over_answer_tokens"
    # The query is context only: the same answers after other queries give another vector.
    other = [ResponsePair("the rain", p.emotional, p.neutral) for p in RESPONSES]
    moved = extract(model, tokenizer, {"joy": other}, reading="response", progress=False)
    assert not torch.allclose(moved.vector("joy"), bank.vector("joy"), atol=1e-4)


def test_response_reading_needs_response_pairs(tokenizer) -> None:
    model = build_model("llama")
    with pytest.raises(ValueError, match="ResponsePair"):
        extract(model, tokenizer, PAIRS, reading="response", progress=False)
    with pytest.raises(ValueError, match="reading"):
        extract(model, tokenizer, PAIRS, reading="first", progress=False)  # type: ignore[arg-type]


# --- activations, estimators, diagnostics ----------------------------------------------


def test_activations_hold_every_pair_and_agree_with_extract(tokenizer) -> None:
    model = build_model("llama")
    activations = extract_activations(model, tokenizer, PAIRS, batch_size=5, progress=False)
    bank = extract(model, tokenizer, PAIRS, batch_size=5, progress=False)
    assert activations.emotions == ["joy", "anger"] and activations.num_layers == 3
    for emotion, items in PAIRS.items():
        emotional, neutral = activations.pairs[emotion]
        assert emotional.shape == neutral.shape == (len(items), 3, 32)
        torch.testing.assert_close(
            mean_difference(emotional, neutral), bank.vector(emotion), rtol=0, atol=1e-5
        )
    torch.testing.assert_close(activations.token_norms, bank.hidden_norms)
    # Row i is pair i: its own reading, taken alone.
    emo, _ = PAIRS["anger"][2]
    alone = _block_outputs(model, tokenizer(emo)["input_ids"])
    by_hand = torch.stack([out[1:].double().mean(0) for out in alone]).float()
    torch.testing.assert_close(activations.pairs["anger"][0][2], by_hand, rtol=0, atol=1e-5)


@pytest.mark.parametrize("estimator", ["pca", "lda"])
def test_other_estimators_keep_the_mean_difference_scale(estimator: str, tokenizer) -> None:
    model = build_model("llama")
    mean = extract(model, tokenizer, PAIRS, progress=False)
    other = extract(model, tokenizer, PAIRS, estimator=estimator, progress=False)
    assert other.settings["estimator"] == estimator
    assert mean.settings["estimator"] == "mean_difference"
    for emotion in PAIRS:
        torch.testing.assert_close(
            other.vector(emotion).norm(dim=-1),
            mean.vector(emotion).norm(dim=-1),
            rtol=1e-4,
            atol=1e-5,
        )
        cosine = torch.nn.functional.cosine_similarity(other.vector(emotion), mean.vector(emotion))
        assert bool((cosine > 0).all())  # sign convention: the emotional side is positive
    with pytest.raises(ValueError, match="estimator"):
        extract(model, tokenizer, PAIRS, estimator="median", progress=False)


def test_diagnostics_choose_the_stored_band(tokenizer) -> None:
    model = build_model("llama")
    bank = extract(model, tokenizer, PAIRS, recommended_layers="diagnostics", progress=False)
    diagnostics = diagnose(extract_activations(model, tokenizer, PAIRS, progress=False).pairs)
    assert list(bank.recommended_layers or ()) == diagnostics.recommended_layers()
    assert bank.settings["layers_from"] == "diagnostics"
    assert set(bank.settings["recommended_layers_per_emotion"]) == {"joy", "anger"}


# --- what runs ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_lm_head_is_never_called_and_hooks_are_removed(arch: str, tokenizer) -> None:
    model = build_model(arch)
    calls: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda *_: calls.append(1))
    blocks = find_blocks(model)
    last_calls: list[int] = []
    last = blocks[-1].register_forward_hook(lambda *_: last_calls.append(1))
    try:
        extract(model, tokenizer, PAIRS, batch_size=4, progress=False)
        assert last_calls  # the hooks themselves do fire
        assert calls == []
        model(input_ids=torch.tensor([[2, 5, 6]]))
        assert calls == [1]  # and the head hook would have seen a call
    finally:
        handle.remove()
        last.remove()
    assert all(not m._forward_hooks for m in model.modules())


def _live_tensor_bytes() -> int:
    return sum(
        obj.numel() * obj.element_size()
        for obj in gc.get_objects()
        if issubclass(type(obj), torch.Tensor)  # not isinstance: no __class__ lookups
    )


def _peak_tensor_bytes(model: nn.Module, tokenizer, pairs: int) -> tuple[int, int]:
    """Peak (over forward passes) of live tensor bytes above the baseline, and the passes."""
    data = {"joy": make_text_pairs("joy", pairs, seed=11)}
    peaks: list[int] = []
    gc.collect()
    baseline = _live_tensor_bytes()
    handle = find_blocks(model)[-1].register_forward_hook(
        lambda *_: peaks.append(_live_tensor_bytes())
    )
    try:
        bank = extract(model, tokenizer, data, batch_size=16, progress=False)
    finally:
        handle.remove()
    assert bank.settings["pairs_per_emotion"] == {"joy": pairs}
    del bank
    return max(peaks) - baseline, len(peaks)


def test_memory_does_not_grow_with_the_number_of_pairs(tokenizer) -> None:
    model = build_model("llama")
    few, few_passes = _peak_tensor_bytes(model, tokenizer, 8)
    many, many_passes = _peak_tensor_bytes(model, tokenizer, 200)
    assert (few_passes, many_passes) == (1, 25)
    assert few > 0
    # One stored [layers, hidden] float tensor per text would add 400 * 3 * 32 * 4 = 150 KB.
    assert abs(many - few) <= 4096, (few, many)


# --- shipped data ---------------------------------------------------------------------


def test_default_pairs_ship_for_the_basic_emotions() -> None:
    pairs = emovec.default_pairs()
    assert list(pairs) == list(BASIC_EMOTIONS)
    for emotion in BASIC_EMOTIONS:
        assert len(pairs[emotion]) >= 50, emotion
        for pair in pairs[emotion]:
            assert isinstance(pair, PromptPair)
            assert pair.emotional.strip() and pair.neutral.strip()
            assert pair.emotional.strip() != pair.neutral.strip()
    assert emovec.default_pairs(["joy"]).keys() == {"joy"}


# --- blocks= (the decoder blocks) -----------------------------------------------------


def _same_readings(a: object, b: object) -> None:
    if isinstance(a, emovec.EmotionVectors):
        assert isinstance(b, emovec.EmotionVectors)
        for emotion in a.emotions:
            torch.testing.assert_close(a.vector(emotion), b.vector(emotion), rtol=0, atol=0)
        return
    assert isinstance(a, Activations) and isinstance(b, Activations)
    for emotion in a.emotions:
        for x, y in zip(a.pairs[emotion], b.pairs[emotion], strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_blocks_names_the_decoder_blocks_read(tokenizer) -> None:
    model = build_model("llama")
    found = extract(model, tokenizer, PAIRS, progress=False)
    _same_readings(found, extract(model, tokenizer, PAIRS, blocks="model.layers", progress=False))
    first_two = list(find_blocks(model))[:2]
    kept = extract_activations(model, tokenizer, PAIRS, blocks=first_two, progress=False)
    assert kept.num_layers == 2
    torch.testing.assert_close(
        mean_difference(*kept.pairs["joy"]), found.vector("joy")[:2], rtol=0, atol=1e-5
    )


def test_extract_with_diagnostics_reads_once_and_agrees_with_extract(tokenizer) -> None:
    model = build_model("llama")
    options: dict[str, Any] = {
        "estimator": "lda",
        "recommended_layers": "diagnostics",
        "batch_size": 64,  # all 24 texts in one forward pass
        "progress": False,
    }
    passes: list[int] = []
    handle = find_blocks(model)[0].register_forward_hook(lambda *_: passes.append(1))
    try:
        bank, report = extract_with_diagnostics(model, tokenizer, PAIRS, **options)
    finally:
        handle.remove()
    assert passes == [1]
    expected = extract(model, tokenizer, PAIRS, **options)
    _same_readings(bank, expected)
    assert bank.recommended_layers == expected.recommended_layers
    assert bank.settings == expected.settings
    kept = extract_activations(model, tokenizer, PAIRS, batch_size=64, progress=False)
    assert report.to_dict() == diagnose(kept.pairs, token_norms=kept.token_norms).to_dict()
    with pytest.raises(ValueError, match="estimator"):
        extract_with_diagnostics(model, tokenizer, PAIRS, estimator="median", progress=False)


# --- the command line calls the library --------------------------------------------------


def test_cli_extract_defaults_are_read_from_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    from emovec import cli, extraction

    parameters = inspect.signature(extraction.extract).parameters
    for name in ("template", "estimator", "batch_size", "reading"):
        assert parameters[name].default == getattr(extraction, f"DEFAULT_{name.upper()}")
    monkeypatch.setattr(extraction, "DEFAULT_TEMPLATE", "chat")
    monkeypatch.setattr(extraction, "DEFAULT_ESTIMATOR", "pca")
    monkeypatch.setattr(extraction, "DEFAULT_BATCH_SIZE", 5)
    args = cli.build_parser().parse_args(["extract", "--out", "v.safetensors"])
    assert (args.template, args.estimator, args.batch_size) == ("chat", "pca", 5)
    assert args.reading is None and args.blocks is None
    center = inspect.signature(emovec.EmotionVectors.center).parameters["share"].default
    assert args.center == center


@pytest.fixture
def saved_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    build_model("llama").save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def test_cli_extract_is_one_library_call_with_the_options(
    saved_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from emovec import cli

    pairs = tmp_path / "joy.jsonl"
    pairs.write_text(
        "".join(f'{{"emotional": "{e}", "neutral": "{n}"}}\n' for e, n in PAIRS["joy"])
    )
    calls: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> emovec.EmotionVectors:
        calls.append(kwargs)
        return extract(*args, **kwargs)

    monkeypatch.setattr("emovec.extraction.extract", spy)
    out = tmp_path / "v.safetensors"
    argv = ["extract", "--model", str(saved_model), "--pairs", f"joy={pairs}", "--out", str(out)]
    argv += ["--estimator", "pca", "--layers-from", "diagnostics", "--blocks", "model.layers"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("estimator", "recommended_layers", "blocks")} == {
        "estimator": "pca",
        "recommended_layers": "diagnostics",
        "blocks": "model.layers",
    }
    written = emovec.EmotionVectors.load(out)
    model, tokenizer = build_model("llama"), build_tokenizer()
    expected = extract(
        model, tokenizer, {"joy": PAIRS["joy"]}, estimator="pca", recommended_layers="diagnostics"
    )
    _same_readings(written, expected)
    assert written.recommended_layers == expected.recommended_layers
    assert "processes" not in written.settings  # one process


@pytest.mark.parametrize(
    "where", ["out under a file", "out under /proc", "diagnostics under a file"]
)
def test_cli_extract_to_an_unwritable_destination_fails_before_the_model_loads(
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Even for root: a folder below a file, or in /proc, cannot be created."""
    from emovec import _cli_options, cli

    if "/proc" in where and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out, extra = tmp_path / "v.safetensors", []
    if where == "out under a file":
        out = bad = blocker / "v.safetensors"
    elif where == "out under /proc":
        out = bad = Path("/proc/emovec-test/v.safetensors")
    else:
        bad = blocker / "diagnostics"
        extra = ["--diagnostics", str(bad)]
    loaded: list[object] = []

    def no_model(*args: object, **kwargs: object) -> None:
        loaded.append(args)
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(_cli_options, "load_model", no_model)
    capsys.readouterr()
    code = cli.main(["extract", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert (code, loaded) == (2, [])
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("emovec: error: cannot write ") and str(bad) in err
    assert not out.exists()
