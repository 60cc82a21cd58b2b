"""The hooks: where they act (the context that applied them), which positions each forward
call holds under beam search and without a KV cache, exactly what they add, and the check of
the live hidden norms against the bank's.

Recording hooks registered before a steering see each block's own output ``h``; ones
registered after see what the model passes on (see tests/test_steering.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import PAD_ID, build_model, random_bank, recording
from conftest import no_hooks_anywhere as _no_hooks_anywhere
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec import EmotionVectors, find_blocks, steer
from emovec.steering import HiddenNormWarning

# Random vectors are far above the dose guard and far from the tiny model's hidden norms;
# the norms check is tested below with banks measured on the model.
pytestmark = pytest.mark.filterwarnings("ignore::emovec.steering.DoseWarning")

PROMPTS = ["i was happy today", "the dog ran home and then ate bread with my sister"]
NEW = 5
GREEDY = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD_ID}


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return build_model("llama")


def _encode(tokenizer: PreTrainedTokenizerFast, text: str | list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(text, return_tensors="pt", padding=True, return_token_type_ids=False))


def _bank(model: nn.Module, **kwargs: object) -> EmotionVectors:
    hidden = model.get_input_embeddings().weight.shape[1]
    return random_bank(len(find_blocks(model)), hidden, **kwargs)  # type: ignore[arg-type]


# --- scope: threads, tasks, contexts ----------------------------------------------------


@contextmanager
def _lockstep(model: nn.Module) -> Iterator[None]:
    """Make two threads' forward passes interleave block by block: each block waits for
    the other thread to reach the same block."""
    barrier = threading.Barrier(2, timeout=60)

    def wait(_module: nn.Module, _args: object) -> None:
        barrier.wait()

    handles = [block.register_forward_pre_hook(wait) for block in find_blocks(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        barrier.abort()


def _steered_and_plain_threads(
    model: nn.Module, bank: EmotionVectors, batch: dict[str, torch.Tensor], **options: object
) -> dict[str, torch.Tensor]:
    """Generate in two threads at once, interleaved block by block: one inside ``with
    steer``, one plain."""
    out: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def steered_thread() -> None:
        try:
            with steer(model, bank, joy=1.0, **options):  # type: ignore[arg-type]
                out["steered"] = model.generate(**batch, **GREEDY)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    def plain_thread() -> None:
        try:
            out["plain"] = model.generate(**batch, **GREEDY)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    with _lockstep(model):
        threads = [threading.Thread(target=f) for f in (steered_thread, plain_thread)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    return out


def test_a_plain_thread_beside_a_steered_one_runs_plain(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """Two threads share the model, one inside ``with steer``, one plain, their forward
    passes interleaved block by block: each gives exactly what it gives alone."""
    bank = _bank(llama)
    batch = _encode(tokenizer, PROMPTS)
    options = {"layers": [1, 2], "positions": "generated"}
    plain = llama.generate(**batch, **GREEDY)
    with steer(llama, bank, joy=1.0, **options):  # type: ignore[arg-type]
        steered = llama.generate(**batch, **GREEDY)
    assert not torch.equal(plain, steered)
    for _ in range(3):
        out = _steered_and_plain_threads(llama, bank, batch, **options)
        assert torch.equal(out["plain"], plain)
        assert torch.equal(out["steered"], steered)
    assert _no_hooks_anywhere(llama)


def test_applied_steering_acts_in_its_context_only(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """apply() steers the applying context; a fresh thread runs plain, a copied context and
    an asyncio task (which copies its context) are steered; remove() from another thread
    takes the hooks off."""
    bank = _bank(llama)
    batch = _encode(tokenizer, PROMPTS)

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return llama(**batch).logits

    def in_thread(target: object) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        thread = threading.Thread(target=lambda: seen.append(target()))  # type: ignore[operator]
        thread.start()
        thread.join(timeout=60)
        return seen[0]

    plain = logits()
    steering = steer(llama, bank, joy=1.0, layers=[1]).apply()
    try:
        steered = logits()
        assert not torch.equal(steered, plain)
        assert torch.equal(in_thread(logits), plain)  # a fresh context
        copied = contextvars.copy_context()
        assert torch.equal(in_thread(lambda: copied.run(logits)), steered)

        async def task() -> torch.Tensor:
            return await asyncio.to_thread(logits)  # copies the context into the thread

        assert torch.equal(asyncio.run(task()), steered)
    finally:
        in_thread(lambda: steering.remove() or torch.zeros(()))  # removed from elsewhere
    assert not steering.active and _no_hooks_anywhere(llama)
    assert torch.equal(logits(), plain)
    with steering:  # re-applied after a removal from another thread
        assert torch.equal(logits(), steered)


def test_paused_pauses_only_the_current_context(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    bank = _bank(llama)
    batch = _encode(tokenizer, PROMPTS)
    with torch.no_grad():
        plain = llama(**batch).logits
        with steer(llama, bank, joy=1.0, layers=[1]) as steering:
            steered = llama(**batch).logits
            elsewhere = contextvars.copy_context()
            with steering.paused():
                assert torch.equal(llama(**batch).logits, plain)
                assert torch.equal(elsewhere.run(lambda: llama(**batch).logits), steered)
            assert torch.equal(llama(**batch).logits, steered)
    assert not torch.equal(plain, steered)


# --- positions under beam search and without a cache ----------------------------------


def _changed(pre: list[torch.Tensor], post: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(after != before).any(dim=-1) for before, after in zip(pre, post, strict=True)]


@pytest.mark.parametrize("mode", ["generated", "last"])
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_beam_search_steers_the_same_positions_in_every_call(
    mode: str, use_cache: bool, llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """Beams reorder the rows at every step: each call still steers every row's generated
    positions ("last": also the prompt's last one), with the cache or without."""
    bank = _bank(llama)
    block = find_blocks(llama)[1]
    batch = _encode(tokenizer, PROMPTS)
    prompt = batch["input_ids"].shape[1]
    beams = {**GREEDY, "num_beams": 3, "use_cache": use_cache}
    with (
        recording(block) as pre,
        steer(llama, bank, joy=1.0, layers=[1], positions=mode, max_dose=float("inf")),  # type: ignore[arg-type]
        recording(block) as post,
    ):
        llama.generate(**batch, **beams)
    first = prompt - 1 if mode == "last" else prompt
    for call, changed in enumerate(_changed(pre, post)):
        offset = prompt + call - 1 if use_cache and call else 0
        expected = (offset + torch.arange(changed.shape[1])) >= first
        assert changed.shape[0] == 6  # 2 prompts x 3 beams
        assert torch.equal(changed, expected.expand_as(changed)), (call, changed)


@pytest.mark.parametrize("mode", ["generated", "last", "all"])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_kv_cache_changes_nothing(
    mode: str, num_beams: int, llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """Steered with the cache and without, greedy or beam search: the same tokens, and the
    same next-token logits at every step (up to float rounding)."""
    bank = _bank(llama)
    batch = _encode(tokenizer, PROMPTS)
    settings = {**GREEDY, "num_beams": num_beams, "return_dict_in_generate": True}
    settings["output_logits"] = True
    plain = llama.generate(**batch, **settings)
    with steer(llama, bank, joy=1.0, layers=[1, 2], positions=mode):  # type: ignore[arg-type]
        cached = llama.generate(**batch, **settings, use_cache=True)
        uncached = llama.generate(**batch, **settings, use_cache=False)
    assert not torch.equal(cached.sequences, plain.sequences)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step, (a, b) in enumerate(zip(cached.logits, uncached.logits, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {step}")


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_rows_under_beam_search_match_each_prompt_alone(
    use_cache: bool, llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """With beams, one mix per beam row (rows of a prompt are consecutive) and left padding:
    each prompt's beams give what that prompt gives steered alone."""
    bank = _bank(llama)
    batch = _encode(tokenizer, PROMPTS)
    assert (batch["attention_mask"][:, 0] == 0).any()  # really left-padded
    mixes = [{"joy": 1.0}, {"anger": 0.8}]
    settings = {**GREEDY, "num_beams": 3, "use_cache": use_cache}
    options = {"layers": [1, 2], "positions": "generated"}
    rows = [mix for mix in mixes for _ in range(3)]
    with steer(llama, bank, rows=rows, **options):  # type: ignore[arg-type]
        together = llama.generate(**batch, **settings)[:, -NEW:]
    for row, (prompt, mix) in enumerate(zip(PROMPTS, mixes, strict=True)):
        with steer(llama, bank, **mix, **options):  # type: ignore[arg-type]
            alone = llama.generate(**_encode(tokenizer, prompt), **settings)[0, -NEW:]
        assert torch.equal(together[row], alone), row


# --- exactly what the hooks add -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True])
def test_deltas_are_exactly_what_a_forward_adds(
    dtype: torch.dtype, per_row: bool, llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = copy.deepcopy(llama).to(dtype)
    blocks = find_blocks(model)
    bank = _bank(model)
    batch = _encode(tokenizer, PROMPTS)
    options = {"layers": [0, 2]}
    steering = (
        steer(model, bank, rows=[{"joy": 1.0}, {"anger": -0.5, "fear": 1.0}], **options)  # type: ignore[arg-type]
        if per_row
        else steer(model, bank, joy=1.0, fear=0.5, **options)  # type: ignore[arg-type]
    )
    deltas = dict(zip(steering.layers, steering.deltas(), strict=True))
    assert steering.layers == [0, 2]
    with (
        recording(blocks[0]) as pre0,
        recording(blocks[2]) as pre2,
        steering,
        recording(blocks[0]) as post0,
        recording(blocks[2]) as post2,
        torch.no_grad(),
    ):
        model(**batch)
    for layer, pre, post in ((0, pre0, post0), (2, pre2, post2)):
        delta = deltas[layer]
        assert delta.dtype == dtype
        added = delta[:, None, :] if per_row else delta[None, None, :]
        assert torch.equal(post[0], pre[0] + added)


# --- the live hidden-norm check ---------------------------------------------------------


def _measured_bank(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, factor: float
) -> EmotionVectors:
    """A random bank whose hidden norms are ``factor`` times the model's own (median over
    positions of a plain forward)."""
    blocks = find_blocks(model)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(
            lambda _m, _a, out, i=i: seen.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            model(**_encode(tokenizer, PROMPTS))
    finally:
        for handle in handles:
            handle.remove()
    norms = torch.stack([seen[i].norm(dim=-1).median() for i in range(len(blocks))])
    bank = _bank(model)
    vectors = {e: bank.vector(e) for e in bank.emotions}
    return EmotionVectors(vectors, norms * factor, model_name="tiny")


@pytest.mark.parametrize("factor", [10.0, 0.1])
def test_hidden_norms_far_from_the_banks_are_warned_once(
    factor: float, llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    batch = _encode(tokenizer, PROMPTS)
    matched, off = (_measured_bank(llama, tokenizer, f) for f in (1.0, factor))
    calls: list[int] = []
    counter = llama.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with steer(llama, matched, joy=0.5, layers=[1, 2]):
                llama.generate(**batch, **GREEDY)
            assert not [w for w in caught if issubclass(w.category, HiddenNormWarning)]
            calls.clear()
            with steer(llama, off, joy=0.5, layers=[1, 2]):
                llama.generate(**batch, **GREEDY)
        assert len(calls) == NEW  # one forward per token: no extra pass for the check
    finally:
        counter.remove()
    (warned,) = [w for w in caught if issubclass(w.category, HiddenNormWarning)]
    assert issubclass(warned.category, UserWarning)
    message = str(warned.message)
    assert "layers [1, 2]" in message and "another model" in message
    ratio = float(re.search(r"are ([0-9.e+-]+)x the norms", message).group(1))  # type: ignore[union-attr]
    assert 0.5 / factor < ratio < 2 / factor
