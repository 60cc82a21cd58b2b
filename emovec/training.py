"""Training emotion vectors: per emotion, what to add at each layer of a band, learned by
gradient descent from (query, emotional answer, neutral answer) triples, the model frozen.

A mean difference (:func:`emovec.extract`) reads where emotional text sits; it does not ask
what the model should *do* with the vector added. Training does: the vector is optimised so
that, added by the very hooks :func:`emovec.steer` uses (every position, every layer of the
band), the model answers the triples' questions the emotional way:

- ``"lm"`` (default): the language-modelling loss of the emotional answer under ``+v``;
- ``"preference"``: a bidirectional preference (RePS / BiPO style): under ``+v`` the
  emotional answer gains log-likelihood over the neutral one, relative to the unsteered
  model; under ``−v`` the neutral one gains over the emotional one;
- ``"lm+preference"``: both;
- ``"lm+kl"``: the language-modelling loss plus a fluency term: the KL divergence from the
  unsteered model's next-token distributions to the steered model's over the *neutral*
  answers, so that ``+v`` changes what the emotion needs and leaves plain text alone;
- ``"lm+distill"``: the language-modelling loss plus prompt distillation: over the emotional
  answer, the KL divergence from the distributions the unsteered model gives when the query
  carries the emotion's instruction ("Answer as someone furious…") to those ``+v`` gives
  without it, so the vector learns what the prompt does.

The KL terms are weighted by ``kl_weight``; every term is a per-token mean. On SmolLM2 the
language-modelling loss alone (the default) keeps more of the question than any of the others
at the same success (docs/training.md, round 9).

Log-likelihoods are per-token means over the answer's tokens; the unsteered model's (and the
distributions the KL terms compare with) are computed once. The weights never change (their
``requires_grad`` is switched off for the duration and restored; only the vectors reach the
optimiser), and training stops early:
every ``eval_every`` steps the loss on held-out triples is measured and the best vectors are
kept. The result is an ordinary bank: each emotion's vectors with a
:class:`~emovec.vectors.Placement` whose per-layer ``weights`` and ``dose`` make α = 1 add
exactly the trained vectors, so ``steer``, arithmetic, files and rows work unchanged.

Under ``torch.distributed`` (e.g. ``accelerate launch``) each process computes the loss of a
share of each batch and the gradients are all-reduced: N processes train the vectors of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from emovec._chat import asked
from emovec._doses import _layer_index, count
from emovec._reading import _all_reduce, _distributed, _hidden_size, _neutral_norms
from emovec._texts import _encode, _Item, _Text
from emovec.datasets import (
    ResponsePair,
    default_instructions,
    default_triples,
    validate_pairs,
)
from emovec.extraction import DEFAULT_BATCH_SIZE, _model_name
from emovec.hooks import Steering
from emovec.layers import context_length, find_blocks, training_band
from emovec.models import forward_parameters, input_device
from emovec.vectors import EmotionVectors, Placement

__all__ = [
    "MIN_TRIPLES",
    "OBJECTIVES",
    "PARAMETERIZATIONS",
    "Objective",
    "Parameterization",
    "train",
]

Objective = Literal["lm", "preference", "lm+preference", "lm+kl", "lm+distill"]
Parameterization = Literal["additive", "rank1"]
OBJECTIVES: tuple[Objective, ...] = ("lm", "preference", "lm+preference", "lm+kl", "lm+distill")
PARAMETERIZATIONS: tuple[Parameterization, ...] = ("additive", "rank1")

# Fewer triples than this cannot give both a training and a held-out share.
MIN_TRIPLES = 5


@dataclass(frozen=True)
class _Triple:
    """One triple's two answers after its prompt, tokenised, with what the objective compares
    with, computed once: the unsteered model's mean log-likelihood of each answer
    (preferences) or its log-probabilities at the answer's tokens (KL terms)."""

    emotional: _Text
    neutral: _Text
    reference: tuple[float, float] = (math.nan, math.nan)
    target: torch.Tensor | None = None  # [answer tokens, vocabulary], bfloat16 log-probs


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    triples: Mapping[str, Iterable[object]] | None = None,
    *,
    emotions: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    objective: Objective = "lm",
    parameterization: Parameterization = "additive",
    steps: int = 60,
    batch_size: int = 8,
    learning_rate: float = 0.02,
    beta: float = 4.0,
    kl_weight: float = 1.0,
    instructions: Mapping[str, str] | None = None,
    held_out: float = 0.2,
    eval_every: int = 10,
    seed: int = 0,
    precision: torch.dtype | None = torch.bfloat16,
    blocks: str | Sequence[nn.Module] | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> EmotionVectors:
    """Train one vector per emotion and layer of a band from answer triples.

    Args:
        model: A Hugging Face causal LM (left unchanged: weights, ``requires_grad`` and mode).
        tokenizer: Its fast tokenizer.
        triples: ``{emotion: [(query, emotional answer, neutral answer), ...]}``
            (:class:`~emovec.datasets.ResponsePair` items, tuples of three strings or dicts
            with those keys), at least :data:`MIN_TRIPLES` per emotion. Default: the
            shipped hand-written triples (:func:`~emovec.datasets.default_triples`: 200 for
            anger, disgust, fear and sadness, 100 for joy).
        emotions: Which shipped emotions to train when ``triples`` is not given.
        layers: The band trained (and steered); default :func:`training_band`.
        objective: One of :data:`OBJECTIVES` (module docstring).
        parameterization: ``"additive"``: a free vector per layer; ``"rank1"``: one
            direction shared by the band, with a learned size per layer.
        steps: Optimiser steps per emotion (Adam).
        batch_size: Triples per step.
        learning_rate: Adam's step size, in units of each layer's typical hidden norm
            divided by ``sqrt(hidden_size)``: the same number suits any model.
        beta: The preference's inverse temperature on per-token log-likelihood margins.
        kl_weight: The weight of the KL term of ``"lm+kl"`` and ``"lm+distill"``.
        instructions: ``"lm+distill"``'s teacher: per emotion, the instruction appended to
            each query; default: the shipped ones (:func:`~emovec.datasets.default_instructions`),
            which a custom emotion must be given.
        held_out: Share of each emotion's triples (the last ones) kept out of training to
            choose the step (early stopping); at least one triple.
        eval_every: Steps between two measurements of the held-out loss.
        seed: Seeds the batches' order: the same seed gives the same bank.
        precision: The forward passes run under autocast in this dtype (bfloat16: about 3x
            faster on CPUs with AMX and on GPUs; the vectors and their optimiser stay in
            float32); ``None``: in the model's own dtype.
        blocks: Where the decoder blocks are, for models :func:`~emovec.find_blocks` misses.
        model_name: Name recorded in the bank; default: the model's ``name_or_path``.
        progress: Show a progress bar.

    Returns:
        A bank whose placements steer exactly the trained vectors at α = 1; its settings
        record the objective, the data's hash, the steps, the seed and each emotion's
        training and held-out loss.

    Raises:
        ValueError: for bad options (a layer out of range included), or triples that are
            too few, empty, duplicated or not three strings.
        TypeError: for layers that are not integers.
    """
    _check_options(
        objective,
        parameterization,
        steps,
        batch_size,
        eval_every,
        learning_rate,
        beta,
        kl_weight,
        held_out,
    )
    checked = _checked_triples(triples, emotions)
    teachers = _instructions(instructions, checked) if objective == "lm+distill" else {}
    found = find_blocks(model, blocks)
    band = (
        training_band(len(found))
        if layers is None
        else sorted({_layer_index(i, len(found)) for i in layers})
    )
    # The hidden norms are read as extraction reads them (neutral answers, content tokens):
    # the yardstick of relative steering and of the learning rate. With the shipped triples,
    # over every emotion's: the emotions differ in their questions, and training some of
    # them must measure (and learn) as training the whole shipped bank does.
    norms = _neutral_norms(
        model,
        tokenizer,
        checked if triples is not None else default_triples(),
        batch_size=DEFAULT_BATCH_SIZE,
        blocks=found,
    )
    hidden_size = _hidden_size(model)
    vectors: dict[str, torch.Tensor] = {}
    placements: dict[str, Placement] = {}
    records: dict[str, dict[str, Any]] = {}
    with _frozen(model):
        for emotion, pairs in checked.items():
            encoded = _encoded(model, tokenizer, pairs)
            prompted = _encoded(model, tokenizer, pairs, teachers[emotion]) if teachers else None
            cut = len(encoded) - max(1, round(held_out * len(encoded)))
            started = time.perf_counter()
            result = _Run(
                model,
                found,
                band,
                norms,
                objective,
                parameterization,
                beta,
                kl_weight,
                pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                hidden_size=hidden_size,
                precision=precision,
            ).fit(
                encoded[:cut],
                encoded[cut:],
                prompted,
                steps=steps,
                batch_size=batch_size,
                learning_rate=learning_rate,
                eval_every=eval_every,
                seed=seed,
                description=f"train {emotion}" if progress else None,
            )
            full = torch.zeros(len(found), hidden_size)
            full[band] = result.vectors
            vectors[emotion] = full
            placements[emotion] = _placement(result.vectors, norms[band], band)
            records[emotion] = {
                **result.record,
                "triples": len(encoded),
                "held_out": len(encoded) - cut,
                "seconds": round(time.perf_counter() - started, 1),
            }
    _, world = _distributed()
    settings: dict[str, Any] = {
        "estimator": "trained",
        "objective": objective,
        "parameterization": parameterization,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "beta": beta,
        **({"kl_weight": kl_weight} if objective in ("lm+kl", "lm+distill") else {}),
        **({"instructions": teachers} if teachers else {}),
        "seed": seed,
        "precision": None if precision is None else str(precision).removeprefix("torch."),
        "layers": band,
        "data_sha256": _data_hash(checked),
        "training": records,
        **({"processes": world} if world > 1 else {}),
    }
    return EmotionVectors(
        vectors,
        norms,
        model_name=model_name or _model_name(model),
        recommended_layers=band,
        settings=settings,
        placements=placements,
    )


