"""The evaluation report: every answer with its scores, summaries, tables, plots, rescoring."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from emovec._files import read_text, write_text
from emovec.evaluation.plots import FrontPoint
from emovec.evaluation.records import (
    _METRICS,
    OffensiveJudgeLike,
    Record,
    SummaryRow,
    _degenerate,
    _fmt,
    _invented,
    _judgement,
    _mean,
    _offensive,
    _plain_similarities,
    _value,
    _with_retention,
    load_offensive_judge,
)
from emovec.evaluation.scoring import EmotionScorer, load_scorer
from emovec.evaluation.topic import SentenceEmbedder, reference_retention, topic_retention

__all__ = ["EvaluationReport"]


@dataclass
class EvaluationReport:
    """Every answer with its scores, and the means per (method, emotion, α)."""

    records: list[Record]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[SummaryRow]:
        """One row per (method, emotion, α): mean of each metric over the queries.

        The plain answers (α = 0) appear once per emotion, scored for that emotion. The
        row's ``retention`` is the ratio of means described at :class:`SummaryRow`; a
        metric no record has (``offensive``, ``invented`` in older reports) is ``nan``.
        """
        groups: dict[tuple[str, str, float], list[Record]] = {}
        for record in self.records:
            key = (record["recipe"], record["target"], record["alpha"])
            groups.setdefault(key, []).append(record)
        plain = _plain_similarities(self.records)
        rows: list[SummaryRow] = []
        for (method, target, alpha), records in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][0] != "plain", item[0])
        ):
            means = {m: _mean([_value(r, m) for r in records]) for m in _METRICS}
            # Over the queries that have a plain answer, both sides the same queries.
            paired = np.array(
                [
                    (float(r["sim_query"]), plain[(target, r["query"])])
                    for r in records
                    if (target, r["query"]) in plain
                ],
                dtype=float,
            ).reshape(-1, 2)
            paired = paired[np.isfinite(paired).all(axis=1)]
            retention = (
                topic_retention(float(paired[:, 0].mean()), float(paired[:, 1].mean()))
                if len(paired)
                else math.nan
            )
            ppl = np.array([r["perplexity"] for r in records], dtype=float)
            rows.append(
                SummaryRow(
                    recipe=method,
                    emotion=target,
                    alpha=alpha,
                    n=len(records),
                    eps=means["eps"],
                    success=means["success"],
                    intensity=means["intensity"],
                    sim_query=means["sim_query"],
                    sim_plain=means["sim_plain"],
                    retention=retention,
                    offensive=means["offensive"],
                    perplexity=means["perplexity"],
                    distinct_1=means["distinct_1"],
                    distinct_2=means["distinct_2"],
                    degenerate=means["degenerate"],
                    invented=means["invented"],
                    # All-empty answers have no perplexity: keep the nan, it fails every
                    # tolerance.
                    median_perplexity=(
                        float(np.nanmedian(ppl)) if np.isfinite(ppl).any() else math.nan
                    ),
                )
            )
        return rows

    @property
    def reference_retention(self) -> dict[str, float]:
        """The hand-written answers' retention per emotion, as recorded at evaluation
        (empty for reports from before it was)."""
        return dict(self.settings.get("reference_retention") or {})

    def rescored(
        self,
        scorer: EmotionScorer | str | None,
        *,
        offensive_judge: OffensiveJudgeLike | None = None,
        embedder: SentenceEmbedder | None = None,
    ) -> EvaluationReport:
        """The same answers judged by another emotion scorer: EPS, success and scores are
        recomputed, and the degeneration judged again from the text (the rule of
        :func:`~emovec.evaluation.metrics.is_degenerate` today); everything else (topic,
        perplexity, offensive) is kept. Generating is the slow part of an evaluation, so a
        second judge costs seconds.

        Reports from before the offensive rate was measured get it here, from
        ``offensive_judge`` (default: :class:`emovec.offensive.OffensiveJudge`), those from
        before invented words were (:func:`emovec.evaluation.fluency.is_invented`) get them,
        and those without a recorded reference retention get it from ``embedder`` (default:
        MiniLM); neither model is loaded when the report already has what it gives.

        Raises:
            ValueError: If the scorer cannot score an evaluated emotion.
        """
        scorer = load_scorer(scorer)
        targets = sorted({r["target"] for r in self.records})
        missing = [e for e in targets if e not in scorer.emotions]
        if missing:
            raise ValueError(
                f"The scorer cannot judge {missing}; it knows {list(scorer.emotions)}. Pass a "
                "scorer with labels for them."
            )
        # The bank's emotions; reports from before they were recorded name, in their
        # scores, every emotion the first judge knew, which covers the bank's rivals.
        bank = self.settings.get("bank_emotions") or list(
            dict.fromkeys(e for r in self.records for e in r.get("scores", {}))
        )
        rivals = list(dict.fromkeys([e for e in bank if e in scorer.emotions] + targets))
        answers = list(dict.fromkeys(r["answer"] for r in self.records))
        row_of = {answer: i for i, answer in enumerate(answers)}
        scores = scorer(answers)
        records: list[Record] = [
            {
                **record,
                # Judged from the text alone, so an older report follows today's rule.
                "degenerate": _degenerate(record["answer"]),
                **_judgement(
                    record["answer"],
                    record["target"],
                    scores[row_of[record["answer"]]],
                    scorer.emotions,
                    rivals,
                ),
            }
            for record in self.records
        ]
        settings = {**self.settings, "scorer": type(scorer).__name__, "rivals": rivals}
        if any("offensive" not in r for r in records):
            judge = load_offensive_judge(offensive_judge)
            flagged = _offensive([r["answer"] for r in records if "offensive" not in r], judge)
            for r in records:
                r.setdefault("offensive", flagged[r["answer"]])
            settings["offensive_judge"] = type(judge).__name__
        if any("invented" not in r for r in records):
            invented = _invented([r["answer"] for r in records if "invented" not in r])
            for r in records:
                r.setdefault("invented", invented[r["answer"]])
        if "reference_retention" not in settings:
            settings["reference_retention"] = reference_retention(embedder, targets)
        return EvaluationReport(_with_retention(records), settings=settings)

    @classmethod
    def combined(cls, reports: Sequence[EvaluationReport]) -> EvaluationReport:
        """One report from sweeps over the same queries (say, one per α, one per process, or
        one per emotion): the first one's settings and plain answers (those of emotions only a
        later sweep evaluated added from it), every report's steered answers, and the union of
        their ``recipes`` settings.

        Raises:
            ValueError: If there is no report, plain answers differ where two sweeps both have
                them, or the queries differ (other queries or decoding: the rows would not be
                comparable), or two reports hold answers of the same (recipe, emotion, α).
        """
        if not reports:
            raise ValueError("combined() needs at least one report.")

        def plain(report: EvaluationReport) -> dict[str, list[tuple[str, str]]]:
            """Per emotion, its plain (query, answer) pairs, sorted."""
            by_target: dict[str, list[tuple[str, str]]] = {}
            for r in report.records:
                if r["recipe"] == "plain":
                    by_target.setdefault(r["target"], []).append((r["query"], r["answer"]))
            return {target: sorted(pairs) for target, pairs in by_target.items()}

        first = plain(reports[0])
        queries = {q for pairs in first.values() for q, _ in pairs}
        records = list(reports[0].records)
        seen = {(r["recipe"], r["target"], r["alpha"]) for r in records}
        recipes: dict[str, Any] = {}
        for number, report in enumerate(reports):
            answers = plain(report)
            if any(
                first.get(target, pairs) != pairs or {q for q, _ in pairs} != queries
                for target, pairs in answers.items()
            ):
                raise ValueError(
                    f"Report {number} answered other queries, or decoded otherwise: its plain "
                    "answers differ from the first report's."
                )
            recipes.update(report.settings.get("recipes") or {})
            if not number:
                continue
            added = set(answers) - set(first)
            first.update({target: answers[target] for target in added})
            steered = [r for r in report.records if r["recipe"] != "plain"]
            keys = {(r["recipe"], r["target"], r["alpha"]) for r in steered}
            if keys & seen:
                raise ValueError(f"Answers of {sorted(keys & seen)[:3]} appear in two reports.")
            seen |= keys
            records += [
                r for r in report.records if r["recipe"] == "plain" and r["target"] in added
            ]
            records += steered
        return cls(records, settings={**reports[0].settings, "recipes": recipes})

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationReport:
        """Read a report written by :meth:`to_json`.

        Answers of older reports without ``retention`` get it computed from their stored
        similarities; those without ``offensive`` or ``invented`` keep them absent
        (:meth:`rescored` adds them).

        Raises:
            ValueError: If the file is not such a report.
        """
        try:
            payload = json.loads(read_text(path, "an evaluation report"))
            records = _with_retention(list(payload["records"]))
            return cls(records, settings=dict(payload.get("settings", {})))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not an emovec evaluation report: {err!r}") from err

    def to_json(self, path: str | Path) -> Path:
        payload = {"settings": self.settings, "summary": self.summary(), "records": self.records}
        return write_text(path, json.dumps(payload, indent=1, default=float))

    def to_markdown(self) -> str:
        """A table per emotion: rows α (and the prompt baseline), columns the metrics; under
        each emotion's name the retention of its hand-written answers (the reference)."""
        header = (
            "| method | α | EPS | success | retention | offensive | intensity | sim(query) | "
            "sim(plain) | PPL (median) | distinct-2 | degenerate | invented |"
        )
        reference = self.reference_retention
        lines: list[str] = []
        by_emotion: dict[str, list[SummaryRow]] = {}
        for row in self.summary():
            by_emotion.setdefault(row["emotion"], []).append(row)
        for emotion, rows in by_emotion.items():
            ref = reference.get(emotion, math.nan)
            lines += [
                f"\n**{emotion}** (reference retention of the hand-written {emotion} answers: "
                f"{_fmt(ref, '.2f')})\n",
                header,
                "|" + "---|" * 13,
            ]
            for r in sorted(rows, key=lambda r: (r["recipe"] == "prompt", r["alpha"])):
                lines.append(
                    f"| {r['recipe']} | {r['alpha']:+g} | {r['eps']:.3f} | {r['success']:.2f} | "
                    f"{_fmt(r['retention'], '.2f')} | {_fmt(r['offensive'], '.2f')} | "
                    f"{r['intensity']:.3f} | {r['sim_query']:.2f} | {r['sim_plain']:.2f} | "
                    f"{r['median_perplexity']:.1f} | {r['distinct_2']:.2f} | "
                    f"{r['degenerate']:.2f} | {_fmt(r['invented'], '.2f')} |"
                )
        return "\n".join(lines).strip() + "\n"

    def plot(self, path: str | Path) -> Path:
        """PNG: EPS, degeneration rate and median perplexity against α, one line per emotion."""
        from matplotlib.figure import Figure

        from emovec.evaluation.plots import save_figure

        rows = [r for r in self.summary() if r["recipe"] in ("plain", "vector")]
        emotions = sorted({r["emotion"] for r in rows})
        panels: tuple[tuple[Literal["eps", "degenerate", "median_perplexity"], str], ...] = (
            ("eps", "EPS (target probability)"),
            ("degenerate", "degeneration rate"),
            ("median_perplexity", "perplexity (median)"),
        )
        figure = Figure(figsize=(5 * len(panels), 4))
        axes = figure.subplots(1, len(panels), squeeze=False)[0]
        for axis, (metric, title) in zip(axes, panels, strict=True):
            for emotion in emotions:
                points = sorted((r["alpha"], r[metric]) for r in rows if r["emotion"] == emotion)
                axis.plot(*zip(*points, strict=True), marker="o", label=emotion)
            if metric == "median_perplexity":
                axis.set_yscale("log")  # broken text reaches 10^4 while fluent text is ~2-20
            axis.set_xlabel("α")
            axis.set_title(title)
            axis.grid(alpha=0.3)
        axes[0].legend()
        figure.tight_layout()
        return save_figure(figure, path)

    def front_points(self) -> dict[str, list[FrontPoint]]:
        """Per emotion, every (method, α) as a point of success against topic retention."""
        points: dict[str, list[FrontPoint]] = {}
        for r in self.summary():
            label = f"α={r['alpha']:+g}" if r["recipe"] == "vector" else r["recipe"]
            # A named recipe is a steered point too (drawn as one, not left unmarked).
            kind = r["recipe"] if r["recipe"] in ("plain", "prompt") else "vector"
            points.setdefault(r["emotion"], []).append(
                FrontPoint(label, r["success"], r["retention"], kind)
            )
        return points

    def plot_front(self, path: str | Path) -> Path:
        """PNG: success against topic retention, one panel per emotion, every (method, α) a
        point, the Pareto front as a step line and the hand-written answers' retention as a
        vertical line (:func:`emovec.evaluation.plots.plot_front`)."""
        from emovec.evaluation.plots import plot_front

        return plot_front(
            path,
            self.front_points(),
            reference=self.reference_retention,
            title=f"success ({self.settings.get('scorer', 'judge')}) against topic retention",
        )
