"""Choose each emotion's recipe from a method comparison and store it in the vector file.

Reads the ``report.json`` that ``benchmarks/steering_methods.py --split calibration`` wrote
(every recipe answered the calibration queries, never the held-out ones) and keeps, per
emotion, the recipe :func:`emovec.evaluation.choice.choose` picks: fluent within the
:class:`~emovec.evaluation.Tolerance` of plain, on or above the front of the ``--reference``
recipes (the bank as it was, at several strengths; success within one answer), and nearest
both bars, ``min(success / 0.8, 1) + min(retention / 0.7, 1)``, success by the judge the report
was scored with. The chosen recipe becomes the emotion's placement: its layers, its dose (the
bank's dose × α), and the instruction, persona and positions it was answered with.

    python benchmarks/choose_recipes.py out/grid/report.json \
        --reference vector-only-0.5 vector-only-0.75 vector-only \
        --vectors /tmp/old-bank.safetensors --out vectors/smollm2-135m-instruct.safetensors
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from emovec import EmotionVectors
from emovec.evaluation import EvaluationReport, Tolerance
from emovec.evaluation.choice import DEFAULT_TARGET_SUCCESS, choose
from emovec.evaluation.recipes import PERSONAS, PROMPT_INSTRUCTIONS


def pooled(first: EvaluationReport, second: EvaluationReport) -> EvaluationReport:
    """One report over both reports' queries (which must differ), holding the recipes both
    answered: every summary row is then a mean over all the queries."""
    queries = {r["query"] for r in first.records}
    if queries & {r["query"] for r in second.records}:
        raise SystemExit("pooled reports must answer different queries")
    both = {r["recipe"] for r in first.records} & {r["recipe"] for r in second.records}
    records = [r for r in first.records + second.records if r["recipe"] in both]
    queries |= {r["query"] for r in second.records}
    recipes = {n: v for n, v in first.settings["recipes"].items() if n in both}
    settings = {**first.settings, "recipes": recipes, "queries": len(queries)}
    return EvaluationReport(records, settings=settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", type=Path, nargs="+", help="reports over the same queries")
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="+",
        default=[],
        help="reports over other calibration queries (one sweep: their own plain answers), "
        "pooled with the first ones; only recipes answered in both count",
    )
    parser.add_argument(
        "--reference",
        nargs="+",
        default=[],
        help="recipes whose front the choice must not fall behind",
    )
    args = parser.parse_args()

    report = EvaluationReport.combined([EvaluationReport.from_json(p) for p in args.reports])
    if args.pool:
        more = EvaluationReport.combined([EvaluationReport.from_json(p) for p in args.pool])
        report = pooled(report, more)
    vectors = EmotionVectors.load(args.vectors)
    recipes = report.settings["recipes"]
    tolerance = Tolerance()
    summary = report.summary()
    chosen: dict[str, Any] = {}
    placements = {}
    for emotion in vectors.emotions:
        rows = [r for r in summary if r["emotion"] == emotion]
        plain = next(r for r in rows if r["recipe"] == "plain")
        reference = [r for r in rows if r["recipe"] in args.reference]
        if len(reference) != len(args.reference):
            raise SystemExit(f"{emotion}: the report lacks some of {args.reference}")
        best = choose(
            [r for r in rows if r["recipe"] in recipes],  # "prompt" (no vector) is no placement
            plain,
            tolerance=tolerance,
            reference=reference,
            slack=1.0 / plain["n"],
        )
        if best is None:
            print(f"{emotion}: no recipe is fluent and on the reference's front; kept as it was")
            continue
        recipe = recipes[best["recipe"]]
        old = vectors.placements[emotion]
        placements[emotion] = replace(
            old,
            dose=round(old.dose * best["alpha"], 6),  # 0.2625, not 0.26249999999999996
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
        "reports": [str(p) for p in args.reports],
        "queries": report.settings.get("queries"),
        "split": report.settings.get("split"),
        "decoding": report.settings.get("decoding"),
        "scorer": report.settings.get("scorer"),
        "tolerance": asdict(tolerance),
        "target_success": DEFAULT_TARGET_SUCCESS,
        "reference": args.reference,
        "chosen": chosen,
        "earlier": vectors.settings.get("calibration"),
    }
    vectors.with_placements(placements).with_settings(calibration=record).save(args.out)
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()
