"""Choose each emotion's recipe from a method comparison and store it in the vector file.

Reads the ``report.json`` that ``benchmarks/steering_methods.py --split calibration`` wrote
(every recipe answered the calibration queries, never the held-out ones) and keeps, per
emotion, among the recipes whose fluency stays within the :class:`~emovec.evaluation.Tolerance`
of plain (degeneration, perplexity, offensive rate; topic retention is the second goal, not
a filter), the one closest to the quality bar: the highest
``min(success / target_success, 1) + min(retention / min_topic_ratio, 1)`` (ties: higher
success, then higher retention), success by the judge the report was scored with; with
``--reference NAME`` only among recipes at least as good as that one (the bank as it was) on
both counts, success within one answer. The chosen
recipe becomes the emotion's placement: its layers, its dose (the bank's dose × α), and the
instruction, persona and positions it was answered with.

    python benchmarks/choose_recipes.py out/grid/report.json \
        --vectors vectors/smollm2-135m-instruct.safetensors \
        --out vectors/smollm2-135m-instruct.safetensors
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from emovec import EmotionVectors
from emovec.evaluation import EvaluationReport, Tolerance
from emovec.evaluation.recipes import PERSONAS, PROMPT_INSTRUCTIONS

TARGET_SUCCESS = 0.8


def attainment(row: dict[str, Any], tolerance: Tolerance) -> tuple[float, float, float]:
    """How close a summary row comes to both bars (each capped at 1), then its tie-breakers."""
    score = min(row["success"] / TARGET_SUCCESS, 1.0) + min(
        row["retention"] / tolerance.min_topic_ratio, 1.0
    )
    return (round(score, 6), row["success"], row["retention"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report", type=Path)
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", help="recipe the choice must not fall behind")
    args = parser.parse_args()

    report = EvaluationReport.from_json(args.report)
    vectors = EmotionVectors.load(args.vectors)
    recipes = report.settings["recipes"]
    tolerance = Tolerance()
    fluency = replace(tolerance, min_topic_ratio=0.0)  # retention is scored, not filtered
    summary = report.summary()
    chosen: dict[str, Any] = {}
    placements = {}
    for emotion in vectors.emotions:
        rows = [r for r in summary if r["emotion"] == emotion]
        plain = next(r for r in rows if r["recipe"] == "plain")
        fine = [
            r for r in rows if r["recipe"] in recipes and fluency.accepts(r, plain)
        ]  # "prompt" (no vector) is a baseline, not a placement
        if args.reference:
            ref = next(r for r in rows if r["recipe"] == args.reference)
            one_answer = 1.0 / ref["n"]
            fine = [
                r
                for r in fine
                if r["success"] >= ref["success"] - one_answer - 1e-9
                and r["retention"] >= ref["retention"]
            ] or [ref]
        best = max(fine, key=lambda r: attainment(r, tolerance))
        recipe = recipes[best["recipe"]]
        old = vectors.placements[emotion]
        placements[emotion] = replace(
            old,
            dose=old.dose * best["alpha"],
            instruction=PROMPT_INSTRUCTIONS[emotion] if recipe["instruct"] else None,
            persona=PERSONAS[emotion] if recipe["persona"] else None,
            positions=recipe["positions"],
        )
        chosen[emotion] = {
            "recipe": best["recipe"],
            "alpha": best["alpha"],
            "success": best["success"],
            "retention": best["retention"],
            "degenerate": best["degenerate"],
            "offensive": best["offensive"],
            **placements[emotion].to_dict(),
        }
        print(f"{emotion}: {best['recipe']} (α {best['alpha']:g}) success {best['success']:.2f} "
              f"retention {best['retention']:.2f}")  # fmt: skip
    record = {
        "method": "benchmarks/choose_recipes.py",
        "report": str(args.report),
        "queries": report.settings.get("queries"),
        "split": report.settings.get("split"),
        "decoding": report.settings.get("decoding"),
        "scorer": report.settings.get("scorer"),
        "tolerance": asdict(tolerance),
        "target_success": TARGET_SUCCESS,
        "chosen": chosen,
        "earlier": vectors.settings.get("calibration"),
    }
    vectors.with_placements(placements).with_settings(calibration=record).save(args.out)
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()
