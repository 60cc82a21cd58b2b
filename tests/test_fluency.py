"""The invented-words judge on hand-made texts and on the shipped hand-written texts.

The word list is the real one of ``wordfreq`` (the ``[eval]`` extra).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from emovec.datasets import available_emotions, default_pairs, default_triples
from emovec.evaluation import fluency
from emovec.evaluation.fluency import invented_words, is_invented

# Words a steered SmolLM2 made up (docs/methods.md and the task that asked for the judge).
INVENTED = ["mountainry", "unforgivlin", "briccoladegeresei", "disgustinating", "abominationous"]


@pytest.mark.parametrize("word", INVENTED)
def test_made_up_words_are_unknown(word: str) -> None:
    assert invented_words(f"The garden was so {word} today.") == [word]


def test_word_salad_is_invented() -> None:
    salad = "The mountainry was unforgivlin, briccoladegeresei and disgustinating!"
    assert invented_words(salad) == INVENTED[:4]
    assert is_invented(salad)
    # What a steered SmolLM2 wrote (docs/methods.md): capitalised and shouted inventions.
    rant = (
        "I'm an Outrageant, Anguilish, Unrestible, Insurious, Aggressive, Irascible… EGRELKETERS!"
    )
    assert invented_words(rant) == [
        "outrageant",
        "anguilish",
        "unrestible",
        "insurious",
        "egrelketers",
    ]
    assert is_invented("The longer it takes for the phosphatine in your stomach to beleaboned…")


def test_one_unknown_word_is_not_enough_by_default() -> None:
    text = "That mountainry view was lovely."
    assert invented_words(text) == ["mountainry"]
    assert not is_invented(text)
    assert is_invented(text, min_words=1)
    # The same invented word twice is still one word.
    assert not is_invented("Mountainry, pure mountainry!")
    assert not is_invented("Mountainry and disgustinating.", min_words=3)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sure we'd've gone if you hadn't said no; don't worry, y'all, it's fine.",
        "The neighbour's dog and my parents' car were there at 3 o'clock on 12/05/2023.",
        "She came 3rd in the 1990s with 45% of the vote, £20 and 2.5 kg of mp3s (COVID-19).",
        "My co-worker's self-aware, well-known, state-of-the-art, re-evaluated plan.",
        "Dr. Okonkwo met Mrs. Przybylski and Saoirse in Gdańsk, then flew to Llanfair.",
        # Possessives and clitics the list lacks as a whole: "platypus's", "grandma'll".
        "Okonkwo's platypus's aardvark's hat; my grandma'll know, the kettle'd boil.",
        "I bought an iPhone at McDonald's; the HVAC guy from NASA fixed it.",
        "Ugh, nooooo! Hmmmm, yaaay, grrrr, ewww, shhh, hahaha, yessss, meh, yikes.",
        "Aaaaaaaargh, the bus left!",  # stretched past any spelling the list has
        "Stop despoilin' the garden, I'm not jokin' (a dropped g).",
        "What the f**k, that sh*t is fu**ing awful, the eaterf** place!",  # censored
        "See https://example.com/some-pathx, mail jdoe@qwxz.org or read docs.qwxzy.io.",
        "The café's naïve façade was über-cool.",
        "",
    ],
)
def test_clean_text_has_no_invented_words(text: str) -> None:
    assert invented_words(text) == []
    assert not is_invented(text, min_words=1)


def test_what_is_not_judged_still_hides_nothing_around_it() -> None:
    """Skipping numbers, links and acronyms must not skip the words beside them."""
    assert invented_words("3rd mountainry www.qwxzy.com disgustinating HVAC") == [
        "mountainry",
        "disgustinating",
    ]
    # Hyphenated words are judged part by part, clitics on invented words do not hide them.
    assert invented_words("a sad-mountainry look, the disgustinating's smell") == [
        "mountainry",
        "disgustinating's",
    ]
    # Stretched letters are shortened only to find a word, not to excuse an invented one.
    assert invented_words("mountainryyyy") == ["mountainryyyy"]
    # Emphasis is not censoring; a dropped g excuses only a word whose g-form is known.
    assert invented_words("*mountainry* and **disgustinating**") == ["mountainry", "disgustinating"]
    assert invented_words("ferguishin' around") == ["ferguishin'"]


def test_a_run_of_unknown_capitalised_words_is_one_name() -> None:
    """A rare full name counts once; capitalised inventions in a list count each."""
    visit = "Oluwaseun Oyelaran visited us; later Oyelaran said the garden was lovely."
    assert invented_words(visit) == ["oluwaseun oyelaran"]
    assert not is_invented(visit)
    assert invented_words("Outrageant, Anguilish") == ["outrageant", "anguilish"]
    # Two different rare names in one answer do count twice (the judge's known limit).
    assert is_invented("Oluwaseun met Tjaša.")


def test_the_core_package_does_not_import_wordfreq() -> None:
    code = "import sys, emovec; assert 'wordfreq' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_wordfreq_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import wordfreq now fails
    for cached in (fluency._wordfreq, fluency._in_list, fluency._known):
        cached.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install 'wordfreq"):
            invented_words("a qwxzyvv word")
    finally:
        for cached in (fluency._wordfreq, fluency._in_list, fluency._known):
            cached.cache_clear()


# --- validation on the shipped texts ---------------------------------------------------


def test_hand_written_answers_are_almost_never_invented() -> None:
    """The 1800 hand-written emotional and neutral answers (answer pairs and training
    triples) are clean English: at most 1 % is judged invented (measured: none; one answer
    has a single unknown word)."""
    answers = [
        text
        for pairs in default_triples().values()
        for pair in pairs
        for text in (pair.emotional, pair.neutral)
    ]
    assert len(answers) == 1800
    flagged = [text for text in answers if is_invented(text)]
    assert len(flagged) <= 0.01 * len(answers), flagged[:5]
    assert sum(bool(invented_words(text)) for text in answers) <= 0.01 * len(answers)


def test_shipped_stories_are_not_invented() -> None:
    stories = [
        text for pairs in default_pairs(available_emotions()).values() for p in pairs for text in p
    ]
    assert len(stories) == 1500
    assert [text for text in stories if is_invented(text)] == []
