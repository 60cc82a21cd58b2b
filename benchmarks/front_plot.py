"""Draw the README's front: held-out reports of several banks as one success-vs-retention plot.

Each report is one ``benchmarks/steering_methods.py`` run over the same held-out queries;
its ``calibrated`` answers (or, named ``REPORT@RECIPE``, that recipe's) become a point named
as given (``:EMOTIONS`` keeps only those emotions, e.g. where two banks share the others),
the plain answers come from the first report. The plot in the README (round 9: the shipped
bank at α = 1 and at other strengths)::

    python benchmarks/front_plot.py docs/front-smollm2.png \
        "out/r7-shipped-heldout/report.json=recipes (persona, guidance)" \
        "out/r8/v3-heldout/report.json=trained, shipped" \
        "out/r9/front-heldout/report.json@vector-only-0.75=trained ×0.75" \
        "out/r9/front-heldout/report.json@vector-only-1.1=trained ×1.1" \
        "out/r9/front-heldout/report.json@vector-only-1.25=trained ×1.25"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from emovec.evaluation import EvaluationReport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("reports", nargs="+", help="REPORT[@RECIPE]=NAME[:EMOTION,EMOTION]")
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    recipes: dict[str, Any] = {}
    for number, spec in enumerate(args.reports):
        source, _, named = spec.partition("=")
        path, _, recipe = source.partition("@")
        recipe = recipe or "calibrated"
        name, _, only = named.partition(":")
        kept = set(only.split(",")) if only else None
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        settings = settings or data["settings"]
        for record in data["records"]:
            if record["recipe"] == "plain" and number == 0:
                records.append(record)
            elif record["recipe"] == recipe and (kept is None or record["target"] in kept):
                records.append({**record, "recipe": name})
        recipes[name] = data["settings"]["recipes"].get(recipe)
    report = EvaluationReport(records, settings={**settings, "recipes": recipes})
    report.plot_front(args.out)
    for row in report.summary():
        print(f"{row['recipe']:>28} {row['emotion']:>8} success {row['success']:.2f} "
              f"retention {row['retention']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
