"""Choose each emotion's recipe from a method comparison and store it in the vector file.

Reads the ``report.json`` that ``benchmarks/steering_methods.py --split calibration`` wrote
(every recipe answered the calibration queries, never the held-out ones) and keeps, per
emotion, the recipe :func:`emovec.evaluation.choice.choose` picks: fluent within the
:class:`~emovec.evaluation.Tolerance` of plain, on or above the front of the ``--reference``
recipes (the bank as it was, at several strengths; success within one answer), and nearest
both bars, ``min(success / 0.8, 1) + min(retention / 0.7, 1)``, success by the judge the report
was scored with. The chosen recipe becomes the emotion's placement: its layers, its dose (the
bank's dose × α), and the instruction, persona, positions, schedule and query guidance it was
answered with (those it left to the placement: the placement's).

    python benchmarks/choose_recipes.py out/grid/report.json \
        --reference vector-only-0.5 vector-only-0.75 vector-only \
        --vectors /tmp/old-bank.safetensors --out vectors/smollm2-135m-instruct.safetensors

A report may be named ``PATH:RECIPE,RECIPE`` to read only those recipes from it (e.g. where an
older run answered a recipe of the same name under other code). The reference may come from
other reports (``--reference-reports``, ``--reference-pool``: say, an older bank answering the
same queries), and then is no candidate. Round 5's SmolLM2 choice (docs/methods.md; round 4's
without the ``r5C*`` reports)::

    python benchmarks/choose_recipes.py out/r3ship/report.json out/r4A/report.json \
        out/r4HA/report.json out/r5C0/report.json --pool out/c80A/report.json:calibrated \
        out/r4B/report.json out/r4HB/report.json out/r5C40/report.json \
        --reference-reports out/r3V/report.json --reference-pool out/c80R/report.json \
        --reference vector-only-0.5 vector-only-0.75 vector-only \
        --vectors <round 2's bank> --earlier <round 4's bank> \
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
from emovec.evaluation.choice import DEFAULT_TARGET_SUCCESS, choose
from emovec.evaluation.recipes import Recipe
from emovec.vectors import Placement


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


def read(specs: list[str]) -> EvaluationReport | None:
    """The reports named ``PATH`` or ``PATH:RECIPE,RECIPE`` (only those recipes, and plain),
    combined: they must answer the same queries."""
    if not specs:
        return None
    reports = []
    for spec in specs:
        path, _, names = spec.partition(":")
        report = EvaluationReport.from_json(Path(path))
        if names:
            kept = {"plain", *names.split(",")}
            recipes = report.settings.get("recipes") or {}
            report = EvaluationReport(
                [r for r in report.records if r["recipe"] in kept],
                settings={
                    **report.settings,
                    "recipes": {n: recipes[n] for n in kept & set(recipes)},
                },
            )
        reports.append(report)
    return EvaluationReport.combined(reports)


def placement_of(
    old: Placement, written: dict[str, Any], alpha: float, vectors: EmotionVectors, emotion: str
) -> Placement:
    """The placement a recipe answered with at ``alpha``: the recipe at ``old``
    (:meth:`~emovec.evaluation.Recipe.placement_for`, as :func:`emovec.evaluation.evaluate`
    applied it), at ``old``'s dose × α."""
    recipe = Recipe.from_dict(written)
    if recipe.placement or recipe.method != "add" or recipe.plain_guidance:
        raise SystemExit(
            f"{emotion}: a recipe with its own placement, method or plain guidance is no placement"
        )
    return _dosed(
        recipe.placement_for(vectors.with_placements({emotion: old}), emotion), old, alpha
    )


def _dosed(placement: Placement, old: Placement, alpha: float) -> Placement:
    """``placement`` at ``old``'s dose × α."""
    return replace(placement, dose=round(old.dose * alpha, 6))  # 0.2625, not 0.2624999…


def _chosen(record: dict[str, Any] | None, emotion: str) -> dict[str, Any] | None:
    """What a calibration record chose for ``emotion`` (``None`` if nothing)."""
    return ((record or {}).get("chosen") or {}).get(emotion)


