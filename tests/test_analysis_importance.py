"""Word importance (emovec.analysis.importance): the gradient against finite differences, a
planted decisive word, deletion, the word–token mapping, normalisation, shares and the views."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from conftest import FILLER_WORDS, SPECIAL_TOKENS, WORDS, build_model, build_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from transformers import PreTrainedTokenizerFast

from emovec.analysis._importance_inputs import (
    encode,
    without_word,
    word_spans,
    words_by_offsets,
    words_by_prefixes,
)
from emovec.analysis.importance import (
    WordImportance,
    min_max,
    stimulus_share,
    word_importance,
)

PROMPT = "yesterday my friend was happy! and then we walked home."


def _metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A sentencepiece-like BPE (``▁word``) trained on the fly, small enough that most words
    split into several tokens, every id below the tiny models' vocabulary size."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=SPECIAL_TOKENS, show_progress=False)
    backend.train_from_iterator([" ".join(WORDS)] * 3, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", backend.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>"
    )


TOKENIZERS = {
    "word_level": lambda: build_tokenizer(bos=True),
    "metaspace_bpe": _metaspace_tokenizer,
}


# --- the word–token mapping -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_every_word_owns_exactly_its_own_tokens(kind: str) -> None:
    tokenizer = TOKENIZERS[kind]()
    encoded = encode(tokenizer, PROMPT, " home", chat=False)
    words = PROMPT.split()
    owners = encoded.token_words
    assert owners[0] == -1  # the BOS belongs to no word
    assert sorted(set(owners) - {-1}) == list(range(len(words)))
    for index, word in enumerate(words):
        ids = [t for t, owner in zip(encoded.context, owners, strict=True) if owner == index]
        assert tokenizer.decode(ids).replace(" ", "") == word
    # Multi-token words exist for both tokenizers ("happy!" splits even word-level).
    assert max(owners.count(i) for i in range(len(words))) >= 2


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_the_slow_tokenizer_fallback_agrees_with_offsets(kind: str) -> None:
    tokenizer = TOKENIZERS[kind]()
    encoded = encode(tokenizer, PROMPT, " home", chat=False)
    spans = word_spans(PROMPT)
    offsets = tokenizer(PROMPT, return_offsets_mapping=True)["offset_mapping"]
    assert words_by_offsets(offsets, spans) == encoded.token_words
    assert words_by_prefixes(tokenizer, PROMPT, spans, encoded.context, chat=False) == (
        encoded.token_words
    )


def test_chat_template_tokens_belong_to_no_word() -> None:
    tokenizer = build_tokenizer(bos=False)
    tokenizer.chat_template = (
        "{% for m in messages %}<bos> i asked , {{ m['content'] }} .{% endfor %}"
        "{% if add_generation_prompt %} you , {% endif %}"
    )
    encoded = encode(tokenizer, "we were happy", " yes", chat=True)
    owners = encoded.token_words
    tokens = tokenizer.convert_ids_to_tokens(encoded.context)
    assert tokens == ["<bos>", "i", "asked", ",", "we", "were", "happy", ".", "you", ","]
    assert owners == [-1, -1, -1, -1, 0, 1, 2, -1, -1, -1]
    with pytest.raises(ValueError, match="chat=False"):
        encode(build_tokenizer(), "we were happy", " yes", chat=True)


def test_without_word_removes_one_word_and_its_space() -> None:
    assert without_word("a  b c", 0) == "b c"
    assert without_word("a  b c", 1) == "a c"
    assert without_word("a  b c", 2) == "a  b"
    assert without_word("solo", 0) == ""


# --- the gradient against finite differences --------------------------------------------


@pytest.mark.parametrize(("arch", "kind"), [("llama", "word_level"), ("gpt2", "metaspace_bpe")])
def test_gradient_norm_matches_finite_differences(arch: str, kind: str) -> None:
    """Perturb all of one word's tokens by the same h·e_k, for every hidden direction k: the
    finite differences are the word's summed gradient, whose norm is its raw importance.

    A four-point stencil at h = 2e-3: Llama's RMSNorm computes in float32 even in a float64
    model, so a smaller step drowns in rounding and a larger one in curvature.
    """
    tokenizer = TOKENIZERS[kind]()
    model = build_model(arch, num_layers=2).double()
    result = word_importance(model, tokenizer, PROMPT, " home", method="gradient")
    encoded = encode(tokenizer, PROMPT, " home", chat=False)
    ids = torch.tensor([encoded.context + encoded.target])
    embeds = model.get_input_embeddings()(ids).detach()
    start = len(encoded.context)

    def loss(e: torch.Tensor) -> float:
        with torch.no_grad():
            logits = model(inputs_embeds=e).logits[0, start - 1 : -1]
        return float(nn.functional.cross_entropy(logits, ids[0, start:]))

    assert result.loss == pytest.approx(loss(embeds), rel=1e-9)
    word = 3 if kind == "word_level" else 0  # "was" / "yesterday" (several tokens)
    rows = [i for i, owner in enumerate(encoded.token_words) if owner == word]
    h = 2e-3
    fd = torch.zeros(embeds.shape[-1], dtype=torch.float64)
    for k in range(embeds.shape[-1]):
        step = torch.zeros_like(embeds)
        step[0, rows, k] = h
        ahead = 8 * loss(embeds + step) - loss(embeds + 2 * step)
        behind = 8 * loss(embeds - step) - loss(embeds - 2 * step)
        fd[k] = (ahead - behind) / (12 * h)
    assert float(fd.norm()) == pytest.approx(result.raw[word], rel=1e-4)
    assert result.raw[word] > 0


def test_gradient_sums_sub_tokens_before_the_norm() -> None:
    """ "happy!" is two tokens: its importance is the norm of their gradients' sum."""
    tokenizer = build_tokenizer()
    model = build_model("llama", num_layers=1).double()
    encoded = encode(tokenizer, PROMPT, " home", chat=False)
    ids = torch.tensor([encoded.context + encoded.target])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits[0, len(encoded.context) - 1 : -1]
    loss = nn.functional.cross_entropy(logits, ids[0, len(encoded.context) :])
    (grad,) = torch.autograd.grad(loss, embeds)
    rows = [i for i, owner in enumerate(encoded.token_words) if owner == 4]
    assert len(rows) == 2
    result = word_importance(model, tokenizer, PROMPT, " home")
    assert result.raw[4] == pytest.approx(float(grad[0, rows].sum(0).norm()), rel=1e-9)
    assert result.raw[4] != pytest.approx(float(grad[0, rows].norm(dim=-1).sum()), rel=1e-3)


