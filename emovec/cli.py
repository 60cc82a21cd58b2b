"""The ``emovec`` command line: demo, generate, eval, rescore, extract, train, calibrate, serve,
export, and the research tools' decode and stimuli."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from inspect import signature
from typing import get_args

# The library's tolerance and decoding: the command line's defaults are read from them,
# never copied.
from emovec._cli_commands import (
    _calibrate,
    _demo,
    _evaluate,
    _extract,
    _generate,
    _rescore,
)
from emovec._cli_export import add_export_parser
from emovec._cli_options import (
    _SCORER_HELP,
    _add_clean_option,
    _add_model_options,
    _add_sampling_options,
    _add_tolerance_options,
    _finite,
    _parse_layers,
    _parse_query_guidance,
    _parse_strength,
    _path,
    _positive_float,
    _positive_int,
    _probability,
    _share,
)
from emovec._cli_serve import add_serve_parser
from emovec._train_cli import add_train_parser
from emovec.evaluation import evaluate
from emovec.evaluation.calibration import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DECODING,
    DEFAULT_DOSES,
    DEFAULT_NUM_QUERIES,
)
from emovec.evaluation.choice import DEFAULT_TARGET_SUCCESS
from emovec.models import DEFAULT_MODEL
from emovec.steering import Positions
from emovec.vectors import EmotionVectors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emovec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="answer prompts plain and under each emotion")
    _add_model_options(demo)
    demo.add_argument("--alpha", type=_finite, default=1.0)
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
    gen.add_argument(
        "--max-dose",
        type=_positive_float,
        help="answer even above the bank's dose limit, up to this dose (default: the "
        "limit; a larger dose is refused)",
    )
    _add_sampling_options(gen)
    _add_clean_option(gen)
    gen.set_defaults(run=_generate)

    evaluating = signature(evaluate).parameters  # its defaults, read rather than copied
    ev = commands.add_parser("eval", help="score steering over an α sweep (EPS, topic, fluency)")
    _add_model_options(ev)
    ev.add_argument(
        "--alphas",
        type=_finite,
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
        type=_positive_int,
        default=evaluating["batch_size"].default,
        help="rows per generate call (default: %(default)s)",
    )
    ev.add_argument(
        "--positions",
        choices=get_args(Positions),
        help="positions to steer (default: each emotion's calibrated ones, else all)",
    )
    _add_sampling_options(ev)
    ev.add_argument("--out", type=_path, help="output folder (default out/eval-MODEL)")
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
    ext.add_argument("--model", type=_path, help=f"model id or path (default: {DEFAULT_MODEL})")
    ext.add_argument("--out", type=_path, required=True, help="output .safetensors file")
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
        type=_positive_int,
        default=extraction.DEFAULT_BATCH_SIZE,
        help="texts per forward pass (default: %(default)s)",
    )
    ext.add_argument(
        "--center",
        type=_share,
        default=inspect.signature(EmotionVectors.center).parameters["share"].default,
        metavar="SHARE",
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
    add_train_parser(commands)

    again = commands.add_parser(
        "rescore", help="judge a saved evaluation's answers with another emotion scorer"
    )
    again.add_argument("report", help="report.json written by 'emovec eval'")
    again.add_argument("--scorer", help=_SCORER_HELP)
    again.add_argument("--out", type=_path, help="output folder (default: beside the report)")
    again.set_defaults(run=_rescore)

    cal = commands.add_parser(
        "calibrate", help="find each emotion's band and strength, store them in the vector file"
    )
    cal.add_argument("--model", type=_path, help=f"model id or path (default: {DEFAULT_MODEL})")
    cal.add_argument(
        "--vectors", type=_path, help="vector file (default: the prebuilt one for the model)"
    )
    cal.add_argument(
        "--out",
        type=_path,
        help="where to write the calibrated file (default: --vectors, unless shipped)",
    )
    cal.add_argument("--emotions", nargs="+")
    cal.add_argument(
        "--bands", type=_parse_layers, nargs="+", help="candidate bands, e.g. 8-12 12-16"
    )
    cal.add_argument("--doses", type=_positive_float, nargs="+", default=list(DEFAULT_DOSES))
    cal.add_argument(
        "--instructions",
        action="store_true",
        help="also try each band and dose with the emotion's instruction in the user turn "
        "(a chosen one is stored with the placement)",
    )
    cal.add_argument(
        "--personas",
        action="store_true",
        help="also try each setting with the emotion's persona as the system turn",
    )
    cal.add_argument(
        "--positions",
        nargs="+",
        choices=["default", *get_args(Positions)],
        default=["default"],
        help="positions each setting steers ('default': steer's; e.g. default generated)",
    )
    cal.add_argument(
        "--query-guidance",
        type=_parse_query_guidance,
        nargs="+",
        default=[None],
        metavar="GAMMA",
        help="query guidance each setting is tried with ('none': without; e.g. none 1.3); "
        "a second pass per token",
    )
    cal.add_argument(
        "--queries",
        type=_positive_int,
        default=DEFAULT_NUM_QUERIES,
        help="calibration queries to answer (default: %(default)s)",
    )
    cal.add_argument("--scorer", help=_SCORER_HELP)
    _add_tolerance_options(cal)
    _add_clean_option(cal)
    cal.add_argument(
        "--target-success",
        type=_probability,
        default=DEFAULT_TARGET_SUCCESS,
        help="the success bar: the setting nearest both bars (this and --min-topic-ratio) "
        "wins (default: %(default)s)",
    )
    cal.add_argument(
        "--max-new-tokens", type=_positive_int, default=DEFAULT_DECODING.max_new_tokens
    )
    cal.add_argument(
        "--repetition-penalty",
        type=_positive_float,
        default=DEFAULT_DECODING.repetition_penalty,
        help="1 = off; also for plain answers (default: %(default)s)",
    )
    cal.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="rows per generate call (default: %(default)s)",
    )
    cal.add_argument(
        "--report",
        type=_path,
        metavar="DIR",
        help="write every trial (markdown, JSON, the Pareto front front.png) and every "
        "answer (answers.json) here",
    )
    cal.set_defaults(run=_calibrate)
    add_serve_parser(commands)
    add_export_parser(commands)
    # The research tools' commands (emovec.analysis), imported here: the CLI is on top.
    from emovec.analysis._decode_cli import add_decode_parser
    from emovec.analysis.experiment import add_stimuli_parser

    add_decode_parser(commands)
    add_stimuli_parser(commands)
    return parser


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a KeyError's without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or repr(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; a failure is one line on stderr and exit status 2."""
    from safetensors import SafetensorError

    given = list(sys.argv[1:] if argv is None else argv)
    broken = next((a for a in given if not _is_utf8(a)), None)
    if broken is not None:  # undecodable bytes reach Python as lone surrogates
        print(
            f"emovec: error: the argument {ascii(broken)[:80]} is not UTF-8 text; "
            "give it as UTF-8 (or read the text from a UTF-8 file).",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(given)
    try:
        args.run(args)
    except (KeyError, ValueError, TypeError, OSError, ImportError, SafetensorError) as err:
        # OSError covers missing files, permissions, full disks and an unreachable hub.
        print(f"emovec: error: {_for_the_command_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emovec: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_process_group()
    return 0


def _for_the_command_line(error: BaseException) -> str:
    """The error on one line, a dose error naming the flag (``--max-dose``) where the
    library names its keyword."""
    from emovec._doses import DoseError

    text = _one_line(error)
    return text.replace("max_dose", "--max-dose") if isinstance(error, DoseError) else text


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _end_process_group() -> None:
    """Leave the process group ``accelerate launch`` / ``torchrun`` started, if any: a
    process exiting with gloo's threads still up can abort ("terminate called without an
    active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
