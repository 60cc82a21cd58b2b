"""Finding the prebuilt vector file for a model, or building and caching it."""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path

from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import check_writable
from emovec.models import cache_dir
from emovec.vectors import EmotionVectors

__all__ = ["prebuilt_path", "vectors_for"]

_log = logging.getLogger(__name__)


def _shipped_dir() -> Path:
    """The vector files shipped as package data (``emovec/data/vectors``), in a wheel install
    as in a checkout (where the top-level ``vectors/`` is a link to this folder)."""
    return Path(str(resources.files("emovec") / "data" / "vectors"))


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is (or links to) a file shipped with the package: never to be
    overwritten (in a wheel install it lies inside site-packages)."""
    return Path(path).resolve().is_relative_to(_shipped_dir().resolve())


def _file_name(model_name: str) -> str:
    """A file name unique to the model: hub ids flattened, local paths keyed by location."""
    local = Path(model_name).expanduser()
    if local.exists():
        digest = hashlib.sha256(str(local.resolve()).encode()).hexdigest()[:12]
        return f"{local.resolve().name}-{digest}.safetensors"
    return model_name.replace("/", "--") + ".safetensors"


def prebuilt_path(model_name: str) -> Path | None:
    """The shipped or cached vector file for ``model_name``, if one exists.

    The files shipped with the package come first, then those :func:`vectors_for` extracted
    and cached under :func:`~emovec.models.cache_dir`.
    """
    for folder in (_shipped_dir(), cache_dir() / "vectors"):
        path = folder / _file_name(model_name)
        if path.is_file():
            return path
    return None


def vectors_for(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_name: str
) -> EmotionVectors:
    """The prebuilt vectors for ``model_name``; extracted from the shipped pairs and cached
    when no file exists yet."""
    path = prebuilt_path(model_name)
    if path is not None:
        return EmotionVectors.load(path)
    from emovec.extraction import extract

    target = check_writable(cache_dir() / "vectors" / _file_name(model_name))  # before minutes
    _log.warning("No prebuilt vectors for %s; extracting them from the shipped pairs.", model_name)
    vectors = extract(model, tokenizer, model_name=model_name)
    vectors.save(target)
    return vectors
