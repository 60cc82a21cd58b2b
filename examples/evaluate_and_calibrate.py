"""Measure steering, pick α, and calibrate an emotion's placement, in miniature.

``evaluate`` answers each query plain and under each (emotion, α), and scores the answers:
*success* (the judge's top emotion is the target), *retention* (still on the question),
offensive, degenerate, invented (made-up words) and perplexity. ``recommend_alpha`` picks,
per emotion, the largest α within a :class:`Tolerance` of the plain answers. ``calibrate``
searches layer bands × doses for where the emotion shows most while staying fluent, and
stores the winner in the bank.

Real measurements use dozens of queries and ~48 tokens (``emovec eval``, ``emovec
calibrate``); this one uses 3 queries and 16 tokens so that it runs in seconds, and its
numbers are only a demonstration. It needs the ``[eval]`` extra and the data packages that
``scripts/setup.sh`` installs.

Run it from anywhere, offline: ``python examples/evaluate_and_calibrate.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from emovec import EmotionVectors, load_model
from emovec.evaluation import Tolerance, calibrate, evaluate, recommend_alpha
from emovec.generation import Decoding
from emovec.prebuilt import prebuilt_path

QUERIES = [
    "Tell me about your neighbour.",
    "What is your kitchen like?",
    "Describe a walk in the park.",
]
# Greedy, 16 new tokens, the repetition penalty the shipped bank was calibrated with.
DECODING = Decoding(max_new_tokens=16, repetition_penalty=1.15)


def main() -> None:
    """Evaluate sadness at α = 0 and 1, recommend an α, then calibrate it on two doses."""
    model, tokenizer = load_model()
    path = prebuilt_path("smollm2-135m-instruct")
    assert path is not None, "emovec ships vectors for smollm2-135m-instruct"
    vectors = EmotionVectors.load(path)

    # α = 0 is the plain model (answered once); α = 1 is sadness as the bank was calibrated.
    report = evaluate(
        model,
        tokenizer,
        vectors,
        emotions=["sadness"],
        alphas=(0.0, 1.0),
        queries=QUERIES,
        decoding=DECODING,
        progress=False,
    )
    print(report.to_markdown())
    # The largest α > 0 within tolerance: topic retention at least min_topic_ratio of
    # plain's, and no more offensive, degenerate, invented or broken (perplexity) text than
    # the limits allow. The library's default ratio is 0.7; three queries call for a looser one.
    tolerance = Tolerance(min_topic_ratio=0.5)
    print(f"recommended α: {recommend_alpha(report, tolerance)}")

    # The chosen band and dose become the emotion's new placement (α = 1 then means that
    # dose at that band). The shipped placements share their dose among layers by trained
    # weights, which an even spread over a band would drop: calibrate refuses them, so the
    # vectors are calibrated without their placement.
    calibration = calibrate(
        model,
        tokenizer,
        vectors.without_placements(["sadness"]),
        emotions=["sadness"],
        bands=[(12, 13, 14, 15, 16)],
        doses=(0.2, 0.35),
        queries=QUERIES,
        tolerance=tolerance,
        decoding=DECODING,
        progress=False,
    )
    print(calibration.to_markdown())
    tuned = calibration.apply(vectors)
    with tempfile.TemporaryDirectory() as folder:
        saved = EmotionVectors.load(tuned.save(Path(folder) / "calibrated.safetensors"))
    # None: no setting was within tolerance, and the emotion is steered at the bank's band.
    print(f"sadness placement, saved and loaded: {saved.placements.get('sadness')}")


if __name__ == "__main__":
    main()
