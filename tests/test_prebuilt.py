"""Finding the shipped and cached vector files (the installed wheel: tests/test_wheel.py)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import emovec
from emovec import EmotionVectors
from emovec.models import CACHE_ENV
from emovec.prebuilt import prebuilt_path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_VECTORS = Path(emovec.__file__).resolve().parent / "data" / "vectors"


@pytest.fixture(autouse=True)
def _empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    return cache


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_shipped_vectors_are_package_data(model: str) -> None:
    # They were looked up beside the package, in the checkout's vectors/: absent in a wheel.
    path = prebuilt_path(model)
    assert path is not None
    assert path.resolve().parent == PACKAGE_VECTORS
    assert EmotionVectors.load(path).model_name == model


def test_checkout_vectors_folder_is_the_package_data() -> None:
    # README and tests load "vectors/<model>.safetensors" from the repository root.
    assert (ROOT / "vectors").resolve() == PACKAGE_VECTORS
    shipped = prebuilt_path("smollm2-135m-instruct")
    assert shipped is not None
    assert (ROOT / "vectors" / "smollm2-135m-instruct.safetensors").resolve() == shipped.resolve()


def test_cached_vectors_are_found_after_the_shipped_ones(_empty_cache: Path) -> None:
    assert prebuilt_path("some-org/other-model") is None
    cached = _empty_cache / "vectors" / "some-org--other-model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert prebuilt_path("some-org/other-model") == cached


def test_version_is_the_installed_metadata_version() -> None:
    assert emovec.__version__ == importlib.metadata.version("emovec")


def test_an_unwritable_cache_fails_before_extracting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No minutes of extraction lost to a cache that cannot be written."""
    from emovec import prebuilt
    from emovec._files import NotWritableError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("EMOVEC_CACHE", str(blocker / "cache"))
    calls: list[object] = []
    monkeypatch.setattr("emovec.extraction.extract", lambda *a, **k: calls.append(a))
    with pytest.raises(NotWritableError):
        prebuilt.vectors_for(object(), object(), "nobody/unknown-model")  # type: ignore[arg-type]
    assert calls == []
