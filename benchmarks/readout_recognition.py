"""Recognising the emotion of held-out texts from the model's own hidden states.

The shipped hand-written answers (``emovec/data/answers``: 100 queries, each answered with
each basic emotion) are split by query, so no query has answers on both sides. On the held-out
answers this prints the accuracy (top emotion among the five) of the nearest-emotion read-out
and of the logistic probe (both fitted on the training answers only, over the bank's band and
others), next to the offline judges ``nade`` and the prototype judge, and confusion matrices.

    OMP_NUM_THREADS=1 python benchmarks/readout_recognition.py [--train-queries 60] [--after-query]
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import numpy as np

from emovec import EmotionVectors, load_model
from emovec.analysis.classifier import EmotionClassifier, confusion_matrix
from emovec.analysis.readout import ReadOut, read
from emovec.datasets import BASIC_EMOTIONS, default_answer_pairs
from emovec.evaluation.scoring import NadeScorer, PrototypeScorer


def _band(readout: ReadOut, layers: list[int]) -> ReadOut:
    """The read-out restricted to ``layers`` (its per-text projections; tokens unchanged)."""
    index = [readout.layers.index(layer) for layer in layers]
    return dataclasses.replace(
        readout, layers=tuple(layers), layer_projections=readout.layer_projections[:, index]
    )


def _markdown(matrix: np.ndarray) -> str:
    head = "| true \\ named | " + " | ".join(BASIC_EMOTIONS) + " |"
    rows = [
        f"| {e} | " + " | ".join(str(int(n)) for n in matrix[i]) + " |"
        for i, e in enumerate(BASIC_EMOTIONS)
    ]
    return "\n".join([head, "|---" * (len(BASIC_EMOTIONS) + 1) + "|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-queries", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--after-query", action="store_true", help="also read each answer after its query"
    )
    args = parser.parse_args()

    pairs = default_answer_pairs()
    queries = sorted({p.query for items in pairs.values() for p in items})
    train_queries = set(random.Random(args.seed).sample(queries, args.train_queries))
    rows = [(p.query, p.emotional, e) for e, items in pairs.items() for p in items]
    train = [r for r in rows if r[0] in train_queries]
    test = [r for r in rows if r[0] not in train_queries]
    assert not {r[0] for r in train} & {r[0] for r in test}
    print(f"{len(train)} training answers ({len(train_queries)} queries), {len(test)} held out")

    model, tokenizer = load_model()
    bank = EmotionVectors.load("vectors/smollm2-135m-instruct.safetensors")
    every = list(range(23))  # the deepest band compared ends at 22
    labels_train = [r[2] for r in train]
    labels_test = [r[2] for r in test]
    outcomes: dict[str, list[str]] = {}
    cv_notes: dict[str, str] = {}
    for reading in ("plain", "after query") if args.after_query else ("plain",):
        kwargs = {} if reading == "plain" else {"queries": [r[0] for r in train + test]}
        full = read(model, tokenizer, [r[1] for r in train + test], bank, layers=every, **kwargs)
        both = (full.take(range(len(train))), full.take(range(len(train), len(full))))
        recommended = list(bank.recommended_layers or [])
        for layers in ([0, 1, 2, 3, 4], [6, 7, 8, 9, 10], recommended, [18, 19, 20, 21, 22]):
            fit_on, held_out = (_band(part, layers) for part in both)
            for method in ("nearest", "probe"):
                clf = EmotionClassifier(model, tokenizer, bank, method=method, layers=layers)  # type: ignore[arg-type]
                clf.fit(fit_on, labels_train)
                name = f"{method}, {reading}, layers {layers[0]}-{layers[-1]}"
                outcomes[name] = clf.predict(held_out)
                cv = clf.cross_validation_
                assert cv is not None
                cv_notes[name] = f"{cv.accuracy:.2f} ± {cv.standard_error:.2f}"
        raw = _band(both[1], recommended).text_projections.argmax(axis=1)
        outcomes[f"raw argmax, {reading}, layers {recommended[0]}-{recommended[-1]}"] = [
            bank.emotions[i] for i in raw
        ]
    texts_test = [r[1] for r in test]
    for name, judge in (("nade", NadeScorer()), ("prototype judge", PrototypeScorer())):
        columns = [list(judge.emotions).index(e) for e in BASIC_EMOTIONS]
        named = judge(texts_test)[:, columns].argmax(axis=1)
        outcomes[name] = [BASIC_EMOTIONS[i] for i in named]

    print("\n| classifier | held-out accuracy | CV accuracy on training answers |")
    print("|---|---:|---:|")
    for name, predicted in outcomes.items():
        accuracy = np.mean([p == t for p, t in zip(predicted, labels_test, strict=True)])
        print(f"| {name} | {accuracy:.3f} | {cv_notes.get(name, '')} |")
    for name in (
        f"nearest, plain, layers {recommended[0]}-{recommended[-1]}",
        f"probe, plain, layers {recommended[0]}-{recommended[-1]}",
        "nade",
        "prototype judge",
    ):
        print(f"\n{name}:\n")
        print(_markdown(confusion_matrix(labels_test, outcomes[name], BASIC_EMOTIONS)))


if __name__ == "__main__":
    main()
