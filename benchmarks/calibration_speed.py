"""Calibration speed: the whole grid in one evaluation, against one evaluation per band.

In one run, on the embedded SmolLM2 and the shipped vectors, over the same grid:

(a) the previous way, exactly what ``calibrate`` did before: per band one
    ``evaluate(vectors.without_placements(), layers=band, alphas=[d / RELATIVE_DOSE ...],
    batch_size=24)`` (each regenerating the plain answers), trials decided by the same rule,
    perplexity scored as it was then (each prompt + answer one sequence: :func:`whole_perplexity`);
(b) :func:`emovec.evaluation.calibration.calibrate`: one ``evaluate`` with a recipe per setting, the
    plain answers once, every setting of every emotion a row of the same batches, perplexity
    sharing each prompt's pass among its answers.

Prints both times, their ratio, where the time went (generation, perplexity, embedding,
emotion and offensive scoring), and whether both chose the same placements; where they did
not, which answers differ (batches of other compositions are bit-different only by float
noise, which greedy decoding can turn into another token).

    OMP_NUM_THREADS=1 python benchmarks/calibration_speed.py [--batch-sizes 96]
        [--bands 10-14 12-16 14-18] [--doses 0.35 0.5] [--queries 8] [--tokens 32]

Both sides share the loaded model, judges and embedder; the hand-written answers' reference
retention (cached per embedder) is computed before either is timed.

Measured with the defaults (2 CPU cores, one thread): (a) 182.5 s, (b) 126.3 s at batch 96,
**1.45x**; generation 108.8 -> 77.0 s, perplexity 69.6 -> 46.1 s (264 vs 248 rows: 1.42x per
row from sharing the prompts). Before perplexity shared them: (a) 179 s, (b) 152 s, 1.18x. All
360 answers both sides have in common were identical, and so were the choices. On CPU a
forward pass costs about the same per row at batch 24 as at 96, so batching the grid saves the
per-band plain answers and some per-call overhead, not a factor of 3.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec import EmotionVectors, load_model
from emovec.datasets import default_extraction_queries
from emovec.evaluation import EvaluationReport, Tolerance, evaluate
from emovec.evaluation import sweep as evaluation_module
from emovec.evaluation.calibration import DEFAULT_BATCH_SIZE, calibrate
from emovec.evaluation.records import load_offensive_judge
from emovec.evaluation.scoring import load_scorer
from emovec.evaluation.topic import SentenceEmbedder, reference_retention
from emovec.evaluation.trials import Calibration, Trial, _choose, _setting_name
from emovec.generation import Decoding
from emovec.steering import RELATIVE_DOSE
from emovec.vectors import Placement

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "smollm2-135m-instruct.safetensors"
OLD_BATCH_SIZE = 24  # what the previous calibrate used by default
LOOSE = Tolerance(min_topic_ratio=0.5, max_degenerate_increase=0.25, max_offensive_increase=0.25)


class Clock:
    """Seconds spent per phase, from wrapped functions and callables."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed

    def line(self, total: float) -> str:
        parts = [f"{name} {s:.1f}" for name, s in sorted(self.seconds.items(), key=lambda i: -i[1])]
        rest = total - sum(self.seconds.values())
        return ", ".join([*parts, f"other {rest:.1f}"]) + " s"


class Timed:
    """A scorer, embedder or judge whose calls are timed (attributes pass through)."""

    def __init__(self, inner: Any, clock: Clock, name: str, method: str = "__call__") -> None:
        self._inner, self._clock, self._name, self._method = inner, clock, name, method

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._inner, attribute)
        return self._clock.wrap(self._name, value) if attribute == self._method else value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.wrap(self._name, self._inner)(*args, **kwargs)


def whole_perplexity(
    model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], batch_size: int
) -> np.ndarray:
    """The previous perplexity: each prompt + answer one left-padded sequence, the LM head over
    the answers' span (the prompt recomputed for every answer)."""
    result = np.full(len(answers), math.nan)
    rows = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        if answer_ids:
            rows.append((i, prompt_ids + answer_ids, len(answer_ids)))
    rows.sort(key=lambda row: len(row[1]))
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width, keep = max(len(r[1]) for r in batch), max(r[2] for r in batch) + 1
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        scored = torch.zeros((len(batch), keep - 1), dtype=torch.bool)
        for row, (_, full, count) in enumerate(batch):
            ids[row, width - len(full) :], attention[row, width - len(full) :] = (
                torch.tensor(full),
                1,
            )
            scored[row, keep - 1 - count :] = True
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = (
                model(
                    input_ids=ids,
                    attention_mask=attention,
                    position_ids=positions,
                    logits_to_keep=keep,
                )
                .logits[:, :-1]
                .float()
            )
            targets = ids[:, width - keep + 1 :].unsqueeze(-1)
            nll = logits.logsumexp(-1) - logits.gather(-1, targets).squeeze(-1)
        mean = (nll * scored).sum(1) / scored.sum(1)
        for row, (index, _, _) in enumerate(batch):
            result[index] = math.exp(float(mean[row]))
    return result


