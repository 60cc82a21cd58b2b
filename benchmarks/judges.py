"""How far can each emotion judge be trusted on answers that carry content?

The shipped answer pairs (``emovec/data/answers``) give 100 everyday queries, each answered
neutrally and, on topic, with each basic emotion made unmistakable. This prints, per judge,
the share of each emotion's answers it names correctly (top emotion among the five), and
which emotion it names for the neutral answers (a judge always names one).

    python benchmarks/judges.py [--scorer nade prototypes MODEL_PATH ...]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from emovec.datasets import BASIC_EMOTIONS, default_answer_pairs
from emovec.evaluation.scoring import load_scorer, recognition_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scorer", nargs="+", default=["nade", "prototypes"])
    args = parser.parse_args()

    pairs = default_answer_pairs()
    answers = {e: [p.emotional for p in items] for e, items in pairs.items()}
    neutral = [p.neutral for p in pairs[BASIC_EMOTIONS[0]]]
    print("| judge | " + " | ".join(BASIC_EMOTIONS) + " | neutral answers named |")
    print("|---" * (len(BASIC_EMOTIONS) + 2) + "|")
    for spec in args.scorer:
        scorer = load_scorer(spec, emotions=BASIC_EMOTIONS)
        rates = recognition_rates(scorer, answers)
        columns = [list(scorer.emotions).index(e) for e in BASIC_EMOTIONS]
        named = Counter(BASIC_EMOTIONS[int(i)] for i in np.argmax(scorer(neutral)[:, columns], 1))
        spread = ", ".join(f"{e} {n}" for e, n in named.most_common())
        cells = " | ".join(f"{rates[e]:.2f}" for e in BASIC_EMOTIONS)
        print(f"| {spec} | {cells} | {spread} |")


if __name__ == "__main__":
    main()
