"""The wheel: built from the checkout and installed into a fresh environment, it carries the
shipped vector files, its licence and one version.

A wheel install used to lose the shipped vectors (``prebuilt.py`` looked for ``vectors/``
beside the package, which only a checkout has), so the CLI silently extracted new,
uncalibrated ones. The test builds the wheel offline, installs it into a temporary venv that
borrows this environment's dependencies (torch, transformers...) but not its emovec, and
looks the vectors up from a directory outside the repository.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.version import Version

from emovec import BASIC_EMOTIONS
from emovec._version import __version__

ROOT = Path(__file__).resolve().parent.parent
# What the build reads: the project table, the readme it names, the licence and the package.
_SOURCES = ("pyproject.toml", "README.md", "LICENSE")
_PROBE = """
import importlib.metadata, json, sys
import emovec
from emovec import EmotionVectors
from emovec.datasets import available_emotions
from emovec.prebuilt import prebuilt_path

path = prebuilt_path("smollm2-135m-instruct")
gemma = prebuilt_path("gemma-3-270m")
print(json.dumps({
    "package": emovec.__file__,
    "path": None if path is None else str(path),
    "gemma": None if gemma is None else str(gemma),
    "emotions": None if path is None else EmotionVectors.load(path).emotions,
    "pairs": available_emotions(),
    "version": emovec.__version__,
    "metadata_version": importlib.metadata.version("emovec"),
    "sys_path": sys.path,
}))
"""


def _require_build_tools() -> None:
    """The offline build uses this environment's setuptools (>= 77 reads the SPDX licence)
    and pip (>= 22.3 installs into another interpreter with ``--python``)."""
    have = {name: Version(importlib.metadata.version(name)) for name in ("setuptools", "pip")}
    if have["setuptools"] < Version("77") or have["pip"] < Version("22.3"):
        found = ", ".join(f"{name} {version}" for name, version in have.items())
        message = f"building the wheel offline needs setuptools>=77 and pip>=22.3, not {found}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: pip install 'setuptools>=77' 'pip>=22.3'")
        pytest.skip(message)


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a copy of the checkout (an in-tree build would write
    build/ into the working tree)."""
    _require_build_tools()
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in _SOURCES:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "emovec", source / "emovec", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = work / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "-q",
        "-w",
        dist,
        source,
        cwd=work,
    )
    (built,) = dist.glob("emovec-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """What the probe reports from a fresh venv holding the wheel, run outside the checkout."""
    work = tmp_path_factory.mktemp("venv")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # Installed before the venv can see this environment, so pip finds no emovec to replace.
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--disable-pip-version-check",
        "-q",
        wheel,
        cwd=work,
    )
    site = Path(
        _run(
            python,
            "-I",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=work,
        ).strip()
    )
    # This environment's packages, after the venv's own: a path listed in a .pth file is added
    # as it is, its own .pth files (this checkout's editable-install finder) are not run.
    # (--system-site-packages would borrow the base interpreter's, not this venv's.)
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_emovec_test_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["EMOVEC_CACHE"] = str(work / "cache")  # no cached vector file can answer for the wheel
    yield {
        "site": site,
        "venv": venv,
        **json.loads(_run(python, "-I", "-c", _PROBE, cwd=work, env=env)),
    }


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: dict) -> None:
    package = Path(installed["package"]).resolve()
    assert package.is_relative_to(installed["venv"].resolve()), installed["sys_path"]
    assert not package.is_relative_to(ROOT)


def test_shipped_vectors_are_found_inside_the_installed_package(installed: dict) -> None:
    assert installed["path"] is not None, "the wheel lost the shipped vectors"
    path = Path(installed["path"]).resolve()
    assert path.is_relative_to(installed["site"].resolve() / "emovec" / "data" / "vectors")
    assert installed["emotions"] == list(BASIC_EMOTIONS)
    assert installed["gemma"] is not None
    assert Path(installed["gemma"]).resolve().parent == path.parent
    assert set(BASIC_EMOTIONS) <= set(installed["pairs"])  # the pairs are package data too


def test_version_is_written_once(installed: dict) -> None:
    assert installed["version"] == installed["metadata_version"] == __version__


def test_wheel_carries_every_data_file_and_the_licence(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        headers = archive.read(metadata).decode()
        licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()
    # Every data file of the package, the vector files among them (package-data globs that
    # miss a new kind of file would drop it silently).
    data = ROOT / "emovec" / "data"
    shipped = {f"emovec/{p.relative_to(data.parent).as_posix()}" for p in data.rglob("*")}
    shipped = {name for name in shipped if (ROOT / name).is_file()}
    assert any(name.startswith("emovec/data/vectors/") for name in shipped)
    assert sorted(shipped - names) == []
    assert "emovec/server/page.html" in names  # the playground emovec serve shows at /
    assert "License-Expression: Apache-2.0" in headers
    assert f"Version: {__version__}\n" in headers


_WITHOUT_EXTRAS = """
import importlib.abc, sys

class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"matplotlib", "nade", "wordfreq", "nbclient", "pytest"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _Missing())
import emovec, emovec.cli
from emovec import EmotionVectors, steer, train
bank = EmotionVectors.load(sys.argv[1])
print(bank.similarity().to_markdown().count("|") > 0)
try:
    emovec.cli.main(["--help"])
except SystemExit as done:
    print("help", done.code)
"""


def test_the_core_and_the_cli_import_without_the_extras() -> None:
    """The declared dependencies suffice for ``import emovec`` and ``emovec --help``: the
    extras' packages (matplotlib, nade, wordfreq...) are imported only where used."""
    bank = ROOT / "vectors" / "smollm2-135m-instruct.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, str(bank)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "True" and "help 0" in done.stdout
