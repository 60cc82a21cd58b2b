"""The trials of a calibration, the placement chosen per emotion, and the rule that chooses."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import product
from pathlib import Path
from typing import Any

from emovec.evaluation.choice import DEFAULT_TARGET_SUCCESS, choose
from emovec.evaluation.plots import FrontPoint
from emovec.evaluation.records import _fmt
from emovec.evaluation.report import EvaluationReport
from emovec.evaluation.scoring import EmotionScorer, load_scorer
from emovec.evaluation.tolerance import Tolerance
from emovec.vectors import EmotionVectors, Placement

__all__ = ["Calibration", "Trial"]

_INSTRUCTED = "+instruction"


def _band(layers: Sequence[int], dash: str = "-") -> str:
    """``"12-16"`` for a contiguous band (``dash`` between its ends), else ``"0,2,5"``."""
    contiguous = list(layers) == list(range(layers[0], layers[0] + len(layers)))
    return f"{layers[0]}{dash}{layers[-1]}" if contiguous else ",".join(map(str, layers))


def _setting_name(
    layers: Sequence[int],
    dose: float,
    instructed: bool,
    persona: bool = False,
    positions: str | None = None,
    query_guidance: float | None = None,
) -> str:
    """The recipe name of one setting: ``"12-16@0.35"``, ``"12-16@0.35+instruction"``,
    ``"12-16@0.35+instruction+persona+generated+query-1.3"``.

    The dose is written as Python's shortest round-trip form, so distinct doses never share
    a name.
    """
    return (
        f"{_band(layers)}@{float(dose)!r}"
        + (_INSTRUCTED if instructed else "")
        + ("+persona" if persona else "")
        + (f"+{positions}" if positions else "")
        + (f"+query-{float(query_guidance)!r}" if query_guidance is not None else "")
    )


@dataclass(frozen=True)
class Trial:
    """One emotion steered at one :class:`~emovec.vectors.Placement` (a band and dose, maybe
    with its instruction in the user turn, its persona as the system turn, only some
    positions, query guidance), scored over the calibration queries.

    ``retention`` is the topic retention against the plain answers
    (:func:`emovec.evaluation.topic.topic_retention`), ``offensive`` the share of answers the
    offensive judge flagged and ``invented`` the share with invented words
    (:func:`~emovec.evaluation.fluency.is_invented`; each ``nan`` if not measured),
    ``acceptable`` whether its fluency stayed within the tolerance
    (:meth:`~emovec.evaluation.Tolerance.fluent`; retention is scored by the choice, not
    filtered). The placement is what :meth:`Calibration.apply` stores when it is chosen.
    """

    emotion: str
    placement: Placement
    success: float
    eps: float
    degenerate: float
    sim_query: float
    retention: float
    offensive: float
    median_perplexity: float
    acceptable: bool
    invented: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """The trial as one flat record: the emotion, the placement's entries, the scores."""
        scores = {f.name: getattr(self, f.name) for f in fields(self)[2:]}
        return {"emotion": self.emotion, **self.placement.to_dict(), **scores}

    @property
    def extras(self) -> str:
        """What the trial used beside the vector: ``" + instruction"`` where the query asked
        for the emotion, ``" + persona"`` where the system turn did, ``" on generated"``
        where only some positions were steered, ``", query guidance 1.3"`` where the
        question was amplified (empty for the vector alone)."""
        p = self.placement
        return (
            (" + instruction" if p.instruction else "")
            + (" + persona" if p.persona else "")
            + (f" on {p.positions}" if p.positions else "")
            + (f", {p.schedule.label}" if p.schedule else "")
            + (f", query guidance {p.query_guidance:g}" if p.query_guidance else "")
        )

    @property
    def label(self) -> str:
        """``"12–16 ×0.35"``, then its :attr:`extras`."""
        return f"{_band(self.placement.layers, '–')} ×{self.placement.dose:g}{self.extras}"


