"""Word salad: answers that use words no English word list knows ("mountainry",
"disgustinating"), which neither topic similarity nor the degeneration rate can see.

A word is *invented* when ``wordfreq`` (word frequencies from subtitles, Wikipedia, books,
news, the web and more, down to about one in 10^8 words) gives it a Zipf frequency of 0 in
English. ``wordfreq`` is an optional dependency (the ``[eval]``
extra), imported only when a word is judged.

What is not judged, because real clean text has it and a word list need not: anything with a
digit or an underscore (``"3rd"``, ``"1990s"``, ``"mp3"``, identifiers), URLs, e-mail
addresses and domain names, mixed-case words (``"iPhone"``, ``"McDonald"``) and all-capital
words of under five letters (acronyms: ``"HVAC"``); longer all-capital words are shouting,
judged in lower case. Hyphenated words are judged part by part (``"sad-ish"`` → ``"sad"``,
``"ish"``), contractions and possessives as a whole and then without their clitic
(``"neighbour's"`` → ``"neighbour"``), a dropped g also with it (``"despoilin'"``), and
stretched letters also with the run shortened (``"sooooo"`` → ``"soo"``, ``"so"``). The
start of a censored word (``"f**k"``) is not judged.

Capitalised words are judged too: small models capitalise their inventions ("I'm an
Outrageant, Anguilish, Unrestible…"), and the list, built partly from Wikipedia, knows most
names ("Okonkwo", "Przybylski", "Gdańsk"; none of the capitalised words of the shipped texts
is unknown to it). A run of unknown capitalised words with only spaces between them is one
name (``"Oluwaseun Oyelaran"``), so a rare full name counts once.
"""

from __future__ import annotations

import re
from functools import lru_cache
from types import ModuleType

__all__ = ["invented_words", "is_invented"]

_INSTALL = "pip install 'wordfreq>=3.0' (or the [eval] extra)"

# URLs, e-mail addresses and bare domain names, removed before words are read.
_LINK = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://|www\.)\S+"
    r"|\S+@\S+\.\S+"
    r"|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|io|co|uk|de|fr|info|ai|dev|app)\b\S*",
    re.IGNORECASE,
)
# A run of word characters, apostrophes and hyphens: one written word, maybe hyphenated.
_CHUNK = re.compile(r"[\w'’-]+")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'"})
# Clitics a known word may carry: "neighbour's", "parents'", "we'd", "John'll".
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m", "n't", "'")
_STRETCHED = re.compile(r"(\w)\1{2,}")
# Shorter all-capital words are acronyms, longer ones shouting.
_SHOUTED = 5


@lru_cache(maxsize=1)
def _wordfreq() -> ModuleType:
    """The ``wordfreq`` module, imported once."""
    try:
        import wordfreq
    except ModuleNotFoundError as err:
        raise ImportError(f"The invented-words judge needs wordfreq: {_INSTALL}") from err
    return wordfreq


@lru_cache(maxsize=1 << 16)
def _in_list(word: str) -> bool:
    """Whether wordfreq knows lower-case ``word`` in English at all (Zipf frequency > 0)."""
    return bool(_wordfreq().zipf_frequency(word, "en") > 0)


@lru_cache(maxsize=1 << 16)
def _known(word: str) -> bool:
    """Whether lower-case ``word`` (letters and apostrophes) is English: in the word list
    itself, without a clitic, with a dropped g restored, or with a stretched letter run
    shortened."""
    if _in_list(word):
        return True
    for clitic in _CLITICS:
        stem = word[: -len(clitic)]
        if word.endswith(clitic) and len(stem) > 1 and _in_list(stem):
            return True
    if word.endswith("in'") and _in_list(word[:-1] + "g"):  # "despoilin'": a dropped g
        return True
    if _STRETCHED.search(word):
        return any(_in_list(_STRETCHED.sub(run, word)) for run in (r"\1\1", r"\1"))
    return False


def _censored(text: str, chunk: re.Match[str]) -> bool:
    """Whether ``chunk`` is the start of a censored word (``"f**k"``, ``"eaterf**"``): stars
    right after it and none right before (``"*word*"``, ``"**word**"`` are emphasis)."""
    end, start = chunk.end(), chunk.start()
    return text[end : end + 1] == "*" and text[start - 1 : start] != "*"


def _judged(word: str) -> str | None:
    """``word`` in lower case if it is to be judged, ``None`` for acronyms and mixed case."""
    letters = word.replace("'", "")
    if not letters or letters.islower():
        return word or None
    if letters.isupper():
        return word.lower() if len(letters) >= _SHOUTED else None
    if letters[0].isupper() and letters[1:].islower():
        return word.lower()
    return None  # mixed case: "iPhone", "McDonald"


def invented_words(text: str) -> list[str]:
    """The words of ``text`` that no English word list knows, in lower case.

    A word is unknown when ``wordfreq.zipf_frequency(word, "en")`` is 0, also without a
    clitic (``'s``, ``n't``, …) and with stretched letters shortened. Numbers, URLs,
    acronyms and mixed-case words are not judged; hyphenated words are judged part by part,
    and a run of unknown capitalised words separated by spaces only is one name (see the
    module's docstring).

    Args:
        text: The text, e.g. a generated answer.

    Returns:
        Each unknown word (or name) once, in the order of first appearance.

    Raises:
        ImportError: If ``wordfreq`` is not installed (and the text has a word to judge).
    """
    text = _LINK.sub(" ", text.translate(_APOSTROPHES))
    # Runs of unknown words: one word each, or capitalised words with only spaces between.
    runs: list[list[str]] = []
    end, titled_before = -1, False
    for chunk in _CHUNK.finditer(text):
        token = chunk.group()
        if any(c.isdigit() or c == "_" for c in token) or _censored(text, chunk):
            continue
        offset = chunk.start()
        for part in token.split("-"):
            word = part.strip("'")
            if part.endswith("in'") and word.endswith("in"):
                word += "'"  # keep the mark of a dropped g: "despoilin'"
            start = offset + part.find(word)
            offset += len(part) + 1
            judged = _judged(word)
            if judged is None or _known(judged):
                continue
            titled = word[0].isupper() and not word.isupper()
            if titled and titled_before and text[end:start].isspace():
                runs[-1].append(judged)
            else:
                runs.append([judged])
            end, titled_before = start + len(word), titled
    # Runs sharing a word are one name ("Oluwaseun Oyelaran", later "Oyelaran").
    names: list[list[str]] = []
    for run in runs:
        same = [name for name in names if set(name) & set(run)]
        merged = list(dict.fromkeys([w for name in same for w in name] + run))
        names = [name for name in names if name not in same] + [merged]
    return [" ".join(name) for name in names]


def is_invented(text: str, min_words: int = 2) -> bool:
    """Whether ``text`` has fallen into word salad: at least ``min_words`` distinct words
    no English word list knows (:func:`invented_words`).

    One unknown word is not enough by default: a rare name at the start of a sentence, a
    brand or a word from another language happens in clean text; two rarely do.

    Args:
        text: The text, e.g. a generated answer.
        min_words: The fewest distinct unknown words that make a text invented.

    Returns:
        ``True`` when the text has ``min_words`` or more distinct unknown words.
    """
    return len(invented_words(text)) >= min_words
