"""``emovec serve``: steered answers over an OpenAI-compatible HTTP API (needs the ``serve``
extra: ``pip install emovec[serve]``).

Each request names its emotions (``"emotions": {"joy": 0.8}``, sent with the ``openai``
client's ``extra_body``) and is answered as the one call answers it; concurrent requests
share batched ``generate`` calls, one mix per row, each answer token-identical to serving it
alone (greedy). docs/serving.md describes the API, the batching and the limits.

- :mod:`emovec.server.app`: the routes, the error body, the lifespan (:func:`create_app`);
- :mod:`emovec.server.protocol`: OpenAI's request schema, errors, responses and chunks;
- :mod:`emovec.server.engine`: a request checked and turned into a batch row by the bank's
  recipe; a batch generated;
- :mod:`emovec.server.batching`: the gathering window, who shares a batch, each row's tokens
  routed to its request;
- :mod:`emovec.server.run`: uvicorn, the address, graceful shutdown (:func:`serve`);
- :mod:`emovec.server.options`: the limits (:class:`ServerOptions`).

Example::

    from emovec import EmotionVectors, load_model
    from emovec.prebuilt import prebuilt_path
    from emovec.server import ServerOptions, create_app, serve

    model, tok = load_model()
    vecs = EmotionVectors.load(prebuilt_path("smollm2-135m-instruct"))
    app = create_app(model, tok, vecs, ServerOptions(model_name="smollm2-135m-instruct"))
    serve(app, "127.0.0.1", 8000)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emovec.server.app import create_app
    from emovec.server.options import ServerOptions
    from emovec.server.run import serve

__all__ = ["ServerOptions", "create_app", "serve"]

_HOMES = {
    "create_app": "emovec.server.app",
    "ServerOptions": "emovec.server.options",
    "serve": "emovec.server.run",
}


def __getattr__(name: str) -> Any:
    """Import a name on first use, so that :mod:`emovec.server.options` (the CLI's defaults)
    loads without FastAPI and uvicorn."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
