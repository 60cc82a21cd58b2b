"""What a bank's placements ask of the prompt when their emotions are raised (α > 0): the
calibrated instruction in the user turn, the persona as the system turn, the query guidance.
Re-exported by :mod:`emovec.generation`, which builds prompts and answers with them."""

from __future__ import annotations

from collections.abc import Mapping

from emovec._chat import asked
from emovec.vectors import EmotionVectors

__all__ = ["persona_for", "query_free_turn", "query_guidance_for", "with_instructions"]


def with_instructions(query: str, vectors: EmotionVectors, strengths: Mapping[str, float]) -> str:
    """``query`` with the calibrated instruction of every emotion steered with α > 0.

    A bank whose placements were calibrated with an instruction (the "hybrid" recipe: a
    short request for the emotion in the user's turn plus a smaller vector dose) is meant to
    be steered with it; ``steer`` cannot change the prompt, so the prompt is built here.
    Suppressed emotions (α ≤ 0) and emotions without an instruction add nothing.
    """
    return asked(query, *(vectors.instruction(e) for e, alpha in strengths.items() if alpha > 0))


def persona_for(vectors: EmotionVectors, strengths: Mapping[str, float]) -> str | None:
    """The system turn for steering ``strengths``: the calibrated personas of the emotions
    raised (α > 0), joined, or ``None`` (the model's default system prompt)."""
    personas = [vectors.persona(e) for e, alpha in strengths.items() if alpha > 0]
    return " ".join(text for text in personas if text) or None


def query_guidance_for(vectors: EmotionVectors, strengths: Mapping[str, float]) -> float | None:
    """The query guidance for steering ``strengths``: the largest of the raised emotions'
    placements' (α > 0), or ``None`` where none records one."""
    recorded = [
        placement.query_guidance
        for emotion, alpha in strengths.items()
        if alpha > 0
        and (placement := vectors.placements.get(emotion)) is not None
        and placement.query_guidance is not None
    ]
    return max(recorded) if recorded else None


def query_free_turn(vectors: EmotionVectors, strengths: Mapping[str, float]) -> str:
    """The user turn without the question: the raised emotions' instructions alone."""
    return with_instructions("", vectors, strengths).strip()
