"""The command line's commands: demo, generate, extract, eval, rescore, calibrate."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from emovec._files import check_writable, file_set, write_text
from emovec.datasets import BASIC_EMOTIONS, Pair, default_answer_pairs, read_pairs
from emovec.evaluation import evaluate
from emovec.evaluation.calibration import (
    DEFAULT_DECODING,
)
from emovec.generation import generate_answers
from emovec.models import DEFAULT_MODEL
from emovec.steering import steer

if TYPE_CHECKING:
    from emovec.evaluation import EvaluationReport

# The library's tolerance and decoding: the command line's defaults are read from them,
# never copied.
from emovec._cli_options import (
    DEMO_PROMPTS,
    _decoding,
    _load,
    _model,
    _queries,
    _report_folder,
    _strengths,
    _tolerance,
    _write_report,
)


def _demo(args: argparse.Namespace) -> None:
    model, tokenizer, vectors = _load(args)
    prompts = args.prompt or list(DEMO_PROMPTS)
    emotions = args.emotions or [e for e in BASIC_EMOTIONS if e in vectors]
    decoding = _decoding(args, vectors)
    columns = {
        "plain": generate_answers(
            model, tokenizer, prompts, decoding=decoding, clean=args.clean, parse_special=False
        )
    }
    for emotion in emotions:
        strength = {emotion: args.alpha}
        chat = steer(
            model, vectors, layers=args.layers, scale=args.scale, tokenizer=tokenizer, **strength
        )
        columns[f"{emotion} {args.alpha:+g}"] = chat.answer(
            prompts,
            clean=args.clean,
            parse_special=False,  # prompts from the command line are text
            **asdict(decoding),
        )
    for i, prompt in enumerate(prompts):
        print(f"\n=== {prompt}")
        for label, answers in columns.items():
            body = textwrap.fill(
                answers[i], width=96, initial_indent=" " * 12, subsequent_indent=" " * 12
            )
            print(f"{label:>11} {body[12:]}")


def _generate(args: argparse.Namespace) -> None:
    strengths = _strengths(args.emotion, "--emotion")  # refused before the model loads
    model, tokenizer, vectors = _load(args)
    chat = steer(
        model,
        vectors,
        strengths,
        layers=args.layers,
        scale=args.scale,
        max_dose=args.max_dose,
        guard="raise",  # a command answers at the dose asked for, or says why it will not
        tokenizer=tokenizer,
    )
    answer = chat.answer(
        args.prompt,
        clean=args.clean,
        parse_special=False,  # the prompt from the command line is text
        **asdict(_decoding(args, vectors)),
    )
    print(answer)


def _process_state() -> tuple[int, int, str | None]:
    """Rank, world size and device when started by ``accelerate launch`` / ``torchrun``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, None
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState()  # initialises torch.distributed from the launcher's environment
    return dist.get_rank(), dist.get_world_size(), str(state.device)


def _extract(args: argparse.Namespace) -> None:
    from typing import Any

    from emovec._files import check_writable
    from emovec.extraction import DEFAULT_READING, extract, extract_with_diagnostics

    reading = args.reading or ("response" if args.data == "answers" else DEFAULT_READING)
    if args.data == "answers" and args.pairs:
        raise ValueError("--data answers uses the shipped answers; drop --pairs or --data.")
    if args.data == "answers" and reading != "response":
        raise ValueError("The shipped answers are read as answers: use --reading response.")
    # Unwritable destinations fail now, not after the extraction.
    out = check_writable(args.out)
    folder = Path(args.diagnostics) if args.diagnostics else None
    if folder is not None:
        check_writable(folder / "diagnostics.json")
    pairs: dict[str, Sequence[Pair]] | None = None
    source = "shipped stories"
    if args.data == "answers":
        pairs, source = dict(default_answer_pairs(args.emotions)), "shipped answers"
    elif args.pairs:
        pairs, source = {}, "your pairs"
        for spec in args.pairs:
            emotion, _, path = spec.partition("=")
            if not path:
                raise ValueError(f"--pairs expects EMOTION=FILE, got {spec!r}")
            pairs[emotion] = read_pairs(path)
    elif reading == "response":
        source = "the model's answers under emotional instructions"
    rank, world, device = _process_state()  # bad options fail before the model loads
    model, tokenizer = _model(args.model, device=device)
    options: dict[str, Any] = {
        "emotions": args.emotions,
        "reading": reading,
        "estimator": args.estimator,
        "template": args.template,
        "batch_size": args.batch_size,
        "blocks": args.blocks,
        "recommended_layers": "diagnostics" if args.layers_from == "diagnostics" else None,
        "model_name": args.model or DEFAULT_MODEL,
        "progress": rank == 0,
    }
    started = time.perf_counter()
    if pairs is None and reading == "response":  # the model's own answers, cached
        from emovec.responses import response_pairs

        pairs = dict(response_pairs(model, tokenizer, args.emotions, progress=rank == 0))
        options["emotions"] = None
    if folder is None:
        vectors, report = extract(model, tokenizer, pairs, **options), None
    else:
        vectors, report = extract_with_diagnostics(model, tokenizer, pairs, **options)
    seconds = time.perf_counter() - started
    if rank > 0:
        return
    vectors = vectors.with_settings(data=source)
    if args.center and len(vectors) > 1:
        vectors = vectors.center(args.center)
    vectors.save(out)
    print(f"{vectors}\nextracted in {seconds:.1f} s on {world} process(es), saved to {out}")
    if folder is not None and report is not None:
        write_text(folder / "diagnostics.json", json.dumps(report.to_dict(), indent=1))
        write_text(folder / "diagnostics.md", report.to_markdown())
        report.plot(folder / "diagnostics.png")
        print(report.to_markdown())
        print(f"diagnostics written to {folder}")


