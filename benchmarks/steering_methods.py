"""Steering methods against each other: success by both judges, topic retention, cleanliness.

Every recipe (placement, method, positions, schedule; instruction; persona; guidance) answers the
same queries for the five emotions in one :func:`emovec.evaluation.evaluate` sweep (plain
answers once, per-row mixes), greedy with the given repetition penalty. Per recipe and
emotion it prints success by the prototype judge and by nade (the target is the top one of
the bank's emotions), topic retention (mean sim(answer, query) / mean sim(plain answer,
query), MiniLM), the median perplexity under the unsteered model (word salad after an
on-topic opening keeps retention but not perplexity), degeneration and the offensive rate,
and writes the report and the success-vs-retention plot (every recipe a point, the Pareto
front drawn).

    python benchmarks/steering_methods.py --split heldout --queries 40 \
        --recipes calibrated vector-only generated-1.5 angular guided --out out/methods

``--split calibration``: the shipped calibration queries (what calibration chooses on);
``--split heldout``: the evaluation queries (never used for extraction or calibration).
``calibrated`` is the bank as shipped (its placements and instructions); the others steer
every emotion at the bank's placements, changed as named; ``prompt`` (the instruction alone,
no vector) is always included.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emovec import EmotionVectors, Schedule, load_model
from emovec.datasets import default_calibration_queries, default_queries
from emovec.evaluation import EvaluationReport, Recipe, evaluate
from emovec.evaluation.scoring import PrototypeScorer
from emovec.evaluation.topic import SentenceEmbedder
from emovec.generation import Decoding
from emovec.models import DEFAULT_MODEL
from emovec.prebuilt import vectors_for

# Schedules over the answer's tokens (round 3): strong while the answer sets its tone, then a
# quarter; the answer's first 6 (or 12) tokens plain, then the emotion ramping in.
BURST = Schedule(1.0, 8, 0.25, 8)
RAMP = Schedule(0.0, 6, 1.0, 8)
RAMP_LATE = Schedule(0.0, 12, 1.0, 8)


def _on_answer(schedule: Schedule, persona: bool, instruct: bool) -> Recipe:
    """The vector on the answer's tokens only, scheduled (beside a persona, an instruction)."""
    return Recipe(instruct=instruct, persona=persona, positions="generated", schedule=schedule)


RECIPES: dict[str, tuple[float, Recipe]] = {  # name: (α, recipe)
    "calibrated": (1.0, Recipe()),
    # The bank's recipes with the question amplified against the prompt without it
    # (context-aware decoding; rounds 3 and 4), at α 1 to 3.
    **{
        f"calibrated{'' if alpha == 1 else f'-{alpha:g}'}+query-{scale:g}": (
            alpha,
            Recipe(query_guidance=scale),
        )
        for alpha, scale in (
            (1.0, 1.3),
            (1.0, 1.6),
            (1.25, 1.3),
            (1.25, 1.6),
            (1.5, 1.3),
            (1.5, 1.6),
            (1.75, 1.3),
            (2.0, 1.3),
            (2.0, 1.6),
            (2.5, 1.6),
            (2.5, 2.0),
            (3.0, 2.0),
        )
    },
    "suppressed": (-1.0, Recipe()),
    "vector-only": (1.0, Recipe(instruct=False)),
    "vector-only-0.5": (0.5, Recipe(instruct=False)),
    "vector-only-0.75": (0.75, Recipe(instruct=False)),
    "vector-only-1.5": (1.5, Recipe(instruct=False)),
    # Trained banks (round 7): plain steer, one pass per token, at other strengths.
    "vector-only-1.25": (1.25, Recipe(instruct=False)),
    "vector-only-2": (2.0, Recipe(instruct=False)),
    "vector-only-2.5": (2.5, Recipe(instruct=False)),
    "vector-only-3": (3.0, Recipe(instruct=False)),
    # Round 8: a finer grid for the retrained anger and sadness.
    "vector-only-1.1": (1.1, Recipe(instruct=False)),
    "vector-only-1.4": (1.4, Recipe(instruct=False)),
    "vector-only-1.75": (1.75, Recipe(instruct=False)),
    # Round 10: a finer grid around the shipped strengths, on all 80 calibration queries.
    "vector-only-0.9": (0.9, Recipe(instruct=False)),
    "vector-only-1.05": (1.05, Recipe(instruct=False)),
    "vector-only-1.15": (1.15, Recipe(instruct=False)),
    "vector-only-1.2": (1.2, Recipe(instruct=False)),
    "vector-only-1.3": (1.3, Recipe(instruct=False)),
    "hybrid-0.5": (0.5, Recipe(instruct=True)),
    "generated-1.5": (1.5, Recipe(instruct=False, positions="generated")),
    "generated-2": (2.0, Recipe(instruct=False, positions="generated")),
    "angular": (1.0, Recipe(instruct=False, method="angular")),
    "project-3": (3.0, Recipe(instruct=False, method="project")),
    "guided": (1.5, Recipe(instruct=False, plain_guidance=0.5)),
    "persona-0.5": (0.5, Recipe(instruct=False, persona=True)),
    "persona-0.75": (0.75, Recipe(instruct=False, persona=True)),
    "persona-1": (1.0, Recipe(instruct=False, persona=True)),
    "persona-generated-1.5": (1.5, Recipe(instruct=False, persona=True, positions="generated")),
    "hybrid-generated-0.75": (0.75, Recipe(instruct=True, positions="generated")),
    "hybrid-generated-1": (1.0, Recipe(instruct=True, positions="generated")),
    "hybrid-generated-1.5": (1.5, Recipe(instruct=True, positions="generated")),
    "persona-instruction-0.25": (0.25, Recipe(instruct=True, persona=True)),
    "persona-instruction-0.35": (0.35, Recipe(instruct=True, persona=True)),
    "persona-instruction-0.5": (0.5, Recipe(instruct=True, persona=True)),
    # Round 6: persona and instruction together with query guidance (anger's shipped recipe).
    **{
        f"persona-instruction-{alpha:g}+query-{scale:g}": (
            alpha,
            Recipe(instruct=True, persona=True, query_guidance=scale),
        )
        for alpha, scale in ((1.0, 1.6), (1.0, 2.0), (1.5, 2.0), (2.0, 2.0))
    },
    "persona-instruction-generated-1": (
        1.0,
        Recipe(instruct=True, persona=True, positions="generated"),
    ),
    # Round 3: the vector on the prompt's positions only (the answer's tokens read an
    # emotional context but are computed unsteered), and the scheduled recipes.
    "prompt-1.5": (1.5, Recipe(instruct=False, positions="prompt")),
    "prompt-3": (3.0, Recipe(instruct=False, positions="prompt")),
    "persona-prompt-1.5": (1.5, Recipe(instruct=False, persona=True, positions="prompt")),
    "persona-prompt-3": (3.0, Recipe(instruct=False, persona=True, positions="prompt")),
    **{
        f"{persona}{name}-{alpha:g}": (alpha, _on_answer(schedule, bool(persona), instruct))
        for name, schedule, alphas in (
            ("burst", BURST, (2.0,)),
            ("ramp", RAMP, (1.5, 2.0, 3.0, 4.0)),
            ("ramp-late", RAMP_LATE, (2.0,)),
        )
        for persona, instruct in (("", False), ("persona-", False), ("persona-instruction-", True))
        for alpha in alphas
    },
}


