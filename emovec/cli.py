"""The ``emovec`` command line: demo, generate, eval, rescore, extract, calibrate."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import fields
from inspect import signature
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import check_writable, write_text
from emovec.datasets import BASIC_EMOTIONS, Pair, default_answer_pairs, read_pairs
from emovec.evaluation import Tolerance, evaluate
from emovec.evaluation.calibration import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DECODING,
    DEFAULT_DOSES,
    DEFAULT_NUM_QUERIES,
    DEFAULT_SUCCESS_MARGIN,
)
from emovec.generation import Decoding, generate_answers, persona_for, with_instructions
from emovec.models import DEFAULT_MODEL, load_model
from emovec.steering import Positions, steer
from emovec.vectors import EmotionVectors

if TYPE_CHECKING:
    from emovec.evaluation import EvaluationReport

# The library's tolerance and decoding: the command line's defaults are read from them,
# never copied.
_TOLERANCE = Tolerance()
_DECODING = Decoding()

DEMO_PROMPTS = (
    "Tell me about your morning.",
    "What do you think of the new shopping centre in town?",
    "Describe the weather today.",
)


def _parse_strength(text: str) -> tuple[str, float]:
    emotion, sep, value = text.partition("=")
    try:
        if not sep or not emotion:
            raise ValueError
        return emotion.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected EMOTION=ALPHA such as joy=1 or fear=-0.5, got {text!r}"
        ) from None


def _parse_layers(text: str) -> list[int]:
    """``"10-19"`` or ``"10,12,15"``."""
    try:
        if "-" in text.strip("-"):
            start, stop = text.split("-", 1)
            return list(range(int(start), int(stop) + 1))
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a range 10-19 or a list 10,12, got {text!r}"
        ) from None


def _load(
    args: argparse.Namespace,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, EmotionVectors]:
    from emovec.prebuilt import vectors_for

    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    print(
        f"loaded {args.model or DEFAULT_MODEL} in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    if args.vectors:
        vectors = EmotionVectors.load(args.vectors)
    else:
        vectors = vectors_for(model, tokenizer, args.model or DEFAULT_MODEL)
    return model, tokenizer, vectors


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=f"model id or path (default: {DEFAULT_MODEL})")
    parser.add_argument("--vectors", help="vector file (default: the prebuilt one for the model)")
    parser.add_argument("--layers", type=_parse_layers, help="layers to steer, e.g. 10-19")
    parser.add_argument("--scale", choices=["relative", "raw"], default="relative")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=_DECODING.max_new_tokens,
        help="default: %(default)s",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        help="1 = off; also for plain answers (default: the one the vectors were calibrated "
        f"with, else {_DECODING.repetition_penalty:g})",
    )


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """Greedy or sampling (emovec.generation.Decoding); unset: as the vectors were calibrated."""
    parser.add_argument(
        "--sample",
        dest="do_sample",
        action=argparse.BooleanOptionalAction,
        help="sample instead of greedy (default: as the vectors were calibrated, else greedy)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        help=f"when sampling (default: as calibrated, else {_DECODING.temperature:g})",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        help=f"when sampling (default: as calibrated, else {_DECODING.top_p:g})",
    )
    parser.add_argument(
        "--seed", type=int, default=_DECODING.seed, help="when sampling (default: %(default)s)"
    )


def _add_clean_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-clean",
        dest="clean",
        action="store_false",
        help="let slurs and obscenities through (default: blocked during decoding)",
    )


def _decoding(args: argparse.Namespace, vectors: EmotionVectors) -> Decoding:
    """The decoding the bank's placements were calibrated with, changed by the options given
    (each option is named after its field of Decoding)."""
    given = {field.name: getattr(args, field.name, None) for field in fields(Decoding)}
    return Decoding.calibrated(vectors, **{k: v for k, v in given.items() if v is not None})


def _demo(args: argparse.Namespace) -> None:
    model, tokenizer, vectors = _load(args)
    prompts = args.prompt or list(DEMO_PROMPTS)
    emotions = args.emotions or [e for e in BASIC_EMOTIONS if e in vectors]
    decoding = _decoding(args, vectors)
    columns = {
        "plain": generate_answers(model, tokenizer, prompts, decoding=decoding, clean=args.clean)
    }
    for emotion in emotions:
        strength = {emotion: args.alpha}
        asked = [with_instructions(p, vectors, strength) for p in prompts]
        systems = [persona_for(vectors, strength)] * len(prompts)
        with steer(model, vectors, layers=args.layers, scale=args.scale, **strength):
            columns[f"{emotion} {args.alpha:+g}"] = generate_answers(
                model, tokenizer, asked, decoding=decoding, clean=args.clean, systems=systems
            )
    for i, prompt in enumerate(prompts):
        print(f"\n=== {prompt}")
        for label, answers in columns.items():
            body = textwrap.fill(
                answers[i], width=96, initial_indent=" " * 12, subsequent_indent=" " * 12
            )
            print(f"{label:>11} {body[12:]}")


def _generate(args: argparse.Namespace) -> None:
    model, tokenizer, vectors = _load(args)
    strengths = dict(args.emotion or [])
    with steer(model, vectors, layers=args.layers, scale=args.scale, **strengths):
        answers = generate_answers(
            model,
            tokenizer,
            [with_instructions(args.prompt, vectors, strengths)],
            systems=[persona_for(vectors, strengths)],
            decoding=_decoding(args, vectors),
            clean=args.clean,
        )
    print(answers[0])


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
    model, tokenizer = load_model(args.model, device=device)
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


def _queries(spec: str | None) -> list[str]:
    from emovec.datasets import default_queries, read_queries

    if spec is None:
        return default_queries()
    if spec.isdigit():
        return default_queries()[: int(spec)]
    return read_queries(spec)


def _add_tolerance_options(parser: argparse.ArgumentParser) -> None:
    """How far a steered setting may drift from plain (emovec.evaluation.Tolerance)."""
    group = parser.add_argument_group("tolerance (how far a setting may drift from plain)")
    group.add_argument(
        "--min-topic-ratio",
        type=float,
        default=_TOLERANCE.min_topic_ratio,
        help="least topic retention: answer-query similarity as a share of the plain "
        "answers' (default: %(default)s)",
    )
    group.add_argument(
        "--max-offensive-increase",
        type=float,
        default=_TOLERANCE.max_offensive_increase,
        help="most share of offensive answers above plain's (default: %(default)s)",
    )
    group.add_argument(
        "--max-degenerate-increase",
        type=float,
        default=_TOLERANCE.max_degenerate_increase,
        help="most share of degenerate answers above plain's (default: %(default)s)",
    )
    group.add_argument(
        "--max-perplexity-ratio",
        type=float,
        default=_TOLERANCE.max_perplexity_ratio,
        help="most median perplexity, as a multiple of plain's (default: %(default)s)",
    )


def _tolerance(args: argparse.Namespace) -> Tolerance:
    return Tolerance(
        max_degenerate_increase=args.max_degenerate_increase,
        max_perplexity_ratio=args.max_perplexity_ratio,
        min_topic_ratio=args.min_topic_ratio,
        max_offensive_increase=args.max_offensive_increase,
    )


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


def _evaluate(args: argparse.Namespace) -> None:
    from emovec.evaluation import recommend_alpha
    from emovec.prebuilt import prebuilt_path

    # Where the results go must be writable before the long work, not after it.
    out = _report_folder(args.out or f"out/eval-{args.model or DEFAULT_MODEL}".replace("/", "--"))
    target = None
    if args.store_recommendation:
        target = args.vectors or prebuilt_path(args.model or DEFAULT_MODEL)
        if target is None:
            raise ValueError("No vector file to store the recommendation in; pass --vectors.")
        check_writable(target)
    model, tokenizer, vectors = _load(args)
    report = evaluate(
        model,
        tokenizer,
        vectors,
        emotions=args.emotions,
        alphas=args.alphas,
        queries=_queries(args.queries),
        scorer=args.scorer,
        batch_size=args.batch_size,
        prompt_baseline=args.prompt_baseline,
        layers=args.layers,
        positions=args.positions,
        clean=args.clean,
        decoding=_decoding(args, vectors),
    )
    _write_report(report, out)
    recommended = recommend_alpha(report, _tolerance(args))
    print(f"recommended α: {recommended}")
    print(_headline(report, recommended))
    if target is not None:
        vectors.with_settings(recommended_alpha=recommended).save(target)
        print(f"stored recommended α in {target}")


def _report_folder(folder: str | Path) -> Path:
    """``folder``, once a report can be written into it (see :func:`_write_report`)."""
    check_writable(Path(folder) / "report.json")
    return Path(folder)


def _write_report(report: EvaluationReport, out: Path) -> None:
    report.to_json(out / "report.json")
    write_text(out / "report.md", report.to_markdown())
    report.plot(out / "report.png")
    report.plot_front(out / "front.png")
    print(report.to_markdown())
    print(f"wrote {out}/report.json, report.md, report.png, front.png")


def _rescore(args: argparse.Namespace) -> None:
    from emovec.evaluation import EvaluationReport

    source = Path(args.report)
    name = Path(args.scorer or "nade").name
    out = _report_folder(args.out or source.parent / f"rescored-{name}")
    report = EvaluationReport.from_json(source).rescored(args.scorer)
    _write_report(report, out)


_SCORER_HELP = (
    "emotion judge: 'nade' (default), 'prototypes' (zero-shot MiniLM), or a "
    "text-classification model id/path"
)


def _calibrate(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from emovec.evaluation.calibration import calibrate
    from emovec.prebuilt import prebuilt_path

    target = args.out or args.vectors or prebuilt_path(args.model or DEFAULT_MODEL)
    if target is None:
        raise ValueError("No vector file to write the placements to; pass --out.")
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
        num_queries=args.queries,
        tolerance=_tolerance(args),
        success_margin=args.success_margin,
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
    if args.report:
        report = Path(args.report)
        write_text(report / "calibration.md", table)
        write_text(report / "calibration.json", json.dumps(calibration.to_dict(), indent=1))
        calibration.plot_front(report / "front.png")
        if calibration.report is not None:  # every setting's answers, methods named "12-16@0.35"
            calibration.report.to_json(report / "answers.json")
    uncalibrated = sorted(set(calibration.emotions) - set(calibration.placements))
    calibration.apply(vectors).save(target)
    print(
        f"wrote placements for {sorted(calibration.placements)} to {target}"
        + (f"; no acceptable setting for {uncalibrated}" if uncalibrated else "")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emovec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="answer prompts plain and under each emotion")
    _add_model_options(demo)
    demo.add_argument("--alpha", type=float, default=1.0)
    demo.add_argument("--emotions", nargs="+")
    demo.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    _add_clean_option(demo)
    demo.set_defaults(run=_demo)

    gen = commands.add_parser("generate", help="answer one prompt with steering")
    gen.add_argument("prompt")
    _add_model_options(gen)
    gen.add_argument(
        "--emotion",
        type=_parse_strength,
        action="append",
        metavar="EMOTION=ALPHA",
        help="e.g. joy=1 or fear=-0.5 (repeatable)",
    )
    _add_sampling_options(gen)
    _add_clean_option(gen)
    gen.set_defaults(run=_generate)

    evaluating = signature(evaluate).parameters  # its defaults, read rather than copied
    ev = commands.add_parser("eval", help="score steering over an α sweep (EPS, topic, fluency)")
    _add_model_options(ev)
    ev.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=list(evaluating["alphas"].default),
        help="default: %(default)s",
    )
    ev.add_argument("--emotions", nargs="+")
    ev.add_argument("--queries", help="N (first N shipped queries) or a file (.txt/.json/.jsonl)")
    ev.add_argument("--scorer", help=_SCORER_HELP)
    ev.add_argument(
        "--prompt-baseline",
        action="store_true",
        help="also ask for the emotion in the prompt, without a vector",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=evaluating["batch_size"].default,
        help="rows per generate call (default: %(default)s)",
    )
    ev.add_argument(
        "--positions",
        choices=get_args(Positions),
        help="positions to steer (default: each emotion's calibrated ones, else all)",
    )
    _add_sampling_options(ev)
    ev.add_argument("--out", help="output folder (default out/eval-MODEL)")
    _add_clean_option(ev)  # --no-clean: the offensive rate without the blocker
    _add_tolerance_options(ev)
    ev.add_argument(
        "--store-recommendation",
        action="store_true",
        help="write the recommended α per emotion into the vector file",
    )
    ev.set_defaults(run=_evaluate)

    import inspect

    from emovec import extraction  # the library's defaults, read here rather than copied
    from emovec.estimators import ESTIMATORS

    ext = commands.add_parser("extract", help="extract emotion vectors to a file")
    ext.add_argument("--model", help=f"model id or path (default: {DEFAULT_MODEL})")
    ext.add_argument("--out", required=True, help="output .safetensors file")
    ext.add_argument("--emotions", nargs="+", help="shipped emotions to use")
    ext.add_argument(
        "--pairs",
        action="append",
        metavar="EMOTION=FILE",
        help="your own pairs (.jsonl/.json/.csv), repeatable",
    )
    ext.add_argument(
        "--template",
        choices=extraction.TEMPLATES,
        default=extraction.DEFAULT_TEMPLATE,
        help="feed the texts as they are, or as the assistant's reply in the model's chat "
        "template (default: %(default)s)",
    )
    ext.add_argument(
        "--data",
        choices=["stories", "answers"],
        default="stories",
        help="shipped pairs: first-person stories (default) or hand-written answers to "
        "everyday queries (read as answers)",
    )
    ext.add_argument(
        "--reading",
        choices=extraction.READINGS,
        help=f"average each text's tokens (default: {extraction.DEFAULT_READING}; response "
        "with --data answers), read its last token, or read answers "
        "after their query (with no pairs given: the model's own answers under emotional vs "
        "neutral instructions, generated once and cached)",
    )
    ext.add_argument(
        "--estimator",
        choices=sorted(ESTIMATORS),
        default=extraction.DEFAULT_ESTIMATOR,
        help="default: %(default)s",
    )
    ext.add_argument(
        "--blocks",
        metavar="PATH",
        help="dotted path to the decoder blocks (e.g. transformer.h), for models whose blocks "
        "are not found on their own",
    )
    ext.add_argument(
        "--layers-from",
        choices=["default", "diagnostics"],
        default="default",
        help="recommended steering band: the fixed default band or the layer diagnostics' one",
    )
    ext.add_argument(
        "--diagnostics", metavar="DIR", help="write layer diagnostics (JSON, markdown, plot) here"
    )
    ext.add_argument(
        "--batch-size",
        type=int,
        default=extraction.DEFAULT_BATCH_SIZE,
        help="texts per forward pass (default: %(default)s)",
    )
    ext.add_argument(
        "--center",
        type=float,
        default=inspect.signature(EmotionVectors.center).parameters["strength"].default,
        metavar="STRENGTH",
        help="share of the emotions' mean to subtract, 0-1 (default: %(default)s; 1 is fully "
        "centred)",
    )
    ext.add_argument(
        "--no-center",
        dest="center",
        action="store_const",
        const=0.0,
        help="keep the shared emotional-vs-neutral component (--center 0)",
    )
    ext.set_defaults(run=_extract)

    again = commands.add_parser(
        "rescore", help="judge a saved evaluation's answers with another emotion scorer"
    )
    again.add_argument("report", help="report.json written by 'emovec eval'")
    again.add_argument("--scorer", help=_SCORER_HELP)
    again.add_argument("--out", help="output folder (default: beside the report)")
    again.set_defaults(run=_rescore)

    cal = commands.add_parser(
        "calibrate", help="find each emotion's band and strength, store them in the vector file"
    )
    cal.add_argument("--model", help=f"model id or path (default: {DEFAULT_MODEL})")
    cal.add_argument("--vectors", help="vector file (default: the prebuilt one for the model)")
    cal.add_argument("--out", help="where to write the calibrated file (default: --vectors)")
    cal.add_argument("--emotions", nargs="+")
    cal.add_argument(
        "--bands", type=_parse_layers, nargs="+", help="candidate bands, e.g. 8-12 12-16"
    )
    cal.add_argument("--doses", type=float, nargs="+", default=list(DEFAULT_DOSES))
    cal.add_argument(
        "--instructions",
        action="store_true",
        help="also try each band and dose with the emotion's instruction in the user turn "
        "(a chosen one is stored with the placement)",
    )
    cal.add_argument(
        "--queries",
        type=int,
        default=DEFAULT_NUM_QUERIES,
        help="calibration queries to answer (default: %(default)s)",
    )
    cal.add_argument("--scorer", help=_SCORER_HELP)
    _add_tolerance_options(cal)
    _add_clean_option(cal)
    cal.add_argument(
        "--success-margin",
        type=float,
        default=DEFAULT_SUCCESS_MARGIN,
        help="take the most on-topic setting whose success is within this of the best "
        "(default: %(default)s)",
    )
    cal.add_argument("--max-new-tokens", type=int, default=DEFAULT_DECODING.max_new_tokens)
    cal.add_argument(
        "--repetition-penalty",
        type=float,
        default=DEFAULT_DECODING.repetition_penalty,
        help="1 = off; also for plain answers (default: %(default)s)",
    )
    cal.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="rows per generate call (default: %(default)s)",
    )
    cal.add_argument(
        "--report",
        metavar="DIR",
        help="write every trial (markdown, JSON, the Pareto front front.png) and every "
        "answer (answers.json) here",
    )
    cal.set_defaults(run=_calibrate)
    return parser


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or repr(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; a failure is one line on stderr and exit status 2."""
    from safetensors import SafetensorError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (KeyError, ValueError, OSError, ImportError, SafetensorError) as err:
        # OSError covers missing files, permissions, full disks and an unreachable hub.
        print(f"emovec: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emovec: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
