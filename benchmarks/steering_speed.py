"""Steered vs plain generation speed on the embedded model, measured in one run.

Plain and each steered variant (the methods, logit-space guidance with its second pass, the
slur blocker) run in turn, so machine noise hits all alike; the report is each one's
tokens-per-second ratio to plain (1.0 = it costs nothing).

    python benchmarks/steering_speed.py [--batch-sizes 1 8] [--tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from emovec import EmotionVectors, load_model, steer
from emovec.generation import format_prompts
from emovec.guidance import PlainGuidance
from emovec.offensive import clean_logits_processor

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "smollm2-135m-instruct.safetensors"
QUERIES = [
    "Tell me about your morning.",
    "Describe the town where you live.",
    "What did you do last weekend?",
    "How do I repot a plant?",
    "Tell me about your neighbour.",
    "Describe your new job.",
    "What happened at the meeting today?",
    "Explain how a bicycle gear works.",
]


def _tokens_per_second(model, inputs, new_tokens: int, processors=()) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=list(processors),
        )
    elapsed = time.perf_counter() - started
    generated = (output.shape[1] - inputs["input_ids"].shape[1]) * output.shape[0]
    return generated / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_model()
    vectors = EmotionVectors.load(VECTORS)
    for batch_size in args.batch_sizes:
        prompts = format_prompts(tokenizer, (QUERIES * batch_size)[:batch_size])
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        _tokens_per_second(model, inputs, 4)  # warm-up
        blocker = clean_logits_processor(tokenizer)
        variants = {
            "plain": ({}, None),
            "add": ({}, ()),
            "project": ({"method": "project"}, ()),
            "angular": ({"method": "angular"}, ()),
            "guided": ({}, "guided"),
            "add + blocker": ({}, (blocker,)),
        }
        samples: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.repeats):
            for label, (options, processors) in variants.items():
                if processors is None:
                    samples[label].append(_tokens_per_second(model, inputs, args.tokens))
                    continue
                with steer(model, vectors, joy=1.0, anger=0.5, **options) as steering:
                    if processors == "guided":
                        mask = inputs["attention_mask"]
                        processors = (PlainGuidance(model, steering, mask, weight=0.5),)
                    samples[label].append(
                        _tokens_per_second(model, inputs, args.tokens, processors)
                    )
        plain = statistics.median(samples["plain"])
        line = ", ".join(
            f"{label} {statistics.median(v) / plain:.3f}" for label, v in samples.items()
        )
        print(
            f"batch {batch_size}: plain {plain:.1f} tok/s; ratio to plain (median of "
            f"{args.repeats}): {line}"
        )
    per_row_mixes(model, tokenizer, vectors, args.tokens)


def per_row_mixes(model, tokenizer, vectors, new_tokens: int) -> None:  # type: ignore[no-untyped-def]
    """Eight (emotion, α) mixes for one query: one batched call with rows= vs one call each."""
    mixes = [{e: a} for e in ("joy", "anger", "fear", "sadness") for a in (0.5, 1.0)]
    prompt = format_prompts(tokenizer, QUERIES[:1])
    single = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    batch = tokenizer(prompt * len(mixes), return_tensors="pt", add_special_tokens=False)
    started = time.perf_counter()
    for mix in mixes:
        with steer(model, vectors, **mix):
            _tokens_per_second(model, single, new_tokens)
    one_by_one = len(mixes) / (time.perf_counter() - started)
    started = time.perf_counter()
    with steer(model, vectors, rows=mixes):
        _tokens_per_second(model, batch, new_tokens)
    batched = len(mixes) / (time.perf_counter() - started)
    print(
        f"per-row mixes ({len(mixes)} rows): one call per mix {one_by_one:.2f} rows/s, "
        f"one batched call {batched:.2f} rows/s, speed-up {batched / one_by_one:.2f}x"
    )


if __name__ == "__main__":
    main()
