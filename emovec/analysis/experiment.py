"""The stimulus experiment: task accuracy with no stimulus, with stimuli in the prompt, at
sampling temperatures, and with the stimulus vector steered instead of prompted.

Every condition scores the same items (:mod:`emovec.analysis.tasks`) by label
log-likelihood. The greedy answer is the best label; at temperature ``T`` each item's answer
is drawn ``draws`` times from ``softmax(scores / T)`` over its labels (seeded, the same random
numbers in every condition) and the item counts the share of correct draws. Accuracy is the
mean over items, its standard error the items' sample standard deviation over √n; ``delta``
is the paired difference from the no-stimulus condition at the same temperature, with its
own standard error. A steered condition reads the plain prompt under
``steer(model, bank, {name: strength})``, the bank made by
:func:`~emovec.analysis.stimuli.stimulus_vectors` from separate prompts.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import check_writable
from emovec.analysis._report import (
    REPORT_FILES,
    Condition,
    Result,
    StimulusReport,
    standard_error,
)
from emovec.analysis.stimuli import apply, stimulus, stimulus_name, stimulus_vectors
from emovec.analysis.tasks import ANSWER_CUE, TaskItem, label_scores, sample_correct, task_items
from emovec.datasets import default_extraction_queries
from emovec.steering import steer
from emovec.vectors import EmotionVectors

__all__ = [
    "DEFAULT_CONDITIONS",
    "Condition",
    "Result",
    "StimulusReport",
    "add_stimuli_parser",
    "main_stimuli",
    "run_experiment",
    "standard_error",
]

DEFAULT_CONDITIONS: tuple[str, ...] = (
    *(f"EP{i:02d}" for i in range(1, 12)),
    "EP01+EP02",
    "EP02+EP07+EP09",
    "EA01",
    "EA05",
    "EA22",
)


def _condition(spec: str | Sequence[str]) -> Condition:
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    if not parts or not all(p.strip() for p in parts):
        raise ValueError(f"Bad condition {spec!r}: give ids such as 'EP02' or 'EP01+EP02'.")
    ids = tuple(stimulus(p).id for p in parts)
    stimulus_name(ids)  # refuses a stimulus given twice
    return Condition("prompt", ids)


def run_experiment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    tasks: Sequence[TaskItem] | None = None,
    stimuli: Sequence[str | Sequence[str]] = DEFAULT_CONDITIONS,
    steered: Sequence[str | Sequence[str]] = ("EP02",),
    temperatures: Sequence[float] = (0.7, 1.0),
    draws: int = 5,
    seed: int = 0,
    strength: float = 1.0,
    vector_prompts: Sequence[str] | None = None,
    vector_bank: EmotionVectors | None = None,
    batch_size: int = 8,
    out: str | Path | None = None,
    progress: bool = True,
) -> StimulusReport:
    """Score the task set under every condition; write the report to ``out`` if given.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        tasks: The items (default: the shipped set, :func:`task_items`).
        stimuli: Prompt conditions: ids (``"EP02"``) or combinations (``"EP01+EP02"`` or
            ``("EP01", "EP02")``); the no-stimulus condition is always scored first.
        steered: Stimuli (or combinations) whose vector is steered on the plain prompt.
        temperatures: Sampling temperatures (> 0) scored besides the greedy answer.
        draws: Samples per item and temperature.
        seed: Seed of the draws.
        strength: α of the steered vector (``steer``'s relative scale: 1 is the everyday
            dose).
        vector_prompts: Prompts the stimulus vectors are averaged over (default: the shipped
            extraction queries, which are not task items).
        vector_bank: A bank from :func:`stimulus_vectors` to use instead of extracting one.
        batch_size: Sequences per forward pass.
        out: A folder for ``stimuli.json``, ``stimuli.md`` and ``stimuli.png``; checked to be
            writable before any work.
        progress: Show progress bars.

    Returns:
        The :class:`StimulusReport`.
    """
    if out is not None:
        for name in REPORT_FILES:
            check_writable(Path(out) / name)
    items = list(tasks) if tasks is not None else task_items()
    if not items:
        raise ValueError("No task items to score.")
    for t in temperatures:
        if not t > 0:
            raise ValueError(f"temperatures must be > 0, not {t}; greedy is always scored.")
    if draws < 1:
        raise ValueError("draws must be at least 1.")
    conditions = [Condition("none"), *(_condition(s) for s in stimuli)]
    steer_conditions = [Condition("steer", _condition(s).stimuli) for s in steered]
    names = [c.name for c in conditions + steer_conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"A condition is given twice among {names}.")
    bank = vector_bank
    if steer_conditions and bank is None:
        prompts = list(vector_prompts) if vector_prompts is not None else None
        bank = stimulus_vectors(
            model,
            tokenizer,
            prompts or default_extraction_queries(),
            [c.stimuli for c in steer_conditions],
            batch_size=batch_size,
            progress=progress,
        )
    labels = [item.labels for item in items]
    answers = [item.labels.index(item.answer) for item in items]
    results: list[Result] = []
    for condition in conditions + steer_conditions:
        if condition.kind == "prompt":
            prompts_now = [apply(item.prompt, condition.stimuli) for item in items]
        else:
            prompts_now = [item.prompt for item in items]
        contexts = [p + ANSWER_CUE for p in prompts_now]
        if condition.kind == "steer":
            assert bank is not None
            with steer(model, bank, {stimulus_name(condition.stimuli): strength}):
                scores = label_scores(model, tokenizer, contexts, labels, batch_size=batch_size)
        else:
            scores = label_scores(model, tokenizer, contexts, labels, batch_size=batch_size)
        kinds = tuple(item.task for item in items)
        greedy = [float(int(s.argmax()) == a) for s, a in zip(scores, answers, strict=True)]
        results.append(Result(condition, None, tuple(greedy), kinds))
        for t in temperatures:
            shares = sample_correct(scores, answers, temperature=t, draws=draws, seed=seed)
            results.append(Result(condition, float(t), tuple(shares), kinds))
        if progress:
            print(
                f"{condition.name}: greedy accuracy {results[-1 - len(temperatures)].accuracy:.3f}"
            )
    settings = {
        "model": str(getattr(model.config, "name_or_path", "") or "unknown"),
        "items": len(items),
        "chance": sum(1 / len(item.labels) for item in items) / len(items),
        "temperatures": [float(t) for t in temperatures],
        "draws": draws,
        "seed": seed,
        "strength": strength,
        "vector_prompts": None if bank is None else bank.settings.get("prompts"),
        "vector_reading": None if bank is None else bank.settings.get("reading"),
        "answer_cue": ANSWER_CUE,
    }
    report = StimulusReport(_with_deltas(results), settings)
    if out is not None:
        report.save(out)
    return report


def _with_deltas(results: list[Result]) -> list[Result]:
    baseline = {r.temperature: r for r in results if r.condition.kind == "none"}
    out = []
    for r in results:
        base = baseline.get(r.temperature)
        if base is None or r.condition.kind == "none":
            out.append(r)
            continue
        diffs = [a - b for a, b in zip(r.correct, base.correct, strict=True)]
        out.append(
            Result(
                r.condition,
                r.temperature,
                r.correct,
                r.tasks,
                sum(diffs) / len(diffs),
                standard_error(diffs),
            )
        )
    return out


def add_stimuli_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``stimuli`` command (runs :func:`main_stimuli`) to a CLI's subcommands."""
    # The command line's types (it is built on top of the library).
    from emovec._cli_options import _finite, _path, _positive_float, _positive_int, _seed

    parser = subparsers.add_parser(
        "stimuli", help="score the task set with emotional stimuli, prompted and steered"
    )
    parser.add_argument(
        "--model", type=_path, help="model id or path (default: the embedded model)"
    )
    parser.add_argument(
        "--per-task", type=_positive_int, default=20, help="items per task (default 20)"
    )
    parser.add_argument(
        "--stimuli",
        nargs="*",
        default=list(DEFAULT_CONDITIONS),
        help="prompt conditions: ids or combinations, e.g. EP02 EP01+EP02 EA01",
    )
    parser.add_argument(
        "--steer", nargs="*", default=["EP02"], help="stimuli steered as vectors (default EP02)"
    )
    parser.add_argument("--temperatures", nargs="*", type=_positive_float, default=[0.7, 1.0])
    parser.add_argument(
        "--draws", type=_positive_int, default=5, help="samples per item and temperature"
    )
    parser.add_argument("--seed", type=_seed, default=0)
    parser.add_argument("--strength", type=_finite, default=1.0, help="α of the steered vectors")
    parser.add_argument(
        "--vector-prompts",
        type=_positive_int,
        help="how many shipped extraction queries the vectors average over (default all)",
    )
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument("--out", type=_path, default="stimuli-report", help="report folder")
    parser.set_defaults(run=main_stimuli)
    return parser


def main_stimuli(args: argparse.Namespace) -> None:
    """Run the experiment as the ``stimuli`` command's arguments say; print the table."""
    from emovec.models import load_model

    if args.vector_prompts is not None and args.vector_prompts < 1:
        raise ValueError("--vector-prompts must be at least 1.")
    for name in REPORT_FILES:  # before loading the model
        check_writable(Path(args.out) / name)
    items = task_items(args.per_task)
    model, tokenizer = load_model(args.model)
    queries = default_extraction_queries()
    report = run_experiment(
        model,
        tokenizer,
        tasks=items,
        stimuli=args.stimuli,
        steered=args.steer,
        temperatures=args.temperatures,
        draws=args.draws,
        seed=args.seed,
        strength=args.strength,
        vector_prompts=queries[: args.vector_prompts] if args.vector_prompts else queries,
        batch_size=args.batch_size,
        out=args.out,
    )
    print(report.markdown())
    print(f"wrote {', '.join(str(Path(args.out) / n) for n in REPORT_FILES)}")