def _table(report: EvaluationReport, nade: EvaluationReport) -> list[str]:
    by_nade = {(r["recipe"], r["emotion"]): r for r in nade.summary()}
    lines = [
        "| recipe | emotion | success (prototypes) | success (nade) | retention | "
        "perplexity (median) | degenerate | invented | offensive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report.summary():
        other = by_nade[(row["recipe"], row["emotion"])]
        lines.append(
            f"| {row['recipe']} {row['alpha']:+g} | {row['emotion']} | {row['success']:.2f} | "
            f"{other['success']:.2f} | {row['retention']:.2f} | "
            f"{row['median_perplexity']:.1f} | {row['degenerate']:.2f} | "
            f"{row['invented']:.2f} | {row['offensive']:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", choices=["calibration", "heldout"], default="heldout")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument(
        "--offset", type=int, default=0, help="skip this many of the split's queries"
    )
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repetition-penalty", type=float, default=1.15)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument(
        "--emotions", nargs="+", help="only these of the bank's emotions (default: all)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model id or path")
    parser.add_argument("--vectors", help="vector file (default: the prebuilt one for --model)")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--no-clean", dest="clean", action="store_false")
    parser.add_argument(
        "--no-prompt", dest="prompt", action="store_false", help="skip the instruction-only row"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)  # before the long work, not after

    pool = default_calibration_queries() if args.split == "calibration" else default_queries()
    queries = pool[args.offset : args.offset + args.queries]
    model, tokenizer = load_model(args.model)
    vectors = (
        EmotionVectors.load(args.vectors)
        if args.vectors
        else vectors_for(model, tokenizer, args.model)
    )
    embedder = SentenceEmbedder()
    decoding = Decoding(max_new_tokens=args.tokens, repetition_penalty=args.repetition_penalty)
    reports = []
    started = time.perf_counter()
    # One sweep per α (evaluate runs every recipe at every α it is given); the first also
    # answers with the instruction alone ("prompt").
    for alpha in sorted({RECIPES[name][0] for name in args.recipes}):
        reports.append(
            evaluate(
                model,
                tokenizer,
                vectors,
                emotions=args.emotions,
                alphas=[alpha],
                queries=queries,
                decoding=decoding,
                scorer=PrototypeScorer(vectors.emotions, embedder=embedder),
                embedder=embedder,
                recipes={n: RECIPES[n][1] for n in args.recipes if RECIPES[n][0] == alpha},
                prompt_baseline=args.prompt and not reports,
                clean=args.clean,
                batch_size=args.batch_size,
            )
        )
    seconds = time.perf_counter() - started
    # Every sweep answered plain too (the same greedy answers): combined keeps the first's.
    report = EvaluationReport.combined(reports)
    report.settings["split"] = args.split
    nade = report.rescored("nade")
    lines = [
        f"{args.split}: {len(queries)} queries, {args.tokens} tokens, penalty "
        f"{args.repetition_penalty}, clean={args.clean}; {seconds:.0f} s",
        *_table(report, nade),
    ]
    print("\n".join(lines))
    (args.out / "methods.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report.to_json(args.out / "report.json")
    report.plot_front(args.out / "front.png")


if __name__ == "__main__":
    main()
