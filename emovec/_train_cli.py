"""``emovec train``: train emotion vectors from answer triples and write the bank."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import time
from typing import Any

from emovec._cli_options import (
    _fraction,
    _model,
    _parse_layers,
    _parse_strength,
    _path,
    _positive_float,
    _positive_int,
    _seed,
    _strengths,
)
from emovec.datasets import BASIC_EMOTIONS, ResponsePair, default_instructions, read_pairs
from emovec.models import DEFAULT_MODEL
from emovec.training import OBJECTIVES, PARAMETERIZATIONS, _instructions, train

_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(train).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


def add_train_parser(commands: Any) -> None:
    """Register ``emovec train`` on the command line's subparsers."""
    parser = commands.add_parser(
        "train",
        help="train emotion vectors from (query, emotional, neutral) answer triples",
        description="Learn, per emotion, what to add at each layer of a band so that the "
        "model answers the triples' questions the emotional way (the model stays frozen). "
        "The bank steers exactly the trained vectors at alpha 1.",
    )
    parser.add_argument("--model", type=_path, help=f"model id or path (default: {DEFAULT_MODEL})")
    parser.add_argument("--out", type=_path, required=True, help="output .safetensors file")
    parser.add_argument("--emotions", nargs="+", help="shipped emotions to train")
    parser.add_argument(
        "--triples",
        action="append",
        metavar="EMOTION=FILE",
        help="your own triples (.jsonl/.json/.csv with query, emotional, neutral), repeatable",
    )
    parser.add_argument("--layers", type=_parse_layers, help="band trained, e.g. 10-18")
    parser.add_argument("--objective", choices=OBJECTIVES, default=_DEFAULTS["objective"])
    parser.add_argument(
        "--parameterization", choices=PARAMETERIZATIONS, default=_DEFAULTS["parameterization"]
    )
    parser.add_argument("--steps", type=_positive_int, default=_DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=_positive_int, default=_DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=_positive_float, default=_DEFAULTS["learning_rate"])
    parser.add_argument("--beta", type=_positive_float, default=_DEFAULTS["beta"])
    parser.add_argument(
        "--kl-weight",
        type=_positive_float,
        default=_DEFAULTS["kl_weight"],
        help="weight of the KL term of lm+kl and lm+distill (default: %(default)s)",
    )
    parser.add_argument(
        "--instruction",
        action="append",
        metavar="EMOTION=TEXT",
        help="lm+distill's teacher instruction for an emotion (default: the shipped one), "
        "repeatable",
    )
    parser.add_argument("--held-out", type=_fraction, default=_DEFAULTS["held_out"])
    parser.add_argument("--eval-every", type=_positive_int, default=_DEFAULTS["eval_every"])
    parser.add_argument("--seed", type=_seed, default=_DEFAULTS["seed"])
    parser.add_argument(
        "--precision",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="autocast dtype of the forward passes (default: %(default)s; float32: the "
        "model's own)",
    )
    parser.add_argument(
        "--alpha",
        type=_parse_strength,
        action="append",
        metavar="EMOTION=A",
        help="store alpha 1 as A times the trained vectors (the strength chosen on "
        "calibration queries), repeatable",
    )
    parser.add_argument(
        "--blocks", metavar="PATH", help="dotted path to the decoder blocks (e.g. transformer.h)"
    )
    parser.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> None:
    import torch

    from emovec._cli_commands import _process_state
    from emovec._files import check_writable

    out = check_writable(args.out)  # an unwritable destination fails before training
    triples: dict[str, list[ResponsePair]] | None = None
    if args.triples:
        if args.emotions:
            raise ValueError("--emotions names shipped triples; drop it with --triples.")
        triples = {}
        for spec in args.triples:
            emotion, _, path = spec.partition("=")
            if not emotion or not path:
                raise ValueError(f"--triples expects EMOTION=FILE, got {spec!r}")
            pairs = read_pairs(path)
            if not all(isinstance(p, ResponsePair) for p in pairs):
                raise ValueError(f"{path}: every record needs query, emotional and neutral.")
            triples[emotion] = [p for p in pairs if isinstance(p, ResponsePair)]
    instructions = None
    if args.instruction:
        if args.objective != "lm+distill":
            raise ValueError("--instruction is the teacher of --objective lm+distill only.")
        instructions = dict(default_instructions())
        for spec in args.instruction:
            emotion, _, text = spec.partition("=")
            if not emotion or not text.strip():
                raise ValueError(f"--instruction expects EMOTION=TEXT, got {spec!r}")
            instructions[emotion] = text
    alphas = _strengths(args.alpha, "--alpha")
    for emotion, alpha in alphas.items():
        if not (alpha > 0 and alpha < float("inf")):
            raise ValueError(f"--alpha {emotion}={alpha}: alpha must be finite and positive.")
    trained = list(triples) if triples else list(args.emotions or BASIC_EMOTIONS)
    unknown = sorted(set(alphas) - set(trained))
    if unknown:
        raise ValueError(f"--alpha names {unknown}, which are not trained (only {trained}).")
    if args.objective == "lm+distill":  # every teacher known before the model loads
        instructions = _instructions(instructions, dict.fromkeys(trained))
    rank, world, device = _process_state()  # under accelerate launch: one share each
    model, tokenizer = _model(args.model, device=device)
    started = time.perf_counter()
    vectors = train(
        model,
        tokenizer,
        triples,
        emotions=args.emotions,
        layers=args.layers,
        objective=args.objective,
        parameterization=args.parameterization,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        beta=args.beta,
        kl_weight=args.kl_weight,
        instructions=instructions,
        held_out=args.held_out,
        eval_every=args.eval_every,
        seed=args.seed,
        precision=torch.bfloat16 if args.precision == "bfloat16" else None,
        blocks=args.blocks,
        model_name=args.model or DEFAULT_MODEL,
        progress=rank == 0,
    )
    seconds = time.perf_counter() - started
    if rank > 0:
        return
    if alphas:
        placements = vectors.placements
        vectors = vectors.with_placements(
            {e: dataclasses.replace(placements[e], dose=placements[e].dose * a)
             for e, a in alphas.items()}
        ).with_settings(alpha=alphas)  # fmt: skip
    vectors.save(out)
    print(f"{vectors}\ntrained in {seconds:.1f} s on {world} process(es), saved to {out}")
    for emotion in vectors.emotions:
        record = vectors.settings["training"][emotion]
        print(
            f"{emotion}: dose {vectors.placements[emotion].dose:.3f}, best step "
            f"{record['best_step']}, held-out loss {record['held_out_loss']}"
        )
