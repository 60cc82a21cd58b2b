"""``emovec decode``: print what each emotion vector (or a set of stimuli) says per layer.

Wired into the command line with :func:`add_decode_parser`; the command runs
:func:`main_decode`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emovec._files import check_writable, file_set, read_text, write_text

if TYPE_CHECKING:  # the command's modules load when it runs, not when the parser is built
    from emovec.analysis.decode import Decoding

__all__ = ["add_decode_parser", "main_decode"]


def _layer_list(text: str) -> list[int]:
    """``"8,14,20"``, ``"10-19"`` or a mix (``"2,10-12"``)."""
    layers: list[int] = []
    try:
        for part in text.split(","):
            start, sep, stop = part.strip().partition("-")
            layers += list(range(int(start), int(stop) + 1)) if sep else [int(start)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layers such as 8,14,20 or 10-19, got {text!r}"
        ) from None
    return layers


def add_decode_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``decode`` to ``commands`` (what ``parser.add_subparsers()`` returns); the
    parser's ``run`` default is :func:`main_decode`."""
    from emovec._cli_options import _path, _positive_int  # the command line's, on top

    parser: argparse.ArgumentParser = commands.add_parser(
        "decode",
        help="top tokens of each emotion vector per layer (logit lens)",
        description="Decode emotion vectors, or the mean representation of stimuli, through "
        "the model's final norm and LM head, layer by layer.",
    )
    parser.add_argument(
        "--model", type=_path, help="model id or path (default: the embedded SmolLM2)"
    )
    parser.add_argument(
        "--vectors", type=_path, help="vector file (default: the prebuilt one for the model)"
    )
    parser.add_argument("--emotions", nargs="+", help="emotions to decode (default: all)")
    parser.add_argument(
        "--stimuli",
        help="a text file, one stimulus per line: decode their mean representation instead",
    )
    parser.add_argument("--layers", type=_layer_list, help="e.g. 8,14,20 or 10-19 (default: all)")
    parser.add_argument(
        "-k", "--top", type=_positive_int, default=10, help="tokens per layer (%(default)s)"
    )
    parser.add_argument(
        "--no-norm", action="store_true", help="read through the LM head alone, without the norm"
    )
    parser.add_argument("--logits", action="store_true", help="print each token's logit")
    parser.add_argument("--json", type=_path, help="also write the decodings to this JSON file")
    parser.add_argument(
        "--plots", type=_path, help="also write one PNG per decoding into this folder"
    )
    parser.set_defaults(run=main_decode)
    return parser


def _stimuli(path: str) -> list[str]:
    texts = [line.strip() for line in read_text(path, "stimuli").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"{path} holds no stimuli (one text per line).")
    return texts


def _decodings(args: argparse.Namespace) -> list[Decoding]:
    """Load the model (and bank) and decode what ``args`` ask for."""
    from emovec.analysis.decode import Decoding, decode, stimulus_meta_vector
    from emovec.models import DEFAULT_MODEL, load_model
    from emovec.prebuilt import vectors_for
    from emovec.vectors import EmotionVectors

    if args.stimuli and (args.emotions or args.vectors):
        raise ValueError("--stimuli decodes texts: do not combine it with --emotions/--vectors.")
    model, tokenizer = load_model(args.model)
    options = {"layers": args.layers, "k": args.top, "norm": not args.no_norm}
    if args.stimuli:
        meta = stimulus_meta_vector(model, tokenizer, _stimuli(args.stimuli), progress=True)
        found = decode(model, tokenizer, meta, **options)
        return [Decoding(Path(args.stimuli).stem, found.rows, found.norm)]
    if args.vectors:
        vectors = EmotionVectors.load(args.vectors)
    else:
        vectors = vectors_for(model, tokenizer, args.model or DEFAULT_MODEL)
    return [decode(model, tokenizer, vectors[e], **options) for e in args.emotions or vectors]


def main_decode(args: argparse.Namespace) -> None:
    """Run ``emovec decode``: print a Markdown table per decoded direction.

    Raises:
        ValueError, KeyError, OSError: on bad options or files, or a model whose final norm
            and LM head are not found (the command line prints them as one line).
    """
    from emovec.analysis.decode import LensError

    if args.json:
        check_writable(args.json)
    if args.plots:
        check_writable(Path(args.plots) / "decode.png")
    try:
        decodings = _decodings(args)
    except LensError as err:
        raise ValueError(str(err)) from err
    for decoding in decodings:
        print(decoding.to_markdown(logits=args.logits))
    with file_set() as stage:  # the JSON and the plots appear together or not at all
        if args.json:
            payload = [d.to_dict() for d in decodings]
            write_text(stage(args.json), json.dumps(payload, indent=2) + "\n")
        if args.plots:
            for decoding in decodings:
                name = re.sub(r"[^A-Za-z0-9_.-]+", "_", decoding.label) or "direction"
                path = stage(Path(args.plots) / f"decode-{name}.png")
                decoding.plot().savefig(path, dpi=120, format="png")
    if args.json:
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plots:
        print(f"wrote {len(decodings)} plots to {args.plots}", file=sys.stderr)