def _check_options(
    objective: str,
    parameterization: str,
    steps: int,
    batch_size: int,
    eval_every: int,
    learning_rate: float,
    beta: float,
    kl_weight: float,
    held_out: float,
) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}.")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}, not {parameterization!r}."
        )
    for name, number in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        count(number, name)
    for name, value in (("learning_rate", learning_rate), ("beta", beta), ("kl_weight", kl_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, not {value!r}.")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and positive, not {value}.")
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise ValueError(f"held_out must be a number, not {held_out!r}.")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out must lie strictly between 0 and 1, not {held_out}.")


def _checked_triples(
    triples: Mapping[str, Iterable[object]] | None, emotions: Sequence[str] | None
) -> dict[str, list[ResponsePair]]:
    """The triples as :class:`ResponsePair` lists, each emotion with at least
    :data:`MIN_TRIPLES` distinct ones."""
    if triples is None:
        return default_triples(emotions)
    if emotions is not None:
        raise ValueError("Give either triples or emotions (of the shipped answers), not both.")
    if not isinstance(triples, Mapping):
        raise TypeError(
            "triples must map each emotion to its (query, emotional, neutral) triples, not "
            f"{type(triples).__name__}."
        )
    as_records = {
        emotion: [_record(item, emotion, i) for i, item in enumerate(items, 1)]
        for emotion, items in triples.items()
    }
    checked: dict[str, list[ResponsePair]] = {}
    for emotion, pairs in validate_pairs(as_records).items():
        kept = [p for p in pairs if isinstance(p, ResponsePair)]
        if len(kept) < MIN_TRIPLES:
            raise ValueError(
                f"{emotion!r} has {len(kept)} triples; training needs at least {MIN_TRIPLES} "
                "(some to learn from, some held out to choose the step)."
            )
        checked[emotion] = kept
    return checked


def _record(item: object, emotion: str, index: int) -> object:
    """A triple as the mapping :func:`validate_pairs` reads; three strings or refused."""
    if isinstance(item, ResponsePair):
        return item
    if isinstance(item, Mapping):
        fields = [item.get(k) for k in ("query", "emotional", "neutral")]
    elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 3:
        fields = list(item)
    else:
        fields = []
    texts = [t for t in fields if isinstance(t, str)]
    if len(texts) != 3 or len(fields) != 3:
        raise ValueError(
            f"{emotion!r} triple {index}: expected three strings (query, emotional answer, "
            f"neutral answer), got {item!r:.120}."
        )
    return ResponsePair(*texts)


def _instructions(given: Mapping[str, str] | None, triples: Mapping[str, object]) -> dict[str, str]:
    """The teacher's instruction for each trained emotion: ``given``, else the shipped one."""
    known = default_instructions() if given is None else dict(given)
    missing = [e for e in triples if not isinstance(known.get(e), str) or not known[e].strip()]
    if missing:
        raise ValueError(
            f"Prompt distillation needs an instruction for {missing} (the teacher's prompt); "
            "pass instructions={emotion: 'Answer as someone ...'}."
        )
    return {e: known[e].strip() for e in triples}


def _data_hash(triples: Mapping[str, Sequence[ResponsePair]]) -> str:
    data = {e: [list(p) for p in pairs] for e, pairs in triples.items()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter requiring a gradient; restored after."""
    wanted = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.eval()
    for parameter in wanted:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in wanted.items():
            parameter.requires_grad_(flag)
        model.train(was_training)


def _encoded(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[ResponsePair],
    instruction: str | None = None,
) -> list[_Triple]:
    """Each triple's answers after its chat-formatted query (with ``instruction`` appended,
    where given), as extraction renders them (the answer's own tokens marked as content)."""
    items = [
        _Item(0, 2 * i + k, 1.0 - 2 * k, asked(p.query, instruction), text)
        for i, p in enumerate(pairs)
        for k, text in enumerate((p.emotional, p.neutral))
    ]
    texts = sorted(
        _encode(tokenizer, items, "plain", False, context_length(model)), key=lambda t: t.slot
    )
    return [_Triple(texts[2 * i], texts[2 * i + 1]) for i in range(len(pairs))]


@dataclass
class _Result:
    vectors: torch.Tensor  # [band, hidden]
    record: dict[str, Any]


@dataclass
class _Run:
    """One emotion's training: the model, where the vectors go, and the objective."""

    model: PreTrainedModel
    blocks: Sequence[nn.Module]
    band: list[int]
    norms: torch.Tensor  # [num_layers]
    objective: Objective
    parameterization: Parameterization
    beta: float
    kl_weight: float
    pad: int
    hidden_size: int
    precision: torch.dtype | None

    def __post_init__(self) -> None:
        self.takes = forward_parameters(self.model)
        self.device = input_device(self.model)

    def fit(
        self,
        train: list[_Triple],
        held: list[_Triple],
        prompted: list[_Triple] | None = None,
        *,
        steps: int,
        batch_size: int,
        learning_rate: float,
        eval_every: int,
        seed: int,
        description: str | None,
    ) -> _Result:
        rank, world = _distributed()
        if self.objective in ("preference", "lm+preference"):
            train = self._with_reference(train, batch_size)
            held = self._with_reference(held, batch_size)
        elif self.objective in ("lm+kl", "lm+distill"):
            if self.objective == "lm+kl":  # plain text: the neutral answer, unsteered
                teacher = [t.neutral for t in train + held]
            elif prompted is None:
                raise ValueError("Prompt distillation needs the prompted answers.")
            else:  # the emotional answer after the instructed query
                teacher = [t.emotional for t in prompted]
            targets = self._targets(teacher, batch_size)
            both = [
                replace(t, target=target) for t, target in zip(train + held, targets, strict=True)
            ]
            train, held = both[: len(train)], both[len(train) :]
        hidden_size = self.hidden_size
        units = (self.norms[self.band] / math.sqrt(hidden_size)).to(self.device)[:, None]
        generator = torch.Generator().manual_seed(seed)
        if self.parameterization == "additive":
            parameters = [torch.zeros(len(self.band), hidden_size, device=self.device)]
        else:  # one direction, a size per layer (starting at 1 so the direction moves)
            parameters = [
                torch.zeros(hidden_size, device=self.device),
                torch.ones(len(self.band), 1, device=self.device),
            ]
        for parameter in parameters:
            parameter.requires_grad_(True)
        optimiser = torch.optim.Adam(parameters, lr=learning_rate)

        def vectors() -> torch.Tensor:
            if self.parameterization == "additive":
                return parameters[0] * units
            return parameters[1] * parameters[0][None, :] * units

        best = (self._loss(held, vectors(), batch_size), 0)
        best_vectors = vectors().detach().clone()
        history = [round(best[0], 4)]
        order: list[int] = []
        bar = tqdm(range(1, steps + 1), desc=description, disable=description is None or rank)
        last_train = math.nan
        for step in bar:
            if len(order) < batch_size:
                order += torch.randperm(len(train), generator=generator).tolist()
            batch, order = order[:batch_size], order[batch_size:]
            mine = [train[i] for i in batch[rank::world]]
            optimiser.zero_grad()
            total = self._batch_loss(mine, vectors()) if mine else None
            loss = total / len(batch) if total is not None else None
            if loss is not None:
                loss.backward()
            for parameter in parameters:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                if world > 1:
                    _all_reduce(parameter.grad)
            optimiser.step()
            last_train = _summed(float(loss.detach()) if loss is not None else 0.0)
            if step % eval_every == 0 or step == steps:
                held_loss = self._loss(held, vectors(), batch_size)
                history.append(round(held_loss, 4))
                if held_loss < best[0]:
                    best = (held_loss, step)
                    best_vectors = vectors().detach().clone()
                bar.set_postfix(train=f"{last_train:.3f}", held_out=f"{held_loss:.3f}")
        return _Result(
            best_vectors.cpu().float(),
            {
                "best_step": best[1],
                "held_out_loss": round(best[0], 4),
                "held_out_history": history,
                "final_train_loss": round(last_train, 4),
            },
        )

    def _with_reference(self, triples: list[_Triple], batch_size: int) -> list[_Triple]:
        """The triples with the unsteered model's mean log-likelihoods, computed once."""
        out = []
        with torch.no_grad():
            for start in range(0, len(triples), batch_size):
                chunk = triples[start : start + batch_size]
                texts = [t for triple in chunk for t in (triple.emotional, triple.neutral)]
                scores = self._log_likelihoods(texts, None).tolist()
                out += [
                    _Triple(t.emotional, t.neutral, (scores[2 * i], scores[2 * i + 1]))
                    for i, t in enumerate(chunk)
                ]
        return out

    def _targets(self, texts: list[_Text], batch_size: int) -> list[torch.Tensor]:
        """The unsteered model's log-probabilities at each text's answer tokens, computed
        once and kept in bfloat16 (``[answer tokens, vocabulary]`` per text)."""
        out: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                logits, _, scored = self._forward(texts[start : start + batch_size], None)
                out += [
                    row[keep].log_softmax(-1).to(torch.bfloat16).cpu()
                    for row, keep in zip(logits, scored, strict=True)
                ]
        return out

    def _loss(self, triples: list[_Triple], vectors: torch.Tensor, batch_size: int) -> float:
        """The mean loss over ``triples`` (all processes' shares summed), no gradient."""
        rank, world = _distributed()
        total = 0.0
        with torch.no_grad():
            mine = triples[rank::world]
            for start in range(0, len(mine), batch_size):
                total += float(self._batch_loss(mine[start : start + batch_size], vectors))
        return _summed(total) / len(triples)

    def _batch_loss(self, triples: list[_Triple], vectors: torch.Tensor) -> torch.Tensor:
        """The objective summed over ``triples``."""
        emotional = [t.emotional for t in triples]
        if self.objective == "lm":
            return -self._log_likelihoods(emotional, vectors, [1.0] * len(triples)).sum()
        neutral = [t.neutral for t in triples]
        if self.objective in ("lm+kl", "lm+distill"):
            # lm+kl compares the neutral answers, lm+distill the emotional ones themselves.
            texts = emotional + neutral if self.objective == "lm+kl" else emotional
            logits, targets, scored = self._forward(texts, vectors, [1.0] * len(texts))
            n = len(triples)
            likelihood = _mean_log_likelihood(logits[:n], targets[:n], scored[:n])
            compared = logits[-n:], scored[-n:]
            divergence = torch.stack(
                [_kl(t.target, row[keep]) for t, row, keep in zip(triples, *compared, strict=True)]
            )
            return (self.kl_weight * divergence - likelihood).sum()
        texts = emotional + neutral + emotional + neutral
        signs = [1.0] * (2 * len(triples)) + [-1.0] * (2 * len(triples))
        scores = self._log_likelihoods(texts, vectors, signs).view(4, len(triples))
        reference = torch.tensor([t.reference for t in triples], device=scores.device)
        gain_e, gain_n = reference[:, 0], reference[:, 1]
        raised = (scores[0] - gain_e) - (scores[1] - gain_n)
        lowered = (scores[3] - gain_n) - (scores[2] - gain_e)
        loss = -F.logsigmoid(self.beta * raised) - F.logsigmoid(self.beta * lowered)
        if self.objective == "lm+preference":
            loss = loss - scores[0]
        return loss.sum()

    def _autocast(self) -> Any:
        """Mixed precision in ``self.precision`` (``None``: the model's own dtype)."""
        return torch.autocast(
            self.device.type, dtype=self.precision, enabled=self.precision is not None
        )

    def _log_likelihoods(
        self,
        texts: Sequence[_Text],
        vectors: torch.Tensor | None,
        signs: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Each text's mean log-likelihood of its content tokens, ``[len(texts)]``, under
        the model steered by ``sign × vectors`` per row (``None``: unsteered)."""
        return _mean_log_likelihood(*self._forward(texts, vectors, signs))

    def _forward(
        self,
        texts: Sequence[_Text],
        vectors: torch.Tensor | None,
        signs: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits of the last positions (float32, ``[len(texts), keep, vocabulary]``),
        the token each predicts and whether that token is the answer's, under the model
        steered by ``sign × vectors`` per row (``None``: unsteered)."""
        width = max(len(t.input_ids) for t in texts)
        # Left-padded, so every answer ends at the last position and the LM head runs only
        # over the last ``keep`` positions.
        keep = max(len(t.input_ids) - t.content.index(True) for t in texts) + 1
        keep = min(keep, width)
        ids = torch.full((len(texts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        targets = torch.zeros((len(texts), keep), dtype=torch.long)
        scored = torch.zeros((len(texts), keep), dtype=torch.bool)
        for row, text in enumerate(texts):
            n = len(text.input_ids)
            ids[row, width - n :] = torch.tensor(text.input_ids)
            mask[row, width - n :] = 1
            # Logit j (of the last ``keep``) predicts the token at padded position
            # width - keep + j + 1, i.e. the text's token n - keep + j + 1.
            for j in range(keep - 1):
                position = n - keep + j + 1
                if position > 0 and text.content[position]:
                    targets[row, j] = text.input_ids[position]
                    scored[row, j] = True
        inputs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
        }
        if "position_ids" in self.takes:
            inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        if "logits_to_keep" in self.takes:
            inputs["logits_to_keep"] = keep
        with self._autocast():
            if vectors is None:
                logits = self.model(**inputs, use_cache=False).logits
            else:
                sign = torch.tensor(signs, device=vectors.device)[:, None]
                deltas = {layer: sign * vectors[i] for i, layer in enumerate(self.band)}
                with Steering(self.model, self.blocks, deltas):
                    logits = self.model(**inputs, use_cache=False).logits
        logits = logits[:, -keep:].float()
        return logits, targets.to(logits.device), scored.to(logits.device)


def _mean_log_likelihood(
    logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor
) -> torch.Tensor:
    """Each row's mean log-probability of its scored target tokens, ``[rows]``."""
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    log_probs = (picked - logits.logsumexp(-1)) * scored
    return log_probs.sum(-1) / scored.sum(-1).clamp_min(1)


def _kl(target: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The mean over tokens of KL(target ‖ softmax(logits)); ``target`` holds log-probs."""
    if target is None or target.shape != logits.shape:
        raise ValueError(
            "The KL term's reference and the steered answer differ in tokens; the answer "
            "must tokenise the same after both prompts."
        )
    reference = target.to(logits.device, torch.float32)
    steered = logits.log_softmax(-1)
    return (reference.exp() * (reference - steered)).sum(-1).mean()


def _summed(value: float) -> float:
    """``value`` summed over the processes (itself outside ``torch.distributed``)."""
    _, world = _distributed()
    if world == 1:
        return value
    return float(_all_reduce(torch.tensor([value], dtype=torch.float64))[0])


def _placement(vectors: torch.Tensor, norms: torch.Tensor, band: list[int]) -> Placement:
    """The placement under which α = 1 adds exactly the trained ``vectors`` at ``band``."""
    if not bool(vectors.any()):
        raise ValueError(
            "Training left every vector at zero (no step improved the held-out loss); raise "
            "the learning rate or the steps, or give more triples."
        )
    return Placement.exact(vectors, norms, band)
