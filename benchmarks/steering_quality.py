"""How clearly each emotion shows at several strengths, scored offline with ``nade``.

For every emotion and α, answers the first N shipped evaluation queries (greedy) and prints:
``top`` (share of answers whose highest score among the five emotions is the target),
``raised`` (share whose target score beats the plain answer's), the mean target score, and
``distinct-2`` (share of distinct word bigrams; lower = repetitive) with ``degenerate``
(share of answers whose distinct-2 is under 0.5).

    python benchmarks/steering_quality.py [--alphas -1 1 2] [--queries 32] [--tokens 40]
        [--repetition-penalty 1.15]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from emovec import EmotionVectors, load_model, steer
from emovec.datasets import default_queries
from emovec.evaluation.metrics import distinct_n
from emovec.evaluation.scoring import NadeScorer
from emovec.generation import generate_answers

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "smollm2-135m-instruct.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", default=str(VECTORS))
    parser.add_argument("--alphas", type=float, nargs="+", default=[-1.0, 1.0, 2.0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument(
        "--layers", type=int, nargs="+", help="default: each emotion's placement, or the band"
    )
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    args = parser.parse_args()

    queries = default_queries()[: args.queries]
    model, tokenizer = load_model()
    vectors = EmotionVectors.load(args.vectors)
    scorer = NadeScorer()

    def answer() -> list[str]:
        return generate_answers(
            model,
            tokenizer,
            queries,
            max_new_tokens=args.tokens,
            repetition_penalty=args.repetition_penalty,
        )

    plain = answer()
    plain_scores = scorer(plain)
    print(f"{len(queries)} queries, {args.tokens} new tokens, greedy; vectors {args.vectors}")
    print("| emotion | α | top | raised | mean score | distinct-2 | degenerate |")
    print("|---|---|---|---|---|---|---|")
    for column, emotion in enumerate(scorer.emotions):
        rows = [(0.0, plain, plain_scores)]
        for alpha in args.alphas:
            with steer(model, vectors, layers=args.layers, **{emotion: alpha}):
                answers = answer()
            rows.append((alpha, answers, scorer(answers)))
        for alpha, answers, scores in sorted(rows, key=lambda row: row[0]):
            distinct = np.array([distinct_n(a) for a in answers])
            print(
                f"| {emotion} | {alpha:+g} | {np.mean(scores.argmax(1) == column):.2f} "
                f"| {np.mean(scores[:, column] > plain_scores[:, column]):.2f} "
                f"| {scores[:, column].mean():.3f} | {distinct.mean():.2f} "
                f"| {np.mean(distinct < 0.5):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
