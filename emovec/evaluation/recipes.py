"""Recipes: the ways of making an answer emotional that :func:`~emovec.evaluation.evaluate`
compares (a vector at a placement, an instruction in the user turn, a persona in the system
turn, a steering method), and the conditions of a sweep built from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from emovec.chat import Asking
from emovec.hooks import Method as SteerMethod
from emovec.layers import default_layer_band
from emovec.steering import RELATIVE_DOSE, Positions, Schedule
from emovec.vectors import EmotionVectors, Placement, SteeringVector

__all__ = ["PERSONAS", "PROMPT_INSTRUCTIONS", "Recipe"]


# The prompt-based baseline: the same emotion asked for in words.
PROMPT_INSTRUCTIONS = {
    "joy": "Answer in a very happy, joyful, delighted tone.",
    "anger": "Answer in a furious, angry, outraged tone.",
    "disgust": "Answer in a disgusted, grossed-out, repulsed tone.",
    "fear": "Answer in a terrified, scared, anxious tone.",
    "sadness": "Answer in a very sad, heartbroken, gloomy tone.",
    "surprise": "Answer in an astonished, amazed, surprised tone.",
    "calm": "Answer in a calm, serene, peaceful tone.",
}
# The same emotion as a system turn: an assistant who feels it (the "persona" recipe).
PERSONAS = {
    "joy": "You are a cheerful assistant, overjoyed and delighted by every question.",
    "anger": "You are a furious assistant, irritated and angry about every question.",
    "disgust": "You are a disgusted assistant who finds everything gross and revolting.",
    "fear": "You are a frightened assistant, nervous and scared about everything.",
    "sadness": "You are a sad assistant, gloomy and heartbroken about everything.",
    "surprise": "You are an astonished assistant, amazed and surprised by everything.",
    "calm": "You are a calm assistant, serene and at peace with every question.",
}


@dataclass(frozen=True)
class Recipe:
    """One way of making an answer emotional; :func:`evaluate` compares several by name.

    Attributes:
        placement: Layers and dose (and instruction) for every evaluated emotion, instead of
            the bank's placements; ``None``: the bank's.
        instruct: Also ask for the emotion in the user turn: the placement's instruction,
            else :data:`PROMPT_INSTRUCTIONS`. ``None``: only where the placement has one.
        persona: Replace the system turn by an assistant who feels the emotion: the
            placement's persona, else :data:`PERSONAS`. ``None``: only where the placement
            has one.
        positions: ``steer``'s positions (``None``: its default).
        method: ``steer``'s method.
        plain_guidance: Steered share of each next token's distribution, mixed with a plain
            pass (:class:`emovec.guidance.PlainGuidance`); ``None``: the steered model alone.
        schedule: ``steer``'s schedule of the factor on α over generated tokens.
        query_guidance: Amplify what the question contributes to each next token against
            the same prompt without it (:class:`emovec.guidance.QueryGuidance`; ≥ 1);
            ``None``: the placement's where the emotion is raised, else off.
    """

    placement: Placement | None = None
    instruct: bool | None = None
    persona: bool | None = None
    positions: Positions | None = None
    method: SteerMethod = "add"
    plain_guidance: float | None = None
    schedule: Schedule | None = None
    query_guidance: float | None = None

    def instruction(self, vectors: EmotionVectors, emotion: str) -> str | None:
        """The instruction this recipe adds to the query for ``emotion`` (or ``None``)."""
        return self._text(vectors, emotion, "instruction", self.instruct, PROMPT_INSTRUCTIONS)

    def system(self, vectors: EmotionVectors, emotion: str) -> str | None:
        """The system turn this recipe uses for ``emotion`` (``None``: the default one)."""
        return self._text(vectors, emotion, "persona", self.persona, PERSONAS)

    def _text(
        self,
        vectors: EmotionVectors,
        emotion: str,
        field: str,
        wanted: bool | None,
        defaults: Mapping[str, str],
    ) -> str | None:
        placement = self.placement or vectors.placements.get(emotion)
        written = getattr(placement, field) if placement is not None else None
        if wanted is False or (wanted is None and written is None):
            return None
        if written is not None:
            return str(written)
        try:
            return defaults[emotion]
        except KeyError:
            raise ValueError(
                f"No default {field} for {emotion!r} (known: {sorted(defaults)}); give the "
                f"placement a {field}."
            ) from None

    def placement_for(self, vectors: EmotionVectors, emotion: str) -> Placement:
        """This recipe for ``emotion`` as one :class:`~emovec.vectors.Placement`, the type
        the file stores and the one call applies: the recipe's placement, else the bank's,
        else the bank's band at ``steer``'s default dose, with the instruction and persona
        this recipe asks for and its positions, schedule and query guidance where it sets
        them."""
        base = self.placement or vectors.placements.get(emotion)
        if base is None:
            band = vectors.recommended_layers or default_layer_band(vectors.num_layers)
            base = Placement(tuple(band), RELATIVE_DOSE)
        return replace(
            base,
            instruction=self.instruction(vectors, emotion),
            persona=self.system(vectors, emotion),
            positions=self.positions or base.positions,
            schedule=self.schedule or base.schedule,
            query_guidance=self.query_guidance or base.query_guidance,
        )

    @classmethod
    def from_dict(cls, written: Mapping[str, Any]) -> Recipe:
        """A recipe from its :meth:`to_dict` (as a report's settings record it).

        Raises:
            ValueError: For keys a recipe does not have (a report of another emovec).
        """
        unknown = set(written) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"A recipe with {sorted(unknown)} was written by another emovec; evaluate again."
            )
        values = dict(written)
        if values.get("placement") is not None:
            values["placement"] = Placement(**values["placement"])
        if values.get("schedule") is not None:
            values["schedule"] = Schedule(**values["schedule"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "placement": None if self.placement is None else self.placement.to_dict(),
            "instruct": self.instruct,
            "persona": self.persona,
            "positions": self.positions,
            "method": self.method,
            "plain_guidance": self.plain_guidance,
            "schedule": None if self.schedule is None else self.schedule.to_dict(),
            "query_guidance": self.query_guidance,
        }


# The recipe ``evaluate`` uses unless told: the bank as calibrated.
_AS_CALIBRATED = {"vector": Recipe()}
_PROMPT = Recipe(instruct=True, persona=False)


@dataclass(frozen=True)
class _Condition:
    method: str  # "plain", "prompt" or a recipe's name
    emotion: str | None
    alpha: float
    recipe: Recipe | None = None


def _conditions(
    emotions: Sequence[str],
    alphas: Sequence[float],
    prompt_baseline: bool,
    recipes: Mapping[str, Recipe],
) -> list[_Condition]:
    conditions = [_Condition("plain", None, 0.0)]
    conditions += [
        _Condition(name, e, float(a), recipe)
        for name, recipe in recipes.items()
        for e in emotions
        for a in alphas
        if a != 0
    ]
    if prompt_baseline:
        conditions += [_Condition("prompt", e, 1.0, _PROMPT) for e in emotions]
    return conditions


def _asking(condition: _Condition, vectors: EmotionVectors) -> Asking:
    """What a condition's row asks of the prompt: its recipe's placement for its emotion,
    asked as the one call asks it (only a raised emotion asks; the prompt baseline asks in
    words only, without query guidance)."""
    if condition.recipe is None or condition.emotion is None:
        return Asking()
    placement = condition.recipe.placement_for(vectors, condition.emotion)
    asking = Asking.of({condition.emotion: condition.alpha}, {condition.emotion: placement})
    return replace(asking, query_guidance=None) if condition.method == "prompt" else asking


def _mix(condition: _Condition, vectors: EmotionVectors) -> dict[str, float] | SteeringVector:
    """What a condition's row steers: nothing, or its emotion at α (at the recipe's placement)."""
    if condition.method == "prompt" or condition.emotion is None or condition.recipe is None:
        return {}
    placement = condition.recipe.placement
    bank = vectors if placement is None else vectors.with_placements({condition.emotion: placement})
    return condition.alpha * bank[condition.emotion]
