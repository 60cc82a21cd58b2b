"""Batched text generation helpers shared by the CLI, evaluation and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.models import input_device

__all__ = ["format_prompts", "generate_answers"]


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The BOS token's text if the tokenizer adds one on its own, else ``""``."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return str(bos) if ids[:1] == [bos_id] else ""


def format_prompts(tokenizer: PreTrainedTokenizerBase, queries: Sequence[str]) -> list[str]:
    """Wrap queries as a user turn in the chat template, or as ``Q: … A:`` without one.

    The prompts carry their own special tokens and are tokenised with
    ``add_special_tokens=False``: a chat template writes them itself; without one, the BOS
    token leads when the tokenizer would add it (base models such as Gemma 3 degenerate
    without it: "A\nA\nA…").
    """
    if getattr(tokenizer, "chat_template", None):
        return [
            str(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                )
            )
            for q in queries
        ]
    bos = _bos_prefix(tokenizer)
    return [f"{bos}Q: {q}\nA:" for q in queries]


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Answer each query (batched, left-padded) and return only the new text.

    ``repetition_penalty`` > 1 divides the logits of tokens already in the sequence (CTRL's
    penalty, as in ``transformers``); 1 leaves decoding untouched.
    """
    if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be positive, not {repetition_penalty}.")
    answers: list[str] = []
    device = input_device(model)
    prompts = format_prompts(tokenizer, queries)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    for start in range(0, len(prompts), batch_size):
        torch.manual_seed(seed + start)
        batch = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(device)
        with torch.inference_mode():
            output = model.generate(  # type: ignore[operator]
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                repetition_penalty=repetition_penalty,
                **sampling,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers.extend(
            t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        )
    return answers
