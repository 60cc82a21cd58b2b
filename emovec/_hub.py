"""Whether a model id can be loaded now: failing in seconds when the hub cannot be reached.

Without a network, ``from_pretrained`` retries the Hugging Face hub for most of a minute
before it fails (or falls back to a cached copy). :func:`hub_options` checks once, with a
two-second probe, and either lets a cached model load from the cache at once
(``local_files_only``) or says what to do.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import constants, try_to_load_from_cache

__all__ = ["hub_options"]

_PROBE_TIMEOUT_S = 2.0
_TRUE = {"1", "on", "yes", "true"}


def _offline() -> bool:
    """Offline mode, as huggingface_hub and transformers read it (also set after import)."""
    env = (
        os.environ.get(key, "").strip().lower()
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return bool(constants.HF_HUB_OFFLINE) or any(value in _TRUE for value in env)


def _hub_reachable(endpoint: str) -> bool:
    """Whether anything answers at ``endpoint`` within two seconds (proxies honoured)."""
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error status
    except urllib.error.URLError as error:
        return isinstance(error.reason, ssl.SSLError)  # it answered, in TLS we cannot verify
    except (OSError, ValueError):
        return False


def _cached(name: str, options: Mapping[str, Any], filename: str | None = None) -> bool:
    """Whether ``filename`` (default: the model's config, or its GGUF file) is in the local
    Hugging Face cache."""
    filename = filename or str(options.get("gguf_file") or "config.json")
    if options.get("subfolder"):
        filename = f"{options['subfolder']}/{filename}"
    try:
        found = try_to_load_from_cache(
            name, filename, cache_dir=options.get("cache_dir"), revision=options.get("revision")
        )
    except ValueError:  # not a valid repository id
        return False
    return isinstance(found, str)


def hub_options(
    name: str, options: Mapping[str, Any], *, filename: str | None = None
) -> dict[str, Any]:
    """Extra ``from_pretrained`` keywords for loading ``name`` (a local path or hub id).

    A local folder, or a load already told ``local_files_only``, needs none. When the hub
    cannot be reached (offline mode, or no answer within two seconds), a cached model loads
    from the cache (``{"local_files_only": True}``) and anything else fails at once.

    Args:
        name: A local path or a hub repository id.
        options: The load's keywords (``cache_dir``, ``revision``, ``subfolder``,
            ``gguf_file``, ``local_files_only`` are read).
        filename: The one file of the repository to be downloaded (e.g. a vector bank's),
            looked for in the cache instead of the model's ``config.json``; also named in
            the error.

    Raises:
        OSError: If ``name`` is neither a local folder nor cached while the hub cannot be
            reached, saying what to do instead.
    """
    if Path(name).expanduser().exists() or options.get("local_files_only"):
        return {}
    cached = _cached(name, options, filename)
    offline = _offline()
    if not offline and _hub_reachable(constants.ENDPOINT):
        return {}
    if cached:
        return {"local_files_only": True}
    why = (
        "offline mode is on (HF_HUB_OFFLINE)"
        if offline
        else f"{constants.ENDPOINT} cannot be reached"
    )
    what, saved, download = (
        (f"the model {name!r}", "model", name)
        if filename is None
        else (f"{filename} of {name!r}", "copy", f"{name} {filename}")
    )
    raise OSError(
        f"Cannot load {what}: it is not a local folder, not in the Hugging Face "
        f"cache, and {why}. Pass the path of a saved {saved} (a folder written by "
        f"save_pretrained), or download it once where the hub can be reached "
        f"(`hf download {download}`, into the cache that HF_HOME points to) and run again."
    )