@contextlib.contextmanager
def timing(clock: Clock, perplexity: Callable[..., Any] | None = None) -> Iterator[None]:
    """Time evaluation's generation and perplexity (or the given one instead) while inside."""
    saved = evaluation_module.ask, evaluation_module.perplexity
    evaluation_module.ask = clock.wrap("generation", saved[0])
    evaluation_module.perplexity = clock.wrap("perplexity", perplexity or saved[1])
    try:
        yield
    finally:
        evaluation_module.ask, evaluation_module.perplexity = saved


def _band(text: str) -> tuple[int, ...]:
    start, _, stop = text.partition("-")
    return tuple(range(int(start), int(stop or start) + 1))


def old_calibrate(
    model: Any,
    tokenizer: Any,
    vectors: EmotionVectors,
    bands: Sequence[tuple[int, ...]],
    doses: Sequence[float],
    options: Mapping[str, Any],
) -> dict[tuple[int, ...], EvaluationReport]:
    """The previous calibrate's answers: one evaluation per band."""
    bare = vectors.without_placements()
    alphas = [d / RELATIVE_DOSE for d in doses]
    return {
        band: evaluate(
            model,
            tokenizer,
            bare,
            alphas=alphas,
            layers=list(band),
            batch_size=OLD_BATCH_SIZE,
            **options,
        )
        for band in bands
    }


def old_decide(
    reports: Mapping[tuple[int, ...], EvaluationReport],
    tolerance: Tolerance,
) -> tuple[list[Trial], dict[str, Placement]]:
    """The previous calibrate's decision from its per-band reports (the same rule)."""
    trials: list[Trial] = []
    for band, report in reports.items():
        summary = report.summary()
        plain = {r["emotion"]: r for r in summary if r["recipe"] == "plain"}
        trials += [
            Trial(
                emotion=r["emotion"],
                placement=Placement(band, r["alpha"] * RELATIVE_DOSE),
                success=r["success"],
                eps=r["eps"],
                degenerate=r["degenerate"],
                sim_query=r["sim_query"],
                retention=r["retention"],
                offensive=r["offensive"],
                median_perplexity=r["median_perplexity"],
                acceptable=tolerance.fluent(r, plain[r["emotion"]]),
            )
            for r in summary
            if r["recipe"] == "vector"
        ]
    first = next(iter(reports.values())).summary()
    plains = {r["emotion"]: r for r in first if r["recipe"] == "plain"}
    placements = {}
    for emotion in dict.fromkeys(t.emotion for t in trials):
        mine = [t for t in trials if t.emotion == emotion]
        best = _choose(mine, plains[emotion], tolerance)
        if best is not None:
            placements[emotion] = best.placement
    return trials, placements


def compare_choices(
    label: str, old: tuple[list[Trial], dict[str, Placement]], new: Calibration
) -> None:
    """Print how many trials each side accepted and whether both chose alike."""
    old_trials, old_placements = old
    theirs = {e: (p.layers, p.dose) for e, p in old_placements.items()}
    mine = {e: (p.layers, p.dose) for e, p in new.placements.items()}
    print(
        f"{label}: acceptable trials (a) {sum(t.acceptable for t in old_trials)}, "
        f"(b) {sum(t.acceptable for t in new.trials)} of {len(new.trials)}"
    )
    if mine == theirs:
        print(f"  same placements chosen: {mine or 'none acceptable'}")
        return
    for emotion in sorted(set(mine) | set(theirs)):
        mark = "" if mine.get(emotion) == theirs.get(emotion) else "   <- differs"
        print(f"  {emotion}: (a) {theirs.get(emotion)}  (b) {mine.get(emotion)}{mark}")


