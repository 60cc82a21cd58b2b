"""Narrative pairs (shipped) vs assistant-answer pairs: which steer SmolLM2 better at α = 1?

The shipped pairs tell a first-person event flatly and with the emotion. The alternative,
``benchmarks/data/answer_pairs/``, gives the same assistant answer to an everyday question
calmly and in the emotion's tone (80 pairs per emotion, written for this project). For each
style (and both together) this extracts centred vectors and evaluates α = 1 on the shipped
queries with the project's scorer, printing success / EPS / topic / degeneration per emotion.

    python benchmarks/pair_styles.py [--queries 40]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emovec import extract, load_model
from emovec.datasets import BASIC_EMOTIONS, default_pairs, default_queries, read_pairs
from emovec.evaluation import evaluate
from emovec.generation import Decoding

ANSWER_PAIRS = Path(__file__).resolve().parent / "data" / "answer_pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()

    model, tokenizer = load_model()
    narrative = default_pairs()
    answers = {e: read_pairs(ANSWER_PAIRS / f"{e}.jsonl") for e in BASIC_EMOTIONS}
    styles = {
        "narrative": narrative,
        "answer": answers,
        "both": {e: [*narrative[e], *answers[e]] for e in BASIC_EMOTIONS},
    }
    queries = default_queries()[: args.queries]
    print("| pairs | emotion | success | EPS | sim(query) | degenerate |")
    print("|---|---|---|---|---|---|")
    for style, pairs in styles.items():
        vectors = extract(model, tokenizer, pairs, progress=False).center()
        report = evaluate(
            model,
            tokenizer,
            vectors,
            alphas=[0.0, 1.0],
            queries=queries,
            decoding=Decoding(max_new_tokens=48),
            batch_size=16,
            progress=False,
        )
        for row in report.summary():
            if row["recipe"] == "vector":
                print(
                    f"| {style} | {row['emotion']} | {row['success']:.2f} | {row['eps']:.3f} "
                    f"| {row['sim_query']:.2f} | {row['degenerate']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