@dataclass
class Calibration:
    """Every trial, and the placement chosen per emotion (absent where none was acceptable).

    Attributes:
        trials: Every (emotion, band, dose, instruction, persona, positions) tried, in
            order: per emotion, band by band, dose by dose.
        placements: The chosen placement per emotion (with the emotion's instruction,
            persona and positions where the chosen setting used them).
        plain: The plain answers' success, EPS, degeneration, similarity, retention (1),
            offensive and invented rates and perplexity per emotion, the baseline every trial
            was held to.
        settings: How the calibration ran.
        report: The one evaluation behind every trial (every answer with its scores; its
            methods are the settings' names, ``"12-16@0.35"``), so another judge can
            re-decide without generating again (:meth:`rescored`).
        tolerance: The fluency tolerance trials were held to.
    """

    trials: list[Trial]
    placements: dict[str, Placement]
    plain: dict[str, dict[str, float]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    report: EvaluationReport | None = field(default=None, repr=False)
    tolerance: Tolerance = field(default_factory=Tolerance, repr=False)

    def rescored(
        self,
        scorer: EmotionScorer | str | None = None,
        *,
        tolerance: Tolerance | None = None,
        target_success: float | None = None,
    ) -> Calibration:
        """The calibration decided again from the same answers: with another emotion judge,
        tolerance or success bar (each default: the one used).

        Raises:
            ValueError: If the calibration kept no reports (``to_dict()`` leaves them out),
                or ``target_success`` is not in (0, 1].
        """
        if self.report is None:
            raise ValueError("This calibration kept no answers to rescore; calibrate again.")
        report = self.report
        settings = dict(self.settings)
        if scorer is not None:
            scorer = load_scorer(scorer)
            report = report.rescored(scorer)
            settings["scorer"] = type(scorer).__name__
        tolerance = tolerance or self.tolerance
        if target_success is None:
            target_success = float(settings.get("target_success", DEFAULT_TARGET_SUCCESS))
        settings.update(tolerance=asdict(tolerance), target_success=target_success)
        return _decide(report, tolerance, target_success, settings)

    @property
    def emotions(self) -> list[str]:
        """The emotions tried, in order."""
        return list(dict.fromkeys(t.emotion for t in self.trials))

    def apply(self, vectors: EmotionVectors) -> EmotionVectors:
        """``vectors`` with the chosen placements and a record of how they were found.

        An emotion tried here with no acceptable trial loses any placement it had, so the
        bank never keeps a placement this calibration found too broken; emotions not tried
        keep theirs, and then the record of the calibration that found them is kept under
        ``"earlier"``.
        """
        chosen = {e: {**p.to_dict(), **self._scores(e, p)} for e, p in self.placements.items()}
        record: dict[str, Any] = {**self.settings, "chosen": chosen}
        tried = vectors.without_placements(self.emotions)
        if tried.placements and "calibration" in vectors.settings:
            record["earlier"] = vectors.settings["calibration"]
        return tried.with_placements(self.placements).with_settings(calibration=record)

    def _scores(self, emotion: str, placement: Placement) -> dict[str, float]:
        trial = next(t for t in self.trials if t.emotion == emotion and t.placement == placement)
        return {
            "success": trial.success,
            "eps": trial.eps,
            "degenerate": trial.degenerate,
            "retention": trial.retention,
            "offensive": trial.offensive,
            "invented": trial.invented,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "plain": self.plain,
            "placements": {e: p.to_dict() for e, p in self.placements.items()},
            "trials": [t.to_dict() for t in self.trials],
        }

    @property
    def reference_retention(self) -> dict[str, float]:
        """The hand-written answers' retention per emotion (empty if not recorded)."""
        return dict(self.settings.get("reference_retention") or {})

    def to_markdown(self) -> str:
        """Per emotion: the plain baseline, every trial, and the chosen one marked; the
        plain row's retention column holds the hand-written answers' (the reference), and a
        trial that asked for the emotion in the query reads ``12–16 + instruction``."""
        lines = [
            "| emotion | layers | dose | success | EPS | retention | offensive | degenerate | "
            "invented | sim(query) | PPL | |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        reference = self.reference_retention
        for emotion in self.emotions:
            plain = self.plain.get(emotion)
            if plain:
                ref = reference.get(emotion, math.nan)
                lines.append(
                    f"| {emotion} | plain | 0 | {plain['success']:.2f} | {plain['eps']:.3f} | "
                    f"{_fmt(plain.get('retention', math.nan), '.2f')} | "
                    f"{_fmt(plain.get('offensive', math.nan), '.2f')} | "
                    f"{plain['degenerate']:.2f} | "
                    f"{_fmt(plain.get('invented', math.nan), '.2f')} | {plain['sim_query']:.2f} | "
                    f"{plain['median_perplexity']:.1f} | reference retention {_fmt(ref, '.2f')} |"
                )
            chosen = self.placements.get(emotion)
            for t in (t for t in self.trials if t.emotion == emotion):
                mark = (
                    "**chosen**"
                    if chosen == t.placement
                    else ("" if t.acceptable else "outside tolerance")
                )
                band = _band(t.placement.layers, "–") + t.extras
                lines.append(
                    f"| {emotion} | {band} | {t.placement.dose:g} | "
                    f"{t.success:.2f} | {t.eps:.3f} | {_fmt(t.retention, '.2f')} | "
                    f"{_fmt(t.offensive, '.2f')} | {t.degenerate:.2f} | "
                    f"{_fmt(t.invented, '.2f')} | {t.sim_query:.2f} | "
                    f"{t.median_perplexity:.1f} | {mark} |"
                )
        return "\n".join(lines) + "\n"

    def front_points(self) -> dict[str, list[FrontPoint]]:
        """Per emotion, the plain answers and every trial as points of success against
        topic retention (the chosen trial and those outside the tolerance marked)."""
        points: dict[str, list[FrontPoint]] = {}
        for emotion in self.emotions:
            plain = self.plain.get(emotion)
            group = points.setdefault(emotion, [])
            if plain:
                group.append(
                    FrontPoint("plain", plain["success"], plain.get("retention", 1.0), "plain")
                )
            chosen = self.placements.get(emotion)
            for t in (t for t in self.trials if t.emotion == emotion):
                is_chosen = chosen == t.placement
                kind = "chosen" if is_chosen else ("trial" if t.acceptable else "rejected")
                group.append(FrontPoint(t.label, t.success, t.retention, kind))
        return points

    def plot_front(self, path: str | Path) -> Path:
        """PNG: success against topic retention per emotion, every trial (band × dose, with
        or without the instruction) a point, the Pareto front, the plain answers and the
        hand-written answers' retention (:func:`emovec.evaluation.plots.plot_front`)."""
        from emovec.evaluation.plots import plot_front

        return plot_front(
            path,
            self.front_points(),
            reference=self.reference_retention,
            title=f"calibration: success ({self.settings.get('scorer', 'judge')}) "
            "against topic retention",
        )


def _check_target(target_success: float) -> None:
    number = isinstance(target_success, (int, float)) and not isinstance(target_success, bool)
    if not number or not 0.0 < float(target_success) <= 1.0:
        raise ValueError(f"target_success must be in (0, 1], not {target_success!r}.")


def _choose(
    trials: Sequence[Trial],
    plain: Mapping[str, float],
    tolerance: Tolerance,
    target_success: float = DEFAULT_TARGET_SUCCESS,
) -> Trial | None:
    """The trial :func:`emovec.evaluation.choice.choose` picks among the fluent ones
    (``acceptable``), or ``None`` if none is; equals go to the earlier trial."""
    fluent = [t for t in trials if t.acceptable]
    rows = [t.to_dict() for t in fluent]
    best = choose(
        rows, plain, tolerance=tolerance, target_success=target_success, assume_fluent=True
    )
    return next((t for t, row in zip(fluent, rows, strict=True) if row is best), None)


_KEYS = (
    "success",
    "eps",
    "degenerate",
    "sim_query",
    "retention",
    "offensive",
    "invented",
    "median_perplexity",
)


def _decide(
    report: EvaluationReport,
    tolerance: Tolerance,
    target_success: float,
    settings: Mapping[str, Any],
) -> Calibration:
    """Trials from the evaluation of every setting (named by :func:`_setting_name` from
    ``settings``' bands, doses, instructions, personas and positions), and the placement
    chosen per emotion."""
    _check_target(target_success)
    summary = report.summary()
    rows = {(r["recipe"], r["emotion"]): r for r in summary if r["recipe"] != "plain"}
    baseline: dict[str, Mapping[str, Any]] = {
        r["emotion"]: r for r in summary if r["recipe"] == "plain"
    }
    plain = {e: {k: float(r[k]) for k in _KEYS} for e, r in baseline.items()}
    texts = settings.get("instruction_texts") or {}
    persona_texts = settings.get("persona_texts") or {}
    grid = list(
        product(
            settings["bands"],
            settings["doses"],
            settings.get("instructions", [False]),
            settings.get("personas", [False]),
            settings.get("positions", [None]),
            settings.get("query_guidance", [None]),
        )
    )
    trials: list[Trial] = []
    for emotion in report.settings.get("emotions") or list(baseline):
        for band, dose, instructed, persona, positions, gamma in grid:
            name = _setting_name(band, dose, instructed, persona, positions, gamma)
            row = rows[(name, emotion)]
            trials.append(
                Trial(
                    emotion=emotion,
                    placement=Placement(
                        tuple(band),
                        float(dose),
                        instruction=texts[emotion] if instructed else None,
                        persona=persona_texts[emotion] if persona else None,
                        positions=positions,
                        query_guidance=gamma,
                    ),
                    success=row["success"],
                    eps=row["eps"],
                    degenerate=row["degenerate"],
                    sim_query=row["sim_query"],
                    retention=row["retention"],
                    offensive=row["offensive"],
                    median_perplexity=row["median_perplexity"],
                    acceptable=tolerance.fluent(row, baseline[emotion]),
                    invented=row["invented"],
                )
            )
    placements: dict[str, Placement] = {}
    for emotion in dict.fromkeys(t.emotion for t in trials):
        mine = [t for t in trials if t.emotion == emotion]
        best = _choose(mine, plain[emotion], tolerance, target_success)
        if best is not None:
            placements[emotion] = best.placement
    return Calibration(trials, placements, plain, dict(settings), report, tolerance)
