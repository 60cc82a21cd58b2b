"""Draw the README's front: held-out reports of several banks as one success-vs-retention plot.

Each report is one ``benchmarks/steering_methods.py --recipes calibrated`` run over the same
held-out queries; its ``calibrated`` answers become a point named as given (``:EMOTIONS``
keeps only those emotions, e.g. where two banks share the others), the plain answers come
from the first report. The plot in the README (round 8)::

    python benchmarks/front_plot.py docs/front-smollm2.png \
        "out/r7-shipped-heldout/report.json=recipes (persona, guidance)" \
        "out/r7-chosen-lm-heldout/report.json=trained, round 7:anger,sadness" \
        "out/r8/v3-heldout/report.json=trained, shipped"
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
    parser.add_argument("reports", nargs="+", help="REPORT=NAME[:EMOTION,EMOTION]")
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    names = []
    for number, spec in enumerate(args.reports):
        path, _, named = spec.partition("=")
        name, _, only = named.partition(":")
        kept = set(only.split(",")) if only else None
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        settings = settings or data["settings"]
        names.append(name)
        for record in data["records"]:
            if record["recipe"] == "plain" and number == 0:
                records.append(record)
            elif record["recipe"] == "calibrated" and (kept is None or record["target"] in kept):
                records.append({**record, "recipe": name})
    recipes = dict.fromkeys(names, settings["recipes"]["calibrated"])
    report = EvaluationReport(records, settings={**settings, "recipes": recipes})
    report.plot_front(args.out)
    for row in report.summary():
        print(f"{row['recipe']:>28} {row['emotion']:>8} success {row['success']:.2f} "
              f"retention {row['retention']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