def test_no_parameter_gradient_and_the_mode_is_restored() -> None:
    model = build_model("llama", num_layers=1)
    model.train()
    with torch.no_grad():  # the caller's no_grad does not stop the gradient method
        result = word_importance(model, build_tokenizer(), PROMPT, " home")
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert max(result.scores) == 1.0 and min(result.scores) == 0.0


# --- a planted decisive word ------------------------------------------------------------


class _Gated(nn.Module):
    """A toy LM whose every position predicts ``target`` by how often ``key`` came before it.

    One-hot embeddings; the evidence is ``relu(e[key] - 0.5)``, so no other token has any
    influence on the loss, and positions do not matter.
    """

    def __init__(self, vocab: int, key: int, target: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.embed.weight.copy_(torch.eye(vocab))
        self.key, self.target, self.vocab = key, target, vocab

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
    ) -> SimpleNamespace:
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        gate = torch.relu(embeds[..., self.key] - 0.5)
        if attention_mask is not None:
            gate = gate * attention_mask
        evidence = gate.cumsum(dim=1).unsqueeze(-1)
        row = nn.functional.one_hot(torch.tensor(self.target), self.vocab).to(embeds.dtype)
        return SimpleNamespace(logits=4.0 * evidence * row)


@pytest.mark.parametrize("method", ["gradient", "deletion"])
def test_a_planted_decisive_word_ranks_first_and_the_rest_score_zero(method: str) -> None:
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    model = _Gated(192, key=vocab["dog"], target=vocab["happy"])
    prompt = "yesterday the dog and my sister walked home"
    result = word_importance(model, tokenizer, prompt, " happy", method=method, batch_size=3)
    assert result.words[result.scores.index(1.0)] == "dog"
    assert result.raw[2] > 0.1
    assert all(v == pytest.approx(0.0, abs=1e-12) for i, v in enumerate(result.raw) if i != 2)
    assert result.share({"dog"}) == pytest.approx(1.0)