def differences(
    old: Mapping[tuple[int, ...], EvaluationReport], new: Calibration
) -> tuple[int, int, list[str]]:
    """(answers compared, answers that differ, a line per differing setting)."""
    assert new.report is not None
    mine = {(r["recipe"], r["target"], r["query"]): r["answer"] for r in new.report.records}
    compared, differ, lines = 0, 0, []
    for band, report in old.items():
        counts: dict[str, int] = {}
        for r in report.records:
            if r["recipe"] == "plain":
                key = ("plain", r["target"], r["query"])
                label = "plain"
            else:
                dose = r["alpha"] * RELATIVE_DOSE
                key = (_setting_name(band, dose, False), r["target"], r["query"])
                label = f"{r['target']} {key[0]}"
            compared += 1
            if mine[key] != r["answer"]:
                differ += 1
                counts[label] = counts.get(label, 0) + 1
        lines += [f"  {label}: {n} answer(s) differ" for label, n in counts.items()]
    return compared, differ, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bands", nargs="+", default=["10-14", "12-16", "14-18"])
    parser.add_argument("--doses", type=float, nargs="+", default=[0.35, 0.5])
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repetition-penalty", type=float, default=1.15)
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[DEFAULT_BATCH_SIZE],
        help="batch sizes to time the new calibrate at (the first is compared for choices)",
    )
    parser.add_argument("--skip-old", action="store_true", help="time only the new calibrate")
    parser.add_argument("--table", action="store_true", help="print the new calibration's trials")
    args = parser.parse_args()

    model, tokenizer = load_model()
    vectors = EmotionVectors.load(VECTORS)
    bands = [_band(b) for b in args.bands]
    queries = default_extraction_queries()[: args.queries]
    decoding = Decoding(max_new_tokens=args.tokens, repetition_penalty=args.repetition_penalty)
    scorer, embedder, judge = load_scorer(None), SentenceEmbedder(), load_offensive_judge()
    emotions = [e for e in vectors.emotions if e in scorer.emotions]
    reference_retention(embedder, emotions)  # cached: neither side pays it
    tolerance = Tolerance()
    print(
        f"grid: {len(bands)} bands x {len(args.doses)} doses, {len(emotions)} emotions, "
        f"{len(queries)} queries, {args.tokens} new tokens, greedy, repetition penalty "
        f"{args.repetition_penalty}; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    def options(clock: Clock) -> dict[str, Any]:
        return {
            "queries": queries,
            "decoding": decoding,
            "scorer": Timed(scorer, clock, "emotion scoring"),
            "embedder": Timed(embedder, clock, "embedding"),
            "offensive_judge": Timed(judge, clock, "offensive", method="flags"),
            "progress": False,
        }

    old_time = math.nan
    old_reports: dict[tuple[int, ...], EvaluationReport] = {}
    if not args.skip_old:
        clock = Clock()
        started = time.perf_counter()
        with timing(clock, perplexity=whole_perplexity):
            old_reports = old_calibrate(
                model, tokenizer, vectors, bands, args.doses, options(clock)
            )
        old_time = time.perf_counter() - started
        print(f"(a) one evaluate per band, batch {OLD_BATCH_SIZE}: {old_time:.1f} s", flush=True)
        print(f"    {clock.line(old_time)}", flush=True)

    new: Calibration | None = None
    for batch_size in args.batch_sizes:
        clock = Clock()
        started = time.perf_counter()
        with timing(clock):
            result = calibrate(
                model,
                tokenizer,
                vectors,
                bands=bands,
                doses=args.doses,
                tolerance=tolerance,
                batch_size=batch_size,
                **options(clock),
            )
        new_time = time.perf_counter() - started
        if new is None:
            new = result
        ratio = old_time / new_time
        print(
            f"(b) calibrate, one evaluate, batch {batch_size}: {new_time:.1f} s; "
            f"(a)/(b) = {ratio:.2f}x",
            flush=True,
        )
        print(f"    {clock.line(new_time)}", flush=True)

    if new is None or args.skip_old:
        return
    if args.table:
        print(new.to_markdown())
    compared, differ, lines = differences(old_reports, new)
    print(f"answers: {differ} of {compared} differ between (a) and (b)")
    if lines:
        print("\n".join(lines))
    # On 8 queries one offensive or degenerate answer (1/8) is past the default tolerance,
    # so the choices are compared under it and under a looser one (decided again from the
    # same answers, nothing generated).
    compare_choices("default tolerance", old_decide(old_reports, tolerance), new)
    compare_choices(
        f"loose tolerance {LOOSE}",
        old_decide(old_reports, LOOSE),
        new.rescored(tolerance=LOOSE),
    )


if __name__ == "__main__":
    main()
