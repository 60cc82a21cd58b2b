"""Guidance in logit space: PlainGuidance (the next-token mix of a steered and a plain pass,
under left padding) and query guidance (context-aware decoding)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import PAD_ID, build_model, random_bank
from torch import nn
from transformers import LogitsProcessor, PreTrainedTokenizerFast

from emovec import Schedule, find_blocks, steer
from emovec.chat import Asking
from emovec.generation import format_prompts, generate_answers
from emovec.guidance import PlainGuidance, QueryGuidance
from emovec.vectors import EmotionVectors, Placement

pytestmark = pytest.mark.filterwarnings("ignore::emovec.steering.DoseWarning")

PROMPTS = ["i was happy today", "the dog ran home and then ate bread with my sister"]
NEW = 5
GREEDY = {"max_new_tokens": NEW, "min_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD_ID}


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    return build_model("llama").eval()


def _batch(tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    return dict(tokenizer(PROMPTS, return_tensors="pt", padding=True, return_token_type_ids=False))


def _bank(model: nn.Module):  # type: ignore[no-untyped-def]
    hidden = model.get_input_embeddings().weight.shape[1]
    return random_bank(len(find_blocks(model)), hidden)


class _Recorder(LogitsProcessor):
    """Keeps the scores it is given (runs after the processor under test)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.seen.append(scores.clone())
        return scores


