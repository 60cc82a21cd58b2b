"""``emovec serve``: its options and the command (FastAPI and uvicorn are imported only when
it runs: ``emovec --help`` and every other command work without the ``serve`` extra). The
defaults are :class:`~emovec.server.options.ServerOptions`'s own."""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

from emovec._cli_options import (
    _checked,
    _load,
    _path,
    _positive_float,
    _positive_int,
)
from emovec.models import DEFAULT_MODEL
from emovec.server.options import DRAIN_TIMEOUT, ServerOptions

_count = _checked(int, lambda v: v >= 0, "a count, 0 or more")
_port = _checked(int, lambda v: 0 <= v < 65536, "a port from 0 to 65535 (0: any free port)")
_milliseconds = _checked(float, lambda v: 0 <= v < float("inf"), "milliseconds, 0 or more")
_DEFAULTS = ServerOptions()


def add_serve_parser(commands: Any) -> None:
    """Register ``emovec serve`` on the CLI's sub-commands."""
    serve = commands.add_parser(
        "serve",
        help="serve steered answers over an OpenAI-compatible HTTP API (needs emovec[serve])",
        description="Answer POST /v1/chat/completions with per-request emotions "
        '("emotions": {"joy": 0.8}), concurrent requests batched together. See '
        "docs/serving.md.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=_port, default=8000, help="default: %(default)s")
    serve.add_argument("--model", type=_path, help=f"model id or path (default: {DEFAULT_MODEL})")
    serve.add_argument(
        "--vectors", type=_path, help="vector file (default: the prebuilt one for the model)"
    )
    serve.add_argument(
        "--name", help="the model's id in the API (default: --model, else the embedded model)"
    )
    serve.add_argument(
        "--batch-window-ms",
        type=_milliseconds,
        default=_DEFAULTS.batch_window * 1000,
        help="how long a request waits for others to share its batch (default: %(default)s)",
    )
    serve.add_argument(
        "--max-batch",
        type=_positive_int,
        default=_DEFAULTS.max_batch,
        help="most rows per batch (default: %(default)s)",
    )
    serve.add_argument(
        "--max-queue",
        type=_positive_int,
        default=_DEFAULTS.max_queue,
        help="most requests in hand (generating or waiting); more get 429 (default: %(default)s)",
    )
    serve.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=_DEFAULTS.max_tokens,
        help="most new tokens a request may ask for (default: %(default)s)",
    )
    serve.add_argument(
        "--default-tokens",
        type=_positive_int,
        default=_DEFAULTS.default_tokens,
        help="new tokens for a request without max_tokens (default: %(default)s)",
    )
    serve.add_argument(
        "--max-strength",
        type=_positive_float,
        default=_DEFAULTS.max_strength,
        help="largest |alpha| of one emotion (default: %(default)s)",
    )
    serve.add_argument(
        "--max-dose",
        type=_positive_float,
        help="largest dose of a request's mix (default: the bank's limit for each mix)",
    )
    serve.add_argument(
        "--max-stop",
        type=_count,
        default=_DEFAULTS.max_stop,
        help="most stop strings a request may give (default: %(default)s)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=DRAIN_TIMEOUT,
        help="seconds a shutdown (SIGTERM, Ctrl-C) waits for requests in flight "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default="info",
        help="uvicorn's log level (default: %(default)s)",
    )
    serve.add_argument(
        "--no-empathy",
        dest="empathy",
        action="store_false",
        help='answer no "emotion_policy" (default: "empathic" is fitted at start, seconds)',
    )
    serve.add_argument(
        "--no-clean",
        dest="clean",
        action="store_false",
        help="let slurs and obscenities through (default: blocked during decoding)",
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"emovec serve needs FastAPI and uvicorn ({err.name} is missing): "
            "pip install 'emovec[serve]'"
        ) from None
    from emovec.server import create_app, serve
    from emovec.server.run import listening_socket

    options = server_options(args)  # refused before the model loads
    listening_socket(args.host, args.port).close()  # a taken port fails now, not after loading
    model, tokenizer, bank = _load(args)
    policy = _policy(model, tokenizer, bank) if args.empathy else None
    app = create_app(model, tokenizer, bank, options, policy=policy)
    if not serve(
        app, args.host, args.port, log_level=args.log_level, drain_timeout=args.drain_timeout
    ):
        raise ValueError("the server did not start (uvicorn said why above)")


def server_options(args: argparse.Namespace) -> ServerOptions:
    """The server's limits from ``emovec serve``'s arguments.

    Raises:
        ValueError: For a limit :class:`ServerOptions` refuses.
    """
    return ServerOptions(
        model_name=args.name or args.model or DEFAULT_MODEL,
        batch_window=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        default_tokens=args.default_tokens,
        max_strength=args.max_strength,
        max_dose=args.max_dose,
        clean=args.clean,
        max_stop=args.max_stop,
    )


def _policy(model: Any, tokenizer: Any, bank: Any) -> Any:
    """The empathic policy, fitted on the shipped user messages with a tokenizer of its own
    (it reads beside the batches); ``None``, said on stderr, where the bank cannot take it."""
    from emovec.empathy import EmpathicPolicy

    started = time.perf_counter()
    try:
        policy = EmpathicPolicy.fit(model, copy.deepcopy(tokenizer), bank)
    except (KeyError, ValueError) as err:
        print(f"emotion_policy: off ({err})", file=sys.stderr)
        return None
    seconds = time.perf_counter() - started
    print(f"emotion_policy: empathic (recognition fitted in {seconds:.0f} s)", file=sys.stderr)
    return policy
