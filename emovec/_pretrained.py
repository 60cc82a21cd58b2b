"""A bank in the Hugging Face hub's layout: a folder of the vector file and its model card.

:meth:`EmotionVectors.save_pretrained` writes :data:`BANK_FILE` (the vector file of
:mod:`emovec._format`) and :data:`CARD_FILE`, a model card rendered from the bank alone, as
a set that appears together; the folder can be pushed as it is
(``HfApi().upload_folder(folder_path=folder, repo_id=...)``).
:meth:`EmotionVectors.from_pretrained` finds the vector file in such a folder, a local file
or a hub repository; a repository that cannot be reached fails in seconds
(:func:`emovec._hub.hub_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from emovec._card import Results, render_card
from emovec._files import check_writable, file_set
from emovec._hub import hub_options
from emovec._version import __version__

if TYPE_CHECKING:
    from emovec.vectors import EmotionVectors

__all__ = ["BANK_FILE", "CARD_FILE", "locate", "save"]

BANK_FILE = "emotion_vectors.safetensors"
CARD_FILE = "README.md"

# --- the folder ---------------------------------------------------------------------------


def save(
    bank: EmotionVectors,
    directory: str | Path,
    *,
    results: Results | None = None,
    license: str | None = None,
) -> Path:
    """Write ``bank`` and its model card into ``directory``, together or not at all.

    Raises:
        FileExistsError: If ``directory`` is an existing file.
        ValueError: If ``directory`` is named like a vector file, or ``results`` or
            ``license`` are malformed.
        NotWritableError: If the files cannot be written there.
    """
    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(
            f"{directory} is a file, but save_pretrained writes a folder ({BANK_FILE} and "
            f"{CARD_FILE}). Pass the path of a folder (new or existing), or use save() to "
            "write a single vector file."
        )
    if directory.suffix == ".safetensors":
        raise ValueError(
            f"{directory} is named like a vector file, but save_pretrained writes a folder. "
            "Pass a folder name, or use save() to write a single .safetensors file."
        )
    card = render_card(bank, results=results, license=license)  # bad arguments: before writing
    for name in (BANK_FILE, CARD_FILE):
        check_writable(directory / name)
    with file_set() as stage:  # the bank and the card that describes it
        bank.save(stage(directory / BANK_FILE))
        stage(directory / CARD_FILE).write_bytes(card.encode("utf-8"))
    return directory


def locate(
    name: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The vector file that ``name`` names: in a folder, a file, or in a hub repository
    (downloaded into the Hugging Face cache).

    Raises:
        FileNotFoundError: If a folder has no :data:`BANK_FILE`, a path-like name does not
            exist, or the repository has no :data:`BANK_FILE`.
        ValueError: If ``name`` is neither an existing path nor a valid repository id.
        OSError: If the repository cannot be loaded (the hub unreachable or offline while
            the file is not cached, no such repository or revision), saying what to do.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / BANK_FILE).is_file():
            raise FileNotFoundError(
                f"The folder {path} has no {BANK_FILE}, so it is not a folder written by "
                "EmotionVectors.save_pretrained. Pass such a folder, or the path of a vector "
                "file (EmotionVectors.load)."
            )
        return path / BANK_FILE
    if path.exists():
        return path  # a file: the strict reader says whether it is a bank
    repo_id = str(name)
    if isinstance(name, Path) or repo_id.endswith(".safetensors") or _path_like(repo_id):
        raise FileNotFoundError(f"No folder or vector file at {path}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(
            f"{repo_id!r} is neither a local folder or file nor a valid Hugging Face repo id "
            f"('owner/name'): {err}"
        ) from None
    options = {"revision": revision, "cache_dir": cache_dir}
    extra = hub_options(repo_id, options, filename=BANK_FILE)
    try:
        found = hf_hub_download(
            repo_id,
            BANK_FILE,
            revision=revision,
            cache_dir=cache_dir,
            library_name="emovec",
            library_version=__version__,
            **extra,
        )
    except RepositoryNotFoundError as err:
        raise OSError(
            f"No Hugging Face repo {repo_id!r} could be read: check the id, or log in "
            "(`hf auth login`) if it is private or gated."
        ) from err
    except RevisionNotFoundError as err:
        raise OSError(f"The repo {repo_id!r} has no revision {revision!r}.") from err
    except LocalEntryNotFoundError:
        raise
    except EntryNotFoundError as err:
        raise FileNotFoundError(
            f"The repo {repo_id!r} has no {BANK_FILE}: it does not hold a bank written by "
            "EmotionVectors.save_pretrained (push such a folder with HfApi().upload_folder)."
        ) from err
    return Path(cast(str, found))


def _path_like(name: str) -> bool:
    """Whether ``name`` can only be meant as a local path (``./x``, ``/x``, ``~``, ``C:\\``)."""
    return name.startswith((".", "/", "~", "\\")) or "\\" in name or name.count("/") > 1
