"""``emovec export``: a mix written as a GGUF control vector for llama.cpp, Ollama and
EasySteer (vLLM). Needs the bank only, not the model."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from emovec._cli_options import _parse_layers, _parse_strength, _path, _positive_float, _strengths
from emovec.models import DEFAULT_MODEL
from emovec.vectors import EmotionVectors


def add_export_parser(commands: Any) -> None:
    """Register ``emovec export`` on the CLI's sub-commands."""
    export = commands.add_parser(
        "export",
        help="write a mix as a GGUF control vector for llama.cpp, Ollama and EasySteer",
        description="Write what `steer` adds for the given strengths as a GGUF control vector: "
        "`llama-server -m MODEL.gguf --control-vector OUT` then steers as emovec does "
        "(--control-vector-scaled OUT S: S times the strengths). See docs/serving.md.",
    )
    export.add_argument(
        "--emotion",
        type=_parse_strength,
        action="append",
        required=True,
        metavar="EMOTION=ALPHA",
        help="e.g. joy=1 or fear=-0.5 (repeatable)",
    )
    export.add_argument("--out", type=_path, required=True, help="the .gguf file to write")
    export.add_argument(
        "--vectors", type=_path, help="vector file (default: the prebuilt one for --model)"
    )
    export.add_argument(
        "--model",
        type=_path,
        help=f"the model whose prebuilt vectors to export (default: {DEFAULT_MODEL})",
    )
    export.add_argument(
        "--layers", type=_parse_layers, help="layers to steer, e.g. 10-19 (default: calibrated)"
    )
    export.add_argument("--scale", choices=["relative", "raw"], default="relative")
    export.add_argument(
        "--max-dose",
        type=_positive_float,
        help="export even above the bank's dose limit, up to this dose",
    )
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> None:
    from emovec.control_vectors import export_control_vector
    from emovec.prebuilt import prebuilt_path
    from emovec.steering import added

    strengths = _strengths(args.emotion, "--emotion")
    if args.vectors:
        vectors = EmotionVectors.load(args.vectors)
    else:
        model = args.model or DEFAULT_MODEL
        found = prebuilt_path(model)
        if found is None:
            raise ValueError(
                f"no prebuilt vectors for {model}; give --vectors (make them with emovec extract "
                "or emovec train)"
            )
        vectors = EmotionVectors.load(found)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_control_vector(
            vectors,
            args.out,
            strengths,
            layers=args.layers,
            scale=args.scale,
            max_dose=args.max_dose,
        )
    for warning in caught:
        print(f"emovec: note: {warning.message}", file=sys.stderr)
    blocks = [
        i
        for i, row in enumerate(
            added(vectors, strengths, layers=args.layers, scale=args.scale, max_dose=args.max_dose)
        )
        if i and bool(row.any())
    ]
    print(
        f"wrote {path} (blocks {blocks[0]}-{blocks[-1]}): llama-server -m MODEL.gguf "
        f"--control-vector {path} (--control-vector-scaled {path} S for S times {strengths}); "
        f"EasySteer: target_layers={blocks}"
    )