def _generate(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    weight: float | None,
    bank: object,
    penalty: float = 1.0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    recorder = _Recorder()
    with steer(model, bank, joy=2.0, layers=[1, 2]) as steering:  # type: ignore[arg-type]
        processors: list[LogitsProcessor] = []
        if weight is not None:
            processors.append(
                PlainGuidance(
                    model,
                    steering,
                    batch["attention_mask"],
                    weight=weight,
                    repetition_penalty=penalty,
                )
            )
        out = model.generate(
            **batch, **GREEDY, logits_processor=[*processors, recorder], repetition_penalty=penalty
        )
    return out[:, -NEW:], recorder.seen


def test_weight_one_is_the_steered_model(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    bank, batch = _bank(llama), _batch(tokenizer)
    steered, _ = _generate(llama, batch, None, bank)
    guided, _ = _generate(llama, batch, 1.0, bank)
    assert torch.equal(steered, guided)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_weight_zero_is_the_plain_model(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast, penalty: float
) -> None:
    bank, batch = _bank(llama), _batch(tokenizer)
    plain = llama.generate(**batch, **GREEDY, repetition_penalty=penalty)[:, -NEW:]
    steered, _ = _generate(llama, batch, None, bank, penalty)
    guided, _ = _generate(llama, batch, 0.0, bank, penalty)
    assert torch.equal(guided, plain)
    assert not torch.equal(steered, plain)  # the steering does change the text


def test_mix_is_the_weighted_log_probabilities(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """Each step's scores equal w·log p_steered + (1−w)·log p_plain of that very prefix."""
    bank, batch = _bank(llama), _batch(tokenizer)
    weight = 0.3
    guided, seen = _generate(llama, batch, weight, bank)
    prompt = batch["input_ids"].shape[1]
    sequences = torch.cat([batch["input_ids"], guided], dim=1)
    for step in range(NEW):
        ids = sequences[:, : prompt + step]
        mask = torch.cat([batch["attention_mask"], torch.ones(2, step, dtype=torch.long)], 1)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        with torch.no_grad():
            plain = llama(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            with steer(llama, bank, joy=2.0, layers=[1, 2]):
                steered = llama(input_ids=ids, attention_mask=mask, position_ids=positions).logits[
                    :, -1
                ]
        expected = weight * torch.log_softmax(steered, -1) + (1 - weight) * torch.log_softmax(
            plain, -1
        )
        # min_new_tokens rules out EOS before the mix: it stays out, and the steered
        # distribution is renormalised without it (a constant shift per row).
        allowed = torch.isfinite(seen[step])
        assert not allowed[:, tokenizer.eos_token_id].any()
        got = torch.where(allowed, seen[step], -1e9)
        want = torch.where(allowed, expected, -1e9)
        got, want = got - got.amax(-1, keepdim=True), want - want.amax(-1, keepdim=True)
        torch.testing.assert_close(got[allowed], want[allowed], rtol=1e-4, atol=1e-4)


def test_refuses_bad_weight_and_beams(llama: nn.Module, tokenizer: PreTrainedTokenizerFast) -> None:
    bank, batch = _bank(llama), _batch(tokenizer)
    steering = steer(llama, bank, joy=1.0)
    for weight in (-0.1, 1.5, math.nan, True):
        with pytest.raises(ValueError, match="weight"):
            PlainGuidance(llama, steering, batch["attention_mask"], weight=weight)  # type: ignore[arg-type]
    free = (batch["input_ids"], batch["attention_mask"])
    for penalty in (0.0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="repetition_penalty"):
            PlainGuidance(llama, steering, batch["attention_mask"], repetition_penalty=penalty)
        with pytest.raises(ValueError, match="repetition_penalty"):
            QueryGuidance(llama, batch["attention_mask"], free, 2.0, repetition_penalty=penalty)
    guide = PlainGuidance(llama, steering, batch["attention_mask"][:1], weight=0.5)
    with steering, pytest.raises(ValueError, match="rows"):
        llama.generate(**batch, **GREEDY, logits_processor=[guide])


def test_a_processor_serves_the_one_generate_call_it_was_made_for(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """Reused for a second generate with a longer prompt, or made from the mask of the same
    prompt padded further, guidance once changed the answer silently ("...so much energy"
    vs "...so much joy"); both are refused now, as is any reuse."""
    bank, batch = _bank(llama), _batch(tokenizer)
    padded = {
        key: torch.cat(
            [value.new_full((len(value), 7), PAD_ID if key == "input_ids" else 0), value], 1
        )
        for key, value in batch.items()
    }
    with steer(llama, bank, joy=1.0) as steering:
        free = (batch["input_ids"], batch["attention_mask"])
        for make in (
            lambda mask: PlainGuidance(llama, steering, mask, weight=0.5),
            lambda mask: QueryGuidance(llama, mask, (free[0], free[1]), 1.5, steering=steering),
        ):
            guide = make(batch["attention_mask"])
            llama.generate(**batch, **GREEDY, logits_processor=[guide])
            for again in (batch, padded):  # the same prompt again, then a longer one
                with pytest.raises(ValueError, match="second generate call"):
                    llama.generate(**again, **GREEDY, logits_processor=[guide])
            stale = make(batch["attention_mask"])  # built for a mask 7 shorter than generate's
            with pytest.raises(ValueError, match="made for a prompt of"):
                llama.generate(**padded, **GREEDY, logits_processor=[stale])


# --- query guidance (context-aware decoding) --------------------------------------------

QUERIES = ["i was happy today", "the dog ran home and then ate bread with my sister"]


def _last_log_probs(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, prompt: str
) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits[0, -1], dim=-1)


def test_query_guidance_amplifies_the_question_against_the_query_free_prompt(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """The first token is argmax of scale · (log p(t | prompt) − log p(t | query-free)) +
    log p(t | query-free), both passes steered, each row against its own query-free turn."""
    bank, scale = _bank(llama), 3.0
    free = ["", "and then"]
    # A small α: the random bank's norms swamp this tiny model's, and the question with them.
    with steer(llama, bank, joy=0.02, layers=[1, 2]) as steering:  # type: ignore[arg-type]
        got = generate_answers(
            llama,
            tokenizer,
            QUERIES,
            max_new_tokens=1,
            clean=False,
            steering=steering,
            query_guidance=scale,
            query_free=free,
        )
        unguided = generate_answers(llama, tokenizer, QUERIES, max_new_tokens=1, clean=False)
        expected, plain_choice = [], []
        for query, turn in zip(QUERIES, free, strict=True):
            asked = _last_log_probs(llama, tokenizer, format_prompts(tokenizer, [query])[0])
            unasked = _last_log_probs(llama, tokenizer, format_prompts(tokenizer, [turn])[0])
            expected.append(int((scale * (asked - unasked) + unasked).argmax()))
            plain_choice.append(int(asked.argmax()))
    assert expected != plain_choice  # the guidance changes the choice: the test can fail
    assert got == [tokenizer.decode([t], skip_special_tokens=True).strip() for t in expected]
    assert unguided == [
        tokenizer.decode([t], skip_special_tokens=True).strip() for t in plain_choice
    ]


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_query_guidance_mixes_each_step_with_the_penalty_before_the_mix(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast, penalty: float
) -> None:
    """At every step (left padding on both prompts, the second pass on its own cache), the
    scores are γ·ℓ(prompt + answer) + (1 − γ)·ℓ(query-free + answer), ℓ being the log-softmax
    of logits that already carry the repetition penalty (over the generated sequence)."""
    bank, scale = _bank(llama), 2.0
    batch = _batch(tokenizer)
    free = dict(tokenizer(["", "and then the"], return_tensors="pt", padding=True))
    recorder = _Recorder()
    with steer(llama, bank, joy=0.05, layers=[1, 2]) as steering:  # type: ignore[arg-type]
        guide = QueryGuidance(
            llama,
            batch["attention_mask"],
            (free["input_ids"], free["attention_mask"]),
            scale,
            repetition_penalty=penalty,
            steering=steering,
        )
        out = llama.generate(
            **batch,
            **GREEDY,
            logits_processor=[guide, recorder],
            repetition_penalty=penalty,
        )
        answer = out[:, batch["input_ids"].shape[1] :]
        for step in range(NEW):
            sequence = torch.cat([batch["input_ids"], answer[:, :step]], dim=1)
            asked = _logits(llama, batch["input_ids"], batch["attention_mask"], answer[:, :step])
            unasked = _logits(llama, free["input_ids"], free["attention_mask"], answer[:, :step])
            if penalty != 1.0:
                asked, unasked = (
                    _punished(sequence, asked, penalty),
                    _punished(sequence, unasked, penalty),
                )
            expected = scale * torch.log_softmax(asked, -1) + (1 - scale) * torch.log_softmax(
                unasked, -1
            )
            # Older transformers penalise the prompt's padding too: the pad token is left out.
            allowed = torch.isfinite(recorder.seen[step])
            allowed[:, PAD_ID] = False
            got = torch.where(allowed, recorder.seen[step], -1e9)
            want = torch.where(allowed, expected, -1e9)
            got, want = got - got.amax(-1, keepdim=True), want - want.amax(-1, keepdim=True)
            torch.testing.assert_close(got[allowed], want[allowed], rtol=1e-4, atol=1e-4)
            assert torch.equal(answer[:, step], want.argmax(-1))


def _punished(sequence: torch.Tensor, logits: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty, row by row, on every token the row holds but padding."""
    logits = logits.clone()
    for row, tokens in enumerate(sequence):
        for token in set(tokens.tolist()) - {PAD_ID}:
            value = logits[row, token]
            logits[row, token] = value * penalty if value < 0 else value / penalty
    return logits


def _logits(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, answer: torch.Tensor
) -> torch.Tensor:
    """The last position's logits for a left-padded prompt followed by answer tokens."""
    ids = torch.cat([ids, answer], dim=1)
    mask = torch.cat([mask, torch.ones_like(answer)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]


def test_query_guidance_of_one_changes_nothing(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    with steer(llama, _bank(llama), joy=2.0, layers=[1, 2]) as steering:  # type: ignore[arg-type]
        guided = generate_answers(
            llama, tokenizer, QUERIES, max_new_tokens=4, clean=False, query_guidance=1.0
        )
        alone = generate_answers(
            llama, tokenizer, QUERIES, max_new_tokens=4, clean=False, steering=steering
        )
    assert guided == alone


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"query_guidance": 0.5}, ValueError, ">= 1"),
        ({"query_guidance": math.nan}, ValueError, ">= 1"),
        ({"query_guidance": True}, TypeError, "number"),
        ({"query_guidance": "2"}, TypeError, "number"),
        ({"query_guidance": 2.0, "query_free": [""]}, ValueError, "one query-free turn"),
        ({"query_guidance": 2.0, "plain_guidance": 0.5}, ValueError, "not both"),
    ],
)
def test_query_guidance_refuses_bad_input(
    llama: nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    options: dict[str, object],
    error: type,
    match: str,
) -> None:
    _refused(llama, tokenizer, {}, options, error, match)


def test_query_guidance_refuses_steering_of_some_positions(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """The query-free pass's calls would be read as new prompts: refused, not mis-steered."""
    for options in ({"positions": "generated"}, {"schedule": Schedule(2.0, 1, 1.0, 1)}):
        guided = {"query_guidance": 1.5}
        _refused(llama, tokenizer, options, guided, ValueError, "every position")


def _refused(
    llama: nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    steering_options: dict[str, object],
    options: dict[str, object],
    error: type,
    match: str,
) -> None:
    """generate_answers(**options) under steer(**steering_options) raises error(match)."""
    with (
        steer(llama, _bank(llama), joy=1.0, layers=[1], **steering_options) as steering,  # type: ignore[arg-type]
        pytest.raises(error, match=match),
    ):
        generate_answers(
            llama,
            tokenizer,
            QUERIES,
            max_new_tokens=2,
            clean=False,
            steering=steering,
            **options,  # type: ignore[arg-type]
        )


def test_placements_carry_their_query_guidance(
    llama: nn.Module, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    """A placement's query guidance is kept in the file and applied by the one call
    (against the instruction alone), for raised emotions only."""
    instruction = "and then"
    bank = _bank(llama).with_placements(
        {
            "joy": Placement((1, 2), 0.05, instruction=instruction, query_guidance=3.0),
            "fear": Placement((1,), 0.05, query_guidance=1.5),
            "anger": Placement((1,), 0.05),
        }
    )
    bank.save(tmp_path / "bank.safetensors")
    loaded = EmotionVectors.load(tmp_path / "bank.safetensors")
    assert loaded.placements["joy"].query_guidance == 3.0
    assert Asking.of({"joy": 1.0, "fear": 1.0}, loaded.placements).query_guidance == 3.0
    assert (
        Asking.of({"joy": -1.0, "fear": 1.0}, loaded.placements).query_guidance == 1.5
    )  # joy suppressed
    assert Asking.of({"anger": 1.0}, loaded.placements).query_guidance is None
    chat = steer(llama, loaded, joy=1.0, tokenizer=tokenizer)
    got = chat.answer(QUERIES, max_new_tokens=3, clean=False)
    with chat:
        expected = generate_answers(
            llama,
            tokenizer,
            [f"{q} {instruction}" for q in QUERIES],
            max_new_tokens=3,
            clean=False,
            steering=chat,
            query_guidance=3.0,
            query_free=[instruction] * len(QUERIES),
        )
        unguided = generate_answers(
            llama,
            tokenizer,
            [f"{q} {instruction}" for q in QUERIES],
            max_new_tokens=3,
            clean=False,
        )
    assert got == expected
    assert got != unguided
    assert [
        type(p)
        for p in steer(llama, loaded, anger=1.0, tokenizer=tokenizer).generate_kwargs(clean=False)[
            "logits_processor"
        ]
    ] == []
    for bad, error in ((0.5, ValueError), (math.inf, ValueError), (True, TypeError)):
        with pytest.raises(error, match="query_guidance"):
            Placement((1,), 0.3, query_guidance=bad)
    # The second pass needs every position steered, without a schedule: refused up front.
    for options in ({"positions": "generated"}, {"schedule": Schedule(2.0, 1, 1.0, 1)}):
        with pytest.raises(ValueError, match="every position"):
            Placement((1,), 0.3, query_guidance=1.5, **options)  # type: ignore[arg-type]
    assert Placement((1,), 0.3, query_guidance=1.5, positions="all").positions == "all"
