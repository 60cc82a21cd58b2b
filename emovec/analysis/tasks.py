"""A small labelled task set, and scoring a label set by log-likelihood.

The shipped set (``emovec/data/tasks/``, written for the project) has 144 short items in
three tasks a 135M model can partly solve: ``sentiment`` of a sentence (positive / negative,
24 each), ``topic`` of a sentence (sports / food / weather / music, 12 each) and
``arithmetic`` (one-digit sums and differences, four numbers to choose from).

A label's score is ``log p(" " + label | prompt + ANSWER_CUE)``, the sum over the label's
tokens; the model's answer is the best-scoring label. Sampling at temperature ``T`` draws a
label from ``softmax(scores / T)`` over the item's labels: exactly sampling the next token at
temperature ``T`` restricted to the labels when each is one token, and the same rule on whole
label sequences otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

__all__ = ["ANSWER_CUE", "TaskItem", "label_scores", "sample_correct", "task_items"]

ANSWER_CUE = "\nAnswer:"


@dataclass(frozen=True)
class TaskItem:
    """One labelled item.

    Attributes:
        task: The task's name (``"sentiment"``, ``"topic"``, ``"arithmetic"`` or your own).
        instruction: What the model is asked to do.
        text: The item's input.
        labels: The answers to choose from.
        answer: The correct one, among ``labels``.
    """

    task: str
    instruction: str
    text: str
    labels: tuple[str, ...]
    answer: str

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"Item {self.text!r}: give at least two distinct labels.")
        if self.answer not in self.labels:
            raise ValueError(f"Item {self.text!r}: answer {self.answer!r} is not a label.")

    @property
    def prompt(self) -> str:
        """The task as the model reads it (stimuli are placed around this)."""
        return f"{self.instruction}\n{self.text}"


def task_items(per_task: int | None = None, tasks: Sequence[str] | None = None) -> list[TaskItem]:
    """The shipped items, task by task.

    Args:
        per_task: How many items of each task (default: all). Items are taken round-robin
            over the answers, so a small set stays balanced.
        tasks: Which tasks (default: all three).

    Raises:
        KeyError: for a task that is not shipped. ValueError: for ``per_task < 1``.
    """
    folder = resources.files("emovec") / "data" / "tasks"
    specs = json.loads((folder / "tasks.json").read_text(encoding="utf-8"))
    wanted = list(tasks) if tasks is not None else list(specs)
    unknown = [t for t in wanted if t not in specs]
    if unknown:
        raise KeyError(f"No shipped task {unknown}; shipped: {sorted(specs)}.")
    if per_task is not None and per_task < 1:
        raise ValueError("per_task must be at least 1.")
    lines = (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    chosen: list[TaskItem] = []
    for task in wanted:
        spec = specs[task]
        items = [
            TaskItem(
                task,
                spec["instruction"],
                r["text"],
                tuple(r.get("labels") or spec["labels"]),
                r["answer"],
            )
            for r in records
            if r["task"] == task
        ]
        chosen.extend(_balanced(items, per_task))
    return chosen


def _balanced(items: list[TaskItem], count: int | None) -> list[TaskItem]:
    """The first ``count`` items taken round-robin over the answers, in file order."""
    if count is None:
        return items
    queues: dict[str, list[TaskItem]] = {}
    for item in items:
        queues.setdefault(item.answer, []).append(item)
    picked: list[TaskItem] = []
    while len(picked) < count and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


@dataclass(frozen=True)
class _Slot:
    sequence: int  # index of the forward-pass sequence holding the label's tokens
    start: int  # position whose logits predict the label's first token
    tokens: tuple[int, ...]


def _plan(
    tokenizer: PreTrainedTokenizerBase, contexts: Sequence[str], labels: Sequence[Sequence[str]]
) -> tuple[list[tuple[int, ...]], list[list[_Slot]]]:
    """The distinct sequences to run and, per item and label, where its tokens are scored.

    A label needs ``context + label[:-1]``; labels of one item share the sequence when one's
    tokens are a prefix of another's (every one-token label reads the bare context).
    """
    sequences: dict[tuple[int, ...], int] = {}
    plans: list[list[_Slot]] = []
    for context, names in zip(contexts, labels, strict=True):
        ctx = list(tokenizer(context, add_special_tokens=True)["input_ids"])
        if not ctx:
            raise ValueError(f"The prompt {context!r} has no tokens.")
        needs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for name in names:
            ids = list(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
            if not ids:
                raise ValueError(f"The label {name!r} has no tokens.")
            needs.append((tuple(ctx + ids[:-1]), tuple(ids)))
        longest = [s for s, _ in needs]
        slots = []
        for seq, tokens in needs:
            host = max((o for o in longest if o[: len(seq)] == seq), key=len)
            slots.append(_Slot(sequences.setdefault(host, len(sequences)), len(ctx) - 1, tokens))
        plans.append(slots)
    return list(sequences), plans


def label_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[str],
    labels: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> list[torch.Tensor]:
    """Per context, each label's log-likelihood ``log p(" " + label | context)``.

    Sequences are right-padded (positions stay those of the unpadded text) and batched by
    length; a steering active around the call applies to every pass.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        contexts: The texts the labels follow (prompt and answer cue).
        labels: Per context, its labels.
        batch_size: Sequences per forward pass.
        progress: Show a progress bar.

    Returns:
        Per context a float64 tensor ``[len(labels)]``: the summed log-probabilities.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    sequences, plans = _plan(tokenizer, contexts, labels)
    starts: dict[int, int] = {}
    for slots in plans:
        for slot in slots:
            starts[slot.sequence] = min(slot.start, starts.get(slot.sequence, slot.start))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    logprobs: dict[int, torch.Tensor] = {}  # sequence -> [positions from its start, vocab]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="scoring labels", disable=not progress):
        width = max(len(sequences[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, : len(sequences[index])] = torch.tensor(sequences[index])
            mask[row, : len(sequences[index])] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, index in enumerate(batch):
            span = logits[row, starts[index] : len(sequences[index])]
            logprobs[index] = span.double().log_softmax(-1).cpu()
    scores = []
    for slots in plans:
        values = []
        for slot in slots:
            table = logprobs[slot.sequence]
            offset = slot.start - starts[slot.sequence]
            values.append(sum(float(table[offset + j, t]) for j, t in enumerate(slot.tokens)))
        scores.append(torch.tensor(values, dtype=torch.float64))
    return scores


def sample_correct(
    scores: Sequence[torch.Tensor],
    answers: Sequence[int],
    *,
    temperature: float,
    draws: int,
    seed: int = 0,
) -> list[float]:
    """Per item, the share of ``draws`` labels sampled from ``softmax(scores / T)`` that are
    the answer.

    The draws come from one generator seeded with ``seed`` and consumed item by item, so two
    conditions scored with the same seed use the same random numbers (their difference is
    not blurred by the draws).

    Raises:
        ValueError: for ``temperature <= 0`` (use the argmax for greedy answers) or
            ``draws < 1``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, not {temperature}; greedy is the argmax.")
    if draws < 1:
        raise ValueError("draws must be at least 1.")
    generator = torch.Generator().manual_seed(seed)
    shares = []
    for score, answer in zip(scores, answers, strict=True):
        probabilities = torch.softmax(score.double() / temperature, dim=0)
        picked = torch.multinomial(probabilities, draws, replacement=True, generator=generator)
        shares.append(float((picked == answer).double().mean()))
    return shares
