"""How long training a bank takes, against extracting one, measured in one run.

Trains the five shipped emotions of the embedded model as ``emovec train`` does (the same
defaults), extracts a mean-difference bank from the same triples, and trains one emotion a
few steps in float32 and in bfloat16 autocast; prints the seconds and the ratios.

    python benchmarks/training_speed.py                 # five emotions, default steps
    python benchmarks/training_speed.py --steps 10      # a quicker look
"""

from __future__ import annotations

import argparse
import time

import torch

from emovec import extract, load_model, train
from emovec.datasets import default_answer_pairs
from emovec.models import DEFAULT_MODEL


def _timed(work: object) -> float:
    started = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--objective", default="lm")
    parser.add_argument(
        "--probe-steps",
        type=int,
        default=20,
        help="steps of the dtype probe (timed without the hidden norms' reading)",
    )
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    triples = default_answer_pairs()
    print(f"{args.model}: {torch.get_num_threads()} threads, {args.steps} steps per emotion")

    extraction = _timed(
        lambda: extract(model, tokenizer, triples, reading="response", progress=False)
    )
    training = _timed(
        lambda: train(model, tokenizer, objective=args.objective, steps=args.steps, progress=False)
    )
    probe_seconds = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        probe = train(
            model,
            tokenizer,
            emotions=["joy"],
            objective=args.objective,
            steps=args.probe_steps,
            eval_every=args.probe_steps,
            precision=dtype,
            progress=False,
        )
        # The steps alone, as the bank records them (without the hidden norms' reading).
        probe_seconds[name] = float(probe.settings["training"]["joy"]["seconds"])
    print(f"extract (mean difference, five emotions): {extraction:.1f} s")
    print(f"train ({args.objective}, five emotions): {training:.1f} s = {training / 60:.1f} min")
    print(f"train / extract: {training / extraction:.1f}x")
    print(
        f"one emotion, {args.probe_steps} steps: float32 {probe_seconds['float32']:.1f} s, "
        f"bfloat16 {probe_seconds['bfloat16']:.1f} s "
        f"({probe_seconds['float32'] / probe_seconds['bfloat16']:.2f}x)"
    )


if __name__ == "__main__":
    main()