def test_a_trained_transformer_ranks_its_decisive_word_first() -> None:
    """A 1-layer Llama trained (80 Adam steps, < 1 s) to answer a sentence of five filler words
    and one key word with the key's label: the key word is the most important word."""
    tokenizer, rng = build_tokenizer(), random.Random(0)
    vocab = tokenizer.get_vocab()
    labels = {"happy": "smiled", "angry": "yelled", "afraid": "screamed", "sad": "tears"}

    def sample() -> tuple[str, str, str]:
        words = [rng.choice(FILLER_WORDS) for _ in range(5)]
        key = rng.choice(list(labels))
        words.insert(rng.randrange(6), key)
        return " ".join(words), key, labels[key]

    model = build_model("llama", num_layers=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        batch = [sample() for _ in range(32)]
        ids = torch.tensor([tokenizer(p)["input_ids"] + [vocab[label]] for p, _, label in batch])
        loss = nn.functional.cross_entropy(model(input_ids=ids).logits[:, -2], ids[:, -1])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    assert loss.item() < 0.05
    firsts = {"gradient": 0, "deletion": 0}
    for _ in range(20):
        prompt, key, label = sample()
        for method in firsts:
            result = word_importance(model, tokenizer, prompt, f" {label}", method=method)  # type: ignore[arg-type]
            firsts[method] += result.words[result.scores.index(1.0)] == key
    # Chance is 1 in 6; deletion finds the key every time, the gradient nearly always.
    assert firsts["deletion"] == 20
    assert firsts["gradient"] >= 15


def test_deletion_is_the_loss_change_of_each_shorter_prompt() -> None:
    tokenizer = build_tokenizer()
    model = build_model("llama", num_layers=2)
    prompt = "my friend was happy"
    result = word_importance(model, tokenizer, prompt, " today", method="deletion", batch_size=2)
    single = [
        word_importance(model, tokenizer, text, " today", method="gradient").loss
        for text in ["friend was happy", "my was happy", "my friend happy", "my friend was"]
    ]
    expected = [abs(loss - result.loss) for loss in single]
    assert list(result.raw) == pytest.approx(expected, abs=1e-5)
    assert result.scores == tuple(pytest.approx(v) for v in min_max(expected))


# --- normalisation, shares, views -------------------------------------------------------


def test_min_max() -> None:
    assert min_max([2.0, 4.0, 6.0]) == [0.0, 0.5, 1.0]
    assert min_max([3.0, 3.0]) == [0.0, 0.0]
    assert min_max([]) == []


def _result(words: tuple[str, ...], scores: tuple[float, ...]) -> WordImportance:
    return WordImportance(" ".join(words), "x", "gradient", words, scores, scores, 1.0)


def test_share_matches_bare_words_and_counts_every_occurrence() -> None:
    result = _result(("My", "career.", "is", "my", "CAREER"), (0.5, 1.0, 0.0, 0.5, 0.0))
    assert result.share({"career"}) == pytest.approx(1.0 / 2.0)
    assert result.share({"my"}) == pytest.approx(1.0 / 2.0)
    assert result.share_at([0, 0, 1]) == pytest.approx(1.5 / 2.0)
    assert result.share({"absent"}) == 0.0
    assert math.isnan(_result(("a", "b"), (0.0, 0.0)).share({"a"}))
    with pytest.raises(IndexError, match="0 to 4"):
        result.share_at([5])
    with pytest.raises(ValueError, match="one score"):
        WordImportance("a", "x", "gradient", ("a",), (), (), 0.0)


def test_html_escapes_text_and_shades_by_score() -> None:
    result = _result(("<script>alert(1)</script>", "&", "calm"), (1.0, 0.5, 0.0))
    page = result.to_html()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&amp;" in page
    assert "rgb(220, 38, 38)" in page and "rgb(255, 255, 255)" in page
    assert result._repr_html_() == page


def test_terminal_view_colours_each_word() -> None:
    text = _result(("hot", "cold"), (1.0, 0.0)).to_terminal()
    assert "\x1b[38;2;0;0;0;48;2;220;38;38mhot\x1b[0m" in text
    assert "\x1b[38;2;0;0;0;48;2;255;255;255mcold\x1b[0m" in text


# --- stimuli and bad input --------------------------------------------------------------


@pytest.mark.parametrize(("side", "stimulus_at"), [("after", (3, 4, 5)), ("before", (0, 1, 2))])
def test_stimulus_share_finds_the_stimulus_where_it_was_placed(
    side: str, stimulus_at: tuple[int, ...]
) -> None:
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    model = _Gated(192, key=vocab["proud"], target=vocab["happy"])
    shares = stimulus_share(
        model,
        tokenizer,
        "my friend called",
        "i felt proud.",
        " happy",
        ["Proud"],
        side=side,  # type: ignore[arg-type]
    )
    assert shares.stimulus_words == stimulus_at
    assert shares.positive_words == (stimulus_at[2],)
    assert shares.positive == pytest.approx(1.0) and shares.stimulus == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in the stimulus: friend"):
        stimulus_share(model, tokenizer, "my friend called", "i felt proud.", " happy", ["friend"])


def test_bad_input_says_what_to_do() -> None:
    model, tokenizer = build_model("llama", num_layers=1), build_tokenizer()
    with pytest.raises(ValueError, match="use one of gradient, deletion"):
        word_importance(model, tokenizer, PROMPT, " home", method="saliency")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty prompt"):
        word_importance(model, tokenizer, "   ", " home")
    with pytest.raises(ValueError, match="non-empty target"):
        word_importance(model, tokenizer, PROMPT, "")
    with pytest.raises(ValueError, match="BOS"):
        word_importance(model, build_tokenizer(bos=False), "home", " home", method="deletion")
    with pytest.raises(ValueError, match="side"):
        stimulus_share(model, tokenizer, "a", "b", " c", [], side="inside")  # type: ignore[arg-type]