def _headline(report: EvaluationReport, alphas: dict[str, float]) -> str:
    """Per emotion at its recommended α (none within tolerance: the smallest α > 0 tried):
    success, topic retention beside the hand-written answers', offensive rate beside plain's."""
    from emovec.evaluation.records import _fmt

    summary = report.summary()
    reference = report.reference_retention
    lines = []
    for emotion, alpha in alphas.items():
        rows = {(r["recipe"], r["alpha"]): r for r in summary if r["emotion"] == emotion}
        plain = rows.get(("plain", 0.0))
        steered = sorted(a for m, a in rows if m == "vector" and a > 0)
        shown = alpha if alpha > 0 else (steered[0] if steered else None)
        if plain is None or shown is None or ("vector", shown) not in rows:
            continue
        row = rows[("vector", shown)]
        note = "" if alpha > 0 else " (no α > 0 within tolerance)"
        lines.append(
            f"  {emotion} α={shown:+g}{note}: success {row['success']:.2f} (plain "
            f"{plain['success']:.2f}), topic retention {_fmt(row['retention'], '.2f')} "
            f"(hand-written answers {_fmt(reference.get(emotion, float('nan')), '.2f')}), "
            f"offensive {_fmt(row['offensive'], '.2f')} (plain {_fmt(plain['offensive'], '.2f')})"
        )
    return "\n".join(lines)


def _own_bank(path: str | None, option: str, purpose: str) -> str:
    """The user's vector file a command writes to: given, and not one shipped with emovec
    (in a wheel install those lie inside site-packages; they are never overwritten)."""
    from emovec.prebuilt import is_shipped

    if path is None:
        raise ValueError(f"No vector file to {purpose}; pass {option} FILE.")
    if is_shipped(path):
        raise ValueError(
            f"{path} is a bank shipped with emovec and is never overwritten; pass {option} "
            "with a file of your own (a copy of it, to start from it)."
        )
    return path


def _evaluate(args: argparse.Namespace) -> None:
    from emovec.evaluation import recommend_alpha

    # Where the results go must be writable, and the queries readable, before the long work.
    out = _report_folder(args.out or f"out/eval-{args.model or DEFAULT_MODEL}".replace("/", "--"))
    target = None
    if args.store_recommendation:
        target = _own_bank(args.vectors, "--vectors", "store the recommendation in")
        check_writable(target)
    queries = _queries(args.queries)
    model, tokenizer, vectors = _load(args)
    report = evaluate(
        model,
        tokenizer,
        vectors,
        emotions=args.emotions,
        alphas=args.alphas,
        queries=queries,
        scorer=args.scorer,
        batch_size=args.batch_size,
        prompt_baseline=args.prompt_baseline,
        layers=args.layers,
        positions=args.positions,
        clean=args.clean,
        decoding=_decoding(args, vectors),
    )
    recommended = recommend_alpha(report, _tolerance(args))
    with file_set() as stage:  # the report and the recommendation stored from it, together
        _write_report(report, out, stage)
        if target is not None:
            vectors.with_settings(recommended_alpha=recommended).save(stage(target))
    print(f"recommended α: {recommended}")
    print(_headline(report, recommended))
    if target is not None:
        print(f"stored recommended α in {target}")


def _rescore(args: argparse.Namespace) -> None:
    from emovec.evaluation import EvaluationReport

    source = Path(args.report)
    name = Path(args.scorer or "nade").name
    out = _report_folder(args.out or source.parent / f"rescored-{name}")
    report = EvaluationReport.from_json(source).rescored(args.scorer)
    _write_report(report, out)


def _calibrate(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from emovec.evaluation.calibration import calibrate

    target = _own_bank(args.out or args.vectors, "--out", "write the placements to")
    check_writable(target)  # before the long search, not after it
    if args.report:
        check_writable(Path(args.report) / "calibration.md")
    model, tokenizer, vectors = _load(args)
    calibration = calibrate(
        model,
        tokenizer,
        vectors,
        emotions=args.emotions,
        bands=args.bands,
        doses=args.doses,
        instructions=(False, True) if args.instructions else (False,),
        personas=(False, True) if args.personas else (False,),
        positions=[None if p == "default" else p for p in args.positions],
        query_guidance=args.query_guidance,
        num_queries=args.queries,
        tolerance=_tolerance(args),
        target_success=args.target_success,
        clean=args.clean,
        decoding=replace(
            DEFAULT_DECODING,
            max_new_tokens=args.max_new_tokens,
            repetition_penalty=args.repetition_penalty,
        ),
        scorer=args.scorer,
        batch_size=args.batch_size,
    )
    table = calibration.to_markdown()
    print(table)
    with file_set() as stage:  # the bank and the reports on it appear together or not at all
        if args.report:
            report = Path(args.report)
            write_text(stage(report / "calibration.md"), table)
            write_text(
                stage(report / "calibration.json"), json.dumps(calibration.to_dict(), indent=1)
            )
            calibration.plot_front(stage(report / "front.png"))
            if calibration.report is not None:  # every setting's answers ("12-16@0.35")
                calibration.report.to_json(stage(report / "answers.json"))
        calibration.apply(vectors).save(stage(target))
    uncalibrated = sorted(set(calibration.emotions) - set(calibration.placements))
    print(
        f"wrote placements for {sorted(calibration.placements)} to {target}"
        + (f"; no acceptable setting for {uncalibrated}" if uncalibrated else "")
    )