def _chosen_alpha(vectors: EmotionVectors, emotion: str) -> float:
    """The α the bank's own calibration record chose ``emotion`` at (1 if none)."""
    return float((_chosen(vectors.settings.get("calibration"), emotion) or {}).get("alpha", 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", nargs="+", help="reports over the same queries (PATH[:RECIPES])")
    parser.add_argument("--vectors", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--pool",
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
    parser.add_argument(
        "--reference-reports",
        nargs="+",
        default=[],
        help="reports holding the reference recipes (default: the candidates' own)",
    )
    parser.add_argument(
        "--reference-pool",
        nargs="+",
        default=[],
        help="the reference's reports over the --pool queries",
    )
    parser.add_argument(
        "--keep",
        nargs="+",
        default=[],
        help="emotions not chosen again: each keeps the α --earlier chose it at (on the "
        "trained dose; a vector-only choice only), e.g. a bank trained again whose joy did "
        "not change",
    )
    parser.add_argument(
        "--earlier",
        type=Path,
        help="the bank this choice replaces, whose record is kept under 'earlier' "
        "(default: --vectors)",
    )
    args = parser.parse_args()

    report = read(args.reports)
    more = read(args.pool)
    report = pooled(report, more) if more else report
    reference_report = read(args.reference_reports)
    if reference_report is None:
        reference_report = report
    else:
        other = read(args.reference_pool)
        reference_report = pooled(reference_report, other) if other else reference_report
    vectors = EmotionVectors.load(args.vectors)
    recipes = report.settings["recipes"]
    tolerance = Tolerance()
    summary, references = report.summary(), reference_report.summary()
    chosen: dict[str, Any] = {}
    placements = {}
    earlier = EmotionVectors.load(args.earlier or args.vectors).settings.get("calibration")
    for emotion in args.keep:
        before = _chosen(earlier, emotion)
        if before is None or not str(before.get("recipe", "")).startswith("vector-only"):
            raise SystemExit(f"{emotion}: --earlier chose it at no vector-only α to keep")
        old = vectors.placements[emotion]
        placements[emotion] = _dosed(
            old, old, float(before["alpha"]) / _chosen_alpha(vectors, emotion)
        )
        chosen[emotion] = {**before, **placements[emotion].to_dict(), "kept": True}
        print(f"{emotion}: kept at α {before['alpha']:g} on the trained dose")
    for emotion in [e for e in vectors.emotions if e not in args.keep]:
        rows = [r for r in summary if r["emotion"] == emotion]
        plain = next(r for r in rows if r["recipe"] == "plain")
        reference = [
            r for r in references if r["emotion"] == emotion and r["recipe"] in args.reference
        ]
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
        placements[emotion] = placement_of(
            vectors.placements[emotion], recipes[best["recipe"]], best["alpha"], vectors, emotion
        )
        chosen[emotion] = {
            "recipe": best["recipe"],
            # α on the placement as the bank was made: the recipe's α times the one the
            # input bank was already chosen at (a bank chosen again from a chosen one).
            "alpha": round(best["alpha"] * _chosen_alpha(vectors, emotion), 6),
            "recipe_alpha": best["alpha"],
            "success": best["success"],
            "retention": best["retention"],
            "degenerate": best["degenerate"],
            "offensive": best["offensive"],
            "invented": best["invented"],
            **placements[emotion].to_dict(),
        }
        print(f"{emotion}: {best['recipe']} (α {best['alpha']:g}) success {best['success']:.2f} "
              f"retention {best['retention']:.2f}")  # fmt: skip
    record = {
        "chosen_by": "benchmarks/choose_recipes.py",
        "reports": args.reports,
        "pool": args.pool,
        "reference_reports": args.reference_reports + args.reference_pool,
        "queries": report.settings.get("queries"),
        "split": report.settings.get("split"),
        "decoding": report.settings.get("decoding"),
        "scorer": report.settings.get("scorer"),
        "tolerance": asdict(tolerance),
        "target_success": DEFAULT_TARGET_SUCCESS,
        "reference": args.reference,
        "chosen": chosen,
        "earlier": earlier,
    }
    vectors.with_placements(placements).with_settings(calibration=record).save(args.out)
    print(json.dumps(chosen, indent=1))


if __name__ == "__main__":
    main()
