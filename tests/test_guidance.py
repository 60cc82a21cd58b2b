"""PlainGuidance: the next-token mix of a steered and a plain pass, under left padding."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PAD_ID, build_model, random_bank
from torch import nn
from transformers import LogitsProcessor, PreTrainedTokenizerFast

from emovec import find_layers, steer
from emovec.guidance import PlainGuidance

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
    return random_bank(len(find_layers(model)), hidden)


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
    guide = PlainGuidance(llama, steering, batch["attention_mask"][:1], weight=0.5)
    with steering, pytest.raises(ValueError, match="rows"):
        llama.generate(**batch, **GREEDY, logits_processor=[guide])
