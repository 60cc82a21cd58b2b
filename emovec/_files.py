"""Writing files so that they appear whole or not at all, checking beforehand that they can
be written, and reading the user's text files within a bound."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "MAX_TEXT_BYTES",
    "NotWritableError",
    "atomic_path",
    "check_writable",
    "file_set",
    "read_text",
    "write_text",
]

# The largest text file (queries, pairs, triples, stimuli, reports) read: far above any real
# one (a sweep's report of 120 queries × 20 conditions is ~3 MB), far below the memory.
MAX_TEXT_BYTES = 256 * 2**20


def read_text(path: str | Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path``, a regular file of at most ``limit`` bytes.

    A FIFO, a device such as ``/dev/zero`` or a huge file is refused before a byte is read:
    reading them whole blocked forever or filled the memory, deaf to Ctrl-C.

    Raises:
        ValueError: If ``path`` is not a regular file, is larger than ``limit`` or is not
            UTF-8 (``UnicodeDecodeError`` is a ``ValueError``).
        OSError: If it cannot be read (``FileNotFoundError`` where it does not exist).
    """
    path = Path(path)
    mode = path.stat().st_mode  # stat, not open: opening a FIFO blocks until a writer comes
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file; give {what} as a file.")
    with path.open("rb") as handle:
        data = handle.read(limit + 1)  # a file growing while read is still bounded
    if len(data) > limit:
        raise ValueError(
            f"{path} is larger than {limit // 2**20} MiB, more than {what} can be; "
            "give a smaller file."
        )
    return data.decode("utf-8")


def _staging_file(path: Path, suffix: str) -> Path:
    """An empty file beside ``path`` (in its folder, so that a rename replaces it)."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", suffix=suffix, dir=path.parent)
    os.close(handle)
    return Path(staging)


def _publish(staging: Path, path: Path) -> None:
    """``staging`` renamed onto ``path``, with the permissions of a normally created file
    (mkstemp's 0600 would make shared files private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o666 & ~umask)
    os.replace(staging, path)


@contextmanager
def atomic_path(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """A staging file beside ``path`` to write into; it replaces ``path`` when the block
    ends without an error and is removed otherwise."""
    staging = _staging_file(path, suffix)
    try:
        yield staging
        _publish(staging, path)
    finally:
        if staging.exists():
            staging.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return path


class NotWritableError(OSError, ValueError):
    """A destination that cannot be written, found before any work is done for it.

    An :class:`OSError` (the file system refused) and a :class:`ValueError` (the remedy is
    another path): ``filename`` is the destination, ``errno`` the file system's error.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def check_writable(path: str | Path) -> Path:
    """Prove that a file can be written at ``path``, before the work that produces it.

    Creates the parent folder if needed, then creates and removes a file beside ``path`` (the
    way :func:`atomic_path` writes it) and the folders it created; an existing ``path`` must
    be a file.

    Args:
        path: The file to be written later.

    Returns:
        ``path`` as a :class:`Path`.

    Raises:
        NotWritableError: naming the path and the reason, when the file could not be written.
    """
    path = Path(path)
    created = _missing_folders(path.parent)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".probe", dir=path.parent)
        os.close(handle)
        os.unlink(probe)
        _remove_empty(created)  # made again when the file is written: none left if never
    except OSError as err:
        message = (
            f"cannot write {path} ({err}). Choose a location you can write to, or create the "
            "folder or fix its permissions."
        )
        raise NotWritableError(err.errno, message, str(path)) from err
    return path


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` where they are empty, the deepest first."""
    for folder in sorted(set(folders), key=lambda f: len(f.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            continue


@contextmanager
def file_set() -> Iterator[Callable[[str | Path], Path]]:
    """Files that appear together or not at all (a bank and the reports that describe it).

    The block gets ``stage(path)``: a staging file beside ``path`` to write instead (its
    folder created). When the block ends without an error every staging file replaces its
    path; otherwise they are removed, with any folder made for them that is left empty.
    """
    staged: list[tuple[Path, Path]] = []
    created: list[Path] = []

    def stage(path: str | Path) -> Path:
        path = Path(path)
        created.extend(_missing_folders(path.parent))
        path.parent.mkdir(parents=True, exist_ok=True)
        staged.append((_staging_file(path, path.suffix), path))
        return staged[-1][0]

    done = False
    try:
        yield stage
        for staging, path in staged:
            _publish(staging, path)
        done = True
    finally:
        for staging, _ in staged:
            if staging.exists():
                staging.unlink()
        if not done:
            _remove_empty(created)
