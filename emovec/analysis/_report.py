"""The stimulus experiment's records and report: JSON, a Markdown table and a plot."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from emovec._files import atomic_path, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILES = ("stimuli.json", "stimuli.md", "stimuli.png")


@dataclass(frozen=True)
class Condition:
    """How the prompt is changed: ``kind`` ``"none"``, ``"prompt"`` (stimuli placed in the
    text) or ``"steer"`` (the stimuli's vector steered on the plain prompt)."""

    kind: Literal["none", "prompt", "steer"]
    stimuli: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``"none"``, ``"EP01+EP02"`` or ``"steer EP02"``."""
        joined = "+".join(self.stimuli)
        return {"none": "none", "prompt": joined, "steer": f"steer {joined}"}[self.kind]


@dataclass(frozen=True)
class Result:
    """One condition at one temperature (``None``: greedy).

    Attributes:
        condition: The condition.
        temperature: Sampling temperature, or ``None`` for the argmax label.
        correct: Per item, the share of correct answers (0 or 1 when greedy).
        tasks: Per item, its task.
        delta: Mean paired difference from the no-stimulus condition (``None`` without one).
        delta_se: Its standard error.
    """

    condition: Condition
    temperature: float | None
    correct: tuple[float, ...]
    tasks: tuple[str, ...]
    delta: float | None = None
    delta_se: float | None = None

    @property
    def accuracy(self) -> float:
        """Mean over items."""
        return sum(self.correct) / len(self.correct)

    @property
    def standard_error(self) -> float | None:
        """Standard error of :attr:`accuracy`."""
        return standard_error(self.correct)

    def by_task(self) -> dict[str, tuple[float, float | None, int]]:
        """Task → (accuracy, standard error, items)."""
        out = {}
        for task in dict.fromkeys(self.tasks):
            values = [c for c, t in zip(self.correct, self.tasks, strict=True) if t == task]
            out[task] = (sum(values) / len(values), standard_error(values), len(values))
        return out


def standard_error(values: Sequence[float]) -> float | None:
    """``sd(values) / √n`` with the sample standard deviation (``n − 1``); ``None`` for
    fewer than two values. For 0/1 values this is ``√(p(1 − p) / (n − 1))``."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _pm(value: float, error: float | None, *, signed: bool = False) -> str:
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return text + (f" ± {error:.3f}" if error is not None else "")


def _temperature(t: float | None) -> str:
    return "greedy" if t is None else f"T={t:g}"


@dataclass(frozen=True)
class StimulusReport:
    """The experiment's results: one :class:`Result` per condition and temperature.

    Attributes:
        results: In the order scored: each condition greedy, then at each temperature.
        settings: How the experiment ran (model, items, chance accuracy, draws, ...).
    """

    results: list[Result]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``stimuli.json`` holds)."""
        rows = []
        for r in self.results:
            rows.append(
                {
                    "condition": r.condition.name,
                    "kind": r.condition.kind,
                    "stimuli": list(r.condition.stimuli),
                    "temperature": r.temperature,
                    "accuracy": r.accuracy,
                    "standard_error": r.standard_error,
                    "items": len(r.correct),
                    "delta": r.delta,
                    "delta_standard_error": r.delta_se,
                    "tasks": {
                        t: {"accuracy": a, "standard_error": e, "items": n}
                        for t, (a, e, n) in r.by_task().items()
                    },
                    "per_item": list(r.correct),
                }
            )
        return {"settings": self.settings, "results": rows}

    def table(self) -> str:
        """A Markdown table: accuracy ± s.e. overall and per task, and the paired
        difference from no stimulus."""
        tasks = list(self.results[0].by_task()) if self.results else []
        head = ["condition", "decoding", "accuracy ± s.e.", "Δ vs none ± s.e.", *tasks]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.results:
            delta = "" if r.delta is None else _pm(r.delta, r.delta_se, signed=True)
            per_task = [_pm(a, e) for a, e, _ in r.by_task().values()]
            cells = [
                r.condition.name,
                _temperature(r.temperature),
                _pm(r.accuracy, r.standard_error),
            ]
            lines.append("| " + " | ".join([*cells, delta, *per_task]) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """The table with a header naming the model, the items and chance accuracy."""
        s = self.settings
        intro = (
            f"# Stimulus experiment\n\nModel `{s.get('model', '?')}`, {s.get('items', '?')} "
            f"items, chance accuracy {s.get('chance', float('nan')):.3f}; sampled rows: "
            f"{s.get('draws', '?')} draws per item, seed {s.get('seed', '?')}.\n\n"
        )
        return intro + self.table() + "\n"

    def figure(self) -> Figure:
        """Accuracy ± s.e. per condition, one marker series per decoding."""
        from matplotlib.figure import Figure

        names = list(dict.fromkeys(r.condition.name for r in self.results))
        decodings = list(dict.fromkeys(r.temperature for r in self.results))
        figure = Figure(figsize=(7, 1.2 + 0.32 * len(names)), layout="constrained")
        axes = figure.add_subplot()
        for k, t in enumerate(decodings):
            rows = [r for r in self.results if r.temperature == t]
            offset = (k - (len(decodings) - 1) / 2) * 0.2
            axes.errorbar(
                [r.accuracy for r in rows],
                [names.index(r.condition.name) + offset for r in rows],
                xerr=[r.standard_error or 0.0 for r in rows],
                fmt="o",
                capsize=3,
                label=_temperature(t),
            )
        chance = self.settings.get("chance")
        if isinstance(chance, float) and math.isfinite(chance):
            axes.axvline(chance, color="grey", linestyle=":", label="chance")
        axes.set_yticks(range(len(names)), names)
        axes.invert_yaxis()
        axes.set_xlabel("accuracy (± standard error)")
        axes.set_title(f"stimulus experiment: {self.settings.get('model', '')}")
        axes.legend(fontsize="small")
        return figure

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``stimuli.json``, ``stimuli.md`` and ``stimuli.png`` into ``folder``."""
        folder = Path(folder)
        paths = [folder / name for name in REPORT_FILES]
        write_text(paths[0], json.dumps(self.to_dict(), indent=2) + "\n")
        write_text(paths[1], self.markdown())
        with atomic_path(paths[2], suffix=".png") as staging:
            self.figure().savefig(staging, dpi=110, format="png")
        return paths
