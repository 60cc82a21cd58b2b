"""The command line's shared pieces: option groups, parsing, loading the model and bank,
reports on disk."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import check_writable, file_set, write_text
from emovec._placement import query_guidance_of
from emovec.evaluation import Tolerance
from emovec.generation import Decoding
from emovec.models import DEFAULT_MODEL, load_model
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


def _checked(
    convert: Callable[[str], Any], accepts: Callable[[Any], bool], expected: str
) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)`` if ``accepts`` it, else a one-line error."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a finite positive number")
_fraction = _checked(float, lambda v: 0 < v < 1, "a share between 0 and 1")
_finite = _checked(float, math.isfinite, "a finite number")
_share = _checked(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
_probability = _checked(float, lambda v: 0 < v <= 1, "a number above 0, at most 1")
_path = _checked(str, bool, "a path, not an empty one")  # "" would fall back to a default
_seed = _checked(int, lambda v: 0 <= v < 2**32, "a seed from 0 to 4294967295")


def _parse_strength(text: str) -> tuple[str, float]:
    emotion, sep, value = text.partition("=")
    try:
        if not sep or not emotion:
            raise ValueError
        alpha = float(value)
        if not math.isfinite(alpha):
            raise ValueError
        return emotion.strip(), alpha
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected EMOTION=ALPHA such as joy=1 or fear=-0.5, got {text!r}"
        ) from None


def _strengths(given: list[tuple[str, float]] | None, option: str) -> dict[str, float]:
    """``EMOTION=ALPHA`` options as a mapping; an emotion given twice is refused (the last
    one silently won)."""
    strengths: dict[str, float] = {}
    for emotion, alpha in given or []:
        if emotion in strengths:
            raise ValueError(
                f"{option} {emotion} given twice ({emotion}={strengths[emotion]:g} and "
                f"{emotion}={alpha:g}); give each emotion once."
            )
        strengths[emotion] = alpha
    return strengths


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


def _parse_query_guidance(text: str) -> float | None:
    """``"none"`` (no query guidance) or a number ≥ 1."""
    if text.strip().lower() == "none":
        return None
    try:
        return query_guidance_of(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected none or a finite number >= 1 such as 1.3, got {text!r}"
        ) from None


def _model(
    name: str | None, device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer every command loads (one place, one name to replace in tests)."""
    return load_model(name, device=device)


def _load(
    args: argparse.Namespace,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, EmotionVectors]:
    from emovec.prebuilt import vectors_for

    # A bad vector file is found before the model's load (seconds to minutes), not after.
    given = EmotionVectors.load(args.vectors) if args.vectors else None
    started = time.perf_counter()
    model, tokenizer = _model(args.model)
    print(
        f"loaded {args.model or DEFAULT_MODEL} in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    vectors = (
        given if given is not None else vectors_for(model, tokenizer, args.model or DEFAULT_MODEL)
    )
    return model, tokenizer, vectors


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=_path, help=f"model id or path (default: {DEFAULT_MODEL})")
    parser.add_argument(
        "--vectors", type=_path, help="vector file (default: the prebuilt one for the model)"
    )
    parser.add_argument("--layers", type=_parse_layers, help="layers to steer, e.g. 10-19")
    parser.add_argument("--scale", choices=["relative", "raw"], default="relative")
    parser.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=_DECODING.max_new_tokens,
        help="default: %(default)s",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=_positive_float,
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
        type=_positive_float,
        help=f"when sampling (default: as calibrated, else {_DECODING.temperature:g})",
    )
    parser.add_argument(
        "--top-p",
        type=_probability,
        help=f"when sampling (default: as calibrated, else {_DECODING.top_p:g})",
    )
    parser.add_argument(
        "--seed", type=_seed, default=_DECODING.seed, help="when sampling (default: %(default)s)"
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


def _queries(spec: str | None) -> list[str]:
    from emovec.datasets import default_queries, read_queries

    if spec is None:
        return default_queries()
    if spec.isdigit():
        if int(spec) < 1:
            raise ValueError(f"--queries {spec}: give a positive number of queries or a file.")
        return default_queries()[: int(spec)]
    return read_queries(spec)


def _add_tolerance_options(parser: argparse.ArgumentParser) -> None:
    """How far a steered setting may drift from plain (emovec.evaluation.Tolerance)."""
    group = parser.add_argument_group("tolerance (how far a setting may drift from plain)")
    group.add_argument(
        "--min-topic-ratio",
        type=_finite,
        default=_TOLERANCE.min_topic_ratio,
        help="least topic retention: answer-query similarity as a share of the plain "
        "answers' (default: %(default)s)",
    )
    group.add_argument(
        "--max-offensive-increase",
        type=_finite,
        default=_TOLERANCE.max_offensive_increase,
        help="most share of offensive answers above plain's (default: %(default)s)",
    )
    group.add_argument(
        "--max-degenerate-increase",
        type=_finite,
        default=_TOLERANCE.max_degenerate_increase,
        help="most share of degenerate answers above plain's (default: %(default)s)",
    )
    group.add_argument(
        "--max-invented-increase",
        type=_finite,
        default=_TOLERANCE.max_invented_increase,
        help="most share of answers with invented words (two or more no English word list "
        "knows) above plain's (default: %(default)s)",
    )
    group.add_argument(
        "--max-perplexity-ratio",
        type=_finite,
        default=_TOLERANCE.max_perplexity_ratio,
        help="most median perplexity, as a multiple of plain's (default: %(default)s)",
    )


def _tolerance(args: argparse.Namespace) -> Tolerance:
    return Tolerance(
        max_degenerate_increase=args.max_degenerate_increase,
        max_perplexity_ratio=args.max_perplexity_ratio,
        min_topic_ratio=args.min_topic_ratio,
        max_offensive_increase=args.max_offensive_increase,
        max_invented_increase=args.max_invented_increase,
    )


def _report_folder(folder: str | Path) -> Path:
    """``folder``, once a report can be written into it (see :func:`_write_report`)."""
    check_writable(Path(folder) / "report.json")
    return Path(folder)


def _write_report(
    report: EvaluationReport, out: Path, stage: Callable[[str | Path], Path] | None = None
) -> None:
    """The report's four files, all or none (``stage``: of a larger :func:`file_set`)."""
    if stage is None:
        with file_set() as own:
            _write_report(report, out, own)
        return
    report.to_json(stage(out / "report.json"))
    write_text(stage(out / "report.md"), report.to_markdown())
    report.plot(stage(out / "report.png"))
    report.plot_front(stage(out / "front.png"))
    print(report.to_markdown())
    print(f"wrote {out}/report.json, report.md, report.png, front.png")


_SCORER_HELP = (
    "emotion judge: 'nade' (default), 'prototypes' (zero-shot MiniLM), or a "
    "text-classification model id/path"
)
